"""``gliomaprog perfusion``: the maps and reports it writes, and its one-line refusals of bad input."""

import csv
import json

import numpy as np
import pytest
from helpers import assert_one_line_error, gliomaprog_in_process

from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD
from GliomaProgressionLib.case.files import read_volume, write_json, write_volume
from GliomaProgressionLib.case.geometry import Volume


@pytest.fixture(scope="module")
def case_folder(small_case_folder):
    return small_case_folder


@pytest.fixture(scope="module")
def computed(case_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("perfusion-out") / "maps"
    result = gliomaprog_in_process("perfusion", "--dsc", case_folder / "dsc.nii.gz", "--dsc-json", case_folder / "dsc.json",
                        "--lesion", case_folder / "lesion.nii.gz", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_writes_every_output(computed, case_folder):
    for name in ("ncbv", "rcbv", "rcbv_uncorrected", "k2", "brain_mask", "nawm_mask"):
        volume = read_volume(computed / f"{name}.nii.gz")
        dsc = read_volume(case_folder / "dsc.nii.gz")
        assert volume.array.shape == dsc.array.shape[1:], name
        assert np.allclose(volume.ijk_to_ras, dsc.ijk_to_ras, atol=1e-4), name
    report = json.loads((computed / "perfusion.json").read_text())
    assert report["options"]["leakage"] == DEFAULT_LEAKAGE_METHOD
    assert report["report"]["nawm_voxels"] > 0
    assert 0 < report["baseline_frames"][1] <= report["arrival_frame"]
    with open(computed / "curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60
    assert {"brain_delta_r2s_per_s", "nawm_delta_r2s_per_s"} <= set(rows[0])
    assert any(column.startswith("label 3") for column in rows[0]), "a curve per lesion label"


def test_ncbv_follows_the_truth(computed, case_folder):
    ncbv = read_volume(computed / "ncbv.nii.gz").array
    nawm = read_volume(computed / "nawm_mask.nii.gz").array > 0
    truth = read_volume(case_folder / "truth" / "ncbv.nii.gz").array
    assert ncbv[nawm].mean() == pytest.approx(1.0, abs=1e-3)
    brain = read_volume(case_folder / "truth" / "brain_dsc.nii.gz").array > 0
    assert np.corrcoef(ncbv[brain], truth[brain])[0, 1] > 0.8


def _assert_refused(result, *fragments):
    assert_one_line_error(result, *fragments, after_progress=True, ignore_case=True)


def _dsc(case_folder):
    return read_volume(case_folder / "dsc.nii.gz")


def _bad_series(tmp_path, array, ijk_to_ras, name="bad.nii.gz"):
    return write_volume(Volume(array, ijk_to_ras), tmp_path / name, time_spacing=1.5)


def _run_on(tmp_path, dsc, *extra, sidecar=None):
    arguments = ["perfusion", "--dsc", dsc, "--out", tmp_path / "out"]
    arguments += ["--dsc-json", sidecar] if sidecar else ["--tr", "1.5", "--te", "0.03"]
    return gliomaprog_in_process(*arguments, *extra)


def test_3d_series_is_refused(tmp_path, case_folder):
    result = _run_on(tmp_path, case_folder / "lesion.nii.gz")
    _assert_refused(result, "4D")
    assert not (tmp_path / "out").exists()


def test_too_few_frames(tmp_path, case_folder):
    dsc = _dsc(case_folder)
    _assert_refused(_run_on(tmp_path, _bad_series(tmp_path, dsc.array[:10], dsc.ijk_to_ras)), "frames")


def test_missing_timing(tmp_path, case_folder):
    result = gliomaprog_in_process("perfusion", "--dsc", case_folder / "dsc.nii.gz", "--out", tmp_path / "out")
    _assert_refused(result, "timing")
    sidecar = write_json({"RepetitionTime": 1.5}, tmp_path / "no-te.json")
    _assert_refused(_run_on(tmp_path, case_folder / "dsc.nii.gz", sidecar=sidecar), "echo time")


def test_te_in_milliseconds(tmp_path, case_folder):
    sidecar = write_json({"RepetitionTime": 1.5, "EchoTime": 30}, tmp_path / "ms.json")
    _assert_refused(_run_on(tmp_path, case_folder / "dsc.nii.gz", sidecar=sidecar), "milliseconds")


@pytest.mark.slow
def test_nan_and_all_zero_frames(tmp_path, case_folder):
    dsc = _dsc(case_folder)
    with_nan = dsc.array.astype(np.float32)
    with_nan[20, 5, 5, 5] = np.nan
    # NRRD: ITK's NIfTI reader turns NaN into 0 (measured), so a NIfTI file cannot carry this fault to us.
    _assert_refused(_run_on(tmp_path, _bad_series(tmp_path, with_nan, dsc.ijk_to_ras, "nan.nrrd")), "nan")
    zero_frame = dsc.array.copy()
    zero_frame[30] = 0
    _assert_refused(_run_on(tmp_path, _bad_series(tmp_path, zero_frame, dsc.ijk_to_ras, "zero.nii.gz")), "zero")


@pytest.mark.slow
def test_masks_on_another_grid_or_empty(tmp_path, case_folder):
    _assert_refused(_run_on(tmp_path, case_folder / "dsc.nii.gz", "--mask", case_folder / "truth" / "brain.nii.gz"),
                    "not on the DSC grid")
    empty = read_volume(case_folder / "truth" / "nawm.nii.gz")
    path = write_volume(Volume(np.zeros_like(empty.array), empty.ijk_to_ras), tmp_path / "empty.nii.gz")
    _assert_refused(_run_on(tmp_path, case_folder / "dsc.nii.gz", "--nawm", path), "empty")


@pytest.mark.slow
def test_no_bolus(tmp_path, case_folder):
    dsc = _dsc(case_folder)
    flat = np.repeat(dsc.array[:5].mean(axis=0, keepdims=True), 60, axis=0).astype(np.int16)
    _assert_refused(_run_on(tmp_path, _bad_series(tmp_path, flat, dsc.ijk_to_ras)), "bolus")


@pytest.mark.slow
def test_cbf_mtt_ttp_on_request(case_folder, tmp_path):
    result = gliomaprog_in_process("perfusion", "--dsc", case_folder / "dsc.nii.gz", "--dsc-json", case_folder / "dsc.json",
                        "--cbf", "--out", tmp_path / "maps")
    assert result.returncode == 0, result.stderr
    cbf = read_volume(tmp_path / "maps" / "cbf.nii.gz").array
    mtt = read_volume(tmp_path / "maps" / "mtt.nii.gz").array
    truth = read_volume(case_folder / "truth" / "cbf.nii.gz").array
    brain = (read_volume(case_folder / "truth" / "brain_dsc.nii.gz").array > 0) & (truth > 10)
    # Relative CBF (automatic AIF): it ranks tissue like the truth, and MTT is positive where there is flow.
    assert np.corrcoef(cbf[brain], truth[brain])[0, 1] > 0.6
    assert np.all(mtt[brain & (cbf > 0)] > 0)
    report = json.loads((tmp_path / "maps" / "perfusion.json").read_text())
    assert "cbf.nii.gz" in report["outputs"]
