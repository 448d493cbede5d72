"""Per-patient evaluation of progression models (``gliomaprog cohort evaluate``), as in seed 000 (Heo 2023).

Inputs are folders of per-case images with the same file names (``<case>.nii.gz``, ``.nii`` or ``.nrrd``):
predictions (probability maps 0..1, or 0/1 masks), truth (progression masks) and optionally NEL masks. With NEL
masks, predictions and truth are both restricted to the NEL, where seed 000 annotated progression.

Per patient: truth "progression" if the truth mask has at least one voxel; predicted "progression" if at least
``min_voxels`` voxels have p >= ``threshold``. Statistics (every proportion with its 95% Wilson score interval,
``scipy.stats.binomtest``):

- sensitivity TP/(TP+FN), specificity TN/(TN+FP), accuracy (TP+TN)/N;
- AUC of the per-patient maximum probability (``sklearn.metrics``) with a stratified percentile bootstrap 95% CI
  (``scipy.stats.bootstrap``, positives and negatives resampled separately, fixed seed);
- voxel-level Dice of the thresholded prediction and the truth, over patients with progression (mean and
  sample SD);
- with a second model, McNemar's exact test (two-sided binomial test on the discordant pairs) on the per-patient
  correctness: over all patients, over patients with progression (sensitivity) and without (specificity).

Degenerate cohorts give documented values, never NaN: a proportion with an empty denominator (sensitivity with no
progression patient, specificity with none without) and the AUC of a cohort with a single class are ``None``
(empty in CSV, ``null`` in JSON, "n/a" in Markdown); a McNemar test with no discordant pair has p = 1; the Dice
summary of a cohort without progression is ``None`` with n = 0, and its SD with a single patient is 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 20230101  # fixed: the same cohort always gives the same interval
MASK_LEVEL = 0.5  # truth and NEL images are masks: any value above this is inside


# --- statistics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proportion:
    """k successes out of n, with its 95% Wilson score interval (all ``None`` when n = 0)."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None


def wilson_interval(k: int, n: int) -> Proportion:
    """Proportion k/n with the 95% Wilson score interval (Wilson 1927; Newcombe 1998, method 3), from scipy."""
    from scipy.stats import binomtest

    if n == 0:
        return Proportion(k, n, None, None, None)
    interval = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    # Exactly 0 (k = 0) and 1 (k = n) in theory; in floating point the bound can be 5e-17 off.
    low = 0.0 if k == 0 else float(interval.low)
    high = 1.0 if k == n else float(interval.high)
    return Proportion(k, n, k / n, low, high)


def mcnemar_exact(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> dict:
    """McNemar's exact test: two-sided binomial test of the discordant pairs against 1/2.

    Returns b (first right, second wrong), c (first wrong, second right) and p; p = 1 without discordant pairs."""
    from scipy.stats import binomtest

    first, second = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    b, c = int(np.sum(first & ~second)), int(np.sum(~first & second))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "n_discordant": b + c, "p": p}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
    """ROC curve (false- and true-positive rates) and AUC (scikit-learn); empty curve and None for one class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return np.zeros(0), np.zeros(0), None
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(roc_auc_score(labels, scores))


def bootstrap_auc_interval(scores: np.ndarray, labels: np.ndarray, replicates: int = BOOTSTRAP_REPLICATES,
                           seed: int = BOOTSTRAP_SEED) -> tuple[float | None, float | None]:
    """Percentile 95% CI of the AUC (scipy's bootstrap), resampling positives and negatives separately
    (stratified), so that every replicate keeps both classes; (None, None) for a single-class cohort."""
    from scipy.stats import bootstrap, mannwhitneyu

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        return None, None

    def auc(resampled_positives, resampled_negatives, axis=-1):
        # AUC = U / (n1 n2): Mann-Whitney's U counts the (positive, negative) pairs ranked right, ties 1/2.
        u = mannwhitneyu(resampled_positives, resampled_negatives, axis=axis, method="asymptotic").statistic
        return u / (resampled_positives.shape[axis] * resampled_negatives.shape[axis])

    result = bootstrap((positives, negatives), auc, n_resamples=replicates, vectorized=True, paired=False,
                       confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Voxel-level Dice 2|P∩T|/(|P|+|T|); 1 when both are empty (they agree)."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.sum(predicted & truth)) / total


# --- per case --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseOutcome:
    """One patient under one model; volumes in voxels, probability 0..1."""

    case: str
    truth_progression: bool
    truth_voxels: int
    max_probability: float
    predicted_voxels: int
    predicted_progression: bool
    dice: float | None  # None for patients without progression (not part of the Dice summary)


@dataclass(frozen=True)
class EvaluationSettings:
    threshold: float = 0.5  # probability cut-off
    min_voxels: int = 1  # predicted voxels for a "progression" verdict (seed 000: one voxel)
    bootstrap_replicates: int = BOOTSTRAP_REPLICATES
    seed: int = BOOTSTRAP_SEED

    def validated(self) -> "EvaluationSettings":
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"The probability threshold must be in (0, 1], got {self.threshold}.")
        if self.min_voxels < 1:
            raise ValueError(f"The voxels needed for a progression verdict must be at least 1, got {self.min_voxels}.")
        return self


def case_outcome(case: str, probability: np.ndarray, truth: np.ndarray, nel: np.ndarray | None,
                 settings: EvaluationSettings) -> CaseOutcome:
    """Verdicts, maximum probability and Dice of one patient (arrays on one grid; truth and NEL as masks)."""
    truth = truth > MASK_LEVEL
    if nel is not None:
        inside = nel > MASK_LEVEL
        truth, probability = truth & inside, np.where(inside, probability, 0.0)
    predicted = probability >= settings.threshold
    progression = bool(truth.any())
    return CaseOutcome(case, progression, int(truth.sum()), float(probability.max(initial=0.0)),
                       int(predicted.sum()), int(predicted.sum()) >= settings.min_voxels,
                       dice(predicted, truth) if progression else None)


# --- per model -------------------------------------------------------------------------------------------------


@dataclass
class ModelSummary:
    name: str
    outcomes: list[CaseOutcome]
    counts: dict = field(default_factory=dict)
    sensitivity: Proportion | None = None
    specificity: Proportion | None = None
    accuracy: Proportion | None = None
    auc: float | None = None
    auc_low: float | None = None
    auc_high: float | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    dice_mean: float | None = None
    dice_sd: float | None = None
    dice_n: int = 0


def summarise(name: str, outcomes: list[CaseOutcome], settings: EvaluationSettings) -> ModelSummary:
    """Confusion counts, Wilson proportions, ROC/AUC with its bootstrap CI and the Dice summary of one model."""
    truth = np.array([o.truth_progression for o in outcomes], bool)
    verdict = np.array([o.predicted_progression for o in outcomes], bool)
    scores = np.array([o.max_probability for o in outcomes], float)
    tp, fn = int(np.sum(truth & verdict)), int(np.sum(truth & ~verdict))
    tn, fp = int(np.sum(~truth & ~verdict)), int(np.sum(~truth & verdict))
    summary = ModelSummary(name, outcomes, {"n": len(outcomes), "tp": tp, "fn": fn, "tn": tn, "fp": fp})
    summary.sensitivity, summary.specificity = wilson_interval(tp, tp + fn), wilson_interval(tn, tn + fp)
    summary.accuracy = wilson_interval(tp + tn, len(outcomes))
    fpr, tpr, summary.auc = roc_auc(scores, truth)
    summary.roc_fpr, summary.roc_tpr = [float(x) for x in fpr], [float(x) for x in tpr]
    summary.auc_low, summary.auc_high = bootstrap_auc_interval(scores, truth, settings.bootstrap_replicates,
                                                               settings.seed)
    dices = np.array([o.dice for o in outcomes if o.dice is not None], float)
    summary.dice_n = int(dices.size)
    if dices.size:
        summary.dice_mean = float(dices.mean())
        summary.dice_sd = float(dices.std(ddof=1)) if dices.size > 1 else 0.0
    return summary


def compare_models(first: ModelSummary, second: ModelSummary) -> dict:
    """McNemar exact tests of two models on the same patients: all, with progression, without progression."""
    truth = np.array([o.truth_progression for o in first.outcomes], bool)
    correct = [np.array([o.predicted_progression == o.truth_progression for o in s.outcomes], bool)
               for s in (first, second)]
    return {"first": first.name, "second": second.name,
            "all_patients": mcnemar_exact(correct[0], correct[1]),
            "progression_patients": mcnemar_exact(correct[0][truth], correct[1][truth]),
            "non_progression_patients": mcnemar_exact(correct[0][~truth], correct[1][~truth])}


# --- reading the folders ---------------------------------------------------------------------------------------


def case_files(folder: Path, what: str) -> dict[str, Path]:
    """``{case: file}`` of the images in a folder (hidden files ignored); ValueError when there are none."""
    if not folder.is_dir():
        raise ValueError(f"The {what} folder {folder} does not exist.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in IMAGE_SUFFIXES if path.name.endswith(s)), None)
        if suffix and not path.name.startswith(".") and path.is_file():
            case = path.name[: -len(suffix)]
            if case in found:
                raise ValueError(f"The {what} folder {folder} holds case {case} twice ({found[case].name}, "
                                 f"{path.name}).")
            found[case] = path
    if not found:
        raise ValueError(f"The {what} folder {folder} holds no image (.nii.gz, .nii or .nrrd).")
    return found


def check_same_cases(truth: dict[str, Path], other: dict[str, Path], what: str) -> None:
    """Every truth case must have a file in ``other`` and ``other`` no case the truth lacks."""
    missing, unknown = sorted(set(truth) - set(other)), sorted(set(other) - set(truth))
    if missing:
        raise ValueError(f"The {what} folder has no file for {len(missing)} truth case(s): {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}.")
    if unknown:
        raise ValueError(f"The {what} folder holds {len(unknown)} case(s) without truth: {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}.")


def read_probability(path: Path, what: str):
    """A probability map or 0/1 mask as a Volume of float32; ValueError for values outside 0..1 or NaN."""
    from GliomaProgressionLib.case.files import read_3d_volume

    volume = read_3d_volume(path, f"{what} file")
    array = volume.array.astype(np.float32)
    if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
        raise ValueError(f"The {what} file {path} holds values outside 0..1 (expected probabilities or a 0/1 mask).")
    volume.array = array
    return volume


def read_mask_on(path: Path, grid, grid_file: str, what: str) -> np.ndarray:
    """A mask's array, checked to lie on the grid of ``grid`` (the prediction Volume read from ``grid_file``)."""
    from GliomaProgressionLib.case.files import read_volume
    from GliomaProgressionLib.case.geometry import same_grid

    volume = read_volume(path, what)
    if not same_grid(volume.ijk_to_ras, grid.ijk_to_ras, volume.spatial_shape, grid.spatial_shape):
        raise ValueError(f"The {what} file {path} is not on the grid of the prediction {grid_file} "
                         f"(shape {volume.spatial_shape} vs {grid.spatial_shape}, or another position/spacing).")
    return volume.array


def evaluate_folder(predictions: Path, truth_files: dict[str, Path], nel_files: dict[str, Path] | None,
                    settings: EvaluationSettings, what: str = "predictions") -> list[CaseOutcome]:
    """The outcome of every truth case under the model whose predictions are in ``predictions``."""
    prediction_files = case_files(predictions, what)
    check_same_cases(truth_files, prediction_files, what)
    outcomes = []
    for case, truth_path in truth_files.items():
        probability = read_probability(prediction_files[case], f"{what} {case}")
        grid_file = prediction_files[case].name
        truth = read_mask_on(truth_path, probability, grid_file, f"truth {case}")
        nel = read_mask_on(nel_files[case], probability, grid_file, f"NEL {case}") if nel_files else None
        outcomes.append(case_outcome(case, probability.array, truth, nel, settings))
    return outcomes


# --- writing ---------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("model", "n_patients", "n_progression", "tp", "fn", "tn", "fp",
                   "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
                   "specificity", "specificity_ci_low", "specificity_ci_high",
                   "accuracy", "accuracy_ci_low", "accuracy_ci_high", "auc", "auc_ci_low", "auc_ci_high",
                   "dice_mean", "dice_sd", "dice_n", "threshold", "min_voxels")
CASE_COLUMNS = ("model", "case", "truth_progression", "truth_voxels", "max_probability", "predicted_voxels",
                "predicted_progression", "correct", "dice")


def _cell(value) -> str:
    """CSV cell: None (undefined statistic) is empty, floats with 6 significant digits, booleans as 0/1."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_row(summary: ModelSummary, settings: EvaluationSettings) -> dict:
    row = {"model": summary.name, "n_patients": summary.counts["n"],
           "n_progression": summary.counts["tp"] + summary.counts["fn"], **{k: summary.counts[k] for k in
                                                                            ("tp", "fn", "tn", "fp")}}
    for name in ("sensitivity", "specificity", "accuracy"):
        proportion = getattr(summary, name)
        row.update({name: proportion.value, f"{name}_ci_low": proportion.low, f"{name}_ci_high": proportion.high})
    row.update({"auc": summary.auc, "auc_ci_low": summary.auc_low, "auc_ci_high": summary.auc_high,
                "dice_mean": summary.dice_mean, "dice_sd": summary.dice_sd, "dice_n": summary.dice_n,
                "threshold": settings.threshold, "min_voxels": settings.min_voxels})
    return row


def csv_text(columns: Sequence[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(row.get(key)) for key in columns} for row in rows)
    return buffer.getvalue()


def case_rows(summary: ModelSummary) -> list[dict]:
    return [{**asdict(o), "model": summary.name, "correct": o.predicted_progression == o.truth_progression}
            for o in summary.outcomes]


def _percent(proportion: Proportion) -> str:
    if proportion.value is None:
        return "n/a (no patient)"
    return (f"{100 * proportion.value:.1f}% ({proportion.k}/{proportion.n}) "
            f"[{100 * proportion.low:.1f}, {100 * proportion.high:.1f}]")


def _auc_text(summary: ModelSummary) -> str:
    if summary.auc is None:
        return "n/a (one class)"
    return f"{summary.auc:.3f} [{summary.auc_low:.3f}, {summary.auc_high:.3f}]"


def _dice_text(summary: ModelSummary) -> str:
    if summary.dice_mean is None:
        return "n/a (no progression)"
    return f"{summary.dice_mean:.3f} ± {summary.dice_sd:.3f} (n = {summary.dice_n})"


def markdown_table(summaries: list[ModelSummary], comparison: dict | None, settings: EvaluationSettings,
                   nel: bool = False) -> str:
    """Seed 000's Table 2 layout: one row per model; sensitivity, specificity, accuracy (95% CI), AUC, Dice."""
    where = " in NEL" if nel else ""
    lines = ["| Model | Sensitivity (95% CI) | Specificity (95% CI) | Accuracy (95% CI) | AUC (95% CI) | "
             f"Dice{where} (mean ± SD) |", "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.name} | {_percent(s.sensitivity)} | {_percent(s.specificity)} | {_percent(s.accuracy)} "
                     f"| {_auc_text(s)} | {_dice_text(s)} |")
    lines += ["", f"Patients: {summaries[0].counts['n']} ({summaries[0].counts['tp'] + summaries[0].counts['fn']} "
              f"with progression). A patient is predicted 'progression' when at least {settings.min_voxels} "
              f"voxel(s) have p >= {settings.threshold:g}. Proportions: percentage (k/n) [95% Wilson score "
              f"interval]. AUC of the per-patient maximum probability, 95% CI from {settings.bootstrap_replicates} "
              f"stratified bootstrap replicates (seed {settings.seed}). Dice over patients with progression"
              f"{'; predictions and truth restricted to the NEL' if nel else ' (whole image: no NEL given)'}."]
    if comparison:
        tests = ", ".join(f"{label} p = {comparison[key]['p']:.3g} (discordant {comparison[key]['b']}/"
                          f"{comparison[key]['c']})" for key, label in
                          (("progression_patients", "sensitivity"), ("non_progression_patients", "specificity"),
                           ("all_patients", "accuracy")))
        lines += ["", f"McNemar exact test, {comparison['first']} vs {comparison['second']}: {tests}."]
    return "\n".join(lines) + "\n"


def plot_roc(summaries: list[ModelSummary], path: Path) -> None:
    """ROC curves of the models (per-patient maximum probability) with their AUC, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or in a batch job
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5), dpi=120)
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for s in summaries:
        if s.auc is None:
            axes.plot([], [], label=f"{s.name}: ROC undefined (one class only)")
            continue
        # Straight lines between the ROC vertices: a tie between a positive and a negative patient is a diagonal.
        axes.plot(s.roc_fpr, s.roc_tpr, linewidth=2,
                  label=f"{s.name}: AUC {s.auc:.3f} [{s.auc_low:.3f}, {s.auc_high:.3f}]")
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity", ylabel="Sensitivity",
             title="Per-patient ROC (maximum probability)")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_results(folder: Path, summaries: list[ModelSummary], comparison: dict | None,
                  settings: EvaluationSettings, nel: bool = False) -> None:
    """evaluation.csv, evaluation.md, evaluation.json, per_case.csv and roc.png into ``folder``."""
    (folder / "evaluation.csv").write_text(csv_text(SUMMARY_COLUMNS, [summary_row(s, settings) for s in summaries]),
                                           encoding="utf-8")
    (folder / "per_case.csv").write_text(csv_text(CASE_COLUMNS, [r for s in summaries for r in case_rows(s)]),
                                         encoding="utf-8")
    (folder / "evaluation.md").write_text(markdown_table(summaries, comparison, settings, nel),
                                            encoding="utf-8")
    data = {"settings": {**asdict(settings), "nel": nel}, "models": [summary_row(s, settings) for s in summaries],
            "roc": {s.name: {"fpr": s.roc_fpr, "tpr": s.roc_tpr} for s in summaries}, "mcnemar": comparison}
    # allow_nan=False: a NaN reaching this point is a bug, and must fail rather than write invalid JSON.
    (folder / "evaluation.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plot_roc(summaries, folder / "roc.png")


# --- the command -----------------------------------------------------------------------------------------------


def _model_names(predictions: Path, compare: Path | None) -> tuple[str, str | None]:
    first = predictions.resolve().name or "model"
    if compare is None:
        return first, None
    second = compare.resolve().name or "comparison"
    return (first, second) if first != second else (f"{first} (predictions)", f"{second} (compare)")


def evaluate_cohort(predictions: str | os.PathLike, truth: str | os.PathLike, out: str | os.PathLike,
                    compare: str | os.PathLike | None = None, nel: str | os.PathLike | None = None,
                    settings: EvaluationSettings = EvaluationSettings(),
                    progress: Callable[[float, str], None] | None = None) -> dict:
    """Evaluate one model (and optionally compare a second) on a cohort; write the results into the new folder
    ``out`` (all or nothing). Every input is read and checked before anything is written."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder

    settings = settings.validated()
    out = check_new_output_folder(out)
    predictions, truth = Path(predictions), Path(truth)
    compare, nel = (Path(compare) if compare else None), (Path(nel) if nel else None)
    report = progress or (lambda fraction, message: None)
    truth_files = case_files(truth, "truth")
    nel_files = case_files(nel, "NEL") if nel else None
    if nel_files is not None:
        check_same_cases(truth_files, nel_files, "NEL")
    names = _model_names(predictions, compare)
    report(0.0, f"Reading {len(truth_files)} case(s) of {names[0]}")
    summaries = [summarise(names[0], evaluate_folder(predictions, truth_files, nel_files, settings), settings)]
    if compare is not None:
        report(0.45, f"Reading {len(truth_files)} case(s) of {names[1]}")
        outcomes = evaluate_folder(compare, truth_files, nel_files, settings, "compared predictions")
        summaries.append(summarise(names[1], outcomes, settings))
    comparison = compare_models(*summaries) if compare is not None else None
    report(0.9, "Writing the tables and the ROC plot")
    with staged_output_folder(out) as staging:
        write_results(staging, summaries, comparison, settings, nel is not None)
    return {"models": [summary_row(s, settings) for s in summaries], "mcnemar": comparison,
            "markdown": markdown_table(summaries, comparison, settings, nel is not None)}
