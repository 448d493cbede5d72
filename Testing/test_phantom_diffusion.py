"""The phantom's diffusion series (issue 15): ADC, MD and FA maps on their own grid with seed 004's contrasts in the
future-progression wedge, the ADC-only replication cohort, the switch that leaves every other series as it was,
and the raw DTI series with its FSL gradient files."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from GliomaProgressionLib.case.channels import DIFFUSION_FILES
from GliomaProgressionLib.case.files import read_volume
from GliomaProgressionLib.case.geometry import sitk_from_volume
from GliomaProgressionLib.case.registration import transform_from_ras_matrix
from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.phantom.synthetic import (
    ADC_VISIBLE_ADC_RATIO, ADC_VISIBLE_FA_RATIO, DIFFUSION_PROTOCOLS, DWI_B_VALUE, DWI_DIRECTIONS,
    NCBV_VISIBLE_CBV_RATIO, PhantomConfig, adc_replication_config, adc_replication_visibility,
    diffusion_weighted_signal, gradient_scheme, prolate_tensor_eigenvalues)

ADC_ONLY_SEED = 0  # adc_replication_visibility(0) == "adc"
OEDEMA = 2
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # the diffusion voxel is 4 mm thick: erode within slices


def _changed_fields(config: PhantomConfig) -> dict:
    default = PhantomConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(default, f.name)}


@pytest.fixture(scope="module")
def adc_only(synthetic_case):
    return synthetic_case(**_changed_fields(adc_replication_config(ADC_ONLY_SEED)))


@pytest.fixture(scope="module")
def without_diffusion(synthetic_case):
    return synthetic_case(**{**_changed_fields(adc_replication_config(ADC_ONLY_SEED)), "diffusion": False})


@pytest.fixture(scope="module")
def dwi_folder(adc_only, tmp_path_factory):
    return write_case(adc_only, tmp_path_factory.mktemp("dwi") / "case", dwi=True)


def _regions_on(case, target, ras_t1c_from_ras_series) -> tuple[np.ndarray, np.ndarray]:
    """(wedge, rest of the oedema) on ``target``'s grid, cores only (eroded in-plane): the lesion and progression
    truth of the CE-T1 grid carried there through the true head poses, nearest neighbour."""
    transform = transform_from_ras_matrix(np.linalg.inv(np.asarray(ras_t1c_from_ras_series)))  # series -> CE-T1
    grid = sitk_from_volume(target)

    def carried(volume):
        image = sitk.Resample(sitk_from_volume(volume), grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(image)

    lesion, progression = carried(case.lesion), carried(case.truth["progression"]) > 0
    wedge, rest = progression & (lesion == OEDEMA), (lesion == OEDEMA) & ~progression
    return ndimage.binary_erosion(wedge, IN_PLANE), ndimage.binary_erosion(rest, IN_PLANE)


def _ratio_and_error(values: np.ndarray, wedge: np.ndarray, rest: np.ndarray) -> tuple[float, float]:
    """Mean in the wedge / mean in the rest of the oedema, and its standard error."""
    a, b = values[wedge].astype(float), values[rest].astype(float)
    ratio = a.mean() / b.mean()
    relative = np.sqrt(a.var() / a.size / a.mean() ** 2 + b.var() / b.size / b.mean() ** 2)
    return float(ratio), float(ratio * relative)


def _diffusion_regions(case):
    return _regions_on(case, case.diffusion["adc"], case.metadata["diffusion"]["series"]["ras_t1c_from_ras_series"])


def test_maps_on_their_own_grid_in_the_stated_units(adc_only, tmp_path):
    from GliomaProgressionLib.phantom.folder import write_diffusion

    maps = adc_only.diffusion
    assert set(maps) == set(DIFFUSION_FILES)
    protocol = DIFFUSION_PROTOCOLS["small"]
    for name in DIFFUSION_FILES:
        assert maps[name].array.dtype == np.float32
        np.testing.assert_allclose(maps[name].spacing, protocol.spacing, atol=1e-6)
        np.testing.assert_array_equal(maps[name].ijk_to_ras, adc_only.truth["md"].ijk_to_ras)
    assert maps["adc"].array.shape != adc_only.flair.array.shape  # a grid of its own, not FLAIR's
    brain = adc_only.truth["brain_diffusion"].array > 0
    assert brain.sum() > 10000 and np.all(maps["adc"].array[~brain] == 0)
    truth_md, truth_fa = adc_only.truth["md"].array, adc_only.truth["fa"].array
    # 10^-6 mm^2/s: the brain's bulk (white matter ~750, grey ~850) with CSF (~3000) as the top tail.
    assert 700 < np.median(maps["adc"].array[brain]) < 1100
    assert 2500 < np.percentile(truth_md[brain], 99.9) <= 3000
    assert 0.0 <= maps["fa"].array.min() and maps["fa"].array.max() <= 1.0
    assert np.percentile(truth_fa[brain], 99) == pytest.approx(0.45, abs=0.02)  # deep white matter
    for name in ("adc", "md"):  # scanner noise, seeded: SD as configured around the noise-free map
        difference = (maps[name].array - truth_md)[brain & (truth_md > 300)]
        assert difference.std() == pytest.approx(adc_only.config.diffusion_noise[name], rel=0.1)
    write_diffusion(adc_only, tmp_path)  # what write_case writes of them
    for name in DIFFUSION_FILES:
        written = read_volume(tmp_path / f"{name}.nii.gz")
        np.testing.assert_allclose(written.ijk_to_ras, maps[name].ijk_to_ras, atol=1e-4)
        np.testing.assert_allclose(written.array, maps[name].array, rtol=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"{name}.nii.gz" for name in DIFFUSION_FILES)


def test_progression_wedge_has_the_configured_diffusion_ratios(adc_only):
    config = adc_only.config
    wedge, rest = _diffusion_regions(adc_only)
    assert wedge.sum() >= 30 and rest.sum() >= 300
    for name, configured in (("adc", config.progression_adc_ratio), ("md", config.progression_adc_ratio),
                             ("fa", config.progression_fa_ratio)):
        measured, error = _ratio_and_error(adc_only.diffusion[name].array, wedge, rest)
        # Within three standard errors of the noise, plus 0.01 for the partial volume left in the cores.
        assert abs(measured - configured) < 3 * error + 0.01, (name, measured, configured, error)
    assert config.progression_adc_ratio < 0.9  # the wedge really is darker on ADC


def test_adc_only_case_hides_the_wedge_from_ncbv_and_flair(adc_only):
    series = adc_only.metadata["series"]
    wedge, rest = _regions_on(adc_only, adc_only.truth["ncbv"], series["dsc"]["ras_t1c_from_ras_series"])
    ncbv, _ = _ratio_and_error(adc_only.truth["ncbv"].array, wedge, rest)
    assert ncbv == pytest.approx(1.0, abs=0.05)
    wedge, rest = _regions_on(adc_only, adc_only.flair, series["flair"]["ras_t1c_from_ras_series"])
    flair, error = _ratio_and_error(adc_only.flair.array, wedge, rest)
    assert abs(flair - 1.0) < 3 * error + 0.02
    adc, _ = _ratio_and_error(adc_only.diffusion["adc"].array, *_diffusion_regions(adc_only))
    assert adc < 0.88


def test_adc_replication_cohort_splits_visibility_as_documented():
    from GliomaProgressionLib.models.training import cohort_config, is_positive

    seeds = range(400)
    kinds = [adc_replication_visibility(seed) for seed in seeds]
    assert [kind == "none" for kind in kinds] == [not is_positive(seed) for seed in seeds]
    assert 0.4 < kinds.count("adc") / kinds.count("ncbv") < 1.6
    oedema_cbv = PhantomConfig().cbv.oedema / PhantomConfig().cbv.white
    for seed, kind in zip(range(12), kinds):
        config = adc_replication_config(seed, size="full")
        assert config.seed == seed and config.size == "full" and config.diffusion
        assert config == adc_replication_config(seed, size="full")
        assert config.progression_flair_ratio == 1.0
        if kind == "adc":
            assert ADC_VISIBLE_ADC_RATIO[0] <= config.progression_adc_ratio <= ADC_VISIBLE_ADC_RATIO[1]
            assert ADC_VISIBLE_FA_RATIO[0] <= config.progression_fa_ratio <= ADC_VISIBLE_FA_RATIO[1]
            assert config.progression_cbv_ratio == pytest.approx(oedema_cbv)
        else:
            assert config.progression_adc_ratio == config.progression_fa_ratio == 1.0
            low, high = NCBV_VISIBLE_CBV_RATIO if kind == "ncbv" else (oedema_cbv, oedema_cbv)
            assert low <= config.progression_cbv_ratio <= high
        if kind == "none":  # as the demo recipe's negatives: nothing to see
            assert config.progression_cbv_ratio == pytest.approx(cohort_config(seed).progression_cbv_ratio)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        adc_replication_config(-1)


def test_turning_diffusion_off_changes_nothing_else(adc_only, without_diffusion, tmp_path):
    assert without_diffusion.diffusion is None and without_diffusion.metadata["diffusion"] is None
    for name in ("t1c", "flair", "dsc", "lesion"):
        np.testing.assert_array_equal(getattr(adc_only, name).array, getattr(without_diffusion, name).array)
        np.testing.assert_array_equal(getattr(adc_only, name).ijk_to_ras, getattr(without_diffusion, name).ijk_to_ras)
    diffusion_truth = {"md", "fa", "dwi_b0", "brain_diffusion"}
    assert set(adc_only.truth) - set(without_diffusion.truth) == diffusion_truth
    for name, volume in without_diffusion.truth.items():
        np.testing.assert_array_equal(adc_only.truth[name].array, volume.array)
    with_keys = {k: v for k, v in adc_only.metadata.items() if k not in ("config", "diffusion")}
    assert with_keys == {k: v for k, v in without_diffusion.metadata.items() if k not in ("config", "diffusion")}
    folder = write_case(without_diffusion, tmp_path / "case")
    assert not [path for pattern in ("adc*", "md*", "fa*", "dwi*") for path in folder.glob(pattern)]
    assert not any((folder / "truth" / f"{name}.nii.gz").exists() for name in diffusion_truth)
    with pytest.raises(ValueError, match="made without diffusion") as raised:
        write_case(without_diffusion, tmp_path / "dwi", dwi=True)
    assert "\n" not in str(raised.value) and not (tmp_path / "dwi").exists()


def test_raw_dti_series_and_its_gradient_files(adc_only, dwi_folder):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    folder = dwi_folder
    assert (folder / "adc.nii.gz").is_file()
    assert not (folder / "md.nii.gz").exists() and not (folder / "fa.nii.gz").exists()  # fitted from the series
    for name in ("t1c", "flair", "dsc", "lesion"):
        assert (folder / f"{name}.nii.gz").is_file()
    assert (folder / "truth" / "md.nii.gz").is_file() and (folder / "truth" / "truth.json").is_file()
    series = read_volume(folder / "dwi.nii.gz")
    bvals = np.loadtxt(folder / "dwi.bval", ndmin=1)
    bvecs = np.loadtxt(folder / "dwi.bvec", ndmin=2)
    volumes = series.array.shape[0]
    assert volumes == bvals.size == 1 + DWI_DIRECTIONS and bvecs.shape == (3, volumes)
    assert sorted(set(bvals)) == [0.0, DWI_B_VALUE]
    np.testing.assert_allclose(np.linalg.norm(bvecs[:, bvals > 0], axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(series.ijk_to_ras, adc_only.truth["md"].ijk_to_ras, atol=1e-4)
    # A tensor fit of the written series finds the noise-free MD and FA of the truth (white matter's, in bulk).
    truth_md, truth_fa = adc_only.truth["md"].array, adc_only.truth["fa"].array
    white = (adc_only.truth["brain_diffusion"].array > 0) & (truth_fa > 0.4)
    white[: white.shape[0] // 2] = False  # half the slab is plenty and twice as fast
    data = np.moveaxis(series.array.astype(np.float32), 0, -1)[white]
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs.T)).fit(data)
    assert np.median(fit.md * 1e6) == pytest.approx(np.median(truth_md[white]), rel=0.05)
    assert np.median(fit.fa) == pytest.approx(np.median(truth_fa[white]), abs=0.05)


def test_tensor_signal_model_gives_back_md_and_fa():
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    bvals, bvecs = gradient_scheme()
    md, fa = np.array([750.0, 1400.0, 3000.0]), np.array([0.45, 0.2, 0.0])
    principal = np.array([[1.0, 0, 0], [0.3, 0.4, 0.8], [0, 0, 1.0]])
    signal = diffusion_weighted_signal(md, fa, principal, np.full(3, 900.0), bvals, bvecs)
    assert signal.shape == (1 + DWI_DIRECTIONS, 3) and np.allclose(signal[0], 900.0)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(np.moveaxis(signal, 0, -1))
    np.testing.assert_allclose(fit.md * 1e6, md, rtol=1e-4)
    np.testing.assert_allclose(fit.fa, fa, atol=1e-4)
    np.testing.assert_allclose(np.abs(fit.evecs[1, :, 0]), principal[1] / np.linalg.norm(principal[1]), atol=1e-4)
    np.testing.assert_allclose(prolate_tensor_eigenvalues(np.array(1.0), np.array(1.0)), [3.0, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="at least 6 gradient directions"):
        gradient_scheme(5)


@pytest.mark.parametrize("bad", [{"progression_adc_ratio": 0.0}, {"progression_fa_ratio": -1.0},
                                 {"progression_fa_ratio": 6.0}, {"diffusion_noise": {"adc": 40.0}},
                                 {"diffusion_noise": {"adc": 40.0, "md": -1.0, "fa": 0.03}}])
def test_bad_diffusion_settings_are_refused_in_one_sentence(bad):
    with pytest.raises(ValueError) as raised:
        PhantomConfig(diffusion=True, **bad).validated()
    message = str(raised.value)
    assert "\n" not in message and message.endswith(".") and any(name in message for name in bad)


def test_phantom_command_refuses_dwi_without_diffusion(tmp_path):
    from helpers import assert_one_line_error, gliomaprog

    refused = gliomaprog("phantom", "--out", tmp_path / "case", "--size", "small", "--no-diffusion", "--dwi")
    assert_one_line_error(refused, "--dwi", "--no-diffusion")
    assert not (tmp_path / "case").exists()
