"""Tests of DSCPerfusionLib.leakage: BSW and bidirectional fits, the reference curve, corrections."""

import numpy as np
import pytest

from DSCPerfusionLib.leakage import (
    MAX_KEP_PER_S,
    correct_bsw,
    correct_leakage,
    fit_bidirectional,
    fit_bsw,
    reference_curve,
    select_reference_voxels,
    voxel_integral,
)
from DSCPerfusionLib.signal import cumulative_integral
from DSCPerfusionLib.simulation import simulate_dsc

TIMES = np.arange(90) * 1.5  # long enough for every curve to return to baseline
TE = 0.030


def _normal_and_tumour():
    """Noise-free vascular curves of grey matter, white matter and tumour, and the brain reference curve."""
    cbv = np.array([4.0, 2.0, 7.0])
    cbf = np.array([60.0, 22.0, 85.0])
    sim = simulate_dsc(TIMES, cbv, cbf, 0.0, 1000.0, TE)
    return sim.vascular_delta_r2s.astype(np.float64), sim.reference


def _exchange_integral(reference: np.ndarray, kep: float) -> np.ndarray:
    """L(t) = integral_0^t ref(s) exp(-kep (t - s)) ds by the trapezoid rule on the frame grid."""
    result = np.zeros_like(reference)
    for n in range(1, TIMES.size):
        step = TIMES[n] - TIMES[n - 1]
        decay = np.exp(-kep * step)
        result[n] = result[n - 1] * decay + (reference[n] + reference[n - 1] * decay) * step / 2.0
    return result


def test_bsw_recovers_k1_k2_exactly_when_the_model_holds():
    _, reference = _normal_and_tumour()
    rng = np.random.default_rng(0)
    k1 = rng.uniform(0.3, 3.0, size=(3, 4, 5))
    k2 = rng.uniform(-0.02, 0.03, size=(3, 4, 5))
    integral = cumulative_integral(reference, TIMES)
    curves = k1[None] * reference[:, None, None, None] - k2[None] * integral[:, None, None, None]
    fit = fit_bsw(curves, TIMES, reference)
    assert fit.k2.shape == (3, 4, 5)
    np.testing.assert_allclose(fit.k1, k1, rtol=1e-4)
    np.testing.assert_allclose(fit.k2, k2, atol=2e-6)
    corrected = correct_bsw(curves, TIMES, reference, fit.k2)
    np.testing.assert_allclose(corrected, k1[None] * reference[:, None, None, None], atol=2e-3)


def test_bsw_equals_a_per_voxel_least_squares_fit():
    vascular, reference = _normal_and_tumour()
    rng = np.random.default_rng(1)
    leak = np.array([0.01, -0.005, 0.0, 0.0]) * cumulative_integral(reference, TIMES)[:, None]
    curves = vascular[:, [2, 2, 0, 1]] - leak
    curves += rng.normal(0, 0.5, curves.shape)
    fit = fit_bsw(curves, TIMES, reference)
    design = np.stack([reference, -cumulative_integral(reference, TIMES)], axis=1)
    for voxel in range(curves.shape[1]):
        expected, *_ = np.linalg.lstsq(design, curves[:, voxel], rcond=None)
        assert fit.k1[voxel] == pytest.approx(expected[0], rel=1e-4)
        assert fit.k2[voxel] == pytest.approx(expected[1], abs=1e-6)


@pytest.mark.parametrize("k2", [0.015, -0.008])
def test_bsw_corrects_simulated_leakage_in_both_directions(k2):
    vascular, reference = _normal_and_tumour()
    leaky = vascular[:, 2] - k2 * cumulative_integral(reference, TIMES)
    if k2 > 0:
        assert leaky[-10:].mean() < 0  # T1-dominant: the late curve falls below baseline
    result = correct_leakage(leaky[:, None], TIMES, reference, "bsw")
    truth_area = np.trapezoid(vascular[:, 2], TIMES)
    corrected_area = np.trapezoid(result.corrected[:, 0], TIMES)
    uncorrected_area = np.trapezoid(leaky, TIMES)
    assert result.k2[0] == pytest.approx(k2, rel=0.05)  # the tumour's transit time differs from the reference's
    assert corrected_area == pytest.approx(truth_area, rel=0.02)
    assert abs(uncorrected_area / truth_area - 1) > 0.3


def test_correction_does_not_modify_its_input():
    vascular, reference = _normal_and_tumour()
    curves = vascular.astype(np.float32)
    before = curves.copy()
    correct_bsw(curves, TIMES, reference, np.array([0.01, 0.0, 0.02]))
    correct_leakage(curves, TIMES, reference, "bidirectional")
    np.testing.assert_array_equal(curves, before)


def test_reference_voxels_exclude_leaky_voxels():
    rng = np.random.default_rng(2)
    cbv = np.r_[np.full(300, 4.0), np.full(300, 2.0), np.full(40, 7.0), np.full(20, 7.0)]
    cbf = np.r_[np.full(300, 60.0), np.full(300, 22.0), np.full(60, 85.0)]
    k2 = np.r_[np.zeros(600), np.full(40, 0.012), np.full(20, -0.006)]
    sim = simulate_dsc(TIMES, cbv, cbf, k2, 1000.0, TE)
    noisy = sim.measured_delta_r2s + rng.normal(0, 0.6, sim.measured_delta_r2s.shape).astype(np.float32)
    chosen = select_reference_voxels(noisy, TIMES, (2, 9))
    assert chosen[:600].mean() > 0.9
    assert not chosen[600:].any()
    reference = reference_curve(noisy, chosen)
    np.testing.assert_allclose(reference, sim.reference, atol=0.15)


def test_reference_curve_of_a_volume_and_its_errors():
    curves = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    voxels = np.zeros((2, 4), bool)
    voxels[0, 1] = voxels[1, 3] = True
    np.testing.assert_allclose(reference_curve(curves, voxels), curves[:, [0, 1], [1, 3]].mean(axis=1))
    with pytest.raises(ValueError, match="No non-enhancing voxel"):
        reference_curve(curves, np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="voxels has 3 entries"):
        reference_curve(curves, np.ones(3, bool))


def test_bidirectional_fit_recovers_k2_and_kep_when_the_model_holds():
    _, reference = _normal_and_tumour()
    cases = [(0.02, 0.0), (0.02, 0.02), (0.02, 0.045), (-0.01, 0.02)]  # (K2 1/s, kep 1/s)
    curves = np.stack([1.7 * reference - k2 * _exchange_integral(reference, kep) for k2, kep in cases], axis=1)
    fit = fit_bidirectional(curves, TIMES, reference)
    np.testing.assert_allclose(fit.k1, 1.7, rtol=0.01)
    np.testing.assert_allclose(fit.k2, [k2 for k2, _ in cases], rtol=0.03)
    np.testing.assert_allclose(fit.kep, [kep for _, kep in cases], atol=1e-3)


def test_bidirectional_correction_removes_back_flux_that_bsw_misses():
    # Realistic: the tumour's own transit time differs from the reference's, so neither model is exact.
    vascular, reference = _normal_and_tumour()
    cases = [(0.02, 0.0), (0.02, 0.02), (0.02, 0.045), (-0.01, 0.02)]
    curves = np.stack([vascular[:, 2] - k2 * _exchange_integral(reference, kep) for k2, kep in cases], axis=1)
    bidirectional = correct_leakage(curves, TIMES, reference, "bidirectional").corrected
    unidirectional = correct_leakage(curves, TIMES, reference, "bsw").corrected
    truth_area = np.trapezoid(vascular[:, 2], TIMES)
    bidirectional_error = np.abs(np.trapezoid(bidirectional, TIMES, axis=0) / truth_area - 1)
    unidirectional_error = np.abs(np.trapezoid(unidirectional, TIMES, axis=0) / truth_area - 1)
    assert bidirectional_error.max() < 0.04  # 1.5-3 %: the transit-time mismatch, as for BSW without flux
    assert np.all(unidirectional_error[1:3] > 0.05)  # back-flux (kep > 0, K2 > 0) makes BSW under-correct
    assert np.all(bidirectional_error[1:3] < unidirectional_error[1:3] / 2)


def test_bidirectional_keeps_bsw_where_kep_is_unphysical():
    # Normal tissue: the free kep term would "explain" the transit-time difference (kep >> MAX_KEP_PER_S).
    vascular, reference = _normal_and_tumour()
    fit = fit_bidirectional(vascular[:, :2], TIMES, reference)
    bsw = fit_bsw(vascular[:, :2], TIMES, reference)
    np.testing.assert_array_equal(fit.kep, 0.0)
    np.testing.assert_allclose(fit.k2, bsw.k2, rtol=1e-6)
    np.testing.assert_array_equal(fit.c, 0.0)
    assert MAX_KEP_PER_S == pytest.approx(0.05)


def test_voxel_integral_matches_scipy():
    curves = np.random.default_rng(3).normal(size=(90, 7)).astype(np.float32)
    np.testing.assert_allclose(voxel_integral(curves, TIMES), cumulative_integral(curves, TIMES), atol=1e-4)


def test_no_correction_returns_the_input_curves():
    vascular, reference = _normal_and_tumour()
    result = correct_leakage(vascular, TIMES, reference, "none")
    np.testing.assert_allclose(result.corrected, vascular, rtol=1e-6)
    np.testing.assert_array_equal(result.k2, 0.0)
    np.testing.assert_array_equal(result.k1, 1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_bsw(np.ones((90, 3)), TIMES, np.ones(80)), "reference must have shape"),
        (lambda: fit_bsw(np.ones((90, 3)), TIMES, np.zeros(90)), "zero at every frame"),
        (lambda: fit_bsw(np.ones((90, 3)), TIMES, np.full(90, np.nan)), "NaN"),
        (lambda: fit_bsw(np.ones((80, 3)), TIMES, np.ones(90)), "has 90 entries"),
        (lambda: correct_leakage(np.ones((90, 3)), TIMES, np.ones(90), "gamma"), "leakage method"),
        (lambda: correct_bsw(np.ones((90, 3)), TIMES, np.ones(90), np.zeros(4)), "k2 has 4 entries"),
        (lambda: select_reference_voxels(np.ones((90, 3)), TIMES, (2, 3)), "at least 2 frames"),
        (lambda: select_reference_voxels(np.ones((90, 3)), TIMES, (2, 9), np.ones(4, bool)), "candidates"),
    ],
)
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
