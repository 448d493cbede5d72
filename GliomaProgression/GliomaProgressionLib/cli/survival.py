"""``gliomaprog cohort survival`` (Cox model of overall survival from habitat fractions and clinical predictors,
seed 002) and ``gliomaprog cohort simulate-survival`` (a survival table simulated with known hazard ratios)."""

from __future__ import annotations

import argparse
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, name_list, non_negative_int, positive_int


def add_cohort_actions(actions) -> None:
    """``cohort survival`` and ``cohort simulate-survival``."""
    _add_survival(actions)
    _add_simulate(actions)


def _add_survival(actions) -> None:
    from GliomaProgressionLib.cohort.survival import KM_DEFAULT
    from GliomaProgressionLib.phantom.survival import CLINICAL_COLUMNS

    survival = actions.add_parser(
        "survival", help="Cox model of overall survival from habitat fractions + clinical predictors (seed 002)",
        description="Fit Cox proportional-hazards models (habitats + clinical, and clinical only) on two thirds of "
                    "the patients (stratified by death), judge them by Harrell's C-index on the other third with a "
                    "bootstrap 95% CI, and draw Kaplan-Meier curves by pattern burden. The table has one row per "
                    "'case' with time_months, event (1 death, 0 censored), fraction columns named <REGION>_<habitat> "
                    f"({KM_DEFAULT} ...) and clinical columns ({', '.join(CLINICAL_COLUMNS)}). Writes "
                    "survival.json, survival.md, hazard_ratios.csv, patients.csv and km.png into a new folder.")
    source = survival.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=Path, help="CSV with the fractions, clinical columns, time_months and event")
    source.add_argument("--habitats", type=Path,
                        help="folder of case folders with habitats/habitats.json (case id = folder name), or a CSV "
                             "of fraction columns; needs --clinical")
    survival.add_argument("--clinical", type=Path, help="CSV with case, time_months, event and clinical columns")
    survival.add_argument("--covariates", nargs="+", action="extend", metavar="COLUMN",
                          help="covariates (commas allowed; default every fraction and clinical column present)")
    survival.add_argument("--km", metavar="COLUMN",
                          help=f"column to split the Kaplan-Meier curves at its median (default {KM_DEFAULT})")
    survival.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    survival.add_argument("--seed", type=non_negative_int, default=0, help="split and bootstrap seed (default 0)")
    survival.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    survival.add_argument("--quiet", action="store_true", help="no progress lines")
    survival.set_defaults(handler=_run_survival)


def _add_simulate(actions) -> None:
    from GliomaProgressionLib.phantom.survival import CLINICAL_COLUMNS

    simulate = actions.add_parser(
        "simulate-survival", help="simulate overall survival from habitat fractions with known hazard ratios",
        description=f"Write a survival table (fractions, {', '.join(CLINICAL_COLUMNS)}, time_months, event) "
                    "simulated from habitat burden with known hazard ratios, and its truth (<name>.truth.json) "
                    "beside it. Fractions come from a CSV, from a folder of phantom cases (truth/habitats.json), or "
                    "are drawn from a Dirichlet distribution for --n patients. Synthetic data, not for clinical use.")
    source = simulate.add_mutually_exclusive_group(required=True)
    source.add_argument("--fractions", type=Path,
                        help="CSV of fraction columns (one row per case) or folder of phantom case folders")
    source.add_argument("--n", type=positive_int, help="number of patients with Dirichlet-drawn fractions")
    simulate.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    simulate.add_argument("--out", required=True, type=Path, help="new CSV file")
    simulate.set_defaults(handler=_run_simulate)


def _run_survival(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.survival import habitat_table, survival_analysis

    if args.bootstrap < 100:
        raise ValueError(f"--bootstrap must be at least 100, got {args.bootstrap}.")
    if args.habitats is not None and args.clinical is None:
        raise ValueError("--habitats needs --clinical (the CSV with survival and clinical columns).")
    if args.table is not None and args.clinical is not None:
        raise ValueError("--clinical goes with --habitats; a --table already holds the clinical columns.")
    table = args.table if args.table is not None else habitat_table(args.habitats, args.clinical)
    result = survival_analysis(table, args.out, covariates=name_list(args.covariates), km_covariate=args.km,
                               bootstrap=args.bootstrap, seed=args.seed, progress=StderrProgress(args.quiet))
    print(result["markdown"], end="")
    print(f"Results in {args.out}")
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.phantom.survival import simulate_cohort

    record = simulate_cohort(args.out, fractions=args.fractions, n=args.n, seed=args.seed)
    c_index = "n/a" if record["truth_c_index"] is None else f"{record['truth_c_index']:.3f}"
    print(f"{record['patients']} patients, {record['events']} deaths ({100 * record['censored_share']:.0f}% "
          f"censored); truth C-index {c_index}. Table in {args.out}, truth in "
          f"{Path(args.out).with_name(Path(args.out).stem + '.truth.json')}")
    return 0
