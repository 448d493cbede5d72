"""The extension's one process runner: long work runs in a separate process that can be cancelled.

The Slicer module polls ``BackgroundProcess.poll()`` from a timer (the UI never blocks); the CLI and tests call
``wait()``. Output lines are read by a thread into a queue, always decoded as UTF-8 with replacement characters
for bytes that are not (the child is asked to write UTF-8); progress lines written by ``gliomaprog``
(``[ 30%] stage (4.2 s)``) are parsed into a fraction and a message.

Cancel ends the whole process *tree*, not just the direct child: inside Slicer the child is the PythonSlicer
launcher, whose own child (python-real) runs the work and starts nnU-Net's worker pools. The tree is found
without psutil (Slicer does not bundle it): on POSIX the child's process group and session (it is started in a
session of its own), every process descended from it by parent links (recursively, so processes that left the
group or session with ``setsid`` are found too), and on Linux every process that inherited the job's marker
variable ``GLIOMAPROG_JOB`` even after its parent has exited; on Windows the parent links of a Toolhelp snapshot
(creation times guard against reused process ids), with ``taskkill /T /F`` as the fallback. On Linux and Windows
``poll()`` also remembers the tree while the job runs, so a process whose parent has ended is still found.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

_PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\]\s+(.*?)(?:\s+\([\d.]+ s\))?$")


@dataclass
class ProgressUpdate:
    fraction: float
    message: str


class ProgressPrinter:
    """Progress lines (``[ 40%] stage (3.2 s)``: percentage, stage, elapsed time) as ``gliomaprog`` prints them on
    stderr and a job process on stdout for its parent; ``parse_progress`` reads them back."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(f"[{100 * fraction:3.0f}%] {message} ({elapsed:.1f} s)", file=self.stream or sys.stdout, flush=True)


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
    return [python_executable(), "-m", "GliomaProgressionLib.cli.main", *arguments]


# ---------------------------------------------------------------------------------------------------------------
# SIGTERM, what a scheduler, a GUI or ``kill`` sends, and SIGHUP, what a closed terminal or ssh session sends,
# handled as Ctrl+C is.

TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class TerminationRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl+C raises KeyboardInterrupt, so that the same
    cleanups run (a worker's process tree ended by ``BackgroundProcess.cancel``, temporary and staging folders
    removed) and the same handlers catch it. ``exit_code`` is the shell's code for the signal (128 + its
    number: 143, 129)."""

    def __init__(self, signal_number: int):
        super().__init__(f"signal {signal_number}")
        self.exit_code = 128 + signal_number


def _termination_default_in_forked_child() -> None:
    """A forked worker (multiprocessing's pools, nnU-Net's fingerprinting and data loaders) must die of SIGTERM at
    once, as without the handler: a Python handler runs only between bytecodes, so a worker blocked in C code
    would never end, and its pool's terminate() would wait for it forever."""
    for number in TERMINATING_SIGNALS:
        if getattr(signal.getsignal(number), "ends_in_forked_children", False):
            signal.signal(number, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_termination_default_in_forked_child)


@contextlib.contextmanager
def handling_termination(handler):
    """While the block runs, ``handler(number, frame)`` handles SIGTERM and SIGHUP, except a signal the parent
    ignored on purpose (``nohup`` ignores SIGHUP); the previous handlers come back afterwards. Main thread only."""
    previous = {number: signal.getsignal(number) for number in TERMINATING_SIGNALS}
    handled = [number for number, old in previous.items() if old != signal.SIG_IGN]
    for number in handled:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number in handled:
            signal.signal(number, signal.SIG_DFL if previous[number] is None else previous[number])


@contextlib.contextmanager
def termination_as_interrupt():
    """While the block runs, SIGTERM and SIGHUP raise ``TerminationRequested`` in the main thread
    (``handling_termination``).

    Only the first signal raises: a second one during the cleanup is ignored, so the cleanup ends (a scheduler
    that will not wait sends SIGKILL, which nothing can handle). Nothing changes outside the main thread. A forked
    child that inherited the handler dies of the signal as it would have without it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, raised = os.getpid(), False

    def handler(number, frame):
        nonlocal raised
        if os.getpid() != owner:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        if not raised:
            raised = True
            raise TerminationRequested(number)

    handler.ends_in_forked_children = True
    with handling_termination(handler):
        yield


# ---------------------------------------------------------------------------------------------------------------
# Folders a killed run leaves behind. A run that is killed (SIGKILL, power cut) cannot remove its temporary or
# staging folders; it names them after itself (host, process id and start time: ``owner_token``) so that a later
# run can prove that their owner has ended and remove them. Nothing whose owner cannot be proved gone is touched.

JOB_FOLDER_PREFIX = "gliomaprog-job-"  # + owner token + "-" + random: a run's own temporary folder
_OWNER_TOKEN = re.compile(r"([0-9a-f]{8})-(\d+)-(\d+|x)")


def run_job_process(run: Callable[[ProgressPrinter], object]) -> int:
    """The body of a panel's job process (``python -m ...``): ``run`` the job with progress lines on stdout; 0 when
    it finished; otherwise a last line ``ERROR: <message>`` (after the traceback only for an unexpected failure) and
    exit code 2 for bad input, 143 when cancelled (SIGTERM, what the panel's Cancel sends; 130 for Ctrl+C, 129 for
    SIGHUP), 1 for anything else."""
    try:
        with termination_as_interrupt():  # the panel's Cancel sends SIGTERM: clean up as for Ctrl+C
            run(ProgressPrinter(sys.stdout))
    except KeyboardInterrupt as interruption:
        print("ERROR: cancelled; nothing was written.", flush=True)
        return getattr(interruption, "exit_code", 130)
    except ValueError as error:  # expected: bad input
        print(f"ERROR: {' '.join(str(error).split())}", flush=True)
        return 2
    except OSError as error:  # expected: a file that cannot be read or written
        where = f" ({error.filename})" if error.filename else ""
        print(f"ERROR: {error.strerror or error}{where}.", flush=True)
        return 2
    except Exception as error:
        import traceback

        traceback.print_exc(file=sys.stdout)
        print(f"ERROR: {' '.join(str(error).split()) or type(error).__name__}", flush=True)
        return 1
    return 0


def _host_tag() -> str:
    """This machine, briefly: process ids mean nothing on another host sharing the folder."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def owner_token() -> str:
    """This process as ``<host>-<pid>-<start time>`` (``x`` where the start time is unknown)."""
    start = _start_time(os.getpid())
    return f"{_host_tag()}-{os.getpid()}-{'x' if start is None else start}"


def owner_has_ended(token: str) -> bool:
    """True only when provably so: the token names this host and its process no longer runs, or its id now
    belongs to a process started at another time. A token of another host, or one that does not read, counts as
    running."""
    match = _OWNER_TOKEN.fullmatch(token.strip())
    if match is None or match.group(1) != _host_tag():
        return False
    start = None if match.group(3) == "x" else int(match.group(3))
    return not _is_alive(int(match.group(2)), start)


@contextlib.contextmanager
def owned_temporary_folder():
    """A new temporary folder named after this process, removed on every way out (error, Ctrl+C, SIGTERM);
    those of ended runs are swept first."""
    sweep_stale_temporary_folders()
    folder = Path(tempfile.mkdtemp(prefix=f"{JOB_FOLDER_PREFIX}{owner_token()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_stale_temporary_folders(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary folders (in ``parent``, default the system's) of runs that have provably ended."""
    parent = Path(parent or tempfile.gettempdir())
    swept = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(JOB_FOLDER_PREFIX)]
    except OSError:
        return swept
    for folder in candidates:
        token = folder.name[len(JOB_FOLDER_PREFIX):].rsplit("-", 1)[0]
        if folder.is_dir() and not folder.is_symlink() and owner_has_ended(token):
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
    return swept


# ---------------------------------------------------------------------------------------------------------------
# Finding and ending a job's process tree, without psutil (Slicer's Python does not bundle it).

JOB_MARKER_VARIABLE = "GLIOMAPROG_JOB"  # set to a token unique to each BackgroundProcess; its children inherit it

_CANCEL_BUDGET_S = 0.9  # cancel() returns within this: the GUI must never block for more than a second
_TERM_GRACE_S = 0.4  # time SIGTERM gets before SIGKILL
_PIPE_GRACE_S = 2.0  # output still open this long after the child ended: leftovers of the job hold it
_TRACK_INTERVAL_S = 1.0  # poll() remembers the tree's members at most this often (Linux and Windows)
_REAP_LIMIT_S = 60.0  # the background reaper (rarely needed) gives up after this
_LINE_END = re.compile(rb"\r\n|\r|\n")  # universal newlines, as text mode had (tqdm redraws with "\r")
_MAX_LINE_BYTES = 1 << 20  # a "line" without an end is cut here, so odd output cannot exhaust memory
_IS_LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    pgid: int | None = None
    sid: int | None = None
    start: int | None = None  # creation time, comparable between processes (None: unknown)


def _linux_stat(pid: int) -> _Proc | None:
    """One live process from /proc (None when it does not exist or is a zombie, which runs and starts nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        fields = data[data.rindex(b")") + 2:].split()  # the command name may contain spaces and parentheses
        if fields[0] in (b"Z", b"X", b"x"):
            return None
        return _Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def _linux_table() -> dict[int, _Proc]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _linux_stat(int(name))
            if info is not None:
                table[info.pid] = info
    return table


def _linux_has_marker(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return entry in environ.read().split(b"\0")
    except OSError:  # another user's process, or gone
        return False


def _ps_table() -> dict[int, _Proc]:
    """Other POSIX systems (macOS): ``ps`` gives process, parent and group ids (no portable session id)."""
    result = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat="],
                            capture_output=True, text=True, errors="replace", timeout=3)
    table = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit() and not parts[3].startswith("Z"):
            table[int(parts[0])] = _Proc(int(parts[0]), int(parts[1]), int(parts[2]))
    return table


class _Windows:
    """Toolhelp snapshot, creation times and TerminateProcess through ctypes (kernel32 only)."""

    _instance = None

    @classmethod
    def get(cls) -> "_Windows":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        import ctypes
        from ctypes import wintypes

        class Entry(ctypes.Structure):
            _fields_ = [("dwSize", wintypes.DWORD), ("cntUsage", wintypes.DWORD),
                        ("th32ProcessID", wintypes.DWORD), ("th32DefaultHeapID", ctypes.c_size_t),
                        ("th32ModuleID", wintypes.DWORD), ("cntThreads", wintypes.DWORD),
                        ("th32ParentProcessID", wintypes.DWORD), ("pcPriClassBase", ctypes.c_long),
                        ("dwFlags", wintypes.DWORD), ("szExeFile", ctypes.c_wchar * 260)]

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle, dword, filetime = wintypes.HANDLE, wintypes.DWORD, ctypes.POINTER(wintypes.FILETIME)
        signatures = {
            "CreateToolhelp32Snapshot": ([dword, dword], handle),
            "Process32FirstW": ([handle, ctypes.POINTER(Entry)], wintypes.BOOL),
            "Process32NextW": ([handle, ctypes.POINTER(Entry)], wintypes.BOOL),
            "OpenProcess": ([dword, wintypes.BOOL, dword], handle),
            "GetProcessTimes": ([handle, filetime, filetime, filetime, filetime], wintypes.BOOL),
            "WaitForSingleObject": ([handle, dword], dword),
            "TerminateProcess": ([handle, wintypes.UINT], wintypes.BOOL),
            "CloseHandle": ([handle], wintypes.BOOL),
        }
        for name, (arguments, result) in signatures.items():
            function = getattr(kernel32, name)
            function.argtypes, function.restype = arguments, result
        self.ctypes, self.wintypes, self.kernel32, self.Entry = ctypes, wintypes, kernel32, Entry

    def table(self) -> dict[int, _Proc]:
        kernel32, ctypes = self.kernel32, self.ctypes
        snapshot = kernel32.CreateToolhelp32Snapshot(0x2, 0)  # TH32CS_SNAPPROCESS
        if not snapshot or snapshot == self.wintypes.HANDLE(-1).value:
            raise OSError(ctypes.get_last_error(), "CreateToolhelp32Snapshot failed")
        links = []
        try:
            entry = self.Entry()
            entry.dwSize = ctypes.sizeof(self.Entry)
            found = kernel32.Process32FirstW(snapshot, ctypes.byref(entry))
            while found:
                links.append((int(entry.th32ProcessID), int(entry.th32ParentProcessID)))
                found = kernel32.Process32NextW(snapshot, ctypes.byref(entry))
        finally:
            kernel32.CloseHandle(snapshot)
        return {pid: _Proc(pid, ppid, start=self.creation_time(pid)) for pid, ppid in links if pid > 4}

    def _open(self, pid: int, access: int):
        return self.kernel32.OpenProcess(access | 0x1000, False, pid)  # | PROCESS_QUERY_LIMITED_INFORMATION

    def _creation_time(self, handle) -> int | None:
        times = [self.wintypes.FILETIME() for _ in range(4)]
        if not self.kernel32.GetProcessTimes(handle, *[self.ctypes.byref(t) for t in times]):
            return None
        return (times[0].dwHighDateTime << 32) | times[0].dwLowDateTime

    def creation_time(self, pid: int) -> int | None:
        handle = self._open(pid, 0)
        if not handle:
            return None
        try:
            return self._creation_time(handle)
        finally:
            self.kernel32.CloseHandle(handle)

    def alive(self, pid: int, start: int | None) -> bool:
        handle = self._open(pid, 0x00100000)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            running = self.kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: not signalled yet
            return running and (start is None or self._creation_time(handle) == start)
        finally:
            self.kernel32.CloseHandle(handle)

    def terminate(self, pid: int, start: int | None) -> None:
        handle = self._open(pid, 0x0001)  # PROCESS_TERMINATE
        if not handle:
            return
        try:
            if start is None or self._creation_time(handle) == start:  # never a process that reused the id
                self.kernel32.TerminateProcess(handle, 1)
        finally:
            self.kernel32.CloseHandle(handle)


def _process_table() -> dict[int, _Proc]:
    if os.name == "nt":
        return _Windows.get().table()
    return _linux_table() if _IS_LINUX else _ps_table()


def _start_time(pid: int) -> int | None:
    if os.name == "nt":
        return _Windows.get().creation_time(pid)
    if _IS_LINUX:
        info = _linux_stat(pid)
        return None if info is None else info.start
    return None


def _is_alive(pid: int, start: int | None) -> bool:
    """Whether this very process (same creation time, when known) still runs; zombies do not."""
    if os.name == "nt":
        return _Windows.get().alive(pid, start)
    if _IS_LINUX:
        info = _linux_stat(pid)
        return info is not None and (start is None or info.start == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now belongs to another user's process
        return False
    return True


def _split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their ends) and the unfinished rest; a final "\\r" waits for a possible "\\n"."""
    lines, start = [], 0
    for match in _LINE_END.finditer(buffer):
        if match.group() == b"\r" and match.end() == len(buffer):
            break
        lines.append(buffer[start:match.start()])
        start = match.end()
    rest = buffer[start:]
    while len(rest) > _MAX_LINE_BYTES:
        lines.append(rest[:_MAX_LINE_BYTES])
        rest = rest[_MAX_LINE_BYTES:]
    return lines, rest


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


class BackgroundProcess:
    """A child process whose output is collected line by line without blocking the caller.

    The child's environment gets ``PYTHONIOENCODING=utf-8:backslashreplace`` (so a Python child writes UTF-8 on
    every platform; its output is read as UTF-8 whatever it writes) and ``GLIOMAPROG_JOB`` (a token that marks
    the job's processes). ``cancel()`` ends the whole process tree and returns within about a second.
    """

    def __init__(self, command: list[str], env: dict | None = None, cpu_only: bool = False,
                 timeout_s: float | None = None):
        self.command = command
        self.timeout_s = timeout_s  # poll()/wait() cancel the process after this many seconds (timed_out = True)
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = library_python_path()
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["PYTHONIOENCODING"] = "utf-8:backslashreplace"
        self.env[JOB_MARKER_VARIABLE] = uuid.uuid4().hex
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
        self._lock = threading.Lock()
        self._stopping = False  # cancel() has been called
        self._reaper: threading.Thread | None = None  # finishes a cancel that took longer than its budget
        self._exited_at: float | None = None  # when poll() first saw the child ended
        self._root_start: int | None = None
        self._tree: dict[int, int | None] = {}  # pid -> creation time of every process of the job seen so far
        self._gone: dict[int, int | None] = {}  # members that have ended (on Windows orphans still name them)
        self._tracked_at = 0.0

    def add_cleanup(self, function) -> None:
        """Call ``function(exit_code)`` once when the process has ended (code None when cancelled or never run)."""
        self._cleanups.append(function)

    def run_cleanups(self, code: int | None) -> None:
        with self._lock:
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
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
            start_new_session=(os.name == "posix"),  # its own process group and session: the first line of cancel
        )
        self.started_at = time.monotonic()
        self._root_start = _start_time(self._process.pid)
        self._tree = {self._process.pid: self._root_start}
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return self

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def _read_output(self) -> None:
        """Bytes to lines, decoded as UTF-8 with U+FFFD for anything else; the end is always reported."""
        assert self._process is not None and self._process.stdout is not None
        pending = b""
        try:
            stream = self._process.stdout
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    break
                lines, pending = _split_lines(pending + chunk)
                for line in lines:
                    self._queue.put(_decode(line))
            if pending:
                self._queue.put(_decode(pending.rstrip(b"\r")))
        except Exception as error:  # never expected; the lines read so far stay, the end is still reported
            self._queue.put(f"(reading the output stopped: {error!r})")
        finally:
            self._queue.put(None)

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._end_of_output = True
                continue
            self.lines.append(line)
            update = parse_progress(line)
            if update is not None:
                self.progress = update

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start)."""
        return self._process.pid if self._process is not None else None

    def poll(self) -> int | None:
        """Collect new output; the exit code once the process has ended and all its output is read, else None.

        After ``cancel()`` the code is reported as soon as the process tree has ended (without waiting for output
        that a process outside the tree might still hold open). If the child has ended but its output stays
        open for more than two seconds (a process of the job outlived it and holds the pipe), those leftovers
        are stopped and the end is reported.
        """
        self._drain()
        if self._process is None:
            return None
        if self._stopping:
            return self._code_after_cancel()
        code = self._process.poll()
        if code is None:
            if self.timeout_s is not None and self.elapsed_s() > self.timeout_s:
                self.timed_out = True
                self.lines.append(f"ERROR: stopped after the {self.timeout_s:g} s time limit")
                self.cancel()
                self._drain()
                return self._code_after_cancel()
            if (os.name == "nt" or _IS_LINUX) and time.monotonic() - self._tracked_at > _TRACK_INTERVAL_S:
                self._tracked_at = time.monotonic()
                try:
                    self._discover(scan_marker=False)  # remember the tree while parent links are intact
                except Exception:  # the process table could not be read this time; cancel() has fallbacks
                    pass
            return None
        if not self._end_of_output:
            if self._exited_at is None:
                self._exited_at = time.monotonic()
            if self._reader is None or not self._reader.is_alive():
                self._drain()  # the reader has ended (or died): everything it read is in the queue
                self._end_of_output = True
            elif time.monotonic() - self._exited_at > _PIPE_GRACE_S:
                _, count = self._end_tree(time.monotonic() + _CANCEL_BUDGET_S, graceful=True)
                self._drain()
                self.lines.append(f"(the output stayed open after the process ended: {count} leftover "
                                  "process(es) of the job stopped)")
                self._end_of_output = True
            else:
                return None
        self.run_cleanups(code)
        return code

    def _code_after_cancel(self) -> int | None:
        if self._reaper is not None and self._reaper.is_alive():
            return None  # the rare slow cancel: the background reaper is still ending the tree
        return self._process.poll()

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
            if self._process.returncode is None:
                try:
                    self._process.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
            else:
                self._reader.join(0.05)

    def cancel(self) -> None:
        """End the process and every process it started (the whole tree); cleanups run afterwards.

        Returns within about a second whatever the processes do. On POSIX the process group gets SIGTERM first,
        then every process of the tree (found again, so nothing started meanwhile is missed) gets SIGKILL after a
        short grace; on Windows the tree is terminated at once (there is no SIGTERM). In the rare case that the
        tree has not vanished within the second, a background thread finishes the job and runs the cleanups, and
        poll() reports the end only then. Calling cancel() again, or after the end, is harmless.
        """
        if self._process is None:
            return
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            if not self._cleaned:
                self.cancelled = True
        running = self._process.poll() is None
        deadline = time.monotonic() + _CANCEL_BUDGET_S
        done, _ = self._end_tree(deadline, graceful=running)
        code = None if running else self._process.poll()
        if not done:
            self._reaper = threading.Thread(target=self._finish_cancel, args=(code,), daemon=True)
            self._reaper.start()
            return
        if self._reader is not None:
            self._reader.join(max(0.0, min(0.1, deadline - time.monotonic())))  # the last lines, if at hand
        self._drain()
        self.run_cleanups(code)

    def _finish_cancel(self, code: int | None) -> None:
        try:
            give_up = time.monotonic() + _REAP_LIMIT_S
            while time.monotonic() < give_up:
                if self._end_tree(time.monotonic() + 1.0, graceful=False)[0]:
                    break
        finally:
            try:
                self.run_cleanups(code)
            except Exception as error:
                self._queue.put(f"ERROR: cleaning up after the cancel failed: {error}")

    def _discover(self, scan_marker: bool) -> dict[int, int | None]:
        """Every live process of the job (pid -> creation time); remembered, so orphans are found later too."""
        root = self._process.pid
        table = _process_table()

        def same(pid: int, start: int | None) -> bool:
            info = table.get(pid)
            return info is not None and (start is None or info.start is None or info.start == start)

        members = {pid: table[pid].start for pid, start in self._tree.items() if same(pid, start)}
        self._gone.update({pid: start for pid, start in self._tree.items() if pid not in members})
        if root not in table or same(root, self._root_start):  # the root's id is not someone else's now
            members.update({pid: info.start for pid, info in table.items()
                            if (info.sid == root or info.pgid == root)
                            and (info.start is None or self._root_start is None or info.start >= self._root_start)})
        if scan_marker and _IS_LINUX:
            entry = f"{JOB_MARKER_VARIABLE}={self.env[JOB_MARKER_VARIABLE]}".encode()
            members.update({pid: info.start for pid, info in table.items()
                            if pid not in members and _linux_has_marker(pid, entry)})
        # Children of members, recursively. On Windows a child keeps naming its parent after the parent ended
        # (POSIX hands orphans to init), so ended members count as parents there, unless their id was reused.
        parents = dict(members)
        if os.name == "nt":
            parents.update({pid: start for pid, start in self._gone.items() if pid not in table})
        added = True
        while added:
            added = False
            for pid, info in table.items():
                if pid in members or info.ppid not in parents or info.ppid == pid:
                    continue
                parent_start = parents[info.ppid]
                if os.name == "nt" and info.start is None:
                    continue  # cannot check that it is not a reused id (nor terminate it)
                if info.start is not None and parent_start is not None and info.start < parent_start:
                    continue  # older than its "parent": the parent id was reused
                members[pid] = parents[pid] = info.start
                added = True
        for own in (os.getpid(), os.getppid()):
            members.pop(own, None)
        self._tree = dict(members)  # only live processes: an ended member's id may be reused by anyone
        return members

    def _signal(self, members: dict[int, int | None], kill: bool) -> None:
        root = self._process.pid
        if os.name == "nt":
            if self._process.poll() is None:
                self._process.kill()  # through our own handle: the root's id cannot have been reused
            for pid, start in sorted(members.items(), key=lambda item: (item[1] is None, item[1] or 0)):
                if pid != root:
                    _Windows.get().terminate(pid, start)
            return
        number = signal.SIGKILL if kill else signal.SIGTERM
        if self._process.poll() is None:  # not reaped, so the group id is still the root's
            try:
                os.killpg(root, number)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, _ in sorted(members.items(), key=lambda item: (item[1] is None, item[1] or 0)):  # parents first
            try:
                os.kill(pid, number)
            except (ProcessLookupError, PermissionError):
                pass

    def _end_tree(self, deadline: float, graceful: bool) -> tuple[bool, int]:
        """End every process of the job by ``deadline``: (whether none is left, how many were signalled)."""
        signalled: set[int] = set()
        try:
            members = self._discover(scan_marker=True)  # before any signal: the parent links are intact
            if graceful and os.name != "nt" and members:
                self._signal(members, kill=False)
                signalled.update(members)
                grace_end = min(deadline, time.monotonic() + _TERM_GRACE_S)
                while time.monotonic() < grace_end and (self._process.poll() is None or self._any_alive(members)):
                    time.sleep(0.02)
            for _ in range(3):  # SIGKILL what is left, found anew: children started meanwhile are included
                members = self._discover(scan_marker=False)
                if not members:
                    break
                self._signal(members, kill=True)
                signalled.update(members)
        except Exception:
            self._fallback_kill()
        while time.monotonic() < deadline:
            if self._process.poll() is not None and not self._any_alive(self._tree):
                return True, len(signalled)
            time.sleep(0.02)
        return self._process.poll() is not None and not self._any_alive(self._tree), len(signalled)

    def _any_alive(self, members: dict[int, int | None]) -> bool:
        root = self._process.pid
        try:
            return any(_is_alive(pid, start) for pid, start in members.items()
                       if pid != root or self._process.returncode is None)
        except Exception:
            return False

    def _fallback_kill(self) -> None:
        """When the process table cannot be read: the group (POSIX) or ``taskkill /T`` (Windows) still work."""
        if self._process.poll() is not None:
            return
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)], capture_output=True,
                               timeout=_CANCEL_BUDGET_S, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            else:
                os.killpg(self._process.pid, signal.SIGKILL)
        except (OSError, subprocess.SubprocessError):
            pass
        if self._process.poll() is None:
            self._process.kill()

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
