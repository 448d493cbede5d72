"""``gliomaprog cohort workflow``: the per-case chain of ``gliomaprog run`` as a Snakemake workflow, on this machine
or on a SLURM cluster (``cohort.workflow``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from GliomaProgressionLib.cli.options import positive_int
from GliomaProgressionLib.cli.run import add_run_settings, run_settings
from GliomaProgressionLib.cohort.workflow import PROFILES


def add_cohort_actions(actions) -> None:
    workflow = actions.add_parser(
        "workflow", help="run a folder of cases as a Snakemake workflow (one rule per stage; resumable; local or "
                         "SLURM)",
        description="Run every case of COHORT (a folder of case folders, as 'gliomaprog run --batch' takes) through "
                    "the chain of 'gliomaprog run', one Snakemake rule per stage (register + perfusion, habitats, "
                    "predict, invasion, CTVs, DICOM export, report, scene) and one for the cohort (cohort.csv, "
                    "cohort_qc.csv and, when every case has a recurrence, the CTV evaluation). OUT/<case> is what "
                    "'gliomaprog run' writes, plus provenance.json. Run it again to resume: only what is missing or "
                    "out of date runs. A failing case is reported and the others go on (exit code 2). Demo models "
                    "are trained on synthetic data - not for clinical use.")
    workflow.add_argument("cohort", type=Path, metavar="COHORT", help="folder of case folders")
    workflow.add_argument("--out", required=True, type=Path,
                          help="output folder (new, or this workflow's earlier output to resume)")
    workflow.add_argument("--profile", choices=PROFILES, default="local",
                          help="local (default): jobs on this machine; slurm: each job submitted to SLURM (set "
                               "partition and account in the profile, see README 'Running a cohort')")
    workflow.add_argument("--cores", type=positive_int,
                          help="local profile: cores the jobs share (default: all of this machine's)")
    workflow.add_argument("--jobs", type=positive_int, help="jobs at once (slurm: jobs queued at once)")
    workflow.add_argument("--one-job-per-case", action="store_true",
                          help="each case's rules run one after another inside one job (Snakemake group jobs): on a "
                               "cluster, fewer and longer jobs, each asking the largest of its rules' resources")
    workflow.add_argument("--unlock", action="store_true",
                          help="remove the lock a killed workflow run left on OUT, then run")
    workflow.add_argument("--snakemake-args", default="", metavar="'ARGS'",
                          help="more options for Snakemake, in one quoted string with '=' "
                               "(--snakemake-args='--default-resources slurm_partition=gpu slurm_account=lab')")
    workflow.add_argument("--quiet", action="store_true", help="no Snakemake output")
    add_run_settings(workflow, with_recurrence=False)
    workflow.set_defaults(handler=_run_workflow)


def _run_workflow(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.cohort.workflow import run_workflow

    code, summary = run_workflow(args.cohort, args.out, run_settings(args), profile=args.profile, cores=args.cores,
                                 jobs=args.jobs, unlock=args.unlock, quiet=args.quiet,
                                 snakemake_args=shlex.split(args.snakemake_args),
                                 one_job_per_case=args.one_job_per_case)
    print(summary)
    return code
