"""``gliomaprog cohort replicate``: a simulated replication of seed 000 with the cohort commands end to end.

1. **Cohort**: phantom case folders (``size="small"``, ``replication_config``: in three cases of four the
   future-progression part of the NEL has raised nCBV, 1.6-1.8 x white matter; in about half of those it is also
   brighter on FLAIR, 1.12-1.20 x the oedema, in the other half only 1.00-1.02 x, so that nCBV carries what FLAIR
   lacks in some patients, as in seed 000; in the fourth case of four nothing progresses). Each folder is what a
   site would have: t1c, flair, dsc + dsc.json, lesion, ``progression`` drawn on the pre-op FLAIR grid (the
   phantom truth carried there by the true head pose) and case.json with its index.
2. **Export** (``cohort export``, 2 mm grid, temporal split: the last ``test`` indices are the test set), once
   with three channels; the conventional dataset is the same export without the nCBV channel (identical
   preprocessing, half the time).
3. **Train** both (``cohort train``, small plan, CPU) side by side, one process and one thread each.
4. **Package** both (``cohort package --synthetic``), unpack them in the work folder and load them as ``predict``
   loads a package (the user's model cache is not touched), predict the test cases.
5. **Evaluate** (``cohort evaluate --compare``, inside the NEL): multiparametric vs conventional.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

CONVENTIONAL_ID, MULTIPARAMETRIC_ID = 811, 812
SPACING_MM = 2.0  # the demo models' grid: small cases, minutes on two CPU cores
FLAIR_VISIBLE_RATIO = (1.12, 1.20)  # FLAIR of the infiltrated wedge / oedema where progression shows on FLAIR


def flair_progression(case):
    """The phantom's progression truth (CE-T1 grid) on the FLAIR grid, through the true head poses."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.geometry import sitk_from_volume

    ras_t1c_from_ras_flair = np.array(case.metadata["series"]["flair"]["ras_t1c_from_ras_series"])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
    lps = flip @ ras_t1c_from_ras_flair @ flip  # a FLAIR point (LPS) -> the same anatomy in CE-T1 (LPS)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(lps[:3, :3].ravel().tolist())
    transform.SetTranslation(lps[:3, 3].tolist())
    flair = sitk_from_volume(case.flair)
    truth = sitk_from_volume(case.truth["progression"])
    return sitk.Resample(truth, flair, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def flair_visible(seed: int) -> bool:
    """Whether a progressing replication case shows its future progression on FLAIR too (about half of them)."""
    from GliomaProgressionLib.models.training import is_positive

    return is_positive(seed) and bool(np.random.default_rng([seed, 11]).uniform() < 0.5)


def replication_config(seed: int, size: str = "small"):
    """The demo recipe's ``cohort_config``, except that FLAIR-visible cases get a brighter infiltrated wedge.

    With FLAIR blind in every case (the demo recipe) a CE-T1 + FLAIR model has nothing to learn and, trained with
    nnU-Net's Dice + cross-entropy loss, marks a large part of every NEL: sensitive and never specific. Seed 000's
    patients differ: some progressions are visible on FLAIR, some only on nCBV.
    """
    from dataclasses import replace

    from GliomaProgressionLib.models.training import cohort_config

    config = cohort_config(seed, size)
    if flair_visible(seed):
        ratio = float(np.random.default_rng([seed, 13]).uniform(*FLAIR_VISIBLE_RATIO))
        config = replace(config, progression_flair_ratio=ratio)
    return config


def adc_study_config(seed: int):
    from GliomaProgressionLib.phantom.synthetic import adc_replication_config

    return adc_replication_config(seed)


def flair_group(seed: int) -> str:
    return "flair_visible" if flair_visible(seed) else "ncbv_only"


def adc_group(seed: int) -> str:
    from GliomaProgressionLib.phantom.synthetic import adc_replication_visibility

    return {"adc": "adc_only", "ncbv": "ncbv_only", "none": "none"}[adc_replication_visibility(seed)]


@dataclass(frozen=True)
class Study:
    """What a replication compares: a model on ``channels`` against one without the last of them (same export,
    hard links), on a phantom cohort made by ``config``; ``group`` says what shows each case's progression."""

    title: str
    channels: str  # an export channel set (cohort.export.CHANNEL_SETS)
    model: str
    baseline: str
    dataset_ids: tuple[int, int]  # model, baseline
    config: Callable
    group: Callable


STUDIES = {
    "seed000": Study("Seed 000 replication: nCBV adds what FLAIR lacks", "multiparametric", "multiparametric",
                     "conventional", (MULTIPARAMETRIC_ID, CONVENTIONAL_ID), replication_config, flair_group),
    "adc": Study("Diffusion (issue 15): ADC adds what FLAIR and nCBV lack", "diffusion", "diffusion",
                 "multiparametric", (822, 821), adc_study_config, adc_group),
}


def write_phantom_case(job: tuple) -> str:
    """One cohort case folder from a phantom seed (a worker of a process pool)."""
    import SimpleITK as sitk

    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.phantom.synthetic import generate_case
    from GliomaProgressionLib.models.training import is_positive

    seed, index, folder, *chosen = job  # (seed, index, folder[, study]): the seed-000 cohort by default
    study = STUDIES[chosen[0] if chosen else "seed000"]
    config = study.config(seed)
    case = generate_case(config)
    target = write_case(case, Path(folder) / f"case_{seed:04d}")
    if is_positive(seed):  # a negative case's infiltrated part looks like oedema and never progresses: no label
        sitk.WriteImage(flair_progression(case), str(target / "progression.nii.gz"), True)
    meta = {"index": index, "seed": seed, "group": study.group(seed), "flair_visible": flair_visible(seed),
            "progression_flair_ratio": round(config.progression_flair_ratio, 4),
            "progression_cbv_ratio": round(config.progression_cbv_ratio, 4),
            "progression_adc_ratio": round(getattr(config, "progression_adc_ratio", 1.0), 4)}
    (target / "case.json").write_text(json.dumps(meta), encoding="utf-8")
    return target.name


def build_phantom_cohort(folder: Path, seeds: list[int], processes: int = 2, log=print, study: str = "seed000") -> None:
    from multiprocessing import get_context

    folder.mkdir(parents=True)
    jobs = [(seed, index, str(folder), study) for index, seed in enumerate(seeds)]
    with get_context("spawn").Pool(processes) as pool:
        for name in pool.imap_unordered(write_phantom_case, jobs):
            log(f"phantom {name}")


def without_last_channel(source: Path, target: Path, dataset_id: int, model: str = "conventional") -> Path:
    """The baseline dataset: the export's channels but the last (hard links; identical preprocessing)."""
    name = f"Dataset{dataset_id:03d}_GliomaReplication{model.capitalize()}"
    dataset = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    last = len(dataset["channel_names"]) - 1
    target.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr", "nelTr", "imagesTs", "labelsTs", "nelTs"):
        (target / sub).mkdir()
        for path in sorted((source / sub).glob("*.nii.gz")):
            if not path.name.endswith(f"_{last:04d}.nii.gz"):
                os.link(path, target / sub / path.name)
    dataset["channel_names"] = {key: value for key, value in dataset["channel_names"].items() if key != str(last)}
    dataset["channels_gliomaprog"] = dataset["channels_gliomaprog"][:last]
    dataset["name"] = name
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    for extra in ("qc.csv", "split.json"):
        os.link(source / extra, target / extra)
    return target


def train_side_by_side(datasets: dict[str, Path], work: Path, epochs: int, iterations: int) -> dict[str, Path]:
    """``cohort train`` of each dataset in its own process with one thread: small networks use two threads poorly.

    If one training fails (or this process is interrupted), the other is stopped before the error goes on: it
    would otherwise keep writing into a folder that is being removed."""
    children, results = {}, {}
    try:
        for model, raw in datasets.items():
            results[model] = work / f"train_{model}"
            command = [sys.executable, "-m", "GliomaProgressionLib.cli.main", "cohort", "train", str(raw), "--out",
                       str(results[model]), "--configuration", "small", "--epochs", str(epochs), "--iterations",
                       str(iterations), "--device", "cpu", "--threads", "1"]
            log_file = open(work / f"train_{model}.log", "w", encoding="utf-8")
            children[model] = (subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT), log_file)
        for model, (child, _) in children.items():
            code = child.wait()
            if code:
                tail = (work / f"train_{model}.log").read_text(encoding="utf-8").strip().splitlines()[-1:]
                raise RuntimeError(f"Training the {model} model failed (exit {code}): {' '.join(tail)}")
    finally:
        for child, log_file in children.values():
            if child.poll() is None:
                child.terminate()
                child.wait()
            log_file.close()
    return results


def predict_test_cases(package_zip: Path, raw: Path, out: Path) -> None:
    """Probability maps of the test cases with the packaged model (checked and loaded as ``predict`` does)."""
    import SimpleITK as sitk

    from GliomaProgressionLib.models.packages import extract_package, install_package
    from GliomaProgressionLib.models.worker import load_predictor, predict_probability

    # Unpacked inside the replication folder and checked as 'predict' checks a package, not into the user's cache.
    unpacked = package_zip.with_suffix("")
    extract_package(package_zip, unpacked)
    package = install_package(unpacked)
    predictor = load_predictor(package.folder, device="cpu", tta=False)
    predictor.allow_tqdm = False  # one progress bar per case would flood the replication's log
    out.mkdir(parents=True)
    channels = len(package.channels)
    for label in sorted((raw / "labelsTs").glob("*.nii.gz")):
        case = label.name[:-7]
        images = [sitk.ReadImage(str(raw / "imagesTs" / f"{case}_{i:04d}.nii.gz")) for i in range(channels)]
        sitk.WriteImage(predict_probability(predictor, images), str(out / f"{case}.nii.gz"), True)


def replicate(out: str | os.PathLike, train: int = 60, test: int = 30, epochs: int = 50, iterations: int = 20,
              seed: int = 3000, log=print, study: str = "seed000") -> dict:
    """Run the whole replication into the new folder ``out``; returns the evaluation with its Markdown table."""
    import torch

    from GliomaProgressionLib.cohort.evaluate import evaluate_cohort
    from GliomaProgressionLib.cohort.export import export_cohort
    from GliomaProgressionLib.cohort.train import package_model
    from GliomaProgressionLib.case.files import staged_output_folder

    if study not in STUDIES:
        raise ValueError(f"Unknown replication study {study!r}: use {' or '.join(STUDIES)}.")
    chosen = STUDIES[study]
    if train < 4 or test < 2:
        raise ValueError("The replication needs at least 4 training and 2 test cases.")
    if epochs < 1 or iterations < 1:
        raise ValueError("The number of epochs and of iterations per epoch must be at least 1.")
    torch.set_num_threads(2)
    started = time.monotonic()
    timings = {}
    with staged_output_folder(out) as work:
        seeds = list(range(seed, seed + train + test))
        build_phantom_cohort(work / "cohort", seeds, log=log, study=study)
        timings["cohort_s"] = round(time.monotonic() - started, 1)
        model_id, baseline_id = chosen.dataset_ids
        multi = work / f"Dataset{model_id:03d}_GliomaReplication{chosen.model.capitalize()}"
        export_cohort(work / "cohort", multi, model_id, chosen.channels, "temporal",
                      test / (train + test), spacing_mm=SPACING_MM, processes=2, progress=log)
        baseline = without_last_channel(
            multi, work / f"Dataset{baseline_id:03d}_GliomaReplication{chosen.baseline.capitalize()}", baseline_id,
            chosen.baseline)
        timings["export_s"] = round(time.monotonic() - started - timings["cohort_s"], 1)
        log(f"Training both models: {epochs} epochs x {iterations} iterations")
        moment = time.monotonic()
        raws = {chosen.baseline: baseline, chosen.model: multi}
        results = train_side_by_side(raws, work, epochs, iterations)
        timings["train_s"] = round(time.monotonic() - moment, 1)
        moment = time.monotonic()
        for model, folder in results.items():
            zip_path, _ = package_model(folder, f"replication-{model}", f"{chosen.title}: {model} "
                                        "(synthetic)", work / "packages" / f"replication-{model}.zip", True)
            log(f"Predicting the test cases with the {model} model")
            predict_test_cases(zip_path, raws[model], work / "predictions" / model)
        timings["predict_s"] = round(time.monotonic() - moment, 1)
        evaluation = evaluate_cohort(work / "predictions" / chosen.model, multi / "labelsTs",
                                     work / "evaluation", compare=work / "predictions" / chosen.baseline,
                                     nel=multi / "nelTs")
        timings["total_s"] = round(time.monotonic() - started, 1)
        by_visibility = detections_by_group(work / "evaluation" / "per_case.csv", work / "cohort")
        dice = paired_dice(work / "evaluation" / "per_case.csv", chosen.model, chosen.baseline)
        record = {"command": " ".join(["gliomaprog", "cohort", "replicate", "--out", str(out), "--train", str(train),
                                       "--test", str(test), "--epochs", str(epochs), "--iterations", str(iterations),
                                       "--seed", str(seed)] + (["--study", study] if study != "seed000" else [])),
                  "study": study, "seeds": [seeds[0], seeds[-1]], "train": train, "test": test, "epochs": epochs,
                  "iterations_per_epoch": iterations, "timings": timings,
                  "detected_by_group": by_visibility, "paired_dice": dice}
        (work / "replication.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return {**evaluation, "wall_time_s": timings["total_s"], "detected_by_group": by_visibility,
            "paired_dice": dice}


def paired_dice(per_case_csv: Path, model: str, baseline: str, seed: int = 20230101) -> dict:
    """The mean Dice difference (model - baseline) over the progressing test cases, with a 95 % bootstrap CI
    (``scipy.stats.bootstrap``, BCa, 2000 resamples) and the paired Wilcoxon signed-rank test."""
    import csv

    from scipy.stats import bootstrap, wilcoxon

    dice: dict = {}
    with open(per_case_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["truth_progression"] == "1":
                dice.setdefault(row["case"], {})[row["model"]] = float(row["dice"])
    pairs = np.array([[by_model[model], by_model[baseline]] for by_model in dice.values()
                      if model in by_model and baseline in by_model])
    if len(pairs) < 2:
        return {"cases": int(len(pairs))}
    difference = pairs[:, 0] - pairs[:, 1]
    interval = bootstrap((difference,), np.mean, n_resamples=2000, confidence_level=0.95,
                         random_state=np.random.default_rng(seed)).confidence_interval
    return {"cases": int(len(pairs)), "mean_model": round(float(pairs[:, 0].mean()), 3),
            "mean_baseline": round(float(pairs[:, 1].mean()), 3),
            "mean_difference": round(float(difference.mean()), 3),
            "difference_ci95": [round(float(interval.low), 3), round(float(interval.high), 3)],
            "wilcoxon_p": float(wilcoxon(pairs[:, 0], pairs[:, 1]).pvalue) if np.any(difference) else 1.0}


def detections_by_group(per_case_csv: Path, cohort: Path) -> dict:
    """Per model and per group of progressing test cases (what shows their progression: FLAIR, nCBV only, ADC
    only): how many were detected, out of how many, and the mean Dice inside the NEL."""
    import csv

    groups: dict = {}
    with open(per_case_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["truth_progression"] != "1":
                continue
            meta = json.loads((cohort / row["case"] / "case.json").read_text(encoding="utf-8"))
            group = meta.get("group") or ("flair_visible" if meta["flair_visible"] else "ncbv_only")
            groups.setdefault(row["model"], {}).setdefault(group, []).append(row)
    return {model: {group: {"detected": sum(int(r["predicted_progression"]) for r in rows), "cases": len(rows),
                            "mean_dice": round(float(np.mean([float(r["dice"]) for r in rows])), 3)}
                    for group, rows in sorted(by_group.items())}
            for model, by_group in groups.items()}
