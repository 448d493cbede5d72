"""The extension's one process runner: long work runs in a separate process that can be cancelled.

The Slicer module polls ``BackgroundProcess.poll()`` from a timer (the UI never blocks); the CLI and tests call
``wait()``. Output lines are read by a thread into a queue; progress lines written by ``gliomaprog``
(``[ 30%] stage (4.2 s)``) are parsed into a fraction and a message. Cancel ends the whole process group, so
worker processes the child started (nnU-Net's pools) do not outlive it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

_PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\]\s+(.*?)(?:\s+\([\d.]+ s\))?$")


@dataclass
class ProgressUpdate:
    fraction: float
    message: str


def parse_progress(line: str) -> ProgressUpdate | None:
    match = _PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    return ProgressUpdate(int(match.group(1)) / 100.0, match.group(2))


def library_python_path() -> str:
    """PYTHONPATH that lets a child Python import the extension's Lib packages, wherever they are installed."""
    import DSCPerfusionLib
    import GliomaProgressionLib

    folders = {str(Path(package.__file__).resolve().parent.parent) for package in (GliomaProgressionLib,
                                                                                    DSCPerfusionLib)}
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join(sorted(folders) + ([existing] if existing else []))


def python_executable() -> str:
    """The Python to run children with: Slicer's PythonSlicer inside Slicer, else this interpreter."""
    executable = Path(sys.executable)
    if executable.stem.lower().startswith("slicer"):  # inside the Slicer application sys.executable is Slicer
        candidate = executable.with_name("PythonSlicer" + executable.suffix)
        if candidate.exists():
            return str(candidate)
    return sys.executable


def gliomaprog_command(*arguments: str) -> list[str]:
    return [python_executable(), "-m", "GliomaProgressionLib.cli", *arguments]


class BackgroundProcess:
    """A child process whose output is collected line by line without blocking the caller."""

    def __init__(self, command: list[str], env: dict | None = None, cpu_only: bool = False):
        self.command = command
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = library_python_path()
        self.env["PYTHONUNBUFFERED"] = "1"
        if cpu_only:
            self.env["CUDA_VISIBLE_DEVICES"] = "-1"
        self.lines: list[str] = []
        self.progress = ProgressUpdate(0.0, "Starting")
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._end_of_output = False
        self.cancelled = False

    def start(self) -> "BackgroundProcess":
        self._process = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=(os.name == "posix"),  # its own process group, so cancel reaches its workers too
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return self

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def poll(self) -> int | None:
        """Collect new output; the exit code once the process has ended and all its output is read, else None."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._end_of_output = True
                continue
            self.lines.append(line)
            update = parse_progress(line)
            if update is not None:
                self.progress = update
        if self._process is None or not self._end_of_output:
            return None
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (tests, CLI); raises subprocess.TimeoutExpired after ``timeout``."""
        assert self._process is not None and self._reader is not None
        self._process.wait(timeout)
        self._reader.join()
        code = self.poll()
        assert code is not None
        return code

    def cancel(self) -> None:
        """End the process and every process it started."""
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        if os.name == "posix":
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        else:
            self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:
                self._process.kill()

    def error_message(self) -> str:
        """The last line the process wrote (where gliomaprog puts its one-line error)."""
        return next((line for line in reversed(self.lines) if line.strip()), "no output")
