"""The background process runner: output and progress read without blocking, cancel ends the whole tree."""

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from GliomaProgressionLib.models import process


def test_parse_progress():
    update = process.parse_progress("[ 30%] Acquiring CE-T1 and FLAIR (4.2 s)")
    assert update.fraction == 0.30 and update.message == "Acquiring CE-T1 and FLAIR"
    assert process.parse_progress("Synthetic case written to x") is None


@pytest.mark.slow
def test_runs_gliomaprog_and_reports_progress(tmp_path):
    runner = process.BackgroundProcess(process.gliomaprog_command(
        "phantom", "--out", str(tmp_path / "case"), "--size", "small")).start()
    assert runner.wait(timeout=300) == 0
    assert runner.progress.fraction == 1.0
    assert (tmp_path / "case" / "t1c.nii.gz").is_file()


def test_failure_message_is_the_last_line(tmp_path):
    runner = process.BackgroundProcess(process.gliomaprog_command(
        "phantom", "--out", str(tmp_path / "case"), "--size", "huge")).start()
    assert runner.wait(timeout=60) == 2
    assert "--size" in runner.error_message()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; a zombie is not running.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_cancel_ends_the_process_and_its_children(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("child", child.pid, flush=True)
        time.sleep(120)
    """))
    runner = process.BackgroundProcess([sys.executable, str(script)]).start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("child") for line in runner.lines) and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    child = int(next(line for line in runner.lines if line.startswith("child")).split()[1])
    assert _alive(child)
    runner.cancel()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the grandchild was left running"
    assert runner.cancelled


def test_cancelled_phantom_leaves_no_case(tmp_path):
    runner = process.BackgroundProcess(process.gliomaprog_command(
        "phantom", "--out", str(tmp_path / "case"), "--size", "full")).start()
    deadline = time.monotonic() + 60
    while runner.progress.fraction < 0.1 and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    runner.cancel()
    assert not (tmp_path / "case").exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_timeout_stops_the_process_and_its_children(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("child", child.pid, flush=True)
        time.sleep(120)
    """))
    finished = []
    runner = process.BackgroundProcess([sys.executable, str(script)], timeout_s=2.0)
    runner.add_cleanup(finished.append)
    started = time.monotonic()
    runner.start()
    code = runner.wait(timeout=60)
    assert time.monotonic() - started < 20
    assert runner.timed_out and runner.cancelled and code != 0
    assert "time limit" in runner.error_message()
    assert finished == [None]  # the cleanup ran once, told that the process was stopped
    child = int(next(line for line in runner.lines if line.startswith("child")).split()[1])
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_crashing_child_surfaces_its_last_error_lines_quickly(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("print('[ 10%] Loading', flush=True)\nraise RuntimeError('the checkpoint is damaged')\n")
    finished = []
    runner = process.BackgroundProcess([sys.executable, str(script)])
    runner.add_cleanup(finished.append)
    started = time.monotonic()
    code = runner.start().wait(timeout=30)
    assert code == 1 and time.monotonic() - started < 10
    assert "RuntimeError: the checkpoint is damaged" in runner.error_message()
    tail = runner.error_tail()
    assert "Traceback" in tail and "the checkpoint is damaged" in tail and "Loading" not in tail
    assert finished == [1]


def test_cleanup_runs_once_on_success(tmp_path):
    finished = []
    runner = process.BackgroundProcess([sys.executable, "-c", "print('[100%] done')"])
    runner.add_cleanup(finished.append)
    assert runner.start().wait(timeout=30) == 0
    runner.poll()
    runner.cancel()  # after the end: nothing to stop, the cleanup does not run again
    assert finished == [0] and runner.progress.fraction == 1.0


TREE = Path(__file__).parent / "data" / "process_tree.py"


def _helper_pids(runner) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in runner.lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found.setdefault(parts[0], []).append(int(parts[1]))
    return found


def _pids_once_ready(runner, roles: list[str], timeout: float = 30) -> dict[str, list[int]]:
    """Poll until every role in ``roles`` (with repetitions) has printed its pid; role -> pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.poll()
        found = _helper_pids(runner)
        if all(len(found.get(role, [])) >= roles.count(role) for role in roles):
            return found
        time.sleep(0.02)
    raise AssertionError(f"the helper tree did not start: {runner.lines}")


@pytest.fixture
def tree_runner():
    """Runs Testing/data/process_tree.py ROLE; whatever it started is killed afterwards, should a test fail."""
    runners = []

    def run(role: str, cleanup=None):
        runner = process.BackgroundProcess([sys.executable, str(TREE), role])
        if cleanup is not None:
            runner.add_cleanup(cleanup)
        runners.append(runner.start())
        return runner

    yield run
    for runner in runners:
        runner.poll()
        for pid in [pid for pids in _helper_pids(runner).values() for pid in pids] + [runner._process.pid]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    ours = TREE.name.encode() in cmdline.read()  # not an unrelated process that reused the id
            except OSError:
                continue
            if ours and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_cancel_through_a_launcher_ends_the_whole_tree_within_a_second(tree_runner):
    # Inside Slicer the child is the PythonSlicer launcher around python-real: ending only the launcher would
    # leave python-real and its workers running. Here python-real and two of its processes ignore SIGTERM, one
    # runs in a session of its own (outside the process group) without the job's marker, with a worker of its
    # own, and every process ignores SIGINT.
    runner = tree_runner("launcher")
    found = _pids_once_ready(runner, ["launcher", "child", "worker", "worker", "stubborn", "daemon"])
    pids = [pid for role_pids in found.values() for pid in role_pids]
    assert len(pids) == 6 and all(_alive(pid) for pid in pids)
    started = time.monotonic()
    runner.cancel()
    latency = time.monotonic() - started
    survivors = [pid for pid in pids if _alive(pid)]
    assert latency < 1.5, f"cancel blocked the caller for {latency:.2f} s"
    assert survivors == [], f"still running after cancel: {survivors} of {found}"
    assert runner.cancelled
    code = runner.poll()
    assert code is not None and code != 0
    assert runner.wait(timeout=5) == code


def test_cancel_finds_a_daemon_whose_parent_exited_before(tree_runner):
    # POSIX hands an orphan to init, so no parent link leads to it: the job's marker variable does (on Linux).
    runner = tree_runner("orphans")
    found = _pids_once_ready(runner, ["orphans", "detacher", "daemon", "worker"])
    assert not _alive(found["detacher"][0])
    orphans = found["daemon"] + found["worker"]
    assert all(_alive(pid) for pid in orphans)
    started = time.monotonic()
    runner.cancel()
    assert time.monotonic() - started < 1.5
    assert [pid for pid in orphans if _alive(pid)] == []
    assert runner.poll() is not None


def test_output_held_open_by_a_leftover_does_not_hide_the_end(tree_runner):
    # The child exits 0 but a daemon it started keeps the output pipe open: the end is still reported (after a
    # short grace) and the leftover is stopped, so the GUI's button does not stay on "Cancel".
    finished = []
    runner = tree_runner("leaves-daemon", finished.append)
    found = _pids_once_ready(runner, ["leaves-daemon", "daemon", "worker"])
    started = time.monotonic()
    assert runner.wait(timeout=20) == 0
    assert time.monotonic() - started < 6
    assert finished == [0] and not runner.cancelled
    assert [pid for pid in found["daemon"] + found["worker"] if _alive(pid)] == []
    assert "leftover" in runner.lines[-1]


def test_output_is_read_as_utf8_with_replacement(tmp_path):
    # Invalid UTF-8 and cp1252 bytes (what a Windows child writes with the system code page) must neither kill
    # the reader nor hide the end; "\r" (tqdm) ends a line, also when "\r\n" arrives split over two writes.
    script = tmp_path / "bytes.py"
    script.write_text(textwrap.dedent(r"""
        import sys, time
        out = sys.stdout.buffer
        out.write(b"caf\xc3\xa9 ok\n")
        out.write(b"bad \xff\xfe end\n")
        out.write(b"cp1252 \x80 \x93quoted\x94\n")
        out.write(b"[ 50%] Half way\n")
        out.write(b"tqdm\r 10%\r 20%")
        out.flush()
        time.sleep(0.2)
        out.write(b"\r\nsplit\r")
        out.flush()
        time.sleep(0.2)
        out.write(b"\nERROR: caf\xe9 failed\n")
        out.write(b"no newline at the end \xe2\x82")
        out.flush()
        sys.exit(3)
    """))
    runner = process.BackgroundProcess([sys.executable, str(script)]).start()
    assert runner.wait(timeout=30) == 3
    assert runner.lines == ["café ok", "bad \ufffd\ufffd end", "cp1252 \ufffd \ufffdquoted\ufffd", "[ 50%] Half way",
                            "tqdm", " 10%", " 20%", "split", "ERROR: caf\ufffd failed", "no newline at the end \ufffd"]
    assert runner.progress.fraction == 0.5
    assert runner.error_message() == "caf\ufffd failed"


def test_a_python_child_writes_utf8_whatever_the_locale(tmp_path):
    script = tmp_path / "text.py"
    script.write_text("print('µm³ – ok')\n", encoding="utf-8")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    runner = process.BackgroundProcess([sys.executable, str(script)], env=env).start()
    assert runner.wait(timeout=30) == 0
    assert runner.lines == ["µm³ – ok"]


def test_end_is_reported_even_if_the_reader_dies(monkeypatch):
    # A reader thread that ends without its end-of-output marker must not leave poll() at None forever.
    monkeypatch.setattr(process.BackgroundProcess, "_read_output", lambda self: None)
    runner = process.BackgroundProcess([sys.executable, "-c", "print('x')"]).start()
    started = time.monotonic()
    assert runner.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
