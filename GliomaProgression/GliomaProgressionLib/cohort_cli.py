"""``gliomaprog cohort evaluate`` and ``gliomaprog radiomics``: the cohort-study commands (issue 7).

Only the standard library is imported here: cli.py builds its parser on every call; the science modules are
imported by the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_cohort_commands(subparsers, positive_float, non_negative_int) -> None:
    """Add ``cohort evaluate`` and ``radiomics`` to the ``gliomaprog`` sub-command parsers."""
    cohort = subparsers.add_parser("cohort", help="cohort studies: evaluate progression models on a cohort")
    actions = cohort.add_subparsers(dest="action", required=True, parser_class=type(cohort))
    _add_evaluate(actions, positive_float, non_negative_int)
    _add_radiomics(subparsers)


def _add_evaluate(actions, positive_float, non_negative_int) -> None:
    evaluate = actions.add_parser(
        "evaluate", help="per-patient sensitivity, specificity, AUC, Dice and McNemar test (seed 000)",
        description="Evaluate per-case progression predictions against truth masks (same file names, same grids). "
                    "Writes evaluation.csv, evaluation.md (seed 000's Table 2 layout), evaluation.json, "
                    "per_case.csv and roc.png into a new folder.")
    evaluate.add_argument("--predictions", required=True, type=Path,
                          help="folder of <case>.nii.gz probability maps (0..1) or 0/1 masks")
    evaluate.add_argument("--truth", required=True, type=Path, help="folder of <case>.nii.gz progression masks")
    evaluate.add_argument("--compare", type=Path, help="a second model's predictions: McNemar test between the two")
    evaluate.add_argument("--nel", type=Path, help="folder of <case>.nii.gz NEL masks: both are restricted to it")
    evaluate.add_argument("--min-voxels", type=non_negative_int, default=1,
                          help="predicted voxels for a 'progression' verdict (default 1, as seed 000)")
    evaluate.add_argument("--threshold", type=positive_float, default=0.5,
                          help="probability cut-off, 0 < p <= 1 (default 0.5)")
    evaluate.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress lines")
    evaluate.set_defaults(handler=_run_evaluate)


def _add_radiomics(subparsers) -> None:
    radiomics = subparsers.add_parser(
        "radiomics", help="nCBV radiomics of the enhancing and non-enhancing regions (pyradiomics, seed 001)",
        description="Extract pyradiomics features from the nCBV map in the enhancing (label 3) and non-enhancing "
                    "(label 2) regions: one CSV row per case. A case folder holds ncbv and lesion images on one "
                    "grid, directly or in registered/ (the 'gliomaprog run' output).")
    cases = radiomics.add_mutually_exclusive_group(required=True)
    cases.add_argument("--case-dir", type=Path, nargs="+", metavar="DIR", help="one or more case folders")
    cases.add_argument("--cohort", type=Path, help="a folder with one sub-folder per case")
    radiomics.add_argument("--params", type=Path,
                           help="pyradiomics YAML (default: the shipped Resources/radiomics_ncbv.yaml)")
    radiomics.add_argument("--out", required=True, type=Path, help="new CSV file")
    radiomics.add_argument("--quiet", action="store_true", help="no progress lines")
    radiomics.set_defaults(handler=_run_radiomics)


def _progress(quiet: bool):
    from .cli import StderrProgress

    return StderrProgress(quiet)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .cohort_evaluate import EvaluationSettings, evaluate_cohort

    settings = EvaluationSettings(threshold=args.threshold, min_voxels=args.min_voxels)
    result = evaluate_cohort(args.predictions, args.truth, args.out, compare=args.compare, nel=args.nel,
                             settings=settings, progress=_progress(args.quiet))
    print(result["markdown"], end="")
    print(f"Results in {args.out}")
    return 0


def _run_radiomics(args: argparse.Namespace) -> int:
    from .radiomics_features import cohort_case_dirs, extract_cohort

    case_dirs = args.case_dir if args.case_dir else cohort_case_dirs(args.cohort)
    rows = extract_cohort(case_dirs, args.out, args.params, progress=_progress(args.quiet))
    warnings = sum(bool(row[f"{region}_warning"]) for row in rows for region in ("enhancing", "nonenhancing"))
    seconds = sum(row["seconds"] for row in rows)
    print(f"{len(rows)} case(s), {seconds / len(rows):.1f} s per case, {warnings} region(s) without features "
          f"(see the *_warning columns). Features in {args.out}", file=sys.stdout)
    return 0
