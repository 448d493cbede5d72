"""What every ``gliomaprog`` command shares: the one-line parser, argument types and the progress printer.

Choice lists are not written here: each command imports them from the library that owns them.
"""

from __future__ import annotations

import argparse
import math
import sys

from GliomaProgressionLib.models.process import ProgressPrinter

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
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


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def margin_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of mm, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive (a margin grows the target), got {text}")
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text} mm is implausibly large (over 100 mm)")
    return value


def add_schemes_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--schemes NAME [NAME ...]`` (commas allowed, may repeat; read with ``name_list``): the CTV schemes.

    The names come from CTVPlannerLib, which owns them; ``aliases`` keeps older spellings working.
    """
    from CTVPlannerLib.schemes import SCHEMES

    parser.add_argument("--schemes", *aliases, dest="schemes", nargs="+", action="extend", metavar="NAME",
                        help=f"CTV schemes: {', '.join(SCHEMES)} or all (default all); one or more, commas allowed")


def name_list(values: list[str] | None) -> tuple[str, ...] | None:
    """Names given as repeated or space- or comma-separated values (``--schemes rtog,ai boost``)."""
    if not values:
        return None
    return tuple(name for value in values for name in value.split(",") if name)


class StderrProgress(ProgressPrinter):
    """Progress lines on stderr (``--quiet`` silences them)."""

    def __init__(self, quiet: bool = False):
        super().__init__(sys.stderr, quiet)
