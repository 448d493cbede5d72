"""The Glioma Progression module's invasion-map job: one background process that maps one case folder (seed 004,
Yan et al. 2020; ``runs.invasion.run_invasion_files``).

The panel writes the scene's series as a case folder once (t1c, flair, lesion, the DSC series with dsc.json when
the model names nCBV, and the maps it names: adc, fa, md, map_<name>; ``case.folder.read_case`` reads them) and
starts this module from an ``InvasionJob``, which writes its own command line as ``runs.predict.PredictionJob``
does:

    python -m GliomaProgressionLib.runs.invasion_job --case DIR --out DIR [--model ID|PACKAGE]

Progress lines ``[ NN%] message (s)`` and a last line ``ERROR: <message>`` on failure go to stdout, as
``models.process.BackgroundProcess`` reads them; Cancel (SIGTERM) ends it with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from GliomaProgressionLib.models.invasion_packages import DEFAULT_INVASION_MODEL
from GliomaProgressionLib.models.process import run_job_process

Progress = Callable[[float, str], None]
JOB_MODULE = "GliomaProgressionLib.runs.invasion_job"  # this module, as the Slicer module's job process runs it


@dataclass(frozen=True)
class InvasionJob:
    """A case folder, the new output folder and the invasion model of a background invasion map. It owns its
    command line (``as_arg_list``) and the parser that reads it back (``from_arg_list``)."""

    case: Path  # a case folder as ``case.folder.read_case`` reads it
    out: Path  # a new folder: what ``run_invasion_files`` writes
    model: str = DEFAULT_INVASION_MODEL  # a listed invasion model's id, or a package zip or folder

    def __post_init__(self):  # paths given as text compare equal to the same paths read back from the arguments
        for name in ("case", "out"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "model", str(self.model))

    def as_arg_list(self) -> list[str]:
        """The arguments ``from_arg_list`` reads back into an equal job; each value joined to its flag, so that a
        value starting with "-" cannot be read as a flag."""
        return [f"--case={self.case}", f"--out={self.out}", f"--model={self.model}"]

    @classmethod
    def from_arg_list(cls, arguments: list[str]) -> "InvasionJob":
        """The job ``as_arg_list`` wrote; ValueError in one sentence for anything else."""
        values = _job_parser().parse_args(arguments)
        return cls(values.case, values.out, values.model)

    def command(self) -> list[str]:
        """This module run by the Python that can import the extension's libraries (PythonSlicer in Slicer)."""
        from GliomaProgressionLib.models.process import python_executable

        return [python_executable(), "-m", JOB_MODULE, *self.as_arg_list()]

    def start(self):
        """The job as a running ``BackgroundProcess`` (poll it; cancel ends it and everything it started). The
        classifier is a small MLP: the process never needs a GPU."""
        from GliomaProgressionLib.models.process import BackgroundProcess

        return BackgroundProcess(self.command(), cpu_only=True).start()

    def run(self, progress: Progress | None = None) -> dict:
        """The job in this process: map the case and write ``out`` (what the started process does); returns
        invasion.json's content."""
        from GliomaProgressionLib.runs.invasion import run_invasion_files

        return run_invasion_files(self.case, self.out, model_id=self.model, progress=progress)


class _JobParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence for the caller, not argparse's usage block
        raise ValueError(f"The invasion job's arguments are wrong: {message}.")


def _job_parser() -> argparse.ArgumentParser:
    parser = _JobParser(prog=f"python -m {JOB_MODULE}", add_help=False)
    parser.add_argument("--case", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default=DEFAULT_INVASION_MODEL)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The job process (``models.process.run_job_process``: exit codes and the last ``ERROR:`` line)."""
    arguments = sys.argv[1:] if argv is None else argv
    return run_job_process(lambda progress: InvasionJob.from_arg_list(arguments).run(progress))


if __name__ == "__main__":  # nothing may run on import: the module also holds the job's parameter object
    sys.exit(main())
