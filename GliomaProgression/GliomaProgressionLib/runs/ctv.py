"""CTV proposals and their metrics on files: ``gliomaprog ctv`` and ``gliomaprog metrics``.

Every input is read with SimpleITK (NIfTI, NRRD...). All masks must be on the lesion's voxel grid; with
``--resample`` the other masks are resampled onto it by nearest neighbour in scanner coordinates, which is right
only when they are already aligned with the lesion (same session, or registered beforehand): resampling is not
registration. Results go to a new folder, written completely or not at all.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# numpy, SimpleITK and CTVPlannerLib are imported inside the functions that use them: building the command line
# parser (every gliomaprog call) then stays as quick as the standard library.
if TYPE_CHECKING:
    import numpy as np

    from CTVPlannerLib.schemes import Margins, Plan, PlanningInputs

    from GliomaProgressionLib.case.geometry import Volume

Progress = Callable[[float, str], None]
NOTICE = "Target-volume proposals for review and editing by a radiation oncologist; not a treatment plan."
METRIC_NOTE = ("Metrics within the brain: sensitivity |R n T|/|R|, specificity |B \\ (R u T)|/|B \\ R|, Dice, HD95 "
               "(mm, symmetric, surface based), Tversky (alpha 0.02 on FP, beta 0.98 on FN), PCC (beta = 1/(f+1), "
               "alpha = 1 - beta, f = |R|/|B|), volumes in mL, pattern (central >= 95%, in-field >= 80%, "
               "marginal >= 20%, distant < 20% of R inside T). Empty R: sensitivity, PCC 1.0, pattern 'none'; "
               "HD95 null when exactly one of T and R is empty (infinite).")


# --- reading ---------------------------------------------------------------------------------------------


class NotOnReferenceGrid(ValueError):
    """A mask on another voxel grid than the reference's, and resampling was not allowed: a caller that can
    allow it (the command line's --resample) may say how."""


def on_grid(path: Path, reference: Volume, what: str, resample: bool, labels: bool = True) -> np.ndarray:
    """The image at ``path`` as an array on the reference grid (checked, or resampled when allowed)."""
    import numpy as np
    import SimpleITK as sitk

    from GliomaProgressionLib.case.files import read_3d_volume
    from GliomaProgressionLib.case.geometry import Volume, same_grid, sitk_from_volume

    volume = read_3d_volume(path, what)
    if same_grid(volume.ijk_to_ras, reference.ijk_to_ras, volume.array.shape, reference.array.shape):
        return volume.array
    if not resample:
        raise NotOnReferenceGrid(
            f"The {what} {path} is not on the lesion's voxel grid (shape {volume.array.shape} vs "
            f"{reference.array.shape}, or another position/orientation); resample it onto the lesion grid, or allow "
            "resampling by nearest neighbour (only if the two are aligned).")
    grid = sitk_from_volume(Volume(np.zeros(reference.array.shape, np.uint8), reference.ijk_to_ras))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    image = sitk_from_volume(volume)
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def mask_on_grid(path: Path, reference: Volume, what: str, resample: bool, allow_empty: bool = False) -> np.ndarray:
    import numpy as np

    array = on_grid(path, reference, what, resample)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"The {what} {path} holds non-finite values; a mask must be 0 outside, nonzero inside.")
    mask = array != 0
    if not mask.any() and not allow_empty:
        raise ValueError(f"The {what} {path} is empty" + (" on the lesion grid." if resample else "."))
    return mask


# --- ctv -------------------------------------------------------------------------------------------------


def parse_schemes(values: list[str] | None, has_progression: bool) -> tuple[tuple[str, ...], list[str]]:
    """Scheme names, each value one name or several separated by commas; 'all' is every scheme whose inputs
    are given. Returns (schemes, notes)."""
    from CTVPlannerLib.schemes import NEEDS_PROGRESSION, SCHEMES

    names = [name.strip().lower() for value in (values or ["all"]) for name in value.split(",") if name.strip()]
    notes = []
    if "all" in names:
        names = [n for n in names if n != "all"] + [s for s in SCHEMES if has_progression or s not in NEEDS_PROGRESSION]
        if not has_progression:
            notes.append("The ai and boost schemes were skipped: they need a predicted-progression mask.")
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        raise ValueError(f"Unknown scheme {unknown[0]!r}; choose from {', '.join(SCHEMES)} or all.")
    return tuple(dict.fromkeys(names)), notes


def read_inputs(lesion: Path, brain: Path, progression: Path | None, barriers: Path | None, oars: list[Path],
                image: Path | None, resample: bool) -> tuple[Volume, PlanningInputs]:
    import numpy as np

    from CTVPlannerLib.grid import check_grid
    from CTVPlannerLib.schemes import PlanningInputs, check_lesion_labels

    from GliomaProgressionLib.case.files import read_3d_volume

    labels = read_3d_volume(lesion, "lesion")
    check_grid(labels.ijk_to_ras, f"The lesion {lesion}")
    check_lesion_labels(labels.array, f"The lesion {lesion}")
    inputs = PlanningInputs(
        lesion_labels=labels.array,
        brain=mask_on_grid(brain, labels, "brain mask", resample),
        ijk_to_ras=labels.ijk_to_ras,
        progression=mask_on_grid(progression, labels, "predicted progression", resample, allow_empty=True)
        if progression else None,
        barriers=mask_on_grid(barriers, labels, "barrier mask", resample, allow_empty=True) if barriers else None,
        oars={Path(p).name.split(".")[0]: mask_on_grid(p, labels, "organ-at-risk mask", resample) for p in oars},
        image=on_grid(image, labels, "image", resample, labels=False).astype(np.float32) if image else None,
    )
    if len(inputs.oars) != len(oars):
        raise ValueError("Two organ-at-risk masks have the same file name; rename one.")
    return labels, inputs


def run_ctv_files(lesion: Path, brain: Path, out: Path, schemes: list[str] | None = None,
                  margins: Margins | None = None, geodesic: bool = False, progression: Path | None = None,
                  barriers: Path | None = None, oars: list[Path] | None = None, image: Path | None = None,
                  recurrence: Path | None = None, resample: bool = False,
                  progress: Progress | None = None, inputs_under: Path | None = None) -> dict:
    """Compute the targets and write ``ctv_<key>.nii.gz`` (``ptv_<key>.nii.gz``), ``barriers.nii.gz`` when
    barriers were used, and ``ctv.json`` to the new folder ``out``. Returns the report written to ctv.json.

    ``inputs_under``: the folder the inputs are recorded relative to (a run's output folder, whose staging path
    is gone once the run is in place); otherwise they are recorded as given."""
    import numpy as np

    from CTVPlannerLib.schemes import Margins, plan_targets

    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder, write_json, write_volume
    from GliomaProgressionLib.case.geometry import Volume

    margins = margins or Margins()
    started = time.monotonic()
    check_new_output_folder(out)
    chosen, notes = parse_schemes(schemes, progression is not None)
    labels, inputs = read_inputs(lesion, brain, progression, barriers, oars or [], image, resample)
    recurrence_mask = mask_on_grid(recurrence, labels, "recurrence", resample, allow_empty=True) if recurrence else None
    plan = plan_targets(inputs, chosen, margins, geodesic, progress)
    def text(path: Path | None) -> str | None:
        return _text(path, inputs_under)

    report = _report(plan, labels, inputs, recurrence_mask, {
        "lesion": text(lesion), "brain": text(brain), "progression": text(progression), "barriers": text(barriers),
        "oars": [text(p) for p in oars or []], "image": text(image), "recurrence": text(recurrence),
    }, chosen, margins, geodesic, resample, notes + plan.notes)
    with staged_output_folder(out) as staging:
        for target in plan.targets:
            write_volume(Volume(target.mask.astype(np.uint8), labels.ijk_to_ras), staging / _file_name(target.key))
        if plan.barriers.source != "none":
            write_volume(Volume(plan.barriers.mask.astype(np.uint8), labels.ijk_to_ras), staging / "barriers.nii.gz")
        report["total_time_s"] = round(time.monotonic() - started, 3)
        write_json(report, staging / "ctv.json")
    return report


def _text(path: Path | None, under: Path | None = None) -> str | None:
    if path is None:
        return None
    return Path(path).relative_to(under).as_posix() if under is not None else str(path)


def _file_name(key: str) -> str:
    return f"{key}.nii.gz" if key.startswith("ptv_") else f"ctv_{key}.nii.gz"


def _report(plan: Plan, labels: Volume, inputs: PlanningInputs, recurrence: np.ndarray | None, paths: dict,
            schemes, margins: Margins, geodesic: bool, resample: bool, notes: list[str]) -> dict:
    from CTVPlannerLib.grid import spacing_kji, voxel_volume_ml
    from CTVPlannerLib.metrics import json_safe, target_metrics

    spacing = spacing_kji(labels.ijk_to_ras)
    voxel_ml = voxel_volume_ml(labels.ijk_to_ras)
    targets = []
    for target in plan.targets:
        entry = {"key": target.key, "scheme": target.scheme, "name": target.name, "kind": target.kind,
                 "file": _file_name(target.key), "volume_ml": round(target.volume_ml(labels.ijk_to_ras), 3),
                 "description": target.description}
        if recurrence is not None:
            entry["metrics"] = json_safe(target_metrics(target.mask, recurrence, inputs.brain, spacing, voxel_ml))
        targets.append(entry)
    return {
        "software": "GliomaProgression CTVPlanner",
        "notice": NOTICE,
        "inputs": paths,
        "parameters": {"schemes": list(schemes), "geodesic": geodesic, "margins": asdict(margins),
                       "resample": resample},
        "grid": {"shape_kji": list(labels.array.shape), "spacing_kji_mm": [round(float(s), 4) for s in spacing]},
        "barriers": {"source": plan.barriers.source, "description": plan.barriers.description,
                     "file": "barriers.nii.gz" if plan.barriers.source != "none" else None},
        "targets": targets,
        "metric_definitions": METRIC_NOTE if recurrence is not None else None,
        "notes": notes,
    }


# --- metrics ---------------------------------------------------------------------------------------------


def metrics_files(target: Path, recurrence: Path, brain: Path, resample: bool = False) -> dict:
    """Metrics of one target mask against a recurrence mask within the brain (all on the target's grid)."""
    import numpy as np

    from CTVPlannerLib.grid import check_grid, spacing_kji, voxel_volume_ml
    from CTVPlannerLib.metrics import json_safe, target_metrics

    from GliomaProgressionLib.case.files import read_3d_volume

    reference = read_3d_volume(target, "target")
    check_grid(reference.ijk_to_ras, f"The target {target}")
    if not np.all(np.isfinite(reference.array)):
        raise ValueError(f"The target {target} holds non-finite values; a mask must be 0 outside, nonzero inside.")
    brain_mask = mask_on_grid(brain, reference, "brain mask", resample)
    recurrence_mask = mask_on_grid(recurrence, reference, "recurrence", resample, allow_empty=True)
    values = target_metrics(reference.array != 0, recurrence_mask, brain_mask, spacing_kji(reference.ijk_to_ras),
                            voxel_volume_ml(reference.ijk_to_ras))
    return {"target": str(target), "recurrence": str(recurrence), "brain": str(brain), **json_safe(values)}


