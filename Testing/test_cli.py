"""``gliomaprog phantom`` from the command line: output, one-line errors with exit code 2, nothing half-written."""

import json
from pathlib import Path

import numpy as np
import pytest

from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.files import read_volume
from helpers import assert_one_line_error, gliomaprog


@pytest.fixture(scope="module")
def written_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    # Relative paths, as `make demo` passes them.
    result = gliomaprog("phantom", "--out", "case", "--seed", 4, "--size", "small", "--scene", "scene.mrb",
                        cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, result


@pytest.mark.slow
def test_phantom_writes_the_case_layout(written_case):
    folder, result = written_case
    case = folder / "case"
    for name in ("t1c.nii.gz", "flair.nii.gz", "dsc.nii.gz", "dsc.json", "lesion.nii.gz", "NOTICE.txt"):
        assert (case / name).is_file(), name
    for name in ("cbv", "cbf", "ncbv", "k2", "nawm", "brain_dsc", "brain", "progression"):
        assert (case / "truth" / f"{name}.nii.gz").is_file(), name
    truth = json.loads((case / "truth" / "truth.json").read_text())
    assert "McGill" in truth["template_notice"] and "not patient data" in truth["notice"]
    assert set(truth["series"]) == {"t1c", "flair", "dsc"}
    sidecar = json.loads((case / "dsc.json").read_text())
    assert sidecar["EchoTime"] == pytest.approx(0.030) and sidecar["RepetitionTime"] == pytest.approx(1.5)
    dsc = read_volume(case / "dsc.nii.gz")
    assert dsc.array.shape[0] == len(sidecar["FrameTimes"]) == 60
    assert read_volume(case / "lesion.nii.gz").array.shape == read_volume(case / "t1c.nii.gz").array.shape
    assert "%]" in result.stderr, "progress is reported on stderr"


@pytest.mark.slow
def test_scene_reads_back_with_every_node(written_case, tmp_path):
    folder, _ = written_case
    scene = mrml.read_scene_bundle(folder / "scene.mrb", tmp_path)
    names = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    for name in ("case CE-T1", "case FLAIR", "case DSC", "case lesion", "case progression truth",
                 "case nCBV (truth)"):
        assert name in names, name
    assert scene.GetLastLoadedVersion() == mrml.SCENE_SLICER_VERSION
    lesion = scene.GetFirstNode("case lesion", "vtkMRMLSegmentationNode").GetSegmentation()
    segments = {lesion.GetNthSegment(i).GetName() for i in range(lesion.GetNumberOfSegments())}
    assert segments == {"Necrosis", "Non-enhancing lesion (SNFH)", "Enhancing tumour"}
    sequence = scene.GetFirstNode("case DSC", "vtkMRMLSequenceNode")
    assert sequence.GetNumberOfDataNodes() == 60
    # The volume read from the scene has the voxels and geometry of the file.
    t1c = mrml.volume_from_node(scene.GetFirstNode("case CE-T1", "vtkMRMLScalarVolumeNode"))
    on_disk = read_volume(folder / "case" / "t1c.nii.gz")
    assert np.array_equal(t1c.array, on_disk.array)
    assert np.allclose(t1c.ijk_to_ras, on_disk.ijk_to_ras, atol=1e-4)


def _leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if "partial" in p.name or p.name.startswith(".")]


def test_unwritable_out_under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = gliomaprog("phantom", "--out", tmp_path / "a-file" / "case", "--size", "small")
    assert_one_line_error(result, "--out", "a-file")
    assert _leftovers(tmp_path) == []


def test_unwritable_out_on_a_read_only_file_system():
    result = gliomaprog("phantom", "--out", "/proc/gliomaprog-case", "--size", "small")
    assert_one_line_error(result, "--out", "/proc")
    assert not Path("/proc/gliomaprog-case").exists()


def test_existing_non_empty_out_is_not_overwritten(tmp_path):
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "mine.txt").write_text("keep")
    result = gliomaprog("phantom", "--out", tmp_path / "case", "--size", "small")
    assert_one_line_error(result, "already exists")
    assert (tmp_path / "case" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("arguments, fragment", [
    (("--seed", "-1"), "--seed"), pytest.param(("--seed", "x"), "--seed", marks=pytest.mark.slow),
    pytest.param(("--size", "huge"), "--size", marks=pytest.mark.slow), (("--scene", "scene.txt"), ".mrb"),
    pytest.param(("--progression-cbv-ratio", "0"), "ratio", marks=pytest.mark.slow),
])
def test_bad_arguments(tmp_path, arguments, fragment):
    result = gliomaprog("phantom", "--out", tmp_path / "case", "--size", "small", *arguments)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "case").exists() and _leftovers(tmp_path) == []
