"""Voxel-grid geometry for the planner: spacing, orthogonality and physical coordinates of a grid given by its
4x4 IJK-to-RAS matrix, with arrays stored ``[k, j, i]`` as in Slicer.

This package may not import the extension's other packages, so the few conversions it needs live here; they
follow the same conventions as ``GliomaProgressionLib.case.geometry`` (RAS in the matrix, LPS only for DICOM).
"""

from __future__ import annotations

import numpy as np

_FLIP_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def spacing_kji(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Voxel size in mm along the array axes (k, j, i)."""
    return np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]


def check_3d(dimensions: int, what: str = "The image") -> None:
    """Refuse an image that is not 3-D. ``dimensions``: its number of axes; ``what`` names it in the sentence.

    The extension's glue (``GliomaProgressionLib.case.geometry.check_3d``) calls this too, so "must be 3-D"
    is one rule and one sentence everywhere.
    """
    if dimensions != 3:
        raise ValueError(f"{what} must be a 3D image, it is {dimensions}D.")


def check_grid(ijk_to_ras: np.ndarray, what: str = "The image") -> np.ndarray:
    """Check that a grid has positive spacing and orthogonal axes; return its spacing (k, j, i) in mm.

    Distance transforms take one spacing per axis, which is exact only when the axes are orthogonal; a sheared
    grid (CT gantry tilt) is refused rather than measured wrongly.
    """
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} has no valid 4x4 IJK-to-RAS matrix.")
    columns = matrix[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"{what} has a zero voxel size along one axis.")
    cosines = (columns / spacing).T @ (columns / spacing)
    if not np.allclose(cosines, np.eye(3), atol=1e-4):
        raise ValueError(f"{what} has a sheared voxel grid (non-orthogonal axes, e.g. gantry tilt); "
                         "resample it onto an orthogonal grid first.")
    return spacing[::-1]


def ras_coordinate(ijk_to_ras: np.ndarray, shape: tuple[int, int, int], axis: int) -> np.ndarray:
    """One RAS coordinate (axis 0 = R, 1 = A, 2 = S; mm) of every voxel centre, as a float32 array ``[k, j, i]``.

    Built from three broadcast terms rather than a full index grid to keep memory at one array.
    """
    row = np.asarray(ijk_to_ras, dtype=float)[axis]
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    return (np.float32(row[0]) * i[None, None, :] + np.float32(row[1]) * j[None, :, None]
            + np.float32(row[2]) * k[:, None, None] + np.float32(row[3]))


def ijk_to_lps(ijk_to_ras: np.ndarray) -> np.ndarray:
    """The IJK-to-LPS matrix (DICOM patient coordinates) of a grid given in RAS."""
    return _FLIP_RAS_LPS @ np.asarray(ijk_to_ras, dtype=float)


def voxel_volume_ml(ijk_to_ras: np.ndarray) -> float:
    """Volume of one voxel in mL (cm^3)."""
    return float(abs(np.linalg.det(np.asarray(ijk_to_ras, dtype=float)[:3, :3]))) / 1000.0
