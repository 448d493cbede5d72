"""``gliomaprog cohort export``: a site's cohort folders -> an nnU-Net v2 raw dataset, with per-case QC.

A cohort folder holds one sub-folder per case, read as ``gliomaprog run`` reads a case folder (``case.folder``,
BraTS challenge folders included): ``t1c``, ``flair``, ``lesion`` (BraTS labels on the CE-T1 grid) and, for the
channel sets with nCBV only, ``dsc`` (+ ``dsc.json`` unless the DICOM headers give TR and TE), each a
NIfTI/NRRD file or a folder of DICOM files; ``progression`` (the progression label drawn on the pre-op FLAIR, from follow-up scans, a NIfTI/NRRD file;
absent or empty = no progression) and optionally ``case.json`` with ``"date"`` (ISO) or ``"index"`` for a
temporal split. Every case goes through the progression module's own preprocessing (``prepare_case``:
registration, nCBV, resampling); the label is carried from FLAIR onto the reference grid by the FLAIR
registration and restricted to the NEL, where seed 000 annotated progression. Channel sets: ``CHANNEL_SETS``
(conventional, multiparametric, diffusion) or any comma-separated list of channel names (``case.channels``:
t1c,flair,ncbv,adc,fa,md,p,q,map_<name>); diffusion maps and other maps are registered like FLAIR.

Output (written to a staging folder, renamed into place only when complete)::

    dataset.json  imagesTr/<case>_0000.nii.gz ...  labelsTr/<case>.nii.gz  imagesTs/  labelsTs/
    nelTr/ nelTs/ (NEL masks, for ``cohort evaluate --nel``)  qc.csv  split.json

A case that fails (unreadable file, failed registration, no DSC for nCBV) is recorded in qc.csv with its one-sentence
reason and skipped; a channel set without nCBV never reads DSC, so cases without it export normally. What the
reader did to a case's input (BraTS labels mapped) is in its qc.csv warnings.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

# Named channel sets; any other set is a comma-separated list of channel names (``case.channels``), in model order.
CHANNEL_SETS = {
    "conventional": ("t1c", "flair"),
    "multiparametric": ("t1c", "flair", "ncbv"),
    "diffusion": ("t1c", "flair", "ncbv", "adc"),
}
QC_COLUMNS = ("case", "status", "split", "order", "positive", "label_voxels", "nel_voxels", "flair_mattes_mi",
              "dsc_mattes_mi", "nawm_voxels", "warnings", "error")
DEFAULT_SPACING_MM = 1.0  # the progression module's reference grid; the demo models used 2 mm


def case_folders(cohort: Path) -> list[Path]:
    """The case sub-folders of a cohort (those with a t1c series: a file, a DICOM folder or a BraTS file), sorted by
    name."""
    cohort = Path(cohort)
    if not cohort.is_dir():
        raise ValueError(f"The cohort folder {cohort} does not exist.")
    folders = sorted(p for p in cohort.iterdir() if p.is_dir() and _holds_t1c(p))
    if not folders:
        raise ValueError(f"The cohort folder {cohort} has no case folders (sub-folders with t1c.nii.gz, a t1c/ "
                         "DICOM folder or a BraTS <ID>-t1c.nii.gz).")
    return folders


def _holds_t1c(folder: Path) -> bool:
    """A case folder: one with a CE-T1. One with several BraTS CE-T1 files is a case too, so that it fails in its
    own qc.csv row (with the reader's sentence) instead of stopping the cohort."""
    from GliomaProgressionLib.case.folder import locate_series

    try:
        return locate_series(folder, "t1c") is not None
    except ValueError:
        return True


def case_identifier(folder: Path) -> str:
    """nnU-Net case identifier: the folder name with anything but letters, digits, - and _ replaced."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", folder.name)


def case_order(folder: Path) -> str | None:
    """The sort key of a temporal split: case.json "date" (ISO, "date:YYYY-MM-DD") or "index" ("index:" + zero-padded
    number), else None. The prefix keeps a cohort that mixes the two kinds detectable."""
    from datetime import date

    path = folder / "case.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object such as {{\"date\": \"2021-03-04\"}}.")
    if data.get("date") is not None:
        try:
            return f"date:{date.fromisoformat(str(data['date'])[:10]).isoformat()}"
        except ValueError:
            raise ValueError(f"{path}: \"date\" must be an ISO date (YYYY-MM-DD), got {data['date']!r}.") from None
    if data.get("index") is not None:
        if isinstance(data["index"], bool) or not isinstance(data["index"], int) or data["index"] < 0:
            raise ValueError(f"{path}: \"index\" must be a whole number of at least 0, got {data['index']!r}.")
        return f"index:{data['index']:012d}"
    return None


def split_cases(names: list[str], orders: dict[str, str | None], method: str, test_fraction: float,
                seed: int) -> dict[str, str]:
    """case -> "train" or "test": the latest cases (temporal, as seed 000) or a seeded random draw."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"The test fraction must be at least 0 and below 1, got {test_fraction}.")
    test_count = int(round(len(names) * test_fraction))
    if method == "temporal":
        undated = [name for name in names if orders.get(name) is None]
        if undated:
            raise ValueError(f"A temporal split needs a case.json with \"date\" or \"index\" in every case; "
                             f"{len(undated)} case(s) have none (first: {undated[0]}).")
        kinds = {orders[name].split(":")[0] for name in names}
        if len(kinds) > 1:
            raise ValueError("A temporal split needs one kind of order in every case.json: some cases have "
                             "\"date\" and others only \"index\".")
        ordered = sorted(names, key=lambda name: (orders[name], name))
    elif method == "random":
        ordered = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    else:
        raise ValueError(f"Unknown split {method!r}: use temporal or random.")
    if test_count >= len(names):
        raise ValueError(f"A test fraction of {test_fraction} leaves no training case among {len(names)} case(s).")
    test = set(ordered[len(ordered) - test_count:]) if test_count else set()
    return {name: "test" if name in test else "train" for name in names}


def channel_set(channels: str) -> tuple[str, ...]:
    """The channel names of a named set (``CHANNEL_SETS``) or of a comma-separated list, checked."""
    from GliomaProgressionLib.case.channels import check_channel_name

    if channels in CHANNEL_SETS:
        return CHANNEL_SETS[channels]
    names = tuple(name.strip() for name in str(channels).split(",") if name.strip())
    if not names:
        raise ValueError(f"The channel set {channels!r} names no channel: use {', '.join(CHANNEL_SETS)} or a "
                         "comma-separated list such as t1c,flair,ncbv,adc.")
    for name in names:
        check_channel_name(name, f"A channel of the set {channels!r}")
    if len(set(names)) != len(names) or names[0] != "t1c":
        raise ValueError(f"The channel set {channels!r} must start with t1c (the reference grid) and name each "
                         "channel once.")
    return names


def prepare_folder(folder: Path, spacing_mm: float, needs_ncbv: bool, channels: tuple[str, ...] = ()):
    """One case folder read (DSC only when nCBV is exported) and prepared onto a reference grid of ``spacing_mm``,
    with the extra maps the exported ``channels`` need; the reader's notes (BraTS labels mapped) join the
    preprocessing warnings."""
    from GliomaProgressionLib.case.channels import DERIVED, maps_needed, missing_channel_message
    from GliomaProgressionLib.case.folder import has_series, read_case
    from GliomaProgressionLib.case.preprocess import prepare_case

    if needs_ncbv and Path(folder).is_dir() and not has_series(folder, "dsc"):
        raise ValueError(f"The case folder {folder} has no DSC series, which the nCBV channel of the "
                         "channel set needs.")
    inputs = read_case(folder, with_dsc=needs_ncbv)
    maps = maps_needed(channels, inputs.maps)
    for name in channels:
        if name not in ("t1c", "flair", "ncbv") and not set(DERIVED.get(name, (name,))) <= set(maps):
            raise ValueError(missing_channel_message(inputs.name, name, None))
    timing = inputs.timing
    prepared = prepare_case(inputs.t1c, inputs.flair, inputs.lesion, inputs.dsc, timing.times_s if timing else None,
                            timing.te_s if timing else None, spacing_mm=spacing_mm, maps=maps)
    prepared.qc["warnings"] = inputs.notes + prepared.qc["warnings"]
    return prepared


def progression_label(folder: Path, prepared):
    """The progression label (drawn on the pre-op FLAIR) on the reference grid, inside the NEL; empty if absent."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.folder import locate_series
    from GliomaProgressionLib.case.files import read_image
    from GliomaProgressionLib.case.registration import resample_onto

    path = locate_series(folder, "progression")
    if path is None:
        return sitk.Cast(prepared.nel * 0, sitk.sitkUInt8)
    if path.is_dir():
        raise ValueError(f"The progression label {path} must be a NIfTI or NRRD label file, not a folder.")
    drawn = read_image(path, "progression label")
    on_reference = resample_onto(prepared.reference, drawn, prepared.registrations["flair"], labels=True)
    return sitk.Cast((on_reference > 0) * prepared.nel, sitk.sitkUInt8)


def _qc_row(name: str, prepared, label) -> dict:
    import SimpleITK as sitk

    registration = prepared.qc["registration"]
    label_voxels = int(sitk.GetArrayViewFromImage(label).sum())
    return {"case": name, "status": "ok", "positive": int(label_voxels > 0), "label_voxels": label_voxels,
            "nel_voxels": prepared.qc["nel_voxels"],
            "flair_mattes_mi": registration["flair"]["final_mattes_mi"],
            "dsc_mattes_mi": registration.get("dsc", {}).get("final_mattes_mi", ""),
            "nawm_voxels": prepared.qc.get("nawm_voxels", ""),  # on the DSC grid: the nCBV reference region
            "warnings": " | ".join(prepared.qc["warnings"]), "error": ""}


def export_case(job: tuple) -> dict:
    """Prepare one case and write its channels, label and NEL into the staging dataset; never raises."""
    import SimpleITK as sitk

    folder, name, part, staging, channel_names, spacing_mm = job
    folder, staging = Path(folder), Path(staging)
    suffix = "Tr" if part == "train" else "Ts"
    try:
        prepared = prepare_folder(folder, spacing_mm, "ncbv" in channel_names, tuple(channel_names))
        label = progression_label(folder, prepared)
        row = _qc_row(name, prepared, label)
        for index, channel in enumerate(channel_names):
            sitk.WriteImage(sitk.Cast(prepared.channels[channel], sitk.sitkFloat32),
                            str(staging / f"images{suffix}" / f"{name}_{index:04d}.nii.gz"), True)
        sitk.WriteImage(label, str(staging / f"labels{suffix}" / f"{name}.nii.gz"), True)
        sitk.WriteImage(prepared.nel, str(staging / f"nel{suffix}" / f"{name}.nii.gz"), True)
    except Exception as error:  # one bad case must not stop a cohort: it is reported in qc.csv
        written = [staging / f"images{suffix}" / f"{name}_{i:04d}.nii.gz" for i in range(len(channel_names))]
        for path in written + [staging / f"{sub}{suffix}" / f"{name}.nii.gz" for sub in ("labels", "nel")]:
            path.unlink(missing_ok=True)  # exact names: a prefix pattern could hit another case's files
        message = " ".join(str(error).split()) or type(error).__name__
        row = {"case": name, "status": "failed", "error": message}
    return {**{column: "" for column in QC_COLUMNS}, **row, "split": part}


def dataset_json(name: str, channels: tuple[str, ...], training_cases: int) -> dict:
    from GliomaProgressionLib.case.channels import channel_modality

    return {"channel_names": {str(i): channel_modality(channel) for i, channel in enumerate(channels)},
            "labels": {"background": 0, "progression": 1}, "numTraining": training_cases,
            "file_ending": ".nii.gz", "name": name,
            "description": "Future progression inside the NEL (GliomaProgression cohort export).",
            "channels_gliomaprog": list(channels)}


def write_qc(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=QC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _run_jobs(jobs: list[tuple], processes: int, progress: Callable[[str], None]) -> list[dict]:
    if processes <= 1 or len(jobs) <= 1:
        rows = []
        for job in jobs:
            rows.append(export_case(job))
            progress(f"{rows[-1]['case']}: {rows[-1]['status']}")
        return rows
    from multiprocessing import get_context

    rows = []
    with get_context("spawn").Pool(processes) as pool:  # spawn: SimpleITK and torch threads do not fork well
        for row in pool.imap(export_case, jobs):
            rows.append(row)
            progress(f"{row['case']}: {row['status']}")
    return rows


def export_cohort(cohort: str | os.PathLike, out: str | os.PathLike, dataset_id: int, channels: str,
                  split: str = "random", test_fraction: float = 0.0, seed: int = 0,
                  spacing_mm: float = DEFAULT_SPACING_MM, name: str | None = None, processes: int = 1,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Export every case of ``cohort`` to a new nnU-Net v2 raw dataset folder ``out``; returns a summary."""
    from GliomaProgressionLib.case.files import staged_output_folder

    report = progress or (lambda message: None)
    model_channels = channel_set(channels)
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"The dataset id must be 1..999 (nnU-Net's three digits), got {dataset_id}.")
    folders = case_folders(Path(cohort))
    names = [case_identifier(folder) for folder in folders]
    if len(set(names)) != len(names):
        raise ValueError("Two case folders give the same nnU-Net case name; rename one of them.")
    orders = {name: case_order(folder) for name, folder in zip(names, folders)}
    parts = split_cases(names, orders, split, test_fraction, seed)
    label = channels.capitalize() if channels in CHANNEL_SETS else "".join(n.capitalize() for n in model_channels)
    dataset_name = name or f"Dataset{int(dataset_id):03d}_GliomaProgression{label.replace('_', '')}"
    with staged_output_folder(out) as staging:
        for sub in ("imagesTr", "labelsTr", "nelTr", "imagesTs", "labelsTs", "nelTs"):
            (staging / sub).mkdir()
        jobs = [(str(folder), case, parts[case], str(staging), list(model_channels), spacing_mm)
                for folder, case in zip(folders, names)]
        rows = _run_jobs(jobs, processes, report)
        for row in rows:
            row["order"] = (orders[row["case"]] or ":").split(":", 1)[1]
        exported = [row for row in rows if row["status"] == "ok"]
        training = [row["case"] for row in exported if row["split"] == "train"]
        if not training:
            failed = [row for row in rows if row["status"] != "ok"]
            raise ValueError("No training case could be exported; first errors: "
                             + "; ".join(f"{r['case']}: {r['error']}" for r in failed[:3]))
        write_qc(staging / "qc.csv", rows)
        split_info = {"method": split, "test_fraction": test_fraction, "seed": seed, "train": training,
                      "test": [row["case"] for row in exported if row["split"] == "test"],
                      "failed": [row["case"] for row in rows if row["status"] != "ok"]}
        (staging / "split.json").write_text(json.dumps(split_info, indent=2), encoding="utf-8")
        dataset = dataset_json(dataset_name, model_channels, len(training))
        dataset["spacing_mm"] = spacing_mm
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return {"out": str(out), "dataset_name": dataset_name, "train": len(split_info["train"]),
            "test": len(split_info["test"]), "failed": split_info["failed"]}
