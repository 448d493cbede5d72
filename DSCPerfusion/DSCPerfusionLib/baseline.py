"""Bolus arrival, baseline window and end of the first pass, detected once on the brain-mean curve.

Rules (DESIGN.md section 4, step 2; frame indices are 0-based throughout):

* **Arrival** (``detect_bolus_arrival``), on the brain-mean *signal*: the first ``skip_frames`` frames are
  steady-state frames and never part of the baseline. Walking forward, the baseline grows frame by frame
  (as in dsc-mri-toolbox's ``DSC_mri_S0``) until a frame falls more than ``drop_fraction`` (5 %) below the
  mean of the frames before it *and the next frame does too* (one noisy dip is not a bolus). That frame is
  certainly inside the bolus; the arrival is then moved back over the frames just before it that are
  already clearly below baseline (more than 3 standard deviations of the baseline frames), so that the
  arrival is the first frame the bolus visibly lowers the signal. No such drop -> ``ValueError``.
* **Baseline window** (``baseline_window``): frames ``[skip_frames, arrival - 1)`` -- one frame of margin
  before the arrival, because the true bolus onset lies somewhere in the interval before the first
  visibly lowered frame. At least ``MIN_BASELINE_FRAMES`` frames are required.
* **First-pass end** (``detect_first_pass_end``), on the brain-mean *deltaR2**: after the peak, the curve
  is smoothed over 3 frames and the first pass ends at the first frame where it has fallen below half its
  peak and stops falling (a local minimum: recirculation starts to add contrast, or the curve flattens at
  the steady-state level). If it keeps falling to the end of the series, the last frame.
"""

from __future__ import annotations

import numpy as np

# Frames at the start of the series that approach the magnetisation steady state (brighter than the
# baseline); dsc-mri-toolbox and vendor packages skip 1-3.
DEFAULT_SKIP_FRAMES = 2
# Relative drop of the brain-mean signal that marks the bolus (dsc-mri-toolbox's S0.thresh = 0.05).
DEFAULT_DROP_FRACTION = 0.05
# Back-tracking from the 5 % frame accepts frames further below baseline than this many baseline SDs.
ONSET_NOISE_SDS = 3.0
# A baseline window shorter than this gives too noisy an S0 to be trusted.
MIN_BASELINE_FRAMES = 2
# Fraction of the peak below which a local minimum of the falling brain-mean curve ends the first pass.
FIRST_PASS_FRACTION_OF_PEAK = 0.5


def _validated_curve(curve: np.ndarray, name: str) -> np.ndarray:
    """Return a 1-D finite float64 curve, one value per frame."""
    values = np.asarray(curve, dtype=np.float64)
    if values.ndim != 1 or values.size < 3:
        raise ValueError(f"{name} must be a 1-D curve with one value per frame (at least 3), got shape {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return values


def detect_bolus_arrival(
    mean_signal: np.ndarray,
    skip_frames: int = DEFAULT_SKIP_FRAMES,
    drop_fraction: float = DEFAULT_DROP_FRACTION,
) -> int:
    """Frame index (0-based) where the bolus first lowers the brain-mean signal ``mean_signal`` (T,).

    ``skip_frames``: leading steady-state frames ignored. ``drop_fraction``: relative drop below the running
    baseline mean that marks the bolus (0.05 = 5 %). Raises ValueError if the signal never drops that far
    for two consecutive frames (no detectable bolus), or if the drop comes before any baseline frame.
    """
    curve = _validated_curve(mean_signal, "mean_signal")
    if not 0 <= skip_frames < curve.size - 2:
        raise ValueError(f"skip_frames must be between 0 and {curve.size - 3}, got {skip_frames}.")
    if not 0 < drop_fraction < 1:
        raise ValueError(f"drop_fraction must be between 0 and 1 (e.g. 0.05), got {drop_fraction}.")
    first_drop = _first_persistent_drop(curve, skip_frames, drop_fraction)
    if first_drop is None:
        raise ValueError(
            f"No detectable bolus: the brain-mean signal never drops more than {drop_fraction:.0%} below its "
            "baseline for two consecutive frames."
        )
    return _back_track_to_onset(curve, skip_frames, first_drop)


def _first_persistent_drop(curve: np.ndarray, skip: int, drop_fraction: float) -> int | None:
    """First frame after ``skip`` that, with the frame after it, lies ``drop_fraction`` below the running mean."""
    # The running baseline mean before each frame is one cumulative sum; the loop below only compares scalars.
    running_mean = np.cumsum(curve[skip:]) / np.arange(1, curve.size - skip + 1)
    for frame in range(skip + 1, curve.size):
        level = running_mean[frame - skip - 1] * (1.0 - drop_fraction)
        following = curve[frame + 1] if frame + 1 < curve.size else curve[frame]
        if running_mean[frame - skip - 1] > 0 and curve[frame] < level and following < level:
            return frame
    return None


def _back_track_to_onset(curve: np.ndarray, skip: int, first_drop: int) -> int:
    """Move back from ``first_drop`` over the preceding frames already > 3 baseline SDs below baseline."""
    baseline = curve[skip:first_drop]
    # Exclude the frames just before the drop from the noise estimate: they may already carry contrast.
    quiet = baseline[: max(2, baseline.size - 2)]
    level = quiet.mean()
    noise = quiet.std(ddof=1) if quiet.size > 2 else 0.0
    onset = first_drop
    while onset - 1 > skip and curve[onset - 1] < level - ONSET_NOISE_SDS * noise:
        onset -= 1
    return onset


def baseline_window(arrival_frame: int, skip_frames: int = DEFAULT_SKIP_FRAMES) -> tuple[int, int]:
    """Baseline frames ``[skip_frames, arrival_frame - 1)`` (0-based, end exclusive) before the bolus.

    Raises ValueError if fewer than ``MIN_BASELINE_FRAMES`` frames remain (the bolus arrives too early).
    """
    start, end = int(skip_frames), int(arrival_frame) - 1
    if end - start < MIN_BASELINE_FRAMES:
        raise ValueError(
            f"The bolus arrives at frame {arrival_frame}, leaving fewer than {MIN_BASELINE_FRAMES} baseline frames "
            f"after the {skip_frames} steady-state frames; give the baseline frames explicitly."
        )
    return start, end


def validate_baseline(baseline: tuple[int, int], n_frames: int) -> tuple[int, int]:
    """Check a user baseline ``(start, end)`` (0-based frames, end exclusive) against an ``n_frames`` series."""
    try:
        start, end = (int(value) for value in baseline)
    except (TypeError, ValueError):
        raise ValueError(f"baseline must be a pair of frame indices (start, end), got {baseline!r}.") from None
    if not 0 <= start < end <= n_frames:
        raise ValueError(
            f"baseline ({start}, {end}) must satisfy 0 <= start < end <= {n_frames} (frames [start, end))."
        )
    return start, end


def detect_first_pass_end(mean_delta_r2s: np.ndarray, arrival_frame: int) -> int:
    """Last frame (0-based, inclusive) of the first pass of the brain-mean deltaR2* curve (1/s).

    See the module docstring: first local minimum of the 3-frame smoothed curve after the peak once it has
    fallen below ``FIRST_PASS_FRACTION_OF_PEAK`` of the peak; the last frame if there is none.
    """
    curve = _validated_curve(mean_delta_r2s, "mean_delta_r2s")
    if not 0 <= arrival_frame < curve.size:
        raise ValueError(f"arrival_frame must be a frame index below {curve.size}, got {arrival_frame}.")
    smooth = np.convolve(np.pad(curve, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    peak = arrival_frame + int(np.argmax(smooth[arrival_frame:]))
    if smooth[peak] <= 0:
        raise ValueError("mean_delta_r2s has no positive first-pass peak after the arrival frame.")
    for frame in range(peak + 1, curve.size - 1):
        low_enough = smooth[frame] < FIRST_PASS_FRACTION_OF_PEAK * smooth[peak]
        if low_enough and smooth[frame + 1] >= smooth[frame]:
            return frame
    return curve.size - 1
