"""``gliomaprog``: the extension's command line.

Expected errors (bad input, unwritable output) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from DSCPerfusionLib.leakage import LEAKAGE_METHODS

from .cohort_cli import add_cohort_commands
from .ctv_run import add_ctv_commands
from .run_case import add_run_command

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


class StderrProgress:
    """Progress lines on stderr: percentage, stage and elapsed time."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(f"[{100 * fraction:3.0f}%] {message} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gliomaprog", description="GliomaProgression: glioma perfusion, progression and CTVs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    phantom = commands.add_parser(
        "phantom", help="generate a synthetic glioma case (simulated images with known truth)",
        description="Generate a synthetic glioma case from the MNI152 template: CE-T1, FLAIR, DSC (4D), "
                    "lesion labels and the truth (CBV, K2, future progression). Synthetic, not patient data.")
    phantom.add_argument("--out", required=True, type=Path, help="new folder for the case (must not exist)")
    phantom.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", choices=("full", "small"), default="full",
                         help="full: clinical resolution; small: coarse grids for fast tests")
    phantom.add_argument("--cavity", action="store_true", help="resection-cavity variant")
    phantom.add_argument("--no-noise", action="store_true", help="noise-free images (for validation)")
    phantom.add_argument("--progression-cbv-ratio", type=_positive_float, default=1.6,
                         help="CBV of the future-progression region relative to white matter (default 1.6)")
    phantom.add_argument("--progression-flair-ratio", type=_positive_float, default=1.04,
                         help="FLAIR of the future-progression region relative to the oedema (default 1.04)")
    phantom.add_argument("--scene", type=Path, help="also write the case as a Slicer scene bundle (.mrb)")
    phantom.add_argument("--quiet", action="store_true", help="no progress lines")
    phantom.set_defaults(handler=_run_phantom)
    _add_perfusion_parser(commands)
    _add_predict_parser(commands)
    _add_models_parser(commands)
    add_ctv_commands(commands, _positive_float, _non_negative_int)
    add_run_command(commands, _positive_float, _non_negative_int)
    add_cohort_commands(commands, _positive_float, _non_negative_int, _positive_int)
    return parser


def _add_predict_parser(commands) -> None:
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
    predict.add_argument("--model", required=True, help="model id (see 'gliomaprog models list') or a package "
                                                        "path (.zip or folder)")
    predict.add_argument("--out", required=True, type=Path, help="new folder for the results (must not exist)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    mirroring = predict.add_mutually_exclusive_group()
    mirroring.add_argument("--tta", dest="tta", action="store_true", default=None,
                           help="test-time mirroring (default: on GPU only)")
    mirroring.add_argument("--no-tta", dest="tta", action="store_false")
    predict.add_argument("--threshold", type=_positive_float, default=0.5, help="probability cut-off (0.5)")
    predict.add_argument("--min-voxels", type=_non_negative_int, default=1,
                         help="voxels needed for a 'progression' verdict (default 1, as seed 000)")
    predict.add_argument("--min-ml", type=float, default=0.0, help="volume needed for the verdict (mL, default 0)")
    predict.add_argument("--timeout", type=_positive_float, help="give up on the model after this many seconds")
    predict.add_argument("--trust-model", action="store_true",
                         help="load a package that cannot be loaded safely (runs code from it: only for "
                              "packages you trust)")
    predict.add_argument("--quiet", action="store_true", help="no progress lines")
    predict.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .predict_run import PredictionSettings, run_predict_files

    settings = PredictionSettings(threshold=args.threshold, min_voxels=args.min_voxels, min_ml=args.min_ml,
                                  device=args.device, tta=args.tta)
    result = run_predict_files(args.t1c, args.flair, args.lesion, args.model, args.out, dsc=args.dsc,
                               dsc_json=args.dsc_json, ncbv=args.ncbv, settings=settings,
                               trust_model=args.trust_model, timeout_s=args.timeout,
                               progress=StderrProgress(args.quiet))
    verdict = result.verdict
    print(f"{'Progression predicted' if verdict['progression_predicted'] else 'No progression predicted'}: "
          f"{verdict['predicted_volume_ml']} mL inside the non-enhancing lesion. Results in {args.out}")
    return 0


def _add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="list, install and verify progression model packages")
    actions = models.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("list", help="the models this installation knows").set_defaults(handler=_run_models_list)
    install = actions.add_parser("install", help="install a model package (.zip or nnU-Net results folder)")
    install.add_argument("package", type=Path)
    install.add_argument("--sha256", help="expected checksum of the zip")
    install.add_argument("--trust", action="store_true", help="accept a package that cannot be loaded safely")
    install.set_defaults(handler=_run_models_install)
    verify = actions.add_parser("verify", help="check a model's files against its checksum")
    verify.add_argument("model", help="model id or package path")
    verify.set_defaults(handler=_run_models_verify)


def _run_models_list(args: argparse.Namespace) -> int:
    from .models import available_models

    for entry in available_models():
        channels = ", ".join(channel["name"] for channel in entry.get("channels", []))
        print(f"{entry['id']}\t{entry.get('title', '')}\t[{channels}]")
    return 0


def _run_models_install(args: argparse.Namespace) -> int:
    from .models import install_package

    model = install_package(args.package, expected_sha256=args.sha256, trust=args.trust)
    print(f"Installed model '{model.id}' in {model.folder}")
    return 0


def _run_models_verify(args: argparse.Namespace) -> int:
    import json

    from .models import verify_model

    print(json.dumps(verify_model(args.model), indent=2))
    return 0


def _add_perfusion_parser(commands) -> None:
    perfusion = commands.add_parser(
        "perfusion", help="DSC series -> leakage-corrected rCBV, nCBV (white-matter normalised), K2",
        description="Compute deltaR2*, Boxerman-Schmainda-Weisskoff leakage-corrected rCBV, K2 and nCBV "
                    "(normalised to contralateral normal-appearing white matter) from a 4D DSC series.")
    perfusion.add_argument("--dsc", required=True, type=Path, help="4D DSC series (NIfTI or NRRD)")
    timing = perfusion.add_argument_group("timing (seconds): a BIDS sidecar, or --tr and --te")
    timing.add_argument("--dsc-json", type=Path, help="sidecar with EchoTime, RepetitionTime or FrameTimes")
    timing.add_argument("--tr", type=_positive_float, help="repetition time (s), overrides the sidecar")
    timing.add_argument("--te", type=_positive_float, help="echo time (s), overrides the sidecar")
    perfusion.add_argument("--out", required=True, type=Path, help="new folder for the maps (must not exist)")
    perfusion.add_argument("--mask", type=Path, help="brain mask on the DSC grid (default: automatic)")
    perfusion.add_argument("--nawm", type=Path, help="white-matter reference mask on the DSC grid "
                                                     "(default: automatic, contralateral)")
    perfusion.add_argument("--lesion", type=Path, help="lesion labels (any grid; resampled to the DSC grid)")
    perfusion.add_argument("--leakage", choices=LEAKAGE_METHODS, default="bsw",
                           help="leakage correction (default bsw: Boxerman-Schmainda-Weisskoff)")
    perfusion.add_argument("--first-pass", action="store_true", help="integrate the first pass only")
    perfusion.add_argument("--per-slice", action="store_true", help="normalise each slice by its own NAWM")
    perfusion.add_argument("--cbf", action="store_true",
                           help="also CBF (relative), MTT and TTP: oSVD deconvolution with an automatic AIF")
    perfusion.add_argument("--baseline", nargs=2, type=_non_negative_int, metavar=("START", "END"),
                           help="pre-bolus frames [START, END) (default: automatic)")
    perfusion.add_argument("--quiet", action="store_true", help="no progress lines")
    perfusion.set_defaults(handler=_run_perfusion)


def _run_perfusion(args: argparse.Namespace) -> int:
    from .perfusion_run import run_perfusion_files

    if args.dsc_json is None and (args.tr is None or args.te is None):
        raise ValueError("Timing is missing: give --dsc-json, or both --tr and --te (seconds).")
    options = {"leakage": args.leakage, "first_pass": args.first_pass, "per_slice": args.per_slice,
               "deconvolution": args.cbf,
               "baseline": tuple(args.baseline) if args.baseline else None}
    result = run_perfusion_files(args.dsc, args.out, options, sidecar=args.dsc_json, tr_s=args.tr, te_s=args.te,
                                 mask=args.mask, nawm=args.nawm, lesion=args.lesion,
                                 progress=StderrProgress(args.quiet))
    for warning in result.report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"Perfusion maps written to {args.out}")
    return 0


def _run_phantom(args: argparse.Namespace) -> int:
    from .cases import write_case
    from .files import check_new_output_folder
    from .phantom import PhantomConfig, generate_case

    check_new_output_folder(args.out)
    if args.scene is not None:
        _check_scene_path(args.scene)
    config = PhantomConfig(seed=args.seed, size=args.size, cavity=args.cavity, noise=not args.no_noise,
                           progression_cbv_ratio=args.progression_cbv_ratio,
                           progression_flair_ratio=args.progression_flair_ratio)
    progress = StderrProgress(args.quiet)
    case = generate_case(config, progress)
    write_case(case, args.out)
    print(f"Synthetic case written to {args.out}")
    if args.scene is not None:
        progress(1.0, "Writing the Slicer scene")
        _write_case_scene(args.out, args.scene)
        print(f"Slicer scene written to {args.scene}")
    return 0


def _check_scene_path(path: Path) -> None:
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"--scene {path} must end in .mrb.")
    if path.exists():
        raise ValueError(f"--scene {path} already exists; choose a new file name.")


def _write_case_scene(case_folder: Path, scene_path: Path) -> None:
    from . import mrml
    from .cases import load_case_into_scene

    scene = mrml.new_scene()
    load_case_into_scene(case_folder, scene, name=case_folder.name)
    mrml.write_scene_bundle(scene_path, scene)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        message = " ".join(str(error).split())  # one line, whatever the library wrote
        print(f"gliomaprog {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TimeoutError as error:
        print(f"gliomaprog {args.command}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # a child process crashed: its last lines say why
        lines = [line for line in str(error).splitlines() if line.strip()]
        print("\n".join(lines[-12:]), file=sys.stderr)
        print(f"gliomaprog {args.command}: error: {lines[0] if lines else 'a worker process failed'}",
              file=sys.stderr)
        return 1
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"gliomaprog {args.command}: error: {error.strerror or error}{where}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gliomaprog {args.command}: cancelled; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
