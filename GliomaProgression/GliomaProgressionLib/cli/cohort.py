"""``gliomaprog cohort evaluate|export|train|package|replicate|habitats-train|survival|workflow``: the cohort-study commands.

``habitats-train`` and ``survival`` are declared with the habitat commands (``cli/habitats.py``, ``cli/survival.py``),
``workflow`` in ``cli/workflow.py``.

The science modules are imported by the handlers, so building the parser stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from GliomaProgressionLib.cli import habitats, invasion, survival, workflow
from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_float, positive_int
from GliomaProgressionLib.cohort.replicate import STUDIES
from GliomaProgressionLib.models.size_weighted import ALPHA, DEFAULT_LOSS, LOSSES, WEIGHT_RANGE


def add_commands(subparsers) -> None:
    """``cohort evaluate|export|train|package|replicate|habitats-train|survival``."""
    cohort = subparsers.add_parser(
        "cohort", help="cohort studies: export, train, package and evaluate a site's own progression model")
    actions = cohort.add_subparsers(dest="action", required=True, parser_class=type(cohort))
    _add_evaluate(actions)
    _add_export(actions)  # the model-building commands
    _add_train(actions)
    _add_package(actions)
    _add_replicate(actions)
    habitats.add_cohort_actions(actions)
    invasion.add_cohort_actions(actions)
    survival.add_cohort_actions(actions)
    workflow.add_cohort_actions(actions)


def _add_evaluate(actions) -> None:
    from GliomaProgressionLib.cohort.ctv_evaluate import DEFAULT_STANDARD, MIN_PATIENTS, RUN_FILES, STANDARD_PLANS

    evaluate = actions.add_parser(
        "evaluate", help="per-patient sensitivity, specificity, AUC, Dice and McNemar test (seed 000); with --ctv, "
                         "AI against standard CTVs (seed 003, paired Wilcoxon tests)",
        description="Evaluate per-case progression predictions against truth masks (same file names, same grids). "
                    "Writes evaluation.csv, evaluation.md (seed 000's Table 2 layout), evaluation.json, "
                    "per_case.csv and roc.png into a new folder. With --ctv instead: compare each model's AI CTV "
                    "with the standard CTV per patient (sensitivity, specificity, and both again when every plan "
                    "has the standard CTV's volume, as the PREDICT-GBM benchmark) with paired Wilcoxon signed-rank "
                    "tests; writes ctv_evaluation.csv/.md/.json, ctv_wilcoxon.csv and ctv_per_case.csv.")
    evaluate.add_argument("--predictions", type=Path,
                          help="folder of <case>.nii.gz probability maps (0..1) or 0/1 masks")
    evaluate.add_argument("--truth", type=Path, help="folder of <case>.nii.gz progression masks")
    evaluate.add_argument(
        "--ctv", type=Path, nargs="+", metavar="RUNS",
        help="compare CTVs instead: one folder per model, each holding one 'gliomaprog run' output per case (what "
             "'gliomaprog run --batch' writes; the same case names in each), every case run with a recurrence "
             f"(a recurrence.nii.gz in its case folder: the run keeps it as {RUN_FILES['recurrence']}) and the ai "
             f"scheme; at least {MIN_PATIENTS} cases")
    evaluate.add_argument("--standard", choices=STANDARD_PLANS, default=DEFAULT_STANDARD,
                          help=f"with --ctv: the standard CTV the AI CTVs are compared with (default "
                               f"{DEFAULT_STANDARD}: enhancing tumour + cavity + 15 mm; its volume is the equal "
                               "volume)")
    evaluate.add_argument("--compare", type=Path, help="a second model's predictions: McNemar test between the two")
    evaluate.add_argument("--nel", type=Path, help="folder of <case>.nii.gz NEL masks: both are restricted to it")
    evaluate.add_argument("--min-voxels", type=non_negative_int, default=1,
                          help="predicted voxels for a 'progression' verdict (default 1, as seed 000)")
    evaluate.add_argument("--threshold", type=positive_float, default=0.5,
                          help="probability cut-off, 0 < p <= 1 (default 0.5)")
    evaluate.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress lines")
    evaluate.set_defaults(handler=_run_evaluate)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _folds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers such as 0 or 0,1,2,3,4, got {text!r}") from None


def _refuse_flags(*checks: tuple[bool, str]) -> None:
    """Refuse flag values in the command line's words (the libraries check them too, but speak of data)."""
    for failed, message in checks:
        if failed:
            raise ValueError(message)


def _training_length_checks(args: argparse.Namespace) -> tuple[bool, str]:
    return args.epochs < 1 or args.iterations < 1, "--epochs and --iterations must be at least 1."


def _add_export(actions) -> None:
    export = actions.add_parser(
        "export", help="cohort case folders -> nnU-Net v2 raw dataset with per-case QC",
        description="Run the progression module's preprocessing (registration, nCBV, resampling) on every case "
                    "folder of COHORT_DIR (t1c, flair, lesion and, for multiparametric, dsc + dsc.json, as "
                    "NIfTI/NRRD files or DICOM folders, as 'gliomaprog run' reads them; progression = label drawn "
                    "on the pre-op FLAIR; optional case.json with 'date' or 'index') and write a new nnU-Net v2 "
                    "raw dataset with qc.csv and split.json. BraTS challenge folders are read too (labels mapped "
                    "to BraTS 2024). Failing cases (a case without DSC for multiparametric) are recorded in "
                    "qc.csv and skipped.")
    export.add_argument("cohort", type=Path, metavar="COHORT_DIR")
    export.add_argument("--out", required=True, type=Path, help="new raw dataset folder (DatasetNNN_Name)")
    export.add_argument("--dataset-id", required=True, type=int, help="nnU-Net dataset id, 1..999")
    export.add_argument("--channels", required=True, metavar="SET",
                        help="conventional (CE-T1 + FLAIR, DSC not needed), multiparametric (+ nCBV), diffusion "
                             "(+ nCBV + ADC), or channel names in model order, e.g. t1c,flair,ncbv,adc,fa,p,q "
                             "(adc/fa/md from the case's files or its DTI series; p, q derived; map_<name>)")
    export.add_argument("--split", choices=["temporal", "random"], default="random",
                        help="test cases: the latest by case.json date/index (seed 000) or a random draw")
    export.add_argument("--test-fraction", type=_fraction, default=0.0, help="share of test cases (default 0)")
    export.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    export.add_argument("--spacing-mm", type=positive_float, default=1.0,
                        help="reference grid spacing (default 1 mm, as the module; the demo models use 2)")
    export.add_argument("--processes", type=positive_int, default=1, help="cases prepared in parallel (default 1)")
    export.add_argument("--quiet", action="store_true", help="no progress lines")
    export.set_defaults(handler=_run_export)


def _add_train(actions) -> None:
    train = actions.add_parser(
        "train", help="nnU-Net v2 planning, preprocessing and training of an exported dataset",
        description="Train an nnU-Net v2 model on a 'cohort export' dataset into a new RESULTS folder. "
                    "'small' is the demo models' plan (CPU, minutes); '3d_fullres' is nnU-Net's own plan.")
    train.add_argument("raw", type=Path, metavar="NNUNET_RAW")
    train.add_argument("--out", required=True, type=Path, help="new RESULTS folder")
    train.add_argument("--configuration", choices=["small", "3d_fullres"], default="small")
    train.add_argument("--folds", type=_folds, default=[0], help="folds to train, e.g. 0 or 0,1,2,3,4 (default 0)")
    train.add_argument("--epochs", type=int, default=50, help="default 50 (the demo recipe)")
    train.add_argument("--iterations", type=int, default=20, help="iterations per epoch (default 20)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default 2)")
    train.add_argument("--loss", choices=LOSSES, default=DEFAULT_LOSS,
                       help=f"training loss (default {DEFAULT_LOSS}, nnU-Net's own Dice + cross-entropy); "
                            "size-weighted: each case of a batch weighted by its progression volume V in the patch, "
                            f"w proportional to V^-{ALPHA:g}, mean 1 over the cases with progression, clipped to "
                            f"[{WEIGHT_RANGE[0]:.3g}, {WEIGHT_RANGE[1]:g}], 1 without progression (Tran et al. 2025); "
                            "recorded in cohort_train.json and the package")
    train.set_defaults(handler=_run_train)


def _add_package(actions) -> None:
    package = actions.add_parser(
        "package", help="zip a trained cohort model for 'gliomaprog predict --model' and the Slicer module",
        description="Package a 'cohort train' RESULTS folder as a model zip (weights only, metadata, model card).")
    package.add_argument("results", type=Path, metavar="RESULTS")
    package.add_argument("--id", required=True, help="model id (letters, digits, . _ -)")
    package.add_argument("--title", required=True, help="model title shown to users")
    package.add_argument("--out", required=True, type=Path, help="new .zip file")
    package.add_argument("--synthetic", action="store_true", help="mark it as trained on synthetic data")
    package.set_defaults(handler=_run_package)


def _add_replicate(actions) -> None:
    replicate = actions.add_parser(
        "replicate", help="simulated replication of seed 000 (phantom cohort, both channel sets, evaluation)",
        description="Generate a phantom cohort in which nCBV shows every future progression and FLAIR only "
                    "about half of them, export it, train the conventional and multiparametric models (small "
                    "CPU plan, side by side), predict the test cases and compare them with 'cohort evaluate "
                    "--compare'.")
    replicate.add_argument("--out", required=True, type=Path, help="new folder")
    replicate.add_argument("--train", type=int, default=60, help="training cases (default 60)")
    replicate.add_argument("--test", type=int, default=30, help="test cases (default 30)")
    replicate.add_argument("--epochs", type=int, default=50, help="default 50 (the demo recipe)")
    replicate.add_argument("--iterations", type=int, default=20, help="iterations per epoch (default 20)")
    replicate.add_argument("--seed", type=int, default=3000, help="first phantom seed (default 3000)")
    replicate.add_argument("--study", choices=list(STUDIES), default="seed000",
                           help="seed000: multiparametric vs conventional on a cohort where FLAIR shows half the "
                                "progressions; adc: + ADC vs multiparametric on a cohort where half the "
                                "progressions show on ADC only (issue 15)")
    replicate.add_argument("--quiet", action="store_true", help="no progress lines")
    replicate.set_defaults(handler=_run_replicate)


def _run_export(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.export import export_cohort

    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    summary = export_cohort(args.cohort, args.out, args.dataset_id, args.channels, args.split, args.test_fraction,
                            args.seed, args.spacing_mm, processes=args.processes, progress=say)
    failed = f", {len(summary['failed'])} failed (see qc.csv)" if summary["failed"] else ""
    print(f"{summary['dataset_name']}: {summary['train']} training and {summary['test']} test case(s){failed}. "
          f"Dataset in {args.out}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.train import train_cohort

    folds = args.folds
    _refuse_flags((not folds or any(not 0 <= f <= 4 for f in folds) or len(set(folds)) != len(folds),
                   f"--folds must be distinct numbers 0..4, got {folds}."), _training_length_checks(args))
    record = train_cohort(args.raw, args.out, args.configuration, args.folds, args.epochs, args.iterations,
                          args.device, args.threads, log=lambda message: print(message, file=sys.stderr, flush=True),
                          loss=args.loss)
    print(f"Trained {record['dataset']} ({record['configuration']}, folds {record['folds']}, {record['loss']} "
          f"loss) in {record['wall_time_s']} s. Results in {args.out}")
    return 0


def _run_package(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.train import package_model

    path, sha256 = package_model(args.results, args.id, args.title, args.out, args.synthetic)
    print(f"{path} sha256 {sha256}")
    return 0


def _run_replicate(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.replicate import replicate

    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    _refuse_flags(_training_length_checks(args))
    result = replicate(args.out, args.train, args.test, args.epochs, args.iterations, args.seed, log=say,
                       study=args.study)
    print(result["markdown"], end="")
    for model, groups in result["detected_by_group"].items():
        print(f"{model}: " + ", ".join(f"{g['detected']}/{g['cases']} detected, Dice {g['mean_dice']:.2f} "
                                       f"({group.replace('_', ' ')})" for group, g in groups.items()))
    dice = result["paired_dice"]
    if "mean_difference" in dice:
        print(f"Dice difference {dice['mean_difference']:+.3f} (95% CI {dice['difference_ci95'][0]:+.3f} to "
              f"{dice['difference_ci95'][1]:+.3f}; Wilcoxon p = {dice['wilcoxon_p']:.3g}; {dice['cases']} cases)")
    print(f"Results in {args.out} ({result['wall_time_s']:.0f} s)")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.evaluate import EvaluationSettings, evaluate_cohort

    if args.ctv:
        return _run_evaluate_ctv(args)
    _refuse_flags((args.predictions is None or args.truth is None,
                   "--predictions and --truth are both needed (or --ctv RUNS to compare CTVs)."))
    _refuse_flags((not 0.0 < args.threshold <= 1.0, f"--threshold must be in (0, 1], got {args.threshold}."),
                  (args.min_voxels < 1, f"--min-voxels must be at least 1, got {args.min_voxels}."))
    settings = EvaluationSettings(threshold=args.threshold, min_voxels=args.min_voxels)
    result = evaluate_cohort(args.predictions, args.truth, args.out, compare=args.compare, nel=args.nel,
                             settings=settings, progress=StderrProgress(args.quiet))
    print(result["markdown"], end="")
    print(f"Results in {args.out}")
    return 0


def _run_evaluate_ctv(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.ctv_evaluate import evaluate_ctvs

    given = [flag for flag, value in (("--predictions", args.predictions), ("--truth", args.truth),
                                      ("--compare", args.compare), ("--nel", args.nel)) if value is not None]
    _refuse_flags((bool(given), f"--ctv compares the CTVs of run folders; {', '.join(given)} belong to the "
                                "evaluation of progression maps."))
    result = evaluate_ctvs(args.ctv, args.out, args.standard, progress=StderrProgress(args.quiet))
    print(result["markdown"], end="")
    print(f"Results in {args.out}")
    return 0
