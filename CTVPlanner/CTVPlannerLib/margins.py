"""Margins in millimetres on voxel grids whose spacing differs per axis: Euclidean and barrier-aware (geodesic).

Distances are measured between voxel centres, in mm, with the voxel spacing of each array axis (k, j, i), so a
margin stays isotropic in mm on anisotropic grids. Every computation works in a box around the seed that is
large enough to hold the margin: the result is the same as on the whole grid, only faster.

Geodesic margins: the distance travelled through passable tissue (brain minus barriers) from the seed, computed
by fast marching (``scikit-fmm``, second order). Fast marching was chosen over Dijkstra on the voxel graph
because a 26-neighbour graph overestimates straight-line distances by up to ~8 % in oblique directions (1.6 mm
of a 20 mm margin), while second-order fast marching stays within a fraction of a voxel of the exact distance in
free space. A true geodesic distance is never shorter than the straight-line one, so the result is taken as
``max(fast marching, Euclidean)``: this removes the discretisation error that would make it shorter, and makes a
geodesic CTV a subset of the Euclidean CTV of the same margin by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grid import check_3d

# Margins are compared with a small tolerance so that a voxel exactly at the margin (a common case on regular
# grids: 20 mm = 10 voxels of 2 mm) is inside despite floating-point rounding.
TOLERANCE_MM = 1e-6
# In the fast-marching set-up, seed voxels get this small negative level so that the zero level set (from which
# scikit-fmm measures) sits at the seed voxel centres rather than half-way to their neighbours.
_SEED_LEVEL = -1e-3


def _check(mask: np.ndarray, spacing_kji) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    spacing = np.asarray(spacing_kji, dtype=float)
    check_3d(mask.ndim, "The mask")
    if spacing.shape != (3,) or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"The voxel spacing must be three positive numbers (k, j, i), got {spacing_kji}.")
    return mask.astype(bool, copy=False), spacing


def _check_margin(margin_mm: float) -> float:
    if margin_mm is None or not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"The margin must be zero or a positive number of mm, got {margin_mm}.")
    return float(margin_mm)


def _check_same_shape(other: np.ndarray | None, shape: tuple, what: str) -> np.ndarray | None:
    if other is None:
        return None
    other = np.asarray(other, dtype=bool)
    if other.shape != shape:
        raise ValueError(f"The {what} has shape {other.shape}, the target {shape}.")
    return other


def bounding_box(mask: np.ndarray, spacing_kji, pad_mm: float) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding ``mask`` grown by ``pad_mm`` (plus one voxel), clipped to the array."""
    if not mask.any():
        return None
    box = []
    for axis, (n, step) in enumerate(zip(mask.shape, spacing_kji)):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        pad = int(np.ceil(pad_mm / step)) + 1
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + pad + 1, n)))
    return tuple(box)


@dataclass
class DistanceMap:
    """Distances (mm) from a seed, known inside ``box`` up to ``limit_mm``; infinite elsewhere."""

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice] | None
    distance: np.ndarray  # float32, the box's shape
    limit_mm: float

    def within(self, margin_mm: float) -> np.ndarray:
        """Voxels whose distance is at most ``margin_mm`` (which must not exceed the map's limit)."""
        margin_mm = _check_margin(margin_mm)
        if margin_mm > self.limit_mm + TOLERANCE_MM:
            raise ValueError(f"A margin of {margin_mm:g} mm exceeds the {self.limit_mm:g} mm this map holds.")
        result = np.zeros(self.shape, bool)
        if self.box is not None:
            result[self.box] = self.distance <= margin_mm + TOLERANCE_MM
        return result

    def full(self) -> np.ndarray:
        """The distances on the whole grid (mm; infinite where unknown or unreachable)."""
        result = np.full(self.shape, np.inf, np.float32)
        if self.box is not None:
            result[self.box] = self.distance
        return result


def euclidean_distance_map(mask: np.ndarray, spacing_kji, limit_mm: float) -> DistanceMap:
    """Exact Euclidean distance (mm, between voxel centres) from ``mask``, known up to ``limit_mm``."""
    mask, spacing = _check(mask, spacing_kji)
    limit_mm = _check_margin(limit_mm)
    box = bounding_box(mask, spacing, limit_mm)
    if box is None:
        return DistanceMap(mask.shape, None, np.zeros((0, 0, 0), np.float32), limit_mm)
    distance = ndimage.distance_transform_edt(~mask[box], sampling=spacing).astype(np.float32)
    return DistanceMap(mask.shape, box, distance, limit_mm)


def geodesic_distance_map(mask: np.ndarray, spacing_kji, limit_mm: float, passable: np.ndarray) -> DistanceMap:
    """Distance (mm) from ``mask`` travelled through ``passable`` voxels only, known up to ``limit_mm``.

    Voxels that are not passable (outside the brain, barriers) get an infinite distance; so do passable voxels
    that cannot be reached within the limit. Seed voxels are always passable.
    """
    import skfmm  # imported here: only geodesic margins need it (Slicer installs it on demand)

    mask, spacing = _check(mask, spacing_kji)
    limit_mm = _check_margin(limit_mm)
    passable = _check_same_shape(passable, mask.shape, "passable-tissue mask")
    euclidean = euclidean_distance_map(mask, spacing, limit_mm)
    if euclidean.box is None:
        return euclidean
    seed = mask[euclidean.box]
    open_ = passable[euclidean.box] | seed
    distance = np.full(seed.shape, np.inf, np.float32)
    if seed.all() or not (open_ & ~seed).any():
        distance[seed] = 0.0
    else:
        level = np.ma.MaskedArray(np.where(seed, _SEED_LEVEL, 1.0), mask=~open_)
        marched = skfmm.distance(level, dx=spacing, narrow=limit_mm + float(spacing.max()))
        # Beyond the narrow band and behind barriers scikit-fmm leaves values masked: unreachable here.
        marched = np.ma.filled(np.ma.masked_invalid(marched), np.inf).astype(np.float32)
        distance = np.where(seed, 0.0, np.maximum(marched, euclidean.distance)).astype(np.float32)
        distance[~open_] = np.inf
    return DistanceMap(mask.shape, euclidean.box, distance, limit_mm)


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
    margin_mm = _check_margin(margin_mm)
    mask, spacing = _check(mask, spacing_kji)
    within = _check_same_shape(within, mask.shape, "clipping mask")
    grown = euclidean_distance_map(mask, spacing, margin_mm).within(margin_mm)
    if within is not None:
        grown &= within
    return grown


def grow_geodesic_mm(mask: np.ndarray, spacing_kji, margin_mm: float, passable: np.ndarray) -> np.ndarray:
    """Voxels reachable from ``mask`` by a path of at most ``margin_mm`` through ``passable`` voxels (plus the
    seed itself). A subset of ``grow_mm`` with the same margin."""
    margin_mm = _check_margin(margin_mm)
    return geodesic_distance_map(mask, spacing_kji, margin_mm, passable).within(margin_mm)


def grow_reachable_mm(mask: np.ndarray, spacing_kji, margin_mm: float, passable: np.ndarray) -> np.ndarray:
    """Euclidean margin cut at barriers: voxels within ``margin_mm`` of ``mask`` (straight line) that are connected
    to it through passable voxels inside that margin (6-connectivity, so a one-voxel-thick barrier holds).

    A quick approximation of a barrier-aware margin, as a planner edits one by hand: it removes what lies behind a
    closed barrier, but a path around a barrier is not counted in the distance (``grow_geodesic_mm`` does that).
    """
    margin_mm = _check_margin(margin_mm)
    mask, spacing = _check(mask, spacing_kji)
    passable = _check_same_shape(passable, mask.shape, "passable-tissue mask")
    grown = euclidean_distance_map(mask, spacing, margin_mm)
    return connected_to(mask, grown.within(margin_mm) & (passable | mask), grown.box)


def connected_to(seed: np.ndarray, region: np.ndarray, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """The parts of ``region`` 6-connected to ``seed`` (looked for inside ``box`` when given: the caller knows
    ``region`` lies in it)."""
    result = np.zeros(region.shape, bool)
    if box is None:
        if not seed.any():
            return result
        box = (slice(None),) * 3
    labels, _ = ndimage.label(region[box])
    keep = np.unique(labels[seed[box] & region[box]])
    result[box] = np.isin(labels, keep[keep > 0])
    return result
