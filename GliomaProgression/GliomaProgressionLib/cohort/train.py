"""``gliomaprog cohort train`` and ``gliomaprog cohort package``: nnU-Net v2 training of a site's own model.

``train`` takes a raw dataset (``gliomaprog cohort export``'s output) and runs nnU-Net's fingerprint, planner,
preprocessing and trainer in this process, inside a new RESULTS folder (``raw/``, ``preprocessed/``,
``results/``, ``cohort_train.json``). Configurations:

- ``small``: the demo models' plan (``training.custom_configuration``: the export's grid spacing, 4 stages,
  8-64 features, 48^3 patch, batch 2): minutes on two CPU cores;
- ``3d_fullres``: nnU-Net's own plan, unchanged (a GPU is advisable).

Losses (``models.size_weighted.LOSSES``): ``dice-ce``, nnU-Net's own Dice + cross-entropy, or ``size-weighted``,
the lesion-size-weighted loss of Tran et al. 2025 (seed 003; the formula in ``models/size_weighted.py``). The loss
and the trainer class are recorded in ``cohort_train.json`` and, by ``package``, in the package's gliomaprog.json
and model card.

With ``--folds 0`` alone one split is used (about 10% of the cases, at least one, give nnU-Net's per-epoch pseudo
Dice); with several folds nnU-Net's own 5-fold cross-validation split. ``package`` zips the trained folder in the
format of the shipped demo models (dataset.json, plans.json, fold_N/checkpoint_final.pth with only the weights,
gliomaprog.json, MODEL_CARD.txt), which ``gliomaprog predict --model`` and the Slicer module install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from GliomaProgressionLib.models.size_weighted import DEFAULT_LOSS, check_loss, loss_record
from GliomaProgressionLib.models.training import (ARCHITECTURE, CONFIGURATION as NNUNET_CONFIGURATION, SPACING_MM,
                                                  SYNTHETIC_NOTICE, TRAINING_SETTINGS, plan_and_preprocess_dataset,
                                                  train_fold)

CONFIGURATIONS = ("small", "3d_fullres")
SETTINGS_FILE = "cohort_train.json"


def dataset_identity(raw: Path) -> tuple[int, str]:
    """(id, DatasetNNN_Name) of a raw dataset folder, from its folder name or its dataset.json name."""
    raw = Path(raw)
    if not (raw / "dataset.json").is_file() or not (raw / "imagesTr").is_dir() or not (raw / "labelsTr").is_dir():
        raise ValueError(f"{raw} is not an nnU-Net raw dataset (dataset.json, imagesTr/, labelsTr/).")
    dataset = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    for candidate in (raw.name, str(dataset.get("name", ""))):
        match = re.fullmatch(r"Dataset(\d{3})_[A-Za-z0-9_-]+", candidate)
        if match:
            return int(match.group(1)), candidate
    raise ValueError(f"Cannot tell the dataset id of {raw}: name the folder or dataset.json 'DatasetNNN_Name'.")


def _link_tree(source: Path, target: Path) -> None:
    """Hard links where possible (no copy of the images), else copies."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


def stage_raw_dataset(raw: Path, work: Path, name: str) -> Path:
    """The training part of the export (imagesTr, labelsTr, dataset.json) in RESULTS/raw/<name>."""
    folder = work / "raw" / name
    folder.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        _link_tree(raw / sub, folder / sub)
    dataset = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    dataset["numTraining"] = len(list((folder / "labelsTr").glob("*.nii.gz")))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return folder


def write_single_split(preprocessed: Path, cases: list[str]) -> None:
    """Fold 0 only: all but ~10% of the cases train, the rest give the per-epoch pseudo Dice."""
    if len(cases) < 2:
        raise ValueError("Training needs at least two cases.")
    validation = max(1, round(len(cases) / 10))
    splits = [{"train": cases[:-validation], "val": cases[-validation:]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=2))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("The CUDA device was asked for, but no CUDA device is available here.")
    return device


def check_train_arguments(configuration: str, folds: list[int], epochs: int, iterations: int,
                          loss: str = DEFAULT_LOSS) -> None:
    check_loss(loss)
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"Unknown configuration {configuration!r}: use small or 3d_fullres.")
    if not folds or any(not 0 <= fold <= 4 for fold in folds) or len(set(folds)) != len(folds):
        raise ValueError(f"The folds to train must be distinct numbers 0..4, got {folds}.")
    if epochs < 1 or iterations < 1:
        raise ValueError("The number of epochs and of iterations per epoch must be at least 1.")


def train_cohort(raw: str | os.PathLike, out: str | os.PathLike, configuration: str = "small",
                 folds: tuple[int, ...] = (0,), epochs: int = TRAINING_SETTINGS["epochs"],
                 iterations: int = TRAINING_SETTINGS["iterations_per_epoch"], device: str = "auto",
                 threads: int | None = None, log=print, loss: str = DEFAULT_LOSS) -> dict:
    """Plan, preprocess and train ``raw`` into the new folder ``out`` with the training ``loss`` (one of
    ``models.size_weighted.LOSSES``); returns what cohort_train.json records."""
    from GliomaProgressionLib.case.files import staged_output_folder
    from GliomaProgressionLib.models.training import set_nnunet_environment

    folds = [int(fold) for fold in folds]
    check_train_arguments(configuration, folds, epochs, iterations, loss)
    raw = Path(raw)
    dataset_id, name = dataset_identity(raw)
    device = resolve_device(device)
    spacing_mm = float(json.loads((raw / "dataset.json").read_text()).get("spacing_mm", SPACING_MM))
    started = time.monotonic()
    with staged_output_folder(out) as staging:
        set_nnunet_environment(staging)  # before nnU-Net is imported: it reads its folders once
        stage_raw_dataset(raw, staging, name)
        log(f"Planning and preprocessing {name} ({configuration})")
        plan_and_preprocess_dataset(dataset_id, name, staging, configuration == "small", spacing_mm)
        if folds == [0]:
            cases = sorted(p.name[:-7] for p in (staging / "raw" / name / "labelsTr").glob("*.nii.gz"))
            write_single_split(staging / "preprocessed" / name, cases)
        settings = {"epochs": epochs, "iterations_per_epoch": iterations}
        for fold in folds:
            log(f"Training fold {fold}: {epochs} epochs x {iterations} iterations on {device}, {loss} loss")
            results = train_fold(staging, name, fold, settings, device, threads, loss)
        record = {"dataset": name, "configuration": configuration, "nnunet_configuration": NNUNET_CONFIGURATION,
                  "folds": folds, "device": device, **TRAINING_SETTINGS, **settings,
                  "results_folder": str(results.relative_to(staging)), "spacing_mm": spacing_mm,
                  "trainer": results.name.split("__")[0], **loss_record(loss),
                  "wall_time_s": round(time.monotonic() - started, 1)}
        if configuration == "small":
            record["architecture"] = ARCHITECTURE
        (staging / SETTINGS_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


# --- packaging ------------------------------------------------------------------------------------------------


def read_training_record(results: Path) -> dict:
    path = Path(results) / SETTINGS_FILE
    if not path.is_file():
        raise ValueError(f"{results} is not a 'gliomaprog cohort train' folder (no {SETTINGS_FILE}).")
    record = json.loads(path.read_text(encoding="utf-8"))
    folder = Path(results) / record["results_folder"]
    missing = [f for f in record["folds"] if not (folder / f"fold_{f}" / "checkpoint_final.pth").is_file()]
    if missing:
        raise ValueError(f"{results} has no final checkpoint for fold(s) {missing}: training did not finish.")
    return record


def package_metadata(model_id: str, title: str, dataset: dict, record: dict, synthetic: bool) -> dict:
    from GliomaProgressionLib.models.packages import MODALITY_NAMES

    modalities = [dataset["channel_names"][key] for key in sorted(dataset["channel_names"], key=int)]
    # A folder trained before the loss was a choice was trained with nnU-Net's own loss.
    training = {**{k: record[k] for k in ("configuration", "epochs", "iterations_per_epoch", "device", "spacing_mm",
                                          "wall_time_s") if k in record},
                "trainer": Path(record["results_folder"]).name.split("__")[0],
                **loss_record(record.get("loss", DEFAULT_LOSS))}
    names = dataset.get("channels_gliomaprog") or [MODALITY_NAMES.get(m.lower(), m.lower()) for m in modalities]
    return {"id": model_id, "title": title, "synthetic": synthetic,
            "channels": [{"name": n, "modality": m} for n, m in zip(names, modalities)],
            "configuration": record["nnunet_configuration"], "folds": record["folds"],
            "label": "future tumour progression inside the non-enhancing FLAIR lesion (NEL); output = its probability",
            "description": (SYNTHETIC_NOTICE + " " if synthetic else "") + f"Trained with gliomaprog cohort train "
                           f"({record['configuration']}, {record['epochs']} epochs x "
                           f"{record['iterations_per_epoch']} iterations, {training['loss']} loss) on "
                           f"{record['dataset']}.",
            "training": training}


def package_model(results: str | os.PathLike, model_id: str, title: str, out: str | os.PathLike,
                  synthetic: bool = False) -> tuple[Path, str]:
    """Zip a trained cohort model (only what inference needs) into a new file ``out``; returns (path, sha256)."""
    import tempfile

    from GliomaProgressionLib.models.training import sha256_of, slim_checkpoint, zip_folder

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_id or ""):
        raise ValueError(f"The model id must be letters, digits, '.', '_' or '-', got {model_id!r}.")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists; choose a new file name.")
    if out.suffix != ".zip":
        raise ValueError(f"{out} must end in .zip.")
    record = read_training_record(Path(results))
    folder = Path(results) / record["results_folder"]
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    meta = package_metadata(model_id, title, dataset, record, synthetic)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".package-", dir=out.absolute().parent) as temporary:
        staging = Path(temporary) / model_id
        staging.mkdir()
        for name in ("dataset.json", "plans.json"):
            shutil.copy(folder / name, staging / name)
        for fold in record["folds"]:
            (staging / f"fold_{fold}").mkdir()
            slim_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth",
                            staging / f"fold_{fold}" / "checkpoint_final.pth")
        (staging / "gliomaprog.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        (staging / "MODEL_CARD.txt").write_text(model_card(meta), encoding="utf-8")
        zip_folder(staging, out)
    return out, sha256_of(out)


def model_card(meta: dict) -> str:
    channels = ", ".join(f"{i}: {c['modality']}" for i, c in enumerate(meta["channels"]))
    return "\n".join([meta["title"], "", meta["description"], "", f"Label: {meta['label']}",
                      f"Channels: {channels} (GliomaProgression preprocessing, CE-T1 reference grid).",
                      f"nnU-Net v2 {meta['configuration']}, folds {meta['folds']}.",
                      f"Training loss: {meta['training']['loss']}: {meta['training']['loss_description']} "
                      f"(trainer {meta['training']['trainer']}).",
                      f"Training: {json.dumps(meta['training'])}", ""])
