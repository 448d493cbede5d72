"""The invasion map on files (``gliomaprog invasion``; seed 004, Yan et al. 2020, Sci Rep 10:9748): one case folder
-> the probability of future progression of every peritumoral voxel, and its label.

The case folder is read by ``case.folder.read_case`` (the DSC series only when the model names nCBV; the diffusion
and other maps the model names, ``case.channels``) and prepared by ``case.preprocess.prepare_case`` exactly as for
the progression model, onto the CE-T1 reference grid at the voxel size the model's features were computed on
(1 mm unless the model was trained otherwise). ``invasion.pipeline.invasion_probability`` computes the local
radiomics feature maps in the peritumoral region (NEL plus a 20 mm shell around the tumour core, inside the brain:
the case folder's brain mask, else the brain found in CE-T1 by ``case.brain_region``) and classifies every voxel.
When the case holds a progression truth (``recurrence``, a ``progression`` label drawn on FLAIR, or a phantom's
``truth/progression``), invasion.json also measures the map against it on the paper's labels.

Output folder (written completely or not at all)::

    invasion_probability.nii.gz  P(future progression), float32, in the peritumoral region; 0 elsewhere
    invasion_label.nii.gz        1 where the probability reaches the model's threshold, inside the region
    invasion.json                model (id, sha256, synthetic), channels, region, counts, timings, warnings, and
                                 the measures against a truth when the case has one
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from GliomaProgressionLib.models.invasion_packages import DEFAULT_INVASION_MODEL  # noqa: F401 (re-exported)

Progress = Callable[[float, str], None]
PROBABILITY_FILE = "invasion_probability.nii.gz"
LABEL_FILE = "invasion_label.nii.gz"
INVASION_JSON = "invasion.json"
OUTPUT_FILES = (PROBABILITY_FILE, LABEL_FILE, INVASION_JSON)
TRUTH_SOURCES = {
    "recurrence": "the recurrence at follow-up, aligned with CE-T1 (recurrence.nii.gz)",
    "progression": "the progression label drawn on the pre-operative FLAIR (progression.nii.gz), carried by the "
                   "FLAIR registration",
    "phantom": "the phantom's future-progression truth (truth/progression.nii.gz, CE-T1 grid)",
}


# --- reading and preparing a case -------------------------------------------------------------------------------


def check_invasion_case(case_folder: str | Path) -> Path:
    folder = Path(case_folder)
    if not folder.is_dir():
        raise ValueError(f"The case folder {folder} does not exist.")
    return folder


def prepare_invasion_case(case_folder: str | Path, channels, spacing_mm: float, model_name: str = "invasion",
                          progress: Progress | None = None):
    """(CaseInputs, PreparedCase) of a case folder with every channel in ``channels`` (None: all it can give) on the
    CE-T1 reference grid of ``spacing_mm``; a channel it cannot give is refused in one sentence."""
    from GliomaProgressionLib.case.channels import CHANNELS, DERIVED, maps_needed, missing_channel_message
    from GliomaProgressionLib.case.folder import has_series, read_case
    from GliomaProgressionLib.case.preprocess import prepare_case

    folder = check_invasion_case(case_folder)
    needs_dsc = has_series(folder, "dsc") if channels is None else "ncbv" in channels
    if needs_dsc and not has_series(folder, "dsc"):
        raise ValueError(missing_channel_message(folder.name, "ncbv", model_name))
    inputs = read_case(folder, with_dsc=needs_dsc)
    # Only the maps the channels use are registered (without channels: the named ones a default model takes).
    maps = maps_needed(CHANNELS if channels is None else channels, inputs.maps)
    for name in channels or ():
        if name not in ("t1c", "flair", "ncbv") and not set(DERIVED.get(name, (name,))) <= set(maps):
            raise ValueError(missing_channel_message(inputs.name, name, model_name))
    timing = inputs.timing
    prepared = prepare_case(inputs.t1c, inputs.flair, inputs.lesion, inputs.dsc, timing.times_s if timing else None,
                            timing.te_s if timing else None, spacing_mm=spacing_mm, progress=progress, maps=maps)
    prepared.qc["warnings"] = inputs.notes + prepared.qc["warnings"]
    for name in channels or ():
        if name not in prepared.channels:
            raise ValueError(missing_channel_message(inputs.name, name, model_name))
    return inputs, prepared


def default_channels(prepared) -> tuple[str, ...]:
    """The channels a model is trained on unless told: every named channel of ``case.channels.CHANNELS`` (t1c, flair,
    ncbv, adc, fa, md, p, q; not the ``map_<name>`` ones) the case has."""
    from GliomaProgressionLib.case.channels import CHANNELS

    return tuple(name for name in CHANNELS if name in prepared.channels)


def brain_on_reference(inputs, prepared) -> tuple[object, str]:
    """(The brain as a bool array on the reference grid, where it came from): the case folder's brain mask, else the
    brain found in CE-T1 (``case.brain_region``: the non-zero voxels of a skull-stripped series, else an estimate),
    so that the peritumoral region does not reach into the background or the scalp."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.brain_region import brain_region
    from GliomaProgressionLib.case.registration import resample_onto

    if inputs.brain is not None:
        mask = resample_onto(prepared.reference, inputs.brain, None, labels=True)
        return sitk.GetArrayFromImage(mask) > 0, "the case folder's brain mask"
    found = brain_region(prepared.reference)
    return sitk.GetArrayFromImage(found.mask) > 0, f"found in CE-T1 ({found.source}; case.brain_region)"


def progression_truth(inputs, prepared) -> tuple[object, str | None]:
    """(progression truth as a bool array on the reference grid, its source key in ``TRUTH_SOURCES``), or
    (None, None) when the case has none."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.files import read_image
    from GliomaProgressionLib.case.folder import locate_series
    from GliomaProgressionLib.case.registration import resample_onto

    if inputs.recurrence is not None:
        image = resample_onto(prepared.reference, inputs.recurrence, None, labels=True)
        return sitk.GetArrayFromImage(image) > 0, "recurrence"
    drawn = locate_series(inputs.folder, "progression")
    if drawn is not None and drawn.is_file():
        image = resample_onto(prepared.reference, read_image(drawn, "progression label"),
                              prepared.registrations["flair"], labels=True)
        return sitk.GetArrayFromImage(image) > 0, "progression"
    phantom = locate_series(inputs.folder / "truth", "progression") if (inputs.folder / "truth").is_dir() else None
    if phantom is not None and phantom.is_file():
        image = resample_onto(prepared.reference, read_image(phantom, "phantom progression truth"), None, labels=True)
        return sitk.GetArrayFromImage(image) > 0, "phantom"
    return None, None


# --- measuring against a truth ------------------------------------------------------------------------------------


def measures(probability, labels, threshold: float) -> dict:
    """Voxel accuracy (and balanced accuracy) at ``threshold`` and the AUC on the paper's labelled voxels (1
    progression area, 0 non-progression shells; -1 ignored); the AUC is None when a class is empty."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    labelled = labels >= 0
    truth, score = labels[labelled].astype(int), np.asarray(probability)[labelled]
    both = (truth == 1).any() and (truth == 0).any()
    predicted = (score >= threshold).astype(int)
    return {"progression_voxels": int((truth == 1).sum()), "non_progression_voxels": int((truth == 0).sum()),
            "accuracy": float((predicted == truth).mean()) if truth.size else None,
            "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)) if both else None,
            "auc": float(roc_auc_score(truth, score)) if both else None}


# --- one case -----------------------------------------------------------------------------------------------------


def run_invasion_files(case_folder: str | Path, out: str | Path, *, model_id: str = DEFAULT_INVASION_MODEL,
                       progress: Progress | None = None, cancel=None) -> dict:
    """The invasion map of one case folder into the new folder ``out`` (all or nothing); returns invasion.json's
    content. ``model_id``: a listed invasion model's id or a package zip/folder."""
    import numpy as np
    import SimpleITK as sitk

    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder, write_json, write_volume
    from GliomaProgressionLib.case.geometry import Volume, volume_from_sitk
    from GliomaProgressionLib.invasion.labels import training_labels
    from GliomaProgressionLib.invasion.pipeline import invasion_probability
    from GliomaProgressionLib.models.invasion_packages import resolve_invasion_model

    started = time.monotonic()
    out = check_new_output_folder(Path(out))
    report = progress or (lambda fraction, message: None)
    check_invasion_case(case_folder)
    package = resolve_invasion_model(model_id)  # a missing or tampered model fails before the long work
    model = package.model
    report(0.0, "Reading and preparing the case")
    inputs, prepared = prepare_invasion_case(case_folder, model.channels, model.spacing_mm, package.id,
                                             _sub_progress(progress, 0.0, 0.3))
    brain, brain_source = brain_on_reference(inputs, prepared)
    result = invasion_probability(prepared.channels, prepared.lesion, model, _sub_progress(progress, 0.3, 0.95),
                                  cancel, brain=brain)
    truth, source = progression_truth(inputs, prepared)
    evaluation = None
    if truth is not None:
        spacing = tuple(float(v) for v in prepared.reference.GetSpacing()[::-1])
        labels = training_labels(sitk.GetArrayFromImage(prepared.lesion), truth, spacing, brain)
        evaluation = {"truth": source, "truth_description": TRUTH_SOURCES[source],
                      **measures(result.probability, labels, model.threshold)}
    report(0.95, "Writing the invasion map")
    grid = volume_from_sitk(prepared.reference).ijk_to_ras
    data = {
        "software": "GliomaProgression invasion map (Yan et al. 2020, Sci Rep 10:9748)",
        "inputs": {"case": inputs.name},
        "model": package.info(),
        "channels": list(model.channels),
        "region": "the NEL plus a 20 mm shell around the tumour core (enhancing tumour, necrosis, cavity), without "
                  "the core, inside the brain",
        "brain": brain_source,
        "grid": f"CE-T1 resampled to {model.spacing_mm:g} mm isotropic voxels (the model's feature grid)",
        **{key: value for key, value in result.report.items() if key != "time_s"},
        "region_volume_ml": round(result.report["region_voxels"] * result.report["voxel_volume_ml"], 3),
        "label_volume_ml": round(result.report["label_voxels"] * result.report["voxel_volume_ml"], 3),
        "evaluation": evaluation,
        "warnings": list(prepared.qc.get("warnings", [])),
        "timings_s": {"map": result.report["time_s"], "total": round(time.monotonic() - started, 3)},
        "outputs": list(OUTPUT_FILES),
    }
    with staged_output_folder(out) as staging:
        write_volume(Volume(result.probability.astype(np.float32), grid), staging / PROBABILITY_FILE)
        write_volume(Volume(result.label.astype(np.uint8), grid), staging / LABEL_FILE)
        write_json(data, staging / INVASION_JSON)
    report(1.0, "Done")
    return data


def _sub_progress(progress: Progress | None, start: float, end: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(max(float(fraction), 0.0), 1.0), message)
