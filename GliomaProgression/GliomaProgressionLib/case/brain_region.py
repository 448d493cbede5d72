"""Where the brain is in one series, for registration: the region whose anatomy should drive the metric.

Two kinds of input come in. Skull-stripped series (BraTS and most public data) have an exactly-zero
background around the brain: the non-zero voxels are the brain. Series as acquired keep scalp and skull, whose
bright fat moves with the skin, not with the brain: the brain is estimated as the largest bright body once the
bright voxels are eroded past the scalp's thickness (the dark skull already separates most of it). When neither gives a plausible brain, the
head's foreground is used, as before this module existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# The brain is looked for on a grid this coarse (mm) or coarser.
WORKING_SPACING_MM = 2.0
# A series whose background is exactly zero in at least this fraction of its voxels is skull-stripped: an
# acquired image has noise everywhere, so zeros come only from a mask that someone applied.
SKULL_STRIPPED_ZERO_FRACTION = 0.2
# Eroding the bright voxels by this much removes the thin scalp and the bridges across the skull, not the brain.
SKULL_GAP_MM = 3.0
# An estimated brain outside this share of the head's foreground is not the brain (the cut failed or went
# through the brain): fall back to the foreground.
PLAUSIBLE_BRAIN_SHARE = (0.3, 0.95)
# The region is widened a little so the brain's outline, the strongest shared edge, is inside it.
OUTLINE_MARGIN_MM = 3.0


@dataclass
class BrainRegion:
    """A binary region (UInt8, on the series' grid) and how it was found."""

    mask: sitk.Image
    source: str  # "skull-stripped", "estimated" or "foreground"


def brain_region(image: sitk.Image) -> BrainRegion:
    """The brain of ``image`` (widened by ``OUTLINE_MARGIN_MM``) on the image's grid, found as the module
    docstring says. The search runs on a grid of at least ``WORKING_SPACING_MM``: a metric mask needs no finer
    detail, and a 1 mm head would make the morphology slow."""
    stripped = np.mean(sitk.GetArrayViewFromImage(image) == 0) >= SKULL_STRIPPED_ZERO_FRACTION
    working = _coarse(image, nearest=stripped)
    mask, source = _brain_on(working, stripped)
    on_image = sitk.Resample(_widened(mask, OUTLINE_MARGIN_MM), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt8)
    return BrainRegion(on_image, source)


def _brain_on(image: sitk.Image, stripped: bool) -> tuple[sitk.Image, str]:
    if stripped:
        brain = _largest_component(sitk.Cast(image != 0, sitk.sitkUInt8))
        if brain is not None:
            return brain, "skull-stripped"
    foreground = _otsu_foreground(image)
    foreground = _filled(_largest_component(foreground) or foreground)
    estimate = _brain_inside_head(foreground, image)
    if estimate is not None:
        return estimate, "estimated"
    return foreground, "foreground"


def _coarse(image: sitk.Image, nearest: bool) -> sitk.Image:
    """``image`` on a grid no finer than ``WORKING_SPACING_MM`` (same orientation and field of view); nearest
    neighbour keeps a skull-stripped image's zeros exact."""
    spacing = np.maximum(np.array(image.GetSpacing()), WORKING_SPACING_MM)
    size = np.maximum(np.round(np.array(image.GetSize()) * np.array(image.GetSpacing()) / spacing), 1)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    corner = np.array(image.GetOrigin()) - direction @ (np.array(image.GetSpacing()) / 2)
    origin = corner + direction @ (spacing / 2)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), [int(n) for n in size], sitk.Transform(),
                         sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, tuple(origin),
                         tuple(float(s) for s in spacing), image.GetDirection(), 0.0, sitk.sitkFloat32)


def _brain_inside_head(foreground: sitk.Image, image: sitk.Image) -> sitk.Image | None:
    """The largest body left once the bright voxels are eroded past the scalp's thickness: the brain, which the
    dark skull separates from the scalp except where partial volume bridges them."""
    bright = _otsu_foreground(image)
    core = _largest_component(_eroded(bright, SKULL_GAP_MM))
    if core is None:
        return None
    brain = _filled(sitk.And(_widened(core, SKULL_GAP_MM), foreground))
    share = _voxels(brain) / max(_voxels(foreground), 1)
    if not PLAUSIBLE_BRAIN_SHARE[0] <= share <= PLAUSIBLE_BRAIN_SHARE[1]:
        return None  # nothing was cut off (already skull-stripped, noisy background) or the cut went wrong
    return brain


def _otsu_foreground(image: sitk.Image) -> sitk.Image:
    """Voxels above the Otsu threshold: signal, not air or bone."""
    source = sitk.Cast(image, sitk.sitkFloat32)
    threshold = _otsu_threshold(sitk.GetArrayViewFromImage(source))
    return sitk.Cast(source > threshold, sitk.sitkUInt8)


def _otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(counts * centres) - np.cumsum(counts * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def _largest_component(mask: sitk.Image) -> sitk.Image | None:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = sitk.Cast(labels == 1, sitk.sitkUInt8)
    return largest if _voxels(largest) > 0 else None


def _filled(mask: sitk.Image) -> sitk.Image:
    """Enclosed holes closed, so ventricles (dark on FLAIR and CE-T1) count as brain."""
    return sitk.BinaryFillhole(mask)


def _widened(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """Dilation by a distance in mm (a distance map: linear time, unlike a ball structuring element)."""
    return sitk.Cast(_distance_mm(mask) <= margin_mm, sitk.sitkUInt8)


def _eroded(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    return sitk.Cast(_distance_mm(mask) < -margin_mm, sitk.sitkUInt8)


def _distance_mm(mask: sitk.Image) -> sitk.Image:
    """Signed distance to the mask's edge in mm, negative inside."""
    return sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)


def _voxels(mask: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
