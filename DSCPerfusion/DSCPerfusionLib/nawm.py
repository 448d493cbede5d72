"""Normal-appearing white matter (NAWM) reference and CBV normalisation (DESIGN.md section 4, step 5).

Automatic NAWM (``automatic_nawm``), all on the DSC grid, arrays ``[k, j, i]``:

1. **Hemispheres.** The left-right coordinate of every voxel is its RAS x (from the IJK-to-RAS matrix);
   the midline is the mean x of the brain mask. Without a matrix, array axis i is taken as left-right.
   Voxels within ``MIDLINE_GAP_MM`` of the midline (falx, interhemispheric fissure) are never used.
2. **Lesion side.** If lesion labels are given, the lesion is every non-zero label and its side is that of
   its centroid. Otherwise the "abnormal" voxels stand in for it (the pipeline passes the largest cluster
   of voxels whose K2 is a strong robust outlier, ``abnormal_from_k2``); if there is none, both hemispheres
   are used and a warning says so. NAWM is taken from the *other* hemisphere.
3. **Away from lesion and edge.** Voxels closer than ``margin_mm`` (12 mm) to the lesion (or to the
   abnormal voxels), or closer than ``edge_mm`` (5 mm) to the outside of the brain mask, are excluded
   (beyond the first and last slice the brain is taken to continue as in them, ``deeper_than``);
   so are voxels flagged unusable (e.g. saturated) and voxels with rCBV <= 0.
4. **White matter.** With a WM probability map: probability >= ``WM_PROBABILITY``. Otherwise a robust
   intensity rule on the DSC data itself, relying on two contrasts every GRE-EPI DSC series has: on the
   pre-bolus image white matter is darker than grey matter and much darker than CSF, and its rCBV is about
   half that of grey matter while CSF's is ~0. So white matter = the darkest fifth of the candidates on
   the baseline image (``BASELINE_DARK_PERCENTILE``: white matter is the darkest tissue, and even a
   hemisphere's deep part holds well over 20 % of it, so the darkest fifth is nearly pure white matter)
   **and** uncorrected rCBV, smoothed over 3x3 voxels in-plane so that the selection does not pick voxels
   by their own noise, between the 5th and 40th percentiles of the candidates (removes dark CSF/void
   partial volume at the bottom and dark vessels or grey matter at the top). On the synthetic cases this
   choice puts the NAWM mean rCBV within ~2 % of the true-NAWM mean (the median and 25th-percentile
   cuts included grey-matter partial volume: +5 to +13 %).
5. Fewer than ``min_voxels`` voxels left -> ValueError (give a NAWM mask).

Normalisation: nCBV = rCBV / mean rCBV in NAWM. ``per_slice=True`` follows seed 000 ("dividing every CBV
value in a specific section by that in the unaffected white matter"): each slice along array axis k is
divided by its own NAWM mean when it holds at least ``MIN_SLICE_NAWM_VOXELS`` NAWM voxels, otherwise by
the global NAWM mean (those slices are reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .brainmask import extend_slices

DEFAULT_LESION_MARGIN_MM = 12.0
DEFAULT_EDGE_MM = 5.0
MIDLINE_GAP_MM = 5.0
DEFAULT_MIN_NAWM_VOXELS = 50
MIN_SLICE_NAWM_VOXELS = 10
WM_PROBABILITY = 0.9
# Intensity rule: darkest fifth of the baseline image, and this percentile band of the smoothed rCBV.
BASELINE_DARK_PERCENTILE = 20.0
RCBV_BAND_PERCENTILES = (5.0, 40.0)
# Robust z-score of K2 (scaled MADs) above which a voxel is taken as lesion when no labels are given.
ABNORMAL_K2_MADS = 5.0
MIN_ABNORMAL_VOXELS = 10


@dataclass
class NAWMSelection:
    """Automatic NAWM: mask, hemisphere ("left", "right", "both"; "low-i"/"high-i" without geometry), warnings."""

    mask: np.ndarray
    hemisphere: str
    warnings: list[str] = field(default_factory=list)


def spacing_from_matrix(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Voxel size in mm per array axis (k, j, i) from a 4x4 IJK-to-RAS matrix."""
    return np.linalg.norm(np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3], axis=0)[::-1]


def validate_ijk_to_ras(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Return the IJK-to-RAS matrix as a float64 (4, 4) array, checking it is finite and invertible."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"ijk_to_ras must be a finite 4x4 matrix, got shape {matrix.shape}.")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise ValueError("ijk_to_ras is singular (a zero voxel size or collinear axes).")
    return matrix


def left_right_coordinate(shape: tuple[int, int, int], ijk_to_ras: np.ndarray | None) -> np.ndarray:
    """RAS x (mm) of every voxel of a ``[k, j, i]`` grid; array index i if no matrix is given."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    if ijk_to_ras is None:
        return np.broadcast_to(i.astype(np.float64), shape)
    row = validate_ijk_to_ras(ijk_to_ras)[0]
    return row[0] * i + row[1] * j + row[2] * k + row[3]


def abnormal_from_k2(k2: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The largest connected cluster of brain voxels whose K2 is a strong robust outlier.

    Outlier: more than ``ABNORMAL_K2_MADS`` scaled MADs from the brain's median K2. Only the largest
    26-connected cluster is kept, and only if it has at least ``MIN_ABNORMAL_VOXELS`` voxels, so that scattered
    noisy voxels (vessels, CSF edges) in a brain without leakage do not decide the lesion side.
    """
    values = k2[brain_mask]
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    if spread <= 0:
        return np.zeros(k2.shape, dtype=bool)
    outliers = brain_mask & (np.abs(k2 - centre) > ABNORMAL_K2_MADS * spread)
    labels, count = ndimage.label(outliers, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return outliers
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    if sizes[largest] < MIN_ABNORMAL_VOXELS:
        return np.zeros(k2.shape, dtype=bool)
    return labels == largest


def _bounding_box(mask: np.ndarray, pad_voxels: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``pad_voxels`` per axis and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        pad = int(pad_voxels[axis])
        box.append(slice(max(occupied[0] - pad, 0), min(occupied[-1] + pad + 1, mask.shape[axis])))
    return tuple(box)


def near_mask(mask: np.ndarray, spacing: np.ndarray, within_mm: float) -> np.ndarray:
    """Voxels within ``within_mm`` (Euclidean, mm) of any voxel of ``mask``, the mask included.

    The distance transform runs only on the mask's bounding box grown by ``within_mm``: far faster than on
    the whole grid, and exact, since no voxel outside that box can be that close.
    """
    near = np.zeros(mask.shape, bool)
    if not mask.any():
        return near
    box = _bounding_box(mask, np.ceil(within_mm / spacing) + 1)
    near[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= within_mm
    return near


def deeper_than(mask: np.ndarray, spacing: np.ndarray, depth_mm: float) -> np.ndarray:
    """Voxels of ``mask`` more than ``depth_mm`` (mm) from any voxel outside it.

    Beyond the array in-plane is outside; beyond the first and last slice (array axis k) the mask continues
    as in those slices (``brainmask.extend_slices``): a slab seldom ends where the brain ends, and counting
    beyond-the-slab as outside would leave no deep voxel in the end slices, none at all in a 1- or 2-slice
    series of thin slices. In a slice that really is the brain's top, the brain's own in-plane edge is near.

    That is an erosion by the ellipsoid of all voxel offsets no longer than ``depth_mm``: exactly the
    distance-transform criterion, and several times faster for the few-voxel radii used here.
    """
    reach = np.floor(depth_mm / spacing).astype(int)
    k, j, i = np.ogrid[-reach[0] : reach[0] + 1, -reach[1] : reach[1] + 1, -reach[2] : reach[2] + 1]
    ball = (k * spacing[0]) ** 2 + (j * spacing[1]) ** 2 + (i * spacing[2]) ** 2 <= depth_mm**2
    extended = extend_slices(np.asarray(mask, dtype=bool), reach[0])
    return ndimage.binary_erosion(extended, structure=ball, border_value=0)[reach[0] : reach[0] + np.shape(mask)[0]]


def automatic_nawm(
    rcbv: np.ndarray,
    baseline_image: np.ndarray,
    brain_mask: np.ndarray,
    *,
    ijk_to_ras: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    lesion_labels: np.ndarray | None = None,
    abnormal: np.ndarray | None = None,
    wm_probability: np.ndarray | None = None,
    unusable: np.ndarray | None = None,
    margin_mm: float = DEFAULT_LESION_MARGIN_MM,
    edge_mm: float = DEFAULT_EDGE_MM,
    min_voxels: int = DEFAULT_MIN_NAWM_VOXELS,
) -> NAWMSelection:
    """Contralateral normal-appearing white matter on the DSC grid (rule: module docstring).

    ``rcbv``: uncorrected rCBV (K, J, I). ``baseline_image``: mean pre-bolus signal. ``spacing_mm``: voxel
    size per array axis (k, j, i), used only when ``ijk_to_ras`` is None. ``lesion_labels``: integer labels
    (0 = background). ``abnormal``: lesion stand-in when there are no labels. ``wm_probability``: [0, 1].
    ``unusable``: voxels never to use. Raises ValueError if fewer than ``min_voxels`` voxels qualify.
    """
    shape = np.shape(brain_mask)
    brain = np.asarray(brain_mask, dtype=bool)
    for name, array in (("rcbv", rcbv), ("baseline_image", baseline_image), ("lesion_labels", lesion_labels),
                        ("abnormal", abnormal), ("wm_probability", wm_probability), ("unusable", unusable)):
        if array is not None and np.shape(array) != shape:
            raise ValueError(f"{name} has shape {np.shape(array)} but the brain mask is {shape}.")
    warnings: list[str] = []
    if ijk_to_ras is not None:
        spacing = spacing_from_matrix(validate_ijk_to_ras(ijk_to_ras))
    else:
        spacing = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64)
        warnings.append("No IJK-to-RAS matrix: array axis i was taken as the left-right axis for the NAWM.")
    lesion = (np.asarray(lesion_labels) != 0) if lesion_labels is not None else None
    if lesion is None or not lesion.any():
        lesion = np.asarray(abnormal, dtype=bool) if abnormal is not None else np.zeros(shape, bool)
        if lesion.sum() < MIN_ABNORMAL_VOXELS:  # too few to say which side the lesion is on
            lesion = np.zeros(shape, bool)

    x = left_right_coordinate(shape, ijk_to_ras)
    if ijk_to_ras is None:
        x = x * spacing[2]  # index i to mm, for the midline gap
    midline = float(x[brain].mean())
    if lesion.any():
        lesion_side = np.sign(float(x[lesion].mean()) - midline) or 1.0
        hemisphere_mask = (x - midline) * lesion_side < -MIDLINE_GAP_MM
        hemisphere = _hemisphere_name(-lesion_side, ijk_to_ras is not None)
    else:
        hemisphere_mask = np.abs(x - midline) >= MIDLINE_GAP_MM
        hemisphere = "both"
        warnings.append("No lesion labels and no leaky region found: NAWM was taken from both hemispheres.")

    candidates = brain & hemisphere_mask & (np.asarray(rcbv) > 0)
    candidates &= deeper_than(brain, spacing, edge_mm)
    candidates &= ~near_mask(lesion, spacing, margin_mm)
    if unusable is not None:
        candidates &= ~np.asarray(unusable, dtype=bool)
    if wm_probability is not None:
        white = candidates & (np.asarray(wm_probability, dtype=np.float64) >= WM_PROBABILITY)
    else:
        white = _white_matter_by_intensity(np.asarray(rcbv), np.asarray(baseline_image), candidates, brain)
    count = int(white.sum())
    if count < min_voxels:
        raise ValueError(
            f"Only {count} voxels of normal-appearing white matter were found automatically (at least "
            f"{min_voxels} are needed); give a NAWM mask."
        )
    return NAWMSelection(white, hemisphere, warnings)


def _hemisphere_name(side: float, has_geometry: bool) -> str:
    if not has_geometry:
        return "high-i" if side > 0 else "low-i"
    return "right" if side > 0 else "left"


def _white_matter_by_intensity(
    rcbv: np.ndarray, baseline_image: np.ndarray, candidates: np.ndarray, brain: np.ndarray
) -> np.ndarray:
    """Dark-at-baseline, low-rCBV candidates (step 4 of the module docstring)."""
    if not candidates.any():
        return candidates
    dark = baseline_image <= np.percentile(baseline_image[candidates], BASELINE_DARK_PERCENTILE)
    smoothed = _smooth_in_plane(rcbv, brain)
    low, high = np.percentile(smoothed[candidates], RCBV_BAND_PERCENTILES)
    return candidates & dark & (smoothed >= low) & (smoothed <= high)


def _smooth_in_plane(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """3x3 in-plane mean of ``values`` over brain voxels only (outside voxels do not dilute the edge)."""
    box = _bounding_box(brain, np.ones(3))
    inside = brain[box].astype(np.float32)
    total = ndimage.uniform_filter(np.where(brain[box], values[box], 0).astype(np.float32), size=(1, 3, 3),
                                   mode="constant")
    weight = ndimage.uniform_filter(inside, size=(1, 3, 3), mode="constant")
    smoothed = np.zeros(values.shape, np.float32)
    smoothed[box] = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    return smoothed


def nawm_divisors(
    rcbv: np.ndarray, nawm_mask: np.ndarray, per_slice: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Per-slice divisors (K,) for nCBV and the slices that fell back to the global NAWM mean.

    Without ``per_slice`` every slice gets the global mean rCBV of the NAWM. Raises ValueError if the NAWM
    mask is empty or its mean rCBV is not positive.
    """
    values = np.asarray(rcbv, dtype=np.float64)
    nawm = np.asarray(nawm_mask, dtype=bool)
    if nawm.shape != values.shape:
        raise ValueError(f"nawm_mask has shape {nawm.shape} but rcbv has shape {values.shape}.")
    if not nawm.any():
        raise ValueError("nawm_mask is empty (no voxel set).")
    global_mean = float(values[nawm].mean())
    if not global_mean > 0:
        raise ValueError(f"The mean rCBV in the NAWM is {global_mean:.4g}, not positive, so nCBV is undefined.")
    divisors = np.full(values.shape[0], global_mean)
    fallback: list[int] = []
    if per_slice:
        for k in range(values.shape[0]):
            in_slice = nawm[k]
            slice_mean = float(values[k][in_slice].mean()) if in_slice.sum() >= MIN_SLICE_NAWM_VOXELS else 0.0
            if slice_mean > 0:
                divisors[k] = slice_mean
            else:
                fallback.append(k)
    return divisors, fallback


def normalise_cbv(rcbv: np.ndarray, nawm_mask: np.ndarray, per_slice: bool = False) -> np.ndarray:
    """nCBV = rCBV / mean rCBV in NAWM (globally, or per slice along k with fallback), float32 (K, J, I)."""
    divisors, _ = nawm_divisors(rcbv, nawm_mask, per_slice)
    return (np.asarray(rcbv, dtype=np.float64) / divisors[:, None, None]).astype(np.float32)
