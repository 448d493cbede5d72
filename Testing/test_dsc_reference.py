"""External DSC references (Testing/data/dsc_reference, OSIPI, Apache-2.0): signal -> deltaR2* -> CBV/nCBV, BSW.

Groups (see the folder's README.md for provenance and caveats):
* ``osipi_hist_signal`` (14 cases): GRE signal at SNR 200, 2 GM + 2 WM voxels each, GM/WM CBV = 2.
* ``lcb_bni_dualecho`` (1 case): dual-echo ROI curves; regression anchor for dual-echo deltaR2* and BSW.
* ``osipi_csv`` (14 cases): concentration curves; only CBV = integral ratio is checked here (CBF belongs to
  the deconvolution tests).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from DSCPerfusionLib.baseline import baseline_window, detect_bolus_arrival
from DSCPerfusionLib.leakage import correct_bsw, fit_bsw
from DSCPerfusionLib.pipeline import PerfusionOptions, compute_perfusion
from DSCPerfusionLib.signal import delta_r2s_from_dual_echo, delta_r2s_from_signal, rcbv_trapezoid

ROOT = Path(__file__).resolve().parent / "data" / "dsc_reference"
CASES = json.loads((ROOT / "cases.json").read_text())["cases"]
HIST = [case for case in CASES if case["group"] == "osipi_hist_signal"]
CSV = [case for case in CASES if case["group"] == "osipi_csv"]
LCB = next(case for case in CASES if case["group"] == "lcb_bni_dualecho")
PRE_BOLUS = slice(0, 17)  # t < 20 s: samples 0..16 (params.baseline_frames)

# Per-ROI CBV tolerance against the noise-free discrete value, tighter than the anchor's |d| <= 1 + 0.1 ref
# (1.2-1.5 ml/100 ml). Its noise, propagated: Rician SD 0.5 on S0 = 100 -> S0 from 17 frames is off by
# SD 0.12, a deltaR2* offset of 0.12/100/0.029 = 0.042 1/s held for the ~180 s integrated -> 7.5 area
# units; one area unit is 100 kappa_a/(kappa_s * AIF area 214) = 0.025 ml/100 ml -> SD 0.19 per voxel,
# 0.13 per 2-voxel ROI, ~0.15 with the frame-by-frame noise. 4 SD = 0.6 ml/100 ml.
ROI_CBV_ATOL = 0.6
# The mean over 14 cases of that error: SD 0.15/sqrt(14) = 0.04 -> 3 SD.
MEAN_CBV_ATOL = 0.12


def _load(case: dict) -> dict:
    return dict(np.load(ROOT / case["file"]))


def _hist_cbv(case: dict) -> dict[str, float]:
    """Absolute ROI CBV (ml/100 ml) of GM and WM: (int dR2*_t / kappa_s) / (int dR2*_a / kappa_a) * 100."""
    data, params = _load(case), case["params"]
    tissue = delta_r2s_from_signal(data["S"].T, float(data["te"]), PRE_BOLUS)
    arterial = delta_r2s_from_signal(data["S_aif"], float(data["te"]), PRE_BOLUS)
    area = rcbv_trapezoid(tissue, data["t"]) / params["kappa_s_correct"]
    arterial_area = rcbv_trapezoid(arterial, data["t"]) / params["kappa_a"]
    cbv = area / arterial_area * 100.0
    return {name: float(cbv[data["tissue"] == name].mean()) for name in ("GM", "WM")}


def _hist_ncbv_gm(case: dict, baseline=(0, 17)) -> float:
    """GM nCBV from the full pipeline on the 2x2 image, normalised by the two WM voxels."""
    data = _load(case)
    series = data["S"].T.reshape(-1, 1, 2, 2)  # rows 0..1 = GM, 2..3 = WM (C order, as in the NIfTI)
    white = (data["tissue"] == "WM").reshape(1, 2, 2)
    options = PerfusionOptions(te_s=float(data["te"]), baseline=baseline, leakage="none")
    result = compute_perfusion(series, data["t"], options, brain_mask=np.ones((1, 2, 2), bool), nawm_mask=white)
    return float(result.ncbv[~white].mean())


def test_all_groups_and_the_licence_are_present():
    assert len(HIST) == 14 and len(CSV) == 14
    assert (ROOT / "LICENSE-OSIPI-Apache-2.0.txt").is_file()


@pytest.mark.parametrize("case", HIST, ids=[case["id"] for case in HIST])
def test_hist_signal_cbv_matches_anchor_and_noise_free_values(case):
    cbv = _hist_cbv(case)
    nominal = case["reference"]["cbv_ml_per_100ml"]
    discrete = case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"]
    tolerance = case["tolerance_used_by_anchor"]["cbv"]
    for tissue in ("GM", "WM"):
        assert abs(cbv[tissue] - nominal[tissue]) <= tolerance["atol"] + tolerance["rtol"] * nominal[tissue]
        assert cbv[tissue] == pytest.approx(discrete[tissue], abs=ROI_CBV_ATOL)


@pytest.mark.parametrize("case", HIST, ids=[case["id"] for case in HIST])
def test_hist_signal_automatic_arrival_keeps_the_baseline_pre_bolus(case):
    data = _load(case)
    arrival = detect_bolus_arrival(data["S"].mean(axis=0))  # the brain-mean curve of the 4 voxels
    assert 16 <= arrival <= 18  # bolus at 20 s: frame 17 (21.1 s) is the first with contrast
    assert baseline_window(arrival)[1] <= 17


@pytest.mark.parametrize("case", HIST, ids=[case["id"] for case in HIST])
def test_rectangle_and_trapezoid_integrals_agree_for_these_curves(case):
    # The discrete reference used sums (rectangular rule); the curves start and end at baseline, so the
    # trapezoid rule differs only by (first + last)/2 * dt, which is negligible here.
    data = _load(case)
    tissue = delta_r2s_from_signal(data["S"].T, float(data["te"]), PRE_BOLUS)
    step = float(data["tr"])
    rectangle = tissue.sum(axis=0) * step
    trapezoid = rcbv_trapezoid(tissue, data["t"])
    np.testing.assert_allclose(rectangle, trapezoid, rtol=0.01)


def test_hist_signal_averages_over_the_14_cases():
    ncbv = [_hist_ncbv_gm(case) for case in HIST]
    cbv = [_hist_cbv(case) for case in HIST]
    ratio = [value["GM"] / value["WM"] for value in cbv]
    np.testing.assert_allclose(ncbv, ratio, rtol=1e-4)  # the pipeline computes exactly this ratio
    assert np.mean(ncbv) == pytest.approx(2.0, rel=0.03)  # measured 1.943: single cases scatter 1.70-2.39
    for tissue in ("GM", "WM"):
        errors = [value[tissue] - case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"][tissue]
                  for value, case in zip(cbv, HIST)]
        assert abs(np.mean(errors)) <= MEAN_CBV_ATOL


def test_lcb_dual_echo_bsw_reproduces_k1_k2():
    data = _load(LCB)
    times, tr = data["t"], float(data["TR"])
    baseline = slice(0, 40)  # the notebook's basepts = [0, 40]
    tumour = delta_r2s_from_dual_echo(data["tumor_SIt"][0], data["tumor_SIt"][1], float(data["TE1"]),
                                      float(data["TE2"]), baseline)
    reference = delta_r2s_from_signal(data["NAWM_SIt"][1], float(data["TE2"]), baseline)  # NAWM at TE2
    fit = fit_bsw(tumour[:, None], times, reference)
    expected = LCB["reference"]["reproduced_by_us_running_notebook_code"]
    # Units: the notebook's integral is cumsum(ref) (per sample, no dt); ours is the trapezoid in seconds,
    # so K2 per sample = K2 (1/s) * TR. cumsum(ref) = trapezoid(ref) + ref/2 (ref(0) ~ 0), so the notebook's
    # K1 absorbs -K2/2: K1_notebook = K1 + K2_per_sample/2.
    k2_per_sample = float(fit.k2[0]) * tr
    assert k2_per_sample == pytest.approx(expected["K2_per_sample"], rel=1e-3)
    assert float(fit.k1[0]) + k2_per_sample / 2 == pytest.approx(expected["K1"], abs=1e-3)
    assert float(fit.k1[0]) == pytest.approx(1.0386, abs=1e-3)  # our own K1 (trapezoid convention)


def test_lcb_dual_echo_cbv_recipe():
    data = _load(LCB)
    times, tr = data["t"], float(data["TR"])
    baseline = slice(0, 40)
    tumour = delta_r2s_from_dual_echo(data["tumor_SIt"][0], data["tumor_SIt"][1], float(data["TE1"]),
                                      float(data["TE2"]), baseline)
    reference = delta_r2s_from_signal(data["NAWM_SIt"][1], float(data["TE2"]), baseline)
    arterial = delta_r2s_from_signal(data["AIF_SIt"][0], float(data["TE1"]), baseline)  # AIF from TE1
    fit = fit_bsw(tumour[:, None], times, reference)
    corrected = correct_bsw(tumour[:, None], times, reference, fit.k2)[:, 0]
    cbv = rcbv_trapezoid(corrected, times) / rcbv_trapezoid(arterial, times) * 100.0
    printed = LCB["reference"]["printed_in_notebook"]["CBV_ml_100ml"]
    # Our value is 39.10 vs the printed 38.2 (+2.4 %). The whole difference is the integral convention: the
    # notebook corrects with K2 * cumsum(ref) = K2 * (trapezoid + ref/2), which lowers the area by
    # K2_per_sample/2 * integral(ref). Tolerance 3 %: that predicted 2.4 % plus rounding of 38.2.
    assert cbv == pytest.approx(printed, rel=0.03)
    convention_shift = (float(fit.k2[0]) * tr / 2) * rcbv_trapezoid(reference, times) / rcbv_trapezoid(arterial, times)
    reproduced = LCB["reference"]["reproduced_by_us_running_notebook_code"]["CBV"]
    assert cbv + 100.0 * convention_shift == pytest.approx(reproduced, rel=2e-3)


@pytest.mark.parametrize("case", CSV, ids=[case["id"] for case in CSV])
def test_csv_concentration_cbv(case):
    data = _load(case)
    cbv = float(rcbv_trapezoid(data["C_tis"], data["t"]) / rcbv_trapezoid(data["C_aif"], data["t"]) * 100.0)
    nominal = case["reference"]["cbv_ml_per_100ml"]
    tolerance = case["tolerance_used_by_anchor"]["cbv"]
    assert abs(cbv - nominal) <= tolerance["atol"] + tolerance["rtol"] * nominal
    # Against the noise-free discrete value (which carries the +CBF*dt/2 bias of the generator that the
    # anchor's wide tolerance absorbs): measured |difference| <= 0.13; 0.25 leaves room for the noise.
    assert cbv == pytest.approx(case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"], abs=0.25)


def test_csv_concentration_cbv_is_unbiased_over_the_14_cases():
    errors = []
    for case in CSV:
        data = _load(case)
        cbv = rcbv_trapezoid(data["C_tis"], data["t"]) / rcbv_trapezoid(data["C_aif"], data["t"]) * 100.0
        errors.append(cbv - case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"])
    assert abs(np.mean(errors)) < 0.05  # measured -0.012 (cases.json: -0.012)
