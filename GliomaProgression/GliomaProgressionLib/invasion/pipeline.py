"""One case's invasion probability map (seed 004: Yan et al. 2020, Sci Rep 10:9748).

Yan et al. compute radiomics features voxel by voxel in a local neighbourhood of each pre-operative map, and a
neural network gives every peritumoral voxel its probability of future progression: a heat map of where the tumour
is likely to invade. Here, for channels on one grid (``PreparedCase.channels``, the 1 mm CE-T1 reference grid, or
the grid the model was trained on):

1. **Peritumoral region** (``labels.peritumoral_region``): the non-enhancing FLAIR lesion (NEL) plus a shell of
   ``labels.MARGIN_MM`` (20 mm, the outer edge of the paper's non-progression shells) around the tumour core
   (enhancing tumour, necrosis, cavity), without the core; inside the brain when a brain mask is given.
2. **Intensity scale**: channels in arbitrary scanner units (CE-T1, FLAIR, any ``map_<name>``) are divided by the
   median of their positive voxels in the case's own normal-appearing brain next to the tumour (the 5-20 mm shells
   outside the lesion, inside the brain), so that first-order features mean the same across scanners; quantitative
   channels (nCBV, already normalised to white matter; ADC, MD, p, q in 10^-6 mm^2/s; FA) keep their values.
3. **Features**: ``invasion.features.local_feature_maps`` on each channel the model names, in its window radius and
   bin count, over the region; a feature column is ``<channel>:<feature>``.
4. **Probability**: the model's classifier on every region voxel; 0 outside the region. The label is the region's
   voxels at or above the model's threshold (0.5 unless the model says otherwise).

A channel the model needs and the case lacks, channels on different grids, non-finite values inside the region,
or a grid other than the model's: ``ValueError``, one sentence naming the input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from GliomaProgressionLib.invasion.labels import SHELL_MM, distance_mm, peritumoral_region, tumour_core

Progress = Callable[[float, str], None]
QUANTITATIVE_CHANNELS = ("ncbv", "adc", "fa", "md", "p", "q")  # physical units, or normalised already
REFERENCE_TISSUE = ("the case's normal-appearing brain 5-20 mm from the tumour core, outside the lesion (median of "
                    "the positive voxels), for channels in arbitrary units")
SPACING_TOLERANCE_MM = 0.01


class InvasionCancelled(RuntimeError):
    """The computation was cancelled by the caller."""


@dataclass
class InvasionMap:
    probability: np.ndarray  # float32 [k, j, i], P(progression) in the region, 0 elsewhere
    label: np.ndarray  # uint8, 1 where the probability reaches the model's threshold inside the region
    region: np.ndarray  # bool, the peritumoral region
    report: dict = field(default_factory=dict)


# --- inputs ---------------------------------------------------------------------------------------------------


def as_arrays(channels: dict, lesion, spacing_mm=None) -> tuple[dict[str, np.ndarray], np.ndarray, tuple]:
    """Channels and lesion (SimpleITK images, or arrays with ``spacing_mm`` in k j i order) as float32 / integer
    arrays on one grid, with its spacing (k, j, i)."""
    import SimpleITK as sitk

    if isinstance(lesion, sitk.Image):
        spacing = tuple(float(v) for v in lesion.GetSpacing()[::-1])
        lesion_array = sitk.GetArrayFromImage(lesion)
    else:
        if spacing_mm is None:
            raise ValueError("The voxel size (mm) is needed when the lesion is given as an array.")
        spacing = tuple(float(v) for v in spacing_mm)
        lesion_array = np.asarray(lesion)
    arrays = {}
    for name, channel in channels.items():
        array = sitk.GetArrayFromImage(channel) if isinstance(channel, sitk.Image) else np.asarray(channel)
        if array.shape != lesion_array.shape:
            raise ValueError(f"The {name} channel ({array.shape}) is not on the lesion's grid ({lesion_array.shape}).")
        if isinstance(channel, sitk.Image) and isinstance(lesion, sitk.Image) and not np.allclose(
                channel.GetSpacing(), lesion.GetSpacing(), atol=1e-4):
            raise ValueError(f"The {name} channel's voxel size {channel.GetSpacing()} is not the lesion's "
                             f"{lesion.GetSpacing()}.")
        arrays[name] = np.asarray(array, np.float32)
    return arrays, np.rint(lesion_array).astype(np.int16), spacing


def check_channels(available, needed) -> None:
    """Every channel the model names must be there: one sentence naming the missing ones."""
    missing = [name for name in needed if name not in available]
    if missing:
        have = ", ".join(sorted(available)) or "none"
        raise ValueError(f"The invasion model needs the {', '.join(missing)} channel"
                         f"{'s' if len(missing) > 1 else ''}, which the case does not have (it has {have}).")


def check_spacing(spacing, model_spacing_mm: float) -> None:
    """The features of a local window depend on the voxel size: the case must be on the model's grid."""
    if any(abs(v - model_spacing_mm) > SPACING_TOLERANCE_MM for v in spacing):
        shown = " x ".join(f"{v:g}" for v in spacing[::-1])
        raise ValueError(f"The channels are on a {shown} mm grid; the invasion model's features were computed on "
                         f"{model_spacing_mm:g} mm isotropic voxels.")


def check_finite(array: np.ndarray, region: np.ndarray, name: str) -> None:
    bad = int((~np.isfinite(array[region])).sum())
    if bad:
        raise ValueError(f"The {name} map has {bad} non-finite (NaN or infinite) voxel{'s' if bad > 1 else ''} in the "
                         "peritumoral region.")


def reference_tissue(lesion: np.ndarray, spacing) -> np.ndarray:
    """Normal-appearing brain next to the tumour: the 5-20 mm shells outside the lesion."""
    distance = distance_mm(tumour_core(lesion), spacing)
    return (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1]) & (lesion == 0)


def normalised(name: str, array: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """A channel in arbitrary units divided by its median in the reference tissue; quantitative ones as they are."""
    if name in QUANTITATIVE_CHANNELS:
        return array
    values = array[reference & np.isfinite(array) & (array > 0)]
    median = float(np.median(values)) if values.size else 0.0
    if not median > 0:
        raise ValueError(f"The {name} channel has no positive signal in the normal-appearing brain around the "
                         "tumour, which its intensities are scaled by.")
    return (array / median).astype(np.float32)


# --- features -------------------------------------------------------------------------------------------------


def region_features(arrays: dict[str, np.ndarray], lesion: np.ndarray, spacing, channels, features, radius: int,
                    bin_count: int, brain: np.ndarray | None = None, progress: Progress | None = None,
                    cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """(peritumoral region, feature matrix of its voxels in ``np.flatnonzero`` order, columns
    ``<channel>:<feature>`` for ``channels`` x ``features``)."""
    from GliomaProgressionLib.invasion.features import FeatureMapsCancelled, local_feature_maps

    check_channels(arrays, channels)
    region = peritumoral_region(lesion, spacing, brain)
    if not region.any():
        raise ValueError("The peritumoral region is empty: the tumour core has no NEL and no brain around it.")
    reference = reference_tissue(lesion, spacing) & (True if brain is None else brain)
    columns = []
    for number, name in enumerate(channels):
        stop_if_cancelled(cancel)
        check_finite(arrays[name], region, name)
        report = _sub_progress(progress, number / len(channels), (number + 1) / len(channels), name)
        try:
            maps = local_feature_maps(normalised(name, arrays[name], reference), region, spacing, radius=radius,
                                      bin_count=bin_count, features=tuple(features), progress=report, cancel=cancel)
        except FeatureMapsCancelled:
            # One exception for the callers: a cancel mid-channel means the same as one between channels.
            raise InvasionCancelled("The invasion map was cancelled.") from None
        for feature in features:
            if feature not in maps:
                raise ValueError(f"The local feature maps have no {feature!r}; the invasion model was trained with "
                                 "features this version does not compute.")
            columns.append(np.asarray(maps[feature], np.float32)[region])
    return region, np.stack(columns, axis=1)


def stop_if_cancelled(cancel) -> None:
    """``cancel``: a ``threading.Event`` (or a callable returning True) set to stop between steps."""
    if cancel is None:
        return
    stopped = cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())
    if stopped:
        raise InvasionCancelled("The invasion map was cancelled.")


def _sub_progress(progress: Progress | None, start: float, end: float, name: str) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(max(float(fraction), 0.0), 1.0),
                                              f"{name}: {message}")


# --- the map --------------------------------------------------------------------------------------------------


def invasion_probability(channels: dict, lesion, model, progress: Progress | None = None, cancel=None, *,
                         spacing_mm=None, brain=None) -> InvasionMap:
    """The probability of future progression of every peritumoral voxel, and its label at the model's threshold.

    ``channels``: name -> SimpleITK image or array, all on the lesion's grid (``PreparedCase.channels``);
    ``lesion``: BraTS 2024 labels; ``model``: an ``InvasionClassifier``; ``spacing_mm`` (k, j, i) for arrays;
    ``brain``: an optional brain mask the region is kept inside."""
    started = time.monotonic()
    report = progress or (lambda fraction, message: None)
    check_channels(channels, model.channels)
    arrays, labels, spacing = as_arrays({name: channels[name] for name in model.channels}, lesion, spacing_mm)
    check_spacing(spacing, model.spacing_mm)
    brain_mask = None if brain is None else _mask_array(brain, labels.shape)
    report(0.0, "Computing the local feature maps")
    region, matrix = region_features(arrays, labels, spacing, model.channels, model.features, model.radius,
                                     model.bin_count, brain_mask, _sub_progress(progress, 0.0, 0.9, "features"),
                                     cancel)
    stop_if_cancelled(cancel)
    report(0.9, "Classifying the peritumoral voxels")
    probability = np.zeros(labels.shape, np.float32)
    probability[region] = model.probability(matrix)
    label = ((probability >= model.threshold) & region).astype(np.uint8)
    undefined = int(np.isnan(matrix).any(axis=1).sum())
    report(1.0, "Invasion map ready")
    return InvasionMap(probability, label, region, {
        "region_voxels": int(region.sum()), "label_voxels": int(label.sum()),
        "voxel_volume_ml": float(np.prod(spacing)) / 1000.0,
        "mean_probability": float(probability[region].mean()), "threshold": float(model.threshold),
        "voxels_with_undefined_features": undefined, "channels": list(model.channels),
        "features_per_channel": len(model.features), "radius_voxels": model.radius, "bin_count": model.bin_count,
        "spacing_mm": list(spacing[::-1]), "reference_tissue": REFERENCE_TISSUE,
        "time_s": round(time.monotonic() - started, 3)})


def _mask_array(brain, shape) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(brain) if isinstance(brain, sitk.Image) else np.asarray(brain)
    if array.shape != shape:
        raise ValueError(f"The brain mask ({array.shape}) is not on the lesion's grid ({shape}).")
    return array > 0
