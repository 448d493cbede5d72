"""Reference tissues of one brain found from its DSC series: artery, grey matter, white matter and CSF.

Yun et al. 2023 name each perfusion pattern by comparing its curve with those of an artery, grey matter,
white matter and CSF of the same brain. They are found here from the DSC series itself, outside the lesion:

* contrast: -ln(S(t)/S0) over the brain (S0 the mean of the pre-bolus frames from frame 3), proportional to
  deltaR2* without needing the echo time; its time integral is an rCBV proxy;
* artery: the automatic AIF voxels (``aif.select_aif``: high, early, narrow peaks, clustered on shape),
  outside the lesion, peaking at least ``ARTERY_PEAK_RATIO`` times the brain mean;
* white matter: the NAWM mask given, else ``nawm.automatic_nawm`` (contralateral, dark at baseline, low
  rCBV, away from lesion and brain edge);
* grey matter: high-CBV tissue that is not arterial: brain voxels at least ``LESION_MARGIN_MM`` from the
  lesion, not among the arterial candidates nor the brightest tenth at baseline (CSF), whose rCBV lies
  between the 80th and 97th percentiles of those voxels (grey matter has about twice white matter's CBV;
  the top 3 % are vessels);
* CSF: the brightest 5 % of the baseline image (CSF is the brightest tissue of a T2*-weighted image) of
  the same non-lesion voxels, and of those the tenth with the lowest rCBV (CSF has almost no drop; on the
  2 mm phantom this keeps the partial-volume CSF's CBV at a fifth of white matter's, the median at four fifths).

A reference with fewer than ``MIN_REFERENCE_VOXELS`` voxels is refused in one sentence.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid

from ..aif import select_aif
from ..brainmask import brain_mask_from_baseline
from ..features import BASELINE_FRAMES
from ..nawm import automatic_nawm, near_mask
from ..signal import MIN_SIGNAL_RATIO
from .curves import (
    arrival_frame_of,
    checked_mask,
    checked_series,
    curve_times,
    mean_curve_parameters,
    normalised_curves,
    voxel_curves,
)
from .labels import REFERENCE_TISSUES

REFERENCE_NAMES = tuple(REFERENCE_TISSUES)
MIN_REFERENCE_VOXELS = 10
LESION_MARGIN_MM = 10.0
GREY_RCBV_PERCENTILES = (80.0, 97.0)
BRIGHT_PERCENTILE = 90.0  # grey matter is looked for below it
CSF_BASELINE_PERCENTILE = 95.0
CSF_RCBV_PERCENTILE = 10.0
ARTERY_VOXELS = 20
# An artery's first pass peaks at least this many times the brain mean's (aif.select_aif's rule 1 asks 2x, but
# noisy high-CBV cortex reaches 2x in a brain without visible vessels; partial-volumed arteries reach 4x+).
ARTERY_PEAK_RATIO = 3.0


def automatic_brain_mask(series: np.ndarray) -> np.ndarray:
    """Brain mask from the mean of frames 3-5 (pre-bolus in any DSC series), ``brainmask.brain_mask_from_baseline``."""
    return brain_mask_from_baseline(series[2:5].astype(np.float32).mean(axis=0))


def find_reference_tissues(
    signal: np.ndarray,
    times_s: np.ndarray,
    brain_mask: np.ndarray | None,
    *,
    nawm_mask: np.ndarray | None = None,
    lesion_mask: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    ijk_to_ras: np.ndarray | None = None,
    require_artery: bool = True,
) -> dict[str, np.ndarray]:
    """Masks (K, J, I) bool of "artery", "grey_matter", "white_matter" and "csf" (rules: module docstring).

    ``require_artery`` False: a series without arterial voxels (e.g. a phantom without vessels) gives an
    empty "artery" mask instead of a refusal; the labelling rules do not use the artery.
    ``brain_mask`` None: found from the baseline image. ``spacing_mm``: voxel size per array axis (k, j, i),
    1 mm if not given (``ijk_to_ras`` also gives it, and the hemispheres, to the automatic NAWM).
    """
    series, times = checked_series(signal, times_s)
    shape = series.shape[1:]
    brain = automatic_brain_mask(series) if brain_mask is None else checked_mask(brain_mask, shape, "brain")
    lesion = np.zeros(shape, bool) if lesion_mask is None else checked_mask(lesion_mask, shape, "lesion")
    if brain.sum() < 4 * MIN_REFERENCE_VOXELS:
        raise ValueError(f"The brain mask has {int(brain.sum())} voxels, too few to find reference tissues in.")
    spacing = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"The voxel spacing must be three positive sizes in mm, got {spacing_mm!r}.")

    raw = voxel_curves(series, brain, "brain mask")
    arrival = arrival_frame_of(raw.mean(axis=1))
    baseline_image, contrast = _contrast(raw, arrival)
    rcbv_values = trapezoid(contrast[BASELINE_FRAMES.start:], x=times[BASELINE_FRAMES.start:], axis=0)
    rcbv, baseline = (_to_volume(values, brain) for values in (rcbv_values, baseline_image))

    outside = brain & ~lesion
    artery, arterial_candidates = _artery(contrast, times, brain, outside, arrival, require_artery)
    if nawm_mask is not None:
        white = checked_mask(nawm_mask, shape, "NAWM")
    else:
        white = automatic_nawm(np.where(brain, rcbv, 0), baseline, brain, ijk_to_ras=ijk_to_ras,
                               spacing_mm=tuple(spacing), lesion_labels=lesion.astype(np.uint8)).mask
    far = outside & ~near_mask(lesion, spacing, LESION_MARGIN_MM)
    if far.sum() < MIN_REFERENCE_VOXELS:
        raise ValueError("Too little brain lies away from the lesion to find grey matter and CSF references in.")
    bright = far & (baseline >= np.percentile(baseline[far], BRIGHT_PERCENTILE))
    grey = _grey_matter(rcbv, far & ~bright & ~arterial_candidates & ~white)
    csf = _csf(rcbv, baseline, far)
    if artery.sum() < MIN_REFERENCE_VOXELS and not require_artery:
        artery = np.zeros(shape, bool)  # a voxel or two is no artery one can trust
    masks = {"artery": artery, "grey_matter": grey, "white_matter": white, "csf": csf}
    for name, mask in masks.items():
        if mask.sum() < MIN_REFERENCE_VOXELS and (name != "artery" or require_artery):
            raise ValueError(f"No {name.replace('_', ' ')} reference was found in the DSC series (only "
                             f"{int(mask.sum())} voxels, at least {MIN_REFERENCE_VOXELS} are needed).")
    return masks


def _contrast(raw: np.ndarray, arrival: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline signal (N,) and -ln(S/S0) (T, N) of raw curves (T, N); S0 from frame 3 to before the arrival."""
    start = BASELINE_FRAMES.start
    s0 = raw[start:max(start + 1, arrival - 1)].mean(axis=0)
    ratio = raw / np.where(s0 > 0, s0, 1.0)
    np.clip(ratio, MIN_SIGNAL_RATIO, None, out=ratio)
    contrast = -np.log(ratio) * (s0 > 0)
    return s0, contrast


def _to_volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, np.float64)
    volume[mask] = values
    return volume


def _artery(contrast: np.ndarray, times: np.ndarray, brain: np.ndarray, outside: np.ndarray, arrival: int,
            required: bool):
    """Arterial voxels outside the lesion (``aif.select_aif``) and the credible arterial candidates, as volumes."""
    try:
        selection = select_aif(contrast, times, outside[brain], arrival_frame=max(arrival, 2),
                               n_voxels=ARTERY_VOXELS, min_peak_ratio=ARTERY_PEAK_RATIO)
    except ValueError:
        if required:
            raise ValueError("No arterial voxels were found in the DSC series outside the lesion.") from None
        return np.zeros(brain.shape, bool), np.zeros(brain.shape, bool)
    return _to_volume(selection.mask, brain) > 0, _to_volume(selection.candidate_mask, brain) > 0


def _grey_matter(rcbv: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    if candidates.sum() < MIN_REFERENCE_VOXELS:
        return candidates
    low, high = np.percentile(rcbv[candidates], GREY_RCBV_PERCENTILES)
    return candidates & (rcbv >= low) & (rcbv <= high)


def _csf(rcbv: np.ndarray, baseline: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    brightest = candidates & (baseline >= np.percentile(baseline[candidates], CSF_BASELINE_PERCENTILE))
    return brightest & (rcbv <= np.percentile(rcbv[brightest], CSF_RCBV_PERCENTILE))


def reference_curves(
    signal: np.ndarray,
    times_s: np.ndarray,
    references: dict[str, np.ndarray],
    arrival_frame: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mean normalised curve (``curves.normalised_curves``, float64 (CURVE_POINTS,)) of each reference mask.

    An empty "artery" mask (no arterial voxels found) is left out of the result.
    """
    missing = [name for name in REFERENCE_NAMES if name not in references]
    if missing:
        raise ValueError(f"The reference tissues lack {', '.join(missing)}.")
    white = references["white_matter"]
    result = {}
    for name in REFERENCE_NAMES:
        if name == "artery" and not np.any(references[name]):
            continue  # allowed to be missing (find_reference_tissues, require_artery=False)
        curves, _ = normalised_curves(signal, times_s, references[name], white, arrival_frame)
        result[name] = curves.astype(np.float64).mean(axis=0)
    return result, curve_times()


def reference_parameters(curves: dict[str, np.ndarray], times_s: np.ndarray) -> dict[str, dict[str, float]]:
    """The four curve parameters (``curves.curve_parameters``) of each reference's mean normalised curve."""
    return {name: mean_curve_parameters(np.asarray(curve)[None], times_s) for name, curve in curves.items()}
