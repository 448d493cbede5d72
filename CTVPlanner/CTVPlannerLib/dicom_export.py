"""DICOM export of target volumes: RT Structure Set (RTSTRUCT) and Segmentation (SEG), with the referenced MR
series written as DICOM when the image has no DICOM source.

Who and which study: the RTSTRUCT and the SEG take the Patient and Study modules, the frame of reference and the
instance references from the images they are drawn on. With a DICOM ``source`` those are the source's own
instances, so a planning system files the structures with the study they were drawn on; nothing else is written.
Without one, the image is written as an MR series under ``PatientStudy``: an anonymous patient with a generated
ID and new study and frame-of-reference UIDs (the caller never passes file or folder names as identities).

- The MR series and the RTSTRUCT are built with pydicom from the IOD modules of the standard (highdicom has no
  RTSTRUCT; the RTSTRUCT starts from its ``SOPClass`` to copy the Patient and Study modules as the SEG does. No
  maintained RTSTRUCT writer fits: rt-utils 1.2.7 swaps the two PixelSpacing values, which misplaces contours on
  non-square pixels, and pulls in the GUI build of OpenCV). Contours are marching-squares outlines
  (scikit-image) at the 0.5 level of each slice's mask, so each polygon passes half-way between inside and
  outside voxel centres and encloses exactly the mask's voxel centres; holes are separate contours on the same
  plane (the even-odd convention most planning systems read). Points are patient LPS coordinates in mm.
- The SEG is built with highdicom (binary, one segment per structure, empty frames omitted).

Geometry: arrays ``[k, j, i]`` with an IJK-to-RAS matrix; slice k becomes one image with rows along j and
columns along i: ImageOrientationPatient = LPS directions of i then j, ImagePositionPatient = LPS position of
voxel (0, 0, k), PixelSpacing = (spacing along j, spacing along i).
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import measure

from .grid import check_grid, ijk_to_lps

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The SOP class RT Structure Sets traditionally reference their study by (Detached Study Management, retired
# but what planning systems expect in RT Referenced Study Sequence).
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
MANUFACTURER = "GliomaProgression"
SOFTWARE = "CTVPlanner 0.1.0"
# A vertex whose two edges turn by less than this (cross product of the unit edge directions) is dropped: marching
# squares puts one vertex per pixel edge, most of them inside straight runs, which lose nothing by going.
COLLINEAR_TOLERANCE = 1e-6
CONTOUR_DATA = 0x30060050
RT_ROI_TYPES = ("CTV", "PTV", "GTV", "ORGAN", "AVOIDANCE", "EXTERNAL", "CONTROL")


@dataclass
class Structure:
    """One structure to export: a mask on the image grid, a name, an RGB colour (0-1) and an RT ROI type."""

    name: str
    mask: np.ndarray
    colour: tuple[float, float, float] = (1.0, 0.8, 0.2)
    kind: str = "CTV"
    description: str = ""


def generated_patient_id() -> str:
    """A new patient ID for an image without a DICOM source: unique, so that a planning system never files two
    anonymous patients as one, and derived from nothing about the patient."""
    return f"GP-{uuid.uuid4().hex[:16].upper()}"


@dataclass
class PatientStudy:
    """Who and which study an MR series written for an image without DICOM source belongs to: by default an
    anonymous patient with a generated ID, a new study and a new frame of reference."""

    patient_name: str = "Anonymous^"  # a family name alone, as the caret says
    patient_id: str = field(default_factory=generated_patient_id)
    study_instance_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    study_description: str = "CTV proposals"
    study_id: str = "1"


def _ds(value: float) -> str:
    """A decimal string (DS) within the 16 characters DICOM allows (10 significant digits)."""
    return format(float(value), ".10g")


# --- output folder ---------------------------------------------------------------------------------------


def _staged(out: Path):
    """A hidden folder beside ``out``; ``_publish`` renames it to ``out`` once complete."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"The export folder {out} already exists and is not empty; choose a new folder.")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))


def _publish(staging: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()
    os.replace(staging, out)


# --- common modules --------------------------------------------------------------------------------------


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _file_dataset(sop_class: str, sop_instance: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _patient_study(ds: Dataset, study: PatientStudy, date: str, time: str) -> None:
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = study.study_id
    ds.StudyDescription = study.study_description
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = SOFTWARE


# --- MR series -------------------------------------------------------------------------------------------


def _plane_geometry(ijk_to_ras: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """ImageOrientationPatient, PixelSpacing, the IJK-to-LPS matrix and the spacing (i, j, k)."""
    lps = ijk_to_lps(ijk_to_ras)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])
    return [_ds(v) for v in orientation.round(8)], [_ds(spacing[1]), _ds(spacing[0])], lps, spacing


def _stored_pixels(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pixels as 16-bit integers; images that are not whole numbers in the int16 range are rescaled to 0-4095
    (the series serves as the geometric reference of the structures; say so in its description)."""
    image = np.asarray(image)
    whole = np.issubdtype(image.dtype, np.integer) or np.all(np.mod(image, 1) == 0)
    if whole and image.min() >= -32768 and image.max() <= 32767:
        return image.astype(np.int16), False
    low, high = float(np.min(image)), float(np.max(image))
    scaled = (image - low) / (high - low) * 4095.0 if high > low else np.zeros(image.shape)
    return np.rint(scaled).astype(np.int16), True


def build_mr_series(image: np.ndarray, ijk_to_ras: np.ndarray, study: PatientStudy,
                    description: str = "Reference MR for CTV proposals") -> list[Dataset]:
    """One MR Image Storage instance per slice k of ``image`` ``[k, j, i]`` (signed 16 bit)."""
    check_grid(ijk_to_ras, "The reference image")
    pixels, rescaled = _stored_pixels(image)
    orientation, pixel_spacing, lps, spacing = _plane_geometry(ijk_to_ras)
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    date, time = _now()
    series_uid = generate_uid()
    low, high = np.percentile(pixels, [1, 99]) if pixels.size else (0, 1)
    datasets = []
    for k in range(pixels.shape[0]):
        ds = _file_dataset(MR_IMAGE_STORAGE, generate_uid())
        _patient_study(ds, study, date, time)
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = description + (" (intensities rescaled)" if rescaled else "")
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = date, time
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ImageOrientationPatient = orientation
        position = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds.ImagePositionPatient = [_ds(v) for v in position.round(6)]
        ds.SliceLocation = _ds(np.dot(normal, position).round(6))
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.PatientPosition = "HFS"  # not known from a NIfTI image; head first supine is the rule for brain MR
        ds.Laterality = ""
        ds.ScanningSequence = "RM"  # research mode: the acquisition is not known here
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.WindowCenter = _ds((low + high) / 2)
        ds.WindowWidth = _ds(max(high - low, 1))
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        datasets.append(ds)
    return datasets


def _one_value(datasets: list[Dataset], keyword: str) -> str | None:
    """The value every instance gives for ``keyword``, or None when one lacks it (or leaves it empty) or they
    differ."""
    values = {str(ds.get(keyword) or "") for ds in datasets}
    return values.pop() if len(values) == 1 and "" not in values else None


def check_source_series(datasets: list[Dataset]) -> None:
    """The source must be one series of one study in one frame of reference, for RT objects to reference it."""
    if not datasets:
        raise ValueError("The DICOM source series holds no image.")
    for keyword, what in (("SeriesInstanceUID", "series"), ("StudyInstanceUID", "study"),
                          ("FrameOfReferenceUID", "frame of reference")):
        if _one_value(datasets, keyword) is None:
            raise ValueError(f"The DICOM source series does not give one {what} ({keyword}) for all its images.")
    if len({ds.get("SOPInstanceUID") for ds in datasets}) != len(datasets):
        raise ValueError("The DICOM source series has images without, or with repeated, SOP Instance UIDs.")


def match_source_series(datasets: list[Dataset], shape: tuple[int, int, int], ijk_to_ras: np.ndarray,
                        tolerance_mm: float = 0.01) -> list[Dataset]:
    """The source series' instances in slice order k of the grid, after checking they are that grid."""
    orientation, pixel_spacing, lps, _ = _plane_geometry(ijk_to_ras)
    if len(datasets) != shape[0]:
        raise ValueError(f"The DICOM source series has {len(datasets)} images, the volume {shape[0]} slices.")
    by_slice: dict[int, Dataset] = {}
    ras_to_lps_inverse = np.linalg.inv(lps)
    orientation, pixel_spacing = [float(v) for v in orientation], [float(v) for v in pixel_spacing]
    for ds in datasets:
        same_plane = (int(ds.Rows), int(ds.Columns)) == shape[1:] and np.allclose(
            [float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4) and np.allclose(
            [float(v) for v in ds.PixelSpacing], pixel_spacing, atol=tolerance_mm)
        if not same_plane:
            raise ValueError("The DICOM source series does not have the volume's image plane geometry.")
        ijk = ras_to_lps_inverse @ np.array([*map(float, ds.ImagePositionPatient), 1.0])
        k = int(round(ijk[2]))
        if not np.allclose(ijk[:3], [0, 0, k], atol=1e-3) or k in by_slice or not 0 <= k < shape[0]:
            raise ValueError("The DICOM source series' slice positions do not match the volume's slices.")
        by_slice[k] = ds
    return [by_slice[k] for k in range(shape[0])]


# --- RTSTRUCT --------------------------------------------------------------------------------------------


def without_collinear_vertices(outline: np.ndarray) -> np.ndarray:
    """The closed outline ``outline`` (first vertex not repeated) without the vertices that lie on the straight
    line through their neighbours: the same polygon, exactly."""
    edges = np.roll(outline, -1, axis=0) - outline
    directions = edges / np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-12)
    incoming = np.roll(directions, 1, axis=0)
    turn = incoming[:, 0] * directions[:, 1] - incoming[:, 1] * directions[:, 0]
    straight = (np.abs(turn) < COLLINEAR_TOLERANCE) & (np.sum(incoming * directions, axis=1) > 0)
    return outline[~straight]


def slice_contours(mask_2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (marching squares, level 0.5) of a 2D mask ``[j, i]`` as arrays of (i, j) vertices,
    first vertex not repeated."""
    padded = np.pad(np.asarray(mask_2d, dtype=np.float32), 1)
    outlines = []
    for contour in measure.find_contours(padded, 0.5):
        contour = without_collinear_vertices(contour[:-1]) - 1.0
        if len(contour) >= 3:
            outlines.append(contour[:, ::-1])  # (row j, column i) -> (i, j)
    return outlines


def _contour_data(points: np.ndarray) -> RawDataElement:
    """Contour Data as the bytes of its DS values (three decimals, um: each within the 16 characters of a DS).

    Written raw, as pydicom keeps what it reads: a list of strings would become one validated DSfloat object per
    coordinate, ~2 s for the contours of a small case.
    """
    value = "\\".join(f"{v:.3f}" for v in np.asarray(points, float).ravel()).encode("ascii")
    value += b" " * (len(value) % 2)  # DICOM values have even length, DS padded with a space
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(value), value, 0, False, True)


def _contour_item(points_ijk: np.ndarray, lps: np.ndarray, image: Dataset) -> Dataset:
    points = (np.c_[points_ijk, np.ones(len(points_ijk))] @ lps.T)[:, :3]
    item = Dataset()
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    item.ContourImageSequence = Sequence([reference])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item[CONTOUR_DATA] = _contour_data(points)
    return item


def _structure_contours(mask: np.ndarray, lps: np.ndarray, images: list[Dataset]) -> list[Dataset]:
    items = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        for outline in slice_contours(mask[k]):
            points = np.c_[outline, np.full(len(outline), float(k))]
            items.append(_contour_item(points, lps, images[k]))
    return items


def _referenced_frame(images: list[Dataset]) -> Dataset:
    contour_images = []
    for image in images:
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        contour_images.append(reference)
    series = Dataset()
    series.SeriesInstanceUID = images[0].SeriesInstanceUID
    series.ContourImageSequence = Sequence(contour_images)
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = images[0].StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = images[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study_item])
    return frame


def build_rtstruct(structures: list[Structure], images: list[Dataset], ijk_to_ras: np.ndarray,
                   label: str = "CTV proposals") -> Dataset:
    """An RT Structure Set referencing ``images`` (the slices k of the grid, in order), in their patient, study
    and frame of reference."""
    lps = ijk_to_lps(ijk_to_ras)
    first = images[0]
    date, time = _now()
    ds = hd.SOPClass(study_instance_uid=first.StudyInstanceUID, series_instance_uid=generate_uid(), series_number=100,
                     sop_instance_uid=generate_uid(), sop_class_uid=RT_STRUCTURE_SET_STORAGE, instance_number=1,
                     modality="RTSTRUCT", manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
                     series_description=label[:64], software_versions=SOFTWARE, specific_character_set="ISO_IR 192")
    # Patient, General Study and Patient Study modules as the images have them (what highdicom's SEG copies too):
    # the structure set is part of the study it was drawn on.
    ds.copy_patient_and_study_information(first)
    ds.OperatorsName = ""
    # The Frame of Reference module belongs to the RT Structure Set IOD since DICOM 2023.
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(images)])
    rois, contours, observations = [], [], []
    for number, structure in enumerate(structures, start=1):
        rois.append(_roi_item(number, structure, first.FrameOfReferenceUID))
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [int(round(255 * c)) for c in structure.colour]
        items = _structure_contours(np.asarray(structure.mask, bool), lps, images)
        if items:
            contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observations.append(_observation_item(number, structure))
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return ds


def _roi_item(number: int, structure: Structure, frame_of_reference_uid: str) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    item.ROIName = structure.name[:64]
    if structure.description:
        item.ROIDescription = structure.description[:1024]
    item.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
    return item


def _observation_item(number: int, structure: Structure) -> Dataset:
    if structure.kind not in RT_ROI_TYPES:
        raise ValueError(f"The structure '{structure.name}' has RT ROI type {structure.kind!r}; expected one of "
                         f"{', '.join(RT_ROI_TYPES)}.")
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIInterpretedType = structure.kind
    item.ROIInterpreter = ""
    return item


# --- SEG -------------------------------------------------------------------------------------------------

_PROPERTY_TYPES = {"CTV": codes.SCT.ClinicalTargetVolume, "PTV": codes.SCT.PlanningTargetVolume,
                   "GTV": codes.SCT.GrossTumorVolume, "ORGAN": codes.SCT.Organ}


# Type 2 attributes highdicom's SEG reads from the first source image (present, maybe empty, in a conformant MR;
# some anonymisers drop them).
_SEG_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime")


def _with_type_2_present(images: list[Dataset]) -> list[Dataset]:
    missing = [keyword for keyword in _SEG_TYPE_2 if keyword not in images[0]]
    if not missing:
        return images
    first = copy.deepcopy(images[0])  # the caller's dataset stays as it was read
    for keyword in missing:
        setattr(first, keyword, "")
    return [first, *images[1:]]


def build_seg(structures: list[Structure], images: list[Dataset]) -> hd.seg.Segmentation:
    """A binary DICOM Segmentation of the non-empty structures on ``images`` (slices k in order)."""
    kept = [s for s in structures if np.asarray(s.mask).any()]
    if not kept:
        raise ValueError("Every structure is empty: there is nothing to write in a DICOM SEG.")
    algorithm = hd.AlgorithmIdentificationSequence(name="CTVPlanner", family=codes.cid7162.MorphologicalOperations,
                                           version=SOFTWARE)
    descriptions = []
    for number, structure in enumerate(kept, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=structure.name[:64],
            segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
            segmented_property_type=_PROPERTY_TYPES.get(structure.kind, codes.SCT.ClinicalTargetVolume),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm))
    pixels = np.stack([np.asarray(s.mask, bool) for s in kept], axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=_with_type_2_present(images), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=101,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="CTVPlanner", software_versions=SOFTWARE, device_serial_number="0",
        series_description="CTV proposals (SEG)", omit_empty_frames=True,
        specific_character_set="ISO_IR 192")  # the structure names need not fit the source's character set


# --- export ----------------------------------------------------------------------------------------------


def _check_structures(structures: list[Structure], shape: tuple) -> None:
    if not structures:
        raise ValueError("There is no structure to export.")
    names = [s.name for s in structures]
    if len(set(names)) != len(names):
        raise ValueError("Two structures have the same name; the names must be unique in a structure set.")
    for structure in structures:
        if np.shape(structure.mask) != tuple(shape):
            raise ValueError(f"The structure '{structure.name}' has shape {np.shape(structure.mask)}, the image "
                             f"{tuple(shape)}.")


def export_dicom(out: str | os.PathLike, structures: list[Structure], image: np.ndarray, ijk_to_ras: np.ndarray,
                 study: PatientStudy | None = None, formats=("rtstruct", "seg"),
                 source: list[Dataset] | None = None) -> dict[str, list[Path]]:
    """Write the structures as DICOM into the new folder ``out``: ``RTSTRUCT.dcm`` and/or ``SEG.dcm``, plus the
    referenced MR series in ``MR/`` when no ``source`` series (pydicom datasets of the image) is given.

    With a ``source``, the structures must be on its grid (``image`` then only gives the shape): the objects take
    its patient, study and frame of reference and reference its instances; ``study`` is not used. Without one,
    ``image`` is written as the MR series, under ``study`` (default: a generated anonymous identity).

    Nothing appears at ``out`` unless every file was written. Returns the written paths by kind.
    """
    out = Path(out)
    image = np.asarray(image)
    formats = tuple(formats)
    if not formats or any(f not in ("rtstruct", "seg") for f in formats):
        raise ValueError(f"The export formats must be 'rtstruct' and/or 'seg', got {formats}.")
    check_grid(ijk_to_ras, "The reference image")
    _check_structures(structures, image.shape)
    if source is not None:
        check_source_series(list(source))
        images, study_written = match_source_series(list(source), image.shape, ijk_to_ras), False
    else:
        images, study_written = build_mr_series(image, ijk_to_ras, study or PatientStudy()), True
    staging = _staged(out)
    try:
        written: dict[str, list[Path]] = {}
        if study_written:
            (staging / "MR").mkdir()
            for k, ds in enumerate(images):
                ds.save_as(staging / "MR" / f"MR_{k + 1:04d}.dcm", enforce_file_format=True)
            written["mr"] = [out / "MR" / f"MR_{k + 1:04d}.dcm" for k in range(len(images))]
        if "rtstruct" in formats:
            build_rtstruct(structures, images, ijk_to_ras).save_as(staging / "RTSTRUCT.dcm", enforce_file_format=True)
            written["rtstruct"] = [out / "RTSTRUCT.dcm"]
        if "seg" in formats:
            build_seg(structures, images).save_as(staging / "SEG.dcm")
            written["seg"] = [out / "SEG.dcm"]
        _publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return written


def read_series(folder: str | os.PathLike) -> list[Dataset]:
    """Every DICOM instance with pixel data in ``folder`` (one level), read with pydicom."""
    datasets = []
    for path in sorted(Path(folder).iterdir()):
        try:
            ds = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, IsADirectoryError, PermissionError):
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise ValueError(f"The folder {folder} holds no DICOM image.")
    return datasets
