"""The one-node SLURM test cluster (slurm_cluster.py) and snakemake's SLURM executor on it.

snakemake runs with the cluster's options (SlurmCluster.snakemake_options: the squeue status command, as the
cluster has no slurmdbd for sacct). The successful and the failing workflow run side by side on one
cluster: each takes 25-35 s, mostly the executor's waits between status checks, so together they take one's time
(the failing one's 35 s: after a failed job the executor sleeps out its 21 s status interval before it exits).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster, slurm_programs_missing

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
RUN_TIMEOUT = 120.0

TWO_RULES = """\
rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "tr a-z A-Z < {input} > {output}"

rule a:
    output: "a.txt"
    shell: "echo hello from slurm > {output}"
"""

FAILING_RULE = """\
rule fails:
    output: "never.txt"
    shell: "exit 3"
"""


def _require_slurm() -> None:
    missing = slurm_programs_missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":  # CI installs SLURM (.ci/run): a missing program there is a broken set-up
        pytest.fail(missing)
    pytest.skip(missing)


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _group_is_gone(pgid: int, timeout: float = 3.0) -> bool:
    # A killed process that init has not reaped yet still counts as a member for a moment.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def test_cluster_runs_a_batch_job_and_stops_every_daemon():
    _require_slurm()
    with slurm_cluster() as cluster:
        groups = cluster.pids
        daemons = cluster.daemon_pids()
        submitted = cluster.run("sbatch", f"--partition={cluster.partition}", "--wrap", "hostname > out",
                                cwd=cluster.folder)
        assert submitted.returncode == 0, submitted.stderr
        assert _wait_for_file(cluster.folder / "out", timeout=30), "the batch job wrote no file within 30 s"
        assert (cluster.folder / "out").read_text().strip()
    assert sorted(daemons) == ["munged", "slurmctld", "slurmd"]
    assert [name for name, pid in daemons.items() if not _is_gone(pid)] == []
    assert [name for name, pgid in groups.items() if not _group_is_gone(pgid)] == []
    assert not cluster.folder.exists()


def test_cluster_stops_every_daemon_when_the_body_raises():
    _require_slurm()
    with pytest.raises(KeyError):
        with slurm_cluster() as cluster:
            groups = cluster.pids
            raise KeyError("the body failed")
    assert [name for name, pgid in groups.items() if not _group_is_gone(pgid)] == []
    assert not cluster.folder.exists()


def test_cluster_refuses_a_folder_too_long_for_its_sockets(tmp_path):
    with pytest.raises(ValueError, match="too long for the Unix sockets"):
        with slurm_cluster(tmp_path / ("x" * 80)):
            pass


def _start_workflow(folder: Path, snakefile: str, cluster) -> subprocess.Popen:
    folder.mkdir()
    (folder / "Snakefile").write_text(snakefile)
    # snakemake's caches stay in the test's folder, not in the home folder.
    env = {**os.environ, **cluster.env, "XDG_CACHE_HOME": str(folder / "cache")}
    with open(folder / "snakemake.log", "wb") as log:
        return subprocess.Popen([str(SNAKEMAKE), *cluster.snakemake_options()], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(process: subprocess.Popen, deadline: float) -> int | None:
    """The exit code, or None when the run outlived the deadline (then its whole process group is killed)."""
    try:
        return process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


@pytest.fixture(scope="module")
def workflow_runs(tmp_path_factory) -> dict[str, tuple[int | None, Path]]:
    """Both workflows run side by side on one cluster: {name: (exit code or None after a timeout, folder)}."""
    _require_slurm()
    runs = tmp_path_factory.mktemp("workflows")
    with slurm_cluster() as cluster:
        started = {name: (_start_workflow(runs / name, snakefile, cluster), runs / name)
                   for name, snakefile in (("two_rules", TWO_RULES), ("failing", FAILING_RULE))}
        deadline = time.monotonic() + RUN_TIMEOUT
        return {name: (_finish(process, deadline), folder) for name, (process, folder) in started.items()}


def _log(folder: Path) -> str:
    return (folder / "snakemake.log").read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_snakemake_runs_a_two_rule_workflow_on_slurm(workflow_runs):
    code, folder = workflow_runs["two_rules"]
    assert code == 0, _log(folder)
    assert (folder / "a.txt").read_text() == "hello from slurm\n"
    assert (folder / "b.txt").read_text() == "HELLO FROM SLURM\n"
    assert "submitted with SLURM jobid" in _log(folder)


@pytest.mark.slow
def test_snakemake_reports_a_failing_rule_on_slurm(workflow_runs):
    code, folder = workflow_runs["failing"]
    assert code is not None, f"snakemake still ran after {RUN_TIMEOUT:.0f} s: {_log(folder)}"
    assert code != 0, _log(folder)
    assert "Error in rule fails" in _log(folder)
    assert not (folder / "never.txt").exists()
