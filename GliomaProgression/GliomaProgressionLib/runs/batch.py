"""``gliomaprog run --batch``: every case folder of a folder into ``OUT/<case>``, one after another on this machine
(``stages.run_case``), past a failing case, each outcome in ``OUT/batch.csv``; complete cases are skipped (resume,
by content) and an incomplete output is set aside while its case runs again. For parallel jobs, resume by stage or
a SLURM cluster: the cohort workflow (``cohort.workflow``)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

from GliomaProgressionLib.runs.chain import (BATCH_COLUMNS, BATCH_CSV, BATCH_OR_WORKFLOW, REPORT_JSON, RunSettings,
                                             StageProgress, _clock, is_complete, replacing_incomplete_output,
                                             sweep_stale_leftovers)
from GliomaProgressionLib.runs.stages import run_case, summary_line


def case_folders(cases: Path, out: Path) -> list[Path]:
    """The sub-folders of ``cases`` (hidden ones and the output folder excluded), in name order."""
    from GliomaProgressionLib.case.folder import locate_series

    if not cases.is_dir():
        raise ValueError(f"The folder of cases {cases} does not exist.")
    if locate_series(cases, "t1c") is not None:
        raise ValueError(f"{cases} is a case folder itself (it holds t1c), not a folder of case folders.")
    found = [p for p in sorted(cases.iterdir()) if p.is_dir() and not p.name.startswith(".")
             and p.resolve() != out.resolve()]
    if not found:
        raise ValueError(f"The folder of cases {cases} has no sub-folder (one per case).")
    return found


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    """A table written to a temporary file renamed over ``path``: an interrupted run keeps its last record."""
    from GliomaProgressionLib.case.files import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(buffer.getvalue(), path)


def _write_batch_csv(path: Path, rows: list[dict]) -> None:
    """Rewritten after every case."""
    write_csv(path, BATCH_COLUMNS, rows)


def _row(case: Path, status: str, message: str, output: Path, data: dict | None, elapsed: float) -> dict:
    verdict = (data or {}).get("verdict", {})
    return {"case": case.name, "status": status, "message": message,
            "progression_predicted": verdict.get("progression_predicted", ""),
            "predicted_volume_ml": verdict.get("predicted_volume_ml", ""), "elapsed_s": f"{elapsed:.1f}",
            "output": str(output)}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def run_one_of_batch(case: Path, target: Path, settings: RunSettings, quiet: bool) -> dict:
    started = time.monotonic()
    if is_complete(target):
        data = json.loads((target / REPORT_JSON).read_text(encoding="utf-8"))
        return _row(case, "skipped", "output already complete", target, data, 0.0)
    try:
        with replacing_incomplete_output(target):
            data = run_case(case, target, settings, StageProgress(case.name, quiet=quiet))
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a failing case must not stop the batch; the reason goes to batch.csv
        message = _one_line(error)
        print(f"gliomaprog run: {case.name}: error: {message}", file=sys.stderr, flush=True)
        return _row(case, "failed", message, target, None, time.monotonic() - started)
    if not quiet:
        print(summary_line(data, target), flush=True)
    return _row(case, "complete", "", target, data, time.monotonic() - started)


def run_batch(cases: Path, out: Path, settings: RunSettings, quiet: bool = False) -> list[dict]:
    """Every case folder of ``cases`` into ``out/<case>``; returns the rows of batch.csv."""
    if settings.recurrence is not None:
        raise ValueError("One recurrence mask cannot serve a batch of cases; put a recurrence file in each case "
                         "folder.")
    folders = case_folders(cases, out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_leftovers(out)
    if not quiet and len(folders) > 1:
        print(f"[batch] {BATCH_OR_WORKFLOW}", file=sys.stderr, flush=True)
    rows: list[dict] = []
    for index, case in enumerate(folders):
        if not quiet:
            print(f"[batch] case {index + 1}/{len(folders)}: {case.name}{_batch_eta(rows, len(folders) - index)}",
                  file=sys.stderr, flush=True)
        rows.append(run_one_of_batch(case, out / case.name, settings, quiet))
        _write_batch_csv(out / BATCH_CSV, rows)
    return rows


def _batch_eta(rows: list[dict], remaining: int) -> str:
    done = [float(row["elapsed_s"]) for row in rows if row["status"] == "complete"]
    if not done:
        return ""
    return f" (about {_clock(sum(done) / len(done) * remaining)} left for {remaining} case(s))"


def batch_summary(rows: list[dict], out: Path) -> str:
    counts = {status: sum(row["status"] == status for row in rows) for status in ("complete", "skipped", "failed")}
    return (f"Batch: {counts['complete']} complete, {counts['skipped']} skipped (already complete), "
            f"{counts['failed']} failed. Outcomes in {out / BATCH_CSV}")


