"""Progression prediction for one case: channels on the reference grid -> nnU-Net -> heat map, segment, verdict.

As in seed 000: the model's foreground probability, thresholded (default p >= 0.5) and restricted to the
non-enhancing lesion (NEL); the patient is "progression predicted" when at least ``min_voxels`` voxels (and
``min_ml`` millilitres) are predicted (default: one voxel).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.files import staged_output_folder, write_image, write_json
from GliomaProgressionLib.case.preprocess import PreparedCase

Progress = Callable[[float, str], None]


DEVICES = ("auto", "cpu", "cuda")
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


def predict_prepared(prepared: PreparedCase, model, settings: PredictionSettings = PredictionSettings(),
                     progress: Progress | None = None, cancel: threading.Event | None = None,
                     timeout_s: float | None = None) -> PredictionResult:
    """Run the model on a prepared case (blocking; the work happens in a child process)."""
    from GliomaProgressionLib.models.inference import run_prediction

    settings = settings.validated()
    names = [channel["name"] for channel in model.channels]
    if int(sitk.GetArrayViewFromImage(prepared.nel).sum()) == 0:
        raise ValueError("The lesion has no non-enhancing part (label 2): there is nothing to predict.")
    channels = prepared.channel_list(names)
    probability = run_prediction(channels, model, device=settings.device, tta=settings.tta, timeout_s=timeout_s,
                                 progress=progress, cancel=cancel)
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
                      timeout_s: float | None = None, progress: Progress | None = None) -> PredictionResult:
    """``gliomaprog predict``: read, register, predict and write; checks everything before the long work."""
    from GliomaProgressionLib.case.files import check_new_output_folder, read_image
    from GliomaProgressionLib.models.packages import resolve_model
    from GliomaProgressionLib.case.timing import read_timing
    from GliomaProgressionLib.runs.perfusion import read_dsc
    from GliomaProgressionLib.case.preprocess import prepare_case

    report = progress or (lambda fraction, message: None)
    settings = settings.validated()
    check_new_output_folder(out)
    model = resolve_model(model_id, trust=trust_model)
    names = [channel["name"] for channel in model.channels]
    if "ncbv" in names and dsc is None and ncbv is None:
        raise ValueError(f"The model '{model.id}' needs nCBV: give --dsc with --dsc-json, or --ncbv.")
    timings = {}
    started = time.monotonic()
    images = {"t1c": read_image(t1c, "CE-T1"), "flair": read_image(flair, "FLAIR"),
              "lesion": read_image(lesion, "lesion")}
    series = timing = None
    ncbv_image = read_image(ncbv, "nCBV") if ncbv else None
    if dsc is not None and "ncbv" in names:
        series = read_dsc(dsc)
        timing = read_timing(series.array.shape[0], dsc_json, None, None)
    prepared = prepare_case(images["t1c"], images["flair"], images["lesion"], series,
                            timing.times_s if timing else None, timing.te_s if timing else None, ncbv=ncbv_image,
                            progress=lambda f, m: report(0.4 * f, m))
    timings["preprocessing"] = time.monotonic() - started
    moment = time.monotonic()
    result = predict_prepared(prepared, model, settings, progress=lambda f, m: report(0.4 + 0.55 * f, m),
                              timeout_s=timeout_s)
    timings["inference"] = time.monotonic() - moment
    write_prediction(out, prepared, result, model, settings, timings, inputs={
        "t1c": str(t1c), "flair": str(flair), "lesion": str(lesion), "dsc": str(dsc) if dsc else None,
        "ncbv": str(ncbv) if ncbv else None})
    report(1.0, "Prediction written")
    return result
