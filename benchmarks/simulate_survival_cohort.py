"""``cohort survival`` against a simulated truth (issue 14 acceptance; docs/replication_habitats_survival.md).

Two parts:

1. ``check TABLE RESULT``: after
       gliomaprog cohort simulate-survival --n 240 --seed 1 --out build/survival/cohort.csv
       gliomaprog cohort survival --table build/survival/cohort.csv --out build/survival/result
   compare RESULT with the truth written beside TABLE (``cohort.truth.json``): each hazard ratio's direction and
   whether its 95 % CI holds the true contrast (``phantom.survival.truth_contrast``), and the validation C-index
   against the truth model's C-index on the same validation patients (RESULT/survival.json lists them).
2. ``repeat``: the same criteria on ``--cohorts`` simulated cohorts (seeds 0, 1, ...) of each ``--sizes``,
   through the library with the command's defaults (the C-index bootstrap skipped: it does not enter the
   criteria), the effect of the ridge penalizer (0.01 vs 0) on the hazard ratios, and how often the
   proportional-hazards test says p < 0.05 although the simulated hazards are proportional (its false alarms).

Run from the repository root:  .venv/bin/python benchmarks/simulate_survival_cohort.py check|repeat ...
Synthetic data — not for clinical use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from GliomaProgressionLib.cohort.survival import (FULL_MODEL, VALIDATION_FRACTION, choose_covariates, concordance,
                                                  fit_cox, proportional_hazards_p, risk_scores, split_patients)
from GliomaProgressionLib.phantom.survival import (DEFAULT_TRUTH, SurvivalTruth, simulate_clinical,
                                                   simulate_fractions, simulate_survival, truth_concordance,
                                                   truth_contrast)


def _truth_of(table_csv: Path) -> SurvivalTruth:
    record = json.loads(table_csv.with_name(table_csv.stem + ".truth.json").read_text())["truth"]
    return SurvivalTruth(record["hazard_ratios"], record["median_months"], record["weibull_shape"])


def check(table_csv: Path, result_folder: Path) -> None:
    table, truth = pd.read_csv(table_csv, dtype={"case": str}), _truth_of(table_csv)
    result = json.loads((result_folder / "survival.json").read_text())
    print("| Covariate | True HR (contrast) | Estimated HR [95% CI] | Direction | CI holds truth |")
    print("|---|---|---|---|---|")
    for row in (r for r in result["hazard_ratios"] if r["model"] == FULL_MODEL):
        true = truth_contrast(truth, row["covariate"])
        direction = "n/a (null)" if true == 1 else ("right" if (row["hazard_ratio"] > 1) == (true > 1) else "WRONG")
        inside = "yes" if row["ci_low"] <= true <= row["ci_high"] else "no"
        print(f"| {row['covariate']} | {true:.2f} | {row['hazard_ratio']:.2f} [{row['ci_low']:.2f}, "
              f"{row['ci_high']:.2f}] | {direction} | {inside} |")
    validation = table[table["case"].isin(result["validation"]["cases"])]
    truth_c = truth_concordance(validation, truth)
    print()
    for name, model in result["models"].items():
        print(f"{name}: validation C-index {model['c_index_validation']:.3f} "
              f"[{model['c_index_ci_low']:.3f}, {model['c_index_ci_high']:.3f}]")
    fitted = result["models"][FULL_MODEL]["c_index_validation"]
    print(f"truth model on the same {len(validation)} validation patients: {truth_c:.3f}; "
          f"difference {fitted - truth_c:+.3f} (criterion |difference| <= 0.05: "
          f"{'met' if abs(fitted - truth_c) <= 0.05 else 'NOT met'})")


def _one_cohort(n: int, seed: int, truth: SurvivalTruth) -> dict:
    table = simulate_fractions(n, seed).merge(simulate_clinical(n, seed), on="case")
    table = simulate_survival(table, truth, seed)
    covariates, _ = choose_covariates(table, None, "time_months", "event", "simulated table")
    events = table["event"].to_numpy()
    train, validation = split_patients(events, VALIDATION_FRACTION, 0)
    model = fit_cox(table.iloc[train], covariates, "time_months", "event")
    unpenalised = fit_cox(table.iloc[train], covariates, "time_months", "event", penalizer=0.0)
    ratios = np.exp(model.params_)
    wrong = [c for c, hr in truth.hazard_ratios.items() if (ratios[c] > 1) != (hr > 1)]
    valid = table.iloc[validation]
    fitted_c = concordance(valid["time_months"].to_numpy(), valid["event"].to_numpy(),
                           risk_scores(model, valid, covariates))
    ph_p = proportional_hazards_p(model, table.iloc[train], covariates, "time_months", "event")
    return {"wrong": wrong, "difference": fitted_c - truth_concordance(valid, truth), "ph_p": list(ph_p.values()),
            "penalizer_change": float(np.max(np.abs(ratios / np.exp(unpenalised.params_) - 1)))}


def repeat(sizes: list[int], cohorts: int) -> None:
    print("| Patients | Cohorts | Every direction right | C-index within 0.05 of truth | Both | "
          "Fitted - truth C-index, mean (SD) | Wrong directions (covariate: cohorts) | "
          "Largest HR change, penalizer 0.01 vs 0 | PH tests with p < 0.05 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        runs = [_one_cohort(n, seed, DEFAULT_TRUTH) for seed in range(cohorts)]
        directions = sum(not r["wrong"] for r in runs)
        close = sum(abs(r["difference"]) <= 0.05 for r in runs)
        both = sum(not r["wrong"] and abs(r["difference"]) <= 0.05 for r in runs)
        differences = np.array([r["difference"] for r in runs])
        wrong: dict[str, int] = {}
        for r in runs:
            for c in r["wrong"]:
                wrong[c] = wrong.get(c, 0) + 1
        print(f"| {n} | {cohorts} | {directions} | {close} | {both} | {differences.mean():+.3f} "
              f"({differences.std(ddof=1):.3f}) | {', '.join(f'{c}: {k}' for c, k in wrong.items()) or 'none'} | "
              f"{100 * max(r['penalizer_change'] for r in runs):.1f} % | "
              f"{100 * np.mean([p < 0.05 for r in runs for p in r['ph_p']]):.1f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    checking = actions.add_parser("check")
    checking.add_argument("table", type=Path)
    checking.add_argument("result", type=Path)
    repeating = actions.add_parser("repeat")
    repeating.add_argument("--sizes", type=int, nargs="+", default=[120, 240])
    repeating.add_argument("--cohorts", type=int, default=50)
    args = parser.parse_args()
    if args.action == "check":
        check(args.table, args.result)
    else:
        repeat(args.sizes, args.cohorts)


if __name__ == "__main__":
    main()
