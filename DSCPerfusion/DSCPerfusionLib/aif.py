"""Automatic arterial input function (AIF) selection from DSC deltaR2* (or concentration) curves.

After dsc-mri-toolbox (Peruzzo et al. 2011, Comput Methods Programs Biomed 104:e148) and Mouridsen et al.
2006 (MRM 56:524), adapted to a whole-brain search. Arrays are time-first, (T, ...); times in seconds.

Rules, in order (each voxel of the brain mask; "reference" = the brain-mean curve):

1. Credible arterial candidates (absolute rules; none left -> ValueError, no AIF is better than a venous or
   tissue one):
   * high: peak >= ``min_peak_ratio`` x the reference's peak (arteries carry the undiluted bolus; even with
     partial volume their deltaR2* peaks several times higher than tissue's);
   * early: time to peak <= the reference's (arteries fill before tissue, veins after it);
   * narrow: full width at half maximum (FWHM) < the reference's (the bolus is dispersed by the capillary
     bed; veins and tissue are broader);
   * clear of noise: peak >= ``min_cnr`` x the SD of the voxel's pre-bolus frames.
2. Noise pruning (Peruzzo's irregularity rule): candidates whose roughness (mean |second difference| /
   peak, the same measure as Wu's oscillation index) exceeds ``max_roughness_ratio`` x the candidates'
   median roughness are dropped (spiky, noise-dominated curves). Of the rest, at most the 1000 with the
   highest peaks go on (hierarchical clustering needs memory quadratic in their number).
3. Clustering (Mouridsen: on shape, curves normalised to unit area): repeated 2-way Ward hierarchical
   clustering (scipy). Of the two clusters, keep the one whose mean curve has the higher EARLY peak (its
   maximum up to the reference's time to peak, which penalises late venous curves); if the two differ by
   less than ``peak_tie`` (relative), the one with the earlier time to peak (dsc-mri-toolbox); if the kept
   cluster has fewer than ``min_voxels`` voxels and the other has enough, the other. Repeat until at most
   ``n_voxels`` remain.
4. The AIF is the mean curve of the kept voxels.

The bolus arrival frame (end of the pre-bolus frames used for the noise SD) is taken from ``arrival_frame``
or found on the reference: walking back from its peak, the first frame of the run above 5 % of the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.integrate import trapezoid

from .signal import validate_times

DEFAULT_N_VOXELS = 10
DEFAULT_MIN_VOXELS = 3
DEFAULT_MIN_PEAK_RATIO = 2.0
DEFAULT_MIN_CNR = 5.0
DEFAULT_MAX_ROUGHNESS_RATIO = 3.0
# dsc-mri-toolbox's "diffPicco": early peaks closer than 4 % are a tie, decided by time to peak.
DEFAULT_PEAK_TIE = 0.04
# Fraction of the reference peak that marks the bolus arrival (dsc-mri-toolbox's 5 % rule).
ARRIVAL_FRACTION = 0.05
# The noise SD needs at least this many pre-bolus frames.
_MIN_BASELINE_FRAMES = 2
# Ward linkage stores n(n-1)/2 distances: 1000 candidates are 4 MB, 20000 would be 1.6 GB.
_MAX_CLUSTERED = 1000


@dataclass
class AIFSelection:
    """Result of ``select_aif``.

    mask: spatial bool array, the voxels whose mean is the AIF.
    curve: (T,) AIF, the mean curve of ``mask`` (units of the input curves).
    candidate_mask: spatial bool array, the credible candidates (rule 1) before pruning and clustering.
    candidate_scores: per candidate, in ``np.flatnonzero(candidate_mask)`` order: "peak" (curve units),
      "ttp_s" (s), "fwhm_s" (s), "cnr" (peak / pre-bolus SD), "roughness" (unitless), "selected" (bool).
    arrival_frame: first bolus frame used (frames before it are pre-bolus).
    """

    mask: np.ndarray
    curve: np.ndarray
    candidate_mask: np.ndarray
    candidate_scores: dict[str, np.ndarray]
    arrival_frame: int


def bolus_arrival_frame(curve: np.ndarray) -> int:
    """First frame of the bolus on a (T,) mean deltaR2* curve: start of the run above 5 % of the peak before it."""
    values = np.asarray(curve, dtype=np.float64)
    peak_frame = int(np.argmax(values))
    below = np.flatnonzero(values[: peak_frame + 1] <= ARRIVAL_FRACTION * values[peak_frame])
    return int(below[-1]) + 1 if below.size else 0


def full_width_half_maximum(curves: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """FWHM in seconds of the main peak of each curve (T, N), linearly interpolated between frames.

    A curve that does not fall back below half its peak before the end (or was above it at the start) is
    measured up to the last (from the first) frame, so sustained curves come out wide.
    """
    values = np.asarray(curves, dtype=np.float64)
    times = np.asarray(times_s, dtype=np.float64)
    n_frames, n_curves = values.shape
    columns = np.arange(n_curves)
    peak_frame = np.argmax(values, axis=0)
    half = values[peak_frame, columns] / 2.0
    frames = np.arange(n_frames)[:, None]
    below = values < half
    left = np.where(below & (frames < peak_frame), frames, -1).max(axis=0)
    right = np.where(below & (frames > peak_frame), frames, n_frames).min(axis=0)
    start = np.where(left >= 0, _crossing(values, times, np.maximum(left, 0), half), times[0])
    end = np.where(right < n_frames, _crossing(values, times, np.minimum(right, n_frames - 1) - 1, half), times[-1])
    return end - start


def _crossing(values: np.ndarray, times: np.ndarray, frame: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Time where each curve crosses ``level`` between ``frame`` and ``frame + 1`` (linear interpolation)."""
    columns = np.arange(values.shape[1])
    nxt = np.minimum(frame + 1, values.shape[0] - 1)
    v0, v1 = values[frame, columns], values[nxt, columns]
    step = np.where(v1 != v0, v1 - v0, 1.0)
    fraction = np.clip((level - v0) / step, 0.0, 1.0)
    return times[frame] + fraction * (times[nxt] - times[frame])


def roughness(curves: np.ndarray) -> np.ndarray:
    """Mean |second difference| over the frames divided by the peak (unitless; inf where the peak <= 0)."""
    values = np.asarray(curves, dtype=np.float64)
    peak = values.max(axis=0)
    total = np.abs(np.diff(values, n=2, axis=0)).sum(axis=0) / values.shape[0]
    return np.where(peak > 0, total / np.where(peak > 0, peak, 1.0), np.inf)


def _validated_inputs(
    delta_r2s: np.ndarray, times_s: np.ndarray, brain_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain curves (T, N) float64, times (T,) and the bool mask, after checking shapes and values."""
    series = np.asarray(delta_r2s)
    if series.ndim < 2 or series.shape[0] < 5:
        raise ValueError(f"delta_r2s must be (T, ...) with T >= 5 frames and a spatial axis, got shape {series.shape}.")
    times = validate_times(times_s, series.shape[0])
    mask = np.asarray(brain_mask)
    if mask.shape != series.shape[1:]:
        raise ValueError(f"brain_mask has shape {mask.shape} but the series' spatial shape is {series.shape[1:]}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("brain_mask is empty.")
    curves = np.asarray(series[:, mask], dtype=np.float64)
    if not np.all(np.isfinite(curves)):
        raise ValueError("delta_r2s contains NaN or infinite values inside the brain mask.")
    return curves, times, mask


def _validated_arrival(arrival_frame: int | None, reference: np.ndarray) -> int:
    """Arrival frame (given or detected), checking enough pre-bolus frames for a noise estimate."""
    frame = bolus_arrival_frame(reference) if arrival_frame is None else int(arrival_frame)
    if not _MIN_BASELINE_FRAMES <= frame < reference.size:
        raise ValueError(
            f"The bolus arrival frame ({frame}) must leave at least {_MIN_BASELINE_FRAMES} pre-bolus frames "
            f"in a {reference.size}-frame series."
        )
    return frame


def _features(curves: np.ndarray, times: np.ndarray, arrival: int) -> dict[str, np.ndarray]:
    """Per-voxel peak, ttp_s, cnr and roughness of curves (T, N) (FWHM is computed later, on fewer voxels)."""
    peak = curves.max(axis=0)
    noise = curves[:arrival].std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cnr = np.where(noise > 0, peak / np.where(noise > 0, noise, 1.0), np.inf)
    return {"peak": peak, "ttp_s": times[np.argmax(curves, axis=0)], "cnr": cnr, "roughness": roughness(curves)}


def _credible(
    curves: np.ndarray, times: np.ndarray, features: dict[str, np.ndarray], reference: np.ndarray, options: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the credible candidates (rule 1) and their FWHM (s)."""
    reference_peak = reference.max()
    reference_ttp = times[np.argmax(reference)]
    quick = (
        (features["peak"] >= options["min_peak_ratio"] * reference_peak)
        & (features["ttp_s"] <= reference_ttp)
        & (features["cnr"] >= options["min_cnr"])
    )
    index = np.flatnonzero(quick)
    fwhm = full_width_half_maximum(curves[:, index], times)
    reference_fwhm = full_width_half_maximum(reference[:, None], times)[0]
    narrow = fwhm < reference_fwhm
    return index[narrow], fwhm[narrow]


def _split(shapes: np.ndarray) -> np.ndarray:
    """Two-way Ward clustering of curves (T, n) into labels 1/2 (n,)."""
    return fcluster(linkage(shapes.T, method="ward"), t=2, criterion="maxclust")


def _keep_cluster(curves: np.ndarray, labels: np.ndarray, early_frames: int, options: dict) -> int:
    """Label (1 or 2) of the cluster to keep (rule 3)."""
    means = [curves[:, labels == label].mean(axis=1) for label in (1, 2)]
    early = np.array([mean[:early_frames].max() for mean in means])
    ttp = np.array([np.argmax(mean) for mean in means])
    if abs(early[0] - early[1]) < options["peak_tie"] * early.max() and ttp[0] != ttp[1]:
        keep = 1 + int(ttp[1] < ttp[0])
    else:
        keep = 1 + int(early[1] > early[0])
    sizes = {label: int(np.sum(labels == label)) for label in (1, 2)}
    if sizes[keep] < options["min_voxels"] <= sizes[3 - keep]:
        keep = 3 - keep
    return keep


def _cluster(curves: np.ndarray, times: np.ndarray, reference: np.ndarray, options: dict) -> np.ndarray:
    """Bool (n,) of the candidates kept by repeated two-way clustering (rule 3)."""
    kept = np.arange(curves.shape[1])
    early_frames = int(np.argmax(reference)) + 1
    areas = trapezoid(curves, x=times, axis=0)
    shapes = curves / np.where(areas > 0, areas, 1.0)  # unit area: cluster on shape, not amplitude
    while kept.size > options["n_voxels"]:
        labels = _split(shapes[:, kept])
        if np.unique(labels).size < 2:  # identical curves cannot be split further
            break
        kept = kept[labels == _keep_cluster(curves[:, kept], labels, early_frames, options)]
    selected = np.zeros(curves.shape[1], dtype=bool)
    selected[kept] = True
    return selected


def _pruned(scores: dict[str, np.ndarray], max_roughness_ratio: float) -> np.ndarray:
    """Positions (among the candidates) that survive the noise pruning and the size cap (rule 2)."""
    smooth = np.flatnonzero(scores["roughness"] <= max_roughness_ratio * np.median(scores["roughness"]))
    highest_first = smooth[np.argsort(-scores["peak"][smooth], kind="stable")]
    return np.sort(highest_first[:_MAX_CLUSTERED])


def _validated_options(options: dict) -> dict:
    """Check the tuning options of ``select_aif``."""
    if int(options["n_voxels"]) < 1 or int(options["min_voxels"]) < 1:
        raise ValueError("n_voxels and min_voxels must be at least 1.")
    for name in ("min_peak_ratio", "min_cnr", "max_roughness_ratio", "peak_tie"):
        if not (np.isfinite(options[name]) and options[name] >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {options[name]}.")
    return options


def select_aif(
    delta_r2s: np.ndarray,
    times_s: np.ndarray,
    brain_mask: np.ndarray,
    arrival_frame: int | None = None,
    n_voxels: int = DEFAULT_N_VOXELS,
    *,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    min_peak_ratio: float = DEFAULT_MIN_PEAK_RATIO,
    min_cnr: float = DEFAULT_MIN_CNR,
    max_roughness_ratio: float = DEFAULT_MAX_ROUGHNESS_RATIO,
    peak_tie: float = DEFAULT_PEAK_TIE,
) -> AIFSelection:
    """Pick arterial voxels in ``brain_mask`` and return their mean curve as the AIF (rules: module docstring).

    ``delta_r2s``: (T, ...) deltaR2* in 1/s (or concentration). ``times_s``: (T,) frame times (s).
    ``arrival_frame``: first bolus frame (default: detected on the brain-mean curve). ``n_voxels``: at most
    this many voxels are averaged. Raises ValueError when no voxel is a credible arterial candidate.
    """
    options = _validated_options(
        dict(
            n_voxels=n_voxels,
            min_voxels=min_voxels,
            min_peak_ratio=min_peak_ratio,
            min_cnr=min_cnr,
            max_roughness_ratio=max_roughness_ratio,
            peak_tie=peak_tie,
        )
    )
    curves, times, mask = _validated_inputs(delta_r2s, times_s, brain_mask)
    reference = curves.mean(axis=1)
    arrival = _validated_arrival(arrival_frame, reference)
    features = _features(curves, times, arrival)
    index, fwhm = _credible(curves, times, features, reference, options)
    if index.size == 0:
        raise ValueError(
            "No credible arterial voxels: none peaks at least min_peak_ratio times the brain-mean peak, "
            "no later and narrower than it, and clear of the noise."
        )
    scores = {name: values[index] for name, values in features.items()}
    scores["fwhm_s"] = fwhm
    kept = _pruned(scores, max_roughness_ratio)
    selected = np.zeros(index.size, dtype=bool)
    selected[kept[_cluster(curves[:, index[kept]], times, reference, options)]] = True
    scores["selected"] = selected
    return AIFSelection(
        mask=_spatial(mask, index[selected]),
        curve=curves[:, index[selected]].mean(axis=1),
        candidate_mask=_spatial(mask, index),
        candidate_scores=scores,
        arrival_frame=arrival,
    )


def _spatial(mask: np.ndarray, brain_index: np.ndarray) -> np.ndarray:
    """Spatial bool array with the brain voxels at ``brain_index`` (positions among mask voxels) set."""
    flat = np.zeros(mask.sum(), dtype=bool)
    flat[brain_index] = True
    volume = np.zeros(mask.shape, dtype=bool)
    volume[mask] = flat
    return volume
