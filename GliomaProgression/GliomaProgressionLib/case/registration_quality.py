"""Is a registration right? An edge-alignment score that does not share the optimised metric's blind spots.

Mattes mutual information is what the optimiser climbs, so it cannot judge its own result: on a real
skull-stripped case it preferred a pose 8 degrees and 12 mm off (-0.125 against -0.088 at the true pose), and
its absolute value differs between skull-stripped and whole-head data, so a fixed MI threshold both missed
wrong registrations and flagged right ones.

The score here compares where the two images have edges and which way they run: the normalised gradient
field (Haber and Modersitzki 2006), the squared cosine between the two images' intensity gradients, which is
1 where the edges are parallel (whatever the contrast: dark-to-bright in one series may be bright-to-dark in
the other) and 1/3 on average where they are unrelated. It is computed on a 2 mm grid inside the reference's
brain region, after smoothing both images by 2 mm, so noise and slice thickness matter little.

How high the score is at the right pose depends on the pair of series (noise, contrast, resolution), so the
verdict uses how much better the edges align at the found pose than at poses moved ``PROBE_SHIFT_MM`` away
along each axis: ``contrast = score(found) / mean(score(moved)) - 1``. At the right pose every move makes the
alignment worse (a clearly positive contrast); at a wrong pose some moves improve it (a contrast near zero or
below). The threshold comes from ``benchmarks/calibrate_registration_quality.py`` (docs/registration-quality.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

GRID_MM = 2.0
SMOOTHING_MM = 2.0
PROBE_SHIFT_MM = 6.0
# Calibrated by benchmarks/calibrate_registration_quality.py; see docs/registration-quality.md.
CONTRAST_THRESHOLD = 0.323
THRESHOLD_SOURCE = ("benchmarks/calibrate_registration_quality.py on synthetic phantoms (skull-stripped, with head "
                    "and pre-registered; FLAIR and DSC): midway between the lowest contrast of a correct "
                    "registration and the highest of a pose moved >= 5 mm or 5 degrees; docs/registration-quality.md")


@dataclass
class EdgeAlignmentScene:
    """Both images smoothed once, and the reference side of the score computed once, for scoring many poses."""

    grid: sitk.Image
    region: np.ndarray  # bool [k, j, i] on the grid: the reference brain region
    reference_gradient: np.ndarray  # [3, k, j, i]
    reference_epsilon: float
    moving_smoothed: sitk.Image
    moving_inside: sitk.Image  # 1 inside the moving series' field of view (float32)


def edge_alignment_scene(reference: sitk.Image, reference_region: sitk.Image, moving: sitk.Image) -> EdgeAlignmentScene:
    grid = _working_grid(reference)
    reference_on_grid = sitk.Resample(_smoothed(reference), grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                      sitk.sitkFloat32)
    region = sitk.GetArrayFromImage(sitk.Resample(reference_region, grid, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                  0, sitk.sitkUInt8)) > 0
    gradient = _gradient(reference_on_grid)
    inside = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    inside.CopyInformation(moving)
    return EdgeAlignmentScene(grid, region, gradient, _epsilon(gradient, region), _smoothed(moving), inside)


def edge_alignment(scene: EdgeAlignmentScene, transform: sitk.Transform) -> float:
    """Mean normalised-gradient-field alignment (0-1) over the reference brain region inside the moving series'
    field of view, with the moving series placed by ``transform`` (reference points to moving points)."""
    moving = sitk.Resample(scene.moving_smoothed, scene.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = sitk.Resample(scene.moving_inside, scene.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # Away from the field of view's edge by a voxel, where the zero padding would make an edge of its own.
    where = scene.region & (sitk.GetArrayViewFromImage(sitk.BinaryErode(inside > 0.999, [1, 1, 1])) > 0)
    if np.count_nonzero(where) < 100:
        return float("nan")
    gradient = _gradient(moving)
    a, b = scene.reference_gradient[:, where], gradient[:, where]
    epsilon_b = _epsilon(gradient, where)
    dot = np.sum(a * b, axis=0) ** 2
    norms = (np.sum(a * a, axis=0) + scene.reference_epsilon ** 2) * (np.sum(b * b, axis=0) + epsilon_b ** 2)
    return float(np.mean(dot / norms))


def alignment_contrast(scene: EdgeAlignmentScene, transform: sitk.Transform) -> tuple[float, float]:
    """(score at ``transform``, contrast against the six poses moved ``PROBE_SHIFT_MM`` along each axis)."""
    here = edge_alignment(scene, transform)
    moved = [edge_alignment(scene, _shifted(transform, axis, sign))
             for axis in range(3) for sign in (-1.0, 1.0)]
    moved = [value for value in moved if np.isfinite(value)]
    if not np.isfinite(here) or not moved or np.mean(moved) <= 0:
        return here, float("nan")
    return here, float(here / np.mean(moved) - 1.0)


def _shifted(transform: sitk.Transform, axis: int, sign: float) -> sitk.Transform:
    """``transform`` applied after a translation of the reference points (moving the series by the opposite)."""
    shift = sitk.TranslationTransform(3, [sign * PROBE_SHIFT_MM if i == axis else 0.0 for i in range(3)])
    return sitk.CompositeTransform([transform, shift])


def _working_grid(reference: sitk.Image) -> sitk.Image:
    spacing = np.array(reference.GetSpacing())
    size = np.maximum(np.round(np.array(reference.GetSize()) * spacing / GRID_MM), 1).astype(int)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    corner = np.array(reference.GetOrigin()) - direction @ (spacing / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing((GRID_MM,) * 3)
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(tuple(corner + direction @ np.full(3, GRID_MM / 2)))
    return grid


def _smoothed(image: sitk.Image) -> sitk.Image:
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), SMOOTHING_MM)


def _gradient(image: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    return np.stack(np.gradient(array, GRID_MM))


def _epsilon(gradient: np.ndarray, where: np.ndarray) -> float:
    """The noise floor of the gradient field: its median magnitude inside the region, so gradients weaker
    than typical ones count less (the usual choice of the NGF's edge parameter)."""
    magnitude = np.sqrt(np.sum(gradient[:, where] ** 2, axis=0))
    return float(np.median(magnitude)) if magnitude.size else 1.0
