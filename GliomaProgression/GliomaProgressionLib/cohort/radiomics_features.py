"""nCBV radiomics of the enhancing and non-enhancing regions (``gliomaprog radiomics``), as in seed 001 (Shim 2021).

pyradiomics extracts the features configured in ``GliomaProgression/Resources/radiomics_ncbv.yaml`` (original +
wavelet images; first order, shape, GLCM, GLSZM, GLRLM, NGTDM, GLDM; fixed bin width) from the nCBV map inside
each region of the BraTS 2024 lesion labels: enhancing tumour (label 3) and non-enhancing lesion (label 2).

A case is a folder holding ``ncbv`` and ``lesion`` images on one grid (``.nii.gz``, ``.nii`` or ``.nrrd``), either
directly or in ``registered/`` (the layout ``gliomaprog run`` writes). One CSV row per case: the case name, per
region its voxel count, a warning (empty when the features were computed) and every feature as
``<region>_<image type>_<class>_<feature>``, then the extraction time in seconds. A region smaller than the YAML's
``minimumROISize`` (or one pyradiomics refuses) gets NaN features and the reason in its warning column.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REGIONS = {"enhancing": 3, "nonenhancing": 2}  # column prefix -> BraTS 2024 label (ET, SNFH)
SERIES_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
WAVELET_BANDS = tuple("".join(bands) for bands in itertools.product("LH", repeat=3))  # LLL ... HHH (3D, one level)
DEFAULT_MIN_VOXELS = 8  # when the YAML has no minimumROISize: below this, texture matrices are meaningless


def default_settings_file() -> Path:
    """The shipped YAML: ``GliomaProgression/Resources/radiomics_ncbv.yaml`` beside this package."""
    return Path(__file__).resolve().parents[2] / "Resources" / "radiomics_ncbv.yaml"


def make_extractor(settings_file: str | os.PathLike | None = None):
    """A pyradiomics extractor configured from the YAML (the shipped one by default), with its log quietened."""
    try:
        from radiomics import featureextractor
    except ImportError:
        raise ValueError("pyradiomics is not installed in this Python: install it (pip install pyradiomics==3.0.1; "
                         "in Slicer, the SlicerRadiomics extension or slicer.util.pip_install) to compute nCBV "
                         "features.") from None

    # pyradiomics logs every image type and class at INFO, and a whole traceback for a too-small mask.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    path = Path(settings_file) if settings_file else default_settings_file()
    if not path.is_file():
        raise ValueError(f"The radiomics settings file {path} does not exist.")
    try:
        return featureextractor.RadiomicsFeatureExtractor(str(path))
    except Exception as error:  # pyradiomics raises pykwalify/yaml errors of many types for a bad file
        raise ValueError(f"The radiomics settings file {path} is not valid: {' '.join(str(error).split())}") from None


def image_type_names(extractor) -> list[str]:
    """Names pyradiomics gives the derived images: ``original``, ``wavelet-LLH`` ... (only those two supported)."""
    names = []
    for image_type in extractor.enabledImagetypes:
        if image_type == "Original":
            names.append("original")
        elif image_type == "Wavelet":
            names += [f"wavelet-{band}" for band in WAVELET_BANDS]
        else:
            raise ValueError(f"Image type {image_type} is not supported by gliomaprog radiomics (Original, Wavelet).")
    return names


def expected_feature_names(extractor) -> list[str]:
    """Every feature the extractor will return, in a fixed order; shape only once (pyradiomics computes it on the
    original image only)."""
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    names = []
    for image in image_type_names(extractor):
        for feature_class, chosen in extractor.enabledFeatures.items():
            if feature_class.startswith("shape") and image != "original":
                continue
            features = chosen or [n for n, deprecated in classes[feature_class].getFeatureNames().items()
                                  if not deprecated]
            names += [f"{image}_{feature_class}_{feature}" for feature in features]
    return names


def locate_case_series(case_dir: Path) -> tuple[Path, Path]:
    """The nCBV and lesion files of a case folder (or of its ``registered/`` sub-folder)."""
    for folder in (case_dir, case_dir / "registered"):
        found = [next((folder / f"{name}{s}" for s in SERIES_SUFFIXES if (folder / f"{name}{s}").is_file()), None)
                 for name in ("ncbv", "lesion")]
        if all(found):
            return found[0], found[1]
    raise ValueError(f"The case folder {case_dir} holds no ncbv and lesion images (directly or in registered/).")


def read_case_series(case_dir: Path):
    """nCBV (float) and lesion labels (integers) as SimpleITK images, checked to share one grid."""
    import SimpleITK as sitk

    from GliomaProgressionLib.case.files import read_3d_image
    from GliomaProgressionLib.case.geometry import ijk_to_ras_from_sitk, same_grid

    ncbv_path, lesion_path = locate_case_series(case_dir)
    ncbv = sitk.Cast(read_3d_image(ncbv_path, "nCBV"), sitk.sitkFloat32)
    lesion = read_3d_image(lesion_path, "lesion")
    if not same_grid(ijk_to_ras_from_sitk(ncbv), ijk_to_ras_from_sitk(lesion), ncbv.GetSize(), lesion.GetSize()):
        raise ValueError(f"The nCBV {ncbv_path} and lesion {lesion_path} are not on the same grid.")
    # Rounded: labels resampled with a linear interpolator, or stored as float, would otherwise miss by 1e-6.
    labels = sitk.Cast(sitk.Round(sitk.Cast(lesion, sitk.sitkFloat32)), sitk.sitkUInt8)
    return ncbv, labels


def region_features(extractor, ncbv, labels, label: int, names: Sequence[str]) -> tuple[int, str, dict]:
    """Voxel count, warning ('' when computed) and ``{feature: value}`` of one region; NaN features when the region
    is too small or pyradiomics refuses it."""
    import SimpleITK as sitk

    mask = sitk.Cast(labels == label, sitk.sitkUInt8)
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    minimum = int(extractor.settings.get("minimumROISize") or DEFAULT_MIN_VOXELS)
    missing = {name: math.nan for name in names}
    if voxels < minimum:
        return voxels, f"region has {voxels} voxel(s), fewer than {minimum}: features not computed", missing
    try:
        result = extractor.execute(ncbv, mask, label=1)
    except ValueError as error:  # pyradiomics' own checks (e.g. a flat or 1-voxel-thick region)
        return voxels, f"pyradiomics refused the region: {' '.join(str(error).split())}", missing
    values = {name: _number(result.get(name)) for name in names}
    return voxels, "", values


def region_columns_from_csv(path: str | os.PathLike) -> tuple[dict[str, list], dict[str, str]]:
    """The one case of an ``extract`` CSV as table columns: ``feature`` (``voxels`` first, then every feature) and
    one column per region (NaN where the region was too small or refused), plus each region's warning."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != 1:
        raise ValueError(f"The feature table {path} holds {len(rows)} cases; one was expected.")
    row = rows[0]
    first = next(iter(REGIONS))
    bookkeeping = {f"{first}_voxels", f"{first}_warning"}
    names = [column[len(first) + 1:] for column in row if column.startswith(f"{first}_") and column not in bookkeeping]
    columns: dict[str, list] = {"feature": ["voxels", *names]}
    for region in REGIONS:
        columns[region] = [float(row[f"{region}_{name}"]) for name in ("voxels", *names)]
    return columns, {region: row[f"{region}_warning"] for region in REGIONS}


def _number(value) -> float:
    """pyradiomics returns 0-d numpy arrays; a feature it did not return is NaN."""
    return math.nan if value is None else float(np.asarray(value, dtype=float))


def case_row(case_dir: Path, extractor, names: Sequence[str],
             region_started: Callable[[int, str], None] | None = None) -> dict:
    """One CSV row: case name, per region voxels, warning and features, and the seconds the case took."""
    started = time.perf_counter()
    ncbv, labels = read_case_series(case_dir)
    row: dict = {"case": case_name(case_dir)}
    for index, (region, label) in enumerate(REGIONS.items()):
        if region_started:
            region_started(index, region)
        voxels, warning, values = region_features(extractor, ncbv, labels, label, names)
        row[f"{region}_voxels"], row[f"{region}_warning"] = voxels, warning
        row.update({f"{region}_{name}": value for name, value in values.items()})
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def case_name(case_dir: Path) -> str:
    return case_dir.resolve().name


def columns(names: Sequence[str]) -> list[str]:
    out = ["case"]
    for region in REGIONS:
        out += [f"{region}_voxels", f"{region}_warning"] + [f"{region}_{name}" for name in names]
    return out + ["seconds"]


def cohort_case_dirs(cohort: Path) -> list[Path]:
    """The sub-folders of a cohort folder (hidden ones excluded), in name order."""
    if not cohort.is_dir():
        raise ValueError(f"The cohort folder {cohort} does not exist.")
    found = [p for p in sorted(cohort.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not found:
        raise ValueError(f"The cohort folder {cohort} has no sub-folder (one per case).")
    return found


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr: full precision, values round-trip exactly
    return str(value)


def check_output_file(out: Path) -> Path:
    if out.exists():
        raise ValueError(f"The output file {out} already exists; choose a new file name.")
    if not out.name.endswith(".csv"):
        raise ValueError(f"The output file {out} must be a .csv file.")
    if not out.absolute().parent.is_dir():
        raise ValueError(f"The output file {out} cannot be written: the folder {out.absolute().parent} does not "
                         "exist.")
    return out


def write_csv(out: Path, header: Sequence[str], rows: list[dict]) -> None:
    """Written to a temporary file beside ``out`` and renamed: no half-written table."""
    from GliomaProgressionLib.case.files import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(row[column]) for column in header] for row in rows)
    write_text(buffer.getvalue(), out.absolute())


def extract_cohort(case_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                   settings_file: str | os.PathLike | None = None,
                   progress: Callable[[float, str], None] | None = None) -> list[dict]:
    """Features of every case into the new CSV ``out`` (written once all cases succeeded); returns the rows."""
    out = check_output_file(Path(out))
    case_dirs = [Path(p) for p in case_dirs]
    names_seen = [case_name(p) for p in case_dirs]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError("Two case folders have the same name; rows would be ambiguous.")
    for case_dir in case_dirs:
        locate_case_series(case_dir)  # a missing series fails before minutes of extraction
    extractor = make_extractor(settings_file)
    names = expected_feature_names(extractor)
    rows = []
    for index, case_dir in enumerate(case_dirs):
        def region_started(region_index: int, region: str, index=index, case_dir=case_dir) -> None:
            if progress:
                progress((index + region_index / len(REGIONS)) / len(case_dirs),
                         f"Case {index + 1}/{len(case_dirs)}: {case_name(case_dir)}, {region} region")

        rows.append(case_row(case_dir, extractor, names, region_started))
    write_csv(out, columns(names), rows)
    return rows
