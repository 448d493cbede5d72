"""Training labels and the peritumoral region of the invasion map (seed 004: Yan et al. 2020, Sci Rep 10:9748).

Yan et al. label the voxels around a glioblastoma from the follow-up scan, co-registered to the pre-operative one:
the **progression area** is where the tumour came back in the peritumoral region, and the **non-progression**
voxels are those of the 5-20 mm shells around the tumour that did not progress. The voxels between the tumour and
the 5 mm shell that did not progress stay unlabelled: that close to the resection edge "no progression" is the
least certain (residual infiltration, surgical change), and the paper leaves them out.

Choices made here (the paper does not state them at this level of detail):

- **Tumour** = the tumour core of the BraTS labels: every lesion label but the non-enhancing FLAIR lesion (NEL,
  BraTS 2024 label 2): enhancing tumour, necrosis and, after surgery, the cavity. The NEL is *not* tumour here:
  it is the peritumoral oedema where progression is expected (seed 000 and Yan et al. alike), so measuring the
  shells from the whole FLAIR lesion would put nearly all progression inside the "tumour" and out of the labels.
- **Peritumoral region** (where features are computed, labels are taken and the map is drawn) = the NEL plus every
  voxel within ``MARGIN_MM`` (20 mm, the outer edge of the shells) of the tumour, without the tumour itself, and
  within the brain when a brain mask is given.
- **Progression area** = the progression/recurrence truth inside the peritumoral region (truth inside the
  tumour core is not a peritumoral progression).
- **Non-progression** = the peritumoral voxels whose distance to the tumour is 5-20 mm (both included), without
  the progression area.

Distances are Euclidean, in millimetres, on the array's own (possibly anisotropic) voxel size:
``scipy.ndimage.distance_transform_edt`` with ``sampling`` = the spacing in array-axis order (k, j, i).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from GliomaProgressionLib.case.preprocess import NEL_LABEL

SHELL_MM = (5.0, 20.0)  # Yan et al. 2020: the non-progression shells around the tumour
MARGIN_MM = SHELL_MM[1]  # the peritumoral region reaches as far as the outer shell
PROGRESSION, NON_PROGRESSION, UNLABELLED = 1, 0, -1


def tumour_core(lesion: np.ndarray) -> np.ndarray:
    """The tumour the shells are measured from: every BraTS label but the NEL (enhancing, necrosis, cavity)."""
    lesion = np.asarray(lesion)
    return (lesion > 0) & (lesion != NEL_LABEL)


def distance_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Each voxel's Euclidean distance (mm) to the nearest voxel of ``mask`` (0 inside it), on an anisotropic grid
    (``spacing_mm`` in array-axis order, k j i)."""
    spacing = _checked_spacing(spacing_mm, np.ndim(mask))
    return ndimage.distance_transform_edt(~np.asarray(mask, bool), sampling=spacing)


def peritumoral_region(lesion: np.ndarray, spacing_mm, brain: np.ndarray | None = None,
                       margin_mm: float = MARGIN_MM) -> np.ndarray:
    """The NEL plus every voxel within ``margin_mm`` of the tumour core, without the core (and inside ``brain``)."""
    lesion = np.asarray(lesion)
    core = _checked_core(lesion)
    region = ((lesion == NEL_LABEL) | (distance_mm(core, spacing_mm) <= margin_mm)) & ~core
    if brain is not None:
        region &= np.asarray(brain, bool)
    return region


def training_labels(lesion: np.ndarray, progression: np.ndarray, spacing_mm, brain: np.ndarray | None = None,
                    shell_mm: tuple[float, float] = SHELL_MM) -> np.ndarray:
    """int8 labels: ``PROGRESSION`` (1) for the progression truth inside the peritumoral region,
    ``NON_PROGRESSION`` (0) for the peritumoral voxels ``shell_mm`` from the tumour that did not progress,
    ``UNLABELLED`` (-1) elsewhere."""
    lesion = np.asarray(lesion)
    progression = np.asarray(progression)
    if progression.shape != lesion.shape:
        raise ValueError(f"The progression truth ({progression.shape}) and the lesion ({lesion.shape}) are not on one "
                         "grid.")
    inner, outer = (float(v) for v in shell_mm)
    if not 0 <= inner < outer:
        raise ValueError(f"The non-progression shells must run from a smaller to a larger distance, got {inner} to "
                         f"{outer} mm.")
    region = peritumoral_region(lesion, spacing_mm, brain, margin_mm=outer)
    distance = distance_mm(tumour_core(lesion), spacing_mm)
    progressed = region & (progression > 0)
    labels = np.full(lesion.shape, UNLABELLED, np.int8)
    labels[region & (distance >= inner) & (distance <= outer) & ~progressed] = NON_PROGRESSION
    labels[progressed] = PROGRESSION
    return labels


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """How many voxels each class holds (for the training record)."""
    return {"progression": int((labels == PROGRESSION).sum()),
            "non_progression": int((labels == NON_PROGRESSION).sum())}


def _checked_core(lesion: np.ndarray) -> np.ndarray:
    core = tumour_core(lesion)
    if not core.any():
        raise ValueError("The lesion has no tumour core (enhancing tumour, necrosis or cavity) to measure the "
                         "peritumoral region from.")
    return core


def _checked_spacing(spacing_mm, dimensions: int) -> tuple[float, ...]:
    spacing = tuple(float(v) for v in np.atleast_1d(spacing_mm))
    if len(spacing) != dimensions or not all(np.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"The voxel size must be {dimensions} positive numbers (mm), got {spacing_mm!r}.")
    return spacing
