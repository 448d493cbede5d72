"""Tests of DSCPerfusionLib.deconvolution: oSVD/sSVD residues, CBF/CBV/MTT/TTP/Tmax maps.

External reference: the 14 OSIPI `osipi_csv` cases (Testing/data/dsc_reference, concentration domain, TR
1.243 s, exponential residue, no delay). Internal reference: DSCPerfusionLib.simulation (continuous-time
exponential-residue model with known CBF).
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from DSCPerfusionLib.deconvolution import (
    DEFAULT_OI_LIMIT,
    DEFAULT_OSVD_THRESHOLDS,
    FLOW_SCALE,
    PerfusionMaps,
    convolution_matrix,
    oscillation_index,
    osvd_residues,
    perfusion_maps,
    ssvd_residues,
    uniform_frame_interval,
)
from DSCPerfusionLib.signal import delta_r2s_from_signal
from DSCPerfusionLib.simulation import (
    DEFAULT_R2_EFF,
    add_rician_noise,
    gamma_variate_aif,
    simulate_dsc,
    tissue_delta_r2s,
)

REFERENCE = Path(__file__).resolve().parent / "data" / "dsc_reference"
CASES = [case for case in json.loads((REFERENCE / "cases.json").read_text())["cases"] if case["group"] == "osipi_csv"]

TIMES = np.arange(60) * 1.5  # project acquisition: TR 1.5 s, 60 frames, bolus at 15 s (frame 10)
TE = 0.030

# Noise-induced scatter of 100*trapz(Ct)/trapz(Ca) at SNR 200: the pre-bolus SD of C_tis is ~0.0015 mM, so
# the sum over 161 frames scatters by ~0.019 mM against sum(C_aif) ~ 24 mM: SD ~0.08-0.10 ml/100 ml per case
# (observed differences to the noise-free value: RMS 0.06, max 0.125). 0.3 is a ~3-SD bound.
CBV_DISCRETE_ATOL = 0.3


def _load(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, C_tis, C_aif) of one OSIPI case."""
    arrays = np.load(REFERENCE / case["file"])
    return arrays["t"], arrays["C_tis"], arrays["C_aif"]


def _anchor_limit(case: dict, quantity: str, reference: float) -> float:
    """The anchor's assert_allclose bound atol + rtol*|ref|."""
    tolerance = case["tolerance_used_by_anchor"][quantity]
    return tolerance["atol"] + tolerance["rtol"] * abs(reference)


def _case_maps(case: dict, **options) -> PerfusionMaps:
    """perfusion_maps on the single tissue curve of an OSIPI case, with its AIF (cached: several tests share it)."""
    return _cached_case_maps(case["id"], tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def _cached_case_maps(case_id: str, options: tuple) -> PerfusionMaps:
    times, tissue, arterial = _load(next(case for case in CASES if case["id"] == case_id))
    return perfusion_maps(tissue[:, None], times, np.ones(1, dtype=bool), aif=arterial, **dict(options))


def _ids(case: dict) -> str:
    return case["id"].split("/")[-1].replace("test_CNR200_", "").replace("_delay0_dispersion0", "")


# --- OSIPI reference cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_osipi_cbv_within_anchor_and_noise_free_discrete_value(case):
    cbv = _case_maps(case).cbv[0]
    nominal = case["reference"]["cbv_ml_per_100ml"]
    discrete = case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"]
    # The anchor needs atol = 1 because the generator's rectangle-rule convolution adds ~CBF*dt/2 to the
    # integral of Ct (4.10-4.77 for CBV 4). The noise-free discrete value carries the same bias, so it is
    # the tighter target. It is a ratio of sums, ours of trapezoids: the two differ only by the end-point
    # half-samples, which are noise around 0 here (|difference| < 0.01), far below the noise scatter.
    assert abs(cbv - nominal) <= _anchor_limit(case, "cbv", nominal)
    assert abs(cbv - discrete) <= CBV_DISCRETE_ATOL


def test_osipi_cbv_is_unbiased_against_the_discrete_values_on_average():
    differences = [
        _case_maps(case).cbv[0] - case["reference"]["derived_not_anchor"]["cbv_discrete_noise_free"] for case in CASES
    ]
    # Mean of 14 independent ~0.09-SD differences: SD 0.025; observed -0.012 (cases.json "observed_by_us").
    assert abs(np.mean(differences)) < 0.05


# Errors (ml/100 ml/min) of oSVD with the defaults (exactly circulant linear discretisation, OI 0.095, peak
# read between frames), anchor limit 15 + 0.1*CBF (per-case % before/after: docs/dsc-cbf-validation.md):
#   CBV 4, CBF 10..70:  +0.5 +2.8 +1.6 -4.9 -3.2 +1.5  -9.3   (largest: 9.3 at CBF 70, limit 22)
#   CBV 2, CBF 5..35:   +2.1 -0.1 +1.7 +4.3 +1.1 -3.1  -1.5
# With the generator's own rectangle rule: -13.8 .. +1.9.
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("discretisation", ["linear", "rectangular"])
def test_osipi_osvd_cbf_within_anchor_tolerance(case, discretisation):
    cbf = _case_maps(case, discretisation=discretisation).cbf[0]
    nominal = case["reference"]["cbf_ml_per_100ml_per_min"]
    assert abs(cbf - nominal) <= _anchor_limit(case, "cbf", nominal)


def test_osipi_ssvd_underestimates_high_flows():
    """With the generator's own rectangle rule (no discretisation mismatch) sSVD's 20 % truncation loses the
    residue peak more the shorter the MTT: -12.0 at CBF 70 (CBV 4) and -6.4 at CBF 35 (CBV 2), within 0.6
    at the lowest flows. (With the linear rule the generator's extra lag-0 weight masks this: +0.3..+6.1.)"""
    relative = {}
    for case in CASES:
        cbf = _case_maps(case, method="ssvd", discretisation="rectangular").cbf[0]
        nominal = case["reference"]["cbf_ml_per_100ml_per_min"]
        assert abs(cbf - nominal) <= _anchor_limit(case, "cbf", nominal)
        relative[(case["reference"]["cbv_ml_per_100ml"], nominal)] = cbf / nominal - 1.0
    for cbv in (2.0, 4.0):
        flows = sorted(flow for volume, flow in relative if volume == cbv)
        assert relative[(cbv, flows[-1])] < -0.10
        assert relative[(cbv, flows[-1])] < relative[(cbv, flows[0])] - 0.05


# --- Simulated curves (DSCPerfusionLib.simulation) -------------------------------------------------------


def _simulated_concentration(cbv, cbf, snr, seed=0, aif=None):
    """Concentration-domain curves (deltaR2*/r2_eff) from simulate_dsc through the signal, and the simulation."""
    sim = simulate_dsc(TIMES, cbv, cbf, 0.0, 1000.0, TE, aif=aif)
    signal = sim.signal if snr is None else add_rician_noise(sim.signal, 1000.0 / snr, np.random.default_rng(seed))
    delta_r2s = delta_r2s_from_signal(signal, TE, baseline=slice(1, 9))
    return delta_r2s / DEFAULT_R2_EFF, sim


def test_simulated_osvd_recovers_cbf_cbv_and_mtt_at_high_snr():
    n = 200
    cbv = np.repeat([4.0, 2.0], n)  # grey matter, white matter
    cbf = np.repeat([60.0, 20.0], n)
    curves, sim = _simulated_concentration(cbv, cbf, snr=300)
    maps = perfusion_maps(curves, TIMES, np.ones(cbv.shape, dtype=bool), aif=sim.aif)

    median_cbf = np.median(maps.cbf.reshape(2, n), axis=1)
    median_cbv = np.median(maps.cbv.reshape(2, n), axis=1)
    median_mtt = np.median(maps.mtt_s.reshape(2, n), axis=1)
    # Observed 0.85 and 0.89 of truth: the exactly circulant linear model spreads the residue's jump at t = 0
    # over one frame and the truncation rounds it (the price of not depending on sub-frame delays,
    # test_dsc_cbf.py); the grey/white ratio, what a relative map shows, is 2.88 for 3.
    np.testing.assert_allclose(median_cbf, [60.0 * 0.87, 20.0 * 0.87], rtol=0.06)
    assert median_cbf[0] / median_cbf[1] == pytest.approx(3.0, rel=0.06)
    np.testing.assert_allclose(median_cbv, [4.0, 2.0], rtol=0.03)
    np.testing.assert_allclose(maps.mtt_s, 60.0 * maps.cbv / maps.cbf, rtol=1e-12)
    np.testing.assert_allclose(median_mtt, [4.0 / 0.87, 6.0 / 0.87], rtol=0.08)


def test_simulated_ttp_is_the_peak_time_of_the_tissue_curve():
    cbv, cbf = np.array([4.0, 2.0, 6.0, 3.0]), np.array([60.0, 20.0, 30.0, 90.0])
    curves, sim = _simulated_concentration(cbv, cbf, snr=None)
    maps = perfusion_maps(curves, TIMES, np.ones(4, dtype=bool), aif=sim.aif)
    np.testing.assert_array_equal(maps.ttp_s, TIMES[np.argmax(sim.vascular_delta_r2s, axis=0)])
    assert np.all(maps.ttp_s > 15.0)  # after the bolus arrival


def test_osvd_is_insensitive_to_tissue_delay_unlike_ssvd():
    """Tissue fed 1.5 s after the measured AIF (one frame): block-circulant oSVD keeps CBF, sSVD loses ~1/3."""
    n = 100
    cbv, cbf = np.repeat([4.0, 2.0], n), np.repeat([60.0, 20.0], n)
    rng = np.random.default_rng(5)
    measured_aif = gamma_variate_aif(TIMES)
    result = {}
    for delay in (0.0, 1.5, 3.0):
        fed = functools.partial(gamma_variate_aif, arrival_s=15.0 + delay)
        tissue = tissue_delta_r2s(TIMES, fed, cbv, cbf, r2_eff=1.0)
        tissue += rng.normal(0.0, 0.003 * tissue.max(), tissue.shape)
        osvd = perfusion_maps(tissue, TIMES, np.ones(2 * n, dtype=bool), aif=measured_aif)
        ssvd = perfusion_maps(tissue, TIMES, np.ones(2 * n, dtype=bool), aif=measured_aif, method="ssvd")
        result[delay] = (
            np.median(osvd.cbf.reshape(2, n), axis=1) / [60.0, 20.0],
            np.median(ssvd.cbf.reshape(2, n), axis=1) / [60.0, 20.0],
            np.median(osvd.tmax_s.reshape(2, n), axis=1),
        )
    osvd_delayed, ssvd_delayed, _ = result[1.5]
    assert np.all(np.abs(osvd_delayed - result[0.0][0]) < 0.05)  # observed 0.90, 0.93 against 0.90, 0.92 at no delay
    assert np.all(ssvd_delayed < 0.75)  # observed 0.53, 0.62
    # Tmax is read between frames; the delay shows as the same shift in Tmax.
    np.testing.assert_allclose(result[3.0][2] - result[0.0][2], 3.0, atol=0.2)


def test_residue_of_noise_free_exponential_tissue_decays_from_its_peak():
    cbv, cbf = np.array([4.0]), np.array([40.0])
    tissue = tissue_delta_r2s(TIMES, gamma_variate_aif(TIMES), cbv, cbf, r2_eff=1.0)
    result = osvd_residues(tissue, gamma_variate_aif(TIMES), 1.5)
    residue = result.residue[:, 0]
    peak = int(np.argmax(residue))
    assert peak <= 1  # no delay: the peak is at lag 0 or (smoothed by truncation) lag 1
    assert residue[peak + 4] < residue[peak]  # MTT = 6 s: clearly lower 6 s after the peak
    assert residue.shape == (2 * TIMES.size,)
    assert abs(FLOW_SCALE * residue.max() / 40.0 - 1.0) < 0.15


# --- The numerical machinery ------------------------------------------------------------------------------


def test_linear_discretisation_matches_the_continuous_forward_model():
    """For an AIF linear between frames, M @ (f*R) reproduces the simulator's exact convolution."""
    aif = gamma_variate_aif(TIMES)
    errors = {}
    for discretisation in ("linear", "rectangular"):
        matrix = convolution_matrix(aif, 1.5, circulant=False, discretisation=discretisation)
        for cbv, cbf in ((4.0, 60.0), (2.0, 20.0)):
            exact = tissue_delta_r2s(TIMES, aif, np.array([cbv]), np.array([cbf]), r2_eff=1.0)[:, 0]
            flow = cbf / 6000.0
            predicted = matrix @ (flow * np.exp(-TIMES / (60.0 * cbv / cbf)))
            errors[(discretisation, cbf)] = np.abs(predicted - exact).max() / exact.max()
    assert errors[("linear", 60.0)] < 0.02 and errors[("linear", 20.0)] < 0.02
    assert errors[("rectangular", 60.0)] > 3 * errors[("linear", 60.0)]


def test_block_circulant_matrix_equals_linear_convolution_on_zero_padded_curves():
    """Rectangular: exactly. Linear: the circulant residue is piecewise linear on the circle, so it equals the
    causal (one-sided lag 0) model for a residue that starts from 0 at lag 0 (a delayed one)."""
    rng = np.random.default_rng(2)
    aif = np.concatenate([np.zeros(5), rng.random(TIMES.size - 5)])
    residue = np.concatenate([[0.0], rng.random(TIMES.size - 1)])
    for discretisation in ("linear", "rectangular"):
        circulant = convolution_matrix(aif, 1.5, circulant=True, discretisation=discretisation)
        linear = convolution_matrix(aif, 1.5, circulant=False, discretisation=discretisation)
        padded = np.concatenate([residue, np.zeros(TIMES.size)])
        np.testing.assert_allclose((circulant @ padded)[: TIMES.size], linear @ residue, rtol=1e-12, atol=1e-12)
        assert circulant.shape == (2 * TIMES.size, 2 * TIMES.size)


def _reference_osvd_residues(tissue, aif, dt, oi_limit, thresholds):
    """Per-voxel loop, as in Wu 2003: raise the threshold until OI < limit (a reference for the vectorised code).

    Returns the residues (2T, N) and thresholds (N,)."""
    u, s, vt = np.linalg.svd(convolution_matrix(aif, dt, circulant=True, discretisation="linear"))
    residues, levels = [], []
    for curve in tissue.T:
        padded = np.concatenate([curve, np.zeros(curve.size)])
        for level in sorted(thresholds):
            inverse = np.where(s >= level * s[0], 1.0 / s, 0.0)
            residue = vt.T @ (inverse * (u.T @ padded))
            if oscillation_index(residue[:, None])[0] < oi_limit:
                break
        residues.append(residue)
        levels.append(level)
    return np.array(residues).T, np.array(levels)


def test_vectorised_osvd_matches_a_per_voxel_reference_loop():
    rng = np.random.default_rng(11)
    cbv, cbf = rng.uniform(2.0, 6.0, 30), rng.uniform(15.0, 80.0, 30)
    tissue = tissue_delta_r2s(TIMES, gamma_variate_aif, cbv, cbf, r2_eff=1.0)
    tissue += rng.normal(0.0, 0.005 * tissue.max(), tissue.shape)
    aif = gamma_variate_aif(TIMES)
    result = osvd_residues(tissue, aif, 1.5)
    residues, levels = _reference_osvd_residues(tissue, aif, 1.5, DEFAULT_OI_LIMIT, DEFAULT_OSVD_THRESHOLDS)
    np.testing.assert_allclose(result.threshold, levels)
    np.testing.assert_allclose(result.residue, residues, rtol=1e-9, atol=1e-12 * np.abs(residues).max())
    # The flow is the peak between frames: never below the largest sample, and not far above it.
    assert np.all(result.flow >= residues.max(axis=0) * (1 - 1e-12))
    assert np.all(result.flow <= residues.max(axis=0) * 1.1)
    assert np.unique(result.threshold).size > 1  # the voxels did not all stop at the same threshold
    assert np.all(result.oscillation_index[result.threshold < max(DEFAULT_OSVD_THRESHOLDS)] < DEFAULT_OI_LIMIT)


def test_ssvd_uses_its_fixed_threshold_and_a_higher_one_smooths_more():
    tissue = tissue_delta_r2s(TIMES, gamma_variate_aif, np.array([4.0, 2.0]), np.array([60.0, 20.0]), r2_eff=1.0)
    aif = gamma_variate_aif(TIMES)
    loose = ssvd_residues(tissue, aif, 1.5, threshold=0.05)
    strict = ssvd_residues(tissue, aif, 1.5, threshold=0.5)
    np.testing.assert_array_equal(loose.threshold, [0.05, 0.05])
    assert loose.residue.shape == (TIMES.size, 2)
    assert np.all(strict.flow < loose.flow)
    assert np.all(strict.oscillation_index < loose.oscillation_index)


def test_maps_are_zero_outside_the_brain_mask_and_keep_the_spatial_shape():
    cbv = np.array([[4.0, 2.0, 0.0], [3.0, 0.0, 5.0]])
    cbf = np.array([[60.0, 20.0, 0.0], [30.0, 0.0, 50.0]])
    tissue = tissue_delta_r2s(TIMES, gamma_variate_aif, cbv, cbf, r2_eff=1.0)
    mask = cbv > 0
    maps = perfusion_maps(tissue, TIMES, mask, aif=gamma_variate_aif(TIMES))
    for values in (maps.cbf, maps.cbv, maps.mtt_s, maps.ttp_s, maps.tmax_s, maps.threshold):
        assert values.shape == mask.shape
        assert np.all(values[~mask] == 0.0)
    assert np.all(maps.cbf[mask] > 0)
    assert maps.aif_selection is None and maps.method == "osvd"
    np.testing.assert_array_equal(maps.aif, gamma_variate_aif(TIMES))


def test_uniform_frame_interval():
    assert uniform_frame_interval(TIMES) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="uniformly spaced"):
        uniform_frame_interval(np.array([0.0, 1.0, 2.0, 4.0]))


# --- Bad input --------------------------------------------------------------------------------------------


def _good_inputs():
    tissue = tissue_delta_r2s(TIMES, gamma_variate_aif, np.array([4.0, 2.0]), np.array([60.0, 20.0]), r2_eff=1.0)
    return tissue, np.ones(2, dtype=bool), gamma_variate_aif(TIMES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, m, a: (t[:, 0], m, a), "spatial axis"),
        (lambda t, m, a: (t, np.ones(3, dtype=bool), a), "brain_mask has shape"),
        (lambda t, m, a: (t, np.zeros(2, dtype=bool), a), "empty"),
        (lambda t, m, a: (t, m, a[:-1]), "aif"),
        (lambda t, m, a: (t, m, -a), "positive peak"),
        (lambda t, m, a: (np.where(np.arange(t.shape[0])[:, None] == 3, np.nan, t), m, a), "NaN"),
    ],
)
def test_perfusion_maps_rejects_bad_input(change, message):
    tissue, mask, aif = change(*_good_inputs())
    with pytest.raises(ValueError, match=message):
        perfusion_maps(tissue, TIMES, mask, aif=aif)


def test_perfusion_maps_rejects_bad_options_and_times():
    tissue, mask, aif = _good_inputs()
    irregular = TIMES.copy()
    irregular[30:] += 0.7
    with pytest.raises(ValueError, match="uniformly spaced"):
        perfusion_maps(tissue, irregular, mask, aif=aif)
    with pytest.raises(ValueError, match="method"):
        perfusion_maps(tissue, TIMES, mask, aif=aif, method="svd")
    with pytest.raises(ValueError, match="discretisation"):
        perfusion_maps(tissue, TIMES, mask, aif=aif, discretisation="simpson")
    with pytest.raises(ValueError, match="oi_limit"):
        perfusion_maps(tissue, TIMES, mask, aif=aif, oi_limit=0.0)
    with pytest.raises(ValueError, match="thresholds"):
        perfusion_maps(tissue, TIMES, mask, aif=aif, thresholds=(0.1, 1.5))
    with pytest.raises(ValueError, match="thresholds"):
        perfusion_maps(tissue, TIMES, mask, aif=aif, method="ssvd", ssvd_threshold=0.0)
    with pytest.raises(ValueError, match="dt_s"):
        osvd_residues(tissue, aif, dt_s=-1.5)
