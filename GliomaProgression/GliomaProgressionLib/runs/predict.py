"""Progression prediction for one case: channels on the reference grid -> nnU-Net -> heat map, segment, verdict.

As in seed 000: the model's foreground probability, thresholded (default p >= 0.5) and restricted to the
non-enhancing lesion (NEL); the patient is "progression predicted" when at least ``min_voxels`` voxels (and
``min_ml`` millilitres) are predicted (default: one voxel).

``gliomaprog predict`` runs ``run_predict_files`` and the model in a worker process of its own (time limit). The
Slicer module starts this module as its one background process instead, from a ``PredictionJob`` that writes
its own command line:

    python -m GliomaProgressionLib.runs.predict --t1c F --flair F --lesion F --model ID --out DIR
        [--dsc F --dsc-json F] [--device auto|cpu|cuda] [--threshold P] [--min-voxels N] [--min-ml ML]
        [--tta | --no-tta] [--trust-model]

which prepares the case (registration, nCBV) and runs the model in that same process, writing the channels once
(``DIR/inputs``). Progress lines ``[ NN%] message (s)`` and a last line ``ERROR: <message>`` on failure go to
stdout, as ``models.process.BackgroundProcess`` reads them.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.channels import parse_map_argument
from GliomaProgressionLib.case.files import staged_output_folder, write_image, write_json
from GliomaProgressionLib.case.preprocess import PreparedCase
from GliomaProgressionLib.models.process import run_job_process
from GliomaProgressionLib.models.worker import DEVICES

Progress = Callable[[float, str], None]
JOB_MODULE = "GliomaProgressionLib.runs.predict"  # this module, as the Slicer module's job process runs it
THRESHOLD_RANGE = (0.01, 0.99)  # probability cut-off of the progression map
MIN_VOXELS_RANGE = (1, 100000)  # smallest predicted region (voxels) that makes a patient "progression"


@dataclass(frozen=True)
class PredictionSettings:
    threshold: float = 0.5
    min_voxels: int = 1
    min_ml: float = 0.0
    device: str = "auto"
    tta: bool | None = None  # None: mirroring on GPU, off on CPU

    def validated(self) -> "PredictionSettings":
        if not THRESHOLD_RANGE[0] <= self.threshold <= THRESHOLD_RANGE[1]:
            raise ValueError(f"The probability threshold must be between {THRESHOLD_RANGE[0]} and "
                             f"{THRESHOLD_RANGE[1]}, got {self.threshold}.")
        if self.min_voxels < 1 or self.min_ml < 0:
            raise ValueError("The minimum size of a predicted progression must be at least one voxel and >= 0 mL.")
        if self.device not in DEVICES:
            raise ValueError(f"The device must be {', '.join(DEVICES)}, got {self.device!r}.")
        return self


@dataclass
class PredictionResult:
    probability: sitk.Image  # float32 0..1 on the reference grid
    progression: sitk.Image  # uint8 mask: p >= threshold inside the NEL
    verdict: dict


def predicted_progression(probability: sitk.Image, nel: sitk.Image, threshold: float) -> sitk.Image:
    p = sitk.GetArrayViewFromImage(probability)
    inside = sitk.GetArrayViewFromImage(nel) > 0
    mask = sitk.GetImageFromArray(((p >= threshold) & inside).astype(np.uint8))
    mask.CopyInformation(probability)
    return mask


def patient_verdict(progression: sitk.Image, probability: sitk.Image, nel: sitk.Image,
                    settings: PredictionSettings) -> dict:
    voxels = int(sitk.GetArrayViewFromImage(progression).sum())
    voxel_ml = float(np.prod(progression.GetSpacing())) / 1000.0
    p_in_nel = sitk.GetArrayViewFromImage(probability)[sitk.GetArrayViewFromImage(nel) > 0]
    predicted = voxels >= settings.min_voxels and voxels * voxel_ml >= settings.min_ml
    return {
        "progression_predicted": bool(predicted),
        "predicted_voxels": voxels,
        "predicted_volume_ml": round(voxels * voxel_ml, 3),
        "max_probability_in_nel": round(float(p_in_nel.max()), 4) if p_in_nel.size else 0.0,
        "nel_volume_ml": round(int(p_in_nel.size) * voxel_ml, 3),
        "rule": f"progression if >= {settings.min_voxels} voxel(s) and >= {settings.min_ml} mL with "
                f"p >= {settings.threshold} inside the non-enhancing lesion",
    }


def check_lesion_in_brain(t1c: sitk.Image, lesion: sitk.Image, lesion_text: str, brain: sitk.Image | None = None,
                          brain_text: str | None = None) -> None:
    """At least half the lesion inside the brain (``CTVPlannerLib.schemes.check_lesion_inside_brain``, which says
    why half), before any registration: on the lesion's grid, in scanner coordinates, against the case's brain
    mask when there is one, else against the brain found on the CE-T1 (``case.brain_region``, as registration
    finds it). Never against the brain mask the CTVs use, which has the lesion merged into it."""
    from CTVPlannerLib.schemes import check_lesion_inside_brain

    from GliomaProgressionLib.case.brain_region import brain_region

    if brain is None:
        brain, brain_name = brain_region(t1c).mask, "the brain found on the CE-T1"
    else:
        brain, brain_name = sitk.Cast(brain > 0, sitk.sitkUInt8), f"the brain mask {brain_text}"
    on_lesion = sitk.Resample(brain, lesion, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    check_lesion_inside_brain(sitk.GetArrayViewFromImage(lesion) > 0, sitk.GetArrayViewFromImage(on_lesion) > 0,
                              f"the lesion {lesion_text}", brain_name)


def predict_prepared(prepared: PreparedCase, model, settings: PredictionSettings = PredictionSettings(),
                     progress: Progress | None = None, cancel: threading.Event | None = None,
                     timeout_s: float | None = None, in_process: bool = False) -> PredictionResult:
    """Run the model on a prepared case (blocking): in a worker process (time limit, cancel), or with
    ``in_process`` in this one (a caller that is itself a background job)."""
    from GliomaProgressionLib.models.inference import predict_here, run_prediction
    from GliomaProgressionLib.models.process import owned_temporary_folder

    settings = settings.validated()
    names = [channel["name"] for channel in model.channels]
    if int(sitk.GetArrayViewFromImage(prepared.nel).sum()) == 0:
        raise ValueError("The lesion has no non-enhancing part (label 2): there is nothing to predict.")
    channels = prepared.channel_list(names)
    if in_process:
        probability = predict_here(channels, model, device=settings.device, tta=settings.tta, progress=progress)
    else:  # the channels go to a folder named after this process: if it is killed, a later run removes them
        with owned_temporary_folder() as work_dir:
            probability = run_prediction(channels, model, device=settings.device, tta=settings.tta,
                                         timeout_s=timeout_s, progress=progress, cancel=cancel, work_dir=work_dir)
    progression = predicted_progression(probability, prepared.nel, settings.threshold)
    return PredictionResult(probability, progression, patient_verdict(progression, probability, prepared.nel,
                                                                      settings))


def write_prediction(out: Path, prepared: PreparedCase, result: PredictionResult, model, settings, timings,
                     inputs: dict) -> None:
    """All outputs of ``gliomaprog predict`` into a new folder (all or nothing)."""
    with staged_output_folder(out) as staging:
        write_image(sitk.Cast(result.probability, sitk.sitkFloat32), staging / "progression_prob.nii.gz")
        write_image(result.progression, staging / "progression.nii.gz")
        (staging / "inputs").mkdir()
        for index, name in enumerate(channel["name"] for channel in model.channels):
            write_image(sitk.Cast(prepared.channels[name], sitk.sitkFloat32),
                        staging / "inputs" / f"case_{index:04d}.nii.gz")
        write_image(prepared.nel, staging / "inputs" / "nel.nii.gz")
        write_json({
            "verdict": result.verdict,
            "model": {"id": model.id, "title": model.title, "sha256": model.sha256, "synthetic": model.synthetic,
                      "channels": model.channels, "configuration": model.configuration, "folds": model.folds},
            "settings": asdict(settings),
            "registration": prepared.qc.get("registration", {}),
            "warnings": prepared.qc.get("warnings", []),
            "inputs": inputs,
            "timings_s": {name: round(value, 3) for name, value in timings.items()},
            **({"notice": "Demo model trained on synthetic data - not for clinical use."} if model.synthetic
               else {}),
        }, staging / "prediction.json")


def run_predict_files(t1c: Path, flair: Path, lesion: Path, model_id: str, out: Path, dsc: Path | None = None,
                      dsc_json: Path | None = None, ncbv: Path | None = None,
                      settings: PredictionSettings = PredictionSettings(), trust_model: bool = False,
                      timeout_s: float | None = None, progress: Progress | None = None,
                      in_process: bool = False, maps: dict[str, Path] | None = None) -> PredictionResult:
    """``gliomaprog predict``: read, register, predict and write; checks everything before the long work. The
    model runs in a worker process, or with ``in_process`` in this one (see ``predict_prepared``). ``maps``: the
    extra channel files by channel name (adc, fa, md, map_<name>), registered onto CE-T1 like FLAIR."""
    from GliomaProgressionLib.case.files import check_new_output_folder, read_image
    from GliomaProgressionLib.case.folder import _check_lesion as check_labels  # the lesion check run makes
    from GliomaProgressionLib.models.packages import resolve_model
    from GliomaProgressionLib.case.timing import read_timing
    from GliomaProgressionLib.runs.perfusion import read_dsc
    from GliomaProgressionLib.case.preprocess import prepare_case
    from GliomaProgressionLib.case.channels import check_channels_present, maps_needed
    from GliomaProgressionLib.case.folder import read_map_file
    from GliomaProgressionLib.case.registration import check_overlap

    report = progress or (lambda fraction, message: None)
    settings = settings.validated()
    check_new_output_folder(out)
    model = resolve_model(model_id, trust=trust_model)
    names = [channel["name"] for channel in model.channels]
    if "ncbv" in names and dsc is None and ncbv is None:
        raise ValueError(f"The model '{model.id}' needs nCBV: give the DSC series with its sidecar, or an nCBV "
                         "map.")
    timings = {}
    started = time.monotonic()
    images = {"t1c": read_image(t1c, "CE-T1"), "flair": read_image(flair, "FLAIR"),
              "lesion": read_image(lesion, "lesion")}
    check_labels(images["lesion"], str(lesion))  # BraTS labels with a non-enhancing part, as run checks them
    check_lesion_in_brain(images["t1c"], images["lesion"], str(lesion))
    notes: list[str] = []
    map_images = {name: read_map_file(path, name, notes) for name, path in (maps or {}).items()}
    check_channels_present(Path(t1c).name, names, {"t1c", "flair", "ncbv", *map_images}, model.id)
    for name, image in map_images.items():
        check_overlap(images["t1c"], image, f"{name} map")
    series = timing = None
    ncbv_image = read_image(ncbv, "nCBV") if ncbv else None
    if dsc is not None and "ncbv" in names:
        series = read_dsc(dsc)
        timing = read_timing(series.array.shape[0], dsc_json, None, None)
    prepared = prepare_case(images["t1c"], images["flair"], images["lesion"], series,
                            timing.times_s if timing else None, timing.te_s if timing else None, ncbv=ncbv_image,
                            progress=lambda f, m: report(0.4 * f, m), maps=maps_needed(names, map_images))
    prepared.qc["warnings"] = notes + prepared.qc["warnings"]
    timings["preprocessing"] = time.monotonic() - started
    moment = time.monotonic()
    result = predict_prepared(prepared, model, settings, progress=lambda f, m: report(0.4 + 0.55 * f, m),
                              timeout_s=timeout_s, in_process=in_process)
    timings["inference"] = time.monotonic() - moment
    write_prediction(out, prepared, result, model, settings, timings, inputs={
        "t1c": str(t1c), "flair": str(flair), "lesion": str(lesion), "dsc": str(dsc) if dsc else None,
        "ncbv": str(ncbv) if ncbv else None, **{name: str(path) for name, path in (maps or {}).items()}})
    report(1.0, "Prediction written")
    return result


# --- the Slicer module's prediction job: one process that prepares and predicts -----------------------------------


@dataclass(frozen=True)
class PredictionJob:
    """One case's files, the model and the settings of a background prediction. It owns its command line
    (``as_arg_list``, after SlicerNNUnet's ``Parameter.asArgList``) and the parser that reads it back
    (``from_arg_list``), so no caller writes the command by hand."""

    t1c: Path
    flair: Path
    lesion: Path
    model: str  # a model id or a package path
    out: Path  # a new folder: what ``write_prediction`` writes
    dsc: Path | None = None
    dsc_json: Path | None = None
    settings: PredictionSettings = field(default_factory=PredictionSettings)
    trust_model: bool = False
    maps: tuple[tuple[str, Path], ...] = ()  # (channel name, file): adc, fa, md, map_<name>

    def __post_init__(self):  # paths given as text compare equal to the same paths read back from the arguments
        for name in ("t1c", "flair", "lesion", "out", "dsc", "dsc_json"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        maps = self.maps.items() if isinstance(self.maps, dict) else self.maps
        object.__setattr__(self, "maps", tuple((str(name), Path(path)) for name, path in maps))

    def as_arg_list(self) -> list[str]:
        """The arguments ``from_arg_list`` reads back into an equal job. Each value is joined to its flag
        (``--model=...``), so that a value starting with "-" cannot be read as a flag."""
        settings = self.settings
        values = {"--t1c": self.t1c, "--flair": self.flair, "--lesion": self.lesion, "--model": self.model,
                  "--out": self.out, "--dsc": self.dsc, "--dsc-json": self.dsc_json, "--device": settings.device,
                  "--threshold": repr(float(settings.threshold)), "--min-voxels": int(settings.min_voxels),
                  "--min-ml": repr(float(settings.min_ml))}
        arguments = [f"{flag}={value}" for flag, value in values.items() if value is not None]
        arguments += [f"--map={name}={path}" for name, path in self.maps]
        if settings.tta is not None:
            arguments.append("--tta" if settings.tta else "--no-tta")
        if self.trust_model:
            arguments.append("--trust-model")
        return arguments

    @classmethod
    def from_arg_list(cls, arguments: list[str]) -> "PredictionJob":
        """The job ``as_arg_list`` wrote; ValueError in one sentence for anything else."""
        values = _job_parser().parse_args(arguments)
        settings = PredictionSettings(threshold=values.threshold, min_voxels=values.min_voxels,
                                      min_ml=values.min_ml, device=values.device, tta=values.tta)
        return cls(values.t1c, values.flair, values.lesion, values.model, values.out, values.dsc, values.dsc_json,
                   settings, values.trust_model, tuple(parse_map_argument(text) for text in values.map or ()))

    def command(self) -> list[str]:
        """This module run by the Python that can import the extension's libraries (PythonSlicer in Slicer)."""
        from GliomaProgressionLib.models.process import python_executable

        return [python_executable(), "-m", JOB_MODULE, *self.as_arg_list()]

    def start(self):
        """The job as a running ``BackgroundProcess`` (poll it; cancel ends it and everything it started)."""
        from GliomaProgressionLib.models.process import BackgroundProcess

        self.settings.validated()
        return BackgroundProcess(self.command(), cpu_only=self.settings.device == "cpu").start()

    def run(self, progress: Progress | None = None) -> PredictionResult:
        """The job in this process: prepare, predict, write ``out`` (what the started process does)."""
        return run_predict_files(self.t1c, self.flair, self.lesion, self.model, self.out, dsc=self.dsc,
                                 dsc_json=self.dsc_json, settings=self.settings, trust_model=self.trust_model,
                                 progress=progress, in_process=True, maps=dict(self.maps))


class _JobParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence for the caller, not argparse's usage block
        raise ValueError(f"The prediction job's arguments are wrong: {message}.")


def _job_parser() -> argparse.ArgumentParser:
    parser = _JobParser(prog=f"python -m {JOB_MODULE}", add_help=False)
    for name in ("--t1c", "--flair", "--lesion", "--out"):
        parser.add_argument(name, required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dsc", type=Path)
    parser.add_argument("--dsc-json", type=Path)
    parser.add_argument("--map", action="append")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--threshold", type=float, default=PredictionSettings.threshold)
    parser.add_argument("--min-voxels", type=int, default=PredictionSettings.min_voxels)
    parser.add_argument("--min-ml", type=float, default=PredictionSettings.min_ml)
    mirroring = parser.add_mutually_exclusive_group()
    mirroring.add_argument("--tta", dest="tta", action="store_true", default=None)
    mirroring.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--trust-model", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The job process (``models.process.run_job_process``: exit codes and the last ``ERROR:`` line)."""
    arguments = sys.argv[1:] if argv is None else argv
    return run_job_process(lambda progress: PredictionJob.from_arg_list(arguments).run(progress))


if __name__ == "__main__":  # nothing may run on import: the module also holds the job's parameter object
    sys.exit(main())
