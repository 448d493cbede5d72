"""Automatic brain mask from a DSC baseline image (DESIGN.md section 4, step 6).

Rule: Otsu's two-class threshold of the image histogram separates head from background; a one-voxel
opening detaches thin bridges (ghosts, noise specks); the largest 6-connected component is kept; holes
are filled in 3D and then slice by slice (a ventricle touching the top slice is a hole open to the edge in
3D, but a closed one within its slice). A user mask replaces all of this (``validate_mask``).

Beyond the first and last slice the head is not known to end: a slab seldom covers the whole head, and
a 1- or 2-slice series is all edge. So morphology extends the image past those slices by repeating them
(``extend_slices``), not by background; in-plane, beyond the field of view is background. With one slice
the opening is then exactly the 2-D opening of that slice. (Treating beyond-the-slab as background eroded
every voxel of a 1- or 2-slice series away: "the automatic brain mask is empty".)

Otsu is implemented here in numpy (scipy has none); ``Testing/test_dsc_baseline.py`` checks it against
scikit-image's ``threshold_otsu``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OTSU_BINS = 256


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut maximising the between-class variance.

    Returns a value in the units of ``values``; voxels strictly above it form the bright class.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0 or not np.all(np.isfinite(data)):
        raise ValueError("otsu_threshold needs a non-empty array of finite values.")
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise ValueError("otsu_threshold needs an image with more than one intensity value.")
    counts, edges = np.histogram(data, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)
    weight_high = data.size - weight_low
    sum_low = np.cumsum(counts * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1.0)
    mean_high = (np.sum(counts * centres) - sum_low) / np.maximum(weight_high, 1.0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def brain_mask_from_baseline(baseline_image: np.ndarray) -> np.ndarray:
    """Boolean brain mask (K, J, I) from the mean pre-bolus image (signal units); see the module docstring.

    Raises ValueError if the image is not 3-D, not finite, flat, or leaves no foreground.
    """
    image = np.asarray(baseline_image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"baseline_image must be a 3-D image (K, J, I), got shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise ValueError("baseline_image contains NaN or infinite values.")
    if image.max() <= image.min():
        raise ValueError("baseline_image is flat (one intensity everywhere), so no brain can be found in it.")
    foreground = image > otsu_threshold(image)
    foreground = open_within_slab(foreground, ndimage.generate_binary_structure(3, 1))
    largest = largest_component(foreground)
    if not largest.any():
        raise ValueError("The automatic brain mask is empty: the baseline image has no bright connected region.")
    return fill_holes(largest)


def extend_slices(mask: np.ndarray, count: int) -> np.ndarray:
    """``mask`` with its first and last slices (array axis k) repeated ``count`` times beyond each end."""
    return np.pad(mask, ((count, count), (0, 0), (0, 0)), mode="edge")


def open_within_slab(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Binary opening with the image continued past its end slices as they are (module docstring).

    An opening reaches twice the structuring element's half-height along k (erosion, then dilation), so
    that many repeated slices make the result exact, as if the end slices continued for ever.
    """
    reach = 2 * (structure.shape[0] // 2)
    opened = ndimage.binary_opening(extend_slices(mask, reach), structure=structure, border_value=0)
    return opened[reach : reach + mask.shape[0]]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (all False if the mask is empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3-D, then within each slice along the first array axis (k).

    A hole is a background component that does not touch the array border (in 3-D), or the border of its
    slice (in-plane); labelling the background once per pass is much faster than iterated dilation.
    """
    filled = _fill_unbounded(mask, ndimage.generate_binary_structure(3, 1), axes=(0, 1, 2))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return _fill_unbounded(filled, in_plane, axes=(1, 2))


def _fill_unbounded(mask: np.ndarray, structure: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Set every background component that touches no array border along ``axes``."""
    labels, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, bool)
    for axis in axes:
        for index in (0, -1):
            outside[np.take(labels, index, axis=axis)] = True
    outside[0] = False  # label 0 is the mask itself, which stays set
    return ~outside[labels]


def validate_mask(mask: np.ndarray, spatial_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Return a user mask as bool, checking it matches ``spatial_shape`` and is not empty."""
    values = np.asarray(mask)
    if values.shape != tuple(spatial_shape):
        raise ValueError(f"{name} has shape {values.shape} but the DSC grid is {tuple(spatial_shape)}.")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    result = values != 0
    if not result.any():
        raise ValueError(f"{name} is empty (no voxel set).")
    return result
