"""The one place where image geometry changes convention.

Arrays are stored as Slicer stores them: numpy ``[k, j, i]`` (time first for 4D: ``[t, k, j, i]``), with a
4x4 IJK-to-RAS matrix kept beside them. SimpleITK images (and the NIfTI/NRRD files it reads) are LPS.
Every conversion goes through exactly one helper per direction:

- ``ras_from_lps`` / ``lps_from_ras`` for points and 4x4 matrices,
- ``ras_from_ijk`` / ``ijk_from_ras`` for index <-> physical points,
- ``volume_from_sitk`` / ``sitk_from_volume`` for images.

``same_grid`` and ``check_3d`` are the extension's one "same grid?" and one "must be 3-D" check;
``check_voxel_size`` and ``check_voxel_grid`` the one "is this a voxel grid?" check of every image read;
``subdivided_grid`` the one grid of sub-voxels (partial volume: the phantom's acquisition, the lesion by volume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from CTVPlannerLib.grid import check_3d as _check_dimensions

_FLIP_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A voxel array ``[k, j, i]`` (or ``[t, k, j, i]``) and the IJK-to-RAS matrix of its spatial grid."""

    array: np.ndarray
    ijk_to_ras: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[-3:])


def _as_homogeneous(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    return np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)


def ras_from_lps(x: np.ndarray) -> np.ndarray:
    """Convert LPS points (``[..., 3]``) or a 4x4 matrix whose output is LPS to RAS."""
    x = np.asarray(x, dtype=float)
    if x.shape == (4, 4):
        return _FLIP_LPS_RAS @ x
    return x * _FLIP_LPS_RAS.diagonal()[:3]


def lps_from_ras(x: np.ndarray) -> np.ndarray:
    """Convert RAS points (``[..., 3]``) or a 4x4 matrix whose output is RAS to LPS."""
    # The flip is its own inverse; a separate name keeps every call site explicit about its direction.
    return ras_from_lps(x)


def ras_from_ijk(ijk: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Physical RAS position (mm) of continuous voxel indices ``[..., (i, j, k)]``."""
    return (_as_homogeneous(ijk) @ np.asarray(ijk_to_ras, dtype=float).T)[..., :3]


def ijk_from_ras(ras: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Continuous voxel indices ``[..., (i, j, k)]`` of RAS positions (mm)."""
    ras_to_ijk = np.linalg.inv(np.asarray(ijk_to_ras, dtype=float))
    return (_as_homogeneous(ras) @ ras_to_ijk.T)[..., :3]


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """IJK-to-RAS matrix of the spatial (first three) axes of a SimpleITK image."""
    dimension = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dimension, dimension)[:3, :3]
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing()[:3])
    ijk_to_lps[:3, 3] = image.GetOrigin()[:3]
    return ras_from_lps(ijk_to_lps)


def _sitk_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    ijk_to_lps = lps_from_ras(np.asarray(ijk_to_ras, dtype=float))
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("The IJK-to-RAS matrix has a zero-length axis; it does not describe a voxel grid.")
    direction = columns / spacing
    return tuple(spacing), tuple(ijk_to_lps[:3, 3]), tuple(direction.ravel())


def volume_from_sitk(image: sitk.Image) -> Volume:
    """Array ``[k, j, i]`` (``[t, k, j, i]`` for 4D) and IJK-to-RAS of a SimpleITK image (a copy)."""
    if image.GetDimension() not in (3, 4):
        raise ValueError(f"Expected a 3D or 4D image, got {image.GetDimension()}D.")
    return Volume(sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image))


def sitk_from_volume(volume: Volume, time_spacing: float = 1.0) -> sitk.Image:
    """SimpleITK image (LPS) of a volume; a 4D array ``[t, k, j, i]`` becomes a 4D image."""
    array = np.asarray(volume.array)
    spacing, origin, direction = _sitk_geometry_from_ijk_to_ras(volume.ijk_to_ras)
    if array.ndim == 3:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        return image
    if array.ndim == 4:
        frames = [sitk_from_volume(Volume(frame, volume.ijk_to_ras)) for frame in array]
        return sitk.JoinSeries(frames, 0.0, float(time_spacing))
    raise ValueError(f"Expected a 3D or 4D array, got {array.ndim}D.")


def same_grid(a: np.ndarray, b: np.ndarray, shape_a: tuple, shape_b: tuple, tolerance_mm: float = 1e-3) -> bool:
    """True when two voxel grids (IJK-to-RAS and spatial shape) coincide within a tolerance.

    The one "same grid?" rule of the extension; shapes may be array shapes (k, j, i) or SimpleITK sizes
    (i, j, k), as long as both are the same kind.
    """
    return tuple(shape_a) == tuple(shape_b) and np.allclose(a, b, atol=tolerance_mm)


def check_3d(image: sitk.Image | Volume | np.ndarray, what: str) -> None:
    """Refuse anything but a 3-D image (``what`` names it: "The lesion lesion.nii.gz").

    The rule and its sentence are CTVPlannerLib's (``grid.check_3d``), which cannot import this package.
    """
    if isinstance(image, sitk.Image):
        dimensions = image.GetDimension()
    else:
        dimensions = np.ndim(image.array if isinstance(image, Volume) else image)
    _check_dimensions(dimensions, what)


# Direction cosines are stored with a few decimals (DICOM) or in float32 (NIfTI): axes this close to right
# angles are orthogonal. The planner's grid check (CTVPlannerLib.grid.check_grid) uses the same tolerance.
ORTHOGONAL_TOLERANCE = 1e-4


def check_voxel_size(spacing, what: str) -> None:
    """Refuse a voxel size that is zero, negative or not a number (``what``: "The CE-T1 file t1c.nii.gz").

    Readers do not refuse them: the NIfTI library takes such a size for 1 mm and MetaImage flips the axis, so the
    image lands elsewhere and later checks blame the lesion or the overlap.
    """
    spacing = [float(value) for value in spacing]
    if not all(np.isfinite(value) and value > 0 for value in spacing):
        sizes = " x ".join(f"{value:g}" for value in spacing)
        raise ValueError(f"{what} has a voxel size of {sizes} mm; every voxel size must be a positive number.")


def check_voxel_grid(image: sitk.Image, what: str) -> None:
    """Refuse an image whose spatial voxel size is not positive or whose axes are not at right angles.

    Only the first three axes are spatial (a DSC series' fourth is time, whose spacing may be unknown).
    """
    spatial = min(image.GetDimension(), 3)
    check_voxel_size(image.GetSpacing()[:spatial], what)
    dimension = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dimension, dimension)[:spatial, :spatial]
    if not np.allclose(direction.T @ direction, np.eye(spatial), atol=ORTHOGONAL_TOLERANCE):
        raise ValueError(f"{what} has a sheared voxel grid (its axes are not at right angles, e.g. gantry tilt); "
                         "resample it onto an orthogonal grid first.")


def subdivided_grid(grid: sitk.Image, factors, pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
    """``grid`` with each voxel split into ``factors`` (i, j, k) whole sub-voxels, each block centred on the voxel
    it makes up, so that a block's mean (or majority) is that voxel's partial-volume value."""
    factors = np.array(factors, dtype=float)
    spacing = np.array(grid.GetSpacing()) / factors
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    origin = np.array(grid.GetOrigin()) - direction @ ((factors - 1) / 2 * spacing)
    fine = sitk.Image([int(s * f) for s, f in zip(grid.GetSize(), factors)], pixel_id)
    fine.SetSpacing(tuple(float(v) for v in spacing))
    fine.SetDirection(grid.GetDirection())
    fine.SetOrigin(tuple(float(v) for v in origin))
    return fine
