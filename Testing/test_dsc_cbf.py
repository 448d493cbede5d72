"""CBF that holds up (issue 13 item 2): exactly circulant oSVD, its peak read between frames, sub-frame delays,
the OSIPI concentration cases with the discretisation of their generator (oSVD, and the gamma-residue fit that
gets all 14 within 10 %), and the bias dispersion leaves.

Numbers quoted as "observed" are measured; the tables behind them are in docs/dsc-cbf-validation.md
(benchmarks/validate_cbf.py).
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

from DSCPerfusionLib.deconvolution import convolution_matrix, osvd_residues, perfusion_maps, residue_peak
from DSCPerfusionLib.simulation import gamma_variate_aif, tissue_delta_r2s

REFERENCE = Path(__file__).resolve().parent / "data" / "dsc_reference"
OSIPI = [case for case in json.loads((REFERENCE / "cases.json").read_text())["cases"] if case["group"] == "osipi_csv"]
TR_S = 1.5
TIMES = np.arange(60) * TR_S
MEASURED_AIF = gamma_variate_aif(TIMES)
# Grey matter, white matter, enhancing tumour: (CBV ml/100 ml, CBF ml/100 ml/min); MTT 4, 5.5, 4.9 s.
CBV = np.array([4.0, 2.0, 7.0])
CBF = np.array([60.0, 22.0, 85.0])
# No delay, 1/4, 1/2, 3/4, 1 and 2 frames late, and 1/2 frame early.
DELAYS_S = (0.0, 0.375, 0.75, 1.125, 1.5, 3.0, -0.75)


def _delayed_tissue(delay_s: float) -> np.ndarray:
    """Noise-free tissue curves (T, 3) fed by the default AIF arriving ``delay_s`` after the measured one."""
    feed = functools.partial(gamma_variate_aif, arrival_s=15.0 + delay_s)
    return tissue_delta_r2s(TIMES, feed, CBV, CBF, r2_eff=1.0)


@pytest.mark.parametrize("discretisation", ["linear", "rectangular"])
def test_block_circulant_matrix_is_exactly_circulant_and_its_singular_values_are_the_aif_spectrum(discretisation):
    matrix = convolution_matrix(MEASURED_AIF, TR_S, circulant=True, discretisation=discretisation)
    np.testing.assert_array_equal(matrix, np.roll(np.roll(matrix, 1, axis=0), 1, axis=1))
    singular = np.linalg.svd(matrix, compute_uv=False)
    np.testing.assert_allclose(np.sort(np.abs(np.fft.fft(matrix[:, 0])))[::-1], singular, rtol=1e-9,
                               atol=1e-12 * singular[0])


@pytest.mark.parametrize("centre", [10.5, 10.0, 117.6])
def test_residue_peak_reads_a_trigonometric_polynomial_between_frames(centre):
    """A sum of cosines peaking at ``centre`` (frames) on a 120-frame circle: its maximum is the sum of the
    weights, wherever the centre lies between frames; lags past half the circle are negative."""
    length = 120
    frames = np.arange(length)
    weights = np.exp(-0.5 * (np.arange(40) / 12.0) ** 2)  # a bump ~1.6 frames wide
    residue = sum(w * np.cos(2 * np.pi * m * (frames - centre) / length) for m, w in enumerate(weights))
    peak, lag = residue_peak(residue[:, None])
    assert peak[0] == pytest.approx(weights.sum(), rel=2e-3)  # read at most 1/16 frame off the top
    expected_lag = centre if centre < length / 2 else centre - length
    assert abs(lag[0] - expected_lag) <= 1 / 16 + 1e-9
    if centre != round(centre):
        assert residue.max() < 0.98 * weights.sum()  # the samples alone miss the top (observed 0.954, 0.970)


def test_cbf_does_not_depend_on_sub_frame_delays():
    """Noise-free, delays from -1/2 to +2 frames: CBF/truth varies by 0.01 (observed 0.009-0.010; e.g. grey
    matter 0.891-0.901), where the largest residue SAMPLE varies by 0.08-0.12 (the peak falls between
    frames). The level itself (0.89-0.96 of truth) is the truncation rounding the residue's jump."""
    flows, sampled = [], []
    for delay in DELAYS_S:
        result = osvd_residues(_delayed_tissue(delay), MEASURED_AIF, TR_S)
        flows.append(6000.0 * result.flow / CBF)
        sampled.append(6000.0 * result.residue.max(axis=0) / CBF)
    assert np.all(np.ptp(flows, axis=0) < 0.02)
    assert np.all(np.ptp(sampled, axis=0) > 0.06)
    assert np.all((np.min(flows, axis=0) > 0.85) & (np.max(flows, axis=0) < 1.0))


def test_tmax_follows_sub_frame_delays():
    """The residue's peak lag moves with the delay at 1/8-frame resolution (observed exact, one 0.19 s step)."""
    lags = np.array([osvd_residues(_delayed_tissue(delay), MEASURED_AIF, TR_S).peak_lag_s for delay in DELAYS_S])
    np.testing.assert_allclose(lags - lags[0], np.repeat(np.array(DELAYS_S)[:, None], CBV.size, axis=1), atol=0.2)


def _osipi_errors(discretisation: str, method: str = "osvd") -> np.ndarray:
    """CBF error (%) on the 14 OSIPI concentration cases with their known AIF."""
    errors = []
    for case in OSIPI:
        arrays = np.load(REFERENCE / case["file"])
        maps = perfusion_maps(arrays["C_tis"][:, None], arrays["t"], np.ones(1, bool), aif=arrays["C_aif"],
                              method=method, discretisation=discretisation)
        errors.append(100.0 * (maps.cbf[0] / case["reference"]["cbf_ml_per_100ml_per_min"] - 1.0))
    return np.array(errors)


def test_osipi_cases_have_no_delay_and_no_dispersion():
    """The issue's 14 are these: the 10 % claim cannot exclude any of them for dispersion or delay."""
    assert len(OSIPI) == 14
    assert all(case["params"]["delay_s"] == 0 and case["params"]["dispersion"] is None for case in OSIPI)


@pytest.mark.parametrize(
    ("discretisation", "median_limit", "worst_limit", "min_within_10"),
    # Observed: linear 8.3 % median |error|, worst +42.0 % (CBV 2, CBF 5), 7/14 within 10 %;
    # rectangular (the generator's rule) 9.8 %, worst +21.5 % (same case), 7/14. Before: linear 18.4 %,
    # +44.4 %, 1/14; rectangular 9.5 %, +20.7 %, 7/14.
    [("linear", 10.0, 45.0, 6), ("rectangular", 11.0, 24.0, 6)],
)
def test_osipi_cbf_errors_stay_at_their_measured_level(discretisation, median_limit, worst_limit, min_within_10):
    errors = _osipi_errors(discretisation)
    assert np.median(np.abs(errors)) <= median_limit
    assert np.abs(errors).max() <= worst_limit
    assert np.sum(np.abs(errors) <= 10.0) >= min_within_10


def test_the_gamma_fit_puts_osipi_cbf_within_10_percent_on_all_14_with_the_generators_rule():
    """The issue's acceptance, by the least-squares gamma-residue fit (``residue_fit``). Observed (rectangular,
    the generator's rule): -3.6 .. +6.9 %, median |e| 1.5 %."""
    errors = _osipi_errors("rectangular", method="gamma-fit")
    assert errors.size == 14
    assert np.all(np.abs(errors) <= 10.0)
    assert np.median(np.abs(errors)) <= 3.0


def test_the_gamma_fit_with_the_linear_rule_reads_rectangle_rule_data_high():
    """The discretisation must match the signal model: the linear rule gives the residue's first frame half the
    rectangle rule's weight, so it reads the OSIPI curves (made with the rectangle rule) too high. Observed
    +1 .. +23 % (median +14 %), 4/14 within 10 %."""
    errors = _osipi_errors("linear", method="gamma-fit")
    assert np.median(errors) > 8.0


def _dispersed_tissue(beta_s: float) -> np.ndarray:
    """Noise-free tissue (T, 3) fed the AIF convolved with exp(-t/beta)/beta (unit area), no delay."""
    fine = np.arange(0.0, TIMES[-1] + 60.0, 0.02)
    kernel = np.exp(-fine / beta_s)
    dispersed = fftconvolve(gamma_variate_aif(fine), kernel / kernel.sum())[: fine.size]
    return tissue_delta_r2s(TIMES, lambda t: np.interp(t, fine, dispersed), CBV, CBF, r2_eff=1.0)


@pytest.mark.parametrize(("beta_s", "low", "high"), [(1.0, 0.70, 0.84), (2.0, 0.53, 0.67), (4.0, 0.36, 0.48)])
def test_dispersion_still_biases_cbf_low(beta_s, low, high):
    """Dispersion between the measured AIF and the tissue is folded into the residue: its peak is lower, and
    no deconvolution with the measured AIF undoes it. Observed CBF/truth (grey, white, tumour): beta 1 s
    0.74 0.80 0.78; 2 s 0.57 0.63 0.61; 4 s 0.39 0.44 0.42."""
    ratio = 6000.0 * osvd_residues(_dispersed_tissue(beta_s), MEASURED_AIF, TR_S).flow / CBF
    assert np.all((ratio > low) & (ratio < high))
