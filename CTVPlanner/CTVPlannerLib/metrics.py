"""Metrics of a target volume T against a recurrence R within the brain B (all boolean masks on one grid).

T and R are first restricted to B. With TP = |R n T|, FP = |T \\ R|, FN = |R \\ T|:

- sensitivity = TP / |R|                       (R empty: 1.0, nothing was missed)
- specificity = |B \\ (R u T)| / |B \\ R|        (normal brain spared; B \\ R empty: 1.0)
- Dice = 2 TP / (|R| + |T|)                     (both empty: 1.0)
- HD95 (mm): symmetric surface distance, the larger of the two directed 95th percentiles of the distances from
  one mask's surface voxels to the other's (numpy's linear percentile; surface = mask voxels with a face
  neighbour outside the mask; distances between voxel centres in mm). Both empty: 0.0; one empty: +inf (the
  distance to an empty set); JSON writers turn +inf into null.
- Tversky = TP / (TP + alpha FP + beta FN), alpha = 0.02 on false positives, beta = 0.98 on false negatives
  (T and R both empty: 1.0).
- PCC (seed 003, Eq. 1) = Tversky with beta = 1/(f + 1), alpha = 1 - beta, f = |R| / |B|. R empty gives
  alpha = 0 and 0/0: 1.0, as for the sensitivity.
- volumes in mL: target, recurrence, and recurrence inside the target.
- recurrence pattern from the fraction of R inside T: central >= 95 %, in-field >= 80 %, marginal >= 20 %,
  distant < 20 %; "none" when R is empty.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

TVERSKY_ALPHA = 0.02  # weight of false positives
TVERSKY_BETA = 0.98  # weight of false negatives
PATTERN_THRESHOLDS = (("central", 0.95), ("in-field", 0.80), ("marginal", 0.20))
METRIC_NAMES = ("sensitivity", "specificity", "dice", "hd95_mm", "tversky", "pcc", "target_ml", "recurrence_ml",
                "recurrence_inside_ml", "pattern")


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else empty


def tversky(tp: int, fp: int, fn: int, alpha: float, beta: float) -> float:
    """TP / (TP + alpha FP + beta FN); 1.0 when the denominator is zero (T and R both empty)."""
    return _ratio(tp, tp + alpha * fp + beta * fn, 1.0)


def recurrence_pattern(inside_fraction: float | None) -> str:
    """central / in-field / marginal / distant from the fraction of the recurrence inside the target; None: none."""
    if inside_fraction is None:
        return "none"
    for name, threshold in PATTERN_THRESHOLDS:
        if inside_fraction >= threshold:
            return name
    return "distant"


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing_kji) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two masks (see module text)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf
    surface_a, surface_b = surface(a), surface(b)
    spacing = np.asarray(spacing_kji, dtype=float)
    a_to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    b_to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def target_metrics(target: np.ndarray, recurrence: np.ndarray, brain: np.ndarray, spacing_kji,
                   voxel_ml: float | None = None) -> dict:
    """All metrics of the module text, as a dict of plain floats and one string (never NaN)."""
    brain = np.asarray(brain, bool)
    target, recurrence = np.asarray(target, bool), np.asarray(recurrence, bool)
    if not (target.shape == recurrence.shape == brain.shape):
        raise ValueError(f"The target {target.shape}, recurrence {recurrence.shape} and brain {brain.shape} masks "
                         "must share one grid.")
    if not brain.any():
        raise ValueError("The brain mask is empty; the metrics are measured within it.")
    spacing = np.asarray(spacing_kji, dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0 if voxel_ml is None else voxel_ml
    t, r = target & brain, recurrence & brain
    n_t, n_r, n_b = int(t.sum()), int(r.sum()), int(brain.sum())
    tp = int((t & r).sum())
    fp, fn = n_t - tp, n_r - tp
    beta = 1.0 / (n_r / n_b + 1.0)
    inside = _ratio(tp, n_r, 1.0) if n_r else None
    return {
        "sensitivity": _ratio(tp, n_r, 1.0),
        "specificity": _ratio(n_b - n_r - fp, n_b - n_r, 1.0),
        "dice": _ratio(2 * tp, n_t + n_r, 1.0),
        "hd95_mm": hd95_mm(t, r, spacing),
        "tversky": tversky(tp, fp, fn, TVERSKY_ALPHA, TVERSKY_BETA),
        "pcc": tversky(tp, fp, fn, 1.0 - beta, beta),
        "target_ml": n_t * voxel_ml,
        "recurrence_ml": n_r * voxel_ml,
        "recurrence_inside_ml": tp * voxel_ml,
        "pattern": recurrence_pattern(inside),
    }


def json_safe(metrics: dict) -> dict:
    """The metrics with non-finite numbers (an infinite HD95) as None, for JSON."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in metrics.items()}
