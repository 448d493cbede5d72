"""Cases without DSC and BraTS challenge folders (issue 12): read, mapped, run end to end with the conventional model,
refused in one sentence by everything that needs nCBV.

The cases are copies of one small phantom made without DSC: as it is written (the project's layout), renamed as a
BraTS 2023/2024 folder (``<ID>-t1c.nii.gz``, labels unchanged) and as a BraTS 2021 folder (``<ID>_t1ce.nii.gz``,
enhancing tumour written as label 4). The phantom is cut to a slab around its lesion: names, labels and what a run
without nCBV skips do not need the whole head, and the end-to-end run costs a fraction of it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import assert_one_line_error, crop_case_to_lesion, gliomaprog
from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.folder import read_case, read_series
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.report.figure import PERFUSION_SKIPPED

BRATS_2023 = {"t1c": "-t1c", "flair": "-t2f", "lesion": "-seg", "extra": ("-t1n", "-t2w")}
BRATS_2021 = {"t1c": "_t1ce", "flair": "_flair", "lesion": "_seg", "extra": ("_t1", "_t2")}


@pytest.fixture(scope="module")
def model_cache(fresh_model_cache):
    return fresh_model_cache


@pytest.fixture(scope="module")
def no_dsc_case(tmp_path_factory) -> Path:
    """The small phantom made without DSC, in the project's layout (no dsc.nii.gz, no dsc.json), cut to the slab
    around its lesion."""
    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    folder = write_case(generate_case(PhantomConfig(seed=3, size="small", dsc=False)),
                        tmp_path_factory.mktemp("no-dsc") / "case")
    assert not (folder / "dsc.nii.gz").exists()
    crop_case_to_lesion(folder)
    return folder


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _write_labels(array: np.ndarray, like: Path, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(image, str(path), True)


def brats_folder(source: Path, target: Path, case_id: str, names: dict, labels: np.ndarray | None = None) -> Path:
    """``source`` renamed as a BraTS challenge folder; ``labels`` replace the lesion's (for another convention).
    The unused sequences (T1 native, T2) are there too, as in a download, and must be ignored."""
    target.mkdir(parents=True)
    shutil.copy(source / "t1c.nii.gz", target / f"{case_id}{names['t1c']}.nii.gz")
    shutil.copy(source / "flair.nii.gz", target / f"{case_id}{names['flair']}.nii.gz")
    for ending in names["extra"]:
        shutil.copy(source / "flair.nii.gz", target / f"{case_id}{ending}.nii.gz")
    seg = target / f"{case_id}{names['lesion']}.nii.gz"
    if labels is None:
        shutil.copy(source / "lesion.nii.gz", seg)
    else:
        _write_labels(labels, source / "lesion.nii.gz", seg)
    return target


def as_brats_2021(labels: np.ndarray) -> np.ndarray:
    """BraTS 2024 labels written as BraTS 2021 writes them: enhancing tumour 4 (there is no cavity here)."""
    assert not (labels == 4).any()
    return np.where(labels == 3, 4, labels)


# --- reading: file names and label conventions --------------------------------------------------------------


def test_a_case_without_dsc_reads_without_it(no_dsc_case):
    inputs = read_case(no_dsc_case, with_dsc=False)
    assert inputs.dsc is None and inputs.timing is None and inputs.notes == []


def test_brats_2023_names_are_read_and_their_labels_kept(no_dsc_case, tmp_path):
    folder = brats_folder(no_dsc_case, tmp_path / "BraTS-GLI-00003-000", "BraTS-GLI-00003-000", BRATS_2023)
    inputs = read_case(folder, with_dsc=False)
    assert inputs.sources["t1c"].endswith("-t1c.nii.gz") and inputs.sources["flair"].endswith("-t2f.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(inputs.lesion), _labels(no_dsc_case / "lesion.nii.gz"))
    assert len(inputs.notes) == 1 and "used unchanged" in inputs.notes[0]


def test_brats_2021_labels_are_mapped_to_2024_and_said_so(no_dsc_case, tmp_path):
    original = _labels(no_dsc_case / "lesion.nii.gz")
    folder = brats_folder(no_dsc_case, tmp_path / "BraTS2021_00003", "BraTS2021_00003", BRATS_2021,
                          as_brats_2021(original))
    inputs = read_case(folder, with_dsc=False)
    assert inputs.sources["t1c"].endswith("_t1ce.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(inputs.lesion), original)  # 4 back to 3
    assert np.array_equal(sitk.GetArrayFromImage(read_series(folder, "lesion")), original)  # the scene's reader
    assert len(inputs.notes) == 1 and "BraTS 2021" in inputs.notes[0] and "mapped to 3" in inputs.notes[0]


def test_label_4_without_3_is_read_as_2021_under_new_names_but_never_in_lesion_files(no_dsc_case, tmp_path):
    labels = as_brats_2021(_labels(no_dsc_case / "lesion.nii.gz"))
    folder = brats_folder(no_dsc_case, tmp_path / "ambiguous", "BraTS-GLI-00003-000", BRATS_2023, labels)
    inputs = read_case(folder, with_dsc=False)
    assert not (sitk.GetArrayFromImage(inputs.lesion) == 4).any()
    assert "lesion.nii.gz" in inputs.notes[0]  # how to keep the labels when 4 is a resection cavity
    own = tmp_path / "own"
    shutil.copytree(no_dsc_case, own)
    _write_labels(labels, own / "lesion.nii.gz", own / "lesion.nii.gz")
    inputs = read_case(own, with_dsc=False)
    assert np.array_equal(sitk.GetArrayFromImage(inputs.lesion), labels) and inputs.notes == []


def test_brats_2021_names_with_label_3_keep_their_labels(no_dsc_case, tmp_path):
    folder = brats_folder(no_dsc_case, tmp_path / "renamed", "BraTS2021_00003", BRATS_2021)
    inputs = read_case(folder, with_dsc=False)
    assert np.array_equal(sitk.GetArrayFromImage(inputs.lesion), _labels(no_dsc_case / "lesion.nii.gz"))
    assert "never uses" in inputs.notes[0]


def test_two_brats_cases_in_one_folder_are_refused_in_one_sentence(no_dsc_case, tmp_path):
    folder = brats_folder(no_dsc_case, tmp_path / "two", "BraTS-GLI-00003-000", BRATS_2023)
    shutil.copy(folder / "BraTS-GLI-00003-000-t1c.nii.gz", folder / "BraTS-GLI-00004-000-t1c.nii.gz")
    with pytest.raises(ValueError, match="holds 2 CE-T1 files with BraTS names"):
        read_case(folder, with_dsc=False)


# --- refusals: what needs nCBV ------------------------------------------------------------------------------


def test_the_multiparametric_model_refuses_a_case_without_dsc(no_dsc_case, model_cache, tmp_path):
    result = gliomaprog("run", no_dsc_case, "--out", tmp_path / "out", "--model", "multiparametric", "--quiet")
    assert_one_line_error(result, "has no DSC series", "'multiparametric'", "conventional")
    assert not (tmp_path / "out").exists()


def test_multiparametric_export_refuses_a_case_without_dsc_in_its_qc(no_dsc_case, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(no_dsc_case, cohort / "case1")
    result = gliomaprog("cohort", "export", cohort, "--out", tmp_path / "Dataset901_X", "--dataset-id", "901",
                        "--channels", "multiparametric", "--quiet")
    assert_one_line_error(result, "case1", "has no DSC series, which the nCBV channel")
    assert not (tmp_path / "Dataset901_X").exists()


def test_conventional_export_takes_a_brats_case_without_dsc(no_dsc_case, tmp_path):
    cohort = tmp_path / "cohort"
    brats_folder(no_dsc_case, cohort / "BraTS2021_00003", "BraTS2021_00003", BRATS_2021,
                 as_brats_2021(_labels(no_dsc_case / "lesion.nii.gz")))
    out = tmp_path / "Dataset902_X"
    assert cli.main(["cohort", "export", str(cohort), "--out", str(out), "--dataset-id", "902", "--channels",
                     "conventional", "--spacing-mm", "2", "--quiet"]) == 0
    with open(out / "qc.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok" and row["dsc_mattes_mi"] == "" and "mapped to 3" in row["warnings"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["BraTS2021_00003_0000.nii.gz",
                                                                     "BraTS2021_00003_0001.nii.gz"]


# --- end to end: a batch of the two BraTS folders -------------------------------------------------------------


@pytest.fixture(scope="module")
def brats_batch(tmp_path_factory, no_dsc_case, model_cache):
    """``gliomaprog run --batch --model conventional`` over a BraTS 2021 folder (the only end-to-end run of this
    file; the 2023 names are read by the same code and tested above without a run)."""
    root = tmp_path_factory.mktemp("brats")
    brats_folder(no_dsc_case, root / "cases" / "BraTS2021_00003", "BraTS2021_00003", BRATS_2021,
                 as_brats_2021(_labels(no_dsc_case / "lesion.nii.gz")))
    result = gliomaprog("run", root / "cases", "--out", root / "out", "--batch", "--model", "conventional",
                        "--quiet", timeout=1200)
    report = root / "out" / "BraTS2021_00003" / "report.json"
    return {"out": root / "out", "result": result,
            "reports": {"BraTS2021_00003": json.loads(report.read_text())} if report.is_file() else {}}


@pytest.mark.slow
def test_a_brats_folder_runs_end_to_end_and_says_what_was_done(brats_batch):
    result = brats_batch["result"]
    assert result.returncode == 0, result.stderr
    assert set(brats_batch["reports"]) == {"BraTS2021_00003"}
    report = brats_batch["reports"]["BraTS2021_00003"]
    assert any("mapped to 3" in note for note in report["notes"]) and PERFUSION_SKIPPED in report["notes"]
    assert f"[BraTS2021_00003] note: {PERFUSION_SKIPPED}" in result.stderr
    assert "mapped to 3" in result.stderr


@pytest.mark.slow
def test_a_run_without_dsc_skips_perfusion_in_every_output(brats_batch):
    out = brats_batch["out"] / "BraTS2021_00003"
    data = brats_batch["reports"]["BraTS2021_00003"]
    assert data["model"]["id"] == "conventional" and data["model"]["channels"] == ["t1c", "flair"]
    for key in ("ncbv", "curves", "perfusion"):
        assert data[key]["skipped"] == PERFUSION_SKIPPED
    assert "no DSC series" in data["ctv"]["brain_mask"]
    assert not (out / "perfusion").exists() and not (out / "registered" / "ncbv.nii.gz").exists()
    assert not any(name.startswith("perfusion/") for name in data["outputs"])
    assert sitk.ReadImage(str(out / "report.png")).GetSize() == (1800, 1450)


@pytest.mark.slow
def test_the_scene_of_a_run_without_dsc_has_no_perfusion_nodes_and_a_note(brats_batch, tmp_path):
    scene = mrml.read_scene_bundle(brats_batch["out"] / "BraTS2021_00003" / "scene.mrb", tmp_path / "cache")

    def names(cls):
        nodes = scene.GetNodesByClass(cls)
        return {nodes.GetItemAsObject(i).GetName() for i in range(nodes.GetNumberOfItems())}

    assert names("vtkMRMLScalarVolumeNode") == {"CE-T1 (1 mm)", "FLAIR (registered)", "Progression probability",
                                                "CE-T1 (acquired)", "FLAIR (acquired)"}
    assert names("vtkMRMLLinearTransformNode") == {"FLAIR to CE-T1"}
    assert "NAWM reference" not in names("vtkMRMLSegmentationNode")
    assert names("vtkMRMLTableNode") == {"Verdict", "CTV comparison"}
    assert not names("vtkMRMLSequenceNode") and not names("vtkMRMLPlotChartNode")
    verdict = scene.GetFirstNodeByName("Verdict")
    values = [verdict.GetCellText(row, 1) for row in range(verdict.GetNumberOfRows())]
    assert PERFUSION_SKIPPED in values and any("mapped to 3" in value for value in values)
    yellow = scene.GetSingletonNode("Yellow", "vtkMRMLSliceCompositeNode")
    assert scene.GetNodeByID(yellow.GetForegroundVolumeID()).GetName() == "FLAIR (registered)"
