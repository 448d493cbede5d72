"""Perfusion habitats on files (``gliomaprog habitats``; seed 002, Yun et al. 2023, AJNR): one case folder's DSC
series and lesion -> habitat label maps, fractions per lesion region and the mean curve of each pattern.

The lesion's contrast-enhancing part (CEL: BraTS label 3, enhancing tumour) and non-enhancing part (NEL: label 2,
SNFH) are carried onto the DSC grid, each DSC voxel taking the label filling most of its volume
(``lesion_by_volume_on_dsc``: a DSC curve is the mix of its voxel's tissues), either through the rigid registration
of the DSC series' pre-bolus image to CE-T1 that ``gliomaprog run`` uses (``case.preprocess``; the default) or in
scanner coordinates (right only when the patient did not move between the series). The habitats are computed there
(``DSCPerfusionLib.habitats.pipeline.compute_habitats`` with a habitat model from ``models.habitat_packages``) and
the label map is brought back onto the CE-T1 reference grid (CE-T1 resampled to 1 mm, as ``gliomaprog run``'s
``registered/``) by the same transform. habitats.json says which alignment was used.

Output folder (written completely or not at all)::

    habitats.nii.gz       habitat values (DSCPerfusionLib.habitats.labels.HABITATS; 0 = none) on the CE-T1 grid
    habitats_dsc.nii.gz   the same on the DSC grid, where they were computed
    patterns_dsc.nii.gz   the pattern index of each lesion voxel (habitats.json "patterns"; -1 = none), DSC grid
    pattern_curves.csv    the mean normalised curve of each pattern and of the reference tissues
    habitats.json         fractions, patterns, curves, model (id, sha256, synthetic), alignment, warnings

``gliomaprog run``, which already holds the DSC series, its registration and the lesion, calls the parts::

    package = resolve_habitat_model(model_id)                      # models.habitat_packages
    labels = lesion_by_volume_on_dsc(prepared.lesion, dsc_image, prepared.registrations["dsc"])  # case.preprocess
    cel, nel = lesion_masks_on_dsc(labels)
    result = compute_case_habitats(inputs.dsc, inputs.timing.times_s, cel, nel, package, progress)
    write_habitat_outputs(result, dsc_grid, prepared.reference, staging / HABITATS_FOLDER, package.info(),
                          registration=prepared.registrations["dsc"])
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy and SimpleITK are imported by the functions: the CLI imports this module to build its parser
    import numpy as np
    import SimpleITK as sitk

    from GliomaProgressionLib.case.geometry import Volume
    from GliomaProgressionLib.case.registration import RigidRegistration
    from GliomaProgressionLib.case.timing import AcquisitionTiming
    from GliomaProgressionLib.models.habitat_packages import HabitatModelPackage

from GliomaProgressionLib.models.habitat_packages import DEFAULT_HABITAT_MODEL  # noqa: F401 (re-exported)

Progress = Callable[[float, str], None]
HABITATS_FOLDER = "habitats"  # in a run's output folder (gliomaprog run)
HABITATS_FILE = "habitats.nii.gz"  # CE-T1 reference grid
HABITATS_DSC_FILE = "habitats_dsc.nii.gz"  # DSC grid
PATTERNS_DSC_FILE = "patterns_dsc.nii.gz"
HABITATS_JSON = "habitats.json"
PATTERN_CURVES_CSV = "pattern_curves.csv"
OUTPUT_FILES = (HABITATS_FILE, HABITATS_DSC_FILE, PATTERNS_DSC_FILE, PATTERN_CURVES_CSV, HABITATS_JSON)
ALIGNMENTS = {
    "registration": "lesion carried onto the DSC grid, and habitats back onto the CE-T1 grid, through the rigid "
                    "registration of the DSC pre-bolus image to CE-T1 (as gliomaprog run)",
    "scanner": "lesion carried onto the DSC grid, and habitats back onto the CE-T1 grid, in scanner coordinates "
               "(no registration: right only when the patient did not move between the series)",
}
DEFAULT_ALIGNMENT = "registration"
# What habitats.json holds at its top level; the library's report keeps the rest (reference parameters, timings).
TOP_LEVEL = ("fractions", "patterns", "pattern_curves", "reference_curves", "times_s", "warnings")
REFERENCE_GRID = "CE-T1 resampled to 1 mm isotropic voxels (linear): gliomaprog run's reference grid"


@dataclass
class HabitatInputs:
    """One case's DSC series with its CEL and NEL on the DSC grid, and what it took to put them there."""

    name: str
    dsc: Volume  # [t, k, j, i]
    timing: AcquisitionTiming
    cel: np.ndarray  # bool [k, j, i] on the DSC grid
    nel: np.ndarray
    reference: sitk.Image  # CE-T1 on the 1 mm reference grid
    registration: RigidRegistration | None  # DSC -> reference; None: scanner coordinates
    alignment: str
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dsc_grid(self) -> Volume:
        from GliomaProgressionLib.case.geometry import Volume

        return Volume(self.dsc.array[0], self.dsc.ijk_to_ras)


# --- reading a case ---------------------------------------------------------------------------------------------


def _lesion_parts() -> tuple[int, int]:
    """(CEL, NEL) BraTS 2024 label values: enhancing tumour and SNFH (CTVPlannerLib's vocabulary)."""
    from CTVPlannerLib.schemes import ENHANCING, SNFH

    return ENHANCING, SNFH


def _part_name(value: int) -> str:
    from CTVPlannerLib.lesion import LESION_SEGMENTS

    return LESION_SEGMENTS[value][0].lower()


def check_lesion_parts(labels: np.ndarray, where: str) -> None:
    """Both lesion regions habitats are found in must be there: one sentence naming what is missing."""
    for region, value in zip(("CEL", "NEL"), _lesion_parts()):
        if not (labels == value).any():
            raise ValueError(f"{where} has no {_part_name(value)} (label {value}, the {region}): perfusion habitats "
                             "need both a contrast-enhancing (CEL) and a non-enhancing lesion (NEL).")


def check_habitat_case(case_folder: str | Path, alignment: str = DEFAULT_ALIGNMENT) -> Path:
    """The quick checks, before anything is read: the folder exists and holds a DSC series; the alignment is known."""
    from GliomaProgressionLib.case.folder import has_series

    if alignment not in ALIGNMENTS:
        raise ValueError(f"The alignment {alignment!r} is unknown; use one of {', '.join(ALIGNMENTS)}.")
    folder = Path(case_folder)
    if not folder.is_dir():
        raise ValueError(f"The case folder {folder} does not exist.")
    if not has_series(folder, "dsc"):
        raise ValueError(f"Perfusion habitats need a DSC series; the case {folder.name} has none.")
    return folder


def read_habitat_inputs(case_folder: str | Path, alignment: str = DEFAULT_ALIGNMENT,
                        progress: Progress | None = None) -> HabitatInputs:
    """A case folder's CE-T1, lesion (BraTS labels of any year, brought to BraTS 2024) and DSC series, read by
    ``case.folder``'s readers, with the CEL and NEL carried onto the DSC grid."""
    from GliomaProgressionLib.case.folder import read_dsc_series, read_series
    from GliomaProgressionLib.case.preprocess import dsc_registration_image, lesion_by_volume_on_dsc
    from GliomaProgressionLib.case.registration import check_overlap, isotropic_reference, register_rigid

    report = progress or (lambda fraction, message: None)
    folder = check_habitat_case(case_folder, alignment)
    report(0.0, "Reading the CE-T1, lesion and DSC series")
    t1c, lesion = read_series(folder, "t1c"), read_series(folder, "lesion")
    import SimpleITK as sitk

    check_lesion_parts(sitk.GetArrayViewFromImage(lesion), f"The lesion of the case {folder.name}")
    dsc, timing = read_dsc_series(folder)
    dsc_image = dsc_registration_image(dsc)
    check_overlap(t1c, dsc_image, "DSC series")
    reference = isotropic_reference(t1c)
    registration = None
    if alignment == "registration":
        report(0.1, "Registering the DSC series to CE-T1")
        registration = register_rigid(reference, dsc_image, "DSC")
    labels = lesion_by_volume_on_dsc(lesion, dsc_image, registration)
    cel, nel = lesion_masks_on_dsc(labels, f"The lesion of the case {folder.name}, carried onto the DSC grid,")
    notes = list(registration.warnings) if registration is not None else []
    return HabitatInputs(folder.name, dsc, timing, cel, nel, reference, registration, alignment, notes=notes)


# --- one case -------------------------------------------------------------------------------------------------------


def run_habitats_files(case_folder: str | Path, out: str | Path, *, model_id: str = DEFAULT_HABITAT_MODEL,
                       alignment: str = DEFAULT_ALIGNMENT, progress: Progress | None = None) -> dict:
    """Perfusion habitats of one case folder into the new folder ``out`` (all or nothing); returns habitats.json's
    content. ``model_id``: a shipped habitat model's id or a package zip/folder."""
    from GliomaProgressionLib.case.files import check_new_output_folder
    from GliomaProgressionLib.models.habitat_packages import resolve_habitat_model

    started = time.monotonic()
    out = check_new_output_folder(Path(out))
    report = progress or (lambda fraction, message: None)
    check_habitat_case(case_folder, alignment)
    package = resolve_habitat_model(model_id)  # a missing or tampered model fails before the long work
    inputs = read_habitat_inputs(case_folder, alignment, progress)
    report(0.3, "Computing the perfusion habitats")
    result = compute_case_habitats(inputs.dsc, inputs.timing.times_s, inputs.cel, inputs.nel, package,
                                   progress=_sub_progress(progress, 0.3, 0.9))
    report(0.9, "Writing the habitat maps")
    return write_habitat_outputs(result, inputs.dsc_grid, inputs.reference, out, package.info(),
                                 registration=inputs.registration, alignment=inputs.alignment,
                                 warnings=inputs.notes, inputs={"case": inputs.name},
                                 elapsed_s=time.monotonic() - started)


def compute_case_habitats(dsc: Volume, times_s, cel: np.ndarray, nel: np.ndarray, package: HabitatModelPackage,
                          progress: Progress | None = None):
    """``compute_habitats`` on a DSC series (``Volume`` [t, k, j, i]) with CEL and NEL masks on its grid and a
    resolved model package: what ``gliomaprog run`` calls with the lesion it carried onto the DSC grid
    (``lesion_masks_on_dsc``)."""
    from DSCPerfusionLib.habitats.pipeline import compute_habitats

    return compute_habitats(dsc.array, times_s, cel, nel, package.model,
                            spacing_mm=tuple(float(s) for s in dsc.spacing[::-1]), ijk_to_ras=dsc.ijk_to_ras,
                            progress=progress)


def lesion_masks_on_dsc(labels_on_dsc: np.ndarray, where: str = "The lesion, on the DSC grid,") \
        -> tuple[np.ndarray, np.ndarray]:
    """(CEL, NEL) masks from BraTS 2024 labels on the DSC grid, refused in one sentence when either is missing."""
    check_lesion_parts(labels_on_dsc, where)
    cel_value, nel_value = _lesion_parts()
    return labels_on_dsc == cel_value, labels_on_dsc == nel_value


def _sub_progress(progress: Progress | None, start: float, end: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)


# --- writing ----------------------------------------------------------------------------------------------------------


def habitats_on_reference(labels: np.ndarray, dsc_grid: Volume, reference_grid: sitk.Image,
                          registration: RigidRegistration | None) -> sitk.Image:
    """The habitat label map (DSC grid) on the reference grid, nearest neighbour, through ``registration`` (the
    DSC series' registration to CE-T1; None: scanner coordinates)."""
    import numpy as np

    from GliomaProgressionLib.case.geometry import Volume, sitk_from_volume
    from GliomaProgressionLib.case.registration import resample_onto

    moving = sitk_from_volume(Volume(np.asarray(labels, np.uint8), dsc_grid.ijk_to_ras))
    return resample_onto(reference_grid, moving, registration, labels=True)


def pattern_curves_csv(times_s, pattern_curves: dict, reference_curves: dict, pattern_table: list[dict] = ()) -> str:
    """One row per curve point: time, then each pattern's ("CEL 1 perinecrotic": region, number, habitat) and each
    reference tissue's mean normalised curve."""
    habitat = {f"{row['region']} {row['pattern']}": row.get("habitat", "") for row in pattern_table}
    columns = {**{f"{name} {habitat.get(name, '')}".strip(): curve for name, curve in pattern_curves.items()},
               **{f"reference {name}": curve for name, curve in reference_curves.items()}}
    points = max((len(curve) for curve in columns.values()), default=0)
    times = list(times_s) if times_s is not None and len(times_s) == points else list(range(points))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["time_s" if len(times) == points and times_s is not None else "point", *columns])
    for index in range(points):
        writer.writerow([f"{float(times[index]):.4f}",
                         *(f"{float(curve[index]):.6f}" if index < len(curve) else "" for curve in columns.values())])
    return buffer.getvalue()


def _plain(value):
    """numpy scalars and arrays as JSON values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def _legend() -> list[dict]:
    from DSCPerfusionLib.habitats.labels import HABITATS

    return [{"value": h.value, "key": h.key, "name": h.name, "regions": list(h.regions)} for h in HABITATS]


def write_habitat_outputs(result, dsc_grid: Volume, reference_grid: sitk.Image, out: str | Path, model_info: dict, *,
                          registration: RigidRegistration | None = None, alignment: str = DEFAULT_ALIGNMENT,
                          warnings: list[str] | None = None, inputs: dict | None = None,
                          elapsed_s: float | None = None) -> dict:
    """Write a ``HabitatResult`` (computed on ``dsc_grid``) into the new folder ``out`` (all or nothing): the label
    map on both grids, the pattern map, the curves and habitats.json, whose content is returned.

    ``reference_grid``: the CE-T1 grid to show the habitats on (``PreparedCase.reference`` in a run);
    ``registration``: the DSC series' registration to it (``PreparedCase.registrations["dsc"]``), None for scanner
    coordinates, with ``alignment`` ("registration" or "scanner") saying which; ``model_info``:
    ``HabitatModelPackage.info()``."""
    import numpy as np

    from GliomaProgressionLib.case.files import staged_output_folder, write_image, write_json, write_text, write_volume
    from GliomaProgressionLib.case.geometry import Volume

    if alignment not in ALIGNMENTS:
        raise ValueError(f"The alignment {alignment!r} is unknown; use one of {', '.join(ALIGNMENTS)}.")
    labels = np.asarray(result.labels, np.uint8)
    on_reference = habitats_on_reference(labels, dsc_grid, reference_grid, registration)
    all_warnings = list(warnings or []) + list((result.report or {}).get("warnings", []))
    data = {
        "software": "GliomaProgression perfusion habitats (Yun et al. 2023, AJNR)",
        "inputs": inputs or {},
        "fractions": _plain(result.fractions),
        "patterns": _plain(result.pattern_table),
        "pattern_curves": _plain(result.pattern_curves),
        "reference_curves": _plain(result.reference_curves),
        "times_s": _plain(result.times_s),
        "legend": _legend(),
        "model": dict(model_info),
        "alignment": {"method": alignment, "description": ALIGNMENTS[alignment],
                      "registration": registration.summary() if registration is not None else None},
        "grids": {HABITATS_FILE: REFERENCE_GRID, HABITATS_DSC_FILE: "the DSC series' grid, where the habitats were "
                  "computed", PATTERNS_DSC_FILE: "the DSC series' grid"},
        "voxels": {"dsc_grid": {str(v): int((labels == v).sum()) for v in np.unique(labels) if v},
                   "reference_grid": _counts(on_reference)},
        "report": _plain({k: v for k, v in (result.report or {}).items() if k not in TOP_LEVEL}),
        "warnings": all_warnings,
        "outputs": list(OUTPUT_FILES),
    }
    if elapsed_s is not None:
        data["total_time_s"] = round(elapsed_s, 3)
    with staged_output_folder(out) as staging:
        write_volume(Volume(labels, dsc_grid.ijk_to_ras), staging / HABITATS_DSC_FILE)
        write_volume(Volume(np.asarray(result.patterns, np.int16), dsc_grid.ijk_to_ras), staging / PATTERNS_DSC_FILE)
        write_image(on_reference, staging / HABITATS_FILE)
        write_text(pattern_curves_csv(result.times_s, result.pattern_curves, result.reference_curves,
                                      result.pattern_table), staging / PATTERN_CURVES_CSV)
        write_json(data, staging / HABITATS_JSON)
    return data


def _counts(image) -> dict[str, int]:
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    return {str(int(v)): int((array == v).sum()) for v in np.unique(array) if v}


def fractions_table(data: dict) -> str:
    """habitats.json's fractions as a plain-text table (one line per region and habitat), for the command line."""
    from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY

    lines = []
    for region, fractions in data["fractions"].items():
        for key, fraction in fractions.items():
            name = HABITAT_BY_KEY[key].name if key in HABITAT_BY_KEY else key
            lines.append(f"{region}\t{name}\t{100 * float(fraction):5.1f} %")
    return "\n".join(lines)
