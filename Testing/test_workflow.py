"""Issue 16's acceptance: ``gliomaprog cohort workflow`` (the Snakefile of ``cohort/workflow.py``) on three small phantom
cases with the local profile gives what ``gliomaprog run`` gives on each; killed midway and run again it does only
the rest; a failing case is reported while the others complete; and the same workflow runs through a real one-node
SLURM cluster (``slurm_cluster``).

The three cases are small phantoms cut to a slab around the tumour (``helpers.crop_case_to_lesion``, as a
partial-coverage acquisition would be): the chain's cost scales with the 1 mm reference grid, and the suite's 15
minutes hold the workflow, three runs to compare with and a SLURM run only that way. One has no DSC (no perfusion, no habitats rule); a fourth case lacks its FLAIR.
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.cohort import workflow
from GliomaProgressionLib.runs.chain import REPORT_JSON, is_complete
from helpers import write_cropped_case
from slurm_cluster import slurm_cluster, slurm_programs_missing

# Seeds whose lesions are among the shortest superior-inferior (61-63 mm): the slabs, and the runs, stay small.
GOOD = {"dsc_a": {"seed": 3}, "dsc_b": {"seed": 10}, "no_dsc": {"seed": 22, "dsc": False}}
BROKEN = "no_flair"
# The conventional model runs with and without DSC; two CTV schemes (the standard and the AI-adapted) keep the
# export, report and scene of each case short.
SETTINGS = ["--model", "conventional", "--schemes", "eortc,ai"]
WORKFLOW_TIMEOUT = 900
CASE_JOB_FINISHED = "(Rule: case)"  # Snakemake 9's log line "Finished jobid: N (Rule: case)"
# What differs between two runs of the same case by nature, not by result: clocks, dates, generated DICOM UIDs.
VOLATILE_KEYS = {"timings_s", "created", "elapsed_s", "seconds", "inference", "output_files", "perfusion_s",
                 "habitats_s", "started", "total_time_s"}


# --- the cohort ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, synthetic_case):
    root = tmp_path_factory.mktemp("workflow") / "cohort"
    for name, spec in GOOD.items():
        write_cropped_case(synthetic_case, root / name, spec["seed"], spec.get("dsc", True))
    shutil.copytree(root / "no_dsc", root / BROKEN)
    (root / BROKEN / "flair.nii.gz").unlink()
    return root


def gliomaprog_workflow(cohort: Path, out: Path, *extra: str, env: dict | None = None,
                        cores: int = 2) -> subprocess.Popen:
    """The command in a session of its own, its output into files (a pipe nobody reads would fill and stall it)."""
    logs = out.parent / f"{out.name}-{time.monotonic_ns()}"
    process = subprocess.Popen([sys.executable, "-m", "GliomaProgressionLib.cli.main", "cohort", "workflow",
                                str(cohort), "--out", str(out), "--cores", str(cores), *SETTINGS, *extra],
                               stdout=open(f"{logs}.out", "w"), stderr=open(f"{logs}.err", "w"),
                               start_new_session=True, env={**os.environ, **(env or {})})
    process.logs = logs
    return process


def finish(process: subprocess.Popen, timeout: float = WORKFLOW_TIMEOUT) -> tuple[int, str, str]:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the workflow did not end within {timeout} s:\n{Path(f'{process.logs}.err').read_text()[-3000:]}")
    return process.returncode, Path(f"{process.logs}.out").read_text(), Path(f"{process.logs}.err").read_text()


def wait_for_first_complete_case(out: Path, process: subprocess.Popen, timeout: float = WORKFLOW_TIMEOUT) -> str:
    """The first case whose folder is complete and whose ``case`` job Snakemake has recorded as finished (its log
    says so a moment after the folder is written: a stop in between has Snakemake assemble that case again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        done = [name for name in GOOD if is_complete(out / name)]
        if done and CASE_JOB_FINISHED in Path(f"{process.logs}.err").read_text():
            return done[0]
        time.sleep(0.5)
    pytest.fail("no case completed before the workflow ended or timed out")


def cancelled_rules(out: Path) -> set[str]:
    """The benchmark files of the jobs the stop cancelled: Snakemake marks their outputs incomplete (file names are
    the outputs' paths in URL-safe base64)."""
    cancelled = set()
    for marker in (out / ".snakemake" / "incomplete").glob("*"):
        output = Path(base64.urlsafe_b64decode(marker.name).decode())
        case, rule = (output.parent.name, output.stem) if output.suffix == ".checkpoint" else (output.name, "case")
        cancelled.add(f"{workflow.WORKFLOW_DIR}/benchmarks/{case}/{rule}.tsv")
    return cancelled


def benchmark_stamps(out: Path) -> dict[str, float]:
    return {str(path.relative_to(out)): path.stat().st_mtime
            for path in (out / workflow.WORKFLOW_DIR / "benchmarks").rglob("*.tsv")}


def resume_through_slurm(cohort: Path, out: Path) -> tuple[int, str, str]:
    """The rest of the workflow through the SLURM executor on a one-node cluster started here, each case's remaining
    rules one SLURM job (--one-job-per-case: every job costs the executor's status checks, ~10 s here)."""
    with slurm_cluster() as cluster:
        options = (f"--snakemake-args=--default-resources slurm_partition={cluster.partition} runtime=10 "
                   "--seconds-between-status-checks 1 --slurm-init-seconds-before-status-checks 1")
        process = gliomaprog_workflow(cohort, out, "--profile", "slurm", "--one-job-per-case", options,
                                      env={**cluster.env, "XDG_CACHE_HOME": str(out.parent / "cache")})
        return finish(process, timeout=600)


@pytest.fixture(scope="module")
def resumed(cohort):
    """The workflow on this machine stopped (SIGTERM) as soon as its first case is complete, what it left, then the
    rest: through a real SLURM cluster when its programs are installed (always on CI), else locally again."""
    out = cohort.parent / "out"
    # One job at a time, and the workflow prefers later stages (workflow.RULE_PRIORITY): a case is finished before
    # the next one starts, so when the first is complete the others have not, however slow the machine.
    process = gliomaprog_workflow(cohort, out, cores=1)
    first = wait_for_first_complete_case(out, process)
    process.send_signal(signal.SIGTERM)  # as `kill` would: the command stops Snakemake, which stops its jobs
    killed_code, _, killed_err = finish(process, timeout=120)
    after_kill = {"complete": [name for name in GOOD if is_complete(out / name)],
                  "folders": sorted(p.name for p in out.iterdir()),
                  "benchmarks": {rule: mtime for rule, mtime in benchmark_stamps(out).items()
                                 if rule not in cancelled_rules(out)},  # the rules that had ended
                  "report_mtime": {name: (out / name / REPORT_JSON).stat().st_mtime
                                   for name in GOOD if is_complete(out / name)}}
    slurm_missing = slurm_programs_missing()
    if slurm_missing is None:
        code, stdout, stderr = resume_through_slurm(cohort, out)
    else:
        code, stdout, stderr = finish(gliomaprog_workflow(cohort, out))
    return {"out": out, "first": first, "killed_code": killed_code, "killed_err": killed_err,
            "after_kill": after_kill, "code": code, "stdout": stdout, "stderr": stderr,
            "slurm_missing": slurm_missing}


@pytest.fixture(scope="module")
def runs(cohort, resumed):
    """``gliomaprog run`` on each good case, in this process, after the workflow (never beside it: two cores)."""
    folder = cohort.parent / "runs"
    for name in GOOD:
        assert cli.main(["run", str(cohort / name), "--out", str(folder / name), "--quiet", *SETTINGS]) == 0
    return folder


# --- comparing two results of one case ---------------------------------------------------------------------------


def same_json(first, second, where: str = "") -> list[str]:
    """Where two JSON values differ beyond 1e-3 (relative) in a number, volatile keys ignored."""
    if isinstance(first, dict) and isinstance(second, dict):
        if set(first) != set(second):
            return [f"{where}: keys {sorted(set(first) ^ set(second))}"]
        return [d for key in first if key not in VOLATILE_KEYS for d in same_json(first[key], second[key],
                                                                                  f"{where}/{key}")]
    if isinstance(first, list) and isinstance(second, list):
        if len(first) != len(second):
            return [f"{where}: {len(first)} vs {len(second)} items"]
        return [d for index, (a, b) in enumerate(zip(first, second)) for d in same_json(a, b, f"{where}[{index}]")]
    if isinstance(first, (int, float)) and isinstance(second, (int, float)) and not isinstance(first, bool):
        return [] if abs(first - second) <= 1e-3 * max(1.0, abs(first), abs(second)) else [f"{where}: {first} vs {second}"]
    return [] if first == second else [f"{where}: {first!r} vs {second!r}"]


def same_image(first: Path, second: Path) -> list[str]:
    """Same grid; labels agreeing in all but 0.01 % of voxels, intensities within 1e-3 of their range: two runs of
    one case differ by that much (ITK's multithreaded registration metric sums in a varying order)."""
    a, b = sitk.ReadImage(str(first)), sitk.ReadImage(str(second))
    if a.GetSize() != b.GetSize() or not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4) or \
            not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6):
        return [f"{first.name}: grid"]
    x, y = sitk.GetArrayViewFromImage(a).astype(float), sitk.GetArrayViewFromImage(b).astype(float)
    if np.issubdtype(sitk.GetArrayViewFromImage(a).dtype, np.integer):
        return [] if np.mean(x != y) <= 1e-4 else [f"{first.name}: {np.mean(x != y):.2%} of voxels differ"]
    scale = max(float(np.ptp(x)), 1e-6)
    return [] if np.abs(x - y).max() <= 1e-3 * scale else [f"{first.name}: max difference {np.abs(x - y).max()}"]


def differences(run: Path, flow: Path) -> list[str]:
    found = []
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.name != workflow.PROVENANCE_JSON):
        name = path.relative_to(run).as_posix()
        other = flow / name
        if not other.is_file():
            found.append(f"{name}: missing from the workflow's output")
        elif name.endswith((".nii.gz", ".nrrd")):
            found += [f"{name}: {d}" for d in same_image(path, other)]
        elif name.endswith(".json"):
            theirs = json.loads(other.read_text())
            ours = json.loads(path.read_text())
            if name == REPORT_JSON:  # the workflow's one file more
                for data in (ours, theirs):
                    data["outputs"] = [entry for entry in data["outputs"] if entry != workflow.PROVENANCE_JSON]
            found += [f"{name}{d}" for d in same_json(ours, theirs)]
        elif name.endswith(".mrb"):
            with zipfile.ZipFile(path) as a, zipfile.ZipFile(other) as b:
                if sorted(a.namelist()) != sorted(b.namelist()):
                    found.append(f"{name}: different members")
    return found


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_killed_workflow_leaves_only_complete_cases_and_the_rerun_does_only_the_rest(resumed):
    """Stopped when a first case was complete: a case folder left is a complete result (Snakemake removes one whose
    job it did not see end); the rules that had ended are not run again (their benchmark files untouched), but
    for the assembly of a case whose folder went."""
    out, after_kill = resumed["out"], resumed["after_kill"]
    for name in GOOD:
        assert name not in after_kill["folders"] or name in after_kill["complete"], name
    assert after_kill["complete"] == [resumed["first"]], "one case at a time: only the first was complete"
    done = after_kill["benchmarks"]
    assert done and len(done) < len(benchmark_stamps(out)), "the kill came too early or too late to test a resume"
    for name, mtime in after_kill["report_mtime"].items():  # complete cases were not run again
        assert (out / name / REPORT_JSON).stat().st_mtime == mtime, name
    now = benchmark_stamps(out)
    redone = {rule for rule, mtime in done.items() if now[rule] != mtime}
    allowed = {f"{workflow.WORKFLOW_DIR}/benchmarks/{name}/case.tsv" for name in GOOD
               if name not in after_kill["complete"]}
    assert redone <= allowed, f"rules run again after the kill: {sorted(redone - allowed)}"
    assert all(is_complete(out / name) for name in GOOD)
    assert not (out / workflow.WORKFLOW_DIR / "work").exists() or \
        not list((out / workflow.WORKFLOW_DIR / "work").rglob("*.checkpoint"))  # temp checkpoints gone


@pytest.mark.slow
def test_a_failing_case_is_reported_in_one_sentence_and_the_others_complete(resumed):
    assert resumed["code"] == 2, resumed["stderr"][-3000:]
    rows = {row["case"]: row for row in
            __import__("csv").DictReader(open(resumed["out"] / workflow.COHORT_CSV, newline=""))}
    assert set(rows) == set(GOOD) | {BROKEN}
    assert all(rows[name]["status"] == "complete" for name in GOOD)
    assert rows[BROKEN]["status"] == "failed" and "FLAIR" in rows[BROKEN]["message"]
    assert "Traceback" not in rows[BROKEN]["message"]
    assert resumed["stdout"].strip().startswith(f"Workflow: {len(GOOD)} complete, 1 failed ({BROKEN}: ")
    qc = (resumed["out"] / workflow.QC_CSV).read_text().splitlines()
    assert qc[0].split(",") == list(workflow.QC_COLUMNS) and len(qc) == 1 + len(GOOD)


@pytest.mark.slow
def test_the_workflow_gives_what_gliomaprog_run_gives_on_each_case(resumed, runs):
    out = resumed["out"]
    for name in GOOD:
        assert differences(runs / name, out / name) == [], name
        extra = {p.relative_to(out / name).as_posix() for p in (out / name).rglob("*") if p.is_file()} - \
            {p.relative_to(runs / name).as_posix() for p in (runs / name).rglob("*") if p.is_file()}
        assert extra == {workflow.PROVENANCE_JSON, ".snakemake_timestamp"}, name  # Snakemake's mark of a folder
    assert not (out / "no_dsc" / "habitats").exists() and (out / "dsc_a" / "habitats").is_dir()


@pytest.mark.slow
def test_each_rule_records_its_provenance_and_its_benchmark(resumed):
    out = resumed["out"]
    provenance = json.loads((out / "dsc_a" / workflow.PROVENANCE_JSON).read_text())
    rules = [record["rule"] for record in provenance["rules"]]
    assert rules == ["prepare", "habitats", "predict", "ctv", "dicom", "report", "scene"]
    record = provenance["rules"][2]
    assert record["models"]["progression"]["id"] == "conventional" and len(record["models"]["progression"]
                                                                         ["sha256"]) == 64
    assert record["software"]["snakemake"] == "9.27.1" and record["software"]["nnunetv2"]
    assert record["settings"]["model"] == "conventional" and record["seconds"] > 0
    no_dsc = json.loads((out / "no_dsc" / workflow.PROVENANCE_JSON).read_text())
    assert [r["rule"] for r in no_dsc["rules"]][:2] == ["prepare", "predict"]  # no DSC: no habitats rule
    assert no_dsc["rules"][1]["stages"] == ["habitats", "predict"]  # passed through, recorded as skipped
    for name in GOOD:
        stages = {p.stem for p in (out / workflow.WORKFLOW_DIR / "benchmarks" / name).glob("*.tsv")}
        assert {"prepare", "predict", "ctv", "dicom", "report", "scene", "case"} <= stages


def test_snakemake_heeds_the_forwarded_stop_even_when_started_with_sigint_ignored():
    """A shell script's background job inherits SIGINT ignored; the stop (SIGTERM, forwarded as SIGINT) must still
    reach Snakemake as KeyboardInterrupt, or the run goes on to its end (seen in a fresh-clone CI run)."""
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, output = workflow.run_snakemake(probe, quiet=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (code, output.strip()) == (0, "True")


def test_a_hang_up_reaches_snakemake_as_the_same_stop():
    """A closed terminal sends SIGHUP: this process forwards it as SIGINT, and Snakemake itself ignores the hang-up
    the terminal sends its whole process group, so that it stops cleanly instead of dying at once."""
    probe = [sys.executable, "-c", "import signal, time\n"
             "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, flush=True)\n"
             "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('stopped by SIGINT')"]
    hang_up = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGHUP))
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (not under nohup)
    hang_up.start()
    try:
        code, output = workflow.run_snakemake(probe, quiet=True)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # given back afterwards
    finally:
        hang_up.cancel()
        signal.signal(signal.SIGHUP, previous)
    assert (code, output.split()) == (0, ["True", "stopped", "by", "SIGINT"])


def test_bad_requests_fail_in_one_sentence_before_snakemake_starts(tmp_path, capsys):
    (tmp_path / "cases").mkdir()
    (tmp_path / "a_file").write_text("x")
    for arguments, fragment in (
            ([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "does not exist"),
            ([str(tmp_path / "cases"), "--out", str(tmp_path / "o")], "has no sub-folder"),
            ([str(tmp_path), "--out", str(tmp_path / "a_file")], "is a file"),
    ):
        assert cli.main(["cohort", "workflow", *arguments]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and fragment in error[0] and "Traceback" not in error[0]
    assert not (tmp_path / "o").exists()


def test_settings_travel_to_the_rules_and_unknown_config_is_refused():
    from GliomaProgressionLib.runs.chain import RunSettings

    settings = RunSettings(model="conventional", schemes=("rtog", "ai"), ftb_thresholds=(0.9, 1.8), invasion="x")
    assert workflow.settings_from_config(json.loads(json.dumps(workflow.settings_to_config(settings)))) == settings
    with pytest.raises(ValueError, match="unknown key"):
        workflow.settings_from_config({"cases": "c", "modle": "x"})


# --- on a real SLURM cluster ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_rest_of_the_workflow_ran_through_a_real_slurm_cluster(resumed):
    """The cases the local run had not finished were finished by SLURM jobs (``resumed``), one per case, and gave
    what ``gliomaprog run`` gives (the comparison above); the failing case failed there too."""
    missing = resumed["slurm_missing"]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    out, done_before = resumed["out"], set(resumed["after_kill"]["complete"])
    finished_on_slurm = [name for name in GOOD if name not in done_before]
    assert finished_on_slurm, "every case was complete before the kill"
    jobs_of = {}
    for name in finished_on_slurm:
        rules = json.loads((out / name / workflow.PROVENANCE_JSON).read_text())["rules"]
        jobs_of[name] = {record["slurm_job_id"] for record in rules if record["slurm_job_id"]}
    assert all(len(jobs) <= 1 for jobs in jobs_of.values()), jobs_of  # at most one SLURM job per case
    assert any(jobs_of.values()), jobs_of  # stage rules ran inside SLURM jobs
    assert list((out / ".snakemake" / "slurm_logs").rglob("*.log"))


def test_the_cohort_rule_says_why_it_did_not_evaluate_the_ctvs(tmp_path):
    """``cohort evaluate --ctv`` runs only when every complete case has its recurrence (the truth) and there are
    enough cases; otherwise cohort.csv's summary line says which of the two was missing."""
    from GliomaProgressionLib.cohort.ctv_evaluate import MIN_PATIENTS, RUN_FILES

    names = [f"case{index}" for index in range(MIN_PATIENTS - 1)]
    for name in names:
        (tmp_path / name / RUN_FILES["recurrence"]).parent.mkdir(parents=True)
    assert "not every case has a recurrence" in workflow.evaluate_when_truth(tmp_path, names)
    for name in names:
        (tmp_path / name / RUN_FILES["recurrence"]).write_bytes(b"")
    assert f"at least {MIN_PATIENTS} needed" in workflow.evaluate_when_truth(tmp_path, names)
    assert not (tmp_path / workflow.CTV_EVALUATION).exists()
