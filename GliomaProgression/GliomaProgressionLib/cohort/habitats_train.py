"""``gliomaprog cohort habitats-train``: a site's own perfusion-habitat model (seed 002, Yun et al. 2023).

Every case folder of a cohort (``cohort.export.case_folders``: t1c, lesion, dsc + dsc.json) is read as
``gliomaprog habitats`` reads one (``runs.habitats.read_habitat_inputs``: CEL and NEL carried onto the DSC grid);
``DSCPerfusionLib.habitats.pipeline.train_habitat_model`` trains the curve autoencoder and the k-means patterns of
each region (k by silhouette) and names them against the reference tissues; the model is packaged
(``models.habitat_packages``) with its training record.

Output folder (written completely or not at all)::

    <id>.zip              the habitat model package ('-' in the id written '_') (gliomaprog habitats --model <zip>)
    models_entry.json     its entry for Models.json's "habitat_models" (file: models/<id>.zip)
    training.json         the training record: cases used and failed (with the reason), settings, wall time

A case that cannot be read is skipped and recorded with its one-sentence reason; Ctrl+C or SIGTERM leave nothing.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

Log = Callable[[str], None]
ENTRY_FILE = "models_entry.json"
TRAINING_FILE = "training.json"
SYNTHETIC_DESCRIPTION = ("Trained on synthetic data — not for clinical use. Perfusion habitats (Yun et al. 2023): a "
                         "1-D convolutional autoencoder of white-matter-normalised DSC curves and k-means patterns of "
                         "the contrast-enhancing and non-enhancing lesion, named against reference tissues, trained "
                         "on a simulated cohort from the GliomaProgression phantom. It demonstrates the workflow; its "
                         "outputs mean nothing for patients.")
SITE_DESCRIPTION = ("Perfusion habitats (Yun et al. 2023): a 1-D convolutional autoencoder of white-matter-normalised "
                    "DSC curves and k-means patterns of the contrast-enhancing and non-enhancing lesion, named against "
                    "reference tissues.")


class TrainingCases:
    """The cohort's cases as ``HabitatTrainingCase``, read one at a time while the library iterates (one DSC series
    in memory at a time); a case that cannot be used is skipped and recorded in ``failed`` with its reason."""

    def __init__(self, folders: list[Path], alignment: str, log: Log):
        self.folders, self.alignment, self.log = folders, alignment, log
        self.names: list[str] = []
        self.failed: list[dict] = []
        self._first, self._next = None, 0

    def __len__(self) -> int:  # for the library's progress: the cases it will be given, at most
        return len(self.folders)

    def __iter__(self):
        if self._first is not None:
            yield self._first
        for index in range(self._next, len(self.folders)):
            case = self._read(index, self.folders[index])
            if case is not None:
                yield case

    def read_first(self):
        """The first usable case (None: the cohort has none), read before the training is set up."""
        for index, folder in enumerate(self.folders):
            self._next = index + 1
            self._first = self._read(index, folder)
            if self._first is not None:
                break
        return self._first

    def _read(self, index: int, folder: Path):
        import numpy as np

        from DSCPerfusionLib.habitats.pipeline import MIN_REGION_VOXELS, HabitatTrainingCase

        from GliomaProgressionLib.runs.habitats import read_habitat_inputs

        started = time.monotonic()
        where = f"[{index + 1}/{len(self.folders)}] {folder.name}"
        try:
            inputs = read_habitat_inputs(folder, self.alignment)
            for region, mask in (("CEL", inputs.cel), ("NEL", inputs.nel & ~inputs.cel)):
                if mask.sum() < MIN_REGION_VOXELS:
                    raise ValueError(f"The {region} of the case {folder.name} has {int(mask.sum())} voxels on the "
                                     f"DSC grid; habitats need at least {MIN_REGION_VOXELS}.")
        except ValueError as error:
            reason = " ".join(str(error).split())
            self.failed.append({"case": folder.name, "reason": reason})
            self.log(f"{where}: skipped: {reason}")
            return None
        self.names.append(folder.name)
        self.log(f"{where}: CEL {int(inputs.cel.sum())}, NEL {int(inputs.nel.sum())} DSC voxels "
                 f"({time.monotonic() - started:.1f} s)")
        return HabitatTrainingCase(np.asarray(inputs.dsc.array, np.float32), inputs.timing.times_s, inputs.cel,
                                   inputs.nel, spacing_mm=tuple(float(v) for v in inputs.dsc.spacing[::-1]),
                                   ijk_to_ras=inputs.dsc.ijk_to_ras)


def train_habitat_cohort(cohort: str | os.PathLike, out: str | os.PathLike, *, epochs: int | None = None,
                         k_range: tuple[int, int] = (2, 6), seed: int = 0, model_id: str = "habitats-site",
                         title: str = "Perfusion habitats (site model)", synthetic: bool = False,
                         alignment: str = "registration", log: Log | None = None,
                         extra_training: dict | None = None) -> dict:
    """Train a habitat model on the case folders of ``cohort`` into the new folder ``out``; returns
    {"package": zip path, "entry": Models.json entry, "entry_file": its path, "failed": [...]}.

    ``extra_training``: more facts for the entry's training record (the phantom seeds of a synthetic cohort)."""
    from DSCPerfusionLib.habitats.pipeline import train_habitat_model

    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder, write_json
    from GliomaProgressionLib.cohort.export import case_folders
    from GliomaProgressionLib.models.habitat_packages import (MODEL_ID, package_file_name, package_habitat_model,
                                                              registry_entry)

    say = log or (lambda message: None)
    if not MODEL_ID.fullmatch(model_id or ""):
        raise ValueError(f"The habitat model id must be letters, digits, '.', '_' or '-', got {model_id!r}.")
    low, high = k_range
    if low < 2 or high < low:
        raise ValueError(f"The range of patterns per region must be 2 or more, fewest first; got {low} to {high}.")
    out = check_new_output_folder(Path(out))
    started = time.monotonic()
    folders = case_folders(Path(cohort))
    say(f"Reading {len(folders)} case(s) of {cohort}")
    cases = TrainingCases(folders, alignment, say)
    options = {"k_range": (low, high), "seed": seed, "synthetic": synthetic}
    if epochs is not None:
        options["epochs"] = epochs
    if cases.read_first() is None:  # a cohort without a usable case fails before the training is set up
        failed = cases.failed
        raise ValueError(f"No case of the cohort {cohort} could be used for habitat training ({len(failed)} "
                         f"failed; the first: {failed[0]['reason'] if failed else 'none'}).")
    model = train_habitat_model(cases, progress=_progress_lines(say), **options)
    names, failed = cases.names, cases.failed
    wall_time = round(time.monotonic() - started, 1)
    training = {"cases": len(names), "failed_cases": len(failed), "seed": seed,
                "epochs": int(model.training.get("epochs", epochs or 0)),
                "k_range": [low, high], "k_per_region": _k_per_region(model),
                "reconstruction_mse": model.training.get("reconstruction_mse"), "alignment": alignment,
                "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})", "wall_time_s": wall_time,
                **phantom_record([Path(cohort) / name for name in names]), **(extra_training or {})}
    meta = {"id": model_id, "title": title,
            "description": SYNTHETIC_DESCRIPTION if synthetic else SITE_DESCRIPTION, "synthetic": synthetic,
            "intended_use": "Demonstration, testing and teaching of the perfusion-habitat workflow. Not for clinical "
                            "use, diagnosis or treatment planning." if synthetic else "Research use.",
            "method": "Yun et al. 2023, AJNR: DSC time-signal curve autoencoder + k-means, labelled against "
                      "reference tissues",
            "training": training}
    model.training = {**dict(getattr(model, "training", {}) or {}), **training}
    with staged_output_folder(out) as staging:
        package, sha256 = package_habitat_model(model, staging / package_file_name(model_id), meta)
        entry = registry_entry(meta, package, sha256)
        write_json(entry, staging / ENTRY_FILE)
        write_json({**training, "case_names": names, "failed": failed}, staging / TRAINING_FILE)
    return {"package": out / package.name, "entry": entry, "entry_file": out / ENTRY_FILE, "failed": failed}


def phantom_record(folders: list[Path]) -> dict:
    """For a cohort of phantom cases (each with truth/truth.json): their seeds and size, so that the training set
    can be made again; empty for any other cohort."""
    import json

    seeds, sizes = [], set()
    for folder in folders:
        try:
            config = json.loads((folder / "truth" / "truth.json").read_text(encoding="utf-8"))["config"]
            seeds.append(int(config["seed"]))
            sizes.add(str(config["size"]))
        except (OSError, ValueError, KeyError, TypeError):
            return {}
    if not seeds:
        return {}
    seeds.sort()
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return {"phantom_seeds": f"{seeds[0]}-{seeds[-1]}" if contiguous else seeds, "phantom_size": ", ".join(sorted(sizes))}


def _progress_lines(say: Log):
    """The library's progress (fraction, message) as log lines, at most one per 10 % step and message kind."""
    shown: set = set()

    def progress(fraction: float, message: str) -> None:
        step = (int(10 * max(0.0, min(fraction, 1.0))), message.split(" ")[0])
        if step not in shown:
            shown.add(step)
            say(f"{100 * fraction:3.0f}% {message}")

    return progress


def _k_per_region(model) -> dict:
    """How many patterns the model found in each region."""
    return {str(region): int(len(centres)) for region, centres in model.centres.items()}
