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
import time
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

    def __init__(self, command: list[str], env: dict | None = None, cpu_only: bool = False,
                 timeout_s: float | None = None):
        self.command = command
        self.timeout_s = timeout_s  # poll()/wait() cancel the process after this many seconds (timed_out = True)
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
        self.timed_out = False
        self.started_at: float | None = None
        self._cleanups: list = []
        self._cleaned = False

    def add_cleanup(self, function) -> None:
        """Call ``function(exit_code)`` once when the process has ended (code None when cancelled or never run)."""
        self._cleanups.append(function)

    def run_cleanups(self, code: int | None) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        errors = []
        for function in self._cleanups:
            try:
                function(code)
            except Exception as error:  # every cleanup runs; the first failure is reported afterwards
                errors.append(error)
        if errors:
            raise errors[0]

    def start(self) -> "BackgroundProcess":
        self._process = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=(os.name == "posix"),  # its own process group, so cancel reaches its workers too
        )
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return self

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

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
        if self._process is None:
            return None
        if (self.timeout_s is not None and not self._end_of_output and self._process.poll() is None
                and self.elapsed_s() > self.timeout_s):
            self.timed_out = True
            self.lines.append(f"ERROR: stopped after the {self.timeout_s:g} s time limit")
            self.cancel()
            return self._process.poll()
        if not self._end_of_output:
            return None
        code = self._process.poll()
        if code is not None:
            self.run_cleanups(code)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (tests, CLI); raises subprocess.TimeoutExpired after ``timeout``.

        With ``timeout_s`` set on the process, it is cancelled at that limit and ``timed_out`` becomes True.
        """
        assert self._process is not None and self._reader is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout)
            try:
                self._process.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
            if self._process.poll() is not None:
                self._reader.join(1.0)

    def cancel(self) -> None:
        """End the process and every process it started; cleanups run afterwards."""
        if self._process is not None and not self._cleaned:
            self.cancelled = True
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                self._kill_group_leftovers()
                self.run_cleanups(self._process.poll())
            return
        if os.name == "posix":
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:
                self._process.kill()
            self._process.wait(10)
        self._kill_group_leftovers()
        if self._reader is not None:
            self._reader.join(5)
        self.run_cleanups(None)

    def _kill_group_leftovers(self) -> None:
        """Workers that ignored SIGTERM (or outlived their parent) get SIGKILL: nothing of the tree survives."""
        if os.name != "posix" or self._process is None:
            return
        try:
            os.killpg(self._process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.killpg(self._process.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def error_message(self) -> str:
        """The last line the process wrote (where gliomaprog puts its one-line error)."""
        error = next((line for line in reversed(self.lines) if line.startswith("ERROR: ")), None)
        if error is not None:
            return error[len("ERROR: "):]
        return next((line for line in reversed(self.lines) if line.strip()), "no output")

    def error_tail(self, count: int = 12) -> str:
        """The last lines the process wrote (a crashed Python child's traceback ends there)."""
        lines = [line for line in self.lines if line.strip() and parse_progress(line) is None]
        if not lines:
            return "(no output)"
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
        if starts and len(lines) - starts[-1] <= 4 * count:  # the whole last traceback, however deep
            return "\n".join(lines[starts[-1]:])
        return "\n".join(lines[-count:])
