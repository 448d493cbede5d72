"""``gliomaprog invasion`` (one case) and ``gliomaprog cohort invasion-train``: the voxel-wise radiomics invasion map
(seed 004, Yan et al. 2020). The held-out evaluation (voxel accuracy, per-patient AUC with its CI) is part of
``invasion-train``: the patients are split before training, so the measures are on patients the model never saw."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_float, positive_int
from GliomaProgressionLib.models.invasion_packages import DEFAULT_INVASION_MODEL


def add_commands(commands) -> None:
    """``invasion``."""
    invasion = commands.add_parser(
        "invasion", help="invasion map of one case: each peritumoral voxel's probability of future progression "
                         "(Yan 2020)",
        description="Compute local radiomics feature maps (first order, GLCM, GLRLM) of the channels the invasion "
                    "model names in the peritumoral region (the NEL plus a 20 mm shell around the tumour core) and "
                    "classify every voxel. Writes invasion_probability.nii.gz, invasion_label.nii.gz and "
                    "invasion.json into a new folder.")
    invasion.add_argument("case", type=Path, metavar="CASE", help="case folder (t1c, flair, lesion, and the dsc, adc, "
                                                                   "fa, md or map_<name> series the model needs)")
    invasion.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    invasion.add_argument("--model", default=DEFAULT_INVASION_MODEL,
                          help=f"invasion model id (Models.json) or package zip/folder (default "
                               f"{DEFAULT_INVASION_MODEL})")
    invasion.add_argument("--quiet", action="store_true", help="no progress lines")
    invasion.set_defaults(handler=_run_invasion)


def _run_invasion(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.invasion import run_invasion_files

    data = run_invasion_files(args.case, args.out, model_id=args.model, progress=StderrProgress(args.quiet))
    for warning in data.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    model = data["model"]
    print(f"Peritumoral region {data['region_volume_ml']:.1f} mL, {data['label_volume_ml']:.1f} mL at probability "
          f">= {data['threshold']:g} (mean probability {data['mean_probability']:.3f})")
    evaluation = data.get("evaluation")
    if evaluation and evaluation.get("auc") is not None:
        print(f"Against the case's truth ({evaluation['truth']}): AUC {evaluation['auc']:.3f}, voxel accuracy "
              f"{evaluation['accuracy']:.3f}")
    print(f"Invasion map written to {args.out} (model '{model['id']}'"
          f"{': ' + model['notice'] if model.get('notice') else ''})")
    return 0


def add_cohort_actions(actions) -> None:
    """``cohort invasion-train``."""
    train = actions.add_parser(
        "invasion-train", help="train and evaluate a voxel-wise invasion model (Yan 2020) on a cohort",
        description="Prepare every case folder of COHORT_DIR, label its peritumoral voxels from its progression truth "
                    "(recurrence, progression label or phantom truth: progression area vs 5-20 mm non-progression "
                    "shells), compute the local feature maps, split the patients, train an MLP on balanced voxels "
                    "per patient and evaluate it on the held-out patients (voxel accuracy, per-patient AUC with a "
                    "bootstrap CI). Writes the model package (zip), its Models.json entry, training.json, "
                    "evaluation.json and evaluation_cases.csv into a new folder.")
    train.add_argument("cohort", type=Path, metavar="COHORT_DIR")
    train.add_argument("--out", required=True, type=Path, help="new folder for the package and its records")
    train.add_argument("--channels", nargs="+", default=None, metavar="NAME",
                       help="channels (t1c flair ncbv adc fa md p q map_<name>); default: those of t1c, flair, ncbv, "
                            "adc, fa, md, p, q the first case has")
    train.add_argument("--features", nargs="+", default=None, metavar="NAME",
                       help="local features per channel (default: all of invasion.features.FEATURES)")
    train.add_argument("--radius", type=positive_int, default=2, help="local window radius in voxels (default 2)")
    train.add_argument("--bin-count", type=positive_int, default=16, help="grey levels for the texture (default 16)")
    train.add_argument("--spacing", type=positive_float, default=1.0,
                       help="voxel size (mm) of the reference grid the features are computed on (default 1)")
    train.add_argument("--test-fraction", type=float, default=0.3,
                       help="share of the patients held out for the evaluation (default 0.3; 0: none)")
    train.add_argument("--voxels-per-class", type=positive_int, default=None,
                       help="voxels sampled per patient and class (default: the library's)")
    train.add_argument("--hidden", type=positive_int, nargs="+", default=None, metavar="UNITS",
                       help="hidden layer sizes (default: the library's)")
    train.add_argument("--max-iter", type=positive_int, default=300, help="training iterations at most (default 300)")
    train.add_argument("--seed", type=non_negative_int, default=0, help="random seed (split, sampling, weights)")
    train.add_argument("--id", default="invasion-site", help="model id (letters, digits, . _ -)")
    train.add_argument("--title", default="Invasion map (site model)", help="model title shown to users")
    train.add_argument("--synthetic", action="store_true", help="mark it as trained on synthetic data")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(handler=_run_invasion_train)


def _run_invasion_train(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.invasion_train import train_invasion_cohort

    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    record = train_invasion_cohort(args.cohort, args.out, channels=args.channels, features=args.features,
                                   radius=args.radius, bin_count=args.bin_count, spacing_mm=args.spacing,
                                   test_fraction=args.test_fraction, hidden_layers=args.hidden,
                                   voxels_per_class=args.voxels_per_class, max_iter=args.max_iter, seed=args.seed,
                                   model_id=args.id, title=args.title, synthetic=args.synthetic, log=say)
    entry, evaluation = record["entry"], record["evaluation"]
    print(f"Invasion model '{entry['id']}' trained on {entry['training']['cases']} case(s): {record['package']} "
          f"(sha256 {entry['sha256']}); Models.json entry in {record['entry_file']}")
    if evaluation:
        auc, ci = evaluation["mean_patient_auc"], evaluation["mean_patient_auc_ci95"]
        baseline = evaluation["mean_patient_distance_auc"]
        print(f"Held out: {evaluation['patients']} patient(s), voxel accuracy {evaluation['voxel_accuracy']:.3f}, "
              f"mean per-patient AUC {'n/a' if auc is None else f'{auc:.3f}'}"
              f"{f' (95% CI {ci[0]:.3f}-{ci[1]:.3f})' if ci else ''}; the distance to the tumour alone: "
              f"{'n/a' if baseline is None else f'{baseline:.3f}'}")
    return 0
