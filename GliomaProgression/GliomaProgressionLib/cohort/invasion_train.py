"""``gliomaprog cohort invasion-train``: a voxel-wise invasion model trained and evaluated on a cohort (seed 004,
Yan et al. 2020, Sci Rep 10:9748).

Every case folder of the cohort (``cohort.export.case_folders``) is prepared as ``gliomaprog invasion`` prepares one
(``runs.invasion.prepare_invasion_case``, onto the CE-T1 grid at ``spacing_mm``), its progression truth read
(``runs.invasion.progression_truth``: the follow-up recurrence, a progression label drawn on FLAIR, or a phantom's
truth; a case without one is skipped) and labelled as in the paper (``invasion.labels``: progression area vs the
5-20 mm non-progression shells). The local feature maps of every channel are computed in the peritumoral region
(``invasion.pipeline.region_features``) and the labelled voxels kept.

The cases are split by patient (``cohort.export.split_cases``, seeded random, ``test_fraction``); the classifier is
trained on the training patients (``invasion.classifier.train_classifier``: balanced voxels per patient and class)
and evaluated on the held-out ones, on their labelled voxels (at most 20 000 per class and patient, drawn at
random):

- voxel accuracy and balanced accuracy at the model's threshold, pooled over the held-out patients;
- per-patient AUC (``sklearn.metrics.roc_auc_score``; patients with both classes), their mean and a percentile 95 %
  bootstrap CI over patients (``scipy.stats.bootstrap``, fixed seed; with 3 or more patients), and the pooled AUC;
- the same per-patient AUC of the distance to the tumour core alone: progression lies near the tumour, so a map
  must beat proximity to show that the images, not the geometry, carry the information.

Channels: as given, or those of t1c, flair, ncbv, adc, fa, md, p, q the first usable case has; a later case without
one is skipped with its reason.

Output folder (written completely or not at all)::

    <id>.zip                the invasion model package ('-' in the id written '_') (gliomaprog invasion --model <zip>)
    models_entry.json       its entry for Models.json's "invasion_models" (file: models/<id>.zip)
    training.json           the training record: cases used, split and failed (with the reason), settings, wall time
    evaluation.json         the held-out measures (None when nothing was held out)
    evaluation_cases.csv    one row per held-out patient: voxels per class, accuracy, AUC

Ctrl+C or SIGTERM leave nothing.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Log = Callable[[str], None]
ENTRY_FILE = "models_entry.json"
TRAINING_FILE = "training.json"
EVALUATION_FILE = "evaluation.json"
EVALUATION_CASES_FILE = "evaluation_cases.csv"
BOOTSTRAP_REPLICATES = 2000
MIN_PATIENTS_FOR_CI = 3
EVALUATION_VOXELS_PER_CLASS = 20000  # of each held-out patient, drawn at random (memory); all when fewer
SYNTHETIC_NOTICE = "Trained on synthetic data — not for clinical use."
METHOD = ("Yan et al. 2020, Sci Rep 10:9748: local radiomics features (first order, GLCM, GLRLM) of every map, voxel "
          "by voxel, classified by a neural network (scikit-learn MLP) trained on the progression area vs the 5-20 mm "
          "non-progression shells")


@dataclass
class CaseSamples:
    name: str
    part: str  # "train" or "test"
    matrix: np.ndarray  # [labelled voxels, features]
    labels: np.ndarray  # 0/1
    truth: str
    distance_mm: np.ndarray  # each voxel's distance to the tumour core: the baseline the map must beat


def train_invasion_cohort(cohort: str | os.PathLike, out: str | os.PathLike, *, channels=None,
                          features=None, radius: int = 2, bin_count: int = 16, spacing_mm: float = 1.0,
                          test_fraction: float = 0.3, hidden_layers=None, voxels_per_class: int | None = None,
                          max_iter: int = 300, seed: int = 0, model_id: str = "invasion-site",
                          title: str = "Invasion map (site model)", synthetic: bool = False,
                          log: Log | None = None) -> dict:
    """Train an invasion model on the case folders of ``cohort`` and evaluate it on held-out patients, into the new
    folder ``out``; returns {"package", "entry", "entry_file", "evaluation", "failed"}."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder, write_json, write_text
    from GliomaProgressionLib.cohort.export import case_folders, split_cases
    from GliomaProgressionLib.invasion.classifier import (DEFAULT_HIDDEN_LAYERS, DEFAULT_VOXELS_PER_CLASS,
                                                          train_classifier)
    from GliomaProgressionLib.invasion.features import FEATURES
    from GliomaProgressionLib.models.invasion_packages import (MODEL_ID, package_file_name, package_invasion_model,
                                                               registry_entry)

    say = log or (lambda message: None)
    if not MODEL_ID.fullmatch(model_id or ""):
        raise ValueError(f"The invasion model id must be letters, digits, '.', '_' or '-', got {model_id!r}.")
    features = tuple(features or FEATURES)
    unknown = [name for name in features if name not in FEATURES]
    if unknown:
        raise ValueError(f"The feature {unknown[0]!r} is not one of the local feature maps ({', '.join(FEATURES)}).")
    if channels is not None:
        channels = _checked_channels(channels)
    out = check_new_output_folder(Path(out))
    started = time.monotonic()
    folders = case_folders(Path(cohort))
    split = split_cases([f.name for f in folders], {}, "random", test_fraction, seed)
    say(f"Reading {len(folders)} case(s) of {cohort}: {sum(p == 'train' for p in split.values())} for training, "
        f"{sum(p == 'test' for p in split.values())} held out")
    per_class = voxels_per_class or DEFAULT_VOXELS_PER_CLASS
    samples, failed = [], []
    for index, folder in enumerate(folders):
        where = f"[{index + 1}/{len(folders)}] {folder.name}"
        moment = time.monotonic()
        try:
            part = split[folder.name]
            kept = per_class if part == "train" else EVALUATION_VOXELS_PER_CLASS
            case, channels = case_samples(folder, part, channels, features, radius, bin_count, spacing_mm, kept,
                                          np.random.default_rng([seed, index]), model_id)
        except ValueError as error:
            reason = " ".join(str(error).split())
            failed.append({"case": folder.name, "reason": reason})
            say(f"{where}: skipped: {reason}")
            continue
        samples.append(case)
        say(f"{where} ({case.part}): {int(case.labels.sum())} progression, {int((case.labels == 0).sum())} "
            f"non-progression voxels sampled ({time.monotonic() - moment:.1f} s)")
    training_cases = [s for s in samples if s.part == "train"]
    if not training_cases:
        first = failed[0]["reason"] if failed else "none"
        raise ValueError(f"No training case of the cohort {cohort} could be used for the invasion model "
                         f"({len(failed)} failed; the first: {first}).")
    record = {"cases": len(training_cases), "held_out_cases": len(samples) - len(training_cases),
              "failed_cases": len(failed), "channels": list(channels), "features_per_channel": len(features),
              "radius_voxels": radius, "bin_count": bin_count, "spacing_mm": spacing_mm,
              "split": {"method": "random by patient", "test_fraction": test_fraction, "seed": seed},
              "truth": sorted({s.truth for s in samples}),
              "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})"}
    model = train_classifier([(s.matrix, s.labels) for s in training_cases], channels=channels, features=features,
                             radius=radius, bin_count=bin_count, spacing_mm=spacing_mm,
                             hidden_layers=hidden_layers or DEFAULT_HIDDEN_LAYERS,
                             voxels_per_class=per_class, max_iter=max_iter,
                             seed=seed, training=record)
    say(f"Trained on {model.training['voxels']} voxels in {model.training['iterations']} iterations "
        f"(training accuracy {model.training['training_accuracy']:.3f})")
    held_out = [s for s in samples if s.part == "test"]
    evaluation = evaluate_held_out(model, held_out, seed) if held_out else None
    if evaluation:
        say(f"Held out ({len(held_out)} patient(s)): voxel accuracy {evaluation['voxel_accuracy']:.3f}, mean "
            f"per-patient AUC {_shown(evaluation['mean_patient_auc'])} (distance to the tumour alone: "
            f"{_shown(evaluation['mean_patient_distance_auc'])})")
    model.training["wall_time_s"] = round(time.monotonic() - started, 1)
    meta = {"id": model_id, "title": title, "synthetic": synthetic,
            "description": (SYNTHETIC_NOTICE + " " if synthetic else "") + "Voxel-wise invasion map: " + METHOD + ".",
            "intended_use": "Demonstration, testing and teaching of the invasion-map workflow. Not for clinical use, "
                            "diagnosis or treatment planning." if synthetic else "Research use.",
            "method": METHOD, "channels": list(channels), "training": model.training,
            "evaluation": _summary(evaluation)}
    with staged_output_folder(out) as staging:
        package, sha256 = package_invasion_model(model, staging / package_file_name(model_id), meta)
        entry = registry_entry(meta, package, sha256)
        write_json(entry, staging / ENTRY_FILE)
        write_json({**model.training, "case_names": [s.name for s in samples],
                    "split_of_cases": {s.name: s.part for s in samples}, "failed": failed}, staging / TRAINING_FILE)
        write_json({"evaluation": evaluation}, staging / EVALUATION_FILE)
        write_text(cases_csv(evaluation), staging / EVALUATION_CASES_FILE)
    return {"package": out / package.name, "entry": entry, "entry_file": out / ENTRY_FILE, "evaluation": evaluation,
            "failed": failed}


def case_samples(folder: Path, part: str, channels, features, radius: int, bin_count: int, spacing_mm: float,
                 per_class: int, rng: np.random.Generator, model_id: str = "invasion-site"):
    """(CaseSamples of at most ``per_class`` of one case's labelled peritumoral voxels per class, drawn at random;
    the channels used: ``channels`` or this case's). Only the sampled voxels' features are kept: a cohort's full
    regions would not fit in memory."""
    from GliomaProgressionLib.invasion.classifier import balanced_sample
    from GliomaProgressionLib.invasion.labels import UNLABELLED, distance_mm, training_labels, tumour_core
    from GliomaProgressionLib.invasion.pipeline import as_arrays, region_features
    from GliomaProgressionLib.runs.invasion import (brain_on_reference, default_channels, prepare_invasion_case,
                                                    progression_truth)

    inputs, prepared = prepare_invasion_case(folder, channels, spacing_mm, model_id)
    channels = channels or default_channels(prepared)
    truth, source = progression_truth(inputs, prepared)
    if truth is None:
        raise ValueError(f"The case {folder.name} has no progression truth (recurrence.nii.gz, progression.nii.gz or "
                         "truth/progression.nii.gz).")
    arrays, lesion, spacing = as_arrays({name: prepared.channels[name] for name in channels}, prepared.lesion)
    brain, _ = brain_on_reference(inputs, prepared)
    labels = training_labels(lesion, truth, spacing, brain)
    region, matrix = region_features(arrays, lesion, spacing, channels, features, radius, bin_count, brain)
    in_region = labels[region]
    keep = in_region != UNLABELLED
    if not keep.any():
        raise ValueError(f"The case {folder.name} has no labelled voxel around its tumour.")
    labelled, matrix = in_region[keep].astype(np.int8), matrix[keep]
    distance = distance_mm(tumour_core(lesion), spacing)[region][keep]
    chosen = balanced_sample(labelled, per_class, rng)
    return (CaseSamples(folder.name, part, matrix[chosen], labelled[chosen], source, distance[chosen]),
            tuple(channels))


def evaluate_held_out(model, cases: list[CaseSamples], seed: int = 0) -> dict:
    """Voxel accuracy (pooled) and per-patient AUC with a bootstrap CI over patients, on the held-out cases."""
    from scipy.stats import bootstrap
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rows, scores, truths = [], [], []
    for case in cases:
        probability = model.probability(case.matrix)
        predicted = (probability >= model.threshold).astype(int)
        both = len(np.unique(case.labels)) == 2
        rows.append({"case": case.name, "progression_voxels": int(case.labels.sum()),
                     "non_progression_voxels": int((case.labels == 0).sum()),
                     "accuracy": float((predicted == case.labels).mean()),
                     "auc": float(roc_auc_score(case.labels, probability)) if both else None,
                     "distance_auc": float(roc_auc_score(case.labels, -case.distance_mm)) if both else None})
        scores.append(probability)
        truths.append(case.labels)
    score, truth = np.concatenate(scores), np.concatenate(truths).astype(int)
    aucs = np.array([row["auc"] for row in rows if row["auc"] is not None])
    baseline = [row["distance_auc"] for row in rows if row["distance_auc"] is not None]
    interval, why = None, None
    if len(aucs) >= MIN_PATIENTS_FOR_CI and np.ptp(aucs) > 0:
        result = bootstrap((aucs,), np.mean, n_resamples=BOOTSTRAP_REPLICATES, method="percentile",
                           random_state=np.random.default_rng(seed))
        interval = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
    else:
        why = (f"{len(aucs)} held-out patient(s) with both classes; a bootstrap CI needs at least "
               f"{MIN_PATIENTS_FOR_CI} with differing AUCs")
    pooled_both = len(np.unique(truth)) == 2
    return {
        "patients": len(rows), "patients_with_auc": int(len(aucs)), "threshold": model.threshold,
        "voxel_accuracy": float(((score >= model.threshold).astype(int) == truth).mean()),
        "voxel_balanced_accuracy": float(balanced_accuracy_score(truth, (score >= model.threshold).astype(int)))
        if pooled_both else None,
        "pooled_auc": float(roc_auc_score(truth, score)) if pooled_both else None,
        "mean_patient_auc": float(aucs.mean()) if len(aucs) else None,
        "mean_patient_auc_ci95": interval, "ci_note": why,
        "mean_patient_distance_auc": float(np.mean(baseline)) if baseline else None,
        "distance_baseline": "AUC of the distance to the tumour core alone (nearer = more likely progression), on the "
                             "same voxels: what the map must beat to show more than proximity",
        "ci_method": f"percentile bootstrap over patients (scipy.stats.bootstrap, {BOOTSTRAP_REPLICATES} resamples)",
        "cases": rows,
    }


def cases_csv(evaluation: dict | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = ("case", "progression_voxels", "non_progression_voxels", "accuracy", "auc", "distance_auc")
    writer.writerow(columns)
    for row in (evaluation or {}).get("cases", []):
        writer.writerow(["" if row[c] is None else (f"{row[c]:.4f}" if isinstance(row[c], float) else row[c])
                         for c in columns])
    return buffer.getvalue()


def _summary(evaluation: dict | None) -> dict | None:
    if evaluation is None:
        return None
    return {k: v for k, v in evaluation.items() if k != "cases"}


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _checked_channels(channels) -> tuple[str, ...]:
    from GliomaProgressionLib.case.channels import check_channel_name

    names = tuple(channels)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"The invasion model's channels must name each channel once, got "
                         f"{', '.join(names) or 'none'}.")
    for name in names:
        check_channel_name(name, "A channel of the invasion model")
    return names
