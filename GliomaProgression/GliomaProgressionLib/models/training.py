"""The reproducible recipe of the two demo models: a synthetic cohort, nnU-Net v2 training on CPU, packaging.

Trained on synthetic data — not for clinical use. What it does (``python -m GliomaProgressionLib.models.training all``,
which ``make demo-models`` runs):

1. **Cohort**: phantom cases (``size="small"``) prepared exactly as a patient is (``prepare_case``: registration,
   nCBV from the simulated DSC series) but onto a 2 mm reference grid, which is the models' target spacing. In
   positive cases the infiltrated part of the NEL has raised CBV (1.6–1.8 × white matter) and barely raised FLAIR
   (1.00–1.02 × oedema), so the future progression shows in nCBV much more than in FLAIR (seed 000's finding).
   In negative cases (one in four) that part looks like the rest of the oedema and the label is empty.
   Label = the phantom's future-progression truth inside the NEL.
2. **Plans**: nnU-Net's own fingerprint and ``ExperimentPlanner``, then a small custom ``3d_fullres``
   configuration (2 mm spacing, 4 stages, 8–64 features, one convolution per stage, 48³ patch, batch 2) — small
   enough to train on two CPU cores in minutes and to predict a 1 mm brain in seconds.
3. **Training**: nnU-Net's trainer (loss, augmentation, poly learning rate, deep supervision) through a subclass
   that takes epochs and iterations from ``TRAINING_SETTINGS``; run in-process on the CPU, fold 0. (``gliomaprog
   cohort train --loss size-weighted`` trains a site's model with the lesion-size-weighted loss of
   ``size_weighted``, a further subclass.)
4. **Packaging**: the results folder (dataset.json, plans.json, fold_0/checkpoint_final.pth with the optimizer
   state removed, a model card) zipped into ``GliomaProgression/Resources/models/<id>.zip``; sha256 and metadata
   into ``GliomaProgression/Resources/Models.json`` (the module's Resources folder, which a built extension installs).
5. **Evaluation** on held-out phantom cases (seeds never used in training): patient verdict (≥ 1 voxel with
   p ≥ 0.5 inside the NEL) sensitivity/specificity and voxel Dice inside the NEL.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from GliomaProgressionLib.models.size_weighted import DEFAULT_LOSS, check_loss, size_weighted_trainer

SYNTHETIC_NOTICE = "Trained on synthetic data — not for clinical use."
TRAINING_SEEDS = tuple(range(1000, 1048))
HELD_OUT_SEEDS = tuple(range(2000, 2016))
FULL_SIZE_SEEDS = (2100, 2101, 2102, 2103)  # held out too; full-size phantom cases on the 1 mm reference grid
NEGATIVE_EVERY = 4  # seed % 4 == 3: no infiltrated NEL (the label is empty)
SPACING_MM = 2.0
TRAINER_NAME = "nnUNetTrainerGliomaDemo"
PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
FOLD = 0
TRAINING_SETTINGS = {"epochs": 50, "iterations_per_epoch": 20, "val_iterations_per_epoch": 2,
                     "initial_lr": 1e-2, "oversample_foreground_percent": 1.0}
ARCHITECTURE = {"features_per_stage": [8, 16, 32, 64], "patch_size": [48, 48, 48], "batch_size": 2,
                "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1]}

MODELS = {
    "conventional": {
        "dataset_id": 801, "dataset_name": "Dataset801_GliomaDemoConventional",
        "title": "Demo: progression from CE-T1 + FLAIR (synthetic)",
        "channels": [("t1c", "CE-T1"), ("flair", "FLAIR")],
    },
    "multiparametric": {
        "dataset_id": 802, "dataset_name": "Dataset802_GliomaDemoMultiparametric",
        "title": "Demo: progression from CE-T1 + FLAIR + nCBV (synthetic)",
        "channels": [("t1c", "CE-T1"), ("flair", "FLAIR"), ("ncbv", "nCBV")],
    },
}
PREPROCESSING = {
    "t1c": "CE-T1 resampled to the 1 mm isotropic reference grid (linear); this grid is the model's input grid",
    "flair": "FLAIR rigidly registered to CE-T1 (Mattes mutual information) and resampled onto the reference grid",
    "ncbv": "nCBV (rCBV with the perfusion pipeline's default leakage correction / contralateral NAWM) from DSC, "
            "registered to CE-T1 through the pre-bolus DSC image and resampled onto the reference grid",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- cohort -----------------------------------------------------------------------------------------------


def is_positive(seed: int) -> bool:
    return seed % NEGATIVE_EVERY != NEGATIVE_EVERY - 1


def cohort_config(seed: int, size: str = "small"):
    """The phantom settings of one cohort case: progression in nCBV more than in FLAIR, or no progression."""
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig

    rng = np.random.default_rng([seed, 7])
    if is_positive(seed):
        return PhantomConfig(seed=seed, size=size, progression_cbv_ratio=float(rng.uniform(1.6, 1.8)),
                             progression_flair_ratio=float(rng.uniform(1.0, 1.02)))
    base = PhantomConfig()
    # The infiltrated part gets the oedema's own CBV and FLAIR: nothing to see, nothing will progress.
    return PhantomConfig(seed=seed, size=size, progression_cbv_ratio=base.cbv.oedema / base.cbv.white,
                         progression_flair_ratio=1.0)


@dataclass
class CohortCase:
    channels: dict  # name -> sitk.Image on the reference grid
    label: object  # sitk.Image uint8: future progression inside the NEL
    nel: object
    positive: bool
    seed: int


def make_case(seed: int, size: str = "small", spacing_mm: float = SPACING_MM) -> CohortCase:
    """One phantom case, prepared as a patient would be, with its progression label on the reference grid."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.geometry import sitk_from_volume
    from GliomaProgressionLib.phantom.synthetic import generate_case
    from GliomaProgressionLib.case.preprocess import prepare_case
    from GliomaProgressionLib.case.registration import resample_onto

    case = generate_case(cohort_config(seed, size))
    prepared = prepare_case(sitk_from_volume(case.t1c), sitk_from_volume(case.flair), sitk_from_volume(case.lesion),
                            case.dsc, case.frame_times_s, case.config.te_s, spacing_mm=spacing_mm)
    truth = resample_onto(prepared.reference, sitk_from_volume(case.truth["progression"]), None, labels=True)
    label = sitk.Cast((truth > 0) * prepared.nel, sitk.sitkUInt8) if is_positive(seed) else \
        sitk.Cast(prepared.nel * 0, sitk.sitkUInt8)
    return CohortCase(prepared.channels, label, prepared.nel, is_positive(seed), seed)


def _write_cohort_case(arguments) -> str:
    import SimpleITK as sitk

    seed, folder, size, spacing_mm = arguments
    target = Path(folder) / f"case_{seed:04d}"
    if (target / "done").exists():
        return f"case {seed} exists"
    target.mkdir(parents=True, exist_ok=True)
    case = make_case(seed, size, spacing_mm)
    for name, image in case.channels.items():
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(target / f"{name}.nii.gz"), True)
    sitk.WriteImage(case.label, str(target / "label.nii.gz"), True)
    sitk.WriteImage(case.nel, str(target / "nel.nii.gz"), True)
    (target / "done").write_text(json.dumps({"seed": seed, "positive": case.positive}))
    return f"case {seed} written"


def build_cohort(folder: Path, seeds, size: str = "small", spacing_mm: float = SPACING_MM, processes: int = 2):
    from multiprocessing import get_context

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, str(folder), size, spacing_mm) for seed in seeds]
    with get_context("spawn").Pool(processes) as pool:
        for message in pool.imap_unordered(_write_cohort_case, jobs):
            log(message)


# --- nnU-Net dataset, plans, training ------------------------------------------------------------------------


def set_nnunet_environment(work: Path) -> None:
    """nnU-Net reads its folders from the environment when it is first imported: call this before importing it."""
    for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / sub)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ["nnUNet_compile"] = "false"
    if "nnunetv2" in sys.modules and sys.modules.get("nnunetv2.paths") is not None:
        import nnunetv2.paths as paths
        if paths.nnUNet_raw != os.environ["nnUNet_raw"]:
            raise RuntimeError("nnunetv2 was imported before its folders were set; run training in a fresh process.")


def write_raw_dataset(model_id: str, cohort: Path, work: Path, seeds=TRAINING_SEEDS) -> Path:
    spec = MODELS[model_id]
    folder = work / "raw" / spec["dataset_name"]
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for seed in seeds:
        source = cohort / f"case_{seed:04d}"
        for index, (name, _) in enumerate(spec["channels"]):
            os.link(source / f"{name}.nii.gz", folder / "imagesTr" / f"case_{seed:04d}_{index:04d}.nii.gz")
        os.link(source / "label.nii.gz", folder / "labelsTr" / f"case_{seed:04d}.nii.gz")
    dataset = {"channel_names": {str(i): modality for i, (_, modality) in enumerate(spec["channels"])},
               "labels": {"background": 0, "progression": 1}, "numTraining": len(seeds),
               "file_ending": ".nii.gz", "name": spec["dataset_name"],
               "description": "Synthetic phantom cohort: future progression inside the NEL. " + SYNTHETIC_NOTICE,
               "licence": "Apache-2.0"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def custom_configuration(configuration: dict, spacing_mm: float = SPACING_MM) -> dict:
    """nnU-Net's planned 3d_fullres, made small: coarse spacing, few features, one conv per stage."""
    stages = len(ARCHITECTURE["features_per_stage"])
    configuration = json.loads(json.dumps(configuration))
    configuration.update({
        "data_identifier": "nnUNetPlans_3d_demo", "spacing": [spacing_mm] * 3,
        "patch_size": ARCHITECTURE["patch_size"], "batch_size": ARCHITECTURE["batch_size"],
        # Linear instead of cubic resampling of 1 mm inputs to 2 mm: ~5 s faster per case on 2 cores. The training
        # cases are already at 2 mm, so this changes nothing in training.
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    })
    kwargs = configuration["architecture"]["arch_kwargs"]
    configuration["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    kwargs.update({"n_stages": stages, "features_per_stage": ARCHITECTURE["features_per_stage"],
                   "kernel_sizes": [[3, 3, 3]] * stages, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                   "n_conv_per_stage": ARCHITECTURE["n_conv_per_stage"],
                   "n_conv_per_stage_decoder": ARCHITECTURE["n_conv_per_stage_decoder"]})
    for key in ("n_blocks_per_stage",):
        kwargs.pop(key, None)
    return configuration


# Up to this many training cases, nnU-Net's integrity check, fingerprint and preprocessing run their workers as
# threads of this process (see nnunet_pools_as_threads).
THREADED_PREPROCESSING_MAX_CASES = 24
# The nnU-Net 2.8 modules that start a pool of spawned processes for those three steps.
NNUNET_POOL_MODULES = ("nnunetv2.experiment_planning.verify_dataset_integrity",
                       "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
                       "nnunetv2.preprocessing.preprocessors.default_preprocessor")


@contextlib.contextmanager
def nnunet_pools_as_threads():
    """Each of nnU-Net's three preprocessing pools spawns processes that import torch and nnU-Net anew, about
    10 s per pool on two cores; for a few small cases that import costs more than the work, so the same workers
    run as threads here (the pools' API, ``_pool`` liveness checks included, is ``multiprocessing``'s)."""
    import importlib
    import multiprocessing.pool
    from types import SimpleNamespace

    threads = SimpleNamespace(get_context=lambda method=None: SimpleNamespace(Pool=multiprocessing.pool.ThreadPool))
    modules = [importlib.import_module(name) for name in NNUNET_POOL_MODULES]
    originals = [module.multiprocessing for module in modules]
    for module in modules:
        module.multiprocessing = threads
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.multiprocessing = original


# nnU-Net samples 10^8 foreground voxels for its intensity statistics, shared among the cases with replacement: a
# 6-case dataset draws 17 M per case from a few thousand voxels (30 s here). This cap is nnU-Net's own share for a
# 100-case dataset; the statistics serve CT normalisation only, which the product's MR channels never use.
FOREGROUND_SAMPLES_PER_CASE = 10 ** 6


def fingerprint_extractor_class():
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class CappedFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = min(
                self.num_foreground_voxels_for_intensitystats, FOREGROUND_SAMPLES_PER_CASE * len(self.dataset))

    return CappedFingerprintExtractor


def count_training_cases(dataset_id: int) -> int:
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    labels = Path(nnUNet_raw) / convert_id_to_dataset_name(dataset_id) / "labelsTr"
    return sum(1 for _ in labels.glob("*.nii.gz"))


def plan_and_preprocess_dataset(dataset_id: int, name: str, work: Path, small: bool = True,
                                spacing_mm: float = SPACING_MM) -> dict:
    """nnU-Net's fingerprint (with its integrity check), planner, then the small plan (or nnU-Net's own
    3d_fullres when ``small`` is false) under CONFIGURATION, and preprocessing. Shared by the demo recipe and
    ``gliomaprog cohort train``; returns the plans."""
    few_cases = count_training_cases(dataset_id) <= THREADED_PREPROCESSING_MAX_CASES
    with nnunet_pools_as_threads() if few_cases else contextlib.nullcontext():
        return _plan_and_preprocess(dataset_id, name, work, small, spacing_mm)


def _plan_and_preprocess(dataset_id: int, name: str, work: Path, small: bool, spacing_mm: float) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)

    # nnU-Net's own variable for its worker pools (set_nnunet_environment's default: 2, the cores we plan for).
    processes = max(1, int(os.environ.get("nnUNet_def_n_proc", "2")))
    try:
        extract_fingerprint_dataset(dataset_id, fingerprint_extractor_class(), num_processes=processes,
                                    check_dataset_integrity=True, show_progress_bar=False)
    except (AssertionError, FileNotFoundError, RuntimeError) as error:  # nnU-Net's integrity check
        raise ValueError(f"nnU-Net's integrity check rejected {name}: {' '.join(str(error).split())}") from None
    plan_experiment_dataset(dataset_id)
    plans_file = work / "preprocessed" / name / f"{PLANS_NAME}.json"
    plans = json.loads(plans_file.read_text())
    planned = plans["configurations"]["3d_fullres"]
    plans["configurations"] = {CONFIGURATION: custom_configuration(planned, spacing_mm) if small else planned}
    plans_file.write_text(json.dumps(plans, indent=2))
    preprocess_dataset(dataset_id, PLANS_NAME, (CONFIGURATION,), (processes,), show_progress_bar=False)
    return plans


def plan_and_preprocess(model_id: str, work: Path) -> dict:
    spec = MODELS[model_id]
    plans = plan_and_preprocess_dataset(spec["dataset_id"], spec["dataset_name"], work)
    # One split: all but four cases train, four give nnU-Net's per-epoch pseudo Dice.
    keys = [f"case_{seed:04d}" for seed in TRAINING_SEEDS]
    splits = [{"train": keys[:-4], "val": keys[-4:]}]
    (work / "preprocessed" / spec["dataset_name"] / "splits_final.json").write_text(json.dumps(splits, indent=2))
    return plans


def trainer_class(loss: str = DEFAULT_LOSS):
    """nnU-Net's trainer with epochs and iterations from TRAINING_SETTINGS, and the training ``loss`` (one of
    ``size_weighted.LOSSES``: nnU-Net's own, or the lesion-size-weighted one); inference never needs this class."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerGliomaDemo(nnUNetTrainer):
        settings = dict(TRAINING_SETTINGS)

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = int(self.settings["epochs"])
            self.num_iterations_per_epoch = int(self.settings["iterations_per_epoch"])
            self.num_val_iterations_per_epoch = int(self.settings["val_iterations_per_epoch"])
            self.initial_lr = float(self.settings["initial_lr"])
            self.oversample_foreground_percent = float(self.settings["oversample_foreground_percent"])

    if check_loss(loss) == "size-weighted":
        return size_weighted_trainer(nnUNetTrainerGliomaDemo)
    return nnUNetTrainerGliomaDemo


def train_fold(work: Path, name: str, fold: int, settings: dict, device: str = "cpu",
               threads: int | None = None, loss: str = DEFAULT_LOSS) -> Path:
    """nnU-Net's trainer (the subclass above, with ``loss``) on one fold, in this process; returns the results
    folder (named by the trainer class). Shared by the demo recipe and ``gliomaprog cohort train``."""
    import torch

    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))
    preprocessed = work / "preprocessed" / name
    plans = json.loads((preprocessed / f"{PLANS_NAME}.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    cls = trainer_class(loss)
    cls.settings = {**TRAINING_SETTINGS, **(settings or {})}
    plans["continue_training"] = False  # nnU-Net 2.8 reads (and pops) this from the plans
    trainer = cls(plans, CONFIGURATION, fold, dataset_json, torch.device(device))
    trainer.run_training()
    return Path(trainer.output_folder_base)


def train(model_id: str, work: Path, settings: dict | None = None, threads: int | None = None) -> Path:
    return train_fold(work, MODELS[model_id]["dataset_name"], FOLD, settings or {}, "cpu", threads)


# --- packaging ------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def slim_checkpoint(source: Path, target: Path) -> None:
    """Only what inference needs (the weights and a few plain values): half the size, loadable weights-only."""
    import torch

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # our own file, just written
    # The trainer subclasses change epochs, iterations and (size-weighted) the loss; the network is nnUNetTrainer's.
    # The class that trained it stays in "trained_with". Recording
    # "nnUNetTrainer" lets nnU-Net's own tools (nnUNetv2_predict_from_modelfolder) open the folder too.
    slim = {"network_weights": checkpoint["network_weights"], "trainer_name": "nnUNetTrainer",
            "trained_with": str(checkpoint["trainer_name"]),
            "init_args": {"configuration": str(checkpoint["init_args"]["configuration"]),
                          "fold": int(checkpoint["init_args"]["fold"])},
            "inference_allowed_mirroring_axes": tuple(int(a) for a in checkpoint["inference_allowed_mirroring_axes"]),
            "current_epoch": int(checkpoint["current_epoch"])}
    torch.save(slim, target)


def model_card(model_id: str, training: dict) -> str:
    spec = MODELS[model_id]
    return "\n".join([
        f"{spec['title']}", "", SYNTHETIC_NOTICE, "",
        "Predicts the probability of future tumour progression inside the non-enhancing FLAIR lesion (NEL) of a",
        "glioblastoma, from channels " + ", ".join(f"{i}: {m}" for i, (_, m) in enumerate(spec["channels"])) + ",",
        "all on the 1 mm CE-T1 reference grid (GliomaProgression preprocessing).",
        "nnU-Net v2 3d_fullres results folder, custom small plan (2 mm spacing). Fold 0.",
        f"Training: {json.dumps(training)}",
        "Re-train from scratch: make demo-models (GliomaProgressionLib/training.py). Licence: Apache-2.0.", ""])


def package(model_id: str, results_folder: Path, out_folder: Path, training: dict) -> tuple[Path, str]:
    staging = out_folder / f".{model_id}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / f"fold_{FOLD}").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(results_folder / name, staging / name)
    slim_checkpoint(results_folder / f"fold_{FOLD}" / "checkpoint_final.pth",
                    staging / f"fold_{FOLD}" / "checkpoint_final.pth")
    (staging / "MODEL_CARD.txt").write_text(model_card(model_id, training))
    target = out_folder / f"{model_id}.zip"
    zip_folder(staging, target)
    shutil.rmtree(staging)
    return target, sha256_of(target)


def zip_folder(folder: Path, target: Path) -> None:
    """``folder``'s files into the zip ``target``, written beside it and renamed (it appears complete or not at
    all); fixed dates and modes, so the same files give the same bytes (and sha256)."""
    temporary = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(2025, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            archive.writestr(info, path.read_bytes())
    os.replace(temporary, target)


def registry_entry(model_id: str, zip_path: Path, sha256: str, training: dict, evaluation: dict | None) -> dict:
    spec = MODELS[model_id]
    entry = {
        "id": model_id, "title": spec["title"],
        "description": (f"{SYNTHETIC_NOTICE} A small nnU-Net v2 model trained on a simulated cohort from the "
                        "GliomaProgression phantom, in which future progression inside the NEL shows as raised nCBV "
                        "and barely raised FLAIR. It demonstrates the workflow; its outputs mean nothing for "
                        "patients."),
        "intended_use": ("Demonstration, testing and teaching of the GliomaProgression workflow on synthetic or "
                         "research data. Not for clinical use, diagnosis or treatment planning."),
        "synthetic": True,
        "channels": [{"name": name, "modality": modality, "preprocessing": PREPROCESSING[name]}
                     for name, modality in spec["channels"]],
        "configuration": CONFIGURATION, "folds": [FOLD],
        "file": f"models/{zip_path.name}", "sha256": sha256, "size_bytes": zip_path.stat().st_size,
        "licence": "Apache-2.0",
        "label": "future tumour progression inside the non-enhancing FLAIR lesion (NEL); output = its probability",
        "training": training,
    }
    if evaluation is not None:
        entry["evaluation"] = evaluation
    return entry


def write_registry(resources: Path, entries: list[dict]) -> Path:
    path = resources / "Models.json"
    existing = json.loads(path.read_text()) if path.exists() else {"models": []}
    by_id = {entry["id"]: entry for entry in existing.get("models", [])}
    for entry in entries:
        by_id[entry["id"]] = entry
    registry = {"notice": SYNTHETIC_NOTICE, "models": [by_id[key] for key in sorted(by_id)]}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
    return path


# --- evaluation -----------------------------------------------------------------------------------------------


def evaluate(model_folder: Path, cases: list[CohortCase], channel_names: list[str], threshold: float = 0.5,
             min_voxels: int = 1) -> dict:
    """Patient verdict sensitivity/specificity and voxel Dice inside the NEL, predicting in this process."""
    import SimpleITK as sitk

    from GliomaProgressionLib.models.worker import load_predictor, predict_probability

    predictor = load_predictor(model_folder, device="cpu", tta=False)
    rows = []
    for case in cases:
        started = time.monotonic()
        probability = predict_probability(predictor, [case.channels[name] for name in channel_names])
        seconds = time.monotonic() - started
        p = sitk.GetArrayFromImage(probability)
        nel = sitk.GetArrayFromImage(case.nel) > 0
        truth = sitk.GetArrayFromImage(case.label) > 0
        predicted = (p >= threshold) & nel
        overlap = float((predicted & truth).sum())
        dice = 2 * overlap / (predicted.sum() + truth.sum()) if truth.any() else None
        rows.append({"seed": case.seed, "positive": case.positive, "predicted_voxels": int(predicted.sum()),
                     "verdict": bool(predicted.sum() >= min_voxels), "dice": dice, "seconds": round(seconds, 2)})
    positives = [r for r in rows if r["positive"]]
    negatives = [r for r in rows if not r["positive"]]
    dices = [r["dice"] for r in positives]
    return {**verdict_summary(rows, min_voxels),
        "cases": len(rows), "positives": len(positives), "negatives": len(negatives),
        "sensitivity": sum(r["verdict"] for r in positives) / len(positives) if positives else None,
        "specificity": sum(not r["verdict"] for r in negatives) / len(negatives) if negatives else None,
        "dice_mean": float(np.mean(dices)) if dices else None, "dice_median": float(np.median(dices)) if dices else None,
        "seconds_mean": float(np.mean([r["seconds"] for r in rows])), "per_case": rows,
    }


def verdict_summary(rows: list[dict], min_voxels: int = 1, other_minimums=(10, 50)) -> dict:
    """Patient-level sensitivity/specificity at the study's rule (>= 1 voxel) and at larger minimum sizes."""
    def rates(minimum):
        positives = [r for r in rows if r["positive"]]
        negatives = [r for r in rows if not r["positive"]]
        return ({"sensitivity": sum(r["predicted_voxels"] >= minimum for r in positives) / len(positives)
                 if positives else None,
                 "specificity": sum(r["predicted_voxels"] < minimum for r in negatives) / len(negatives)
                 if negatives else None})
    return {"min_voxels": min_voxels, **rates(min_voxels),
            "by_min_voxels": {str(minimum): rates(minimum) for minimum in (min_voxels, *other_minimums)}}


def load_cohort_case(folder: Path, seed: int) -> CohortCase:
    import SimpleITK as sitk

    source = folder / f"case_{seed:04d}"
    channels = {name: sitk.ReadImage(str(source / f"{name}.nii.gz")) for name in ("t1c", "flair", "ncbv")}
    return CohortCase(channels, sitk.ReadImage(str(source / "label.nii.gz")),
                      sitk.ReadImage(str(source / "nel.nii.gz")), is_positive(seed), seed)


# --- command line ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m GliomaProgressionLib.models.training", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["cohort", "cohort-full", "train", "package", "evaluate", "all"])
    parser.add_argument("--work", default="build/demo_models", help="working folder (cohort, nnU-Net folders)")
    parser.add_argument("--resources", default=None,
                        help="where models/<id>.zip and Models.json go (default: the GliomaProgression module's "
                             "Resources folder, the one the module reads them from)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=TRAINING_SETTINGS["epochs"])
    parser.add_argument("--iterations", type=int, default=TRAINING_SETTINGS["iterations_per_epoch"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training process")
    parser.add_argument("--sequential", action="store_true",
                        help="train the models one after the other (default: side by side, one process each)")
    arguments = parser.parse_args(argv)
    work = Path(arguments.work).resolve()
    if arguments.resources is None:
        from GliomaProgressionLib.models.packages import resources_folder
        resources = resources_folder()
    else:
        resources = Path(arguments.resources).resolve()
    set_nnunet_environment(work)
    settings = {**TRAINING_SETTINGS, "epochs": arguments.epochs, "iterations_per_epoch": arguments.iterations}
    steps = ["cohort", "cohort-full", "train", "package", "evaluate"] if arguments.step == "all" \
        else [arguments.step]
    timings = {}
    if "cohort" in steps:
        started = time.monotonic()
        log(f"Cohort: {len(TRAINING_SEEDS)} training + {len(HELD_OUT_SEEDS)} held-out phantom cases")
        build_cohort(work / "cohort", TRAINING_SEEDS + HELD_OUT_SEEDS, processes=arguments.processes)
        timings["cohort_s"] = round(time.monotonic() - started, 1)
    if "cohort-full" in steps:
        log(f"Full-size held-out cases: {len(FULL_SIZE_SEEDS)} phantom cases on the 1 mm grid")
        build_cohort(work / "full", FULL_SIZE_SEEDS, size="full", spacing_mm=1.0, processes=1)
    if "train" in steps and len(arguments.models) > 1 and not arguments.sequential:
        # Side by side, one core each: nnU-Net's small networks use two threads poorly, so this halves the wall time.
        import subprocess

        started = time.monotonic()
        children = [subprocess.Popen([sys.executable, "-m", "GliomaProgressionLib.models.training", "train", "--work",
                                      str(work), "--resources", str(resources), "--models", model_id, "--epochs",
                                      str(arguments.epochs), "--iterations", str(arguments.iterations),
                                      "--threads", "1"]) for model_id in arguments.models]
        codes = [child.wait() for child in children]
        if any(codes):
            raise SystemExit(f"Training failed (exit codes {codes}).")
        log(f"Both models trained side by side in {time.monotonic() - started:.0f} s")
        steps = [step for step in steps if step != "train"]
    for model_id in arguments.models:
        spec = MODELS[model_id]
        results = work / "results" / spec["dataset_name"] / f"{TRAINER_NAME}__{PLANS_NAME}__{CONFIGURATION}"
        if "train" in steps:
            started = time.monotonic()
            log(f"{model_id}: dataset, plans, preprocessing")
            write_raw_dataset(model_id, work / "cohort", work)
            plan_and_preprocess(model_id, work)
            log(f"{model_id}: training {settings['epochs']} x {settings['iterations_per_epoch']} iterations")
            results = train(model_id, work, settings, arguments.threads)
            timings[f"{model_id}_train_s"] = round(time.monotonic() - started, 1)
            (results / "training_time.json").write_text(json.dumps(timings))
            log(f"{model_id}: trained in {timings[f'{model_id}_train_s']} s")
        training_info = {"cases": len(TRAINING_SEEDS) - 4, "pseudo_validation_cases": 4,
                         "training_seeds": [TRAINING_SEEDS[0], TRAINING_SEEDS[-1]], "size": "small",
                         "spacing_mm": SPACING_MM, "device": "cpu (2 cores)", **settings, **ARCHITECTURE}
        if (results / "training_time.json").exists():
            training_info["wall_time_s"] = json.loads((results / "training_time.json").read_text()).get(
                f"{model_id}_train_s")
        evaluation = None
        if "evaluate" in steps:
            log(f"{model_id}: evaluating on {len(HELD_OUT_SEEDS)} held-out cases")
            cases = [load_cohort_case(work / "cohort", seed) for seed in HELD_OUT_SEEDS]
            evaluation = evaluate(results, cases, [name for name, _ in spec["channels"]])
            evaluation["held_out_seeds"] = [HELD_OUT_SEEDS[0], HELD_OUT_SEEDS[-1]]
            evaluation["grid"] = "2 mm (size='small' phantom cases, prepared with prepare_case(spacing_mm=2))"
            if all((work / "full" / f"case_{seed:04d}" / "done").exists() for seed in FULL_SIZE_SEEDS):
                full = [load_cohort_case(work / "full", seed) for seed in FULL_SIZE_SEEDS]
                evaluation["full_size"] = evaluate(results, full, [name for name, _ in spec["channels"]])
                evaluation["full_size"]["grid"] = "1 mm (size='full' phantom cases, prepare_case default)"
            (results / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
            log(f"{model_id}: sensitivity {evaluation['sensitivity']} specificity {evaluation['specificity']} "
                f"Dice {evaluation['dice_mean']}")
        elif (results / "evaluation.json").exists():
            evaluation = json.loads((results / "evaluation.json").read_text())
        if "package" in steps or arguments.step == "all":
            (resources / "models").mkdir(parents=True, exist_ok=True)
            zip_path, sha256 = package(model_id, results, resources / "models", training_info)
            summary = None
            if evaluation is not None:
                keys = ("cases", "positives", "negatives", "sensitivity", "specificity", "by_min_voxels",
                        "dice_mean", "grid", "seconds_mean")
                summary = {key: evaluation[key] for key in keys + ("held_out_seeds",)}
                if "full_size" in evaluation:
                    summary["full_size"] = {key: evaluation["full_size"][key] for key in keys}
                    summary["full_size"]["seeds"] = list(FULL_SIZE_SEEDS)
            write_registry(resources, [registry_entry(model_id, zip_path, sha256, training_info, summary)])
            log(f"{model_id}: {zip_path} ({zip_path.stat().st_size / 1e6:.2f} MB) sha256 {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
