"""``gliomaprog``: the extension's command line.

Expected errors (bad input, unwritable output) end with one line on stderr and exit code 2, never a traceback.
Ctrl+C, SIGTERM and SIGHUP (a closed terminal) cancel: the worker's processes end, temporary and staging folders go,
one line says so, and the exit code is the shell's for the signal (130, 143, 129).
"""

from __future__ import annotations

import argparse
import sys

from GliomaProgressionLib.cli import (cohort, ctv, habitats, invasion, models, perfusion, phantom, predict, radiomics,
                                      run)
from GliomaProgressionLib.cli.options import EXIT_BAD_INPUT, Parser
from GliomaProgressionLib.models.process import termination_as_interrupt

COMMAND_GROUPS = (phantom, perfusion, habitats, invasion, predict, models, ctv, run, cohort, radiomics)


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gliomaprog", description="GliomaProgression: glioma perfusion, progression and CTVs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    with termination_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
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
    except KeyboardInterrupt as interruption:  # Ctrl+C, or SIGTERM/SIGHUP (TerminationRequested): cleaned up
        print(f"gliomaprog {args.command}: cancelled; nothing was written.", file=sys.stderr)
        return getattr(interruption, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
