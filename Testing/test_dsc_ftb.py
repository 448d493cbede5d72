"""Fractional tumour burden: voxels classed by nCBV (low < 1.0 <= intermediate <= 1.75 < high by default), the
fractions per lesion part counted by hand, and what ``gliomaprog perfusion --lesion`` writes (ftb.nii.gz, the
"ftb" and "protocol_qa" entries of perfusion.json)."""

import json
import shutil

import numpy as np
import pytest
from helpers import assert_one_line_error, gliomaprog_in_process

from DSCPerfusionLib.ftb import FTB_CLASSES, FTB_KEYS, FTB_THRESHOLDS, WHOLE_LESION, classify, fractions, lesion_ftb

from GliomaProgressionLib.case.files import read_volume


def test_classes_at_and_around_the_default_thresholds():
    ncbv = np.array([0.5, 0.999, 1.0, 1.2, 1.75, 1.7501, 3.0, np.nan, 2.0])
    region = np.array([True] * 8 + [False])
    assert classify(ncbv, region).tolist() == [1, 1, 2, 2, 2, 3, 3, 0, 0]


def test_thresholds_are_options():
    ncbv = np.array([0.7, 0.8, 1.0, 1.2, 1.3])
    assert classify(ncbv, np.ones(5, bool), (0.8, 1.2)).tolist() == [1, 2, 2, 2, 3]


@pytest.mark.parametrize("thresholds", [(1.75, 1.0), (1.0, 1.0), (-0.5, 1.0), (1.0, 11.0), (1.0, float("nan")),
                                        ("low", 1.0), (1.0,)])
def test_bad_thresholds_are_refused_in_one_sentence(thresholds):
    with pytest.raises(ValueError, match="FTB threshold"):
        classify(np.ones(3), np.ones(3, bool), thresholds)


def test_fractions_count_classed_voxels_only():
    labels = np.array([1, 2, 2, 2, 3, 3, 0])  # six classed voxels and one unclassed (nCBV not finite)
    result = fractions(labels, np.ones(7, bool))
    assert result == {"voxels": 6, "unclassed_voxels": 1, "low": round(1 / 6, 4), "intermediate": 0.5,
                      "high": round(2 / 6, 4)}
    assert fractions(labels, np.zeros(7, bool))["low"] is None


def test_lesion_ftb_per_part_and_whole_lesion():
    # BraTS labels: 3 enhancing (4 voxels), 2 non-enhancing (3 voxels), 0 background.
    labels = np.array([[3, 3, 3, 3], [2, 2, 2, 0]])
    ncbv = np.array([[4.0, 2.0, 1.5, 0.5], [0.8, 1.1, 9.0, 5.0]])
    inside = np.array([[True, True, True, True], [True, True, False, True]])  # one lesion voxel outside the brain
    classes, summary = lesion_ftb(ncbv, labels, inside, {3: "Enhancing tumour", 2: "Non-enhancing lesion"},
                                  (1.0, 1.75), "test grid")
    assert classes.tolist() == [[3, 3, 2, 1], [1, 2, 0, 0]]
    regions = summary["regions"]
    assert regions["Enhancing tumour"] == {"voxels": 4, "unclassed_voxels": 0, "low": 0.25, "intermediate": 0.25,
                                           "high": 0.5}
    assert regions["Non-enhancing lesion"] == {"voxels": 2, "unclassed_voxels": 1, "low": 0.5, "intermediate": 0.5,
                                               "high": 0.0}
    assert regions[WHOLE_LESION] == {"voxels": 6, "unclassed_voxels": 1, "low": round(2 / 6, 4),
                                     "intermediate": round(2 / 6, 4), "high": round(2 / 6, 4)}
    assert summary["thresholds_ncbv"] == [1.0, 1.75] and summary["grid"] == "test grid"
    assert set(summary["classes"]) == set(FTB_KEYS.values())


def test_a_label_without_a_name_keeps_its_number():
    _, summary = lesion_ftb(np.full(3, 2.0), np.array([7, 7, 0]), np.ones(3, bool), {}, (1.0, 1.75), "grid")
    assert summary["regions"]["label 7"]["high"] == 1.0


# --- gliomaprog perfusion -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_acquisition(small_case_folder, tmp_path_factory):
    """The small case with a sidecar that states the acquisition: 3 T, 60 deg, full-dose preload and bolus."""
    folder = tmp_path_factory.mktemp("ftb") / "case"
    shutil.copytree(small_case_folder, folder)
    sidecar = json.loads((folder / "dsc.json").read_text())
    sidecar.update(MagneticFieldStrength=3.0, FlipAngle=60.0, PreloadDose=0.1, BolusDose=0.1)
    (folder / "dsc.json").write_text(json.dumps(sidecar))
    out = folder.parent / "maps"
    result = gliomaprog_in_process("perfusion", "--dsc", folder / "dsc.nii.gz", "--dsc-json", folder / "dsc.json",
                        "--lesion", folder / "lesion.nii.gz", "--ftb-thresholds", "1.2", "2.5", "--out", out)
    assert result.returncode == 0, result.stderr
    return folder, out


def test_ftb_map_classes_the_written_ncbv(with_acquisition):
    _, out = with_acquisition
    ftb = read_volume(out / "ftb.nii.gz").array
    ncbv = read_volume(out / "ncbv.nii.gz").array
    brain = read_volume(out / "brain_mask.nii.gz").array > 0
    classed = ftb > 0
    assert classed.any() and not (classed & ~brain).any()
    assert set(np.unique(ftb)) <= {0} | set(FTB_CLASSES)
    assert (ncbv[ftb == 1] < 1.2).all() and (ncbv[ftb == 3] > 2.5).all()
    middle = ncbv[ftb == 2]
    assert middle.size and (middle >= 1.2).all() and (middle <= 2.5).all()
    report = json.loads((out / "perfusion.json").read_text())
    assert report["ftb"]["thresholds_ncbv"] == [1.2, 2.5] and "ftb.nii.gz" in report["outputs"]
    whole = report["ftb"]["regions"][WHOLE_LESION]
    assert whole["voxels"] == int(classed.sum())
    assert whole["high"] == round(float((ftb == 3).sum() / classed.sum()), 4)
    enhancing = report["ftb"]["regions"]["Enhancing tumour"]
    assert enhancing["high"] > whole["high"], "the enhancing rim has the most high-blood-volume voxels"


def test_protocol_qa_in_perfusion_json(with_acquisition):
    _, out = with_acquisition
    report = json.loads((out / "perfusion.json").read_text())
    items = {item["key"]: item["status"] for item in report["protocol_qa"]["items"]}
    # The phantom: TE 30 ms at 3 T, TR 1.5 s, 60 deg with a full-dose preload, full-dose bolus; its bolus arrives
    # after about ten frames, fewer than the consensus' 30.
    assert report["arrival_frame"] < 30
    assert items == {"field_strength": "met", "echo_time": "met", "preload": "met", "flip_angle": "met",
                     "bolus_dose": "met", "temporal_resolution": "met", "baseline": "not met"}


def test_inverted_ftb_thresholds_are_refused_before_the_work(small_case_folder, tmp_path):
    out = tmp_path / "maps"
    result = gliomaprog_in_process("perfusion", "--dsc", small_case_folder / "dsc.nii.gz", "--dsc-json",
                        small_case_folder / "dsc.json", "--ftb-thresholds", "2", "1", "--out", out)
    assert_one_line_error(result, "FTB threshold")
    assert not out.exists()


def test_run_takes_the_ftb_thresholds_to_the_perfusion_folder_and_the_report(tmp_path, monkeypatch):
    from GliomaProgressionLib.cli import main as cli
    from GliomaProgressionLib.report.figure import ftb_data
    from GliomaProgressionLib.runs import stages

    seen = []
    monkeypatch.setattr(stages, "run_case", lambda case, out, settings, progress: seen.append(settings) or {})
    monkeypatch.setattr(stages, "summary_line", lambda data, out: "")
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--ftb-thresholds", "1.2", "2.5"]) == 0
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert [settings.ftb_thresholds for settings in seen] == [(1.2, 2.5), FTB_THRESHOLDS]
    # The report's FTB uses them: nCBV 2.0 is high at the defaults, intermediate below 2.5.
    enhancing = ftb_data(_report_case(tmp_path, None, (1.2, 2.5)))["regions"]["Enhancing tumour"]
    assert enhancing["high"] == 0.25 and enhancing["intermediate"] == 0.5


def test_run_refuses_inverted_ftb_thresholds_before_the_work(small_case_folder, tmp_path):
    out = tmp_path / "run"
    result = gliomaprog_in_process("run", small_case_folder, "--out", out, "--ftb-thresholds", "2", "1", "--no-habitats")
    assert_one_line_error(result, "FTB threshold")
    assert not out.exists()


# --- the case report --------------------------------------------------------------------------------------------


def _report_case(tmp_path, sidecar: dict | None, thresholds=FTB_THRESHOLDS):
    """The few parts of a run's results the report's FTB and protocol entries read (1 x 2 x 4 voxel images)."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    def image(array):
        return sitk.GetImageFromArray(np.asarray(array)[None])

    ncbv = image(np.array([[4.0, 2.0, 1.5, 0.5], [0.8, 1.1, 9.0, 5.0]], np.float32))
    lesion = image(np.array([[3, 3, 3, 3], [2, 2, 2, 0]], np.uint8))
    brain = image(np.array([[1, 1, 1, 1], [1, 1, 0, 1]], np.uint8))
    if sidecar is not None:
        (tmp_path / "dsc.json").write_text(json.dumps(sidecar))
    timing = SimpleNamespace(te_s=0.045, times_s=np.arange(90) * 1.25)
    prepared = SimpleNamespace(perfusion=SimpleNamespace(arrival_frame=35), channels={"ncbv": ncbv}, lesion=lesion)
    return SimpleNamespace(prepared=prepared, brain=brain, inputs=SimpleNamespace(folder=tmp_path, timing=timing),
                           settings=SimpleNamespace(ftb_thresholds=thresholds))


def test_report_entries(tmp_path):
    from GliomaProgressionLib.report.figure import ftb_data, protocol_data

    results = _report_case(tmp_path, {"MagneticFieldStrength": 1.5, "FlipAngle": 30, "PreloadDose": 0})
    ftb = ftb_data(results)
    assert ftb["regions"]["Enhancing tumour"]["high"] == 0.5  # nCBV 4.0, 2.0 high; 1.5 intermediate; 0.5 low
    assert ftb["regions"]["Non-enhancing lesion (SNFH)"] == {"voxels": 2, "unclassed_voxels": 1, "low": 0.5,
                                                             "intermediate": 0.5, "high": 0.0}
    protocol = {item["key"]: item["status"] for item in protocol_data(results)["items"]}
    # 1.5 T, TE 45 ms, no preload with 30 deg, TR 1.25 s, 35 baseline frames; the bolus dose is not stated.
    assert protocol == {"field_strength": "met", "echo_time": "met", "preload": "met", "flip_angle": "met",
                        "bolus_dose": "unknown", "temporal_resolution": "met", "baseline": "met"}
    (tmp_path / "dsc.json").unlink()  # a DICOM case without a sidecar: TE, TR and baseline are still checked
    protocol = {item["key"]: item["status"] for item in protocol_data(results)["items"]}
    assert protocol["field_strength"] == "unknown" and protocol["echo_time"] == "unknown"
    assert protocol["temporal_resolution"] == "met" and protocol["baseline"] == "met"
