"""One case end to end (``gliomaprog run``): perfusion, perfusion habitats, progression prediction, CTV proposals,
report and scene.

Stages: read and check every series (DICOM folders converted) -> register FLAIR and DSC onto the 1 mm CE-T1 grid
and compute nCBV (``preprocess.prepare_case``; a case without DSC skips perfusion when the model needs no nCBV, and
report, report.json and scene say so), then the perfusion habitats (Yun et al. 2023: ``DSCPerfusionLib.habitats``
on the DSC series, the lesion carried onto the DSC grid and the perfusion step's masks, brought onto the CE-T1 grid
by the DSC registration, as nCBV; skipped, with the reason in report.json, without DSC or without both a
contrast-enhancing and a non-enhancing lesion) -> progression model (``predict_run.predict_prepared``) -> the
invasion map when asked for (``--invasion``; seed 004, Yan et al. 2020: ``invasion.pipeline`` on the channels the
invasion model names, resampled onto the model's feature grid, the map brought back onto the reference grid) -> CTV proposals and their metrics (``ctv_run.run_ctv_files``) -> RTSTRUCT and
SEG (``CTVPlannerLib.dicom_export``) -> ``report.png`` (``report``) -> ``scene.mrb`` (``case_scene``) ->
``report.json``, written last with every other file's size and SHA-256, so a folder whose files match its
report.json is a complete result. Each stage is a function of ``runs.stages`` and writes its own
intermediates (the modules' commands' outputs); the cohort workflow (``cohort.workflow``) runs the same functions.

Output folder (written completely or not at all)::

    registered/   CE-T1 on the 1 mm reference grid, FLAIR, nCBV, lesion, NEL, brain, recurrence; transforms
    perfusion/    what ``gliomaprog perfusion`` writes (DSC grid; absent for a case without DSC)
    habitats/     what ``gliomaprog habitats`` writes (habitat maps on the CE-T1 and DSC grids, habitats.json;
                  absent when the habitats were skipped)
    prediction/   what ``gliomaprog predict`` writes (reference grid)
    invasion/     what ``gliomaprog invasion`` writes (probability, label, invasion.json), on the reference grid;
                  only with ``--invasion``
    ctv/          what ``gliomaprog ctv`` writes (reference grid)
    rtstruct/     RTSTRUCT.dcm and SEG.dcm (on the DICOM CE-T1's own instances; else with MR/, the series they
                  reference)
    converted/    series that were read from DICOM folders, as NIfTI
    report.png  report.json  scene.mrb

``--batch`` (``runs.batch``) runs every sub-folder of a folder of cases into ``OUT/<case>``, continues past a failing case, records
each case's outcome in ``OUT/batch.csv`` and skips cases whose output is already complete (resume, by content); an
incomplete output is set aside while its case runs again. Staging folders and set-aside outputs of runs that were
killed are removed once their owner has provably ended (same host, process gone).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from DSCPerfusionLib.ftb import FTB_THRESHOLDS
from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD

from GliomaProgressionLib.models.habitat_packages import DEFAULT_HABITAT_MODEL


# numpy, SimpleITK and the Lib modules are imported inside the functions that use them: cli.py imports this module
# to build its parser on every gliomaprog call, which then stays as quick as the standard library.
if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

    from GliomaProgressionLib.case.folder import CaseInputs
    from GliomaProgressionLib.models.habitat_packages import HabitatModelPackage
    from GliomaProgressionLib.models.invasion_packages import InvasionModelPackage
    from GliomaProgressionLib.models.packages import ModelPackage
    from GliomaProgressionLib.runs.predict import PredictionResult
    from GliomaProgressionLib.case.preprocess import PreparedCase

STAGES = {
    "read": "Reading and checking the series",
    "prepare": "Registration and nCBV",
    "habitats": "Perfusion habitats",
    "predict": "Progression prediction",
    "invasion": "Invasion map (voxel-wise radiomics)",
    "ctv": "CTV proposals",
    "dicom": "RTSTRUCT and SEG export",
    "report": "Report",
    "scene": "Slicer scene",
}
OPTIONAL_STAGES = ("habitats", "invasion")  # counted in "stage k/N" only when the run takes them (StageProgress.take)
REPORT_JSON = "report.json"
OWNER_MARKER = ".gliomaprog-owner"  # in a staging folder: the run that writes it (models.process.owner_token)
STAGING = ".partial-"  # in the names of case.files.staged_output_folder's staging folders
SET_ASIDE = ".replaced-"  # + owner token: an incomplete output set aside while its case runs again
DICOM_FOLDER = "DICOM folder "  # how case.folder names a series read from a DICOM folder
BATCH_CSV = "batch.csv"
# Why a run has no habitats/ (report.json's habitats.skipped; the lesion's reasons are worded by habitat_skip_reason).
HABITATS_NOT_REQUESTED = "perfusion habitats skipped: not requested"
HABITATS_NO_DSC = "perfusion habitats skipped: no DSC series"
INVASION_FOLDER = "invasion"
# When the workflow is the better tool (run --batch says it; README "Running a cohort" has the numbers).
BATCH_OR_WORKFLOW = ("--batch runs the cases one after another on this machine (the fastest way on a few cores); "
                     "'gliomaprog cohort workflow' resumes a killed run from its last finished stage, records each "
                     "stage's provenance and runs the cases as parallel jobs on many cores or a SLURM cluster.")
BATCH_COLUMNS = ("case", "status", "message", "progression_predicted", "predicted_volume_ml", "elapsed_s",
                 "output")


# --- settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    model: str = "multiparametric"
    device: str = "auto"
    schemes: tuple[str, ...] | None = None  # None: every scheme
    geodesic: bool = False
    threshold: float = 0.5
    min_voxels: int = 1
    leakage: str = DEFAULT_LEAKAGE_METHOD
    trust_model: bool = False
    recurrence: Path | None = None  # overrides <case>/recurrence (single case only)
    habitats: bool = True  # perfusion habitats when the case has DSC and a CEL and a NEL
    habitat_model: str = DEFAULT_HABITAT_MODEL  # id in Models.json, or a package zip/folder
    ftb_thresholds: tuple[float, float] = FTB_THRESHOLDS  # nCBV: low < LOW <= intermediate <= HIGH < high
    # The invasion map (seed 004) costs tens of seconds per channel: only when asked, with this model (id or path).
    invasion: str | None = None

    def prediction_settings(self):
        from GliomaProgressionLib.runs.predict import PredictionSettings

        return PredictionSettings(threshold=self.threshold, min_voxels=self.min_voxels,
                                  device=self.device).validated()


# --- progress ------------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class StageProgress:
    """Progress lines on stderr: stage k/N and name, the stage's own progress, elapsed time and, when the stage
    reports how far it is, its ETA. Records the seconds each stage took (``timings``)."""

    MIN_INTERVAL_S = 2.0  # between two lines of the same kind (same message but for its numbers)

    def __init__(self, case: str, stream: TextIO | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.case, self.quiet, self.clock = case, quiet, clock
        self.stream = stream or sys.stderr
        self.started = clock()
        self.timings: dict[str, float] = {}
        self._stage: str | None = None
        self._stage_started = self.started
        self._last_line = (0.0, "")
        self._taken: set[str] = set()

    def take(self, stage: str) -> None:
        """Count an optional stage (``OPTIONAL_STAGES``) in "stage k/N": call before the first line."""
        self._taken.add(stage)

    def start(self, stage: str) -> None:
        self._close()
        self._stage, self._stage_started = stage, self.clock()
        self._print(f"{STAGES[stage]}")

    def update(self, fraction: float, message: str) -> None:
        """A stage's own progress (``fraction`` 0-1 of that stage); the signature of every Lib progress callback.

        A new kind of message is always shown; the same kind with new numbers ("Sliding window 5/48") at most
        every MIN_INTERVAL_S."""
        now = self.clock()
        kind = re.sub(r"\d+", "#", message)
        if kind == self._last_line[1] and now - self._last_line[0] < self.MIN_INTERVAL_S:
            return
        in_stage = now - self._stage_started
        eta = f", about {_clock(in_stage * (1 - fraction) / fraction)} left" if 0.05 <= fraction < 1 and \
            in_stage > 1.0 else ""
        self._print(f"{100 * min(max(fraction, 0.0), 1.0):3.0f}% {message} (stage {_clock(in_stage)}{eta})", kind)

    def note(self, text: str) -> None:
        """Something the user must know about the input (labels mapped, perfusion skipped): shown even when quiet,
        since it changes what the results mean."""
        print(f"[{self.case}] note: {text}", file=self.stream, flush=True)

    def skip(self, stage: str) -> None:
        """A stage this run does not take (the invasion map unless asked for): 0 s in the timings, no line."""
        self._close()
        self.timings[stage] = 0.0

    def finish(self) -> dict[str, float]:
        self._close()
        self.timings["total"] = round(self.clock() - self.started, 2)
        return dict(self.timings)

    def _close(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = round(self.clock() - self._stage_started, 2)
            self._stage = None

    def _print(self, text: str, kind: str = "") -> None:
        self._last_line = (self.clock(), kind)
        if self.quiet:
            return
        keys = [key for key in STAGES if key not in OPTIONAL_STAGES or key in self._taken]
        position = f"{keys.index(self._stage) + 1}/{len(keys)}" if self._stage in keys else "-"
        print(f"[{self.case} {position} {_clock(self.clock() - self.started)}] {text}", file=self.stream,
              flush=True)


# --- the case's results in memory -------------------------------------------------------------------------------


@dataclass
class TargetMask:
    key: str
    name: str
    kind: str
    mask: np.ndarray  # bool on the reference grid
    entry: dict  # its entry in ctv.json (volume, metrics...)


@dataclass
class CaseHabitats:
    """The perfusion habitats of the case: computed on the DSC grid, shown on the reference grid."""

    result: object  # DSCPerfusionLib.habitats HabitatResult (labels, fractions, curves on the DSC grid)
    package: HabitatModelPackage
    reference_labels: sitk.Image  # habitat values on the reference grid (0 = none)
    elapsed_s: float = 0.0


@dataclass
class CaseInvasion:
    """The invasion map of the case (seed 004): computed on the model's feature grid, kept on the reference grid."""

    package: InvasionModelPackage
    probability: sitk.Image  # float32, P(future progression) in the peritumoral region, 0 elsewhere
    label: sitk.Image  # uint8, 1 where the probability reaches the model's threshold
    record: dict  # invasion.json's content


@dataclass
class CaseResults:
    """The case as the stages (``runs.stages``) fill it in, and everything the report and the scene show; arrays on
    the reference grid unless said otherwise. The cohort workflow keeps it in a checkpoint between its rules."""

    inputs: CaseInputs
    settings: RunSettings
    model: ModelPackage
    habitat_model: HabitatModelPackage | None = None  # None: no habitats asked for, or no DSC
    invasion_model: InvasionModelPackage | None = None  # None: no invasion map asked for
    prepared: PreparedCase | None = None  # from the prepare stage on
    brain: sitk.Image | None = None
    recurrence: sitk.Image | None = None
    prediction: PredictionResult | None = None  # from the predict stage on
    targets: list[TargetMask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # label mapping, perfusion skipped: report.json, page, scene
    ctv_report: dict = field(default_factory=dict)
    dicom_files: dict = field(default_factory=dict)
    dsc_lesion: np.ndarray | None = None  # lesion labels carried onto the DSC grid (FTB and habitats), once
    habitats: CaseHabitats | None = None
    habitats_skipped: str | None = None  # why there are none (one sentence), else None
    invasion: CaseInvasion | None = None  # only when the run was asked for it
    data: dict | None = None  # report.json's content, from the report stage on
    display: object = None  # what the report page shows (report.build_report), for the scene


# --- stages ------------------------------------------------------------------------------------------------------


def brain_on_reference(prepared: PreparedCase, given: sitk.Image | None,
                       dsc_ijk_to_ras: np.ndarray | None) -> sitk.Image:
    """The brain mask on the reference grid: the case's own (aligned with CE-T1), else the perfusion module's
    automatic mask carried from the DSC grid by the DSC registration, else (no DSC) the same automatic rule on
    CE-T1. The lesion always counts as brain."""
    import numpy as np
    import SimpleITK as sitk

    from DSCPerfusionLib.brainmask import brain_mask_from_baseline

    from GliomaProgressionLib.case.geometry import Volume, sitk_from_volume
    from GliomaProgressionLib.case.registration import resample_onto

    if given is not None:
        brain = resample_onto(prepared.reference, given, None, labels=True) > 0
    elif prepared.perfusion is not None:
        dsc_brain = sitk_from_volume(Volume(prepared.perfusion.brain_mask.astype(np.float32), dsc_ijk_to_ras))
        # Linear interpolation then 0.5: the 5 mm DSC slices would otherwise show as steps on the 1 mm grid.
        brain = resample_onto(prepared.reference, dsc_brain, prepared.registrations["dsc"]) > 0.5
    else:
        mask = brain_mask_from_baseline(sitk.GetArrayFromImage(prepared.reference)).astype(np.uint8)
        brain = sitk.GetImageFromArray(mask)
        brain.CopyInformation(prepared.reference)
        brain = brain > 0
    return sitk.Cast(brain | (prepared.lesion > 0), sitk.sitkUInt8)


def check_model_inputs(inputs: CaseInputs, model: ModelPackage) -> None:
    """Every channel the model names must be in the case (nCBV needs the DSC series); one sentence for the first
    that is not, before the long work."""
    from GliomaProgressionLib.case.channels import check_channels_present

    if "ncbv" in model.channel_names and inputs.dsc is None:
        raise ValueError(f"The case {inputs.name} has no DSC series, which the model '{model.id}' needs for its nCBV "
                         "channel; the conventional model (CE-T1 and FLAIR only) runs without it.")
    check_channels_present(inputs.name, model.channel_names, {"t1c", "flair", "ncbv", *inputs.maps}, model.id)


def check_invasion_inputs(inputs: CaseInputs, package: InvasionModelPackage) -> None:
    """Every channel the invasion model names must be in the case: one sentence for the first that is not, before
    the long work (nCBV comes from the DSC series)."""
    from GliomaProgressionLib.case.channels import check_channels_present

    present = {"t1c", "flair", *inputs.maps} | ({"ncbv"} if inputs.dsc is not None else set())
    check_channels_present(inputs.name, package.model.channels, present, package.id)


def channels_to_register(inputs: CaseInputs, model: ModelPackage, invasion: InvasionModelPackage | None) -> dict:
    """The case's maps the progression and the invasion models use: only they are registered."""
    from GliomaProgressionLib.case.channels import maps_needed

    names = list(model.channel_names) + (list(invasion.model.channels) if invasion is not None else [])
    return maps_needed(names, inputs.maps)


def on_model_grid(prepared: PreparedCase, names, brain: sitk.Image, recurrence: sitk.Image | None,
                  spacing_mm: float):
    """(grid, the channels ``names``, lesion, brain, recurrence) on the isotropic grid of ``spacing_mm`` the
    invasion model's local windows were measured on; the reference grid itself when it already is that grid. The
    channels are resampled linearly from the reference grid (same orientation and field of view), labels by nearest
    neighbour."""
    from GliomaProgressionLib.case.registration import isotropic_reference, resample_onto
    from GliomaProgressionLib.invasion.pipeline import SPACING_TOLERANCE_MM

    reference = prepared.reference
    if all(abs(v - spacing_mm) <= SPACING_TOLERANCE_MM for v in reference.GetSpacing()):
        return reference, {name: prepared.channels[name] for name in names}, prepared.lesion, brain, recurrence
    grid = isotropic_reference(reference, spacing_mm)
    channels = {name: resample_onto(grid, prepared.channels[name], None) for name in names}
    labels = [None if image is None else resample_onto(grid, image, None, labels=True)
              for image in (prepared.lesion, brain, recurrence)]
    return grid, channels, *labels


def case_invasion(prepared: PreparedCase, brain: sitk.Image, recurrence: sitk.Image | None,
                  package: InvasionModelPackage, progress: Callable[[float, str], None], cancel=None) -> CaseInvasion:
    """The invasion map of the prepared case (``invasion.pipeline.invasion_probability`` on the model's grid, in the
    run's brain), measured against the recurrence when there is one (the paper's labels: progression area vs the
    5-20 mm non-progression shells), and brought back onto the reference grid (probability linear, label nearest
    neighbour)."""
    import numpy as np
    import SimpleITK as sitk

    from GliomaProgressionLib.invasion.labels import training_labels
    from GliomaProgressionLib.invasion.pipeline import invasion_probability
    from GliomaProgressionLib.runs.invasion import LABEL_FILE, PROBABILITY_FILE, TRUTH_SOURCES, measures

    started = time.monotonic()
    model = package.model
    grid, channels, lesion, brain_grid, truth = on_model_grid(prepared, model.channels, brain, recurrence,
                                                                model.spacing_mm)
    brain_array = sitk.GetArrayFromImage(brain_grid) > 0
    result = invasion_probability(channels, lesion, model, progress, cancel, brain=brain_array)
    evaluation = None
    if truth is not None:
        spacing = tuple(float(v) for v in grid.GetSpacing()[::-1])
        labels = training_labels(sitk.GetArrayFromImage(lesion), sitk.GetArrayFromImage(truth) > 0, spacing,
                                 brain_array)
        evaluation = {"truth": "recurrence", "truth_description": TRUTH_SOURCES["recurrence"],
                      **measures(result.probability, labels, model.threshold)}
    probability, label = (_image_like(result.probability.astype(np.float32), grid),
                          _image_like(result.label.astype(np.uint8), grid))
    if grid is not prepared.reference:
        probability = sitk.Resample(probability, prepared.reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkFloat32)
        label = sitk.Resample(label, prepared.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt8)
    record = {
        "software": "GliomaProgression invasion map (Yan et al. 2020, Sci Rep 10:9748)",
        "model": package.info(),
        "channels": list(model.channels),
        "region": "the NEL plus a 20 mm shell around the tumour core (enhancing tumour, necrosis, cavity), without "
                  "the core, inside the run's brain mask",
        "grid": (f"features on {model.spacing_mm:g} mm isotropic voxels (the model's grid), from the run's registered "
                 "channels; the maps written on the CE-T1 reference grid (probability linear, label nearest "
                 "neighbour)"),
        **{key: value for key, value in result.report.items() if key != "time_s"},
        "region_volume_ml": round(result.report["region_voxels"] * result.report["voxel_volume_ml"], 3),
        "label_volume_ml": round(result.report["label_voxels"] * result.report["voxel_volume_ml"], 3),
        "evaluation": evaluation,
        "timings_s": {"map": result.report["time_s"], "total": round(time.monotonic() - started, 3)},
        "outputs": [PROBABILITY_FILE, LABEL_FILE],
    }
    return CaseInvasion(package, probability, label, record)


def _image_like(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def write_invasion_outputs(folder: Path, invasion: CaseInvasion, inputs: dict[str, str]) -> None:
    """invasion/: the files ``gliomaprog invasion`` writes, on the reference grid."""
    from GliomaProgressionLib.case.files import write_image, write_json
    from GliomaProgressionLib.runs.invasion import INVASION_JSON, LABEL_FILE, OUTPUT_FILES, PROBABILITY_FILE

    folder.mkdir()
    write_image(invasion.probability, folder / PROBABILITY_FILE)
    write_image(invasion.label, folder / LABEL_FILE)
    write_json({**invasion.record, "inputs": inputs, "outputs": list(OUTPUT_FILES)}, folder / INVASION_JSON)


def invasion_maps() -> dict[str, str]:
    """report.json's word on the invasion files a run writes."""
    from GliomaProgressionLib.runs.invasion import INVASION_JSON, LABEL_FILE, PROBABILITY_FILE

    return {f"{INVASION_FOLDER}/{PROBABILITY_FILE}": "P(future progression) in the peritumoral region, CE-T1 "
                                                     "reference grid",
            f"{INVASION_FOLDER}/{LABEL_FILE}": "1 where the probability reaches the model's threshold",
            f"{INVASION_FOLDER}/{INVASION_JSON}": "model, channels, region, volumes and the measures against the "
                                                  "recurrence"}


def dsc_grid(inputs: CaseInputs):
    """The DSC series' 3-D grid (its first frame), as a ``Volume``."""
    import numpy as np

    from GliomaProgressionLib.case.geometry import Volume

    return Volume(np.asarray(inputs.dsc.array[0]), inputs.dsc.ijk_to_ras)


def lesion_on_dsc(inputs: CaseInputs, prepared: PreparedCase) -> np.ndarray | None:
    """The reference-grid lesion carried onto the DSC grid by the DSC registration, each DSC voxel taking the label
    filling most of its volume (None without DSC): computed once, for the FTB map and the habitats."""
    from GliomaProgressionLib.case.geometry import sitk_from_volume
    from GliomaProgressionLib.case.preprocess import lesion_by_volume_on_dsc

    if prepared.perfusion is None:
        return None
    return lesion_by_volume_on_dsc(prepared.lesion, sitk_from_volume(dsc_grid(inputs)), prepared.registrations["dsc"])


def habitat_skip_reason(settings: RunSettings, prepared: PreparedCase, dsc_lesion: np.ndarray | None) -> str | None:
    """Why the case gets no perfusion habitats (one sentence), or None when it can have them: habitats are found in
    the contrast-enhancing (CEL) and the non-enhancing lesion (NEL) of a DSC series, both on its grid."""
    from CTVPlannerLib.lesion import LESION_SEGMENTS
    from CTVPlannerLib.schemes import ENHANCING, SNFH

    if not settings.habitats:
        return HABITATS_NOT_REQUESTED
    if prepared.perfusion is None or dsc_lesion is None:
        return HABITATS_NO_DSC
    missing = [f"{LESION_SEGMENTS[value][0].lower()} (the {region})" for region, value in (("CEL", ENHANCING),
                                                                                         ("NEL", SNFH))
               if not (dsc_lesion == value).any()]
    if missing:
        return (f"perfusion habitats skipped: the lesion has no {' and no '.join(missing)} on the DSC grid, and "
                "habitats need both")
    return None


def case_habitats(settings: RunSettings, inputs: CaseInputs, prepared: PreparedCase, dsc_lesion: np.ndarray | None,
                  package: HabitatModelPackage | None,
                  progress: Callable[[float, str], None]) -> tuple[CaseHabitats | None, str | None]:
    """The habitats of the case from what the run holds (DSC series, lesion on the DSC grid, the perfusion step's
    masks, the DSC registration), or None and the reason there are none; a lesion the model cannot take (too few
    voxels) is such a reason, not an error: the rest of the run stands."""
    from CTVPlannerLib.schemes import ENHANCING, SNFH
    from DSCPerfusionLib.habitats.pipeline import compute_habitats

    from GliomaProgressionLib.runs.habitats import habitats_on_reference

    reason = habitat_skip_reason(settings, prepared, dsc_lesion)
    if reason is not None:
        return None, reason
    started = time.monotonic()
    dsc, perfusion = inputs.dsc, prepared.perfusion
    try:
        # The perfusion step's brain and white-matter masks of this series: one reference for nCBV and habitats.
        result = compute_habitats(dsc.array, inputs.timing.times_s, dsc_lesion == ENHANCING, dsc_lesion == SNFH,
                                  package.model, brain_mask=perfusion.brain_mask, nawm_mask=perfusion.nawm_mask,
                                  ijk_to_ras=dsc.ijk_to_ras, spacing_mm=tuple(float(s) for s in dsc.spacing[::-1]),
                                  progress=progress)
    except ValueError as error:
        text = " ".join(str(error).split()).rstrip(".")
        return None, f"perfusion habitats skipped: {text[:1].lower()}{text[1:]}"
    on_reference = habitats_on_reference(result.labels, dsc_grid(inputs), prepared.reference,
                                         prepared.registrations["dsc"])
    return CaseHabitats(result, package, on_reference, round(time.monotonic() - started, 3)), None


def habitat_maps() -> dict[str, str]:
    """report.json's word on the habitat label maps a run writes: where each is and on which grid."""
    from GliomaProgressionLib.runs.habitats import HABITATS_DSC_FILE, HABITATS_FILE, HABITATS_FOLDER

    return {f"{HABITATS_FOLDER}/{HABITATS_FILE}": "CE-T1 reference grid (1 mm), through the DSC registration",
            f"{HABITATS_FOLDER}/{HABITATS_DSC_FILE}": "DSC grid, where the habitats were computed"}


def write_registered(folder: Path, results: CaseResults) -> None:
    """The reference-grid series every later stage reads, and the transforms that produced them."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.files import write_image, write_json

    folder.mkdir()
    prepared = results.prepared
    for name, image in prepared.channels.items():
        write_image(sitk.Cast(image, sitk.sitkFloat32), folder / f"{name}.nii.gz")
    write_image(prepared.lesion, folder / "lesion.nii.gz")
    write_image(prepared.nel, folder / "nel.nii.gz")
    write_image(results.brain, folder / "brain.nii.gz")
    if results.recurrence is not None:
        write_image(results.recurrence, folder / "recurrence.nii.gz")
    for name, registration in prepared.registrations.items():
        sitk.WriteTransform(registration.transform, str(folder / f"{name}_to_t1c.tfm"))
    write_json({"reference_grid": "CE-T1 resampled to 1 mm isotropic voxels (linear)",
                "registration": prepared.qc.get("registration", {}), "warnings": prepared.qc.get("warnings", []),
                "transforms": "ITK transforms mapping CE-T1 (reference) points to the series' points (LPS)"},
               folder / "registration.json")


def write_prepared_outputs(staging: Path, results: CaseResults) -> None:
    """registered/, perfusion/ (with DSC) and converted/ (series read from DICOM): what the modules' commands would
    write."""
    from DSCPerfusionLib.pipeline import PerfusionOptions

    from GliomaProgressionLib.case.files import write_image
    from GliomaProgressionLib.case.folder import dsc_sidecar_header
    from GliomaProgressionLib.runs.perfusion import write_perfusion_outputs

    inputs, prepared = results.inputs, results.prepared
    write_registered(staging / "registered", results)
    if prepared.perfusion is not None:
        grid, labels = dsc_grid(inputs), results.dsc_lesion
        write_perfusion_outputs(prepared.perfusion, grid, inputs.timing, staging / "perfusion",
                                inputs=inputs.sources,
                                options=PerfusionOptions(te_s=inputs.timing.te_s, leakage=results.settings.leakage),
                                elapsed_s=prepared.qc["timings_s"].get("perfusion_s", 0.0),
                                lesion_labels=labels if labels.any() else None,
                                header=dsc_sidecar_header(inputs.folder),
                                ftb_thresholds=results.settings.ftb_thresholds)
    if inputs.converted:
        (staging / "converted").mkdir()
        for name, image in inputs.converted.items():
            write_image(image, staging / "converted" / f"{name}.nii.gz")


def write_habitats(staging: Path, results: CaseResults) -> None:
    from GliomaProgressionLib.runs.habitats import HABITATS_FOLDER, write_habitat_outputs

    inputs, prepared = results.inputs, results.prepared
    write_habitat_outputs(results.habitats.result, dsc_grid(inputs), prepared.reference, staging / HABITATS_FOLDER,
                          results.habitats.package.info(), registration=prepared.registrations["dsc"],
                          alignment="registration", inputs=dict(inputs.sources), elapsed_s=results.habitats.elapsed_s)


def plan_ctvs(staging: Path, results: CaseResults, progress: StageProgress) -> None:
    """``gliomaprog ctv`` on the registered series, then its masks read back for the export, report and scene."""
    from GliomaProgressionLib.runs.ctv import parse_schemes, run_ctv_files
    from GliomaProgressionLib.case.files import read_volume

    registered = staging / "registered"
    schemes, _ = parse_schemes(list(results.settings.schemes) if results.settings.schemes else None, True)
    recurrence = registered / "recurrence.nii.gz" if results.recurrence is not None else None
    report = run_ctv_files(registered / "lesion.nii.gz", registered / "brain.nii.gz", staging / "ctv",
                           list(schemes), geodesic=results.settings.geodesic,
                           progression=staging / "prediction" / "progression.nii.gz",
                           image=registered / "t1c.nii.gz", recurrence=recurrence, progress=progress.update,
                           inputs_under=staging)
    results.ctv_report = report
    for entry in report["targets"]:
        mask = read_volume(staging / "ctv" / entry["file"], entry["name"]).array > 0
        results.targets.append(TargetMask(entry["key"], entry["name"], entry["kind"], mask, entry))


def recorded_inputs(sources: dict[str, str], case_folder: Path) -> dict[str, str]:
    """Where each series came from, as the JSON files record it: relative to the case folder, or the file name alone
    for a file elsewhere (a recurrence mask given apart); never an absolute path, which tells of the machine and
    often of the patient."""
    recorded = {}
    for name, text in sources.items():
        prefix = DICOM_FOLDER if text.startswith(DICOM_FOLDER) else ""
        path = Path(text[len(prefix):])
        try:
            shown = path.resolve().relative_to(Path(case_folder).resolve()).as_posix()
        except ValueError:
            shown = path.name
        recorded[name] = prefix + shown
    return recorded


def export_dicom_structures(folder: Path, results: CaseResults) -> dict:
    """RTSTRUCT and SEG of the GTV and every non-empty target.

    A CE-T1 read from DICOM is their reference: its patient, study and frame of reference, contours on its slices
    (``case.dicom_source``), no MR copy. Otherwise the 1 mm CE-T1 is written as the MR series they reference,
    under a generated anonymous identity: a folder name is no patient name.
    """
    import numpy as np
    import SimpleITK as sitk

    from CTVPlannerLib.dicom_export import PatientStudy, export_dicom

    from GliomaProgressionLib.case.dicom_source import read_source_series
    from GliomaProgressionLib.case.geometry import volume_from_sitk

    source = read_source_series(results.inputs.folder, results.inputs.t1c)
    structures, skipped = _structures(results, source)
    if source is not None:
        written = export_dicom(folder, structures, np.zeros(source.shape, bool), source.ijk_to_ras,
                               source=source.datasets)
        referenced = (f"the CE-T1 DICOM series ({source.folder.name}/): its patient, study, frame of reference "
                      "and slices")
    else:
        reference = volume_from_sitk(results.prepared.reference)
        image = reference.array
        if "integer" in sitk.GetPixelIDValueAsString(results.inputs.t1c.GetPixelID()):
            image = np.rint(image)  # whole numbers keep the scanner's intensities (else the exporter rescales)
        written = export_dicom(folder, structures, image, reference.ijk_to_ras,
                               PatientStudy(study_description="GliomaProgression CTV proposals"))
        referenced = "MR/, the 1 mm CE-T1 written as DICOM (anonymous patient, generated ID: the input was not DICOM)"
    return {"files": {kind: [str(p.relative_to(folder.parent)) for p in paths] for kind, paths in written.items()},
            "structures": [s.name for s in structures], "empty_targets_not_exported": skipped,
            "referenced_images": referenced}


def _structures(results: CaseResults, source) -> tuple[list, list[str]]:
    """The GTV and the non-empty targets on the grid of the images they will reference: the source's slices
    (targets sampled there, GTV from the case's own lesion) or the 1 mm reference grid."""
    import SimpleITK as sitk

    from CTVPlannerLib.dicom_export import Structure
    from CTVPlannerLib.lesion import LESION_SEGMENTS
    from CTVPlannerLib.schemes import ENHANCING, gtv_masks

    from GliomaProgressionLib.case.dicom_source import labels_on_source, mask_on_source
    from GliomaProgressionLib.report.figure import TARGET_COLOURS

    if source is None:
        labels = sitk.GetArrayFromImage(results.prepared.lesion)
    else:
        labels = labels_on_source(results.inputs.lesion, source)
    gtv_colour = LESION_SEGMENTS[ENHANCING][1]  # the GTV core in the colour of its enhancing tumour
    structures = [Structure("GTV", gtv_masks(labels)["core"], gtv_colour, "GTV",
                            "Enhancing tumour, necrosis and resection cavity")]
    skipped = []
    for target in results.targets:
        mask = target.mask
        if source is not None and mask.any():
            mask = mask_on_source(mask, results.prepared.reference, source)
        if not mask.any():
            skipped.append(target.name)
            continue
        colour = TARGET_COLOURS.get(target.key.replace("ptv_", ""), (0.9, 0.9, 0.5))
        structures.append(Structure(target.name, mask, colour, "CTV" if target.kind == "BOOST" else
                                    target.kind, target.entry.get("description", "")))
    return structures, skipped


# --- output folders: complete or absent ------------------------------------------------------------------------


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def finish_output_folder(staging: Path, data: dict) -> None:
    """Write report.json, last: ``outputs`` names every file and ``output_files`` records each other file's size
    and SHA-256, so that a resume checks content, not names (``is_complete``). The owner marker goes after it."""
    from GliomaProgressionLib.case.files import write_json

    files = sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / OWNER_MARKER)
    names = [p.relative_to(staging).as_posix() for p in files]
    data["outputs"] = names + [REPORT_JSON]
    data["output_files"] = {name: _file_record(path) for name, path in zip(names, files)}
    write_json(data, staging / REPORT_JSON)
    (staging / OWNER_MARKER).unlink(missing_ok=True)


def is_complete(folder: Path) -> bool:
    """A case output is complete when its report.json reads and every file it records has the size and SHA-256
    it had when written: a truncated, changed or missing file makes it incomplete (so does a report.json of an
    older version, which recorded names only)."""
    try:
        recorded = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8")).get("output_files")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(recorded, dict) or not recorded:
        return False
    return all(_matches(folder, name, entry) for name, entry in recorded.items())


def _matches(folder: Path, name: str, entry) -> bool:
    path = folder / name
    if not isinstance(entry, dict) or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
        return False
    try:
        return path.stat().st_size == entry.get("bytes") and _file_record(path)["sha256"] == entry.get("sha256")
    except OSError:
        return False


# --- what killed runs leave beside an output folder -----------------------------------------------------------


def mark_owner(staging: Path) -> None:
    """Name this process in a staging folder (``models.process.owner_token``): if the run is killed, a later run
    can prove the folder stale and remove it. ``finish_output_folder`` removes the marker."""
    from GliomaProgressionLib.case.files import write_text
    from GliomaProgressionLib.models.process import owner_token

    write_text(owner_token(), staging / OWNER_MARKER)


def _leftover_owner(folder: Path) -> str | None:
    """The owner of a staging folder (``.<name>.partial-*``, its marker) or of a set-aside output
    (``.<name>.replaced-<owner>``); None when it has none to show."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    if SET_ASIDE in folder.name:
        return folder.name.rsplit(SET_ASIDE, 1)[1]
    try:
        return (folder / OWNER_MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def sweep_stale_leftovers(parent: Path, name: str = "*") -> list[Path]:
    """Remove the staging folders and set-aside outputs of ``name`` (any name: "*") in ``parent`` whose run has
    provably ended (``models.process.owner_has_ended``); anything without a readable owner stays."""
    from GliomaProgressionLib.models.process import owner_has_ended

    swept = []
    pattern = "*" if name == "*" else glob.escape(name)
    for folder in [*parent.glob(f".{pattern}{STAGING}*"), *parent.glob(f".{pattern}{SET_ASIDE}*")]:
        owner = _leftover_owner(folder)
        if owner is not None and owner_has_ended(owner):
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
    return swept


@contextlib.contextmanager
def replacing_incomplete_output(target: Path):
    """Run the block with an incomplete earlier output of this case set aside (renamed, at once): removed once the
    new output is in place, put back if the block fails, swept by a later run if this one is killed. Old and new
    files never mix. A folder without report.json was never a result (a result appears with its report.json, in
    one rename) and is left alone."""
    if not target.is_dir() or not any(target.iterdir()):
        yield
        return
    if not (target / REPORT_JSON).is_file():
        raise ValueError(f"The output folder {target} already exists and holds no {REPORT_JSON}, so it is no earlier "
                         "result of this case; move it away to run the case.")
    from GliomaProgressionLib.models.process import owner_token

    aside = target.with_name(f".{target.name}{SET_ASIDE}{owner_token()}")
    os.replace(target, aside)
    try:
        yield
    except BaseException:
        if not target.exists():
            os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
