"""Tests of DSCPerfusionLib.pipeline.compute_perfusion: API, options, guards and every bad-input error."""

import json
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD, correct_leakage
from DSCPerfusionLib.pipeline import PerfusionOptions, PerfusionResult, compute_perfusion
from DSCPerfusionLib.signal import delta_r2s_from_signal, rcbv_trapezoid
from DSCPerfusionLib.simulation import add_rician_noise, simulate_dsc

SHAPE = (8, 40, 44)  # k, j, i
SPACING = (5.0, 2.5, 2.5)  # mm per k, j, i
FRAMES = 60
TR = 1.5
TE = 0.030
TIMES = np.arange(FRAMES) * TR
IJK_TO_RAS = np.array([[-2.5, 0, 0, 55.0], [0, -2.5, 0, 50.0], [0, 0, 5.0, -20.0], [0, 0, 0, 1.0]])


def _tissue(seed: int = 0):
    """Brain ellipsoid with GM/WM texture, a CSF strip at the midline and a leaky tumour at low i (RAS x > 0)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((k - 3.5) / 4.2) ** 2 + ((j - 19.5) / 18.0) ** 2 + ((i - 21.5) / 20.0) ** 2 <= 1.0
    grey = brain & (ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0.5, 1.5, 1.5)) > 0.1)
    csf = brain & (np.abs(i - 21.5) < 1.0) & (np.abs(j - 19.5) < 6)
    tumour = brain & ((((k - 4) * 5.0) ** 2 + ((j - 20) * 2.5) ** 2 + ((i - 10) * 2.5) ** 2) <= 8.0**2)
    cbv = np.where(grey, 4.0, 2.0)
    cbf = np.where(grey, 60.0, 22.0)
    s0 = np.where(grey, 1050.0, 900.0)
    k2 = np.zeros(SHAPE)
    cbv[csf], cbf[csf], s0[csf] = 0.0, 0.0, 1500.0
    cbv[tumour], cbf[tumour], s0[tumour], k2[tumour] = 7.0, 85.0, 1000.0, 0.015
    white = brain & ~grey & ~csf & ~tumour
    return {"brain": brain, "cbv": cbv * brain, "cbf": cbf * brain, "s0": s0 * brain, "k2": k2, "tumour": tumour,
            "white": white}


def _series(seed: int = 0, noise: bool = True, te: float = TE, t1_gain: np.ndarray | None = None, tissue=None):
    tissue = tissue or _tissue(seed)
    sim = simulate_dsc(TIMES, tissue["cbv"], tissue["cbf"], tissue["k2"], tissue["s0"], te, brain_mask=tissue["brain"])
    signal = sim.signal if t1_gain is None else sim.signal * t1_gain[:, None, None, None].astype(np.float32)
    if noise:
        signal = add_rician_noise(signal, 900.0 / 60.0, np.random.default_rng(seed + 100))
    return np.clip(np.rint(signal), 0, 32767).astype(np.int16), sim


@pytest.fixture(scope="module")
def case():
    tissue = _tissue()
    series, sim = _series(tissue=tissue)
    return {"series": series, "sim": sim, **tissue}


@pytest.fixture(scope="module")
def result(case):
    labels = case["tumour"].astype(np.uint8) * 3
    return compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS,
                             lesion_labels=labels)


def test_result_has_the_documented_types(result):
    assert isinstance(result, PerfusionResult)
    for name in ("rcbv", "rcbv_uncorrected", "ncbv", "k2", "k1"):
        array = getattr(result, name)
        assert array.shape == SHAPE and array.dtype == np.float32, name
        assert np.all(np.isfinite(array)), name
    assert result.brain_mask.dtype == bool and result.nawm_mask.dtype == bool
    assert result.reference_curve.shape == (FRAMES,)
    assert set(result.curves) == {"brain", "nawm", "label 3"}
    assert all(curve.shape == (FRAMES,) for curve in result.curves.values())
    assert result.cbf is None and result.mtt is None and result.ttp is None
    assert result.first_pass_end is None
    json.dumps(result.report)  # JSON-serialisable as it is


def test_report_records_what_was_done(result):
    report = result.report
    for key in ("warnings", "saturated_voxels", "negative_voxels", "nawm_voxels", "nawm_volume_ml", "baseline_frames",
                "arrival_frame", "timings_s", "options"):
        assert key in report, key
    assert report["baseline_frames"] == list(result.baseline) == [2, 10]
    assert report["arrival_frame"] == result.arrival_frame == 11  # AIF at 15 s; first contrast at frame 11
    assert report["nawm_voxels"] == int(result.nawm_mask.sum())
    assert report["nawm_volume_ml"] == pytest.approx(result.nawm_mask.sum() * np.prod(SPACING) / 1000.0, rel=1e-3)
    assert report["options"]["leakage"] == DEFAULT_LEAKAGE_METHOD
    assert report["saturated_voxels"] == 0 and report["negative_voxels"] == 0
    assert set(report["timings_s"]) >= {"validate", "brain_mask", "baseline", "delta_r2s", "leakage", "nawm", "total"}


def test_brain_mask_and_nawm_are_sensible(result, case):
    brain = case["brain"]
    dice = 2 * (result.brain_mask & brain).sum() / (result.brain_mask.sum() + brain.sum())
    assert dice > 0.95
    nawm = result.nawm_mask
    assert case["white"][nawm].mean() > 0.8
    assert not (nawm & case["tumour"]).any()
    ras_x = IJK_TO_RAS[0, 0] * np.nonzero(nawm)[2] + IJK_TO_RAS[0, 3]
    tumour_x = IJK_TO_RAS[0, 0] * np.nonzero(case["tumour"])[2].mean() + IJK_TO_RAS[0, 3]
    assert np.all(np.sign(ras_x - 1.25) == -np.sign(tumour_x))  # opposite hemisphere
    assert result.report["nawm_hemisphere"] == "left"  # tumour at RAS x > 0 (right)


def test_ncbv_is_rcbv_over_the_nawm_mean(result):
    np.testing.assert_allclose(result.ncbv[result.nawm_mask].mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.ncbv, result.rcbv / result.rcbv[result.nawm_mask].mean(), rtol=1e-5)


def test_leakage_is_found_and_corrected_in_the_tumour(result, case):
    tumour = case["tumour"]
    assert result.k2[tumour].mean() == pytest.approx(0.015, rel=0.25)
    assert abs(np.median(result.k2[case["white"]])) < 0.002
    assert result.rcbv[tumour].mean() > 1.3 * result.rcbv_uncorrected[tumour].mean()
    assert result.curves["label 3"][-10:].mean() == pytest.approx(0.0, abs=0.3)  # corrected tail back to baseline


def test_no_leakage_correction_option(case):
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, leakage="none"), ijk_to_ras=IJK_TO_RAS)
    np.testing.assert_array_equal(result.k2, 0.0)
    np.testing.assert_array_equal(result.rcbv, result.rcbv_uncorrected)
    assert result.report["leakage_method"] == "none"


def test_bidirectional_option_runs_and_agrees_with_bsw_without_back_flux(case, result):
    labels = case["tumour"].astype(np.uint8) * 3
    other = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, leakage="bidirectional"),
                              ijk_to_ras=IJK_TO_RAS, lesion_labels=labels)
    tumour = case["tumour"]
    assert other.ncbv[tumour].mean() == pytest.approx(result.ncbv[tumour].mean(), rel=0.05)


def test_deconvolution_maps_on_request(case):
    plain = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)
    assert plain.cbf is None and plain.mtt is None and plain.ttp is None
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, deconvolution=True),
                               ijk_to_ras=IJK_TO_RAS)
    assert result.cbf is not None, result.report["warnings"]
    assert result.cbf.shape == result.ncbv.shape and result.mtt.shape == result.ncbv.shape
    assert np.all(result.cbf[~result.brain_mask] == 0)
    assert np.all(np.isfinite(result.mtt)) and np.all(result.ttp >= 0)
    assert "cbf" in result.report["timings_s"] and "cbf" not in plain.report["timings_s"]


def test_user_masks_override_the_automatic_ones(case):
    brain = ndimage.binary_erosion(case["brain"])
    nawm = case["white"] & (np.arange(SHAPE[2]) > 30)
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE), brain_mask=brain.astype(np.uint8),
                               nawm_mask=nawm)
    assert np.array_equal(result.brain_mask, brain)
    assert np.array_equal(result.nawm_mask, nawm & brain)
    np.testing.assert_array_equal(result.rcbv[~brain], 0.0)
    assert result.report["nawm_source"] == "user" and result.report["brain_mask_source"] == "user"


def test_user_baseline_overrides_detection(case):
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, baseline=(1, 9)), ijk_to_ras=IJK_TO_RAS)
    assert result.baseline == (1, 9)
    assert result.report["baseline_source"] == "user"
    assert result.arrival_frame == 11


def test_per_slice_normalisation(case):
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, per_slice=True), ijk_to_ras=IJK_TO_RAS)
    fallback = set(result.report["per_slice_fallback_slices"])
    for k in range(SHAPE[0]):
        in_slice = result.nawm_mask[k]
        if k not in fallback:
            assert result.ncbv[k][in_slice].mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("first_pass", [False, True])
def test_rcbv_is_the_trapezoid_of_delta_r2s_over_the_integration_window(case, first_pass):
    options = PerfusionOptions(te_s=TE, first_pass=first_pass, leakage="none")
    result = compute_perfusion(case["series"], TIMES, options, ijk_to_ras=IJK_TO_RAS)
    start, stop = result.report["integration_frames"]
    assert start == result.baseline[0] == 2
    if first_pass:
        assert result.first_pass_end is not None and 15 < result.first_pass_end < FRAMES - 1
        assert stop == result.first_pass_end + 1
    else:
        assert result.first_pass_end is None and stop == FRAMES
    voxels = tuple(np.argwhere(result.brain_mask)[::97].T)
    delta = delta_r2s_from_signal(case["series"][(slice(None),) + voxels], TE, slice(*result.baseline))
    expected = rcbv_trapezoid(delta, TIMES, frames=slice(start, stop))
    np.testing.assert_allclose(result.rcbv_uncorrected[voxels], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", ["bsw", "bidirectional"])
def test_corrected_rcbv_and_curves_equal_the_explicitly_corrected_curves(case, method):
    labels = case["tumour"].astype(np.uint8) * 3
    result = compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE, leakage=method),
                               ijk_to_ras=IJK_TO_RAS, lesion_labels=labels)
    delta = delta_r2s_from_signal(case["series"][:, result.brain_mask], TE, slice(*result.baseline))
    corrected = correct_leakage(delta, TIMES, result.reference_curve, method).corrected
    start, stop = result.report["integration_frames"]
    expected = np.zeros(SHAPE)
    expected[result.brain_mask] = rcbv_trapezoid(corrected, TIMES, frames=slice(start, stop))
    close = np.isclose(result.rcbv, expected, rtol=2e-3, atol=0.05)
    if method == "bsw":
        assert close.all()
    else:
        # In normal tissue the 3-parameter fit is ill-conditioned: float32 rounding can move a voxel across
        # the kep bounds (BSW fallback or not), which changes its rCBV slightly.
        assert close.mean() > 0.995
        np.testing.assert_allclose(result.rcbv, expected, rtol=0.01, atol=0.05)
    np.testing.assert_allclose(result.curves["brain"], corrected.mean(axis=1), atol=2e-3)
    tumour = case["tumour"][result.brain_mask]
    np.testing.assert_allclose(result.curves["label 3"], corrected[:, tumour].mean(axis=1), atol=2e-3)
    np.testing.assert_allclose(result.curves["nawm"], corrected[:, result.nawm_mask[result.brain_mask]].mean(axis=1),
                               atol=2e-3)


def test_dual_echo_cancels_a_t1_effect(case):
    tissue = {key: case[key] for key in ("brain", "cbv", "cbf", "s0", "k2", "tumour", "white")}
    tissue["k2"] = np.zeros(SHAPE)  # pure T2*: the T1 effect is added to both echoes below
    gain = 1.0 + 0.02 * np.clip((TIMES - 18.0) / 20.0, 0.0, 1.0)
    first, _ = _series(noise=False, te=0.015, t1_gain=gain, tissue=tissue)
    second, _ = _series(noise=False, te=0.045, t1_gain=gain, tissue=tissue)
    options = PerfusionOptions(te_s=0.015, te2_s=0.045, leakage="none")
    dual = compute_perfusion(first, TIMES, options, signal_te2=second, brain_mask=case["brain"],
                             nawm_mask=case["white"])
    single = compute_perfusion(first, TIMES, PerfusionOptions(te_s=0.015, leakage="none"), brain_mask=case["brain"],
                               nawm_mask=case["white"])
    grey = case["brain"] & (case["cbv"] == 4.0)
    assert dual.report["dual_echo"] is True
    assert dual.ncbv[grey].mean() == pytest.approx(2.0, rel=0.02)
    assert abs(single.ncbv[grey].mean() - 2.0) > 0.1  # the T1 effect really distorts a single echo


def test_saturated_and_negative_voxels_are_counted_not_fatal(case):
    series = case["series"].copy()
    brain_voxels = np.argwhere(case["white"])
    saturated = tuple(brain_voxels[:5].T)
    for t in (0, 5, 30):
        series[t][saturated] = np.iinfo(np.int16).max
    result = compute_perfusion(series, TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)
    assert result.report["saturated_voxels"] == 5
    assert any("saturated" in warning for warning in result.report["warnings"])
    assert not result.nawm_mask[saturated].any()

    floating = case["series"].astype(np.float32)
    negative = tuple(brain_voxels[10:13].T)
    floating[20][negative] = -50.0
    result = compute_perfusion(floating, TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)
    assert result.report["negative_voxels"] == 3
    assert np.all(np.isfinite(result.ncbv))
    assert not result.nawm_mask[negative].any()


def test_input_is_not_modified(case):
    series = case["series"].astype(np.float32)
    before = series.copy()
    compute_perfusion(series, TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)
    np.testing.assert_array_equal(series, before)


def test_progress_is_reported_per_stage(case):
    calls = []
    compute_perfusion(case["series"], TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS,
                      progress=lambda fraction, message: calls.append((fraction, message)))
    fractions = [fraction for fraction, _ in calls]
    assert len(calls) >= 6
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(message, str) and message for _, message in calls)


def test_peak_memory_stays_within_four_times_the_input(case):
    series = case["series"].astype(np.float32)  # the budget is stated for the input as float32
    compute_perfusion(series, TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)  # warm-up
    tracemalloc.start()
    compute_perfusion(series, TIMES, PerfusionOptions(te_s=TE), ijk_to_ras=IJK_TO_RAS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= 4 * series.nbytes


def _bad(**changes):
    """Arguments of a valid call with some replaced."""
    series = np.full((20, 4, 6, 6), 100, np.int16)
    series[10:13, 1:3, 1:5, 1:5] = 60
    arguments = {"signal": series, "times_s": np.arange(20) * 1.5, "options": PerfusionOptions(te_s=TE)}
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signal": np.ones((20, 6, 6))}, "4-D series"),
        ({"signal": np.ones((14, 4, 6, 6)), "times_s": np.arange(14.0)}, "at least 15"),
        ({"times_s": np.arange(19) * 1.5}, "has 19 entries"),
        ({"signal": np.full((20, 4, 6, 6), np.nan, np.float32)}, "NaN or infinite"),
        ({"signal": np.where(np.arange(20)[:, None, None, None] == 7, np.inf, 1.0) * np.ones((20, 4, 6, 6))},
         "NaN or infinite .*frame 7"),
        ({"signal": np.where(np.arange(20)[:, None, None, None] == 4, 0, 100) * np.ones((20, 4, 6, 6), np.int16)},
         "frame 4 is all zero"),
        ({"brain_mask": np.ones((4, 6, 5))}, "brain_mask has shape"),
        ({"brain_mask": np.zeros((4, 6, 6))}, "brain_mask is empty"),
        ({"nawm_mask": np.ones((3, 6, 6))}, "nawm_mask has shape"),
        ({"nawm_mask": np.zeros((4, 6, 6))}, "nawm_mask is empty"),
        ({"lesion_labels": np.ones((4, 6, 7), np.uint8)}, "lesion_labels has shape"),
        ({"lesion_labels": np.full((4, 6, 6), 0.5)}, "whole-number labels"),
        ({"signal": np.full((20, 4, 6, 6), 100, np.int16), "brain_mask": np.ones((4, 6, 6))}, "No detectable bolus"),
        ({"options": PerfusionOptions(te_s=30.0)}, "looks like milliseconds"),
        ({"options": PerfusionOptions(te_s=-0.03)}, "positive echo time"),
        ({"options": PerfusionOptions(te_s=TE, te2_s=0.05)}, "signal_te2 and options.te2_s"),
        ({"signal_te2": np.full((20, 4, 6, 6), 90, np.int16)}, "signal_te2 and options.te2_s"),
        ({"signal_te2": np.ones((20, 4, 6, 5)), "options": PerfusionOptions(te_s=TE, te2_s=0.05)},
         "signal_te2 has shape"),
        ({"signal_te2": np.ones((20, 4, 6, 6)), "options": PerfusionOptions(te_s=0.05, te2_s=0.03)}, "must be longer"),
        ({"options": PerfusionOptions(te_s=TE, leakage="gamma")}, "options.leakage"),
        ({"options": PerfusionOptions(te_s=TE, baseline=(0, 99))}, "0 <= start < end <= 20"),
        ({"options": {"te_s": TE}}, "PerfusionOptions"),
        ({"spacing_mm": (1.0, -1.0, 1.0)}, "spacing_mm"),
        ({"ijk_to_ras": np.zeros((4, 4))}, "singular"),
        ({"signal": np.full((20, 4, 6, 6), "a")}, "numeric array"),
    ],
)
def test_bad_input_raises_one_clear_error(changes, message):
    arguments = _bad(**changes)
    with pytest.raises(ValueError, match=message):
        compute_perfusion(arguments.pop("signal"), arguments.pop("times_s"), arguments.pop("options"), **arguments)
