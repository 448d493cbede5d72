"""Time-signal curve features of seed 002 (Yun et al. 2023), per voxel or per labelled region.

From the raw DSC *signal* S(t) (not deltaR2*), with the paper's 1-based frame numbers:

* baseline S0 = median of frames 3-9, i.e. 0-based indices 2..8 = ``slice(2, 9)``;
* drop depth = S0 - S_min (signal units), S_min the minimum from the bolus arrival up to the start of the
  post-contrast window (the first pass);
* drop speed = depth / (t_min - t_arrival), signal units per second; t_min - t_arrival is floored at one
  frame interval, because the minimum can fall on the arrival frame itself in noisy voxels;
* percentage recovery = (S_post - S_min) / (S0 - S_min) * 100, S_post = mean of frames 30-50 of a
  60-frame series (0-based ``slice(29, 50)``), the window scaled to the series length: frames
  ``round(29 * T / 60)`` to ``round(50 * T / 60)`` (exclusive end). The baseline frames are *not* scaled
  (the bolus arrives at a fixed time, not a fixed fraction of the series).

Voxels without a drop (depth <= 0) get NaN for drop speed and percentage recovery.
"""

from __future__ import annotations

import numpy as np

from .signal import validate_times

# Yun 2023 frame numbers (1-based, inclusive) converted to 0-based slices.
BASELINE_FRAMES = slice(2, 9)
POST_FRAMES_OF_60 = (29, 50)
FEATURE_NAMES = ("s0", "drop_depth", "drop_speed", "percentage_recovery", "time_of_minimum_s")


def post_contrast_frames(n_frames: int) -> slice:
    """0-based frames of the post-contrast window (frames 30-50 of 60, scaled to ``n_frames``)."""
    start = int(round(POST_FRAMES_OF_60[0] * n_frames / 60.0))
    stop = max(start + 1, int(round(POST_FRAMES_OF_60[1] * n_frames / 60.0)))
    return slice(start, min(stop, n_frames))


def curve_features(
    signal: np.ndarray,
    times_s: np.ndarray,
    arrival_frame: int,
    baseline_frames: slice = BASELINE_FRAMES,
) -> dict[str, np.ndarray]:
    """Seed-002 features of every voxel of ``signal`` (T, ...) -> dict of maps with the spatial shape.

    ``times_s``: frame times (s). ``arrival_frame``: 0-based bolus arrival (``baseline.detect_bolus_arrival``).
    Keys: s0, drop_depth (signal units), drop_speed (signal units/s), percentage_recovery (%),
    time_of_minimum_s. Returns float32 maps.
    """
    values = np.asarray(signal)
    if values.ndim < 1:
        raise ValueError("signal must have time as its first axis.")
    times = validate_times(times_s, values.shape[0])
    post = post_contrast_frames(times.size)
    if not 0 <= arrival_frame < post.start:
        raise ValueError(
            f"arrival_frame {arrival_frame} must come before the post-contrast window starting at frame {post.start}."
        )
    chosen = np.arange(times.size)[baseline_frames]
    if chosen.size == 0:
        raise ValueError(f"baseline_frames {baseline_frames} selects no frame of a {times.size}-frame series.")
    flat = values.reshape(values.shape[0], -1)
    s0 = np.median(flat[chosen].astype(np.float64), axis=0)
    first_pass = flat[arrival_frame : post.start]
    minimum_frame = arrival_frame + np.argmin(first_pass, axis=0)
    minimum = np.take_along_axis(first_pass, (minimum_frame - arrival_frame)[None], axis=0)[0].astype(np.float64)
    post_level = flat[post].mean(axis=0, dtype=np.float64)
    depth = s0 - minimum
    floor = times[min(arrival_frame + 1, times.size - 1)] - times[arrival_frame]
    elapsed = np.maximum(times[minimum_frame] - times[arrival_frame], floor)
    dropped = depth > 0
    safe_depth = np.where(dropped, depth, 1.0)
    speed = np.where(dropped, depth / elapsed, np.nan)
    recovery = np.where(dropped, (post_level - minimum) / safe_depth * 100.0, np.nan)
    spatial = values.shape[1:]
    maps = (s0, depth, speed, recovery, times[minimum_frame])
    return {name: np.asarray(m, dtype=np.float32).reshape(spatial) for name, m in zip(FEATURE_NAMES, maps)}


def region_curve_features(
    signal: np.ndarray,
    times_s: np.ndarray,
    labels: np.ndarray,
    arrival_frame: int,
    baseline_frames: slice = BASELINE_FRAMES,
) -> dict[int, dict[str, float]]:
    """Seed-002 features of the mean signal curve of each non-zero label: {label: {feature: value}}.

    ``signal``: (T, K, J, I); ``labels``: integer (K, J, I), 0 = background. Averaging the curve first (as
    for an ROI) rather than the voxel features keeps the minimum from being driven by noise.
    """
    values = np.asarray(signal)
    label_map = np.asarray(labels)
    if label_map.shape != values.shape[1:]:
        raise ValueError(f"labels has shape {label_map.shape} but the signal's spatial shape is {values.shape[1:]}.")
    present = [int(v) for v in np.unique(label_map) if v != 0]
    if not present:
        raise ValueError("labels contains no non-zero label.")
    flat_labels = label_map.reshape(-1)
    flat = values.reshape(values.shape[0], -1)
    curves = np.stack([flat[:, flat_labels == value].mean(axis=1, dtype=np.float64) for value in present], axis=1)
    features = curve_features(curves, times_s, arrival_frame, baseline_frames)
    return {value: {name: float(features[name][n]) for name in FEATURE_NAMES} for n, value in enumerate(present)}
