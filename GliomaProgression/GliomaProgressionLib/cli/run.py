"""``gliomaprog run``: one case folder (or a folder of them with ``--batch``) through the whole chain."""

from __future__ import annotations

import argparse
from pathlib import Path

from DSCPerfusionLib.ftb import FTB_THRESHOLDS
from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD, LEAKAGE_HELP, LEAKAGE_METHODS

from GliomaProgressionLib.models.habitat_packages import DEFAULT_HABITAT_MODEL
from GliomaProgressionLib.models.invasion_packages import DEFAULT_INVASION_MODEL
from GliomaProgressionLib.cli.options import add_schemes_option, name_list, non_negative_int, positive_float
from GliomaProgressionLib.runs.predict import DEVICES


def add_commands(subparsers) -> None:
    """``run``: one case, or a folder of cases, end to end."""
    run = subparsers.add_parser(
        "run", help="one case end to end: nCBV, perfusion habitats, progression prediction, CTV proposals, report "
                    "and Slicer scene",
        description="Run a case folder (t1c, flair, dsc + dsc.json, lesion; NIfTI, NRRD or DICOM folders; "
                    "optional brain and recurrence) through the three modules: OUT gets every intermediate, "
                    "report.png, report.json, scene.mrb and rtstruct/. Without dsc, perfusion and habitats are skipped "
                    "(the conventional model; multiparametric needs DSC). A BraTS folder (<ID>-t1c, -t2f, -seg or "
                    "<ID>_t1ce, _flair, _seg .nii.gz) is a case folder too; its labels are mapped to BraTS 2024 and "
                    "a note says so. With --batch, CASE_DIR is a folder of case folders. Demo models are trained "
                    "on synthetic data - not for clinical use.")
    run.add_argument("case", type=Path, metavar="CASE_DIR", help="case folder (a folder of case folders with --batch)")
    run.add_argument("--out", required=True, type=Path,
                     help="new folder for the results (with --batch: the batch folder; complete cases are skipped)")
    add_run_settings(run)
    run.add_argument("--batch", action="store_true",
                     help="CASE_DIR holds one sub-folder per case, run one after another on this machine (the "
                          "fastest way on a few cores; to resume by stage, or for many cores or a SLURM cluster: "
                          "gliomaprog cohort workflow)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_run_command)


def add_run_settings(parser: argparse.ArgumentParser, with_recurrence: bool = True) -> None:
    """The options of the run's settings (``chain.RunSettings``), shared by ``run`` and ``cohort workflow``."""
    parser.add_argument("--model", default="multiparametric",
                        help="model id (see 'gliomaprog models list') or package path (default multiparametric)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    add_schemes_option(parser)
    parser.add_argument("--geodesic", action="store_true", help="measure every CTV margin through brain tissue")
    if with_recurrence:
        parser.add_argument("--recurrence", type=Path, help="recurrence mask aligned with CE-T1 (default: CASE_DIR/"
                                                         "recurrence.*): metrics of each CTV against it")
    parser.add_argument("--threshold", type=positive_float, default=0.5, help="probability cut-off (default 0.5)")
    parser.add_argument("--min-voxels", type=non_negative_int, default=1,
                        help="voxels needed for a 'progression' verdict (default 1)")
    parser.add_argument("--leakage", choices=LEAKAGE_METHODS, default=DEFAULT_LEAKAGE_METHOD,
                        help=f"DSC {LEAKAGE_HELP}")
    parser.add_argument("--ftb-thresholds", nargs=2, type=float, metavar=("LOW", "HIGH"), default=FTB_THRESHOLDS,
                        help="nCBV thresholds of the fractional tumour burden classes (default %(default)s; see "
                             "gliomaprog perfusion --help)")
    parser.add_argument("--trust-model", action="store_true",
                        help="load a package that cannot be loaded safely (runs code from it)")
    parser.add_argument("--no-habitats", action="store_true",
                        help="skip the perfusion habitats (computed by default when the case has DSC and a lesion with "
                             "enhancing and non-enhancing parts)")
    parser.add_argument("--habitat-model", default=DEFAULT_HABITAT_MODEL, metavar="ID",
                        help=f"habitat model id (Models.json) or package path (default {DEFAULT_HABITAT_MODEL}: "
                             "trained on synthetic data - not for clinical use)")
    parser.add_argument("--invasion", nargs="?", const=DEFAULT_INVASION_MODEL, default=None, metavar="MODEL",
                        help=f"also compute the voxel-wise radiomics invasion map (Yan 2020) into OUT/invasion/, with "
                             f"this invasion model id (Models.json) or package path (default {DEFAULT_INVASION_MODEL}: "
                             "trained on synthetic data - not for clinical use); off by default: its feature maps take "
                             "tens of seconds per channel")


def run_settings(args: argparse.Namespace):
    from GliomaProgressionLib.runs.chain import RunSettings

    return RunSettings(model=args.model, device=args.device, schemes=name_list(args.schemes), geodesic=args.geodesic,
                       threshold=args.threshold, min_voxels=args.min_voxels, leakage=args.leakage,
                       trust_model=args.trust_model, recurrence=getattr(args, "recurrence", None),
                       habitats=not args.no_habitats, habitat_model=args.habitat_model,
                       ftb_thresholds=tuple(args.ftb_thresholds), invasion=args.invasion)


def _run_command(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.runs.batch import batch_summary, run_batch
    from GliomaProgressionLib.runs.chain import StageProgress
    from GliomaProgressionLib.runs.stages import run_case, summary_line

    settings = run_settings(args)
    if args.batch:
        rows = run_batch(args.case, args.out, settings, args.quiet)
        print(batch_summary(rows, args.out))
        return 2 if any(row["status"] == "failed" for row in rows) else 0
    data = run_case(args.case, args.out, settings, StageProgress(args.case.name, quiet=args.quiet))
    print(summary_line(data, args.out))
    return 0
