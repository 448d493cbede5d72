"""DSC MRI simulator: known CBV/CBF (and leakage K2) in, a dynamic susceptibility-contrast series out.

Used by the synthetic-case generator (so nCBV has a ground truth) and by the tests of the perfusion
science. Model, per voxel (DESIGN.md section 4):

* arterial input C_a(t): gamma variate plus an optional dispersed recirculation bump (``gamma_variate_aif``);
* tissue concentration C_t(t) = f * (C_a conv R)(t) with f = CBF/6000 1/s, exponential residue
  R(t) = exp(-t/MTT) and MTT = 60*CBV/CBF s (central volume theorem), so that the integral of C_t equals
  (CBV/100) times the integral of C_a;
* vascular deltaR2*(t) = r2_eff * C_t(t) (``tissue_delta_r2s``);
* Boxerman-Schmainda-Weisskoff leakage: measured = vascular - K2 * cumulative integral of the
  non-enhancing-brain mean curve (``leaky_delta_r2s``);
* signal S(t) = S0 * exp(-TE * measured deltaR2*(t)), optionally with Rician noise (``add_rician_noise``).

Units: times and TE in seconds, CBV in ml/100 g, CBF in ml/100 g/min, K2 in 1/s, deltaR2* in 1/s.
Concentrations are in arbitrary "mM-like" units: only the product r2_eff * concentration is observable.
Arrays carry time on the FIRST axis, shape (T, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
from scipy.special import gammaln

from .signal import cumulative_integral, validate_times

AIF = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]

# Default first-pass arterial peak (concentration units, see module docstring); ~10 mM is a typical
# arterial peak for 0.1 mmol/kg gadolinium.
DEFAULT_AIF_PEAK = 10.0
# Effective tissue relaxivity, 1/s per concentration unit. Chosen so that with the default AIF grey matter
# (CBV 4, CBF 60) peaks at 22 1/s: a 48 % signal drop at TE 30 ms, as in clinical 1.5-3 T DSC.
# White matter (CBV 2, CBF 20) then peaks at 9 1/s (24 % drop).
DEFAULT_R2_EFF = 86.0
# Fine internal time step (s) on which a callable AIF is sampled for the convolution. Between samples the
# AIF is taken as linear and the exponential-residue convolution is integrated exactly, so 0.05 s is far
# finer than needed for a gamma variate with beta ~1.5 s (error < 1e-4 of the peak).
DEFAULT_FINE_DT_S = 0.05
# Voxels processed per block in the convolution: bounds memory at ~(T + substeps) * 65536 * 8 bytes.
_VOXEL_BLOCK = 65536


def gamma_variate_aif(
    times_s: np.ndarray,
    arrival_s: float = 15.0,
    peak: float = DEFAULT_AIF_PEAK,
    alpha: float = 3.0,
    beta: float = 1.5,
    recirculation: float = 0.1,
    *,
    recirculation_delay_s: float = 10.0,
    recirculation_dispersion: float = 2.0,
) -> np.ndarray:
    """Arterial concentration C_a(t) (concentration units) at ``times_s`` (seconds), 0 before ``arrival_s``.

    First pass: ``peak * (x/(alpha*beta))**alpha * exp(alpha - x/beta)`` with x = t - arrival_s, which
    peaks at ``peak`` when x = alpha*beta (4.5 s after arrival by default). ``recirculation`` is the area
    of a second, delayed (``recirculation_delay_s`` after arrival) and broader (beta multiplied by
    ``recirculation_dispersion``) gamma variate as a fraction of the first-pass area; 0 disables it.
    Accepts times of any shape (not only increasing) so it can be sampled on any grid.
    """
    times = np.asarray(times_s, dtype=np.float64)
    if not np.all(np.isfinite(times)):
        raise ValueError("times_s contains NaN or infinite values.")
    for name, value in (("arrival_s", arrival_s), ("recirculation_delay_s", recirculation_delay_s)):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be a finite time in seconds, got {value}.")
    for name, value in (("alpha", alpha), ("beta", beta), ("recirculation_dispersion", recirculation_dispersion)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive, got {value}.")
    for name, value in (("peak", peak), ("recirculation", recirculation)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be zero or positive, got {value}.")
    first_pass = _unit_peak_gamma_variate(times - arrival_s, alpha, beta)
    recirculation_beta = beta * recirculation_dispersion
    # The area of a unit-peak gamma variate is proportional to beta, so scaling the bump's peak by
    # beta/recirculation_beta makes `recirculation` an area fraction.
    bump = _unit_peak_gamma_variate(times - arrival_s - recirculation_delay_s, alpha, recirculation_beta)
    return peak * (first_pass + recirculation * (beta / recirculation_beta) * bump)


def _unit_peak_gamma_variate(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate of time since onset ``x`` (s), normalised to a maximum of 1 at x = alpha*beta; 0 for x <= 0."""
    positive = np.maximum(x, 0.0) / (alpha * beta)
    # Log form avoids 0**alpha warnings and overflow far in the tail.
    with np.errstate(divide="ignore"):
        log_value = alpha * (np.log(positive) + 1.0 - positive)
    return np.where(x > 0, np.exp(log_value), 0.0)


def gamma_variate_area(peak: float = DEFAULT_AIF_PEAK, alpha: float = 3.0, beta: float = 1.5) -> float:
    """Area (concentration units x s) under the first pass of ``gamma_variate_aif`` with these parameters."""
    # Integral of (x/(a b))^a exp(a - x/b) dx = b * exp(a) * a^-a * Gamma(a + 1).
    return float(peak * beta * np.exp(alpha - alpha * np.log(alpha) + gammaln(alpha + 1.0)))


def _validate_perfusion_maps(cbv: np.ndarray, cbf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast CBV (ml/100 g) and CBF (ml/100 g/min) to one spatial shape, checking finite and >= 0."""
    for name, values in (("cbv", cbv), ("cbf", cbf)):
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values.")
        if np.any(array < 0):
            raise ValueError(f"{name} must be zero or positive everywhere.")
    try:
        cbv_b, cbf_b = np.broadcast_arrays(np.asarray(cbv, dtype=np.float64), np.asarray(cbf, dtype=np.float64))
    except ValueError:
        raise ValueError(
            f"cbv {np.shape(cbv)} and cbf {np.shape(cbf)} must have the same (or broadcastable) spatial shape."
        ) from None
    return cbv_b, cbf_b


def _fine_aif_samples(aif: AIF, times: np.ndarray, fine_dt_s: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the AIF at the frame times and, per frame interval, its samples on a fine uniform sub-grid.

    An array AIF (given at the frame times) is linear between frames, so one sub-step per interval is
    already exact; a callable is sampled every <= ``fine_dt_s`` seconds.
    """
    if callable(aif):
        at_frames = _checked_aif_values(aif(times), times.shape, "aif(times_s)")
        substeps = np.maximum(1, np.ceil(np.diff(times) / fine_dt_s - 1e-9)).astype(int)
        per_interval = []
        for start, stop, steps in zip(times[:-1], times[1:], substeps):
            grid = np.linspace(start, stop, steps + 1)
            per_interval.append(_checked_aif_values(aif(grid), grid.shape, "aif(fine time grid)"))
        return at_frames, per_interval
    at_frames = _checked_aif_values(aif, times.shape, "aif")
    return at_frames, [at_frames[k : k + 2] for k in range(times.size - 1)]


def _checked_aif_values(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Return AIF values as float64, checking their shape and that they are finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one value per time point), got {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def _interval_weights(rate: np.ndarray, length_s: float, substeps: int) -> np.ndarray:
    """Weights (voxels, substeps + 1) mapping AIF sub-samples to the convolution gained over one interval.

    For an AIF linear between sub-samples a_j (spacing h = length_s/substeps) and decay ``rate`` = 1/MTT
    (1/s), integral_{t_k}^{t_k+1} a(tau) exp(-rate (t_k+1 - tau)) dtau = sum_j w_j a_j exactly.
    """
    h = length_s / substeps
    u = rate * h
    small = u < 1e-2
    safe_u = np.where(small, 1.0, u)
    # g0 = (1 - e^-u)/u and g1 = (1 - e^-u (1 + u))/u^2; series for small u where the closed form cancels.
    g0 = np.where(small, 1.0 - u / 2.0 + u**2 / 6.0 - u**3 / 24.0, -np.expm1(-safe_u) / safe_u)
    g1 = np.where(
        small,
        0.5 - u / 3.0 + u**2 / 8.0 - u**3 / 30.0,
        (1.0 - np.exp(-safe_u) * (1.0 + safe_u)) / safe_u**2,
    )
    weight_left = (h * g1)[:, None]  # weight of a_j in sub-step j -> j+1
    weight_right = (h * (g0 - g1))[:, None]  # weight of a_j+1 in the same sub-step
    # Sub-step j's contribution decays for the remaining (substeps - 1 - j) sub-steps.
    decay = np.exp(-np.outer(u, np.arange(substeps - 1, -1, -1, dtype=np.float64)))
    weights = np.zeros((rate.size, substeps + 1))
    weights[:, :-1] += weight_left * decay
    weights[:, 1:] += weight_right * decay
    return weights


def tissue_delta_r2s(
    times_s: np.ndarray,
    aif: AIF,
    cbv: np.ndarray,
    cbf: np.ndarray,
    r2_eff: float = DEFAULT_R2_EFF,
    *,
    fine_dt_s: float = DEFAULT_FINE_DT_S,
    dtype: type = np.float64,
) -> np.ndarray:
    """Vascular deltaR2*(t) in 1/s, shape (T, *cbv.shape), for an exponential-residue tissue model.

    C_t(t) = (CBF/6000) * integral_{t0}^{t} C_a(tau) exp(-(t - tau)/MTT) dtau with MTT = 60*CBV/CBF s,
    deltaR2* = r2_eff * C_t. ``aif`` is either an array (T,) at ``times_s`` (linear in between) or a
    callable of time in seconds (e.g. ``functools.partial(gamma_variate_aif, arrival_s=12)``), sampled
    every <= ``fine_dt_s`` s. Tissue is empty at the first frame. ``cbv`` (ml/100 g) and ``cbf``
    (ml/100 g/min) broadcast together; voxels with CBV == 0 or CBF == 0 give a zero curve. The
    convolution is integrated exactly for a piecewise-linear AIF (a recursive filter along time,
    vectorised over voxels in blocks), so memory stays bounded for any number of voxels.
    """
    times = validate_times(times_s)
    if not (np.isfinite(r2_eff) and r2_eff >= 0):
        raise ValueError(f"r2_eff must be zero or positive (1/s per concentration unit), got {r2_eff}.")
    if not (np.isfinite(fine_dt_s) and fine_dt_s > 0):
        raise ValueError(f"fine_dt_s must be a positive time step in seconds, got {fine_dt_s}.")
    cbv_b, cbf_b = _validate_perfusion_maps(cbv, cbf)
    _, per_interval = _fine_aif_samples(aif, times, fine_dt_s)

    spatial_shape = cbv_b.shape
    cbv_flat, cbf_flat = cbv_b.reshape(-1), cbf_b.reshape(-1)
    output = np.zeros((times.size, cbv_flat.size), dtype=dtype)
    for start in range(0, cbv_flat.size, _VOXEL_BLOCK):
        block = slice(start, start + _VOXEL_BLOCK)
        output[:, block] = _tissue_block(times, per_interval, cbv_flat[block], cbf_flat[block], r2_eff)
    return output.reshape((times.size,) + spatial_shape)


def _tissue_block(
    times: np.ndarray, per_interval: list[np.ndarray], cbv: np.ndarray, cbf: np.ndarray, r2_eff: float
) -> np.ndarray:
    """deltaR2* (T, voxels) for one block of voxels (see ``tissue_delta_r2s``)."""
    perfused = (cbv > 0) & (cbf > 0)
    flow_per_s = np.where(perfused, cbf / 6000.0, 0.0)
    # rate = 1/MTT = CBF/(60 CBV); unperfused voxels get rate 0 (harmless, their flow is 0).
    rate = np.where(perfused, cbf / (60.0 * np.where(perfused, cbv, 1.0)), 0.0)

    lengths = np.diff(times)
    gained = np.empty((lengths.size, cbv.size))
    # Intervals of equal length and sub-step count share weights: one group for a regular series.
    keys = [(round(float(length), 9), samples.size - 1) for length, samples in zip(lengths, per_interval)]
    for key in set(keys):
        members = [k for k, other in enumerate(keys) if other == key]
        weights = _interval_weights(rate, key[0], key[1])
        samples = np.stack([per_interval[k] for k in members], axis=1)  # (substeps + 1, members)
        gained[members] = (weights @ samples).T

    curves = np.empty((times.size, cbv.size))
    curves[0] = 0.0
    decays = {key[0]: np.exp(-rate * key[0]) for key in set(keys)}
    for k, key in enumerate(keys):
        curves[k + 1] = curves[k] * decays[key[0]] + gained[k]
    curves *= r2_eff * flow_per_s
    return curves


# Arrival delays are simulated in steps of this size (s): one convolution per distinct delay, and a
# partial-volume boundary between territories would otherwise ask for one per voxel.
DELAY_STEP_S = 0.1


def delayed_tissue_delta_r2s(times_s: np.ndarray, aif: AIF, cbv: np.ndarray, cbf: np.ndarray,
                             arrival_delay_s: np.ndarray, r2_eff: float = DEFAULT_R2_EFF, *,
                             fine_dt_s: float = DEFAULT_FINE_DT_S) -> np.ndarray:
    """``tissue_delta_r2s`` (float32) with the AIF reaching each voxel ``arrival_delay_s`` later (s, >= 0,
    rounded to ``DELAY_STEP_S``; broadcast with ``cbv`` and ``cbf``). An array AIF is shifted by linear
    interpolation and is 0 before its first frame."""
    times = validate_times(times_s)
    cbv_b, cbf_b = _validate_perfusion_maps(cbv, cbf)
    delays = np.asarray(arrival_delay_s, dtype=np.float64)
    if not np.all(np.isfinite(delays)) or np.any(delays < 0):
        raise ValueError("arrival_delay_s must be finite and zero or positive (seconds).")
    try:
        cbv_b, cbf_b, delays = np.broadcast_arrays(cbv_b, cbf_b, delays)
    except ValueError:
        raise ValueError(f"arrival_delay_s {delays.shape} does not fit the perfusion maps {cbv_b.shape}.") from None
    steps = np.rint(delays / DELAY_STEP_S).astype(int)
    output = np.zeros((times.size,) + cbv_b.shape, np.float32)
    for step in np.unique(steps):
        voxels = steps == step
        shifted = _delayed_aif(aif, times, step * DELAY_STEP_S)
        output[:, voxels] = tissue_delta_r2s(times, shifted, cbv_b[voxels], cbf_b[voxels], r2_eff,
                                             fine_dt_s=fine_dt_s, dtype=np.float32)
    return output


def _delayed_aif(aif: AIF, times: np.ndarray, delay_s: float) -> AIF:
    if delay_s == 0:
        return aif
    if callable(aif):
        return lambda t: aif(np.asarray(t, dtype=np.float64) - delay_s)
    return np.interp(times - delay_s, times, _checked_aif_values(aif, times.shape, "aif"), left=0.0)


def leaky_delta_r2s(vascular: np.ndarray, times_s: np.ndarray, k2: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Measured deltaR2*(t) = vascular(t) - K2 * integral_0^t reference (Boxerman-Schmainda-Weisskoff), 1/s.

    ``vascular``: (T, ...) in 1/s. ``k2``: leakage constant in 1/s, scalar or spatial shape ``...``;
    K2 > 0 is T1-dominant leakage (the curve falls below zero, the signal rises above baseline), K2 < 0
    T2*-dominant. ``reference``: (T,) mean vascular curve of non-enhancing brain; its integral is the
    trapezoid ``cumulative_integral``, exactly the regressor of the BSW fit. Keeps ``vascular``'s float dtype.
    """
    curves = np.asarray(vascular)
    if curves.ndim < 1 or not np.issubdtype(curves.dtype, np.floating):
        curves = np.asarray(vascular, dtype=np.float64)
    if not np.all(np.isfinite(curves)):
        raise ValueError("vascular contains NaN or infinite values.")
    times = validate_times(times_s, curves.shape[0])
    reference_curve = np.asarray(reference, dtype=np.float64)
    if reference_curve.shape != times.shape:
        raise ValueError(f"reference must have shape {times.shape} (one value per frame), got {reference_curve.shape}.")
    leakage = _validated_k2(k2, curves.shape[1:])
    integral = cumulative_integral(reference_curve, times)
    measured = np.empty_like(curves)
    # A loop over frames keeps temporaries at one frame's size.
    for t in range(times.size):
        measured[t] = curves[t] - leakage * integral[t]
    return measured


def _validated_k2(k2: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Return K2 (1/s) broadcast to ``spatial_shape``, checking it is finite and fits that shape."""
    values = np.asarray(k2, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("k2 contains NaN or infinite values.")
    try:
        return np.broadcast_to(values, spatial_shape)
    except ValueError:
        raise ValueError(f"k2 of shape {values.shape} does not fit the spatial shape {spatial_shape}.") from None


@dataclass
class DSCSimulation:
    """Result of ``simulate_dsc``. Time is the first axis; deltaR2* in 1/s.

    signal: (T, ...) float32 magnitude S0*exp(-TE*measured). vascular_delta_r2s: (T, ...) float32 curve
    without leakage. measured_delta_r2s: (T, ...) float32 curve with leakage. reference: (T,) float64
    mean vascular curve of non-enhancing brain (the BSW regressor). aif: (T,) float64 arterial
    concentration at the frame times. times_s: (T,) s. te_s: echo time in s.
    """

    signal: np.ndarray
    vascular_delta_r2s: np.ndarray
    measured_delta_r2s: np.ndarray
    reference: np.ndarray
    aif: np.ndarray
    times_s: np.ndarray
    te_s: float


def simulate_dsc(
    times_s: np.ndarray,
    cbv: np.ndarray,
    cbf: np.ndarray,
    k2: np.ndarray,
    s0: np.ndarray,
    te_s: float,
    brain_mask: np.ndarray | None = None,
    aif: AIF | None = None,
    *,
    r2_eff: float = DEFAULT_R2_EFF,
    fine_dt_s: float = DEFAULT_FINE_DT_S,
    arrival_delay_s: np.ndarray | None = None,
) -> DSCSimulation:
    """Simulate a noise-free single-echo DSC series from perfusion maps (add noise with ``add_rician_noise``).

    ``cbv`` (ml/100 g), ``cbf`` (ml/100 g/min), ``k2`` (1/s) and ``s0`` (baseline signal, >= 0) are
    scalars or spatial arrays broadcastable to one shape. ``te_s``: echo time in seconds. The reference
    curve is the mean vascular deltaR2* over ``brain_mask & (k2 == 0)`` (default mask: CBV > 0).
    ``aif``: array (T,) or callable of time; default ``gamma_variate_aif`` (arrival 15 s).
    ``arrival_delay_s``: optional map (s, >= 0) of how much later than the AIF's the bolus reaches each voxel
    (``delayed_tissue_delta_r2s``); the reference curve then mixes early and late tissue, as a brain's does.
    """
    times = validate_times(times_s)
    te = float(te_s)
    if not (np.isfinite(te) and 0 < te <= 1.0):
        raise ValueError(f"te_s must be a positive echo time in seconds (e.g. 0.030), got {te_s}.")
    arterial = gamma_variate_aif if aif is None else aif
    if arrival_delay_s is None:
        vascular = tissue_delta_r2s(times, arterial, cbv, cbf, r2_eff, fine_dt_s=fine_dt_s, dtype=np.float32)
    else:
        vascular = delayed_tissue_delta_r2s(times, arterial, cbv, cbf, arrival_delay_s, r2_eff, fine_dt_s=fine_dt_s)
    spatial_shape = vascular.shape[1:]
    leakage = _validated_k2(k2, spatial_shape)
    baseline_signal = _validated_s0(s0, spatial_shape)
    reference_mask = _reference_mask(brain_mask, np.broadcast_to(np.asarray(cbv), spatial_shape), leakage)

    reference = np.array([frame[reference_mask].mean(dtype=np.float64) for frame in vascular])
    measured = leaky_delta_r2s(vascular, times, leakage, reference)
    signal = np.empty(vascular.shape, dtype=np.float32)
    for t in range(times.size):
        signal[t] = baseline_signal * np.exp(-te * measured[t].astype(np.float64))
    aif_at_frames = _checked_aif_values(arterial(times) if callable(arterial) else arterial, times.shape, "aif")
    return DSCSimulation(signal, vascular, measured, reference, aif_at_frames, times, te)


def _validated_s0(s0: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Return the baseline signal broadcast to ``spatial_shape``, checking it is finite and >= 0."""
    values = np.asarray(s0, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("s0 must be finite and zero or positive everywhere.")
    try:
        return np.broadcast_to(values, spatial_shape)
    except ValueError:
        raise ValueError(f"s0 of shape {values.shape} does not fit the spatial shape {spatial_shape}.") from None


def _reference_mask(brain_mask: np.ndarray | None, cbv: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """Voxels that define the reference curve: brain (default CBV > 0) without leakage; at least one."""
    if brain_mask is None:
        brain = cbv > 0
    else:
        brain = np.asarray(brain_mask)
        if brain.shape != cbv.shape:
            raise ValueError(f"brain_mask has shape {brain.shape} but the perfusion maps have shape {cbv.shape}.")
        brain = brain.astype(bool)
    mask = brain & (k2 == 0)
    if not mask.any():
        raise ValueError("brain_mask contains no voxel with k2 == 0, so there is no non-enhancing reference tissue.")
    return mask


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: sqrt((S + n1)^2 + n2^2), n1, n2 ~ N(0, sigma^2).

    ``sigma`` is in signal units (scalar or broadcastable to ``image``). Returns float32 for a float32
    image, otherwise float64. Pure noise (S = 0) has mean sigma*sqrt(pi/2) (Rayleigh).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)).")
    values = np.asarray(image)
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    values = values.astype(dtype, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError("image contains NaN or infinite values.")
    noise_level = np.asarray(sigma, dtype=dtype)
    if not np.all(np.isfinite(noise_level)) or np.any(noise_level < 0):
        raise ValueError(f"sigma must be finite and zero or positive, got {sigma}.")
    real = values + noise_level * rng.standard_normal(values.shape, dtype=dtype)
    imaginary = noise_level * rng.standard_normal(values.shape, dtype=dtype)
    return np.hypot(real, imaginary)


# --- a digital reference object for transit times and arrival delays ------------------------------------


@dataclass(frozen=True)
class DROTissue:
    """One tissue of ``transit_time_dro``: CBV (ml/100 g), CBF (ml/100 g/min), arrival delay (s) after the
    brain's, leakage K2 (1/s) and its share of the brain (weight in the whole-brain reference curve)."""

    name: str
    cbv: float
    cbf: float
    delay_s: float = 0.0
    k2: float = 0.0
    share: float = 0.1

    @property
    def mtt_s(self) -> float:
        return 60.0 * self.cbv / self.cbf


# MTTs of 3.5-7 s around a reference of ~4.6 s, and three tissues whose bolus arrives 3 s late (one of them
# leaking, two not): the cases where BSW mistakes transit time and delay for leakage (issue 13 item 1).
TRANSIT_DRO_TISSUES = (
    DROTissue("grey matter", 4.0, 60.0, share=0.32),
    DROTissue("white matter", 2.0, 22.0, share=0.38),
    DROTissue("fast cortex", 3.5, 60.0, share=0.10),
    DROTissue("slow white matter", 2.1, 18.0, share=0.10),
    DROTissue("enhancing tumour", 7.0, 85.0, k2=0.015, share=0.02),
    DROTissue("late grey matter", 4.0, 60.0, delay_s=3.0, share=0.04),
    DROTissue("late white matter", 2.0, 22.0, delay_s=3.0, share=0.03),
    DROTissue("late enhancing tumour", 7.0, 85.0, delay_s=3.0, k2=0.015, share=0.01),
)


@dataclass
class TransitDRO:
    """Result of ``transit_time_dro``; curves (T, tissues) in 1/s, one column per tissue.

    truth_area: integral (trapezoid, s) of each tissue's own vascular curve over the series, 1/s x s: the
    value a perfect leakage correction gives, free of discretisation and of the nominal-CBV convention.
    reference: (T,) share-weighted mean vascular curve of the non-leaking tissues (the BSW regressor).
    """

    tissues: tuple[DROTissue, ...]
    times_s: np.ndarray
    vascular: np.ndarray
    measured: np.ndarray
    reference: np.ndarray
    truth_area: np.ndarray

    def index(self, name: str) -> int:
        return [tissue.name for tissue in self.tissues].index(name)


def transit_time_dro(times_s: np.ndarray, *, leakage: bool = True,
                     tissues: tuple[DROTissue, ...] = TRANSIT_DRO_TISSUES, arrival_s: float = 15.0) -> TransitDRO:
    """Noise-free deltaR2* of tissues with unequal MTTs and arrival delays (``TRANSIT_DRO_TISSUES``).

    Each tissue sees the default gamma-variate AIF arriving at ``arrival_s + delay_s``. ``leakage=False``
    sets every K2 to 0 (a brain without leakage). Curves are columns, so the DRO is cheap enough for tests;
    tile them into an image to run the whole pipeline.
    """
    times = validate_times(times_s)
    if not tissues:
        raise ValueError("tissues must name at least one tissue.")
    vascular = np.column_stack([
        tissue_delta_r2s(times, lambda t, delay=tissue.delay_s: gamma_variate_aif(t, arrival_s + delay),
                         tissue.cbv, tissue.cbf) for tissue in tissues])
    k2 = np.array([tissue.k2 if leakage else 0.0 for tissue in tissues])
    shares = np.array([tissue.share for tissue in tissues]) * (k2 == 0)
    if not shares.any():
        raise ValueError("every DRO tissue leaks, so there is no non-enhancing reference tissue.")
    reference = vascular @ (shares / shares.sum())
    measured = leaky_delta_r2s(vascular, times, k2, reference)
    truth = np.trapezoid(vascular, times, axis=0)
    return TransitDRO(tuple(tissues), times, vascular, measured, reference, truth)
