"""What many test files of the main suite share: the ``gliomaprog`` command line run in a child process, and the
check of its one-line errors. The synthetic-case fixtures (``small_case``, ``small_case_folder``, ``full_case``)
are in ``conftest.py``; ``conftest.py`` also puts this folder on ``sys.path``, so ``from helpers import ...`` works.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

# The ``gliomaprog`` console script, run with this interpreter (the project's environment) as ``python -m``.
GLIOMAPROG = (sys.executable, "-m", "GliomaProgressionLib.cli.main")
PROGRESS_LINE = re.compile(r"^\[\s*\d+%\] ")


def gliomaprog(*arguments, timeout: float | None = 300, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` in a child process, stdout and stderr captured as text (paths may be Path objects).

    ``timeout=None`` for the commands that train a model."""
    return subprocess.run([*GLIOMAPROG, *map(str, arguments)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, after_progress: bool = False,
                          ignore_case: bool = False) -> None:
    """A refusal as the command line must give it: exit code 2, exactly one line on stderr holding every fragment
    (the input or option it names, what is wrong), and no traceback. With ``after_progress`` the progress lines
    of the work done before the input was found wrong may come first; the error is then the last line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if after_progress:
        lines = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        if ignore_case:
            assert fragment.lower() in lines[0].lower(), lines[0]
        else:
            assert fragment in lines[0], lines[0]


@dataclass
class Outcome:
    """What a command run in this process gave: as ``subprocess.CompletedProcess`` names it."""

    returncode: int
    stderr: str
    stdout: str


def gliomaprog_here(capsys, *arguments) -> Outcome:
    """``gliomaprog ARGUMENTS`` in this process (``cli.main``), its output taken from pytest's ``capsys``: for
    commands whose import and start-up would cost more than their work."""
    from GliomaProgressionLib.cli import main as cli

    code = cli.main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return Outcome(code, captured.err, captured.out)


def assert_nothing_written(parent, out) -> None:
    """Neither the output nor a staging folder beside it (``.partial-``) is left behind."""
    assert not out.exists()
    assert not [p for p in parent.iterdir() if ".partial-" in p.name]
