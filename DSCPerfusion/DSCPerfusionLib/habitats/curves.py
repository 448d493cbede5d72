"""Voxel time-signal curves on one fixed time axis, and Yun's four curve parameters (Yun et al. 2023, AJNR).

Normalisation (Yun: curves "rescaled by the mean white-matter signal"): every voxel curve is divided by the
white-matter level, the median over Yun's baseline frames 3-9 of the mean white-matter curve. White matter's
baseline is therefore 1, and every other tissue's baseline, drop and recovery read as multiples of it.

Time axis: the autoencoder and the k-means centres need curves of one length on one time axis, whatever the
repetition time or frame count of the series. Each curve is resampled (linear interpolation) onto
``CURVE_POINTS`` = 60 points ``CURVE_STEP_S`` = 1.5 s apart, shifted so that the bolus arrival (detected on
the mean white-matter curve, ``baseline.detect_bolus_arrival``, or given) falls on point ``ARRIVAL_INDEX``.
Before the first frame and after the last the curve is continued by its end value (edge padding): a
pre-bolus baseline, or a late, nearly flat tail; at the start the padding (and the points that would fall on
them) take the first frame after the two steady-state frames (``baseline.DEFAULT_SKIP_FRAMES``), which are brighter
than the baseline in most acquisitions. ``ARRIVAL_INDEX`` = 11 is where the detection puts the
bolus of this project's 60-frame, 1.5 s phantom (AIF arriving at 15 s), so such a series is resampled onto
its own frames and comes back unchanged (but for the two steady-state frames); it also leaves Yun's baseline
frames 3-9 (0-based 2..8) before the bolus. The returned times are those of the fixed axis, 0 to 88.5 s.

Parameters (``curve_parameters``, on normalised curves of the fixed axis; 1-based frame numbers as in Yun):

* baseline S0: median of frames 3-9 (``features.BASELINE_FRAMES``);
* drop: S0 - Smin, Smin the minimum of the first pass (from the end of the baseline frames to the start of
  the post-contrast window, ``features.curve_features``);
* drop speed: drop / (t_min - t_onset), t_onset the first frame after the baseline frames whose decrease
  S0 - S(t) exceeds 5 % of the drop (Yun: "from the first frame with > 5 % of the maximum decrease"),
  floored at one step (per second, in white-matter units);
* recovery: (S1 - Smin) / (S0 - Smin), S1 the mean of frames 30-50 (a fraction, 1 = back to baseline).

Curves without a drop (drop <= 0) get NaN drop speed and recovery, as in ``features``. Yun min-max scales
the curves first; a scaling shared by all curves is a monotone linear map that changes no comparison with the
reference tissues, so the parameters are given here in white-matter units, which can be read.
"""

from __future__ import annotations

import numpy as np

from ..baseline import DEFAULT_SKIP_FRAMES as SKIP_FRAMES
from ..baseline import detect_bolus_arrival
from ..features import BASELINE_FRAMES, curve_features, post_contrast_frames

CURVE_POINTS = 60
CURVE_STEP_S = 1.5
ARRIVAL_INDEX = 11
MIN_FRAMES = 20
ONSET_FRACTION = 0.05  # Yun: onset = first frame with more than 5 % of the maximum decrease
PARAMETER_NAMES = ("baseline", "drop", "drop_speed", "recovery")


def curve_times() -> np.ndarray:
    """The fixed time axis of every normalised curve (s): ``CURVE_POINTS`` points ``CURVE_STEP_S`` apart from 0."""
    return np.arange(CURVE_POINTS, dtype=np.float64) * CURVE_STEP_S


def checked_series(signal: np.ndarray, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DSC series (T, K, J, I) and its times as float64, refused in one sentence when unusable."""
    if signal is None:
        raise ValueError("No DSC series was given; perfusion habitats need the DSC time series.")
    series = np.asarray(signal)
    if series.dtype.kind not in "iuf" or series.ndim != 4:
        raise ValueError(f"The DSC series must be a numeric 4-D array (T, K, J, I), got a {series.ndim}-D "
                         f"{series.dtype} array.")
    if series.shape[0] < MIN_FRAMES:
        raise ValueError(f"The DSC series has {series.shape[0]} frames; habitats need at least {MIN_FRAMES}.")
    times = np.asarray(times_s, dtype=np.float64)
    if times.shape != (series.shape[0],) or not np.all(np.isfinite(times)):
        raise ValueError(f"The frame times must be {series.shape[0]} finite values in seconds, one per DSC frame.")
    if np.any(np.diff(times) <= 0):
        raise ValueError("The frame times of the DSC series are not strictly increasing.")
    return series, times


def checked_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``mask`` as bool, refused in one sentence when it does not match the series' spatial shape."""
    if mask is None:
        raise ValueError(f"The {name} mask is missing.")
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise ValueError(f"The {name} mask has shape {array.shape} but the DSC series' spatial shape is "
                         f"{tuple(shape)}.")
    return array != 0


def voxel_curves(series: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """The raw curves (T, N) float64 of the voxels of ``mask``, checked finite and non-negative."""
    curves = series[:, mask].astype(np.float64)
    if not np.all(np.isfinite(curves)):
        raise ValueError(f"The DSC signal has NaN or infinite values inside the {name}.")
    if np.any(curves < 0):
        raise ValueError(f"The DSC signal has negative values inside the {name}; a magnitude series is needed.")
    return curves


def white_matter_level(white_curves: np.ndarray, times: np.ndarray, arrival_time_s: float) -> float:
    """Median over Yun's baseline frames of the mean white-matter curve (T, N) on the fixed axis: the divisor.

    Taken after resampling, so that the frames are pre-bolus whatever the series' repetition time.
    """
    mean = resample_curves(white_curves.mean(axis=1)[:, None], times, arrival_time_s)[0]
    level = float(np.median(mean[BASELINE_FRAMES]))
    if not level > 0:
        raise ValueError("The white-matter baseline signal is not positive, so the curves cannot be normalised.")
    return level


def resample_curves(curves: np.ndarray, times: np.ndarray, arrival_time_s: float) -> np.ndarray:
    """Curves (T, N) -> (N, CURVE_POINTS) on the fixed axis, the arrival on ``ARRIVAL_INDEX``, edge-padded.

    Padding before the series starts from the first frame after the steady-state frames (``SKIP_FRAMES``), which
    are brighter than the baseline in most acquisitions.
    """
    targets = arrival_time_s + (np.arange(CURVE_POINTS) - ARRIVAL_INDEX) * CURVE_STEP_S
    position = np.interp(targets, times, np.arange(times.size, dtype=np.float64))
    first_usable = min(SKIP_FRAMES, int(np.searchsorted(times, arrival_time_s)))
    position = np.maximum(position, first_usable)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, times.size - 1)
    weight = (position - lower)[:, None]
    # Interpolating frame indices once serves every voxel: two gathers and a blend, no per-voxel np.interp.
    return ((1.0 - weight) * curves[lower] + weight * curves[upper]).T


def normalised_curves(
    signal: np.ndarray,
    times_s: np.ndarray,
    mask: np.ndarray,
    white_matter_mask: np.ndarray,
    arrival_frame: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Curves of the voxels of ``mask`` divided by the white-matter level, on the fixed 60-point axis.

    ``signal``: raw DSC magnitude (T, K, J, I); ``times_s``: (T,) s; ``arrival_frame``: 0-based bolus arrival
    (default: detected on the mean white-matter curve). Returns (curves (N, CURVE_POINTS) float32 in
    ``np.flatnonzero(mask)`` order, times (CURVE_POINTS,) s). Rules: module docstring.
    """
    series, times = checked_series(signal, times_s)
    region = checked_mask(mask, series.shape[1:], "lesion region")
    white = checked_mask(white_matter_mask, series.shape[1:], "white-matter")
    if not region.any():
        raise ValueError("The mask of the curves to normalise is empty.")
    if not white.any():
        raise ValueError("The white-matter mask is empty, so the curves cannot be normalised.")
    white_curves = voxel_curves(series, white, "white matter")
    arrival = arrival_frame_of(white_curves.mean(axis=1)) if arrival_frame is None else int(arrival_frame)
    if not 0 <= arrival < times.size:
        raise ValueError(f"The bolus arrival frame {arrival} is outside the {times.size}-frame series.")
    level = white_matter_level(white_curves, times, times[arrival])
    curves = resample_curves(voxel_curves(series, region, "mask") / level, times, times[arrival])
    return curves.astype(np.float32), curve_times()


def arrival_frame_of(mean_signal: np.ndarray) -> int:
    """0-based bolus arrival on a mean signal curve (``baseline.detect_bolus_arrival``), refused if none."""
    try:
        return detect_bolus_arrival(mean_signal)
    except ValueError:
        raise ValueError("No bolus is seen in the white-matter signal: the series does not look like a DSC "
                         "first pass.") from None


def curve_parameters(curves: np.ndarray, times_s: np.ndarray) -> dict[str, np.ndarray]:
    """Yun's baseline, drop, drop_speed (per s) and recovery (fraction) of curves (N, P) on the axis ``times_s``.

    Returns float64 arrays (N,). ``features.curve_features`` gives S0, the drop, Smin's time and the recovery;
    the drop speed is measured here from each curve's own onset (module docstring).
    """
    values = np.asarray(curves, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    times = np.asarray(times_s, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != times.size or times.size < MIN_FRAMES:
        raise ValueError(f"curves must be (N, {times.size}) on a time axis of at least {MIN_FRAMES} points, got "
                         f"shape {np.shape(curves)}.")
    first_pass_start = BASELINE_FRAMES.stop
    features = curve_features(values.T, times, first_pass_start)
    s0, drop = features["s0"].astype(np.float64), features["drop_depth"].astype(np.float64)
    # The same first-pass window as curve_features, as a frame index (its time_of_minimum_s is float32).
    post_start = post_contrast_frames(times.size).start
    minimum_frame = first_pass_start + np.argmin(values[:, first_pass_start:post_start], axis=1)
    frames = np.arange(times.size)[None]
    decrease = s0[:, None] - values
    started = (decrease > ONSET_FRACTION * drop[:, None]) & (frames >= first_pass_start)
    started &= frames <= minimum_frame[:, None]
    onset = np.where(started.any(axis=1), np.argmax(started, axis=1), minimum_frame)
    step = float(np.median(np.diff(times)))
    elapsed = np.maximum(times[minimum_frame] - times[onset], step)
    dropped = drop > 0
    speed = np.where(dropped, drop / elapsed, np.nan)
    recovery = features["percentage_recovery"].astype(np.float64) / 100.0
    return {"baseline": s0, "drop": drop, "drop_speed": speed, "recovery": recovery}


def mean_curve_parameters(curves: np.ndarray, times_s: np.ndarray) -> dict[str, float]:
    """The four parameters of the mean of curves (N, P): averaging first keeps noise out of the minimum."""
    mean = np.asarray(curves, dtype=np.float64).mean(axis=0)
    return {name: float(value[0]) for name, value in curve_parameters(mean[None], times_s).items()}
