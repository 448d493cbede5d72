"""The one-node SLURM test cluster (slurm_cluster.py): it starts, runs a batch job, and every daemon it started is
gone afterwards, even when the body raised. Snakemake's SLURM executor on it is tested with the product's own
workflow (test_workflow.py: the rest of a stopped cohort run, a failing case among them).
"""

import os
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
