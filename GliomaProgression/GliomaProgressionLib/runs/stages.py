"""The stages of one case's run, each a function of the case so far (``chain.CaseResults``), the folder its files go
to and the run's progress.

``gliomaprog run`` (``run_case``, below) calls them in order, in memory, into one staging folder. The cohort workflow
(``cohort.workflow``, one Snakemake rule per stage) calls the same functions, keeping the case in a checkpoint
between its rules: both write the same files.

Each stage writes only the entries ``STAGE_FILES`` gives it, and removes them first: a stage run again after an
interruption starts clean.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from GliomaProgressionLib.runs.chain import (HABITATS_NO_DSC, HABITATS_NOT_REQUESTED, INVASION_FOLDER, CaseResults,
                                             RunSettings, StageProgress, brain_on_reference, case_habitats,
                                             case_invasion, channels_to_register, check_invasion_inputs,
                                             check_model_inputs, export_dicom_structures, finish_output_folder,
                                             habitat_maps, invasion_maps, lesion_on_dsc, mark_owner, plan_ctvs,
                                             recorded_inputs, sweep_stale_leftovers, write_habitats,
                                             write_invasion_outputs, write_prepared_outputs)

# What each stage writes in the case's folder (report.json is the run's last word, written after them all).
STAGE_FILES = {
    "prepare": ("registered", "perfusion", "converted"),
    "habitats": ("habitats",),
    "predict": ("prediction",),
    "invasion": (INVASION_FOLDER,),
    "ctv": ("ctv",),
    "dicom": ("rtstruct",),
    "report": ("report.png",),
    "scene": ("scene.mrb",),
}


def read_case_stage(case_folder: str | Path, settings: RunSettings, progress: StageProgress) -> CaseResults:
    """Read and check every series and every model the run will use: what can fail on the input fails here, before
    the long work and before anything is written."""
    from DSCPerfusionLib.ftb import checked_thresholds

    from GliomaProgressionLib.case.dicom_source import read_source_series
    from GliomaProgressionLib.case.folder import has_series, read_case
    from GliomaProgressionLib.models.habitat_packages import resolve_habitat_model
    from GliomaProgressionLib.models.invasion_packages import resolve_invasion_model
    from GliomaProgressionLib.models.packages import resolve_model
    from GliomaProgressionLib.report import figure as report
    from GliomaProgressionLib.runs.ctv import parse_schemes
    from GliomaProgressionLib.runs.predict import check_lesion_in_brain

    settings.prediction_settings()
    parse_schemes(list(settings.schemes) if settings.schemes else None, True)
    checked_thresholds(settings.ftb_thresholds)
    progress.start("read")
    # DSC is optional: read when the folder has it (nCBV for the report even with the conventional model)
    inputs = read_case(case_folder, settings.recurrence, with_dsc=has_series(case_folder, "dsc"))
    check_lesion_in_brain(inputs.t1c, inputs.lesion, inputs.sources["lesion"], inputs.brain,
                          inputs.sources.get("brain"))
    inputs.sources = recorded_inputs(inputs.sources, inputs.folder)
    read_source_series(inputs.folder, inputs.t1c)  # a DICOM CE-T1 the RT objects cannot reference fails now
    model = resolve_model(settings.model, trust=settings.trust_model)
    check_model_inputs(inputs, model)
    # A missing or tampered habitat model fails now, not after the long work; so does the invasion model, and every
    # channel it names.
    wants_habitats = settings.habitats and inputs.dsc is not None
    habitat_model = resolve_habitat_model(settings.habitat_model) if wants_habitats else None
    invasion_model = resolve_invasion_model(settings.invasion) if settings.invasion is not None else None
    if invasion_model is not None:
        check_invasion_inputs(inputs, invasion_model)
    notes = inputs.notes + ([] if inputs.dsc is not None else [report.PERFUSION_SKIPPED])
    for note in notes:
        progress.note(note)
    for stage, model_of_stage in (("habitats", habitat_model), ("invasion", invasion_model)):
        if model_of_stage is not None:
            progress.take(stage)
    return CaseResults(inputs, settings, model, habitat_model, invasion_model, notes=notes)


def prepare_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    """Registration onto the 1 mm CE-T1 grid, nCBV, the brain and recurrence on that grid: registered/,
    perfusion/, converted/."""
    from GliomaProgressionLib.case.preprocess import prepare_case
    from GliomaProgressionLib.case.registration import resample_onto

    progress.start("prepare")
    inputs, settings = case.inputs, case.settings
    timing = inputs.timing
    case.prepared = prepare_case(inputs.t1c, inputs.flair, inputs.lesion, inputs.dsc,
                                 timing.times_s if timing else None, timing.te_s if timing else None,
                                 leakage=settings.leakage, progress=progress.update,
                                 maps=channels_to_register(inputs, case.model, case.invasion_model))
    case.dsc_lesion = lesion_on_dsc(inputs, case.prepared)
    case.recurrence = (resample_onto(case.prepared.reference, inputs.recurrence, None, labels=True) > 0
                       if inputs.recurrence is not None else None)
    case.brain = brain_on_reference(case.prepared, inputs.brain,
                                    inputs.dsc.ijk_to_ras if inputs.dsc is not None else None)
    write_prepared_outputs(folder, case)


def habitats_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    """The perfusion habitats, from the same series and masks as nCBV: habitats/, or the reason there are none."""
    if case.habitat_model is None:
        progress.skip("habitats")
        case.habitats_skipped = HABITATS_NO_DSC if case.inputs.dsc is None else HABITATS_NOT_REQUESTED
        return
    progress.start("habitats")
    case.habitats, case.habitats_skipped = case_habitats(case.settings, case.inputs, case.prepared, case.dsc_lesion,
                                                         case.habitat_model, progress.update)
    if case.habitats_skipped not in (None, HABITATS_NOT_REQUESTED, HABITATS_NO_DSC):  # those two say nothing new
        case.notes.append(case.habitats_skipped)
        progress.note(case.habitats_skipped)
    if case.habitats is not None:
        write_habitats(folder, case)


def predict_stage(case: CaseResults, folder: Path, progress: StageProgress, in_process: bool = False) -> None:
    """The progression model on the registered channels: prediction/. nnU-Net runs in a worker process (cancel,
    time limit), or with ``in_process`` in this one, when it is itself a job (a workflow rule)."""
    from GliomaProgressionLib.runs.predict import predict_prepared, write_prediction

    progress.start("predict")
    started = time.monotonic()
    settings = case.settings.prediction_settings()
    case.prediction = predict_prepared(case.prepared, case.model, settings, progress=progress.update,
                                       in_process=in_process)
    write_prediction(folder / "prediction", case.prepared, case.prediction, case.model, settings,
                     {"inference": round(time.monotonic() - started, 2)}, inputs=case.inputs.sources)


def invasion_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    """The voxel-wise radiomics invasion map, when the run was asked for it: invasion/."""
    if case.invasion_model is None:
        progress.skip("invasion")
        return
    progress.start("invasion")
    case.invasion = case_invasion(case.prepared, case.brain, case.recurrence, case.invasion_model, progress.update)
    write_invasion_outputs(folder / INVASION_FOLDER, case.invasion, case.inputs.sources)


def ctv_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    progress.start("ctv")
    plan_ctvs(folder, case, progress)


def dicom_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    progress.start("dicom")
    case.dicom_files = export_dicom_structures(folder / "rtstruct", case)


def report_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    from GliomaProgressionLib.report import figure as report

    progress.start("report")
    case.data, case.display = report.build_report(case)
    if case.habitats is not None:
        case.data["habitats"]["maps"] = habitat_maps()
    if case.invasion is not None:
        case.data["invasion"]["maps"] = invasion_maps()
    report.render_report(case.data, case.display, folder / "report.png")


def scene_stage(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    from GliomaProgressionLib.report import scene as case_scene

    progress.start("scene")
    case_scene.write_case_scene(folder / "scene.mrb", case.data, case)


CASE_STAGES: dict[str, Callable[[CaseResults, Path, StageProgress], None]] = {
    "prepare": prepare_stage, "habitats": habitats_stage, "predict": predict_stage, "invasion": invasion_stage,
    "ctv": ctv_stage, "dicom": dicom_stage, "report": report_stage, "scene": scene_stage,
}


def clear_stage_files(folder: Path, stage: str) -> None:
    for name in STAGE_FILES[stage]:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_stage(stage: str, case: CaseResults, folder: Path, progress: StageProgress, in_job: bool = False) -> None:
    """One stage, its earlier files cleared first; ``in_job``: this process is a job of its own (a workflow rule),
    so the prediction needs no second process (nor a second torch import)."""
    clear_stage_files(folder, stage)
    if stage == "predict":
        predict_stage(case, folder, progress, in_process=in_job)
    else:
        CASE_STAGES[stage](case, folder, progress)


def run_stages(case: CaseResults, folder: Path, progress: StageProgress) -> None:
    for stage in CASE_STAGES:
        run_stage(stage, case, folder, progress)


# --- gliomaprog run ------------------------------------------------------------------------------------------


def run_case(case_folder: str | Path, out: str | Path, settings: RunSettings = RunSettings(),
             progress: StageProgress | None = None) -> dict:
    """Run one case into the new folder ``out`` (all or nothing); returns what report.json holds. The stages are
    ``runs.stages``' functions, the ones the cohort workflow runs one rule each."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder

    out = check_new_output_folder(Path(out))
    sweep_stale_leftovers(out.absolute().parent, out.name)
    progress = progress or StageProgress(Path(case_folder).name)
    case = read_case_stage(case_folder, settings, progress)  # every check before the long work
    with staged_output_folder(out) as staging:
        mark_owner(staging)
        run_stages(case, staging, progress)
        case.data["timings_s"] = progress.finish()
        finish_output_folder(staging, case.data)
    return case.data


def summary_line(data: dict, out: Path) -> str:
    verdict = data["verdict"]
    outcome = (f"progression predicted ({verdict['predicted_volume_ml']:.1f} mL inside the non-enhancing lesion)"
               if verdict["progression_predicted"] else "no progression predicted")
    from CTVPlannerLib.lesion import LESION_SEGMENTS
    from GliomaProgressionLib.case.preprocess import NEL_LABEL

    nel = data["ncbv"]["regions"].get(LESION_SEGMENTS[NEL_LABEL][0], {})
    ncbv = f"; NEL nCBV mean {nel['mean']:.2f}" if nel.get("mean") is not None else ""
    if data["ncbv"].get("skipped"):
        ncbv = f"; {data['ncbv']['skipped']}"
    return (f"{data['case']}: {outcome}{ncbv}; {len(data['ctv']['targets'])} target volumes; "
            f"{data['timings_s']['total']:.0f} s. Report: {out / 'report.png'}  Scene: {out / 'scene.mrb'}")
