"""``gliomaprog predict``: the progression model on one case's files."""

from __future__ import annotations

import argparse
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_float
from GliomaProgressionLib.runs.predict import DEVICES


def add_commands(commands) -> None:
    """``predict``."""
    predict = commands.add_parser(
        "predict", help="predict where the tumour will progress inside the non-enhancing lesion (nnU-Net)",
        description="Register CE-T1, FLAIR and nCBV onto the 1 mm CE-T1 grid and run a progression model in a "
                    "separate process. Demo models are trained on synthetic data - not for clinical use.")
    predict.add_argument("--t1c", required=True, type=Path, help="contrast-enhanced T1 (the reference grid)")
    predict.add_argument("--flair", required=True, type=Path, help="FLAIR")
    predict.add_argument("--lesion", required=True, type=Path, help="lesion labels on the CE-T1 grid (BraTS 2024)")
    predict.add_argument("--dsc", type=Path, help="4D DSC series (nCBV is computed and registered from it)")
    predict.add_argument("--dsc-json", type=Path, help="DSC sidecar (EchoTime, RepetitionTime/FrameTimes, s)")
    predict.add_argument("--ncbv", type=Path, help="nCBV map: on the DSC grid with --dsc, else already aligned "
                                                   "with CE-T1")
    predict.add_argument("--map", action="append", metavar="NAME=PATH", default=[],
                         help="another channel the model names: adc, fa, md (ADC/MD in 10^-6 mm^2/s, or mm^2/s "
                              "recognised and rescaled) or map_<name>, registered onto CE-T1 like FLAIR; p and q "
                              "are derived from md and fa (repeat for each map)")
    predict.add_argument("--model", required=True, help="model id (see 'gliomaprog models list') or a package "
                                                        "path (.zip or folder)")
    predict.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    predict.add_argument("--device", choices=DEVICES, default="auto")
    mirroring = predict.add_mutually_exclusive_group()
    mirroring.add_argument("--tta", dest="tta", action="store_true", default=None,
                           help="test-time mirroring (default: on GPU only)")
    mirroring.add_argument("--no-tta", dest="tta", action="store_false")
    predict.add_argument("--threshold", type=positive_float, default=0.5, help="probability cut-off (0.5)")
    predict.add_argument("--min-voxels", type=non_negative_int, default=1,
                         help="voxels needed for a 'progression' verdict (default 1, as seed 000)")
    predict.add_argument("--min-ml", type=float, default=0.0, help="volume needed for the verdict (mL, default 0)")
    predict.add_argument("--timeout", type=positive_float, help="give up on the model after this many seconds")
    predict.add_argument("--trust-model", action="store_true",
                         help="load a package that cannot be loaded safely (runs code from it: only for "
                              "packages you trust)")
    predict.add_argument("--quiet", action="store_true", help="no progress lines")
    predict.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.predict import PredictionSettings, run_predict_files

    from GliomaProgressionLib.case.channels import parse_map_argument

    maps = dict(parse_map_argument(text) for text in args.map)
    settings = PredictionSettings(threshold=args.threshold, min_voxels=args.min_voxels, min_ml=args.min_ml,
                                  device=args.device, tta=args.tta)
    result = run_predict_files(args.t1c, args.flair, args.lesion, args.model, args.out, dsc=args.dsc,
                               dsc_json=args.dsc_json, ncbv=args.ncbv, settings=settings,
                               trust_model=args.trust_model, timeout_s=args.timeout,
                               progress=StderrProgress(args.quiet), maps=maps)
    verdict = result.verdict
    print(f"{'Progression predicted' if verdict['progression_predicted'] else 'No progression predicted'}: "
          f"{verdict['predicted_volume_ml']} mL inside the non-enhancing lesion. Results in {args.out}")
    return 0
