"""The cohort workflow (``gliomaprog cohort workflow``, or the shipped ``Snakefile`` with ``snakemake``): the stages
of ``gliomaprog run`` (``runs.stages``) as one Snakemake rule each per case, and one aggregate rule for the cohort.

Layout of the output folder OUT (the case folders are exactly what ``gliomaprog run --batch`` writes, plus
``provenance.json``)::

    <case>/            one complete run per case; report.json last (``chain.is_complete``)
    cohort.csv         one row per case (``run --batch``'s batch.csv columns)
    cohort_qc.csv      registration verdicts, warnings and notes per case
    ctv_evaluation/    ``cohort evaluate --ctv`` when every case has a recurrence (truth) and there are enough
    .workflow/         the workflow's own bookkeeping: checkpoints, logs, per-rule benchmarks, settings
    .snakemake/        Snakemake's metadata (what is complete, what is out of date)

Between rules a case travels as a checkpoint (``Checkpoint``, pickled): the run's in-memory state, so that every
rule continues exactly where ``gliomaprog run`` would. Checkpoints are the workflow's own intermediates, written by
this module into OUT/.workflow and read only from there; Snakemake deletes them once the case is complete.
Each checkpoint is written to a temporary name and renamed: a killed job leaves nothing a re-run would take for a
result, and a stage run again clears its own files first (``stages.clear_stage_files``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from GliomaProgressionLib.runs.chain import RunSettings

WORKFLOW_DIR = ".workflow"
SNAKEFILE = Path(__file__).with_name("Snakefile")
PROFILES_DIR = Path(__file__).with_name("workflow_profiles")
PROFILES = ("local", "slurm")
COHORT_CSV = "cohort.csv"
QC_CSV = "cohort_qc.csv"
CTV_EVALUATION = "ctv_evaluation"
PROVENANCE_JSON = "provenance.json"
QC_COLUMNS = ("case", "flair_registration", "dsc_registration", "warnings", "notes")
# Names OUT uses for itself: a case folder may not take them.
RESERVED_NAMES = (COHORT_CSV, QC_CSV, CTV_EVALUATION)
# What each rule asks of the machine or the cluster: threads, memory (MB) and wall time (minutes) for a 1 mm
# brain; the prediction also takes a GPU when the settings ask for CUDA. Measured peaks with the demo models are
# 0.5-1.2 GB per rule (benchmarks/bench_workflow.py); the room above them is for full-size series and a site's own
# nnU-Net model, which may need several GB to predict a 1 mm brain.
RULE_RESOURCES = {
    "prepare": {"threads": 2, "mem_mb": 6000, "runtime": 30},
    "habitats": {"threads": 1, "mem_mb": 3000, "runtime": 20},
    "predict": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "invasion": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "ctv": {"threads": 1, "mem_mb": 4000, "runtime": 20},
    "dicom": {"threads": 1, "mem_mb": 4000, "runtime": 20},
    "report": {"threads": 1, "mem_mb": 4000, "runtime": 10},
    "scene": {"threads": 1, "mem_mb": 4000, "runtime": 10},
    "case": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "cohort": {"threads": 1, "mem_mb": 4000, "runtime": 30},
}
PROVENANCE_SOFTWARE = ("snakemake", "snakemake-executor-plugin-slurm")
CASE_RULES = ("prepare", "habitats", "predict", "invasion", "ctv", "dicom", "report", "scene", "case")
# Later stages first: a case is finished before the next one starts where cores allow it, so results arrive case by
# case, a stopped run has lost at most the cases under way, and few temporary checkpoints (~170 MB each for a 1 mm
# brain) exist at once. Snakemake's default would run every case's prepare before any predict.
RULE_PRIORITY = {rule: position for position, rule in enumerate(CASE_RULES)}


# --- settings -------------------------------------------------------------------------------------------------


def settings_to_config(settings: RunSettings) -> dict:
    """The run settings as Snakemake config (JSON types only)."""
    config = asdict(settings)
    config.pop("recurrence")  # each case's own recurrence.* (a folder of cases has no single one)
    for key in ("schemes", "ftb_thresholds"):
        config[key] = list(config[key]) if config[key] is not None else None
    return config


def settings_from_config(config: dict) -> RunSettings:
    """RunSettings from Snakemake config: unknown keys are refused in one sentence; missing ones take the run's
    defaults."""
    known = set(RunSettings.__dataclass_fields__) - {"recurrence"}
    values = {key: value for key, value in config.items() if key != "cases"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"The workflow config has unknown key(s) {', '.join(unknown)}; known: cases, "
                         f"{', '.join(sorted(known))}.")
    for key in ("schemes", "ftb_thresholds"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return RunSettings(**values)


# --- the cases and their rules --------------------------------------------------------------------------------


def case_folders(cases: Path, out: Path) -> list[Path]:
    """``run --batch``'s case folders, none named like one of OUT's own entries."""
    from GliomaProgressionLib.runs.batch import case_folders as batch_case_folders

    folders = batch_case_folders(cases, out)
    clash = [folder.name for folder in folders if folder.name in RESERVED_NAMES]
    if clash:
        raise ValueError(f"The case folder {cases / clash[0]} has a name the workflow uses for its cohort results "
                         f"({', '.join(RESERVED_NAMES)}); rename it.")
    return folders


def case_stages(case_folder: Path, settings: RunSettings) -> list[str]:
    """The stages that are rules for this case, in order: the habitats only for a case with DSC when asked for,
    the invasion map only when asked for (``read_case_stage`` decides the same way)."""
    from GliomaProgressionLib.case.folder import has_series
    from GliomaProgressionLib.runs.stages import CASE_STAGES

    skipped = set()
    if not (settings.habitats and has_series(case_folder, "dsc")):
        skipped.add("habitats")
    if settings.invasion is None:
        skipped.add("invasion")
    return [stage for stage in CASE_STAGES if stage not in skipped]


def case_input_files(case_folder: Path) -> list[str]:
    """Every file of the case folder: a changed series makes its case out of date."""
    return sorted(str(path) for path in Path(case_folder).rglob("*") if path.is_file())


def checkpoint_path(case: str, stage: str) -> str:
    return f"{WORKFLOW_DIR}/work/{case}/{stage}.checkpoint"


def files_folder(case: str) -> str:
    return f"{WORKFLOW_DIR}/work/{case}/files"


def log_path(case: str, rule: str) -> str:
    return f"{WORKFLOW_DIR}/logs/{case}/{rule}.log"


def benchmark_path(case: str, rule: str) -> str:
    return f"{WORKFLOW_DIR}/benchmarks/{case}/{rule}.tsv"


# --- checkpoints ----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A case between two rules: the run's state after ``stage``, the seconds each stage took and each rule's
    provenance record."""

    case: object  # chain.CaseResults
    stage: str
    timings: dict = field(default_factory=dict)
    provenance: list = field(default_factory=list)


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            pickle.dump(checkpoint, stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        with open(path, "rb") as stream:
            checkpoint = pickle.load(stream)  # noqa: S301 - only this module's own files in OUT/.workflow
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as error:
        raise ValueError(f"The workflow checkpoint {path} cannot be read ({error}); delete it and run the "
                         "workflow again.") from None
    if not isinstance(checkpoint, Checkpoint):
        raise ValueError(f"The workflow checkpoint {path} is not one this workflow wrote; delete it.")
    return checkpoint


# --- one rule of one case -------------------------------------------------------------------------------------


def software_versions() -> dict:
    from GliomaProgressionLib.report.figure import SOFTWARE, software_versions as versions_of

    return versions_of((*SOFTWARE, *PROVENANCE_SOFTWARE))


def models_used(case) -> dict:
    """Each model the case's run uses, with the sha256 of its package."""
    used = {"progression": case.model}
    if case.habitat_model is not None:
        used["habitats"] = case.habitat_model
    if case.invasion_model is not None:
        used["invasion"] = case.invasion_model
    return {role: {"id": getattr(model, "id", None), "sha256": getattr(model, "sha256", None)}
            for role, model in used.items()}


def provenance_record(rule: str, stages: list[str], case, started: float, seconds: float) -> dict:
    return {"rule": rule, "stages": stages, "host": socket.gethostname(), "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "seconds": round(seconds, 2),
            "software": software_versions(), "models": models_used(case),
            "settings": settings_to_config(case.settings),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def stages_after(done: str, upto: str) -> list[str]:
    """The stages after ``done`` up to ``upto``: those between are the ones this case skips (no rule), which the
    run still passes through (they record 0 s and why they were skipped)."""
    from GliomaProgressionLib.runs.stages import CASE_STAGES

    order = ["read", *CASE_STAGES]
    return order[order.index(done) + 1:order.index(upto) + 1]


def run_rule(stage: str, case_folder: Path, settings: RunSettings, previous: Path | None, output: Path) -> None:
    """One stage rule: the case from the previous rule's checkpoint (or read, for ``prepare``), the stage's files
    into the case's files folder, the new checkpoint last."""
    from GliomaProgressionLib.runs.chain import StageProgress
    from GliomaProgressionLib.runs.stages import read_case_stage, run_stage

    started, clock = time.time(), time.monotonic()
    for stale in output.parent.glob(f".{output.name}.partial-*"):  # left by a job of this rule that was killed
        stale.unlink()
    progress = StageProgress(case_folder.name)
    if previous is None:
        checkpoint = Checkpoint(read_case_stage(case_folder, settings, progress), "read")
    else:
        checkpoint = load_checkpoint(previous)
        for optional, model in (("habitats", checkpoint.case.habitat_model), ("invasion", checkpoint.case.invasion_model)):
            if model is not None:
                progress.take(optional)  # "stage k/N" counts as in the prepare job
    folder = Path(files_folder(case_folder.name))
    folder.mkdir(parents=True, exist_ok=True)
    stages = stages_after(checkpoint.stage, stage)
    for name in stages:
        run_stage(name, checkpoint.case, folder, progress, in_job=True)
    timings = progress.finish()
    timings.pop("total")
    checkpoint.timings.update(timings)
    checkpoint.stage = stage
    checkpoint.provenance.append(provenance_record(stage, stages, checkpoint.case, started,
                                                   time.monotonic() - clock))
    save_checkpoint(checkpoint, output)


def assemble_case(case: str, previous: Path, out: Path) -> None:
    """The case folder as ``gliomaprog run`` writes it (all or nothing), plus provenance.json. Its files are hard
    links to the case's working files, which stay until the cohort rule: should Snakemake not see this job end, it
    runs it again from them."""
    from GliomaProgressionLib.case.files import staged_output_folder, write_json
    from GliomaProgressionLib.runs.chain import finish_output_folder, mark_owner, sweep_stale_leftovers

    checkpoint = load_checkpoint(previous)
    files = Path(files_folder(case))
    target = out / case
    sweep_stale_leftovers(out, case)  # the staging folder of an earlier job of this rule that was killed
    with staged_output_folder(target) as staging:
        mark_owner(staging)
        shutil.copytree(files, staging, dirs_exist_ok=True, copy_function=os.link)
        write_json({"case": case, "rules": checkpoint.provenance}, staging / PROVENANCE_JSON)
        data = checkpoint.case.data
        data["timings_s"] = {**checkpoint.timings, "total": round(sum(checkpoint.timings.values()), 2)}
        finish_output_folder(staging, data)


# --- the cohort ---------------------------------------------------------------------------------------------------


def failure_message(out: Path, case: str) -> str:
    """The one-sentence error of a case's failed rule, from its log (the last 'error:' line), or a pointer to the
    logs."""
    logs = sorted((out / WORKFLOW_DIR / "logs" / case).glob("*.log"), key=lambda path: path.stat().st_mtime)
    for log in reversed(logs):
        lines = [line for line in log.read_text(errors="replace").splitlines() if "error:" in line]
        if lines:
            return lines[-1].split("error:", 1)[1].strip()
    return f"no result; see the logs in {out / WORKFLOW_DIR / 'logs' / case}"


def cohort_rows(out: Path, cases: list[str]) -> list[dict]:
    from GliomaProgressionLib.runs.batch import _row
    from GliomaProgressionLib.runs.chain import REPORT_JSON, is_complete

    rows = []
    for case in cases:
        folder = out / case
        if is_complete(folder):
            data = json.loads((folder / REPORT_JSON).read_text())
            rows.append(_row(folder, "complete", "", folder, data, data["timings_s"]["total"]))
        else:
            rows.append(_row(folder, "failed", failure_message(out, case), folder, None, 0.0))
    return rows


def qc_row(folder: Path) -> dict:
    from GliomaProgressionLib.runs.chain import REPORT_JSON

    data = json.loads((folder / REPORT_JSON).read_text())
    registration = data.get("registration") or {}

    def verdict(series):
        quality = (registration.get(series) or {}).get("quality") or {}
        return quality.get("verdict", "")

    return {"case": folder.name, "flair_registration": verdict("flair"), "dsc_registration": verdict("dsc"),
            "warnings": " | ".join(data.get("warnings") or []), "notes": " | ".join(data.get("notes") or [])}


def evaluate_when_truth(out: Path, complete: list[str]) -> str:
    """``cohort evaluate --ctv`` over the complete cases when every one has a recurrence (the truth) and there are
    enough of them; else the reason it did not run."""
    from GliomaProgressionLib.cohort.ctv_evaluate import MIN_PATIENTS, RUN_FILES, evaluate_ctvs

    with_truth = [case for case in complete if (out / case / RUN_FILES["recurrence"]).is_file()]
    if not with_truth or len(with_truth) < len(complete):
        return "CTV evaluation skipped: not every case has a recurrence (truth)"
    if len(complete) < MIN_PATIENTS:
        return f"CTV evaluation skipped: {len(complete)} case(s) with truth, at least {MIN_PATIENTS} needed"
    target = out / CTV_EVALUATION
    if target.exists():
        shutil.rmtree(target)  # the workflow's own result, made again from the cases as they are now
    evaluate_ctvs([out], target)
    return f"CTV evaluation written to {target}"


def write_cohort_tables(cases_dir: Path, out: Path) -> list[dict]:
    """cohort.csv (every case: complete, or failed with its reason) and cohort_qc.csv (the complete ones)."""
    from GliomaProgressionLib.runs.batch import write_csv
    from GliomaProgressionLib.runs.chain import BATCH_COLUMNS

    rows = cohort_rows(out, [folder.name for folder in case_folders(cases_dir, out)])
    write_csv(out / COHORT_CSV, BATCH_COLUMNS, rows)
    write_csv(out / QC_CSV, QC_COLUMNS, [qc_row(out / row["case"]) for row in rows if row["status"] == "complete"])
    return rows


def summary_line(rows: list[dict], out: Path, evaluation: str = "") -> str:
    complete = sum(row["status"] == "complete" for row in rows)
    failures = "; ".join(f"{row['case']}: {row['message']}" for row in rows if row["status"] == "failed")
    return (f"Workflow: {complete} complete, {len(rows) - complete} failed{' (' + failures + ')' if failures else ''}. "
            f"Outcomes in {out / COHORT_CSV}{'; ' + evaluation if evaluation else ''}.")


def aggregate(cases_dir: Path, out: Path) -> str:
    """The cohort rule: the tables and, with truth, the CTV evaluation; returns the summary line. Every case job
    has ended by now, so the cases' working files go."""
    rows = write_cohort_tables(cases_dir, out)
    for row in rows:
        if row["status"] == "complete":
            shutil.rmtree((out / files_folder(row["case"])).parent, ignore_errors=True)
    complete = [row["case"] for row in rows if row["status"] == "complete"]
    evaluation = evaluate_when_truth(out, complete) if len(complete) == len(rows) else \
        "CTV evaluation skipped: some cases failed"
    return summary_line(rows, out, evaluation)


# --- gliomaprog cohort workflow ---------------------------------------------------------------------------------


LOCKED = "cannot be locked"  # what Snakemake says when another run holds OUT


def check_workflow_request(cases: Path, out: Path, settings: RunSettings, profile: str, cores: int | None,
                           jobs: int | None) -> list[Path]:
    """Everything that would fail every case fails here, in one sentence, before Snakemake starts."""
    from DSCPerfusionLib.ftb import checked_thresholds

    from GliomaProgressionLib.models.packages import resolve_model
    from GliomaProgressionLib.runs.ctv import parse_schemes

    if profile not in PROFILES:
        raise ValueError(f"Unknown workflow profile {profile!r}: choose one of {', '.join(PROFILES)}.")
    for name, value in (("--cores", cores), ("--jobs", jobs)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value}).")
    if out.exists() and not out.is_dir():
        raise ValueError(f"The output folder {out} is a file; give a folder (new, or a workflow's earlier output).")
    folders = case_folders(cases, out)
    settings.prediction_settings()
    parse_schemes(list(settings.schemes) if settings.schemes else None, True)
    checked_thresholds(settings.ftb_thresholds)
    resolve_model(settings.model, trust=settings.trust_model)
    return folders


def snakemake_command(cases: Path, out: Path, config_file: Path, profile: str, cores: int | None,
                      jobs: int | None, extra: list[str] = (), one_job_per_case: bool = False) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(out),
               "--profile", str(PROFILES_DIR / profile), "--configfile", str(config_file),
               "--config", f"cases={cases.absolute()}"]
    if profile == "local":
        command += ["--cores", str(cores or os.cpu_count() or 1)]
    if jobs is not None:
        command += ["--jobs", str(jobs)]
    if one_job_per_case:  # Snakemake's group jobs: a case's chain is one connected group, so one cluster job
        command += ["--groups", *(f"{rule}=case" for rule in CASE_RULES)]
    return command + list(extra)


def write_workflow_config(out: Path, settings: RunSettings) -> Path:
    from GliomaProgressionLib.case.files import write_json

    path = out / WORKFLOW_DIR / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(settings_to_config(settings), path)


def _heeding_sigint() -> None:
    """In Snakemake's process before it starts: SIGINT back to its default. A command started in the background by
    a shell script inherits SIGINT ignored, and Python then never turns it into KeyboardInterrupt: the stop above
    would go unheard and the workflow run on to its end. SIGHUP is ignored there: a closed terminal hangs up the
    whole process group, and Snakemake would die of it at once; the hang-up reaches it through this process instead,
    as the same SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_snakemake(command: list[str], quiet: bool) -> tuple[int, str]:
    """Snakemake in a child process; SIGTERM or SIGHUP to this process stops it as Ctrl-C does: Snakemake cancels
    its running jobs and marks their outputs incomplete. (Snakemake 9.27's own SIGTERM handler takes a lock its
    scheduler may hold at that moment, and then hangs for ever.) Returns its exit code and the end of its output."""
    import signal
    import subprocess

    from GliomaProgressionLib.models.process import handling_termination

    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=_heeding_sigint if os.name == "posix" else None)
    tail: list[str] = []
    try:
        with handling_termination(lambda signum, frame: child.send_signal(signal.SIGINT)):
            for line in child.stdout:
                tail = (tail + [line])[-200:]
                if not quiet:
                    print(line, end="", file=sys.stderr, flush=True)
            return child.wait(), "".join(tail)
    finally:
        if child.poll() is None:
            child.kill()


def run_workflow(cases: Path, out: Path, settings: RunSettings, profile: str = "local", cores: int | None = None,
                 jobs: int | None = None, unlock: bool = False, quiet: bool = False,
                 snakemake_args: list[str] = (), one_job_per_case: bool = False) -> tuple[int, str]:
    """Run (or resume) the workflow over a folder of cases; returns the exit code (0 every case complete, 2 some
    failed) and the summary line. cohort.csv always ends up listing every case."""
    check_workflow_request(cases, out, settings, profile, cores, jobs)
    out.mkdir(parents=True, exist_ok=True)
    config_file = write_workflow_config(out, settings)
    if unlock:
        code, output = run_snakemake(snakemake_command(cases, out, config_file, profile, cores, jobs, ["--unlock"]),
                                     True)
        if code != 0:
            raise ValueError(f"Snakemake could not unlock {out}: {output.strip().splitlines()[-1:]}")
    code, output = run_snakemake(snakemake_command(cases, out, config_file, profile, cores, jobs, snakemake_args,
                                                   one_job_per_case), quiet)
    if code != 0 and LOCKED in output:
        raise ValueError(f"The output folder {out} is locked by another workflow run; if none is running (one was "
                         "killed), run again with --unlock.")
    if code == 0:
        rows = cohort_rows(out, [folder.name for folder in case_folders(cases, out)])
    else:  # the cohort rule did not run: its tables, with each failed case's reason
        rows = write_cohort_tables(cases, out)
    failed = any(row["status"] == "failed" for row in rows)
    return (2 if code != 0 or failed else 0), summary_line(rows, out)


# --- the jobs' command line (what the Snakefile's rules run) ---------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m GliomaProgressionLib.cohort.workflow",
                                     description="One job of the cohort workflow (run by its Snakefile).")
    jobs = parser.add_subparsers(dest="job", required=True)
    stage = jobs.add_parser("stage")
    stage.add_argument("stage")
    stage.add_argument("--case", type=Path, required=True)
    stage.add_argument("--settings", required=True, help="the run settings as JSON")
    stage.add_argument("--input", type=Path)
    stage.add_argument("--output", type=Path, required=True)
    case = jobs.add_parser("case")
    case.add_argument("name")
    case.add_argument("--input", type=Path, required=True)
    cohort = jobs.add_parser("cohort")
    cohort.add_argument("--cases", type=Path, required=True)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.job == "stage":
            settings = settings_from_config(json.loads(args.settings))
            run_rule(args.stage, args.case, settings, args.input, args.output)
        elif args.job == "case":
            assemble_case(args.name, args.input, Path.cwd())
        else:
            print(aggregate(args.cases, Path.cwd()))
    except ValueError as error:
        print(f"gliomaprog workflow: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
