"""Tests of DSCPerfusionLib.signal: deltaR2* from single- and dual-echo signal, and the time integrals."""

import numpy as np
import pytest

from DSCPerfusionLib.signal import (
    MIN_SIGNAL_RATIO,
    cumulative_integral,
    delta_r2s_from_dual_echo,
    delta_r2s_from_signal,
    rcbv_trapezoid,
)
from DSCPerfusionLib.simulation import simulate_dsc

TIMES = np.arange(60) * 1.5  # TR 1.5 s, 60 frames, bolus arrives at 15 s (frame 10)
BASELINE = slice(1, 10)  # skip the first (steady-state) frame, end before the arrival
TE = 0.030


def _tissue_maps():
    """CBV, CBF, K2 for grey matter, white matter, a high-CBV voxel and two leaky tumour voxels."""
    cbv = np.array([4.0, 2.0, 6.0, 8.0, 8.0])
    cbf = np.array([60.0, 20.0, 30.0, 120.0, 120.0])
    k2 = np.array([0.0, 0.0, 0.0, 0.01, -0.005])
    return cbv, cbf, k2


def test_single_echo_round_trip_recovers_measured_delta_r2s():
    cbv, cbf, k2 = _tissue_maps()
    s0 = np.array([800.0, 1000.0, 1200.0, 900.0, 950.0])
    sim = simulate_dsc(TIMES, cbv, cbf, k2, s0, TE)
    recovered = delta_r2s_from_signal(sim.signal, TE, baseline=BASELINE)
    expected = sim.measured_delta_r2s.astype(np.float64)
    assert recovered.dtype == np.float64
    assert recovered.shape == expected.shape
    np.testing.assert_allclose(recovered, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert recovered[:, 0].max() == pytest.approx(22.0, abs=0.5)  # grey matter first-pass peak


def test_single_echo_works_on_volumes():
    cbv = np.full((2, 3, 4), 4.0)
    cbf = np.full((2, 3, 4), 60.0)
    sim = simulate_dsc(TIMES, cbv, cbf, 0.0, 500.0, TE)
    recovered = delta_r2s_from_signal(sim.signal, TE, baseline=BASELINE)
    assert recovered.shape == (60, 2, 3, 4)
    np.testing.assert_allclose(recovered, sim.measured_delta_r2s, rtol=1e-4, atol=1e-3)


def test_voxels_without_baseline_signal_give_zero():
    signal = np.ones((20, 4)) * 100.0
    signal[12, 0] = 40.0  # an ordinary dip
    signal[:, 1] = 0.0  # background: S0 = 0
    signal[:5, 2] = -3.0  # negative baseline (e.g. after a filter): S0 < 0
    signal[8, 2] = 50.0
    signal[:, 3] = 0.0  # all zeros
    result = delta_r2s_from_signal(signal, TE, baseline=slice(0, 5))
    assert np.all(np.isfinite(result))
    assert result[12, 0] == pytest.approx(-np.log(0.4) / TE)
    np.testing.assert_array_equal(result[:, 1:], 0.0)


def test_non_positive_samples_are_clipped_to_a_finite_value():
    signal = np.full((10, 3), 200.0)
    signal[6, 0] = 0.0
    signal[7, 1] = -50.0
    signal[8, 2] = 1e-300
    result = delta_r2s_from_signal(signal, TE, baseline=slice(0, 4))
    assert np.all(np.isfinite(result))
    cap = -np.log(MIN_SIGNAL_RATIO) / TE
    assert result[6, 0] == pytest.approx(cap)
    assert result[7, 1] == pytest.approx(cap)
    assert result[8, 2] == pytest.approx(cap)
    assert result[9].max() == 0.0


def test_dual_echo_recovers_delta_r2s_despite_t1_effect():
    cbv, cbf, k2 = _tissue_maps()
    te1, te2 = 0.015, 0.045
    first = simulate_dsc(TIMES, cbv, cbf, k2, 1000.0, te1)
    second = simulate_dsc(TIMES, cbv, cbf, k2, 700.0, te2)
    # A T1 shortening multiplies both echoes by the same factor; dual echo must cancel it.
    t1_gain = 1.0 + 0.3 * np.clip((TIMES - 20.0) / 30.0, 0.0, 1.0)[:, None]
    signal1 = first.signal * t1_gain
    signal2 = second.signal * t1_gain
    recovered = delta_r2s_from_dual_echo(signal1, signal2, te1, te2, baseline=BASELINE)
    expected = first.measured_delta_r2s.astype(np.float64)
    np.testing.assert_allclose(recovered, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    single_echo = delta_r2s_from_signal(signal1, te1, baseline=BASELINE)
    assert np.abs(single_echo - expected).max() > 5.0  # the T1 effect really is there


def test_dual_echo_guards_voxels_without_baseline():
    signal1 = np.full((12, 3), 100.0)
    signal2 = np.full((12, 3), 80.0)
    signal1[:, 1] = 0.0
    signal2[:, 2] = -1.0
    signal2[9, 0] = 0.0
    result = delta_r2s_from_dual_echo(signal1, signal2, 0.02, 0.04, baseline=slice(0, 5))
    assert np.all(np.isfinite(result))
    np.testing.assert_array_equal(result[:, 1:], 0.0)
    assert result[9, 0] == pytest.approx(-np.log(MIN_SIGNAL_RATIO) / 0.02)


def test_rcbv_trapezoid_integrates_in_seconds():
    times = np.array([0.0, 1.0, 3.0, 4.5])
    curve = np.stack([2.0 * times, np.ones(4)], axis=1)  # linear: trapezoid is exact
    result = rcbv_trapezoid(curve, times)
    np.testing.assert_allclose(result, [4.5**2, 4.5])
    partial = rcbv_trapezoid(curve, times, frames=slice(1, 3))
    np.testing.assert_allclose(partial, [3.0**2 - 1.0, 2.0])


def test_rcbv_trapezoid_keeps_spatial_shape():
    curves = np.ones((5, 2, 3, 4))
    assert rcbv_trapezoid(curves, np.arange(5) * 2.0).shape == (2, 3, 4)
    np.testing.assert_allclose(rcbv_trapezoid(curves, np.arange(5) * 2.0), 8.0)


def test_cumulative_integral_starts_at_zero_and_is_exact_for_linear_curves():
    times = np.array([0.0, 0.5, 2.0, 3.0])
    curve = 3.0 * times + 1.0
    result = cumulative_integral(curve, times)
    np.testing.assert_allclose(result, 1.5 * times**2 + times)
    assert result[0] == 0.0
    volume = np.broadcast_to(curve[:, None, None], (4, 2, 2))
    np.testing.assert_allclose(cumulative_integral(volume, times)[:, 1, 1], result)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: delta_r2s_from_signal(np.full((10, 2), np.nan), TE, slice(0, 3)), "signal contains NaN"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), -0.03, slice(0, 3)), "te_s must be a positive"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), 0.0, slice(0, 3)), "te_s must be a positive"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), 30.0, slice(0, 3)), "milliseconds"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), TE), "baseline must be given"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), TE, [0, 1, 2]), "baseline must be a slice"),
        (lambda: delta_r2s_from_signal(np.ones((10, 2)), TE, slice(12, 15)), "selects no frames"),
        (lambda: delta_r2s_from_signal(np.ones(()), TE, slice(0, 1)), "time as its first axis"),
        (lambda: delta_r2s_from_dual_echo(np.ones((10, 2)), np.ones((10, 3)), 0.02, 0.04, slice(0, 3)), "same shape"),
        (lambda: delta_r2s_from_dual_echo(np.ones((10, 2)), np.ones((10, 2)), 0.04, 0.02, slice(0, 3)), "longer than"),
        (lambda: delta_r2s_from_dual_echo(np.ones((10, 2)), np.ones((10, 2)), -0.01, 0.02, slice(0, 3)), "te1_s"),
        (
            lambda: delta_r2s_from_dual_echo(np.ones((10, 2)), np.full((10, 2), np.inf), 0.02, 0.04, slice(0, 3)),
            "signal_te2",
        ),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), [0.0, 1.0, 1.0, 2.0]), "strictly increasing"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), [0.0, 1.0, 2.0]), "has 3 entries"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), [0.0, np.nan, 2.0, 3.0]), "times_s contains NaN"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), np.zeros((4, 1))), "1-D array"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), np.arange(4.0), frames=slice(2, 3)), "at least 2 frames"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), np.arange(4.0), frames=slice(3, 0, -1)), "increasing order"),
        (lambda: rcbv_trapezoid(np.ones((4, 2)), np.arange(4.0), frames=(0, 2)), "frames must be a slice"),
        (lambda: cumulative_integral(np.array([1.0, np.nan, 2.0]), np.arange(3.0)), "curve contains NaN"),
        (lambda: cumulative_integral(np.ones(3), [2.0, 1.0, 0.0]), "strictly increasing"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
