"""``gliomaprog ctv`` (CTV proposals from files) and ``gliomaprog metrics`` (a target against a recurrence)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import asdict
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, add_schemes_option, margin_mm, name_list, positive_float
from GliomaProgressionLib.runs.ctv import METRIC_NOTE


def add_commands(commands) -> None:
    """``ctv`` and ``metrics``."""
    _add_ctv_parser(commands)
    _add_metrics_parser(commands)


def _add_ctv_parser(subparsers) -> None:
    ctv = subparsers.add_parser(
        "ctv", help="CTV proposals (RTOG/NRG, EORTC, ESTRO-EANO, AI, boost) from a lesion and a brain mask",
        description="Propose radiotherapy target volumes from BraTS lesion labels (1 necrosis, 2 SNFH, "
                    "3 enhancing, 4 cavity) and a brain mask: one mask per target (ctv_<scheme>.nii.gz) and "
                    "ctv.json (volumes, parameters, and metrics when --recurrence is given). Proposals to be "
                    "reviewed by a radiation oncologist.")
    ctv.add_argument("--lesion", required=True, type=Path, help="lesion labels (BraTS: 1, 2, 3, 4); sets the grid")
    ctv.add_argument("--brain", required=True, type=Path, help="brain mask (nonzero = brain)")
    ctv.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    ctv.add_argument("--progression", type=Path, help="predicted progression mask (needed by ai and boost)")
    ctv.add_argument("--barriers", type=Path, help="barrier mask (falx, tentorium, ventricles...; leave the "
                                                   "corpus callosum open); default: automatic midline model")
    ctv.add_argument("--image", type=Path, help="T1-weighted or FLAIR image: ventricles for the automatic barriers")
    ctv.add_argument("--oar", type=Path, nargs="+", default=[], metavar="MASK",
                     help="organ-at-risk masks (brainstem, chiasm, optic nerves...), removed from the targets")
    add_schemes_option(ctv, "--scheme")  # --scheme: the older, repeated spelling
    ctv.add_argument("--geodesic", action="store_true",
                     help="measure every margin through brain tissue around barriers (ESTRO-EANO always is "
                          "barrier-aware)")
    ctv.add_argument("--margin-mm", type=margin_mm, help="GTV-to-CTV margin for every chosen scheme (default: "
                                                          "RTOG 20, EORTC 15, ESTRO 15, AI 5, boost 5)")
    ctv.add_argument("--ai-margin-mm", type=margin_mm, help="margin of the AI CTV (overrides --margin-mm)")
    ctv.add_argument("--boost-margin-mm", type=margin_mm, help="margin of the boost (overrides --margin-mm)")
    ctv.add_argument("--ptv-mm", type=positive_float, help="also write PTV = target + this margin (mm)")
    ctv.add_argument("--oar-margin-mm", type=margin_mm, default=0.0, help="safety margin around OARs (mm)")
    ctv.add_argument("--recurrence", type=Path, help="recurrence mask at follow-up: adds metrics to ctv.json")
    ctv.add_argument("--resample", action="store_true",
                     help="resample masks that are not on the lesion grid (nearest neighbour; they must already "
                          "be aligned: this is not registration)")
    ctv.add_argument("--quiet", action="store_true", help="no progress lines")
    ctv.set_defaults(handler=_run_ctv)


def _add_metrics_parser(subparsers) -> None:
    metrics = subparsers.add_parser(
        "metrics", help="metrics of a target mask against a recurrence mask (JSON on stdout)",
        description="Sensitivity, specificity, Dice, HD95, Tversky, PCC, volumes and recurrence pattern of a "
                    "target against a recurrence, within the brain. " + METRIC_NOTE)
    metrics.add_argument("--target", required=True, type=Path, help="target mask (nonzero = inside); sets the grid")
    metrics.add_argument("--recurrence", required=True, type=Path, help="recurrence mask")
    metrics.add_argument("--brain", required=True, type=Path, help="brain mask")
    metrics.add_argument("--resample", action="store_true", help="resample masks onto the target grid "
                                                                 "(nearest neighbour)")
    metrics.set_defaults(handler=_run_metrics)


def _margins_from(args: argparse.Namespace):
    from CTVPlannerLib.schemes import Margins

    margins = Margins(ptv_mm=args.ptv_mm or 0.0, oar_mm=args.oar_margin_mm).with_ctv_margin(args.margin_mm)
    changes = {}
    if args.ai_margin_mm is not None:
        changes["ai_mm"] = args.ai_margin_mm
    if args.boost_margin_mm is not None:
        changes["boost_mm"] = args.boost_margin_mm
    return Margins(**{**asdict(margins), **changes})


@contextlib.contextmanager
def _resample_hint():
    """Name the flag that allows resampling when a mask is refused for lying on another grid."""
    from GliomaProgressionLib.runs.ctv import NotOnReferenceGrid

    try:
        yield
    except NotOnReferenceGrid as error:
        raise ValueError(f"{error} (--resample allows it.)") from None


def _run_ctv(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.ctv import run_ctv_files

    schemes = name_list(args.schemes)
    with _resample_hint():
        report = run_ctv_files(args.lesion, args.brain, args.out, list(schemes) if schemes else None,
                               _margins_from(args), args.geodesic, args.progression, args.barriers, args.oar,
                               args.image, args.recurrence, args.resample, StderrProgress(args.quiet))
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for target in report["targets"]:
        print(f"{target['file']}: {target['volume_ml']:.1f} mL")
    print(f"CTV proposals written to {args.out}")
    return 0


def _run_metrics(args: argparse.Namespace) -> int:
    import json

    from GliomaProgressionLib.runs.ctv import metrics_files

    with _resample_hint():
        metrics = metrics_files(args.target, args.recurrence, args.brain, args.resample)
    print(json.dumps(metrics, indent=2))
    return 0
