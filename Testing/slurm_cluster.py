"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd on this machine, every file (config,
key, sockets, state, logs) in one folder, every daemon stopped by its PID on exit.

    with slurm_cluster() as cluster:  # or slurm_cluster(folder): at most 70 characters, for its Unix sockets
        subprocess.run(["sbatch", "--wrap", "hostname"], env={**os.environ, **cluster.env})
        subprocess.run(["snakemake", *cluster.snakemake_options()], env={**os.environ, **cluster.env})

Nothing is written outside the folder: clients find the cluster through ``SLURM_CONF`` (in ``cluster.env``).
Debian's ``slurm-wlm`` and ``munge`` packages provide the programs; ``slurm_programs_missing()`` says when they
are not there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "srun", "sinfo", "scancel", "scontrol")
PARTITION = "debug"
# Not this machine's name (slurmd -N takes any): slurmd makes sockets named after it, and the name stays short.
NODE = "node1"
# A Unix socket path holds at most 107 bytes; slurmd makes "<folder>/spool/node1_<job>.<step>" sockets (34 more).
LONGEST_FOLDER = 70
START_TIMEOUT = 30.0
STOP_GRACE = 5.0
# A cap on every daemon's life (coreutils `timeout`, ending in SIGKILL): a test run killed outright leaves no
# daemon behind for longer than this.
LIFETIME_SECONDS = 1800
# Room for the largest rule of the cohort workflow (8 GB, declared for a 1 mm brain); SLURM does not enforce it here
# (no cgroup plugin), and config_overrides keeps it from being measured.
CLUSTER_MEMORY_MB = 16384
MEMORY_PER_CPU_MB = 1024


def _program(name: str) -> str | None:
    # The daemons live in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def slurm_programs_missing() -> str | None:
    """One line saying which SLURM or munge programs are missing and how to get them, or None when all are here."""
    missing = [name for name in DAEMONS + CLIENTS if _program(name) is None]
    if not missing:
        return None
    return (f"SLURM test skipped: {', '.join(missing)} not found; install Debian's slurm-wlm and munge "
            "(`apt-get install --no-install-recommends slurm-wlm munge`; `.ci/run` does)")


@dataclass
class SlurmCluster:
    folder: Path
    partition: str
    # To merge into os.environ for every subprocess that talks to the cluster: SLURM_CONF, and PATH with the
    # srun wrapper first.
    env: dict[str, str]
    node: str
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        """The PID of each daemon's process group (its `timeout` wrapper; the daemon and what it forks are in it)."""
        return {name: process.pid for name, process in self.daemons.items()}

    def daemon_pids(self) -> dict[str, int]:
        """The daemons' own PIDs, from the PID files they write."""
        files = {"munged": self.folder / "munge" / "munged.pid", "slurmctld": self.folder / "slurmctld.pid",
                 "slurmd": self.folder / "slurmd.pid"}
        return {name: int(path.read_text().split()[0]) for name, path in files.items() if path.exists()}

    def snakemake_options(self, jobs: int = 2) -> list[str]:
        """snakemake's options to run a workflow through this cluster (executor plugin snakemake-executor-plugin-slurm).
        """
        return ["--executor", "slurm", "--jobs", str(jobs),
                # The default status command, sacct, needs slurmdbd, which this cluster lacks: snakemake would wait
                # for ever (and ignore SIGTERM).
                "--slurm-status-command", "squeue",
                # The first status check after 1 s instead of 40 s; later ones follow the executor's own back-off.
                "--slurm-init-seconds-before-status-checks", "1",
                "--default-resources", f"slurm_partition={self.partition}", "mem_mb=500", "runtime=5"]

    def run(self, *command: str, timeout: float = 30, **options) -> subprocess.CompletedProcess:
        """A client command (sinfo, squeue, sbatch, ...) against this cluster, its output captured as text."""
        return subprocess.run(command, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, **options)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(folder: Path, node: str) -> str:
    cpus = max(2, os.cpu_count() or 1)
    return f"""\
ClusterName=testcluster
# slurmctld runs only where SlurmctldHost names the machine it is on; "localhost" does on every machine.
SlurmctldHost=localhost(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge" / "munge.socket"}
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# The node's CPUs and memory are taken from here, not measured: the same cluster on every machine.
SlurmdParameters=config_overrides
# snakemake's SLURM executor falls back to sacct (which needs slurmdbd) when finished jobs leave squeue early.
MinJobAge=300
DefMemPerCPU={MEMORY_PER_CPU_MB}
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={CLUSTER_MEMORY_MB} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _srun_wrapper(folder: Path) -> Path:
    """An srun that always finds this cluster: snakemake's job step clears every SLURM_* variable (SLURM_CONF too)
    before its inner srun."""
    bin_folder = folder / "bin"
    bin_folder.mkdir(exist_ok=True)
    wrapper = bin_folder / "srun"
    wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF="{folder / "slurm.conf"}"\nexec "{_program("srun")}" "$@"\n')
    wrapper.chmod(0o755)
    return bin_folder


def _write_munge_key(munge: Path) -> Path:
    munge.mkdir(mode=0o700, exist_ok=True)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(stat.S_IRUSR)
    return key


def _start(name: str, command: list[str], folder: Path) -> subprocess.Popen:
    # A session of its own: the whole group (timeout, the daemon, what it forks) is signalled by the daemon's PID.
    log = open(folder / f"{name}.out", "wb")
    with log:
        return subprocess.Popen(["timeout", "--signal=KILL", str(LIFETIME_SECONDS), *command], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _start_munged(folder: Path) -> subprocess.Popen:
    munge = folder / "munge"
    key = _write_munge_key(munge)
    return _start("munged", [_program("munged"), "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
                             f"--key-file={key}", f"--seed-file={munge / 'munged.seed'}",
                             f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}"], folder)


def _wait_for(description: str, ready, cluster: SlurmCluster, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        ended = [name for name, process in cluster.daemons.items() if process.poll() is not None]
        if ended:
            raise RuntimeError(f"SLURM test cluster: {', '.join(ended)} ended while waiting for {description}; "
                               f"see the logs in {cluster.folder}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"SLURM test cluster: no {description} after {timeout:.0f} s; "
                               f"see the logs in {cluster.folder}")
        time.sleep(0.2)


def _node_state(cluster: SlurmCluster) -> str:
    try:
        result = cluster.run("sinfo", "--noheader", "--Node", "--format=%T", timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _signal_group(process: subprocess.Popen, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


def _cancel_jobs(cluster: SlurmCluster) -> None:
    # slurmstepd and the job's processes outlive slurmd: end them while slurmctld and slurmd still run.
    if "slurmd" not in cluster.daemons or cluster.daemons["slurmd"].poll() is not None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.run("scancel", f"--partition={cluster.partition}", timeout=10)
        deadline = time.monotonic() + STOP_GRACE
        while cluster.run("squeue", "--noheader", timeout=10).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.2)


def _stop(cluster: SlurmCluster) -> None:
    _cancel_jobs(cluster)
    for process in reversed(list(cluster.daemons.values())):
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in cluster.daemons.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process, signal.SIGKILL)  # whatever the daemon forked and left in its group
        process.wait()


def _configured(folder: Path) -> SlurmCluster:
    for part in ("state", "spool"):
        (folder / part).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, NODE))
    env = {"SLURM_CONF": str(conf), "PATH": os.pathsep.join([str(_srun_wrapper(folder)), os.environ.get("PATH", "")])}
    return SlurmCluster(folder=folder, partition=PARTITION, env=env, node=NODE)


def _check_folder(folder: Path) -> None:
    if len(str(folder)) > LONGEST_FOLDER:
        raise ValueError(f"SLURM test cluster folder {folder} is longer than {LONGEST_FOLDER} characters, "
                         "too long for the Unix sockets made in it.")


@contextlib.contextmanager
def slurm_cluster(folder: str | os.PathLike | None = None) -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster with its files in ``folder``; every daemon stopped on exit, also after an
    error in the body. Without a folder: a new one in the system's temporary folder (short enough for the cluster's
    Unix sockets, where pytest's may not be), removed on exit."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="slurm-") as temporary:
            with slurm_cluster(temporary) as cluster:
                yield cluster
        return
    folder = Path(folder).resolve()
    _check_folder(folder)
    missing = slurm_programs_missing()
    if missing:
        raise RuntimeError(missing)
    folder.mkdir(parents=True, exist_ok=True)
    cluster = _configured(folder)
    conf = cluster.env["SLURM_CONF"]
    try:
        cluster.daemons["munged"] = _start_munged(folder)
        _wait_for("munge socket", (folder / "munge" / "munge.socket").exists, cluster)
        cluster.daemons["slurmctld"] = _start("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", conf], folder)
        cluster.daemons["slurmd"] = _start("slurmd", [_program("slurmd"), "-D", "-N", NODE, "-f", conf], folder)
        _wait_for("idle node", lambda: _node_state(cluster) == "idle", cluster)
        yield cluster
    finally:
        _stop(cluster)
