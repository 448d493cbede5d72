"""Benchmark: cases per hour of the cohort workflow (local profile, two jobs at once) against ``gliomaprog run
--batch`` (one case after another), on the same cohort in the same run; and the per-stage time table from the
workflow's own records (Snakemake's per-rule benchmark files: wall seconds, CPU seconds, peak memory).

The cohort is N small phantom cases (seeds 3, 4, ...; DSC; the multiparametric demo model), the chain's full work on
a 1 mm reference grid. What it prints is what the README's "Running a cohort" arithmetic uses: with s the wall
seconds of one case's rules one after another and M nodes of c cores, N cases take about N * s / (M * jobs per node)
plus the cohort rule, as long as each job keeps its declared threads busy.

Run from the repository root (on an otherwise idle machine):  .venv/bin/python benchmarks/bench_workflow.py [N]
Synthetic data - not for clinical use.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GLIOMAPROG = [sys.executable, "-m", "GliomaProgressionLib.cli.main"]
SEEDS_FROM = 3


def make_cohort(folder: Path, count: int) -> None:
    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    for seed in range(SEEDS_FROM, SEEDS_FROM + count):
        write_case(generate_case(PhantomConfig(seed=seed, size="small")), folder / f"case{seed}")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[2:4])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def stage_table(out: Path) -> dict[str, dict]:
    """Per rule: mean wall and CPU seconds and peak memory over the cases (Snakemake's benchmark files)."""
    from GliomaProgressionLib.cohort.workflow import WORKFLOW_DIR

    records: dict[str, list[dict]] = {}
    for path in sorted((out / WORKFLOW_DIR / "benchmarks").rglob("*.tsv")):
        with open(path, newline="") as stream:
            row = next(csv.DictReader(stream, delimiter="\t"))
        records.setdefault(path.stem, []).append(row)
    return {rule: {"cases": len(rows), "wall_s": round(statistics.mean(float(r["s"]) for r in rows), 1),
                   "cpu_s": round(statistics.mean(float(r["cpu_time"]) for r in rows), 1),
                   "max_rss_mb": round(max(float(r["max_rss"]) for r in rows))}
            for rule, rows in records.items()}


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        make_cohort(root / "cohort", count)
        batch_s = timed([*GLIOMAPROG, "run", str(root / "cohort"), "--out", str(root / "batch"), "--batch",
                         "--quiet"])
        workflow_s = timed([*GLIOMAPROG, "cohort", "workflow", str(root / "cohort"), "--out", str(root / "flow"),
                            "--cores", "2", "--quiet"])
        stages = stage_table(root / "flow")
    per_case_rules_s = sum(entry["wall_s"] for rule, entry in stages.items())
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
              "load_average_1min": round(os.getloadavg()[0], 2), "cases": count,
              "case": "small phantom (DSC, 1 mm reference grid), multiparametric demo model",
              "run_batch_s": round(batch_s, 1), "workflow_local_2_cores_s": round(workflow_s, 1),
              "run_batch_cases_per_hour": round(3600 * count / batch_s, 1),
              "workflow_cases_per_hour": round(3600 * count / workflow_s, 1),
              "speedup": round(batch_s / workflow_s, 2),
              "per_case_rule_wall_s_sum": round(per_case_rules_s, 1), "stages": stages}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
