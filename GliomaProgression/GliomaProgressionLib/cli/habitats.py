"""``gliomaprog habitats`` (one case) and ``gliomaprog cohort habitats-train``: perfusion habitats (seed 002)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_int
from GliomaProgressionLib.models.habitat_packages import DEFAULT_HABITAT_MODEL, SYNTHETIC_NOTICE
from GliomaProgressionLib.runs.habitats import ALIGNMENTS, DEFAULT_ALIGNMENT


def add_commands(commands) -> None:
    """``habitats``."""
    habitats = commands.add_parser(
        "habitats", help="perfusion habitats of one case: DSC curve patterns in the CEL and NEL (Yun 2023)",
        description="Label every voxel of the contrast-enhancing (CEL) and non-enhancing lesion (NEL) with a "
                    "perfusion habitat from its whole DSC time-signal curve (autoencoder + k-means patterns named "
                    "against reference tissues, Yun et al. 2023). Writes the habitat map on the CE-T1 and DSC grids, "
                    "the fractions per region and the mean curve of each pattern into a new folder.")
    habitats.add_argument("case", type=Path, metavar="CASE", help="case folder (t1c, lesion, dsc + dsc.json)")
    habitats.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    habitats.add_argument("--model", default=DEFAULT_HABITAT_MODEL,
                          help=f"habitat model id or package zip/folder (default {DEFAULT_HABITAT_MODEL}: "
                               f"{SYNTHETIC_NOTICE.rstrip('.').lower()})")
    habitats.add_argument("--alignment", choices=list(ALIGNMENTS), default=DEFAULT_ALIGNMENT,
                          help="how the lesion reaches the DSC grid: registration of the DSC series to CE-T1 (as "
                               "gliomaprog run; default) or scanner coordinates (no patient motion)")
    habitats.add_argument("--quiet", action="store_true", help="no progress lines")
    habitats.set_defaults(handler=_run_habitats)


def _run_habitats(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.habitats import fractions_table, run_habitats_files

    data = run_habitats_files(args.case, args.out, model_id=args.model, alignment=args.alignment,
                              progress=StderrProgress(args.quiet))
    for warning in data.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(fractions_table(data))
    model = data["model"]
    print(f"Habitats written to {args.out} (model '{model['id']}'"
          f"{': ' + model['notice'] if model.get('notice') else ''})")
    return 0


def add_cohort_actions(actions) -> None:
    """``cohort habitats-train``."""
    train = actions.add_parser(
        "habitats-train", help="train a perfusion-habitat model (autoencoder + k-means) on a cohort's DSC curves",
        description="Read every case folder of COHORT_DIR (t1c, lesion, dsc + dsc.json), carry its CEL and NEL onto "
                    "the DSC grid, train the curve autoencoder and the k-means patterns of each region (k chosen by "
                    "silhouette) and write a model package (zip) with its Models.json entry into a new folder.")
    train.add_argument("cohort", type=Path, metavar="COHORT_DIR")
    train.add_argument("--out", required=True, type=Path, help="new folder for the package and its registry entry")
    train.add_argument("--epochs", type=positive_int, default=None, help="autoencoder epochs (default: the library's)")
    train.add_argument("--k-min", type=positive_int, default=2, help="fewest patterns per region (default 2)")
    train.add_argument("--k-max", type=positive_int, default=6, help="most patterns per region (default 6)")
    train.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    train.add_argument("--id", default="habitats-site", help="model id (letters, digits, . _ -)")
    train.add_argument("--title", default="Perfusion habitats (site model)", help="model title shown to users")
    train.add_argument("--synthetic", action="store_true", help="mark it as trained on synthetic data")
    train.add_argument("--alignment", choices=list(ALIGNMENTS), default=DEFAULT_ALIGNMENT,
                       help="how each lesion reaches its DSC grid (default registration)")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(handler=_run_habitats_train)


def _run_habitats_train(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.habitats_train import train_habitat_cohort

    if args.k_min < 2 or args.k_max < args.k_min:
        raise ValueError(f"--k-min must be at least 2 and --k-max at least --k-min, got {args.k_min} and "
                         f"{args.k_max}.")
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    record = train_habitat_cohort(args.cohort, args.out, epochs=args.epochs, k_range=(args.k_min, args.k_max),
                                  seed=args.seed, model_id=args.id, title=args.title, synthetic=args.synthetic,
                                  alignment=args.alignment, log=say)
    print(f"Habitat model '{record['entry']['id']}' trained on {record['entry']['training']['cases']} case(s) in "
          f"{record['entry']['training']['wall_time_s']:.0f} s: {record['package']} (sha256 "
          f"{record['entry']['sha256']}); Models.json entry in {record['entry_file']}")
    return 0
