"""``gliomaprog perfusion``: a DSC series to rCBV, nCBV and K2 maps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from DSCPerfusionLib.ftb import FTB_THRESHOLDS
from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD, LEAKAGE_HELP, LEAKAGE_METHODS

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_float


def add_commands(commands) -> None:
    """``perfusion``."""
    perfusion = commands.add_parser(
        "perfusion", help="DSC series -> leakage-corrected rCBV, nCBV (white-matter normalised), K2",
        description="Compute deltaR2*, leakage-corrected rCBV, K2 and nCBV "
                    "(normalised to contralateral normal-appearing white matter) from a 4D DSC series.")
    perfusion.add_argument("--dsc", required=True, type=Path, help="4D DSC series (NIfTI or NRRD)")
    timing = perfusion.add_argument_group("timing (seconds): a BIDS sidecar, or --tr and --te")
    timing.add_argument("--dsc-json", type=Path, help="sidecar with EchoTime, RepetitionTime or FrameTimes (and, for "
                        "the protocol check, FlipAngle, MagneticFieldStrength, PreloadDose, BolusDose)")
    timing.add_argument("--tr", type=positive_float, help="repetition time (s), overrides the sidecar")
    timing.add_argument("--te", type=positive_float, help="echo time (s), overrides the sidecar")
    perfusion.add_argument("--out", required=True, type=Path, help="new folder for the maps (must not exist)")
    perfusion.add_argument("--mask", type=Path, help="brain mask on the DSC grid (default: automatic)")
    perfusion.add_argument("--nawm", type=Path, help="white-matter reference mask on the DSC grid "
                                                     "(default: automatic, contralateral)")
    perfusion.add_argument("--lesion", type=Path, help="lesion labels (any grid; resampled to the DSC grid)")
    perfusion.add_argument("--leakage", choices=LEAKAGE_METHODS, default=DEFAULT_LEAKAGE_METHOD, help=LEAKAGE_HELP)
    perfusion.add_argument("--first-pass", action="store_true", help="integrate the first pass only")
    perfusion.add_argument("--per-slice", action="store_true", help="normalise each slice by its own NAWM")
    perfusion.add_argument("--cbf", action="store_true",
                           help="also CBF (relative), MTT and TTP: oSVD deconvolution with an automatic AIF")
    perfusion.add_argument("--ftb-thresholds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                           default=FTB_THRESHOLDS,
                           help="nCBV thresholds of the fractional tumour burden classes low < LOW <= intermediate "
                                "<= HIGH < high, written as ftb.nii.gz with --lesion (default %(default)s: the "
                                "published values for standardised rCBV, applied to nCBV as an approximation)")
    perfusion.add_argument("--baseline", nargs=2, type=non_negative_int, metavar=("START", "END"),
                           help="pre-bolus frames [START, END) (default: automatic)")
    perfusion.add_argument("--quiet", action="store_true", help="no progress lines")
    perfusion.set_defaults(handler=_run_perfusion)


def _run_perfusion(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.perfusion import run_perfusion_files

    if args.dsc_json is None and (args.tr is None or args.te is None):
        raise ValueError("Timing is missing: give --dsc-json, or both --tr and --te (seconds).")
    options = {"leakage": args.leakage, "first_pass": args.first_pass, "per_slice": args.per_slice,
               "deconvolution": args.cbf,
               "baseline": tuple(args.baseline) if args.baseline else None}
    result = run_perfusion_files(args.dsc, args.out, options, sidecar=args.dsc_json, tr_s=args.tr, te_s=args.te,
                                 mask=args.mask, nawm=args.nawm, lesion=args.lesion,
                                 progress=StderrProgress(args.quiet), ftb_thresholds=tuple(args.ftb_thresholds))
    for warning in result.report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"Perfusion maps written to {args.out}")
    return 0
