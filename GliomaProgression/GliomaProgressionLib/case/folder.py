"""One patient's case folder, read and checked before any long computation.

A case folder holds ``t1c``, ``flair``, ``dsc`` (4D, with ``dsc.json`` unless the DICOM headers give TR and TE;
optional: without it a case has no nCBV, ``with_dsc=False``) and ``lesion`` (BraTS 2024 labels aligned with
CE-T1), each as a NIfTI/NRRD file (``t1c.nii.gz``) or as a folder of DICOM files (``t1c/``); optionally
``brain`` (a brain mask aligned with CE-T1) and ``recurrence`` (the recurrence at follow-up, aligned with CE-T1:
it is resampled, not registered).

A BraTS challenge folder is a case folder too: ``<ID>-t1c``, ``<ID>-t2f``, ``<ID>-seg`` (2023/2024) or
``<ID>_t1ce``, ``<ID>_flair``, ``<ID>_seg`` (2021 and earlier) ``.nii.gz`` are read as t1c, flair and lesion (the
other sequences are not used). Their labels are brought to the BraTS 2024 convention (``brats_labels``: the rule
for the one ambiguous case is there) and the case's ``notes`` say what was done.

DICOM folders are converted with SimpleITK's ``ImageSeriesReader`` (GDCM); the few tags needed to put the frames
of a DSC series in order (temporal position, slice position) and its timing (TR, TE) are read with SimpleITK's
``ImageFileReader``. Nothing here parses DICOM by hand. NIfTI files are checked to hold every voxel their header
announces (ITK would read a truncated one, zero-filled, without a word).

Every problem ends in a ``ValueError`` of one sentence naming the case, the series and what is wrong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.channels import (DIFFUSION_FILES, DIFFUSIVITIES, DTI_SERIES, MAP_PREFIX, channel_modality,
                                                check_channel_name, check_fa, diffusivity_scale, read_gradients,
                                                tensor_maps)
from GliomaProgressionLib.case.files import check_nifti_complete, read_image  # noqa: F401 (re-exported)
from GliomaProgressionLib.case.files import check_image, check_signal, itk_reason, library_messages, refuse_broken_link
from GliomaProgressionLib.case.geometry import Volume, check_3d, sitk_from_volume, volume_from_sitk
from GliomaProgressionLib.case.timing import AcquisitionTiming, read_timing
from GliomaProgressionLib.case.preprocess import NEL_LABEL, SERIES_SUFFIXES
from GliomaProgressionLib.case.registration import check_overlap

REQUIRED_SERIES = {"t1c": "CE-T1", "flair": "FLAIR", "dsc": "DSC series", "lesion": "lesion segmentation"}
# BraTS file-name endings per series (``<ID><ending>.nii.gz``): 2023/2024 first, then 2021 (and 2018-2020).
BRATS_ENDINGS = {"t1c": ("-t1c", "_t1ce"), "flair": ("-t2f", "_flair"), "lesion": ("-seg", "_seg")}
BRATS_2021_ENDINGS = ("_t1ce", "_flair", "_seg")
BRATS_SUFFIXES = (".nii.gz", ".nii")
BRATS_2021_ENHANCING = 4  # BraTS 2021 "ET"; BraTS 2024 writes enhancing tumour as 3 and uses 4 for the cavity
BRATS_2024_ENHANCING = 3
OPTIONAL_SERIES = {"brain": "brain mask", "recurrence": "recurrence mask"}
# The series whose intensities are used: one that holds a single value throughout has nothing to register.
SIGNAL_SERIES = ("t1c", "flair")
# DICOM tags, as SimpleITK names them
TAG_TEMPORAL_POSITION = "0020|0100"
TAG_ACQUISITION_NUMBER = "0020|0012"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_REPETITION_TIME = "0018|0080"  # ms
TAG_ECHO_TIME = "0018|0081"  # ms
# What the consensus-protocol check reads from a DICOM DSC series, under the sidecar's (BIDS) names.
PROTOCOL_TAGS = {"FlipAngle": "0018|1314", "MagneticFieldStrength": "0018|0087"}  # degrees, T


@dataclass
class CaseInputs:
    """The images of one case as read (each on its own grid), with where each came from."""

    name: str
    folder: Path
    t1c: sitk.Image
    flair: sitk.Image
    lesion: sitk.Image
    dsc: Volume | None  # [t, k, j, i]; None only when read with with_dsc=False
    timing: AcquisitionTiming | None
    brain: sitk.Image | None = None
    recurrence: sitk.Image | None = None
    sources: dict[str, str] = field(default_factory=dict)  # series -> file or "DICOM folder <path>"
    converted: dict[str, sitk.Image] = field(default_factory=dict)  # series read from DICOM (written to OUT)
    notes: list[str] = field(default_factory=list)  # what was done to the input that the user must know (labels)
    # Extra channels as read, each on its own grid: adc, fa, md (files or fitted from a DTI series), map_<name>.
    maps: dict[str, sitk.Image] = field(default_factory=dict)


# --- locating series ------------------------------------------------------------------------------------


def locate_series(folder: Path, name: str) -> Path | None:
    """``<folder>/<name>.<suffix>`` for any supported suffix, or ``<folder>/<name>/`` (DICOM), or the series' BraTS
    file (``<ID>-t1c.nii.gz``...), or None."""
    for suffix in SERIES_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        refuse_broken_link(candidate, _series_words(name))
        if candidate.is_file():
            return candidate
    candidate = folder / name
    refuse_broken_link(candidate, _series_words(name))
    return candidate if candidate.is_dir() else brats_file(folder, name)


def _series_words(name: str) -> str:
    return REQUIRED_SERIES.get(name) or OPTIONAL_SERIES.get(name) or name


def brats_file(folder: Path, name: str) -> Path | None:
    """The one file of ``folder`` named as BraTS names series ``name`` (t1c, flair, lesion), or None."""
    # "._x" files are macOS metadata in archives; a link whose target is gone is kept, to be refused as one.
    found = sorted({path for ending in BRATS_ENDINGS.get(name, ()) for suffix in BRATS_SUFFIXES
                    for path in Path(folder).glob(f"*{ending}{suffix}")
                    if (path.is_file() or not path.exists()) and not path.name.startswith(".")})
    for path in found:
        refuse_broken_link(path, _series_words(name))
    if len(found) > 1:
        raise ValueError(f"The case folder {folder} holds {len(found)} {REQUIRED_SERIES[name]} files with BraTS "
                         f"names ({', '.join(p.name for p in found)}); keep one case per folder.")
    return found[0] if found else None


def has_series(folder: str | Path, name: str) -> bool:
    return locate_series(Path(folder), name) is not None


def _required(folder: Path, name: str) -> Path:
    path = locate_series(folder, name)
    if path is None:
        brats = "".join(f", <ID>{ending}.nii.gz" for ending in BRATS_ENDINGS.get(name, ()))
        raise ValueError(f"The case folder {folder} has no {REQUIRED_SERIES[name]} ({name}.nii.gz, {name}.nrrd{brats} "
                         f"or a {name}/ folder of DICOM files).")
    return path


# --- DICOM ----------------------------------------------------------------------------------------------


# GDCM and ITK print warnings of their own for folders without a series or with unreadable files: every call
# into them below runs inside ``library_messages``, so that the user gets the one sentence.


def _series_files(folder: Path, what: str) -> list[str]:
    """The files of the one DICOM series in ``folder`` (GDCM's order: by slice position)."""
    with library_messages():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ValueError(f"The {what} folder {folder} holds no DICOM image series.")
    if len(series_ids) > 1:
        raise ValueError(f"The {what} folder {folder} holds {len(series_ids)} DICOM series; keep one series per "
                         "folder.")
    with library_messages():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


def _read_files(files: list[str], what: str, folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with library_messages():
            image = reader.Execute()
    except RuntimeError as error:
        raise ValueError(f"The {what} DICOM folder {folder} could not be read ({itk_reason(error)}).") from None
    return check_image(image, f"The {what} DICOM folder {folder}")


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with library_messages():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"The DICOM file {path} could not be read ({itk_reason(error)}).") from None
    return reader


def _tag(header: sitk.ImageFileReader, tag: str) -> str | None:
    return header.GetMetaData(tag).strip() if header.HasMetaDataKey(tag) else None


def read_dicom_volume(folder: Path, what: str) -> sitk.Image:
    """A 3D DICOM series (one series per folder) as a SimpleITK image."""
    files = _series_files(folder, what)
    positions = {_tag(_header(f), TAG_POSITION) for f in files}
    if len(positions) < len(files):
        raise ValueError(f"The {what} folder {folder} repeats slice positions (a time series?); a 3D series is "
                         "needed.")
    return _read_files(files, what, folder)


def _slice_order(header: sitk.ImageFileReader) -> float:
    """Position of a slice along its normal (mm): the order in which ImageSeriesReader must get the files."""
    orientation = np.array([float(v) for v in (_tag(header, TAG_ORIENTATION) or "1\\0\\0\\0\\1\\0").split("\\")])
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.array([float(v) for v in (_tag(header, TAG_POSITION) or "0\\0\\0").split("\\")])
    return float(position @ normal)


def _frame_key(header: sitk.ImageFileReader) -> float | None:
    value = _tag(header, TAG_TEMPORAL_POSITION) or _tag(header, TAG_ACQUISITION_NUMBER)
    return float(value) if value else None


def read_dicom_dsc(folder: Path) -> tuple[Volume, float | None, float | None]:
    """A DSC time series stored as DICOM (one file per slice and time point): the 4D volume, TR and TE in s.

    Frames are grouped by Temporal Position Identifier (else Acquisition Number); each frame is read with
    ImageSeriesReader in slice-position order.
    """
    files = _series_files(folder, "DSC")
    headers = {path: _header(path) for path in files}
    frames: dict[float, list[str]] = defaultdict(list)
    for path, header in headers.items():
        key = _frame_key(header)
        if key is None:
            raise ValueError(f"The DSC folder {folder} has files without a temporal position or acquisition "
                             "number; the time frames cannot be told apart.")
        frames[key].append(path)
    if len(frames) < 2:
        raise ValueError(f"The DSC folder {folder} holds a single time point; a DSC series (4D) is needed.")
    sizes = {len(paths) for paths in frames.values()}
    if len(sizes) != 1:
        raise ValueError(f"The DSC folder {folder} has time points with different numbers of slices {sorted(sizes)}.")
    volumes = []
    for key in sorted(frames):
        ordered = sorted(frames[key], key=lambda path: _slice_order(headers[path]))
        volumes.append(_read_files(ordered, "DSC", folder))
    series = volume_from_sitk(sitk.JoinSeries(volumes))
    first = headers[files[0]]
    tr_ms, te_ms = _tag(first, TAG_REPETITION_TIME), _tag(first, TAG_ECHO_TIME)
    return series, float(tr_ms) / 1000.0 if tr_ms else None, float(te_ms) / 1000.0 if te_ms else None


# --- file integrity -------------------------------------------------------------------------------------


def read_series_file(path: Path, what: str) -> sitk.Image:
    return read_image(path, what)  # checks NIfTI completeness too


# --- reading one case -------------------------------------------------------------------------------------


@dataclass
class _Provenance:
    """Where each series came from, and the ones converted from DICOM."""

    sources: dict[str, str] = field(default_factory=dict)
    converted: dict[str, sitk.Image] = field(default_factory=dict)


def _read_3d(path: Path, name: str, what: str, provenance: _Provenance) -> sitk.Image:
    if path.is_dir():
        image = read_dicom_volume(path, what)
        provenance.converted[name] = image
        provenance.sources[name] = f"DICOM folder {path}"
    else:
        image = read_series_file(path, what)
        provenance.sources[name] = str(path)
    check_3d(image, f"The {what} {path}")
    if name in SIGNAL_SERIES:
        check_signal(image, f"The {what} {path}")
    return image


def _read_dsc(path: Path, folder: Path, provenance: _Provenance,
              need_echo_time: bool = True) -> tuple[Volume, AcquisitionTiming]:
    sidecar = folder / "dsc.json"
    refuse_broken_link(sidecar, "DSC sidecar")  # else it would read as "no dsc.json"
    tr_s = te_s = None
    if path.is_dir():
        series, tr_s, te_s = read_dicom_dsc(path)
        provenance.converted["dsc"] = sitk_from_volume(series, time_spacing=tr_s or 1.0)
        provenance.sources["dsc"] = f"DICOM folder {path}"
    else:
        image = read_series_file(path, "DSC series")
        if image.GetDimension() != 4:
            raise ValueError(f"The DSC series {path} is a {image.GetDimension()}D image; a 4D series (x, y, z, "
                             "time) is needed.")
        series = volume_from_sitk(image)
        provenance.sources["dsc"] = str(path)
    check_signal(series, f"The DSC series {path}")
    if not sidecar.is_file() and (tr_s is None or (te_s is None and need_echo_time)):
        raise ValueError(f"The case folder {folder} has no dsc.json with the DSC timing (EchoTime and "
                         "RepetitionTime or FrameTimes, in seconds).")
    timing = read_timing(series.array.shape[0], sidecar if sidecar.is_file() else None,
                         None if sidecar.is_file() else tr_s, None if sidecar.is_file() else te_s, need_echo_time)
    return series, timing


def dsc_sidecar_header(folder: Path) -> dict | None:
    """What the protocol check reads of the case's DSC acquisition (flip angle, field strength, doses): the whole
    sidecar ``dsc.json``, over the flip angle and field strength of a DICOM series' headers; None when neither
    has anything."""
    from GliomaProgressionLib.case.files import read_json_object

    folder = Path(folder)
    sidecar = folder / "dsc.json"
    written = read_json_object(sidecar, "DSC sidecar") if sidecar.is_file() else None
    series = locate_series(folder, "dsc")
    from_dicom = dicom_protocol_fields(series) if series is not None and series.is_dir() else {}
    return {**from_dicom, **written} if written is not None else (from_dicom or None)


def dicom_protocol_fields(folder: Path) -> dict[str, float]:
    """Flip angle (degrees) and field strength (T) from the first file of a DICOM DSC series, where present."""
    header = _header(_series_files(folder, "DSC")[0])
    fields = {}
    for name, tag in PROTOCOL_TAGS.items():
        try:
            fields[name] = float(_tag(header, tag))
        except (TypeError, ValueError):  # absent or not a number: the check says "unknown"
            continue
    return fields


# --- BraTS label conventions ---------------------------------------------------------------------------------


def brats_labels(lesion: sitk.Image, path: Path) -> tuple[sitk.Image, list[str]]:
    """The lesion in BraTS 2024 labels (1 NETC, 2 SNFH, 3 ET, 4 RC), and a note of what was read how.

    The file name says which challenge wrote it and the labels confirm it:

    - ``lesion.*`` (this project's name) is BraTS 2024 by definition: never changed;
    - BraTS 2021 names (``_seg``): 1 NCR, 2 ED, 4 ET; 4 becomes 3. A label 3, which 2021 never writes, means the
      file holds 2023/2024 labels after all: kept as they are;
    - BraTS 2023/2024 names (``-seg``): 2023 GLI writes 1, 2, 3 and 2024 adds 4 for a resection cavity: kept as
      they are, except label 4 without any 3, which is ambiguous (a 2021 segmentation under the new names, or a
      2024 post-treatment case with a cavity and no enhancement). It is read as 2021 (4 becomes 3): this project
      models pre-operative cases, which have no cavity; the CTVs do not change either way (enhancing tumour and
      cavity both belong to the GTV core); the note says how to keep the labels (name the file lesion.nii.gz).
    """
    stem = path.name.split(".")[0]
    if path.is_dir() or not any(stem.endswith(ending) for ending in BRATS_ENDINGS["lesion"]):
        return lesion, []
    values = set(np.unique(sitk.GetArrayViewFromImage(lesion)).tolist())
    year_2021 = stem.endswith(BRATS_2021_ENDINGS)
    if BRATS_2024_ENHANCING in values:
        if year_2021:
            return lesion, [f"{path.name} has BraTS 2021 file names but holds label 3, which BraTS 2021 never "
                            "uses: its labels were read as BraTS 2023/2024 labels, unchanged."]
        return lesion, [f"{path.name}: BraTS 2023/2024 labels (1 necrosis, 2 SNFH, 3 enhancing, 4 resection "
                        "cavity), used unchanged."]
    if BRATS_2021_ENHANCING not in values:
        return lesion, [f"{path.name}: BraTS labels 1 (necrosis) and 2 (SNFH/oedema), the same in every BraTS "
                        "convention; no enhancing tumour labelled."]
    mapped = _relabelled(lesion, BRATS_2021_ENHANCING, BRATS_2024_ENHANCING)
    why = ("BraTS 2021 file names" if year_2021 else
           "label 4 and no label 3 under BraTS 2023/2024 file names, so read as BraTS 2021; if label 4 is a "
           "resection cavity (BraTS 2024 post-treatment), name the file lesion.nii.gz to keep the labels as they are")
    return mapped, [f"{path.name}: BraTS 2021 labels (1 necrotic core, 2 oedema, 4 enhancing tumour; {why}): label 4 "
                    "was mapped to 3, the BraTS 2024 enhancing-tumour label."]


def _relabelled(labels: sitk.Image, old: int, new: int) -> sitk.Image:
    array = sitk.GetArrayFromImage(labels)
    array[array == old] = new
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(labels)
    return image


def _check_lesion(lesion: sitk.Image, path_text: str) -> None:
    from CTVPlannerLib.schemes import check_lesion_labels

    labels = check_lesion_labels(sitk.GetArrayViewFromImage(lesion), f"The lesion {path_text}")
    if not (labels == NEL_LABEL).any():
        raise ValueError(f"The lesion {path_text} has no non-enhancing part (label 2, SNFH): there is nothing to "
                         "predict progression in.")


def _check_brain(brain: sitk.Image | None, path_text: str | None) -> None:
    """An empty brain mask would pass the space check and leave every later step without a brain."""
    if brain is not None and not sitk.GetArrayViewFromImage(brain).any():
        raise ValueError(f"The brain mask {path_text} is empty (every voxel is 0).")


def _check_space(inputs: CaseInputs) -> None:
    """Every series must overlap CE-T1 in scanner space (same session); registration can fix small motion only."""
    dsc_frame = None if inputs.dsc is None else sitk_from_volume(Volume(inputs.dsc.array[0], inputs.dsc.ijk_to_ras))
    others = {"FLAIR": inputs.flair, "DSC series": dsc_frame, "lesion": inputs.lesion, "brain mask": inputs.brain,
              "recurrence mask": inputs.recurrence,
              **{f"{channel_modality(name)} map": image for name, image in inputs.maps.items()}}
    for what, image in others.items():
        if image is not None:
            check_overlap(inputs.t1c, image, what)


def read_series(folder: str | Path, name: str) -> sitk.Image:
    """One 3-D series of a case folder ("t1c", "flair", "lesion"), stored as ``read_case`` accepts it."""
    folder = Path(folder)
    what = REQUIRED_SERIES.get(name) or OPTIONAL_SERIES[name]
    path = _required(folder, name)
    image = _read_3d(path, name, what, _Provenance())
    return brats_labels(image, path)[0] if name == "lesion" else image


def read_dsc_series(folder: str | Path, need_echo_time: bool = True) -> tuple[Volume, AcquisitionTiming]:
    """The DSC series of a case folder and its timing, as ``read_case`` reads them.

    ``need_echo_time=False`` asks for frame times only (to show the series), so a sidecar without EchoTime does.
    """
    folder = Path(folder)
    return _read_dsc(_required(folder, "dsc"), folder, _Provenance(), need_echo_time)


def read_case(folder: str | Path, recurrence: str | Path | None = None, with_dsc: bool = True) -> CaseInputs:
    """Read and check every series of a case folder (``recurrence`` overrides ``<folder>/recurrence``).

    With ``with_dsc=False`` the DSC series is neither needed nor read (CE-T1 + FLAIR work: no nCBV). A BraTS
    segmentation's labels are brought to BraTS 2024 (``brats_labels``), said so in ``notes``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The case folder {folder} does not exist.")
    wanted = [name for name in REQUIRED_SERIES if with_dsc or name != "dsc"]
    paths = {name: _required(folder, name) for name in wanted}
    provenance = _Provenance()
    t1c = _read_3d(paths["t1c"], "t1c", "CE-T1", provenance)
    flair = _read_3d(paths["flair"], "flair", "FLAIR", provenance)
    lesion, notes = brats_labels(_read_3d(paths["lesion"], "lesion", "lesion", provenance), paths["lesion"])
    _check_lesion(lesion, provenance.sources["lesion"])
    dsc, timing = _read_dsc(paths["dsc"], folder, provenance) if "dsc" in paths else (None, None)
    optional = {name: locate_series(folder, name) for name in OPTIONAL_SERIES}
    if recurrence is not None:
        optional["recurrence"] = Path(recurrence)
        if not optional["recurrence"].exists():
            raise ValueError(f"The recurrence mask {recurrence} does not exist.")
    extra = {name: _read_3d(path, name, OPTIONAL_SERIES[name], provenance) if path else None
             for name, path in optional.items()}
    _check_brain(extra["brain"], provenance.sources.get("brain"))
    maps = read_channel_maps(folder, provenance, notes)
    inputs = CaseInputs(folder.name, folder, t1c, flair, lesion, dsc, timing, extra["brain"], extra["recurrence"],
                        provenance.sources, provenance.converted, notes, maps)
    _check_space(inputs)
    return inputs


# --- extra channels: diffusion maps, a DTI series, any registered map ----------------------------------------


def map_series_names(folder: Path) -> list[str]:
    """The ``map_<name>`` series of a case folder (files or DICOM folders), by name; a badly named one is refused."""
    names = set()
    for path in Path(folder).glob(f"{MAP_PREFIX}*"):
        if path.name.startswith("."):
            continue
        name = path.name.split(".")[0] if path.is_file() or not path.exists() else path.name
        if path.is_file() and not path.name.endswith(SERIES_SUFFIXES):
            continue
        check_channel_name(name, f"The map {path}")
        names.add(name)
    return sorted(names)


def read_channel_maps(folder: Path, provenance: _Provenance, notes: list[str]) -> dict[str, sitk.Image]:
    """Every extra channel the case folder holds (``case.channels``), each on its own grid: diffusivities in
    10^-6 mm^2/s; FA and MD fitted from ``dwi`` when their files are absent."""
    maps = {}
    for name in (*DIFFUSION_FILES, *map_series_names(folder)):
        path = locate_series(folder, name)
        if path is not None:
            maps[name] = _read_map(path, name, provenance, notes)
    dwi = locate_series(folder, DTI_SERIES)
    if dwi is not None:
        fitted = _tensor_maps_from_dwi(folder, dwi, provenance)
        kept = [name for name in fitted if name in maps]
        for name, image in fitted.items():
            maps.setdefault(name, image)
        notes.append(f"FA and MD were fitted from the DTI series {dwi.name} (dipy, log-linear least squares)"
                     + (f"; the {' and '.join(kept)} file{'s' if len(kept) > 1 else ''} of the folder were used "
                        "instead of the fit" if kept else "") + ".")
    return maps


def read_map_file(path: Path, name: str, notes: list[str]) -> sitk.Image:
    """One channel map given on its own (``gliomaprog predict --map``), read and checked as a case folder's."""
    if not Path(path).exists():
        raise ValueError(f"The {channel_modality(name)} map {path} does not exist.")
    return _read_map(Path(path), name, _Provenance(), notes)


def _read_map(path: Path, name: str, provenance: _Provenance, notes: list[str]) -> sitk.Image:
    what = f"{channel_modality(name)} map"
    image = sitk.Cast(_read_3d(path, name, what, provenance), sitk.sitkFloat32)
    check_signal(image, f"The {what} {path}")
    array = sitk.GetArrayViewFromImage(image)
    if name in DIFFUSIVITIES:
        factor, note = diffusivity_scale(array, None, f"The {what} {path.name}")
        if note:
            notes.append(note)
            image = image * factor
    if name == "fa":
        check_fa(array, f"The FA map {path}")
    return image


def _tensor_maps_from_dwi(folder: Path, path: Path, provenance: _Provenance) -> dict[str, sitk.Image]:
    """FA and MD of a DTI series with its ``dwi.bval`` / ``dwi.bvec``, on the series' grid."""
    from dipy.segment.mask import median_otsu

    what = f"the DTI series {path.name}"
    if path.is_dir():
        raise ValueError(f"The DTI series {path} is a DICOM folder; convert it to dwi.nii.gz with dwi.bval and "
                         "dwi.bvec (e.g. dcm2niix), which keep the b-vectors in the image's frame.")
    image = read_series_file(path, "DTI series")
    if image.GetDimension() != 4:
        raise ValueError(f"The DTI series {path} is a {image.GetDimension()}D image; a 4D series (one volume per "
                         "gradient) is needed.")
    provenance.sources[DTI_SERIES] = str(path)
    series = volume_from_sitk(image)
    gradient_files = [folder / f"{DTI_SERIES}.{ending}" for ending in ("bval", "bvec")]
    absent = [f.name for f in gradient_files if not f.is_file()]
    if absent:
        raise ValueError(f"The case folder {folder} has the DTI series {path.name} but no {' or '.join(absent)} "
                         "(FSL text files of b-values and b-vectors).")
    bvals, bvecs = read_gradients(*gradient_files, series.array.shape[0], what)
    b0 = np.asarray(series.array)[bvals < 50].mean(axis=0)
    _, brain = median_otsu(b0, median_radius=2, numpass=1)
    maps = tensor_maps(series.array, bvals, bvecs, brain, what)
    grid = Volume(b0, series.ijk_to_ras)
    return {name: sitk_from_volume(Volume(array, grid.ijk_to_ras)) for name, array in maps.items()}
