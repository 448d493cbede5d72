"""Rigid registration of a patient's series onto the CE-T1 reference grid (seed 000's preprocessing).

CE-T1 resampled to 1 mm isotropic voxels (linear) is the reference grid. FLAIR, and the DSC series through
its baseline image, are registered to it rigidly with Mattes mutual information (multi-resolution,
SimpleITK, within both brains, from more than one start), and the result is judged by an independent
edge-alignment measure (``registration_quality``) that also keeps the series where it was when no optimised
pose aligns better; maps computed on the DSC grid (nCBV) follow the DSC transform. Lesion labels are resampled
with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.brain_region import brain_region
from GliomaProgressionLib.case.files import check_signal, itk_reason
from GliomaProgressionLib.case.geometry import check_3d, lps_from_ras, ras_from_lps
from GliomaProgressionLib.case.registration_quality import (CONTRAST_THRESHOLD, THRESHOLD_SOURCE, EdgeAlignmentScene,
                                                            alignment_contrast, edge_alignment, edge_alignment_scene)

# A series with fewer voxels than this along an axis (a thin DSC slab) cannot constrain a rigid pose, and the
# smoothing of the multi-resolution levels needs four.
MIN_SLICES = 4
# Candidates whose starting poses are closer than this (mm) lie in one basin: optimising both buys nothing.
SAME_START_MM = 2.0
# The multi-resolution schedule: shrink factors and Gaussian smoothing (mm) per level.
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (2.0, 1.0, 0.0)
# Metric samples in the fixed brain region at full resolution; random (seeded), so the cost does not grow with
# the grid.
METRIC_SAMPLES = 50_000
# The reference is cut to its brain region plus this margin (mm): room for interpolation and smoothing.
CROP_MARGIN_MM = 10.0
# Poses whose edge alignment differ by less than this are equally good by it; MI decides between them.
ALIGNMENT_TIE = 0.01
# Poses whose MI differ by less than this are equally good by MI too: the first in the order identity, from
# identity, from centres of mass wins, so that two starts converging to one pose (they differ by hundredths of a
# mm) cannot flip the choice on a rounding of the input (a DICOM twin of a NIfTI series), and an aligned input
# stays put.
MI_TIE = 0.002


@dataclass
class Candidate:
    """One pose the registration considered, scored by the optimised metric and the independent measure."""

    name: str
    transform: sitk.Euler3DTransform  # series (fixed) points to reference points, as optimised
    mattes_mi: float
    edge_alignment: float
    iterations: int = 0


@dataclass
class RigidRegistration:
    """A rigid transform from reference (CE-T1) physical points to moving-series physical points (LPS)."""

    transform: sitk.Transform
    final_metric: float
    iterations: int
    warnings: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)

    def matrix_ras_reference_from_moving(self) -> np.ndarray:
        """4x4 RAS matrix mapping a moving-series point onto the reference: reference RAS = M @ moving RAS."""
        euler = sitk.Euler3DTransform(self.transform)
        rotation = np.array(euler.GetMatrix()).reshape(3, 3)
        centre = np.array(euler.GetCenter())
        reference_to_moving = np.eye(4)
        reference_to_moving[:3, :3] = rotation
        reference_to_moving[:3, 3] = centre + np.array(euler.GetTranslation()) - rotation @ centre
        return np.linalg.inv(ras_from_lps(reference_to_moving) @ lps_from_ras(np.eye(4)))

    def summary(self) -> dict:
        return {"final_mattes_mi": round(self.final_metric, 5), "iterations": self.iterations,
                "ras_reference_from_moving": self.matrix_ras_reference_from_moving().round(5).tolist(),
                "quality": self.quality, "warnings": list(self.warnings)}


def isotropic_reference(image: sitk.Image, spacing_mm: float = 1.0) -> sitk.Image:
    """The image resampled (linear) to isotropic voxels, same orientation and extent: the reference grid."""
    check_3d(image, "The reference image")
    check_signal(image, "The CE-T1")  # a blank reference leaves nothing to register onto
    old_spacing = np.array(image.GetSpacing())
    size = np.maximum(np.round(np.array(image.GetSize()) * old_spacing / spacing_mm), 1).astype(int)
    # Keep the first voxel's corner where it was, so the new grid covers the same field of view.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    corner = np.array(image.GetOrigin()) - direction @ (old_spacing / 2)
    origin = corner + direction @ (np.full(3, spacing_mm) / 2)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), [int(s) for s in size], sitk.Transform(),
                         sitk.sitkLinear, tuple(origin), (spacing_mm,) * 3, image.GetDirection(), 0.0,
                         sitk.sitkFloat32)


def check_overlap(reference: sitk.Image, moving: sitk.Image, what: str) -> None:
    """Refuse series whose fields of view do not overlap in scanner space (not the same patient position)."""
    def bounds(image):
        size = np.array(image.GetSize()) - 1
        corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                   for corner in np.array(np.meshgrid(*[[0, s] for s in size])).T.reshape(-1, 3)]
        return np.min(corners, axis=0), np.max(corners, axis=0)

    low_a, high_a = bounds(reference)
    low_b, high_b = bounds(moving)
    overlap = np.minimum(high_a, high_b) - np.maximum(low_a, low_b)
    if np.any(overlap <= 0):
        raise ValueError(f"The {what} does not overlap the CE-T1 in space; they cannot be from the same session.")


def register_rigid(reference: sitk.Image, moving: sitk.Image, what: str = "series",
                   seed: int = 1) -> RigidRegistration:
    """Rigidly register ``moving`` onto ``reference``, never ending worse than leaving it where it is.

    Mattes MI is optimised within both images' brain regions (``brain_region``: scalp and background do not
    drive it) from two starts, the scanner's own coordinates (identity) and the brains' centres of mass
    aligned, each over three resolution levels. The optimised poses and identity itself are then ranked by an
    independent measure, edge alignment (``registration_quality``), because MI can prefer a wrong pose; MI
    breaks ties. The result warns only when the edge-alignment contrast says the registration is wrong.
    Deterministic (seeded sampling).

    The optimisation runs with the series as the fixed image and the 1 mm reference as the moving one, and
    the result is inverted: sampling the coarse, thick-slice grid (DSC, FLAIR) and interpolating the fine
    one is what converges (measured on the phantom: 0.1-0.3 mm error this way round; the other way the
    optimiser wandered ~10 mm off on DSC).
    """
    check_overlap(reference, moving, what)
    check_signal(moving, f"The {what}")  # ITK would fail deep inside ("Total Mass of the image was zero")
    try:
        return _registered(reference, moving, what, seed)
    except RuntimeError as error:  # ITK's text is for its developers; the user gets the series and the reason
        raise ValueError(f"The {what} could not be registered to the CE-T1 ({itk_reason(error)}).") from None


def _registered(reference: sitk.Image, moving: sitk.Image, what: str, seed: int) -> RigidRegistration:
    fixed = sitk.Cast(moving, sitk.sitkFloat32)
    floating = sitk.Cast(reference, sitk.sitkFloat32)
    fixed_region, floating_region = brain_region(fixed), brain_region(floating)
    if min(fixed.GetSize()) < MIN_SLICES:
        identity_mi = _mattes(fixed, floating, fixed_region.mask, floating_region.mask, _identity(fixed), seed)
        return _placed_by_scanner(fixed, what, identity_mi)
    floating, floating_mask = _cropped_to(floating, floating_region.mask, CROP_MARGIN_MM)
    scene = edge_alignment_scene(floating, floating_mask, fixed)
    candidates = [Candidate("identity", _identity(fixed), 0.0, 0.0)]
    for name, start in _starts(fixed, floating, fixed_region.mask, floating_mask):
        candidates.append(_optimise(name, fixed, floating, fixed_region.mask, floating_mask, start, seed))
    for candidate in candidates:
        # One evaluation for all, on one seeded sample set: the optimiser's own last value is not comparable.
        candidate.mattes_mi = _mattes(fixed, floating, fixed_region.mask, floating_mask, candidate.transform, seed)
        candidate.edge_alignment = edge_alignment(scene, candidate.transform.GetInverse())
    chosen = _best(candidates)
    reference_to_series = sitk.Euler3DTransform(chosen.transform.GetInverse())
    contrast = alignment_contrast(scene, reference_to_series)[1]
    quality = _quality_summary(chosen, candidates, contrast, fixed_region.source, floating_region.source)
    return RigidRegistration(reference_to_series, chosen.mattes_mi, chosen.iterations, _warnings(what, contrast),
                             quality)


def _placed_by_scanner(fixed: sitk.Image, what: str, mattes_mi: float) -> RigidRegistration:
    """A slab too thin to register: identity (series of one session share scanner coordinates), said so."""
    slices = min(fixed.GetSize())
    quality = {"measure": "none: the series is too thin to register or judge", "edge_alignment_contrast": None,
               "threshold": CONTRAST_THRESHOLD, "threshold_source": THRESHOLD_SOURCE, "verdict": "unknown",
               "chosen": "identity", "candidates": {}, "brain_region": {}}
    warning = (f"The {what} series has {slices} slice{'s' if slices > 1 else ''}, too few to register: it is placed "
               "by the scanner's coordinates; check the overlay.")
    return RigidRegistration(sitk.Euler3DTransform(_identity(fixed).GetInverse()), mattes_mi, 0, [warning], quality)


def _warnings(what: str, contrast: float) -> list[str]:
    if not np.isfinite(contrast):
        return [f"The {what} registration could not be judged (too little of the series overlaps the brain for "
                "the edge-alignment measure); check the overlay."]
    if contrast < CONTRAST_THRESHOLD:
        return [f"The {what} registration looks wrong (edge-alignment contrast {contrast:.3f} < "
                f"{CONTRAST_THRESHOLD}, calibrated on phantoms); check the overlay."]
    return []


def alignment_scene(reference: sitk.Image, moving: sitk.Image) -> EdgeAlignmentScene:
    """The scene ``register_rigid`` scores poses in, for calibration and tests: with ``alignment_contrast(scene,
    reference_to_series)`` it gives the contrast a registration ending at that pose would report."""
    floating, floating_mask = _cropped_to(sitk.Cast(reference, sitk.sitkFloat32), brain_region(reference).mask,
                                          CROP_MARGIN_MM)
    return edge_alignment_scene(floating, floating_mask, sitk.Cast(moving, sitk.sitkFloat32))


def moved_series(image: sitk.Image, ras_motion: np.ndarray) -> sitk.Image:
    """``image`` with its header moved by the rigid 4x4 RAS ``ras_motion`` (each voxel's point p becomes
    motion @ p): a deliberate misalignment for calibration and tests. A registration of the moved series should
    find ``ras_reference_from_moving @ inv(ras_motion)``."""
    flip = ras_from_lps(np.eye(4))
    motion = flip @ np.asarray(ras_motion, float) @ flip
    moved = sitk.Image(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    moved.SetDirection(tuple((motion[:3, :3] @ direction).ravel()))
    moved.SetOrigin(tuple(motion[:3, :3] @ np.array(image.GetOrigin()) + motion[:3, 3]))
    return moved


def transform_from_ras_matrix(ras_reference_from_moving: np.ndarray) -> sitk.Euler3DTransform:
    """The reference-to-series transform (LPS, as ``RigidRegistration.transform``) of a 4x4 RAS matrix that maps
    series points onto the reference (the inverse of ``matrix_ras_reference_from_moving``)."""
    flip = ras_from_lps(np.eye(4))  # both the points in and the points out change convention
    reference_to_moving = lps_from_ras(np.linalg.inv(np.asarray(ras_reference_from_moving, float))) @ flip
    transform = sitk.Euler3DTransform()
    transform.SetMatrix(tuple(reference_to_moving[:3, :3].ravel()), 1e-4)
    transform.SetTranslation(tuple(reference_to_moving[:3, 3]))
    return transform


def _identity(fixed: sitk.Image) -> sitk.Euler3DTransform:
    """Identity rotating about the series' centre (the optimiser's rotations are then about the head)."""
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    return identity


def _starts(fixed, floating, fixed_mask, floating_mask) -> list[tuple[str, sitk.Euler3DTransform]]:
    """Identity (series of one session share scanner coordinates) and the brains' centres of mass aligned
    (for series that were moved or re-centred), unless the two starts are the same within ``SAME_START_MM``."""
    starts = [("from identity", _identity(fixed))]
    moments = sitk.CenteredTransformInitializer(_masked(fixed, fixed_mask), _masked(floating, floating_mask),
                                                sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    moments = sitk.Euler3DTransform(moments)
    if np.linalg.norm(moments.GetTranslation()) >= SAME_START_MM:
        starts.append(("from centres of mass", moments))
    return starts


def _masked(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    return sitk.Mask(image, mask)


def _configured_method(fixed, floating, fixed_mask, floating_mask, seed: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricMovingMask(floating_mask)
    inside = max(int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))), 1)
    if inside > METRIC_SAMPLES:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(METRIC_SAMPLES / inside, seed)  # the sampler keeps points in the mask
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients at the samples only: a gradient image of the whole 1 mm reference at every level cost more
    # than the optimisation itself.
    method.MetricUseMovingImageGradientFilterOff()
    method.MetricUseFixedImageGradientFilterOff()
    return method


def _optimise(name: str, fixed, floating, fixed_mask, floating_mask, start: sitk.Euler3DTransform,
              seed: int) -> Candidate:
    method = _configured_method(fixed, floating, fixed_mask, floating_mask, seed)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=5e-3, numberOfIterations=200,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
    found = _euler(method.Execute(fixed, floating))
    return Candidate(name, found, 0.0, 0.0, int(method.GetOptimizerIteration()))


def _mattes(fixed, floating, fixed_mask, floating_mask, transform: sitk.Transform, seed: int) -> float:
    """Mattes MI of one pose at full resolution."""
    method = _configured_method(fixed, floating, fixed_mask, floating_mask, seed)
    method.SetInitialTransform(sitk.Euler3DTransform(transform))
    return float(method.MetricEvaluate(fixed, floating))


def _cropped_to(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """``image`` and ``mask`` cut to the mask's bounding box plus a margin: outside the moving mask nothing
    counts, and the metric's gradient image of a whole 1 mm head is most of its cost."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask)
    if not statistics.HasLabel(1):
        return image, mask
    box = np.array(statistics.GetBoundingBox(1)).reshape(2, 3)  # start, size (index order x, y, z)
    margin = np.ceil(margin_mm / np.array(image.GetSpacing())).astype(int)
    start = np.maximum(box[0] - margin, 0)
    stop = np.minimum(box[0] + box[1] + margin, np.array(image.GetSize()))
    size = [int(n) for n in stop - start]
    start = [int(n) for n in start]
    return sitk.RegionOfInterest(image, size, start), sitk.RegionOfInterest(mask, size, start)


def _best(candidates: list[Candidate]) -> Candidate:
    """The best edge alignment; among poses within ``ALIGNMENT_TIE`` of it, the lowest (best) MI, the earliest
    candidate among those within ``MI_TIE`` of that."""
    finite = [c for c in candidates if np.isfinite(c.edge_alignment)] or candidates
    top = max(c.edge_alignment for c in finite) if any(np.isfinite(c.edge_alignment) for c in finite) else None
    close = [c for c in finite if top is None or c.edge_alignment >= top - ALIGNMENT_TIE]
    lowest = min(c.mattes_mi for c in close)
    return next(c for c in close if c.mattes_mi <= lowest + MI_TIE)


def _quality_summary(chosen: Candidate, candidates: list[Candidate], contrast: float, fixed_source: str,
                     reference_source: str) -> dict:
    return {
        "measure": "edge-alignment contrast (normalised gradient fields, brain region, 2 mm)",
        "edge_alignment_contrast": _rounded(contrast),
        "threshold": CONTRAST_THRESHOLD,
        "threshold_source": THRESHOLD_SOURCE,
        "verdict": "right" if contrast >= CONTRAST_THRESHOLD else "wrong" if np.isfinite(contrast) else "unknown",
        "chosen": chosen.name,
        "candidates": {c.name: {"mattes_mi": _rounded(c.mattes_mi), "edge_alignment": _rounded(c.edge_alignment)}
                       for c in candidates},
        "brain_region": {"series": fixed_source, "reference": reference_source},
    }


def _euler(transform: sitk.Transform) -> sitk.Euler3DTransform:
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        composite.FlattenTransform()
        if composite.GetNumberOfTransforms() != 1:
            raise ValueError("The registration did not end in a single rigid transform.")
        transform = composite.GetNthTransform(0)
    return sitk.Euler3DTransform(transform)


def _rounded(value: float) -> float | None:
    return round(float(value), 5) if np.isfinite(value) else None


def resample_onto(reference: sitk.Image, moving: sitk.Image, registration: RigidRegistration | None,
                  labels: bool = False) -> sitk.Image:
    """``moving`` on the reference grid through the registration (identity when None)."""
    transform = registration.transform if registration is not None else sitk.Transform()
    if labels:
        return sitk.Resample(moving, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def transform_error(registration: RigidRegistration, truth_ras_reference_from_moving: np.ndarray,
                    points_ras: np.ndarray) -> tuple[float, float]:
    """(largest displacement in mm over ``points_ras``, rotation angle in degrees) between the found and the
    true reference-from-moving transforms."""
    found = registration.matrix_ras_reference_from_moving()
    difference = np.linalg.inv(np.asarray(truth_ras_reference_from_moving)) @ found
    homogeneous = np.c_[points_ras, np.ones(len(points_ras))]
    displacement = np.linalg.norm((homogeneous @ difference.T)[:, :3] - points_ras, axis=1).max()
    angle = np.degrees(np.arccos(np.clip((np.trace(difference[:3, :3]) - 1) / 2, -1, 1)))
    return float(displacement), float(angle)
