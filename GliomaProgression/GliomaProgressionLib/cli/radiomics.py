"""``gliomaprog radiomics extract`` (pyradiomics nCBV features) and ``gliomaprog radiomics model`` (seed 001's
SVM-RFE + MLP classifier of local vs distant recurrence), issue 7 item 5.

The science modules are imported by the handlers, so building the parser stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_int


def add_commands(subparsers) -> None:
    """``radiomics extract`` and ``radiomics model``."""
    radiomics = subparsers.add_parser(
        "radiomics", help="nCBV radiomics (seed 001): extract features, model local vs distant recurrence")
    actions = radiomics.add_subparsers(dest="action", required=True, parser_class=type(radiomics))
    _add_extract(actions)
    _add_model(actions)


def _add_extract(actions) -> None:
    extract = actions.add_parser(
        "extract", help="pyradiomics features of the nCBV map in the enhancing and non-enhancing regions",
        description="Extract pyradiomics features from the nCBV map in the enhancing (label 3) and non-enhancing "
                    "(label 2) regions: one CSV row per case. A case folder holds ncbv and lesion images on one "
                    "grid, directly or in registered/ (the 'gliomaprog run' output).")
    cases = extract.add_mutually_exclusive_group(required=True)
    cases.add_argument("--case-dir", type=Path, nargs="+", metavar="DIR", help="one or more case folders")
    cases.add_argument("--cohort", type=Path, help="a folder with one sub-folder per case")
    extract.add_argument("--params", type=Path,
                         help="pyradiomics YAML (default: the shipped Resources/radiomics_ncbv.yaml)")
    extract.add_argument("--out", required=True, type=Path, help="new CSV file")
    extract.add_argument("--quiet", action="store_true", help="no progress lines")
    extract.set_defaults(handler=_run_extract)


def _add_model(actions) -> None:
    model = actions.add_parser(
        "model", help="cross-validated local vs distant recurrence classifier (z-score, SMOTE, SVM-RFE, MLP)",
        description="Seed 001's pipeline on a feature table: z-score, SMOTE on the training folds only, SVM-RFE "
                    "down to --features-kept features, MLP; stratified k-fold CV AUC per fold, mean and SD. "
                    "Writes folds.csv, predictions.csv, selected_features.csv, summary.json and roc.png into a "
                    "new folder.")
    model.add_argument("--features", required=True, type=Path,
                       help="CSV with a 'case' column ('gliomaprog radiomics extract' output)")
    model.add_argument("--labels", required=True, type=Path,
                       help="CSV with 'case' and 'label' columns: 0/local or 1/distant recurrence")
    model.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    model.add_argument("--folds", type=positive_int, default=5, help="stratified CV folds (default 5)")
    model.add_argument("--features-kept", type=positive_int, default=32,
                       help="features SVM-RFE keeps (default 32, as seed 001)")
    model.add_argument("--seed", type=non_negative_int, default=1, help="folds, SMOTE and MLP seed (default 1)")
    model.set_defaults(handler=_run_model)


def _run_extract(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.radiomics_features import REGIONS, cohort_case_dirs, extract_cohort

    case_dirs = args.case_dir if args.case_dir else cohort_case_dirs(args.cohort)
    rows = extract_cohort(case_dirs, args.out, args.params, progress=StderrProgress(args.quiet))
    warnings = sum(bool(row[f"{region}_warning"]) for row in rows for region in REGIONS)
    seconds = sum(row["seconds"] for row in rows)
    print(f"{len(rows)} case(s), {seconds / len(rows):.1f} s per case, {warnings} region(s) without features "
          f"(see the *_warning columns). Features in {args.out}", file=sys.stdout)
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.radiomics_model import ModelSettings, run_model

    settings = ModelSettings(folds=args.folds, features_kept=args.features_kept, seed=args.seed)
    summary = run_model(args.features, args.labels, args.out, settings)
    aucs = ", ".join(f"{auc:.3f}" for auc in summary["fold_auc"])
    print(f"{summary['cases']} cases ({summary['distant']} distant, {summary['local']} local), "
          f"{settings.folds}-fold CV AUC {summary['mean_auc']:.3f} ± {summary['sd_auc']:.3f} (folds: {aucs}); "
          f"{len(summary['selected_features'])} features kept. Results in {args.out}")
    return 0
