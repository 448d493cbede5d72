"""Named channels (case.channels): diffusion maps, a DTI series, map_<name>, p and q, and their refusals."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.case import channels
from GliomaProgressionLib.case.folder import read_case
from GliomaProgressionLib.case.preprocess import prepare_case

from helpers import assert_one_line_error, gliomaprog

BVALS = np.array([0.0] + [1000.0] * 12)
# 12 directions: the icosahedron's vertices, one of each antipodal pair doubled by sign changes
_PHI = (1 + 5 ** 0.5) / 2
BVECS = np.vstack([[0.0, 0.0, 0.0], np.array([[0, 1, _PHI], [0, 1, -_PHI], [1, _PHI, 0], [1, -_PHI, 0],
                                                [_PHI, 0, 1], [-_PHI, 0, 1], [0, -1, _PHI], [1, 0, _PHI],
                                                [_PHI, 1, 0], [0, _PHI, 1], [1, 1, 1], [1, -1, 1]], float)])
BVECS[1:] /= np.linalg.norm(BVECS[1:], axis=1, keepdims=True)


def _tensor_signal(b0: np.ndarray, md_scale: np.ndarray, eigenvalues=(1.7e-3, 0.3e-3, 0.3e-3)) -> np.ndarray:
    """DWI volumes [t, k, j, i] of a tensor along x with the given eigenvalues, scaled voxel-wise by md_scale."""
    tensor = np.diag(eigenvalues)
    adc_per_direction = np.einsum("ni,ij,nj->n", BVECS, tensor, BVECS)
    return np.stack([b0 * np.exp(-b * d * md_scale) for b, d in zip(BVALS, adc_per_direction)]).astype(np.float32)


def test_p_and_q_are_pena_components_of_the_tensor():
    eigenvalues = np.array([1.7, 0.5, 0.3])
    md = eigenvalues.mean()
    fa = np.sqrt(1.5) * np.linalg.norm(eigenvalues - md) / np.linalg.norm(eigenvalues)
    assert channels.isotropic_component(np.array([md]))[0] == pytest.approx(np.sqrt(3) * md, rel=1e-6)
    assert channels.anisotropic_component(np.array([md]), np.array([fa]))[0] == pytest.approx(
        np.linalg.norm(eigenvalues - md), rel=1e-5)


@pytest.mark.parametrize("scale, unit", [(1e-6, "mm^2/s"), (1e-3, "10^-3 mm^2/s"), (1.0, None)])
def test_diffusivity_units_are_recognised(scale, unit):
    adc = np.full((4, 4, 4), 800.0) * scale
    factor, note = channels.diffusivity_scale(adc, None, "The ADC map adc.nii.gz")
    assert adc[0, 0, 0] * factor == pytest.approx(800.0)
    assert (note is None) == (unit is None) and (unit is None or unit in note)


def test_tensor_fit_recovers_fa_and_md():
    b0 = np.full((3, 4, 5), 1000.0)
    fitted = channels.tensor_maps(_tensor_signal(b0, np.ones_like(b0)), BVALS, BVECS, None, "the DTI series")
    eigenvalues = np.array([1.7, 0.3, 0.3])
    expected_fa = np.sqrt(1.5) * np.linalg.norm(eigenvalues - eigenvalues.mean()) / np.linalg.norm(eigenvalues)
    assert np.allclose(fitted["md"], eigenvalues.mean() * 1e3, rtol=1e-3)  # 10^-6 mm^2/s
    assert np.allclose(fitted["fa"], expected_fa, atol=1e-3)


def test_too_few_directions_are_refused():
    b0 = np.full((2, 2, 2), 1000.0)
    with pytest.raises(ValueError, match="5 diffusion-weighted volumes .* at least 6 directions"):
        channels.tensor_maps(_tensor_signal(b0, np.ones_like(b0))[:6], BVALS[:6], BVECS[:6], None, "the DTI series")


@pytest.mark.parametrize("name, ok", [("adc", True), ("map_cbf2", True), ("map_", False), ("ADC", False),
                                      ("map_Tmax", False), ("t2", False)])
def test_channel_names(name, ok):
    assert channels.is_channel_name(name) == ok


# --- a case folder with diffusion maps on an oblique, anisotropic grid ---------------------------------------


def _oblique_grid(reference: sitk.Image, spacing=(2.0, 2.0, 4.0), degrees=12.0) -> sitk.Image:
    """A diffusion-like grid over the same field of view, tilted about the S axis."""
    rotation = sitk.VersorTransform((0, 0, 1), np.radians(degrees))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(reference.GetDirection()).reshape(3, 3)
    extent = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [int(np.ceil(e / s)) + 4 for e, s in zip(extent, spacing)]
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()])
    origin = np.array(centre) - direction @ ((np.array(size) - 1) / 2 * np.array(spacing))
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _diffusion_like(flair: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """The FLAIR's anatomy on the oblique grid, in ADC-like values (10^-6 mm^2/s): registrable, known content."""
    return sitk.Resample(sitk.Cast(flair, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)


def _without_diffusion(case_folder, folder):
    """A copy of a phantom case folder without its diffusion maps."""
    shutil.copytree(case_folder, folder)
    for name in channels.DIFFUSION_FILES:
        (folder / f"{name}.nii.gz").unlink(missing_ok=True)
    return folder


@pytest.fixture(scope="module")
def diffusion_folder(tmp_path_factory, small_case_folder):
    folder = tmp_path_factory.mktemp("diffusion") / "case"
    shutil.copytree(small_case_folder, folder)
    flair = sitk.ReadImage(str(folder / "flair.nii.gz"))
    grid = _oblique_grid(flair)
    adc = _diffusion_like(flair, grid)
    sitk.WriteImage(adc, str(folder / "adc.nii.gz"))
    sitk.WriteImage(adc * 1e-6, str(folder / "md.nii.gz"))  # stored in mm^2/s: read and rescaled
    fa = sitk.Image(adc)
    fa = sitk.Cast(fa > 0, sitk.sitkFloat32) * 0.4
    sitk.WriteImage(fa, str(folder / "fa.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def prepared_diffusion(diffusion_folder):
    inputs = read_case(diffusion_folder, with_dsc=False)
    return inputs, prepare_case(inputs.t1c, inputs.flair, inputs.lesion, maps=inputs.maps, spacing_mm=2.0)


def test_case_folder_maps_reach_the_reference_grid_in_place(prepared_diffusion):
    inputs, prepared = prepared_diffusion
    assert set(inputs.maps) == {"adc", "fa", "md"}
    assert any("mm^2/s" in note and "md.nii.gz" in note for note in inputs.notes)
    assert {"adc", "fa", "md", "p", "q"} <= set(prepared.channels)
    assert list(prepared.registrations) == ["flair", "adc+fa+md"]  # one registration for the one acquisition
    for name in ("adc", "fa", "md", "p", "q"):
        image = prepared.channels[name]
        assert image.GetSize() == prepared.reference.GetSize() and image.GetOrigin() == prepared.reference.GetOrigin()
    brain = sitk.GetArrayViewFromImage(prepared.channels["flair"]) > 100
    adc = sitk.GetArrayViewFromImage(prepared.channels["adc"])[brain]
    flair = sitk.GetArrayViewFromImage(prepared.channels["flair"])[brain]
    # the ADC map is the FLAIR's anatomy on a tilted 2 x 2 x 4 mm grid: back on the reference it must coincide
    assert np.corrcoef(adc, flair)[0, 1] > 0.9
    md = sitk.GetArrayViewFromImage(prepared.channels["md"])
    difference = np.abs(md - sitk.GetArrayViewFromImage(prepared.channels["adc"]))
    assert difference.max() < 1e-3 * md.max(), difference.max()
    p = sitk.GetArrayViewFromImage(prepared.channels["p"])
    assert np.allclose(p, np.sqrt(3) * md, rtol=1e-5, atol=1e-3)


def test_dti_series_is_fitted_when_no_maps_are_given(tmp_path, small_case_folder):
    folder = _without_diffusion(small_case_folder, tmp_path / "case")
    flair = sitk.ReadImage(str(folder / "flair.nii.gz"))
    grid = _oblique_grid(flair)
    anatomy = sitk.GetArrayFromImage(_diffusion_like(flair, grid))
    md_scale = np.where(anatomy > 0, anatomy / 767.0, 1.0)  # MD proportional to the anatomy: registrable
    series = _tensor_signal(np.where(anatomy > 0, 1000.0, 0.0), md_scale)
    image = sitk.JoinSeries([sitk.GetImageFromArray(volume) for volume in series])
    image.SetOrigin(grid.GetOrigin() + (0.0,))
    image.SetSpacing(grid.GetSpacing() + (1.0,))
    direction = np.eye(4)
    direction[:3, :3] = np.array(grid.GetDirection()).reshape(3, 3)
    image.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(image, str(folder / "dwi.nii.gz"))
    np.savetxt(folder / "dwi.bval", BVALS[None], fmt="%g")
    np.savetxt(folder / "dwi.bvec", BVECS.T, fmt="%.6f")
    inputs = read_case(folder, with_dsc=False)
    assert set(inputs.maps) == {"fa", "md"}
    assert any("fitted from the DTI series dwi.nii.gz" in note for note in inputs.notes)
    fa = sitk.GetArrayViewFromImage(inputs.maps["fa"])
    inside = anatomy > 200
    assert np.median(fa[inside]) == pytest.approx(0.8, abs=0.02)
    md = sitk.GetArrayViewFromImage(inputs.maps["md"])
    assert np.allclose(md[inside], anatomy[inside], rtol=0.02)

    (folder / "dwi.bvec").write_text("1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(ValueError, match=r"dwi.bvec holds 9 numbers \(3 vectors\) but the DTI series has 13 volumes"):
        channels.read_gradients(folder / "dwi.bval", folder / "dwi.bvec", 13, "the DTI series")
    (folder / "dwi.bvec").unlink()
    with pytest.raises(ValueError, match="has the DTI series dwi.nii.gz but no dwi.bvec"):
        read_case(folder, with_dsc=False)


@pytest.mark.parametrize("problem, message", [
    ("nan", "NaN or infinite"),
    ("fa_is_adc", "not a fractional anisotropy"),
    ("far_away", "does not overlap the CE-T1"),
    ("bad_name", "not a known channel"),
])
def test_bad_maps_are_refused_in_one_sentence(tmp_path, diffusion_folder, problem, message):
    folder = tmp_path / "case"
    shutil.copytree(diffusion_folder, folder)
    adc = sitk.ReadImage(str(folder / "adc.nii.gz"))
    if problem == "nan":
        array = sitk.GetArrayFromImage(adc)
        array[2, 3, 4] = np.nan
        broken = sitk.GetImageFromArray(array)
        broken.CopyInformation(adc)
        sitk.WriteImage(broken, str(folder / "adc.nii.gz"))
    elif problem == "fa_is_adc":
        sitk.WriteImage(adc, str(folder / "fa.nii.gz"))
    elif problem == "far_away":
        adc.SetOrigin(tuple(np.array(adc.GetOrigin()) + 500.0))
        sitk.WriteImage(adc, str(folder / "adc.nii.gz"))
    else:
        sitk.WriteImage(adc, str(folder / "map_Tmax.nii.gz"))
    with pytest.raises(ValueError) as refused:
        read_case(folder, with_dsc=False)
    text = str(refused.value)
    assert message in text and "\n" not in text


def test_export_takes_a_channel_list_and_refuses_a_missing_channel(tmp_path, diffusion_folder, small_case_folder):
    import json

    from GliomaProgressionLib.cohort.export import export_cohort

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(diffusion_folder, cohort / "with_adc")
    _without_diffusion(small_case_folder, cohort / "without_adc")
    out = tmp_path / "Dataset901_Diffusion"
    summary = export_cohort(cohort, out, 901, "t1c,flair,adc,q", spacing_mm=3.0)
    assert summary["failed"] == ["without_adc"]

    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channels_gliomaprog"] == ["t1c", "flair", "adc", "q"]
    assert dataset["channel_names"] == {"0": "CE-T1", "1": "FLAIR", "2": "ADC", "3": "q (anisotropic diffusion)"}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"with_adc_{i:04d}.nii.gz" for i in range(4)]
    qc = (out / "qc.csv").read_text()
    assert "without_adc" in qc and "has no ADC channel (adc)" in qc and "add adc.nii.gz" in qc

    refused = gliomaprog("cohort", "export", cohort, "--out", tmp_path / "x", "--dataset-id", "902",
                         "--channels", "t1c,flair,adc2")
    assert_one_line_error(refused, "adc2", "not a known channel")


def test_a_model_channel_the_case_lacks_is_named_before_the_work():
    channels.check_channels_present("case7", ["t1c", "flair", "q"], {"t1c", "flair", "md", "fa"}, "diffusion")
    with pytest.raises(ValueError) as refused:
        channels.check_channels_present("case7", ["t1c", "flair", "adc"], {"t1c", "flair", "ncbv"}, "diffusion")
    assert str(refused.value) == ("The case case7 has no ADC channel (adc), which the model 'diffusion' needs: add "
                                  "adc.nii.gz to the case folder.")
    with pytest.raises(ValueError, match=r"no q \(anisotropic diffusion\) channel \(q\).*md.nii.gz and fa.nii.gz"):
        channels.check_channels_present("case7", ["q"], {"md"}, "diffusion")


@pytest.mark.parametrize("text, message", [("adc", "not given as NAME=PATH"), ("p=p.nii.gz", "which is not a map"),
                                           ("Tmax=t.nii.gz", "not a known channel")])
def test_map_arguments(text, message):
    assert channels.parse_map_argument("map_cbf=a=b.nii.gz") == ("map_cbf", __import__("pathlib").Path("a=b.nii.gz"))
    with pytest.raises(ValueError, match=message):
        channels.parse_map_argument(text)


def test_the_panels_job_carries_its_maps_through_its_command(tmp_path):
    from GliomaProgressionLib.runs.predict import PredictionJob

    job = PredictionJob(tmp_path / "t1c.nii.gz", tmp_path / "flair.nii.gz", tmp_path / "lesion.nii.gz", "diffusion",
                        tmp_path / "out", maps={"adc": tmp_path / "adc.nii.gz", "map_cbf": str(tmp_path / "c.nrrd")})
    assert "--map=adc=" + str(tmp_path / "adc.nii.gz") in job.as_arg_list()
    assert PredictionJob.from_arg_list(job.as_arg_list()) == job


def test_predict_reads_a_map_given_on_its_own(tmp_path, diffusion_folder, capsys):
    from GliomaProgressionLib.cli.main import main

    code = main(["predict", "--t1c", str(diffusion_folder / "t1c.nii.gz"), "--flair",
                 str(diffusion_folder / "flair.nii.gz"), "--lesion", str(diffusion_folder / "lesion.nii.gz"),
                 "--model", "conventional", "--map", f"adc={tmp_path / 'absent.nii.gz'}", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "ADC map" in error[0] and "absent.nii.gz does not exist" in error[0]
    assert not (tmp_path / "out").exists()
