"""``gliomaprog``: the extension's command line.

Expected errors (bad input, unwritable output) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


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
    return parser


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
        print(f"gliomaprog {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"gliomaprog {args.command}: error: {error.strerror or error}{where}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gliomaprog {args.command}: cancelled; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
