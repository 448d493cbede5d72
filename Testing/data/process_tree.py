"""Test helper for Testing/test_process.py: the process trees a cancelled job leaves behind.

``python process_tree.py ROLE``. Every process ignores SIGINT, as background jobs started by a shell script do,
so only SIGTERM/SIGKILL can end it, and prints ``ROLE PID`` once it is set up (all write into the job's pipe).

launcher      stands in for Slicer's PythonSlicer launcher: starts ``child`` (python-real) and waits for it, so
              ending only the launcher would leave the real work running
child         ignores SIGTERM; starts a ``worker`` in its group, a ``stubborn`` worker that ignores SIGTERM, and a
              ``daemon`` in a session of its own, without the job's marker variable (only its parent link leads
              to it)
daemon        own session, ignores SIGTERM, starts a ``worker`` of its own
orphans       starts ``detacher`` and keeps running; ``detacher`` starts a ``daemon`` and exits, so the daemon's
              parent is gone before the cancel
leaves-daemon starts a ``daemon`` (which holds the job's output open) and exits 0 at once
"""

import os
import signal
import subprocess
import sys
import time

MARKER = "GLIOMAPROG_JOB"


def start(role: str, new_session: bool = False, keep_marker: bool = True) -> subprocess.Popen:
    env = dict(os.environ)
    if not keep_marker:
        env.pop(MARKER, None)
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), role], env=env,
                            start_new_session=new_session)


def ready(role: str) -> None:
    os.write(1, f"{role} {os.getpid()}\n".encode())  # one write: lines of parallel processes stay whole


def main(role: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if role in ("child", "daemon", "stubborn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if role == "launcher":
        child = start("child")
        ready(role)
        return child.wait()
    if role == "child":
        start("worker")
        start("stubborn")
        start("daemon", new_session=True, keep_marker=False)
    elif role == "daemon":
        start("worker")
    elif role == "orphans":
        start("detacher").wait()
    elif role == "detacher":
        start("daemon", new_session=True)
        ready(role)
        return 0
    elif role == "leaves-daemon":
        start("daemon", new_session=True)
        ready(role)
        return 0
    ready(role)
    time.sleep(300)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
