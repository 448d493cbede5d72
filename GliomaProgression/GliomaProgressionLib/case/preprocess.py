"""Seed 000's preprocessing: every channel of the progression model on the 1 mm CE-T1 reference grid.

CE-T1 resampled to 1 mm (linear) is the reference. FLAIR is registered to it rigidly (Mattes MI within the
brains, judged by an independent edge-alignment measure; ``case/registration``), and each registration's
summary, quality measure and threshold included, goes into ``qc["registration"]``. The DSC
series is registered through its pre-bolus image; nCBV is computed on the DSC grid (with the lesion mapped
there through the inverse of that registration, so the white-matter reference avoids it) and then carried
onto the reference grid by the same registration. Lesion labels are resampled by nearest neighbour. Intensity
normalisation is left to nnU-Net (each model's plans say how).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD
from DSCPerfusionLib.pipeline import PerfusionOptions, PerfusionResult, compute_perfusion

from GliomaProgressionLib.case.channels import anisotropic_component, channel_modality, isotropic_component
from GliomaProgressionLib.case.geometry import Volume, check_3d, sitk_from_volume, subdivided_grid
from GliomaProgressionLib.case.registration import RigidRegistration, isotropic_reference, register_rigid, resample_onto

Progress = Callable[[float, str], None]
CHANNEL_ORDER = ("t1c", "flair", "ncbv")
NEL_LABEL = 2  # BraTS 2024 SNFH: the non-enhancing FLAIR lesion, already without enhancing tumour and necrosis
DSC_REGISTRATION_FRAMES = slice(1, 8)  # pre-bolus in any clinical protocol; frame 0 is not at steady state


@dataclass
class PreparedCase:
    """Channels, lesion and NEL on the reference grid, with what it took to get them there."""

    reference: sitk.Image
    channels: dict[str, sitk.Image]
    lesion: sitk.Image
    nel: sitk.Image
    registrations: dict[str, RigidRegistration]
    perfusion: PerfusionResult | None
    qc: dict = field(default_factory=dict)

    def channel_list(self, names=CHANNEL_ORDER) -> list[sitk.Image]:
        missing = [name for name in names if name not in self.channels]
        if missing:
            raise ValueError(f"The case has no {' or '.join(channel_modality(name) for name in missing)} channel "
                             f"({', '.join(missing)}).")
        return [self.channels[name] for name in names]


def dsc_registration_image(dsc: Volume) -> sitk.Image:
    """The mean of early (pre-bolus) frames: the DSC series' anatomy, used to register it."""
    frames = np.asarray(dsc.array)[DSC_REGISTRATION_FRAMES].astype(np.float32)
    return sitk_from_volume(Volume(frames.mean(axis=0), dsc.ijk_to_ras))


def lesion_on_dsc_grid(lesion: sitk.Image, dsc_grid: sitk.Image, dsc_registration: RigidRegistration) -> np.ndarray:
    """Lesion labels (CE-T1 space) carried onto the DSC grid through the inverse of the DSC registration."""
    dsc_to_reference = dsc_registration.transform.GetInverse()
    resampled = sitk.Resample(lesion, dsc_grid, dsc_to_reference, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled)


def prepare_case(t1c: sitk.Image, flair: sitk.Image, lesion: sitk.Image, dsc: Volume | None = None,
                 times_s: np.ndarray | None = None, te_s: float | None = None, ncbv: sitk.Image | None = None,
                 leakage: str = DEFAULT_LEAKAGE_METHOD, spacing_mm: float = 1.0,
                 progress: Progress | None = None, maps: dict[str, sitk.Image] | None = None) -> PreparedCase:
    """Register and resample one case's series onto the CE-T1 reference grid.

    nCBV comes from ``dsc`` (4D ``Volume`` with ``times_s`` and ``te_s``), or is given ready-made as ``ncbv``:
    on the DSC grid when ``dsc`` is given too (the DSC registration carries it), else already aligned with
    CE-T1. Without either the case has two channels. ``maps`` (``case.channels``: adc, fa, md, map_<name>, each on
    its own grid) are registered too, one registration per grid (``register_maps``), and p and q derived from MD
    and FA on the reference grid.
    """
    report = progress or (lambda fraction, message: None)
    timings: dict[str, float] = {}
    started = time.monotonic()
    check_3d(t1c, "The CE-T1")
    check_3d(flair, "The FLAIR")
    check_3d(lesion, "The lesion")
    report(0.0, "Resampling CE-T1 to the 1 mm reference grid")
    reference = isotropic_reference(t1c, spacing_mm)
    channels = {"t1c": reference}
    lesion_reference = resample_onto(reference, lesion, None, labels=True)
    report(0.1, "Registering FLAIR to CE-T1")
    registrations = {"flair": register_rigid(reference, flair, "FLAIR")}
    channels["flair"] = resample_onto(reference, flair, registrations["flair"])
    timings["flair_registration_s"] = time.monotonic() - started
    perfusion = None
    if dsc is not None:
        if np.asarray(dsc.array).ndim != 4:
            raise ValueError("The DSC series must be 4D (a time series of volumes).")
        report(0.3, "Registering DSC to CE-T1")
        moment = time.monotonic()
        dsc_image = dsc_registration_image(dsc)
        registrations["dsc"] = register_rigid(reference, dsc_image, "DSC")
        timings["dsc_registration_s"] = time.monotonic() - moment
        if ncbv is None:
            report(0.5, "Computing nCBV")
            moment = time.monotonic()
            if times_s is None or te_s is None:
                raise ValueError("The DSC frame times and echo time are needed to compute nCBV.")
            labels = lesion_on_dsc_grid(lesion, dsc_image, registrations["dsc"])
            perfusion = compute_perfusion(dsc.array, times_s, PerfusionOptions(te_s=te_s, leakage=leakage),
                                          ijk_to_ras=dsc.ijk_to_ras, spacing_mm=tuple(dsc.spacing[::-1]),
                                          lesion_labels=labels if labels.any() else None)
            ncbv = sitk_from_volume(Volume(perfusion.ncbv.astype(np.float32), dsc.ijk_to_ras))
            timings["perfusion_s"] = time.monotonic() - moment
        channels["ncbv"] = resample_onto(reference, ncbv, registrations["dsc"])
    elif ncbv is not None:
        # Without its DSC series nothing can register it: it must already be aligned with CE-T1 (for example
        # the nCBV channel a previous prediction wrote to inputs/).
        check_3d(ncbv, "The nCBV")
        channels["ncbv"] = resample_onto(reference, ncbv, None)
    if maps:
        report(0.8, "Registering the diffusion and other maps to CE-T1")
        moment = time.monotonic()
        map_channels, map_registrations = register_maps(reference, maps)
        channels.update(map_channels)
        registrations.update(map_registrations)
        timings["maps_registration_s"] = time.monotonic() - moment
    nel = sitk.Cast(lesion_reference == NEL_LABEL, sitk.sitkUInt8)
    report(0.9, "Channels ready")
    qc = {
        "registration": {name: registration.summary() for name, registration in registrations.items()},
        "warnings": [w for registration in registrations.values() for w in registration.warnings]
        + (list(perfusion.report.get("warnings", [])) if perfusion is not None else []),
        "nel_voxels": int(sitk.GetArrayViewFromImage(nel).sum()),
        "timings_s": {name: round(value, 3) for name, value in timings.items()},
    }
    if perfusion is not None:
        qc["nawm_voxels"] = int(perfusion.nawm_mask.sum())
    return PreparedCase(reference, channels, lesion_reference, nel, registrations, perfusion, qc)


def register_maps(reference: sitk.Image, maps: dict[str, sitk.Image]
                  ) -> tuple[dict[str, sitk.Image], dict[str, RigidRegistration]]:
    """Extra channel maps on the reference grid, with p and q derived from MD and FA there.

    Maps on one grid come from one acquisition (ADC, FA and MD of one DTI series): they share one registration,
    computed on the map with the most anatomy (MD or ADC: CSF bright, brain grey; FA shows little of the brain's
    outline). The registrations are named after the channels they carry ("adc+fa+md")."""
    channels, registrations = {}, {}
    for names in _same_grid_groups(maps):
        leader = min(names, key=lambda name: REGISTRATION_PREFERENCE.index(name)
                     if name in REGISTRATION_PREFERENCE else len(REGISTRATION_PREFERENCE))
        what = f"{channel_modality(leader)} map"
        registration = register_rigid(reference, maps[leader], what)
        registrations["+".join(names)] = registration
        for name in names:
            channels[name] = resample_onto(reference, maps[name], registration)
    if "md" in channels:
        channels["p"] = _derived(isotropic_component(sitk.GetArrayViewFromImage(channels["md"])), reference)
        if "fa" in channels:
            channels["q"] = _derived(anisotropic_component(sitk.GetArrayViewFromImage(channels["md"]),
                                                           sitk.GetArrayViewFromImage(channels["fa"])), reference)
    return channels, registrations


REGISTRATION_PREFERENCE = ("md", "adc", "fa")


def _same_grid_groups(maps: dict[str, sitk.Image]) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name in sorted(maps):
        image = maps[name]
        key = (image.GetSize(), tuple(np.round(image.GetSpacing(), 4)), tuple(np.round(image.GetOrigin(), 3)),
               tuple(np.round(image.GetDirection(), 5)))
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _derived(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.CopyInformation(reference)
    return image


SERIES_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def lesion_by_volume_on_dsc(lesion: sitk.Image, dsc_grid: sitk.Image,
                            registration: RigidRegistration | None) -> np.ndarray:
    """Lesion labels (BraTS, ``[k, j, i]``) on the DSC grid, each DSC voxel taking the label that fills most of its
    volume (background included), through the DSC series' registration to the lesion's space (None: scanner
    coordinates). A DSC voxel (often 2 x 2 x 5 mm) on the lesion's edge whose centre falls in it can be mostly normal
    brain, and its curve is then mostly normal brain's: nearest neighbour of the centre would label it lesion.

    The volume shares are counted on a sub-grid of the DSC grid about as fine as the lesion's (each DSC voxel split
    into whole sub-voxels centred on it), each sub-voxel taking the lesion label at its centre."""
    spacing = np.array(dsc_grid.GetSpacing())
    factors = np.maximum(1, np.ceil(spacing / min(lesion.GetSpacing()) - 1e-6)).astype(int)
    fine = subdivided_grid(dsc_grid, factors, sitk.sitkUInt8)
    transform = registration.transform.GetInverse() if registration is not None else sitk.Transform()
    labels = sitk.GetArrayFromImage(sitk.Resample(lesion, fine, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    fi, fj, fk = factors
    size_i, size_j, size_k = dsc_grid.GetSize()
    blocks = labels.reshape(size_k, fk, size_j, fj, size_i, fi)
    values = np.unique(labels)
    counts = np.stack([(blocks == value).sum(axis=(1, 3, 5)) for value in values])
    return values[np.argmax(counts, axis=0)].astype(np.uint8)
