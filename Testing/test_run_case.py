"""``gliomaprog run``: one case end to end, bad case folders, --batch with batch.csv and resume, DICOM input.

The end-to-end run uses a small phantom (CE-T1 given as a DICOM folder, the phantom's future-progression truth as
``recurrence.nii.gz``) and the shipped multiparametric demo model; it runs once, inside a batch of five cases whose
other four are broken in the four ways a case folder usually is. The phantom is cut to a slab around its lesion
(every series and its truth alike, before the CE-T1 becomes DICOM): the whole lesion, the recurrence and white
matter beside them are there, as every check below needs, at a fraction of the whole head's run time.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_writing import PATIENT_STUDY_TAGS, write_dicom_dsc, write_dicom_series
from helpers import crop_case_to_lesion
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib import mrml
from GliomaProgressionLib.runs import chain as run_case
from GliomaProgressionLib.case.folder import check_nifti_complete, read_dicom_dsc, read_dicom_volume
from CTVPlannerLib.lesion import LESION_SEGMENTS
from CTVPlannerLib.schemes import ENHANCING, SNFH
from DSCPerfusionLib.habitats.labels import HABITAT_BY_VALUE, HABITATS, REGIONS
from GliomaProgressionLib.case.files import read_volume
from GliomaProgressionLib.runs.habitats import HABITATS_FILE, HABITATS_FOLDER, HABITATS_JSON
from scipy.ndimage import distance_transform_edt

SCHEME_KEYS = ("rtog46", "rtog60", "eortc", "estro", "ai", "boost")
BAD_CASES = {  # case folder -> what its one-line error must say
    "missing_flair": "has no FLAIR",
    "dsc_3d": "a 4D series (x, y, z, time) is needed",
    "no_overlap": "does not overlap the CE-T1",
    "corrupt_t1c": "is damaged or incomplete",
}


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_cache(fresh_model_cache):
    return fresh_model_cache


def _copy_case(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("truth"))
    return target


def _good_case(source: Path, target: Path) -> Path:
    """The phantom with its CE-T1 as a DICOM folder (a scanner's patient and study) and its progression truth as
    the recurrence."""
    case = _copy_case(source, target)
    write_dicom_series(sitk.ReadImage(str(case / "t1c.nii.gz")), case / "t1c", PATIENT_STUDY_TAGS)
    (case / "t1c.nii.gz").unlink()
    shutil.copy(source / "truth" / "progression.nii.gz", case / "recurrence.nii.gz")
    return case


def _bad_cases(source: Path, cases: Path) -> None:
    (_copy_case(source, cases / "missing_flair") / "flair.nii.gz").unlink()
    dsc_3d = _copy_case(source, cases / "dsc_3d")
    sitk.WriteImage(sitk.ReadImage(str(dsc_3d / "dsc.nii.gz"))[:, :, :, 0], str(dsc_3d / "dsc.nii.gz"))
    no_overlap = _copy_case(source, cases / "no_overlap")
    flair = sitk.ReadImage(str(no_overlap / "flair.nii.gz"))
    flair.SetOrigin(tuple(v + 400.0 for v in flair.GetOrigin()))  # another session, or another patient
    sitk.WriteImage(flair, str(no_overlap / "flair.nii.gz"))
    corrupt = _copy_case(source, cases / "corrupt_t1c")
    data = (corrupt / "t1c.nii.gz").read_bytes()
    (corrupt / "t1c.nii.gz").write_bytes(data[: len(data) // 3])  # a transfer cut short


@pytest.fixture(scope="module")
def cases(tmp_path_factory, small_case_folder) -> Path:
    """Copies of the shared small case cut to the slab around its lesion: the good case and the four bad ones,
    side by side (read by the tests, never changed)."""
    source = shutil.copytree(small_case_folder, tmp_path_factory.mktemp("slab") / "case")
    crop_case_to_lesion(source)
    cases = tmp_path_factory.mktemp("batch") / "cases"
    _good_case(source, cases / "good")
    _bad_cases(source, cases)
    return cases


@pytest.fixture(scope="module")
def batch(cases, model_cache):
    """One batch run over the good case and the four bad ones (the only end-to-end run of this file: the tests
    that read it are marked slow)."""
    out = cases.parent / "out"
    code = cli.main(["run", str(cases), "--out", str(out), "--batch", "--quiet"])
    return {"cases": cases, "out": out, "code": code, "rows": _rows(out)}


def _rows(out: Path) -> dict[str, dict]:
    with open(out / run_case.BATCH_CSV, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def report(batch) -> dict:
    return json.loads((batch["out"] / "good" / "report.json").read_text())


# --- batch, failures, resume ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_completes_the_good_case_and_records_why_the_others_failed(batch):
    rows = batch["rows"]
    assert batch["code"] == 2  # some cases failed
    assert rows["good"]["status"] == "complete" and rows["good"]["message"] == ""
    for name, expected in BAD_CASES.items():
        assert rows[name]["status"] == "failed", name
        assert expected in rows[name]["message"], rows[name]["message"]
        assert "\n" not in rows[name]["message"]
        assert not (batch["out"] / name).exists(), "a failed case leaves no partial output"
    assert run_case.is_complete(batch["out"] / "good")


@pytest.mark.slow
def test_resume_skips_complete_cases_and_retries_failed_ones(batch, capsys):
    report_json = batch["out"] / "good" / "report.json"
    before = report_json.stat().st_mtime_ns
    code = cli.main(["run", str(batch["cases"]), "--out", str(batch["out"]), "--batch", "--quiet"])
    rows = _rows(batch["out"])
    assert code == 2
    assert rows["good"]["status"] == "skipped"
    assert rows["good"]["progression_predicted"] == batch["rows"]["good"]["progression_predicted"]
    assert report_json.stat().st_mtime_ns == before
    assert all(rows[name]["status"] == "failed" for name in BAD_CASES)
    assert "1 skipped (already complete), 4 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_an_incomplete_output_is_not_taken_for_a_complete_one(batch, tmp_path):
    copy = tmp_path / "good"
    shutil.copytree(batch["out"] / "good", copy)
    assert run_case.is_complete(copy)
    ncbv = copy / "registered" / "ncbv.nii.gz"
    ncbv.write_bytes(ncbv.read_bytes()[:-1000])  # a copy cut short: the file is there, its content is not
    assert not run_case.is_complete(copy)
    shutil.copy(batch["out"] / "good" / "registered" / "ncbv.nii.gz", ncbv)
    assert run_case.is_complete(copy)
    (copy / "scene.mrb").unlink()
    assert not run_case.is_complete(copy)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_a_bad_single_case_ends_with_one_clear_line(cases, name, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["run", str(cases / name), "--out", str(out), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("gliomaprog run: error:") and BAD_CASES[name] in error
    assert len(error.splitlines()) == 1
    assert not out.exists()


def test_batch_on_a_single_case_folder_says_so(cases, tmp_path, capsys):
    code = cli.main(["run", str(cases / "good"), "--out", str(tmp_path / "out"), "--batch", "--quiet"])
    assert code == 2
    assert "is a case folder itself" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- what the good case wrote ------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_has_ncbv_per_lesion_label_the_verdict_and_metrics_per_scheme(report):
    regions = report["ncbv"]["regions"]
    for value in (1, 2, 3):  # the phantom has necrosis, SNFH and enhancing tumour (no cavity)
        name = LESION_SEGMENTS[value][0]
        assert regions[name]["label"] == value and regions[name]["voxels"] > 0
        assert regions[name]["mean"] > 0
    # Enhancing tumour has raised CBV, white matter defines 1: a mislabelled or misregistered map fails this.
    assert regions[LESION_SEGMENTS[3][0]]["mean"] > 1.5 * regions[LESION_SEGMENTS[2][0]]["mean"]
    assert abs(regions["NAWM reference (DSC grid)"]["mean"] - 1.0) < 0.05
    verdict = report["verdict"]
    assert isinstance(verdict["progression_predicted"], bool) and verdict["nel_volume_ml"] > 0
    assert report["model"]["id"] == "multiparametric" and report["model"]["synthetic"]
    assert report["notices"] == ["Demo model trained on synthetic data \u2014 not for clinical use"]
    targets = {target["key"]: target for target in report["ctv"]["targets"]}
    assert set(targets) == set(SCHEME_KEYS)
    assert report["ctv"]["recurrence"]["volume_ml"] > 0
    for target in targets.values():
        assert set(target["metrics"]) >= {"sensitivity", "specificity", "dice", "hd95_mm", "tversky", "pcc", "pattern"}
    # The recurrence lies in the non-enhancing lesion, all of which CTV46 covers with 2 cm to spare.
    assert targets["rtog46"]["metrics"]["sensitivity"] == 1.0
    assert set(report["timings_s"]) == set(run_case.STAGES) | {"total"}
    assert report["software"]["gliomaprogression"] and report["software"]["nnunetv2"]


@pytest.mark.slow
def test_every_module_wrote_its_intermediates(batch, report):
    folder = batch["out"] / "good"
    for name in ("perfusion/ncbv.nii.gz", "perfusion/perfusion.json", "prediction/progression_prob.nii.gz",
                 "prediction/prediction.json", "ctv/ctv.json", "registered/flair_to_t1c.tfm",
                 "converted/t1c.nii.gz", "report.png"):
        assert (folder / name).is_file(), name
    assert set(report["outputs"]) == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert report["inputs"]["t1c"] == "DICOM folder t1c" and report["inputs"]["recurrence"] == "recurrence.nii.gz"
    for name in ("report.json", "perfusion/perfusion.json", "prediction/prediction.json", "ctv/ctv.json"):
        text = (folder / name).read_text(encoding="utf-8")
        assert str(batch["cases"]) not in text, f"{name}: no absolute input path"
        assert str(batch["out"]) not in text, f"{name}: no path of the run's own (staging) folder"
    perfusion = json.loads((folder / "perfusion" / "perfusion.json").read_text())
    assert "skipped" not in perfusion["ftb"] and (folder / "perfusion" / "ftb.nii.gz").is_file()  # as `perfusion` does
    assert perfusion["protocol_qa"] == report["protocol"]  # the sidecar read once, the same check in both
    ctv_inputs = json.loads((folder / "ctv" / "ctv.json").read_text())["inputs"]
    assert ctv_inputs["lesion"] == "registered/lesion.nii.gz"  # relative to the run folder, where it now is


@pytest.mark.slow
def test_rtstruct_holds_the_gtv_and_every_nonempty_target(batch, report):
    folder = batch["out"] / "good" / "rtstruct"
    structure_set = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    names = {roi.ROIName for roi in structure_set.StructureSetROISequence}
    expected = {t["name"] for t in report["ctv"]["targets"] if t["volume_ml"] > 0} | {"GTV"}
    assert names == expected
    assert sorted(p.name for p in folder.iterdir()) == ["RTSTRUCT.dcm", "SEG.dcm"], "no MR copy of a DICOM source"
    source = pydicom.dcmread(next((batch["cases"] / "good" / "t1c").iterdir()))
    for ds in (structure_set, pydicom.dcmread(folder / "SEG.dcm")):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                        "AccessionNumber", "FrameOfReferenceUID"):
            assert ds.get(keyword) == source.get(keyword), keyword
    series = structure_set.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert len(series.ContourImageSequence) == len(list((batch["cases"] / "good" / "t1c").iterdir()))


@pytest.mark.slow
def test_scene_reads_back_with_every_node(batch, report, tmp_path):
    scene = mrml.read_scene_bundle(batch["out"] / "good" / "scene.mrb", tmp_path / "cache")

    def names(cls):
        nodes = scene.GetNodesByClass(cls)
        return {nodes.GetItemAsObject(i).GetName() for i in range(nodes.GetNumberOfItems())}

    assert names("vtkMRMLScalarVolumeNode") >= {"CE-T1 (1 mm)", "FLAIR (registered)", "nCBV (registered)",
                                                "Progression probability", "CE-T1 (acquired)", "FLAIR (acquired)",
                                                "nCBV (DSC grid)", "rCBV (DSC grid)", "K2 (DSC grid, 1/s)"}
    assert names("vtkMRMLSegmentationNode") == {"Lesion", "Predicted progression", "Brain", "Recurrence",
                                                "CTV proposals", "NAWM reference", "Perfusion habitats"}
    assert names("vtkMRMLTableNode") >= {"Verdict", "nCBV by region", "CTV comparison"}
    assert names("vtkMRMLLinearTransformNode") == {"FLAIR to CE-T1", "DSC to CE-T1"}
    assert "Mean deltaR2* curves" in names("vtkMRMLPlotChartNode")
    sequence = scene.GetFirstNodeByClass("vtkMRMLSequenceNode")
    assert sequence.GetNumberOfDataNodes() == 60
    heat_map = scene.GetFirstNodeByName("Progression probability").GetDisplayNode()
    assert heat_map.GetColorNode().GetName() == "Progression heat map"
    for node in (scene.GetFirstNodeByName("Progression probability"), scene.GetFirstNodeByName("CE-T1 (1 mm)")):
        assert node.GetImageData() is not None and node.GetImageData().GetNumberOfPoints() > 0
    lesion = scene.GetFirstNodeByName("Lesion").GetSegmentation()
    assert {lesion.GetNthSegment(i).GetName() for i in range(lesion.GetNumberOfSegments())} == \
        {LESION_SEGMENTS[v][0] for v in (1, 2, 3)}
    proposals = scene.GetFirstNodeByName("CTV proposals").GetSegmentation()
    assert [proposals.GetNthSegment(i).GetName() for i in range(proposals.GetNumberOfSegments())] == \
        [t["name"] for t in report["ctv"]["targets"]]
    layout = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpPlotTableView
    red = scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert scene.GetNodeByID(red.GetForegroundVolumeID()).GetName() == "Progression probability"
    table_view = scene.GetSingletonNode("TableView1", "vtkMRMLTableViewNode")
    assert scene.GetNodeByID(table_view.GetTableNodeID()).GetName() == "CTV comparison"


@pytest.mark.slow
def test_report_png_is_a_full_page(batch):
    page = sitk.GetArrayFromImage(sitk.ReadImage(str(batch["out"] / "good" / "report.png")))
    assert page.shape[:2] == (1450, 1800)
    assert page[..., :3].std() > 30  # images and text, not a blank page


# --- DICOM input and progress --------------------------------------------------------------------------------


def _oblique(image: sitk.Image) -> sitk.Image:
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.2)
    image.SetDirection(tuple(np.array(rotation.GetMatrix()).ravel()))
    return image


def test_dicom_dsc_folder_becomes_the_4d_series_with_its_timing(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(100, 1000, size=(20, 4, 6, 5), dtype=np.int16)  # [t, k, j, i]
    frames = [_oblique(sitk.GetImageFromArray(frame)) for frame in array]
    for frame in frames:
        frame.SetSpacing((1.8, 1.9, 5.0))
        frame.SetOrigin((10.0, -20.0, 30.0))
    write_dicom_dsc(sitk.JoinSeries(frames), tmp_path / "dsc", tr_ms=1500, te_ms=30)
    series, tr_s, te_s = read_dicom_dsc(tmp_path / "dsc")
    assert np.array_equal(series.array, array)
    assert (tr_s, te_s) == (1.5, 0.03)
    assert np.allclose(series.spacing, (1.8, 1.9, 5.0), atol=1e-4)
    with pytest.raises(ValueError, match="repeats slice positions"):
        read_dicom_volume(tmp_path / "dsc", "CE-T1")


def test_dicom_dsc_headers_give_the_protocol_check_flip_angle_and_field_strength(tmp_path):
    from GliomaProgressionLib.case.folder import dsc_sidecar_header

    series = sitk.JoinSeries([sitk.Image(4, 4, 2, sitk.sitkInt16) + 100 for _ in range(3)])
    plain, tagged = tmp_path / "plain", tmp_path / "tagged"
    write_dicom_dsc(series, plain / "dsc", tr_ms=1500, te_ms=30)
    write_dicom_dsc(series, tagged / "dsc", tr_ms=1500, te_ms=30,
                    extra_tags={"0018|1314": "60", "0018|0087": "2.89"})
    assert dsc_sidecar_header(plain) is None  # nothing known: the check says "unknown"
    assert dsc_sidecar_header(tagged) == {"FlipAngle": 60.0, "MagneticFieldStrength": 2.89}
    (tagged / "dsc.json").write_text(json.dumps({"FlipAngle": 35, "PreloadDose": 0.1}))
    assert dsc_sidecar_header(tagged) == {"FlipAngle": 35, "MagneticFieldStrength": 2.89, "PreloadDose": 0.1}


def test_dicom_volume_keeps_an_oblique_geometry(tmp_path):
    image = _oblique(sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)))
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-5.0, 12.0, 3.0))
    write_dicom_series(image, tmp_path / "t1c")
    read = read_dicom_volume(tmp_path / "t1c", "CE-T1")
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert np.allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_a_truncated_uncompressed_nifti_is_refused(tmp_path):
    # ITK would read it, zero-filling the missing two thirds.
    image = sitk.GetImageFromArray(np.ones((8, 9, 10), np.int16))
    sitk.WriteImage(image, str(tmp_path / "t1c.nii"))
    data = (tmp_path / "t1c.nii").read_bytes()
    (tmp_path / "t1c.nii").write_bytes(data[: len(data) // 3])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t1c.nii"))).min() == 0
    with pytest.raises(ValueError, match="is incomplete: it holds"):
        check_nifti_complete(tmp_path / "t1c.nii", "CE-T1")


def test_stage_progress_shows_stage_elapsed_and_eta():
    import io

    now = [0.0]
    stream = io.StringIO()
    progress = run_case.StageProgress("case7", stream=stream, clock=lambda: now[0])
    progress.start("read")
    now[0] = 3.0
    progress.start("predict")
    now[0] = 13.0
    progress.update(0.25, "Sliding window 3/12")
    now[0] = 20.0
    timings = progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[case7 1/7 0:00] Reading and checking the series"
    assert lines[1] == "[case7 3/7 0:03] Progression prediction"
    assert lines[2] == "[case7 3/7 0:13]  25% Sliding window 3/12 (stage 0:10, about 0:30 left)"
    assert timings == {"read": 3.0, "predict": 17.0, "total": 20.0}


# --- perfusion habitats (issue 14), on the good case of the batch ----------------------------------------------


@pytest.fixture(scope="module")
def habitats_run(batch, report):
    status = batch["rows"]["good"]["status"]
    return {"code": 0 if status == "complete" else 1, "out": batch["out"] / "good", "report": report}


@pytest.mark.slow
def test_the_habitats_folder_is_written_and_checksummed_in_report_json(habitats_run):
    assert habitats_run["code"] == 0
    report, out = habitats_run["report"], habitats_run["out"]
    assert "skipped" not in report["habitats"]
    written = sorted(p.relative_to(out).as_posix() for p in (out / HABITATS_FOLDER).iterdir())
    assert f"{HABITATS_FOLDER}/{HABITATS_FILE}" in written and f"{HABITATS_FOLDER}/{HABITATS_JSON}" in written
    for name in written:
        assert report["output_files"][name]["sha256"] == run_case._file_record(out / name)["sha256"], name
    assert run_case.is_complete(out)
    assert str(out.parent) not in (out / HABITATS_FOLDER / HABITATS_JSON).read_text(), "no machine path"
    model = report["habitats"]["model"]
    assert model["id"] == "habitats-demo" and model["synthetic"] is True and len(model["sha256"]) == 64
    assert "synthetic" in model["notice"]


@pytest.mark.slow
def test_the_fractions_of_each_region_sum_to_one_and_match_habitats_json(habitats_run):
    fractions = habitats_run["report"]["habitats"]["fractions"]
    assert set(fractions) == set(REGIONS)
    for region in REGIONS:
        assert sum(fractions[region].values()) == pytest.approx(1.0, abs=1e-3), region
        assert all(value >= 0 for value in fractions[region].values())
    written = json.loads((habitats_run["out"] / HABITATS_FOLDER / HABITATS_JSON).read_text())["fractions"]
    for region in REGIONS:
        for key, value in fractions[region].items():
            assert written[region][key] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_the_ce_t1_grid_map_lies_on_the_lesion_within_one_dsc_voxel(habitats_run):
    """Nearest neighbour both ways through one registration: a labelled CE-T1-grid voxel is within half a DSC voxel
    (and half a 1 mm voxel) of a CEL or NEL voxel; a misplaced map (flipped, shifted, wrong transform) is not."""
    out = habitats_run["out"]
    habitats = read_volume(out / HABITATS_FOLDER / HABITATS_FILE)
    lesion = read_volume(out / "registered" / "lesion.nii.gz")
    assert habitats.array.shape == lesion.array.shape
    assert np.allclose(habitats.ijk_to_ras, lesion.ijk_to_ras, atol=1e-4)
    labelled = habitats.array > 0
    assert labelled.sum() > 100
    assert set(np.unique(habitats.array[labelled])) <= set(HABITAT_BY_VALUE)
    inside = (lesion.array == ENHANCING) | (lesion.array == SNFH)
    dsc_spacing = read_volume(out / HABITATS_FOLDER / "habitats_dsc.nii.gz").spacing
    bound = 0.5 * np.linalg.norm(dsc_spacing) + 0.5 * np.linalg.norm(lesion.spacing) + 1e-3
    box = _box(labelled | inside, margin=int(np.ceil(bound / lesion.spacing.min())) + 1)
    distance = distance_transform_edt(~inside[box], sampling=lesion.spacing[::-1])
    assert distance[labelled[box]].max() <= bound
    assert (labelled & inside).sum() / labelled.sum() >= 0.75  # the rest: DSC voxels across the lesion's border
    assert (labelled & inside).sum() / inside.sum() >= 0.8


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels: distances near the lesion without the whole grid."""
    found = np.argwhere(mask)
    low, high = np.maximum(found.min(axis=0) - margin, 0), found.max(axis=0) + margin + 1
    return tuple(slice(a, b) for a, b in zip(low, high))


@pytest.mark.slow
def test_the_scene_holds_the_habitat_segmentation_and_fraction_table(habitats_run, tmp_path):
    scene = mrml.read_scene_bundle(habitats_run["out"] / "scene.mrb", tmp_path / "cache")
    node = scene.GetFirstNodeByName("Perfusion habitats")
    assert node is not None and node.IsA("vtkMRMLSegmentationNode")
    segmentation = node.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    present = {HABITAT_BY_VALUE[int(v)].name for v in np.unique(read_volume(
        habitats_run["out"] / HABITATS_FOLDER / HABITATS_FILE).array) if v}
    assert names == present and len(names) >= 2
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        expected = next(h.colour for h in HABITATS if h.name == segment.GetName())
        assert np.allclose(segment.GetColor(), expected, atol=1e-3)
    table = scene.GetFirstNodeByName("Perfusion habitat fractions")
    assert table is not None and table.GetNumberOfRows() == len(HABITATS)
