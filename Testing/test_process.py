"""The background process runner: output and progress read without blocking, cancel ends the whole tree."""

import os
import sys
import textwrap
import time

from GliomaProgressionLib import process


def test_parse_progress():
    update = process.parse_progress("[ 30%] Acquiring CE-T1 and FLAIR (4.2 s)")
    assert update.fraction == 0.30 and update.message == "Acquiring CE-T1 and FLAIR"
    assert process.parse_progress("Synthetic case written to x") is None


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
