"""DSC MRI signal to relaxation-rate change, and the time integrals built on it.

Conventions used throughout ``DSCPerfusionLib``:

* A DSC series is an array with time on the FIRST axis, shape ``(T, ...)``; ``...`` is any spatial
  shape (``(k, j, i)`` for a volume, ``(N,)`` for a list of voxels).
* Times are in seconds (``times_s``, shape ``(T,)``, strictly increasing); echo times are in seconds.
* Every function here returns ``float64``: the series are modest in size and later steps (leakage
  regression, normalisation) are least-squares fits that benefit from the extra precision.

The science follows DESIGN.md section 4 ("DSC -> nCBV", steps 1, 3 and 4).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from scipy.integrate import cumulative_trapezoid, trapezoid

# S(t)/S0 is clipped to [MIN_SIGNAL_RATIO, MAX_SIGNAL_RATIO] before the logarithm so a zero, negative or
# absurdly large sample (noise floor, masked background, corrupt frame) gives a finite deltaR2*.
# 1e-3 caps deltaR2* at ln(1000)/TE, about 230 1/s at TE = 30 ms: above any real first pass (arterial
# peaks are ~100 1/s), so genuine data is never clipped.
# Echo times a DSC acquisition plausibly has (ms): the range the Slicer module accepts and offers.
ECHO_TIME_MS_RANGE = (1.0, 200.0)
# Frames a DSC series may have (the module's baseline-window limits).
MAX_FRAMES = 9999
MIN_SIGNAL_RATIO = 1e-3
MAX_SIGNAL_RATIO = 1e3
# How the convolution of the AIF with a residue is discretised, for both CBF estimators (``deconvolution``,
# ``residue_fit``): the AIF linear between its samples, or each sample held for a frame (rectangle rule).
Discretisation = Literal["linear", "rectangular"]
DISCRETISATIONS = get_args(Discretisation)


def validate_times(times_s: np.ndarray, n_frames: int | None = None, name: str = "times_s") -> np.ndarray:
    """Return ``times_s`` (seconds) as a 1-D float64 array, checking it is finite and strictly increasing.

    ``n_frames``, if given, is the number of frames the times must describe.
    """
    times = np.asarray(times_s, dtype=np.float64)
    if times.ndim != 1 or times.size < 2:
        raise ValueError(
            f"{name} must be a 1-D array of at least 2 frame times in seconds, got shape {times.shape}."
        )
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"{name} must be strictly increasing.")
    if n_frames is not None and times.size != n_frames:
        raise ValueError(
            f"{name} has {times.size} entries but the series has {n_frames} frames (time is the first axis)."
        )
    return times


def validate_discretisation(discretisation: str) -> str:
    """``discretisation`` if it is one of DISCRETISATIONS; ValueError otherwise."""
    if discretisation not in DISCRETISATIONS:
        raise ValueError(f"discretisation must be one of {', '.join(DISCRETISATIONS)}, got {discretisation!r}.")
    return discretisation


def validate_tissue_and_aif(tissue: np.ndarray, aif: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue (T, N) and AIF (T,) as float64, checking shapes, finiteness and a positive AIF area."""
    curves = np.asarray(tissue, dtype=np.float64)
    arterial = np.asarray(aif, dtype=np.float64)
    if curves.ndim == 1:
        curves = curves[:, None]
    if curves.ndim != 2 or arterial.ndim != 1 or curves.shape[0] != arterial.size or arterial.size < 3:
        raise ValueError(
            f"tissue must be (T, N) and aif (T,) with the same T >= 3, got {curves.shape} and {arterial.shape}."
        )
    if not (np.all(np.isfinite(curves)) and np.all(np.isfinite(arterial))):
        raise ValueError("tissue and aif must not contain NaN or infinite values.")
    if arterial.max() <= 0 or arterial.sum() <= 0:
        raise ValueError("aif must have a positive peak and a positive area.")
    return curves, arterial


def validate_frame_interval(dt_s: float) -> float:
    """Frame interval as a positive finite float; ValueError otherwise."""
    dt = float(dt_s)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt_s must be a positive frame interval in seconds, got {dt_s}.")
    return dt


def _validate_series(series: np.ndarray, name: str) -> np.ndarray:
    """Return a time-first series as float64, checking it has a time axis and no NaN/inf."""
    values = np.asarray(series, dtype=np.float64)
    if values.ndim < 1 or values.shape[0] < 2:
        raise ValueError(f"{name} must have time as its first axis with at least 2 frames, got shape {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return values


def _validate_echo_time(te_s: float, name: str) -> float:
    """Return an echo time in seconds, checking it is finite and positive."""
    te = float(te_s)
    if not np.isfinite(te) or te <= 0:
        raise ValueError(f"{name} must be a positive echo time in seconds, got {te_s}.")
    if te > 1.0:
        # A TE of 30 instead of 0.030 would silently shrink deltaR2* a thousandfold.
        raise ValueError(f"{name} = {te_s} looks like milliseconds; give the echo time in seconds (e.g. 0.030).")
    return te


def _baseline_frames(baseline: slice | None, n_frames: int) -> np.ndarray:
    """Return the frame indices selected by the ``baseline`` slice, checking there is at least one."""
    if baseline is None:
        raise ValueError(
            "baseline must be given as a slice of pre-bolus frame indices (automatic detection is not available yet)."
        )
    if not isinstance(baseline, slice):
        raise ValueError(f"baseline must be a slice of frame indices, got {type(baseline).__name__}.")
    frames = np.arange(n_frames)[baseline]
    if frames.size == 0:
        raise ValueError(f"baseline {baseline} selects no frames of a {n_frames}-frame series.")
    return frames


def _log_signal_ratio(signal: np.ndarray, baseline: slice | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ln(S(t)/S0) (clipped, see MIN_SIGNAL_RATIO) and the mask of voxels with a usable S0 > 0."""
    frames = _baseline_frames(baseline, signal.shape[0])
    s0 = signal[frames].mean(axis=0)
    usable = np.isfinite(s0) & (s0 > 0)
    safe_s0 = np.where(usable, s0, 1.0)
    # In-place steps: a clinical series is ~0.5 M voxels x 60 frames, 240 MB per float64 copy.
    log_ratio = signal / safe_s0
    np.clip(log_ratio, MIN_SIGNAL_RATIO, MAX_SIGNAL_RATIO, out=log_ratio)
    np.log(log_ratio, out=log_ratio)
    log_ratio *= usable  # voxels without a baseline signal carry no information: zero for all t
    return log_ratio, usable


def log_signal_ratio_in_place(series: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Overwrite a floating-point (T, ...) series with ln(S(t)/S0); return the mask of voxels with S0 > 0.

    The memory-lean form of the first step of ``delta_r2s_from_signal`` for large float32 series: no copy
    is made. ``s0``: baseline signal with the spatial shape ``...``. Same guards: the ratio is clipped to
    [MIN_SIGNAL_RATIO, MAX_SIGNAL_RATIO], and voxels whose S0 is not positive become 0 at every frame.
    """
    if not isinstance(series, np.ndarray) or series.dtype.kind != "f" or series.ndim < 1:
        raise ValueError("series must be a floating-point numpy array with time as its first axis.")
    baseline = np.asarray(s0)
    if baseline.shape != series.shape[1:]:
        raise ValueError(f"s0 has shape {baseline.shape} but the series' spatial shape is {series.shape[1:]}.")
    usable = np.isfinite(baseline) & (baseline > 0)
    series /= np.where(usable, baseline, 1.0).astype(series.dtype)
    np.clip(series, MIN_SIGNAL_RATIO, MAX_SIGNAL_RATIO, out=series)
    np.log(series, out=series)
    if not usable.all():
        series *= usable
    return usable


def delta_r2s_from_signal(signal: np.ndarray, te_s: float, baseline: slice | None = None) -> np.ndarray:
    """Single-echo relaxation-rate change deltaR2*(t) = -ln(S(t)/S0) / TE, in 1/s (float64, shape of ``signal``).

    ``signal``: (T, ...) magnitude series. ``te_s``: echo time in seconds. ``baseline``: slice of
    pre-bolus frames whose mean is S0 (required for now). Voxels with S0 <= 0 give 0 for every frame;
    samples with S(t) <= 0 are clipped to MIN_SIGNAL_RATIO * S0, so the result is always finite.
    """
    values = _validate_series(signal, "signal")
    te = _validate_echo_time(te_s, "te_s")
    log_ratio, _ = _log_signal_ratio(values, baseline)
    log_ratio *= -1.0 / te
    return log_ratio


def delta_r2s_from_dual_echo(
    signal_te1: np.ndarray,
    signal_te2: np.ndarray,
    te1_s: float,
    te2_s: float,
    baseline: slice | None = None,
) -> np.ndarray:
    """Dual-echo deltaR2*(t) = ln((S1/S01) / (S2/S02)) / (TE2 - TE1), in 1/s (float64).

    The ratio of the two echoes cancels any change common to both (T1 shortening by leaked contrast,
    inflow), leaving only the T2* effect. Same baseline and guards as ``delta_r2s_from_signal``; a voxel
    is 0 throughout if either echo has S0 <= 0.
    """
    first = _validate_series(signal_te1, "signal_te1")
    second = _validate_series(signal_te2, "signal_te2")
    if first.shape != second.shape:
        raise ValueError(f"signal_te1 {first.shape} and signal_te2 {second.shape} must have the same shape.")
    te1 = _validate_echo_time(te1_s, "te1_s")
    te2 = _validate_echo_time(te2_s, "te2_s")
    if te2 <= te1:
        raise ValueError(f"te2_s ({te2_s}) must be longer than te1_s ({te1_s}).")
    log_first, usable_first = _log_signal_ratio(first, baseline)
    log_second, usable_second = _log_signal_ratio(second, baseline)
    log_first -= log_second
    log_first *= (usable_first & usable_second) / (te2 - te1)
    return log_first


def rcbv_trapezoid(delta_r2s: np.ndarray, times_s: np.ndarray, frames: slice | None = None) -> np.ndarray:
    """Relative CBV as the trapezoid integral of deltaR2*(t) over time in seconds (unitless, float64).

    ``delta_r2s``: (T, ...) in 1/s, usually leakage-corrected. ``frames``: optional slice of frames to
    integrate over (e.g. the first pass); default the whole series. Returns the spatial shape ``...``.
    """
    curves = _validate_series(delta_r2s, "delta_r2s")
    times = validate_times(times_s, curves.shape[0])
    if frames is not None:
        if not isinstance(frames, slice):
            raise ValueError(f"frames must be a slice of frame indices, got {type(frames).__name__}.")
        selected = np.arange(curves.shape[0])[frames]
        if selected.size < 2:
            raise ValueError(f"frames {frames} must select at least 2 frames to integrate over.")
        if np.any(np.diff(selected) <= 0):
            raise ValueError(f"frames {frames} must select frames in increasing order.")
        curves, times = curves[selected], times[selected]
    return trapezoid(curves, x=times, axis=0)


def cumulative_integral(curve: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Cumulative trapezoid integral over time in seconds, 0 at the first frame (float64, shape of ``curve``).

    For a deltaR2* curve in 1/s the result is unitless; this is the integral term of the
    Boxerman-Schmainda-Weisskoff leakage model, so the simulator and the fit must both use it.
    """
    curves = _validate_series(curve, "curve")
    times = validate_times(times_s, curves.shape[0])
    return cumulative_trapezoid(curves, x=times, axis=0, initial=0.0)
