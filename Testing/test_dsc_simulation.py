"""Tests of DSCPerfusionLib.simulation: AIF, tissue convolution, BSW leakage, the DSC simulator and noise."""

import functools
import warnings

import numpy as np
import pytest
from scipy.integrate import trapezoid

from DSCPerfusionLib import simulation
from DSCPerfusionLib.signal import cumulative_integral, delta_r2s_from_signal, rcbv_trapezoid
from DSCPerfusionLib.simulation import (
    DSCSimulation,
    add_rician_noise,
    gamma_variate_aif,
    gamma_variate_area,
    leaky_delta_r2s,
    simulate_dsc,
    tissue_delta_r2s,
)

TIMES = np.arange(60) * 1.5  # TR 1.5 s, 60 frames: long enough for the bolus and recirculation to pass
BASELINE = slice(1, 10)  # the bolus arrives at 15 s = frame 10
TE = 0.030


def _brute_force_tissue(times_s, cbv, cbf, r2_eff=simulation.DEFAULT_R2_EFF, dt=0.005, **aif_options):
    """Reference: dense-grid np.convolve of the analytic AIF with the exponential residue, sampled at times_s."""
    grid = np.arange(times_s[0], times_s[-1] + dt / 2, dt)
    arterial = gamma_variate_aif(grid, **aif_options)
    mtt = 60.0 * cbv / cbf
    residue = np.exp(-(grid - grid[0]) / mtt)
    # Trapezoid-corrected Riemann sum: subtract half of the end-point terms.
    riemann = np.convolve(arterial, residue)[: grid.size]
    convolution = (riemann - 0.5 * arterial * residue[0] - 0.5 * arterial[0] * residue) * dt
    tissue = r2_eff * cbf / 6000.0 * convolution
    return np.interp(times_s, grid, tissue)


def test_gamma_variate_aif_shape_peak_and_area():
    aif = gamma_variate_aif(TIMES, arrival_s=15.0, peak=10.0, alpha=3.0, beta=1.5, recirculation=0.0)
    assert np.all(aif[TIMES <= 15.0] == 0.0)
    assert gamma_variate_aif(np.array([19.5]), recirculation=0.0, peak=7.0)[0] == pytest.approx(7.0)
    assert aif.max() <= 10.0
    dense = np.arange(0.0, 200.0, 0.001)
    first_pass = trapezoid(gamma_variate_aif(dense, recirculation=0.0), dense)
    with_bump = trapezoid(gamma_variate_aif(dense, recirculation=0.1), dense)
    assert first_pass == pytest.approx(gamma_variate_area(), rel=1e-6)
    assert with_bump == pytest.approx(1.1 * first_pass, rel=1e-6)


def test_grey_matter_peak_and_signal_drop_are_clinical():
    sim = simulate_dsc(TIMES, np.array([4.0, 2.0]), np.array([60.0, 20.0]), 0.0, 1000.0, TE)
    peaks = sim.vascular_delta_r2s.max(axis=0)
    assert 20.0 <= peaks[0] <= 25.0
    assert peaks[1] < peaks[0] / 2
    drop = 1.0 - sim.signal.min(axis=0)[0] / 1000.0
    assert 0.4 <= drop <= 0.55


def test_rcbv_is_proportional_to_cbv():
    cbv = np.array([4.0, 2.0, 6.0])
    cbf = np.array([60.0, 20.0, 30.0])
    sim = simulate_dsc(TIMES, cbv, cbf, 0.0, 1000.0, TE)
    rcbv = rcbv_trapezoid(delta_r2s_from_signal(sim.signal, TE, baseline=BASELINE), TIMES)
    assert rcbv[0] / rcbv[1] == pytest.approx(2.0, rel=0.02)
    assert rcbv[2] / rcbv[1] == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize(("cbv", "cbf"), [(4.0, 60.0), (2.0, 20.0), (6.0, 30.0), (0.5, 90.0), (12.0, 15.0)])
def test_tissue_convolution_matches_brute_force(cbv, cbf):
    fast = tissue_delta_r2s(TIMES, gamma_variate_aif, np.array([cbv]), np.array([cbf]))[:, 0]
    reference = _brute_force_tissue(TIMES, cbv, cbf)
    assert np.abs(fast - reference).max() < 0.01 * reference.max()


@pytest.mark.slow
def test_tissue_convolution_on_irregular_frame_times():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.8, 2.2, 50))
    aif = functools.partial(gamma_variate_aif, arrival_s=12.0)
    fast = tissue_delta_r2s(times, aif, np.array([4.0, 2.0]), np.array([60.0, 20.0]))
    for voxel, (cbv, cbf) in enumerate([(4.0, 60.0), (2.0, 20.0)]):
        reference = _brute_force_tissue(times, cbv, cbf, arrival_s=12.0)
        assert np.abs(fast[:, voxel] - reference).max() < 0.01 * reference.max()


def test_array_aif_is_linear_between_frames():
    fine_times = np.arange(0.0, 90.0, 0.05)
    from_array = tissue_delta_r2s(fine_times, gamma_variate_aif(fine_times), np.array([4.0]), np.array([60.0]))
    from_callable = tissue_delta_r2s(fine_times, gamma_variate_aif, np.array([4.0]), np.array([60.0]))
    np.testing.assert_allclose(from_array, from_callable, atol=1e-9 * from_callable.max())


def test_tissue_integral_follows_central_volume_theorem():
    dense = np.arange(0.0, 300.0, 0.5)
    curves = tissue_delta_r2s(dense, gamma_variate_aif, np.array([4.0, 3.0]), np.array([60.0, 10.0]), r2_eff=1.0)
    aif_area = trapezoid(gamma_variate_aif(dense), dense)
    np.testing.assert_allclose(trapezoid(curves, dense, axis=0), [0.04 * aif_area, 0.03 * aif_area], rtol=1e-3)


def test_zero_cbv_or_cbf_gives_zero_curve_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = tissue_delta_r2s(TIMES, gamma_variate_aif, np.array([0.0, 4.0, 0.0]), np.array([60.0, 0.0, 0.0]))
    np.testing.assert_array_equal(curves, 0.0)


def test_tissue_output_shape_broadcasting_and_blocks():
    volume = tissue_delta_r2s(TIMES, gamma_variate_aif, np.full((2, 3, 4), 4.0), 60.0)
    assert volume.shape == (60, 2, 3, 4)
    many = simulation._VOXEL_BLOCK + 1000  # crosses a block boundary
    cbv = np.full(many, 2.0)
    cbv[-3] = 4.0
    curves = tissue_delta_r2s(TIMES, gamma_variate_aif, cbv, 20.0, dtype=np.float32)
    assert curves.dtype == np.float32
    single = tissue_delta_r2s(TIMES, gamma_variate_aif, np.array([2.0, 4.0]), 20.0)
    np.testing.assert_allclose(curves[:, 0], single[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(curves[:, -1], single[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(curves[:, -3], single[:, 1], rtol=1e-6, atol=1e-6)


def _leaky_phantom():
    """Homogeneous grey-matter brain plus tumour voxels with the same MTT (so vascular is a multiple of ref)."""
    cbv = np.array([4.0] * 6 + [8.0, 8.0, 8.0, 0.0])
    cbf = np.array([60.0] * 6 + [120.0, 120.0, 120.0, 0.0])
    k2 = np.array([0.0] * 6 + [0.02, -0.01, 0.005, 0.0])
    return cbv, cbf, k2


def test_leakage_raises_late_signal_and_spares_non_leaky_voxels():
    cbv, cbf, k2 = _leaky_phantom()
    sim = simulate_dsc(TIMES, cbv, cbf, k2, 1000.0, TE)
    assert sim.signal[-1, 6] > 1000.0 * 1.01  # T1-dominant leakage: signal ends above baseline
    assert sim.signal[-1, 7] < sim.signal[-1, 0]  # T2*-dominant leakage: signal stays lower
    non_leaky = k2 == 0
    np.testing.assert_array_equal(sim.measured_delta_r2s[:, non_leaky], sim.vascular_delta_r2s[:, non_leaky])


def test_bsw_least_squares_recovers_k2():
    cbv, cbf, k2 = _leaky_phantom()
    sim = simulate_dsc(TIMES, cbv, cbf, k2, 1000.0, TE)
    measured = delta_r2s_from_signal(sim.signal, TE, baseline=BASELINE)
    design = np.stack([sim.reference, -cumulative_integral(sim.reference, TIMES)], axis=1)
    (k1_fit, k2_fit), *_ = np.linalg.lstsq(design, measured, rcond=None)
    leaky = k2 != 0
    np.testing.assert_allclose(k2_fit[leaky], k2[leaky], rtol=0.01)
    np.testing.assert_allclose(k1_fit[leaky], 2.0, rtol=0.01)
    assert np.abs(k2_fit[:6]).max() < 1e-4


def test_leaky_delta_r2s_matches_the_bsw_formula():
    vascular = np.random.default_rng(0).uniform(0, 10, (60, 3, 2)).astype(np.float32)
    reference = np.linspace(0.0, 5.0, 60)
    k2 = np.array([[0.0, 0.01], [0.02, -0.01], [0.0, 0.0]])
    measured = leaky_delta_r2s(vascular, TIMES, k2, reference)
    assert measured.dtype == np.float32
    expected = vascular - k2[None] * cumulative_integral(reference, TIMES)[:, None, None]
    np.testing.assert_allclose(measured, expected, rtol=1e-6, atol=1e-5)


def test_simulate_dsc_result_fields_and_reference():
    rng = np.random.default_rng(1)
    cbv = rng.uniform(1.0, 6.0, (3, 4, 5))
    cbf = rng.uniform(10.0, 70.0, (3, 4, 5))
    k2 = np.zeros((3, 4, 5))
    k2[0, 0, :2] = 0.01
    brain = np.ones((3, 4, 5), bool)
    brain[2] = False
    sim = simulate_dsc(TIMES, cbv, cbf, k2, 1000.0, TE, brain_mask=brain)
    assert isinstance(sim, DSCSimulation)
    assert sim.signal.dtype == np.float32 and sim.signal.shape == (60, 3, 4, 5)
    assert sim.reference.shape == (60,) and sim.aif.shape == (60,)
    np.testing.assert_allclose(sim.aif, gamma_variate_aif(TIMES))
    expected_reference = sim.vascular_delta_r2s[:, brain & (k2 == 0)].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(sim.reference, expected_reference, rtol=1e-6)
    default_mask = simulate_dsc(TIMES, np.where(brain, cbv, 0.0), cbf, k2, 1000.0, TE)
    np.testing.assert_allclose(default_mask.reference, sim.reference, rtol=1e-6)


def test_simulate_dsc_accepts_an_array_aif():
    aif = gamma_variate_aif(TIMES, arrival_s=10.0, recirculation=0.0)
    sim = simulate_dsc(TIMES, np.array([4.0]), np.array([60.0]), 0.0, 100.0, TE, aif=aif)
    np.testing.assert_array_equal(sim.aif, aif)
    assert sim.vascular_delta_r2s[:7].max() == 0.0  # nothing before the arrival at 10 s
    assert sim.vascular_delta_r2s.max() > 10.0


def test_rician_noise_on_zero_image_is_rayleigh():
    sigma = 5.0
    noisy = add_rician_noise(np.zeros(1_000_000), sigma, np.random.default_rng(42))
    assert noisy.min() >= 0.0
    assert noisy.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.005)


def test_rician_noise_at_high_snr_is_nearly_gaussian():
    image = np.full((100, 100, 100), 1000.0, dtype=np.float32)
    noisy = add_rician_noise(image, 10.0, np.random.default_rng(7))
    assert noisy.dtype == np.float32
    assert noisy.mean() == pytest.approx(1000.0, abs=0.2)
    assert noisy.std() == pytest.approx(10.0, rel=0.02)
    again = add_rician_noise(image, 10.0, np.random.default_rng(7))
    np.testing.assert_array_equal(noisy, again)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gamma_variate_aif(TIMES, alpha=0.0), "alpha must be positive"),
        (lambda: gamma_variate_aif(TIMES, beta=-1.0), "beta must be positive"),
        (lambda: gamma_variate_aif(TIMES, peak=-1.0), "peak must be zero or positive"),
        (lambda: gamma_variate_aif(TIMES, recirculation=np.nan), "recirculation must be zero or positive"),
        (lambda: gamma_variate_aif(TIMES, arrival_s=np.inf), "arrival_s must be a finite"),
        (lambda: gamma_variate_aif(np.array([0.0, np.nan])), "times_s contains NaN"),
        (lambda: tissue_delta_r2s(TIMES, gamma_variate_aif, -1.0, 60.0), "cbv must be zero or positive"),
        (lambda: tissue_delta_r2s(TIMES, gamma_variate_aif, 4.0, np.nan), "cbf contains NaN"),
        (lambda: tissue_delta_r2s(TIMES, gamma_variate_aif, np.ones(3), np.ones(4)), "broadcastable"),
        (lambda: tissue_delta_r2s(TIMES, np.ones(59), 4.0, 60.0), "aif must have shape"),
        (lambda: tissue_delta_r2s(TIMES, np.full(60, np.nan), 4.0, 60.0), "aif contains NaN"),
        (lambda: tissue_delta_r2s(TIMES, lambda t: np.ones(3), 4.0, 60.0), "aif\\(times_s\\) must have shape"),
        (lambda: tissue_delta_r2s(TIMES, gamma_variate_aif, 4.0, 60.0, r2_eff=-1.0), "r2_eff"),
        (lambda: tissue_delta_r2s(TIMES, gamma_variate_aif, 4.0, 60.0, fine_dt_s=0.0), "fine_dt_s"),
        (lambda: tissue_delta_r2s(TIMES[::-1], gamma_variate_aif, 4.0, 60.0), "strictly increasing"),
        (lambda: leaky_delta_r2s(np.ones((60, 2)), TIMES, np.ones(3), np.ones(60)), "k2 of shape"),
        (lambda: leaky_delta_r2s(np.ones((60, 2)), TIMES, np.nan, np.ones(60)), "k2 contains NaN"),
        (lambda: leaky_delta_r2s(np.ones((60, 2)), TIMES, 0.0, np.ones(59)), "reference must have shape"),
        (lambda: leaky_delta_r2s(np.full((60, 2), np.inf), TIMES, 0.0, np.ones(60)), "vascular contains NaN"),
        (lambda: leaky_delta_r2s(np.ones((59, 2)), TIMES, 0.0, np.ones(60)), "has 60 entries"),
        (lambda: simulate_dsc(TIMES, 4.0, 60.0, 0.0, 100.0, 30.0), "te_s must be a positive"),
        (lambda: simulate_dsc(TIMES, 4.0, 60.0, 0.0, 100.0, -0.03), "te_s must be a positive"),
        (lambda: simulate_dsc(TIMES, 4.0, 60.0, 0.0, -100.0, TE), "s0 must be finite"),
        (lambda: simulate_dsc(TIMES, np.ones(3), 60.0, 0.0, np.ones(2), TE), "s0 of shape"),
        (
            lambda: simulate_dsc(TIMES, np.ones(3), 60.0, 0.0, 100.0, TE, brain_mask=np.ones(2, bool)),
            "brain_mask has shape",
        ),
        (lambda: simulate_dsc(TIMES, np.ones(3), 60.0, 0.01, 100.0, TE), "no voxel with k2 == 0"),
        (lambda: add_rician_noise(np.ones(3), 1.0, np.random.RandomState(0)), "rng must be"),
        (lambda: add_rician_noise(np.ones(3), -1.0, np.random.default_rng(0)), "sigma must be finite"),
        (lambda: add_rician_noise(np.array([1.0, np.nan]), 1.0, np.random.default_rng(0)), "image contains NaN"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
