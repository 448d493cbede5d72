"""AI-adapted against standard CTVs, per patient and across a cohort (``gliomaprog cohort evaluate --ctv``): Tran et
al. 2025 (seed 003: sensitivity and specificity per patient, paired tests) and the PREDICT-GBM benchmark (Zimmer et
al. 2025: recurrence coverage when every plan has the volume of the standard 15 mm CTV, paired Wilcoxon tests).

Input: one or more folders of ``gliomaprog run`` outputs, one folder per model, each holding one run per case (what
``gliomaprog run --batch`` writes; the case names must agree). From each case's run (``RUN_FILES``): the CTVs in
``ctv/`` (``ctv_<key>.nii.gz``), and in ``registered/`` the lesion labels, the brain mask and the recurrence mask,
which the run copies from the case folder's ``recurrence.*`` onto the CE-T1 reference grid, plus the model's
probability map in ``prediction/``: all on one grid.

Plans: the standard CTV (``standard``, default EORTC: enhancing tumour U cavity U necrosis + 15 mm, as in seed 003)
of the first folder, and each folder's AI CTV (current lesion U predicted progression + margin).

Per patient, within the brain B, with R the recurrence and T the plan (``CTVPlannerLib.metrics.target_metrics``):

- sensitivity |R n T| / |R|: the recurrence covered;
- specificity |B \\ (R u T)| / |B \\ R|: the healthy brain spared, the reference region being the brain minus the
  recurrence;
- at equal volume: every plan made as large as the standard CTV (V = |standard n B| voxels), then the same two.
  The standard keeps its own shape. The AI plan is the first V brain voxels in this order: the GTV core (BraTS
  labels 1, 3, 4: every plan holds it); then the non-enhancing lesion (label 2) by the model's probability,
  highest first (PREDICT-GBM thresholds a model's map at the standard plan's volume; this model predicts inside
  the NEL); then the rest of the brain by distance from the lesion, nearest first (a margin, as the AI CTV's
  own). Ties go by distance from the core, then by voxel order (numpy C order), so the plan is reproducible.

Across patients: mean and sample SD of each metric per plan, and the paired Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, two-sided, zero differences dropped as Wilcoxon did, exact distribution for small
cohorts without ties) of each AI plan against the standard and, with several models, against the first model's AI
plan. When every difference is zero, p = 1 and the statistic is empty. At least ``MIN_PATIENTS`` = 6 patients: with
fewer, no two-sided exact signed-rank test can reach p < 0.05 (its smallest p is 2 / 2^n, 0.0625 for n = 5).
Every patient needs a non-empty recurrence inside the brain (the coverage of nothing is undefined).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from CTVPlannerLib.schemes import BOOST_CONTAINERS

STANDARD_PLANS = BOOST_CONTAINERS  # the standard CTVs, every one a boost may be kept inside
DEFAULT_STANDARD = "eortc"
AI_PLAN = "ai"
MIN_PATIENTS = 6
METRICS = ("sensitivity", "specificity", "equal_volume_sensitivity", "equal_volume_specificity")
METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity",
                 "equal_volume_sensitivity": "Coverage at equal volume",
                 "equal_volume_specificity": "Specificity at equal volume"}
# What a `gliomaprog run` output folder holds (runs/chain.py), relative to the case's run folder.
RUN_FILES = {"lesion": "registered/lesion.nii.gz", "brain": "registered/brain.nii.gz",
             "recurrence": "registered/recurrence.nii.gz", "probability": "prediction/progression_prob.nii.gz"}
RUN_CTV = "ctv/ctv_{key}.nii.gz"


# --- one patient -------------------------------------------------------------------------------------------------


@dataclass
class CaseRun:
    """What one case's run holds for the comparison, as arrays on one grid."""

    case: str
    folder: Path
    labels: np.ndarray
    brain: np.ndarray
    recurrence: np.ndarray
    probability: np.ndarray
    plans: dict  # key -> bool mask
    ijk_to_ras: np.ndarray


def ranked_ai_plan(labels: np.ndarray, brain: np.ndarray, probability: np.ndarray, voxels: int,
                   spacing_kji) -> np.ndarray:
    """The AI plan of ``voxels`` brain voxels, in the order of the module text (core, NEL by probability, the rest
    by distance from the lesion)."""
    from CTVPlannerLib.margins import distance_from_mask_mm
    from CTVPlannerLib.schemes import SNFH, gtv_masks

    seeds = gtv_masks(labels)
    core, nel = seeds["core"] & brain, (labels == SNFH) & brain
    tier = np.where(core, 0, np.where(nel, 1, 2))
    within_tier = np.where(nel, -probability, distance_from_mask_mm(seeds["lesion"], spacing_kji))
    from_core = distance_from_mask_mm(seeds["core"], spacing_kji)
    inside = np.flatnonzero(brain)
    order = np.lexsort((from_core.ravel()[inside], within_tier.ravel()[inside], tier.ravel()[inside]))
    plan = np.zeros(brain.size, bool)
    plan[inside[order[:voxels]]] = True
    return plan.reshape(brain.shape)


def case_metrics(run: CaseRun, standard: str, with_standard: bool = True) -> dict:
    """{plan key: metrics} of one patient: the native plans and the plans at the standard's volume (the standard's
    own only when ``with_standard``: it is the same in every model's runs)."""
    from CTVPlannerLib.grid import spacing_kji, voxel_volume_ml
    from CTVPlannerLib.metrics import target_metrics

    spacing, voxel_ml = spacing_kji(run.ijk_to_ras), voxel_volume_ml(run.ijk_to_ras)
    volume = int((run.plans[standard] & run.brain).sum())
    resized = {standard: run.plans[standard],
               AI_PLAN: ranked_ai_plan(run.labels, run.brain, run.probability, volume, spacing)}
    rows = {}
    for key in (standard, AI_PLAN) if with_standard else (AI_PLAN,):
        native = target_metrics(run.plans[key], run.recurrence, run.brain, spacing, voxel_ml)
        equal = target_metrics(resized[key], run.recurrence, run.brain, spacing, voxel_ml)
        rows[key] = {"volume_ml": native["target_ml"], "recurrence_ml": native["recurrence_ml"],
                     "sensitivity": native["sensitivity"], "specificity": native["specificity"],
                     "equal_volume_ml": equal["target_ml"], "equal_volume_sensitivity": equal["sensitivity"],
                     "equal_volume_specificity": equal["specificity"]}
    return rows


# --- reading the runs ---------------------------------------------------------------------------------------------


def run_cases(runs: Path) -> dict[str, Path]:
    """{case: run folder} of a folder of runs (hidden and staging folders ignored)."""
    if not runs.is_dir():
        raise ValueError(f"The run folder {runs} does not exist.")
    if (runs / "ctv").is_dir():
        raise ValueError(f"{runs} is the output of a single run; give the folder holding one run per case "
                         "(what gliomaprog run --batch writes).")
    cases = {path.name: path for path in sorted(runs.iterdir()) if path.is_dir() and not path.name.startswith(".")}
    if not cases:
        raise ValueError(f"The run folder {runs} holds no case run.")
    return cases


def _read_on_grid(path: Path, grid, case: str, what: str) -> np.ndarray:
    from GliomaProgressionLib.case.files import read_3d_volume
    from GliomaProgressionLib.case.geometry import same_grid

    volume = read_3d_volume(path, f"{what} of case {case}")
    if not same_grid(volume.ijk_to_ras, grid.ijk_to_ras, volume.array.shape, grid.array.shape):
        raise ValueError(f"The {what} of case {case} ({path}) is not on the grid of its CTVs.")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError(f"The {what} of case {case} ({path}) holds non-finite values.")
    return volume.array


def read_case_run(case: str, folder: Path, standard: str) -> CaseRun:
    """One case's run, every file checked: present, on the grid of the standard CTV, a recurrence in the brain."""
    from GliomaProgressionLib.case.files import read_3d_volume

    needed = {f"{key} CTV": RUN_CTV.format(key=key) for key in (standard, AI_PLAN)} | {
        name: path for name, path in RUN_FILES.items()}
    for what, relative in needed.items():
        if not (folder / relative).is_file():
            advice = ("put the recurrence mask (recurrence.nii.gz) in its case folder and run it again"
                      if what == "recurrence" else "run it again with the ai scheme and a progression model")
            raise ValueError(f"The run of case {case} ({folder}) has no {relative}: {advice}.")
    grid = read_3d_volume(folder / RUN_CTV.format(key=standard), f"{standard} CTV of case {case}")
    plans = {standard: grid.array != 0,
             AI_PLAN: _read_on_grid(folder / RUN_CTV.format(key=AI_PLAN), grid, case, "AI CTV") != 0}
    arrays = {name: _read_on_grid(folder / path, grid, case, name) for name, path in RUN_FILES.items()}
    brain, recurrence = arrays["brain"] != 0, arrays["recurrence"] != 0
    if not (recurrence & brain).any():
        raise ValueError(f"The recurrence of case {case} ({folder / RUN_FILES['recurrence']}) has no voxel in the "
                         "brain; the comparison needs a recurrence in every case.")
    probability = arrays["probability"].astype(np.float32)
    if probability.min() < 0 or probability.max() > 1:
        raise ValueError(f"The probability map of case {case} holds values outside 0..1.")
    return CaseRun(case, folder, np.rint(arrays["lesion"]).astype(np.int16), brain, recurrence, probability, plans,
                   grid.ijk_to_ras)


def same_patient(first: CaseRun, other: CaseRun) -> CaseRun:
    """``other``, checked to hold the first model's patient: the same grid, lesion, brain and recurrence."""
    for what in ("labels", "brain", "recurrence"):
        if getattr(other, what).shape != getattr(first, what).shape or \
                not np.array_equal(getattr(other, what), getattr(first, what)):
            name = {"labels": "lesion"}.get(what, what)
            raise ValueError(f"The runs of case {first.case} in {first.folder.parent} and {other.folder.parent} "
                             f"disagree on the {name}; compare runs of the same cases.")
    return other


def model_names(runs: list[Path]) -> list[str]:
    """Each run folder's name, numbered when two are alike."""
    names = [path.resolve().name or "runs" for path in runs]
    return [f"{name} ({index + 1})" if names.count(name) > 1 else name for index, name in enumerate(names)]


def check_case_sets(case_sets: list[dict[str, Path]], runs: list[Path]) -> list[str]:
    cases = sorted(case_sets[0])
    for other, folder in zip(case_sets[1:], runs[1:]):
        missing, extra = sorted(set(cases) - set(other)), sorted(set(other) - set(cases))
        if missing or extra:
            raise ValueError(f"The run folder {folder} does not hold the cases of {runs[0]} (missing "
                             f"{', '.join(missing[:5]) or 'none'}; extra {', '.join(extra[:5]) or 'none'}).")
    if len(cases) < MIN_PATIENTS:
        raise ValueError(f"The run folder {runs[0]} holds {len(cases)} case(s); the paired Wilcoxon tests need at "
                         f"least {MIN_PATIENTS} patients.")
    return cases


# --- statistics ----------------------------------------------------------------------------------------------------


def paired_wilcoxon(values, reference) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values (module text); p = 1 when every difference is zero."""
    from scipy.stats import wilcoxon

    differences = np.asarray(values, float) - np.asarray(reference, float)
    summary = {"n": int(differences.size), "n_nonzero": int(np.count_nonzero(differences)),
               "mean_difference": float(differences.mean()), "median_difference": float(np.median(differences))}
    if summary["n_nonzero"] == 0:
        return {**summary, "statistic": None, "p": 1.0}
    result = wilcoxon(differences, zero_method="wilcox", alternative="two-sided")
    return {**summary, "statistic": float(result.statistic), "p": float(result.pvalue)}


def summarise(plan: str, rows: list[dict]) -> dict:
    """Mean and sample SD of each metric (and of the volumes) of one plan over the patients."""
    summary = {"plan": plan, "n_patients": len(rows)}
    for metric in ("volume_ml", "equal_volume_ml") + METRICS:
        values = np.array([row[metric] for row in rows], float)
        summary[f"{metric}_mean"] = float(values.mean())
        summary[f"{metric}_sd"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return summary


# --- the command ---------------------------------------------------------------------------------------------------


def evaluate_ctvs(runs: list[str | os.PathLike], out: str | os.PathLike, standard: str = DEFAULT_STANDARD,
                  progress: Callable[[float, str], None] | None = None) -> dict:
    """Compare each model's AI CTV with the standard CTV over the cases of ``runs`` (folders of run outputs, one per
    model); write the tables into the new folder ``out`` (all or nothing). Every input is read first."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder

    report = progress or (lambda fraction, message: None)
    if standard not in STANDARD_PLANS:
        raise ValueError(f"Unknown standard CTV {standard!r}: choose one of {', '.join(STANDARD_PLANS)}.")
    if not runs:
        raise ValueError("No run folder was given; give one folder of runs per model.")
    out = check_new_output_folder(out)
    runs = [Path(folder) for folder in runs]
    names = model_names(runs)
    cases = check_case_sets([run_cases(folder) for folder in runs], runs)
    standard_name = f"standard {standard}"
    per_case = []
    for index, case in enumerate(cases):
        report(index / len(cases), f"Case {case} ({index + 1}/{len(cases)})")
        first = read_case_run(case, runs[0] / case, standard)
        for position, (model, folder) in enumerate(zip(names, runs)):
            run = first if position == 0 else same_patient(first, read_case_run(case, folder / case, standard))
            metrics = case_metrics(run, standard, with_standard=run is first)
            if run is first:
                per_case.append({"case": case, "plan": standard_name, **metrics[standard]})
            per_case.append({"case": case, "plan": f"AI {model}", **metrics[AI_PLAN]})
    plans = [standard_name] + [f"AI {model}" for model in names]
    summaries = [summarise(plan, [row for row in per_case if row["plan"] == plan]) for plan in plans]
    tests = comparisons(per_case, plans)
    result = {"standard": standard, "models": names, "runs": [str(folder) for folder in runs], "cases": cases,
              "plans": summaries, "wilcoxon": tests}
    report(0.95, "Writing the tables")
    with staged_output_folder(out) as staging:
        write_results(staging, result, per_case)
    return {**result, "markdown": markdown_table(result)}


def comparisons(per_case: list[dict], plans: list[str]) -> list[dict]:
    """Each AI plan against the standard and, with several models, against the first model's AI plan."""
    def values(plan, metric):
        return [row[metric] for row in per_case if row["plan"] == plan]  # cases in one order for every plan

    pairs = [(plan, plans[0]) for plan in plans[1:]] + [(plan, plans[1]) for plan in plans[2:]]
    return [{"plan": plan, "reference": reference, "metric": metric,
             **paired_wilcoxon(values(plan, metric), values(reference, metric))}
            for plan, reference in pairs for metric in METRICS]


# --- writing -------------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("plan", "n_patients", "volume_ml_mean", "volume_ml_sd", "equal_volume_ml_mean",
                   "equal_volume_ml_sd") + tuple(f"{m}_{s}" for m in METRICS for s in ("mean", "sd"))
TEST_COLUMNS = ("plan", "reference", "metric", "n", "n_nonzero", "mean_difference", "median_difference",
                "statistic", "p")
CASE_COLUMNS = ("case", "plan", "volume_ml", "recurrence_ml", "sensitivity", "specificity", "equal_volume_ml",
                "equal_volume_sensitivity", "equal_volume_specificity")


def markdown_table(result: dict) -> str:
    """One row per plan: volume and each metric as mean ± SD, the AI rows with the p of their test against the
    standard; then the model-against-model tests."""
    tests = {(t["plan"], t["reference"], t["metric"]): t for t in result["wilcoxon"]}
    standard = result["plans"][0]["plan"]
    lines = ["| Plan | Volume (mL) | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for summary in result["plans"]:
        cells = [f"{summary['volume_ml_mean']:.1f} ± {summary['volume_ml_sd']:.1f}"]
        for metric in METRICS:
            cell = f"{summary[f'{metric}_mean']:.3f} ± {summary[f'{metric}_sd']:.3f}"
            test = tests.get((summary["plan"], standard, metric))
            cells.append(cell + (f" (p = {test['p']:.3g})" if test else ""))
        lines.append(f"| {summary['plan']} | " + " | ".join(cells) + " |")
    others = [t for t in result["wilcoxon"] if t["reference"] != standard]
    if others:
        lines += ["", "| Plan | against | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for plan in dict.fromkeys(t["plan"] for t in others):
            reference = next(t["reference"] for t in others if t["plan"] == plan)
            cells = [f"{tests[(plan, reference, m)]['mean_difference']:+.3f} (p = "
                     f"{tests[(plan, reference, m)]['p']:.3g})" for m in METRICS]
            lines.append(f"| {plan} | {reference} | " + " | ".join(cells) + " |")
    volume = result["plans"][0]["volume_ml_mean"]
    lines += ["", f"Patients: {result['plans'][0]['n_patients']}. Within the brain B, with recurrence R and plan T: "
              "sensitivity |R n T|/|R|, specificity |B \\ (R u T)|/|B \\ R| (healthy brain = brain minus "
              f"recurrence), mean ± SD over patients. Equal volume: every plan as large as the {standard} CTV "
              f"(mean {volume:.1f} mL); the AI plan's voxels taken in order GTV core, NEL by predicted probability, "
              "then by distance from the lesion. p: paired two-sided Wilcoxon signed-rank test against the "
              "standard (model rows: the difference from the first model's AI plan, mean, and its p)."]
    return "\n".join(lines) + "\n"


def write_results(folder: Path, result: dict, per_case: list[dict]) -> None:
    """ctv_evaluation.csv (per plan), ctv_wilcoxon.csv, ctv_per_case.csv, ctv_evaluation.md, ctv_evaluation.json."""
    from GliomaProgressionLib.cohort.evaluate import csv_text

    (folder / "ctv_evaluation.csv").write_text(csv_text(SUMMARY_COLUMNS, result["plans"]), encoding="utf-8")
    (folder / "ctv_wilcoxon.csv").write_text(csv_text(TEST_COLUMNS, result["wilcoxon"]), encoding="utf-8")
    (folder / "ctv_per_case.csv").write_text(csv_text(CASE_COLUMNS, per_case), encoding="utf-8")
    (folder / "ctv_evaluation.md").write_text(markdown_table(result), encoding="utf-8")
    data = {**result, "per_case": per_case, "definitions": __doc__.split("\n\n", 1)[1]}
    (folder / "ctv_evaluation.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
