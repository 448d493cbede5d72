"""DSC perfusion on files: read a DSC series and its masks, run ``DSCPerfusionLib.pipeline``, write the maps.

Used by ``gliomaprog perfusion`` and the case pipeline. Masks given on the DSC grid are used as they are; a
lesion segmentation on another grid (typically the CE-T1 grid) is resampled onto the DSC grid by nearest
neighbour in scanner coordinates, which is right when the series were acquired in one session without the
patient moving; the progression module registers the series properly.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from CTVPlannerLib.lesion import LESION_SEGMENTS
from DSCPerfusionLib.ftb import FTB_THRESHOLDS, checked_thresholds, lesion_ftb
from DSCPerfusionLib.pipeline import PerfusionOptions, PerfusionResult, compute_perfusion
from DSCPerfusionLib.protocol import check_protocol, protocol_report

from GliomaProgressionLib.case.files import (check_signal, read_3d_image, read_3d_volume, read_image,
                                             read_json_object, staged_output_folder, write_json, write_volume)
from GliomaProgressionLib.case.geometry import Volume, same_grid, sitk_from_volume, volume_from_sitk
from GliomaProgressionLib.case.timing import AcquisitionTiming, read_timing

Progress = Callable[[float, str], None]
OUTPUT_FILES = ("ncbv.nii.gz", "rcbv.nii.gz", "rcbv_uncorrected.nii.gz", "k2.nii.gz", "brain_mask.nii.gz",
                "nawm_mask.nii.gz", "curves.csv", "perfusion.json")
FTB_FILE = "ftb.nii.gz"  # written when a lesion is given: 0 none, then the FTB_CLASSES labels


def read_dsc(path: Path) -> Volume:
    series = volume_from_sitk(read_image(path, "DSC"))
    if series.array.ndim != 4:
        raise ValueError(f"The DSC file {path} is a {series.array.ndim}D image; a 4D series (x, y, z, time) is "
                         "needed.")
    check_signal(series, f"The DSC file {path}")
    return series


def read_mask_on_grid(path: Path, grid: Volume, what: str) -> np.ndarray:
    """A mask that must be on the DSC grid itself (same shape and geometry)."""
    mask = read_3d_volume(path, what)
    if not same_grid(mask.ijk_to_ras, grid.ijk_to_ras, mask.array.shape, grid.array.shape[-3:]):
        raise ValueError(f"The {what} {path} is not on the DSC grid (shape {mask.array.shape} vs "
                         f"{grid.array.shape[-3:]}, or a different position/orientation).")
    if not mask.array.any():
        raise ValueError(f"The {what} {path} is empty.")
    return mask.array > 0


def resample_labels_to_grid(path: Path, grid: Volume, what: str = "lesion") -> np.ndarray:
    """Integer labels resampled onto the DSC grid (nearest neighbour, scanner coordinates)."""
    labels = read_3d_image(path, what)
    reference = sitk_from_volume(Volume(np.zeros(grid.array.shape[-3:], np.uint8), grid.ijk_to_ras))
    resampled = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(resampled)
    if not array.any():
        raise ValueError(f"The {what} {path} does not overlap the DSC series.")
    return array


def run_perfusion_files(dsc: Path, out: Path, options_kwargs: dict, sidecar: Path | None = None,
                        tr_s: float | None = None, te_s: float | None = None, mask: Path | None = None,
                        nawm: Path | None = None, lesion: Path | None = None,
                        progress: Progress | None = None, ftb_thresholds=FTB_THRESHOLDS) -> PerfusionResult:
    """Compute the perfusion maps of one DSC file and write them to a new folder ``out`` (all or nothing).

    With a lesion, the FTB map (``FTB_FILE``) and its fractions per lesion part; always, the protocol check
    against the 2020 consensus from the sidecar, the timing and the detected bolus arrival."""
    from GliomaProgressionLib.case.files import check_new_output_folder

    check_new_output_folder(out)
    checked_thresholds(ftb_thresholds)  # before the long computation
    started = time.monotonic()
    series = read_dsc(dsc)
    timing = read_timing(series.array.shape[0], sidecar, tr_s, te_s)
    header = read_json_object(sidecar, "DSC sidecar") if sidecar else None
    options = PerfusionOptions(te_s=timing.te_s, **options_kwargs)
    grid = Volume(series.array[0], series.ijk_to_ras)
    brain = read_mask_on_grid(mask, grid, "brain mask") if mask else None
    nawm_mask = read_mask_on_grid(nawm, grid, "NAWM mask") if nawm else None
    labels = resample_labels_to_grid(lesion, grid) if lesion else None
    spacing_kji = tuple(float(s) for s in series.spacing[::-1])
    result = compute_perfusion(series.array, timing.times_s, options, ijk_to_ras=series.ijk_to_ras,
                               spacing_mm=spacing_kji, brain_mask=brain, nawm_mask=nawm_mask,
                               lesion_labels=labels, progress=progress)
    write_perfusion_outputs(result, grid, timing, out, inputs={
        "dsc": str(dsc), "sidecar": str(sidecar) if sidecar else None, "mask": str(mask) if mask else None,
        "nawm": str(nawm) if nawm else None, "lesion": str(lesion) if lesion else None,
    }, options=options, elapsed_s=time.monotonic() - started, lesion_labels=labels, header=header,
        ftb_thresholds=ftb_thresholds)
    return result


def lesion_part_names() -> dict[int, str]:
    """BraTS label value -> the lesion part's name (CTVPlannerLib.lesion), for FTB regions."""
    return {value: name for value, (name, _) in LESION_SEGMENTS.items()}


def protocol_qa(result: PerfusionResult, timing: AcquisitionTiming, header: dict | None) -> dict:
    """The consensus protocol check (perfusion.json's "protocol_qa"): the sidecar's fields, TE, the frame
    times and the frames before the detected bolus arrival."""
    return protocol_report(check_protocol(header, timing.te_s, timing.times_s, int(result.arrival_frame)))


def curves_csv(times_s: np.ndarray, curves: dict[str, np.ndarray]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(curves)
    writer.writerow(["time_s"] + [f"{name}_delta_r2s_per_s" for name in names])
    for index, time_s in enumerate(times_s):
        writer.writerow([f"{time_s:.4f}"] + [f"{curves[name][index]:.6f}" for name in names])
    return buffer.getvalue()


def write_perfusion_outputs(result: PerfusionResult, grid: Volume, timing: AcquisitionTiming, out: Path,
                            inputs: dict, options: PerfusionOptions, elapsed_s: float,
                            lesion_labels: np.ndarray | None = None, header: dict | None = None,
                            ftb_thresholds=FTB_THRESHOLDS) -> None:
    """The maps, curves.csv and perfusion.json; with ``lesion_labels`` (BraTS values on the DSC grid) the FTB
    map and fractions; ``header``: the parsed DSC sidecar, for the protocol check (None: those items unknown)."""
    ftb = None
    if lesion_labels is not None:
        classes, ftb = lesion_ftb(result.ncbv, lesion_labels, result.brain_mask, lesion_part_names(), ftb_thresholds,
                                  "DSC grid")
    maps = {"ncbv": result.ncbv, "rcbv": result.rcbv, "rcbv_uncorrected": result.rcbv_uncorrected,
            "k2": result.k2, "brain_mask": result.brain_mask.astype(np.uint8),
            "nawm_mask": result.nawm_mask.astype(np.uint8)}
    for name in ("cbf", "mtt", "ttp"):
        if getattr(result, name, None) is not None:
            maps[name] = getattr(result, name)
    with staged_output_folder(out) as staging:
        for name, array in maps.items():
            write_volume(Volume(np.asarray(array), grid.ijk_to_ras), staging / f"{name}.nii.gz")
        if ftb is not None:
            write_volume(Volume(classes, grid.ijk_to_ras), staging / FTB_FILE)
        (staging / "curves.csv").write_text(curves_csv(timing.times_s, result.curves), encoding="utf-8")
        write_json({
            "software": "GliomaProgression DSCPerfusion",
            "inputs": inputs,
            "options": asdict(options),
            "frame_times_s": [round(float(t), 4) for t in timing.times_s],
            "echo_time_s": timing.te_s,
            "baseline_frames": list(result.baseline),
            "arrival_frame": int(result.arrival_frame),
            "first_pass_end_frame": result.first_pass_end,
            "report": result.report,
            "ftb": ftb if ftb is not None else {"skipped": "no lesion labels were given with the DSC series"},
            "protocol_qa": protocol_qa(result, timing, header),
            "outputs": sorted([f"{name}.nii.gz" for name in maps] + ([FTB_FILE] if ftb is not None else []))
            + ["curves.csv"],
            "total_time_s": round(elapsed_s, 3),
        }, staging / "perfusion.json")
