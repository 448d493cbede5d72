"""Simulated MR acquisition geometry: where a scanner puts its voxels, and what each voxel sees.

A series has its own grid (voxel size, slice tilt, field of view) and its own head pose (a small rigid motion
relative to the anatomy). A voxel's value is the mean of the anatomy over the voxel's extent: the anatomy is
resampled on a grid ``oversample`` times finer and block-averaged, so a 3 mm FLAIR slice or a 5 mm DSC slice
carries the partial-volume blur of a thick slice, not the look of a thin one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.geometry import lps_from_ras, ras_from_lps, subdivided_grid


@dataclass(frozen=True)
class SeriesProtocol:
    """Geometry of one simulated series."""

    name: str
    spacing: tuple[float, float, float]  # mm along i, j, k
    oversample: tuple[int, int, int]  # fine sub-voxels per voxel along i, j, k
    tilt_deg: float  # slice tilt about the left-right axis (an AC-PC-like angulation)
    margin_mm: float = 8.0


@dataclass(frozen=True)
class HeadPose:
    """Rigid head motion of one series, applied about ``center_lps``: rotation (deg) and translation (mm)."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    center_lps: tuple[float, float, float]

    def transform(self) -> sitk.Euler3DTransform:
        """Maps a point of the scanner (series) frame to the anatomy (template) frame, both LPS."""
        euler = sitk.Euler3DTransform()
        euler.SetCenter(self.center_lps)
        euler.SetRotation(*np.deg2rad(self.rotation_deg))
        euler.SetTranslation(self.translation_mm)
        return euler

    def matrix_ras(self) -> np.ndarray:
        """The same mapping as a 4x4 RAS matrix: template RAS = M @ series RAS."""
        euler = self.transform()
        rotation = np.array(euler.GetMatrix()).reshape(3, 3)
        center = np.array(euler.GetCenter())
        lps = np.eye(4)
        lps[:3, :3] = rotation
        lps[:3, 3] = center + np.array(euler.GetTranslation()) - rotation @ center
        # RAS in -> LPS -> motion -> LPS -> RAS out.
        return ras_from_lps(lps) @ lps_from_ras(np.eye(4))


def random_pose(rng: np.random.Generator, center_lps, max_rotation_deg: float, max_translation_mm: float) -> HeadPose:
    return HeadPose(
        rotation_deg=tuple(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),
        translation_mm=tuple(rng.uniform(-max_translation_mm, max_translation_mm, 3)),
        center_lps=tuple(float(c) for c in center_lps),
    )


def _tilted_axial_direction(tilt_deg: float) -> np.ndarray:
    """Direction cosines (LPS, columns = i, j, k axes) of an axial stack tilted about the left-right axis."""
    t = np.deg2rad(tilt_deg)
    # Untilted, i runs to patient left, j to posterior, k to superior: axial slices as scanners store them.
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _corners(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical (LPS) corners of the bounding box of a mask ``[k, j, i]`` on ``image``'s grid."""
    nonzero = np.argwhere(mask)
    low, high = nonzero.min(axis=0)[::-1], nonzero.max(axis=0)[::-1]  # as (i, j, k)
    corners = [(x, y, z) for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])


def series_grid(protocol: SeriesProtocol, pose: HeadPose, anatomy: sitk.Image, brain: np.ndarray) -> sitk.Image:
    """An empty image with the series' grid, covering the brain (plus a margin) as the scanner sees it."""
    direction = _tilted_axial_direction(protocol.tilt_deg)
    to_scanner = pose.transform().GetInverse()
    corners = np.array([to_scanner.TransformPoint(tuple(p)) for p in _corners(anatomy, brain)])
    in_grid_axes = corners @ direction  # coordinates along the grid's i, j, k axes
    low = in_grid_axes.min(axis=0) - protocol.margin_mm
    high = in_grid_axes.max(axis=0) + protocol.margin_mm
    spacing = np.array(protocol.spacing, dtype=float)
    size = np.ceil((high - low) / spacing).astype(int) + 1
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(tuple(spacing))
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(direction @ low))
    return grid


def _block_mean(array: np.ndarray, oversample: tuple[int, int, int]) -> np.ndarray:
    oi, oj, ok = oversample
    k, j, i = (array.shape[0] // ok, array.shape[1] // oj, array.shape[2] // oi)
    return array.reshape(k, ok, j, oj, i, oi).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def acquire(anatomy: sitk.Image, grid: sitk.Image, pose: HeadPose, oversample: tuple[int, int, int]) -> np.ndarray:
    """Voxel means ``[k, j, i]`` of a continuous anatomy map over the voxels of ``grid`` seen through ``pose``."""
    fine = subdivided_grid(grid, oversample)
    resampled = sitk.Resample(anatomy, fine, pose.transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _block_mean(sitk.GetArrayViewFromImage(resampled), oversample)


def acquire_labels(labels: sitk.Image, grid: sitk.Image, pose: HeadPose) -> np.ndarray:
    """Label of the anatomy at each voxel centre (nearest neighbour): labels stay labels, nested sets stay nested."""
    resampled = sitk.Resample(labels, grid, pose.transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled)
