"""Anatomical barriers to tumour spread, for barrier-aware (ESTRO-EANO 2023) margins.

A barrier mask marks voxels a margin may not cross (falx, tentorium, ventricles, bone); everything outside the
brain is impassable anyway. Barriers given by the caller are used as they are: leave the corpus callosum open
in a falx mask, it is the passage between the hemispheres.

When no barrier is given, ``fallback_barriers`` builds a crude model from the brain mask alone (and an image, if
one is given). What it does, and its limits:

- **Falx**: the mid-sagittal plane through the centre of mass of the brain mask, perpendicular to the patient's
  left-right (R) axis of the scanner, drawn one "standard digital plane" thick (no 6- or 26-connected path
  crosses it). It assumes a head that is not rotated by more than a few degrees about the A or S axes and a
  midline that is not shifted by mass effect; give a falx mask when that does not hold.
- **Corpus callosum passage**: the plane is left open in a window between the genu and the splenium, from the
  top of the corpus callosum down (the falx's free edge lies above the corpus callosum; below it the hemispheres
  join through the corpus callosum, fornix and diencephalon). With ventricles found (below), the window spans
  their antero-posterior extent near the midline (plus 6 mm in front, for the genu) and reaches 8 mm above their
  roof (lateral ventricles: the parts whose centre is more than 5 mm from the plane; CSF on the midline, like
  the third ventricle, is a barrier but does not place the window); without them it is placed at fixed
  fractions of the brain's bounding box measured on the MNI152 2009 brain (genu at 80 %, splenium at 33 % of
  its length from the back, top at 68 % of its height from the bottom).
- **Ventricles** (only when an image is given, T1-weighted or FLAIR: CSF is dark in both): voxels darker than
  half the median brain intensity, not in the lesion, grouped into connected parts that lie within 30 mm of the
  midline, hold at least 0.5 mL and do not touch the brain surface (which removes sulcal and cisternal CSF).
  A heuristic: it can miss compressed ventricles, and take a large cyst, or CSF of the interhemispheric fissure
  enclosed by a hole-filled brain mask, for a ventricle.
- **Not modelled**: the tentorium and the skull base (only the brain boundary stops the margin there). Outside
  the window the plane is closed from top to bottom, which is too strict where no falx exists (the cerebellar
  vermis behind the brainstem, the hypothalamus in front of it). An atlas registered to the patient, or masks
  drawn by the user, are the way to do better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grid import check_grid, ras_coordinate

# Fractions of the brain's bounding box (from posterior / from inferior) that hold the corpus callosum, measured
# on the MNI152 2009 brain mask: A -107..73 mm, S -72..82 mm; genu ~ A +35, splenium ~ A -45, top ~ S +33.
CC_ANTERIOR_FRACTION = 0.80
CC_POSTERIOR_FRACTION = 0.33
CC_TOP_FRACTION = 0.68
CC_ABOVE_VENTRICLES_MM = 8.0
CC_GENU_AHEAD_OF_VENTRICLES_MM = 6.0
VENTRICLE_MAX_DISTANCE_FROM_MIDLINE_MM = 30.0
VENTRICLE_MIN_VOLUME_ML = 0.5
CSF_INTENSITY_FRACTION = 0.5
LATERAL_VENTRICLE_MIN_OFFSET_MM = 5.0


@dataclass
class Barriers:
    """Impassable voxels (besides everything outside the brain) and how they were obtained."""

    mask: np.ndarray  # bool [k, j, i]
    source: str  # "given", "fallback" or "none"
    description: str
    parts: dict[str, np.ndarray] | None = None  # the fallback's pieces: falx, passage, ventricles


def given_barriers(mask: np.ndarray, brain: np.ndarray) -> Barriers:
    """Barriers drawn by the user or taken from an atlas (nonzero = impassable)."""
    mask = np.asarray(mask) != 0
    if mask.shape != brain.shape:
        raise ValueError(f"The barrier mask has shape {mask.shape}, the brain mask {brain.shape}.")
    return Barriers(mask, "given", f"Barriers given by the user ({int(mask.sum())} voxels) and the brain boundary.")


def no_barriers(brain: np.ndarray) -> Barriers:
    return Barriers(np.zeros(brain.shape, bool), "none", "Only the brain boundary limits the margin.")


def _midline(brain: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Signed distance (mm) of every voxel centre to the mid-sagittal plane, the plane's R position, and the
    plane's digital thickness (mm) on this grid."""
    r = ras_coordinate(ijk_to_ras, brain.shape, 0)
    centre = float(r[brain].mean())
    # A "standard" digital plane (thickness = sum of |n . axis| over the three voxel axes) has no 26-connected
    # path through it.
    thickness = float(np.abs(np.asarray(ijk_to_ras, dtype=float)[0, :3]).sum())
    return r - np.float32(centre), centre, thickness


def _extent(coordinate: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    values = coordinate[where]
    return float(values.min()), float(values.max())


def find_ventricles(image: np.ndarray, brain: np.ndarray, ijk_to_ras: np.ndarray,
                    lesion: np.ndarray | None = None, midline_mm: np.ndarray | None = None) -> np.ndarray:
    """Ventricles: CSF-dark parts of the brain near the midline, away from its surface (see the module text)."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape != brain.shape:
        raise ValueError(f"The image for ventricle detection has shape {image.shape}, the brain mask {brain.shape}.")
    if midline_mm is None:
        midline_mm, _, _ = _midline(brain, ijk_to_ras)
    dark = brain & (image < CSF_INTENSITY_FRACTION * float(np.median(image[brain])))
    dark &= np.abs(midline_mm) <= VENTRICLE_MAX_DISTANCE_FROM_MIDLINE_MM
    if lesion is not None:
        dark &= ~np.asarray(lesion, dtype=bool)  # necrosis and cavity are dark too, and are the seed
    result = np.zeros(brain.shape, bool)
    box = _box(dark)
    if box is None:
        return result
    labels, count = ndimage.label(dark[box])
    # The box holds a one-voxel rim around every dark voxel, so the erosion is exact where it is looked at.
    surface = brain[box] & ~ndimage.binary_erosion(brain[box], border_value=0)
    voxel_ml = abs(np.linalg.det(np.asarray(ijk_to_ras, dtype=float)[:3, :3])) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
    on_surface = np.zeros(count + 1, bool)
    on_surface[np.unique(labels[surface])] = True
    keep = (sizes >= VENTRICLE_MIN_VOLUME_ML) & ~on_surface
    keep[0] = False
    result[box] = keep[labels]
    return result


def _box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by ``pad`` voxels (clipped to the array), or None when it is empty."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found:
        return None
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(found[0], mask.shape))


def fallback_barriers(brain: np.ndarray, ijk_to_ras: np.ndarray, image: np.ndarray | None = None,
                      lesion: np.ndarray | None = None) -> Barriers:
    """A falx with a corpus-callosum passage, and ventricles when ``image`` is given, from the brain mask alone.

    ``lesion`` (any lesion label) is never a barrier: tumour that already crosses the midline keeps its path.
    """
    brain = np.asarray(brain, dtype=bool)
    check_grid(ijk_to_ras, "The brain mask")
    midline, _, thickness = _midline(brain, ijk_to_ras)
    # Closed on both sides, with a micrometre to spare: voxels exactly at the slab's edges (float32 ties) must
    # not open a diagonal gap.
    half = np.float32(thickness / 2 + 1e-3)
    plane = brain & (midline >= -half) & (midline <= half)
    ventricles = np.zeros(brain.shape, bool)
    if image is not None:
        ventricles = find_ventricles(image, brain, ijk_to_ras, lesion, midline)
    passage = _callosal_window(brain, ijk_to_ras, plane, ventricles, midline)
    falx = plane & ~passage
    mask = falx | ventricles
    if lesion is not None:
        mask &= ~np.asarray(lesion, dtype=bool)
    found = "ventricles from image intensity" if ventricles.any() else (
        "no ventricles found in the image" if image is not None else "no ventricles (no image given)")
    description = ("Automatic barriers: mid-sagittal plane through the brain's centre of mass as the falx, open "
                   f"at the corpus callosum; {found}; no tentorium. Crude: check it, or give barrier masks.")
    return Barriers(mask, "fallback", description, {"falx": falx, "passage": passage, "ventricles": ventricles})


def _lateral_ventricles(ventricles: np.ndarray, midline: np.ndarray) -> np.ndarray:
    """The parts of ``ventricles`` that lie beside the midline, not on it (the lateral ventricles; the third
    ventricle and midline CSF straddle the plane and say nothing about the corpus callosum's height)."""
    result = np.zeros(ventricles.shape, bool)
    box = _box(ventricles, 0)
    if box is None:
        return result
    labels, count = ndimage.label(ventricles[box])
    side = ndimage.mean(midline[box], labels, np.arange(1, count + 1))
    keep = np.concatenate([[False], np.abs(side) > LATERAL_VENTRICLE_MIN_OFFSET_MM])
    result[box] = keep[labels] & (np.abs(midline[box]) <= 15.0)
    return result


def _callosal_window(brain, ijk_to_ras, plane, ventricles, midline) -> np.ndarray:
    """The part of the midline plane that stays open: between genu and splenium, from the corpus callosum's top
    down."""
    a = ras_coordinate(ijk_to_ras, brain.shape, 1)
    s = ras_coordinate(ijk_to_ras, brain.shape, 2)
    lateral = _lateral_ventricles(ventricles, midline)
    if lateral.any():
        posterior, anterior = _extent(a, lateral)
        anterior += CC_GENU_AHEAD_OF_VENTRICLES_MM
        top = _extent(s, lateral)[1] + CC_ABOVE_VENTRICLES_MM
    else:
        back, front = _extent(a, brain)
        bottom, head_top = _extent(s, brain)
        posterior = back + CC_POSTERIOR_FRACTION * (front - back)
        anterior = back + CC_ANTERIOR_FRACTION * (front - back)
        top = bottom + CC_TOP_FRACTION * (head_top - bottom)
    return plane & (a >= posterior) & (a <= anterior) & (s <= top)
