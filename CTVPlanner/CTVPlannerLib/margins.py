"""Margins in millimetres on voxel grids whose spacing differs per axis."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check(mask: np.ndarray, spacing_kji) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    spacing = np.asarray(spacing_kji, dtype=float)
    if mask.ndim != 3:
        raise ValueError(f"The mask must be 3D, got {mask.ndim}D.")
    if spacing.shape != (3,) or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"The voxel spacing must be three positive numbers (k, j, i), got {spacing_kji}.")
    return mask.astype(bool), spacing


def distance_from_mask_mm(mask: np.ndarray, spacing_kji) -> np.ndarray:
    """Euclidean distance (mm) from every voxel centre to the nearest voxel centre of ``mask`` (0 inside)."""
    mask, spacing = _check(mask, spacing_kji)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


def grow_mm(mask: np.ndarray, spacing_kji, margin_mm: float, within: np.ndarray | None = None) -> np.ndarray:
    """Voxels whose centre lies within ``margin_mm`` of ``mask`` (exact Euclidean distance), clipped to ``within``.

    ``spacing_kji`` is the voxel size along the array axes (k, j, i), so margins stay isotropic in mm on
    anisotropic grids.
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"The margin must be zero or a positive number of mm, got {margin_mm}.")
    mask, spacing = _check(mask, spacing_kji)
    grown = distance_from_mask_mm(mask, spacing) <= margin_mm + 1e-6
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != mask.shape:
            raise ValueError(f"The clipping mask has shape {within.shape}, the target {mask.shape}.")
        grown &= within
    return grown
