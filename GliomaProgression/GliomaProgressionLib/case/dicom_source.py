"""The DICOM series a case's CE-T1 was read from, kept so that the RT objects drawn on the case refer to it.

A planning system files an RTSTRUCT or SEG under the patient, study and frame of reference it names, and shows its
contours on the images it references. When the CE-T1 is a DICOM folder, the export takes all of these from that
series (``CTVPlannerLib.dicom_export`` with ``source=``) and writes no MR copy of its own.

The targets are computed on the 1 mm reference grid (``preprocess``), not on the acquired slices. A contour that
references an image must lie in that image's plane (PS3.3 C.8.8.6: the Contour Image Sequence lists the images
"containing the contour"), and a SEG frame derived from a source image has that image's plane position. So each
structure is sampled at the source voxel centres (``mask_on_source``): the contour on a source slice is the
structure's cross-section at that slice, and every contour references the slice it lies on.

The headers are read with pydicom (without pixel data); the instances are matched to the slices of the CE-T1 as
SimpleITK read it, so the RT objects and the images the pipeline used are the same grid, or the case is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from CTVPlannerLib.dicom_export import check_source_series, match_source_series

from GliomaProgressionLib.case.folder import locate_series
from GliomaProgressionLib.case.geometry import ijk_to_ras_from_sitk
from GliomaProgressionLib.case.registration import resample_onto


@dataclass
class SourceSeries:
    """The CE-T1 DICOM series: its instances (headers only) in the slice order k of ``grid``, the CE-T1 as read."""

    folder: Path
    datasets: list[Dataset]
    grid: sitk.Image

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(reversed(self.grid.GetSize()))

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return ijk_to_ras_from_sitk(self.grid)


def _image_headers(folder: Path) -> list[Dataset]:
    """The headers of the DICOM images in ``folder`` (files that are not DICOM are skipped, as GDCM skips them)."""
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds:
            headers.append(ds)
    return headers


def read_source_series(case_folder: str | Path, t1c: sitk.Image) -> SourceSeries | None:
    """The CE-T1's DICOM series when the case gives CE-T1 as a DICOM folder, else None.

    Refused, in one sentence, when RT objects could not reference it: no single study or frame of reference, or
    instances that are not the slices of ``t1c`` (the CE-T1 as ``folder.read_case`` read it).
    """
    folder = locate_series(Path(case_folder), "t1c")
    if folder is None or not folder.is_dir():
        return None
    headers = _image_headers(folder)
    try:
        check_source_series(headers)
        ordered = match_source_series(headers, tuple(reversed(t1c.GetSize())), ijk_to_ras_from_sitk(t1c))
    except ValueError as error:
        reason = str(error).rstrip(".").replace("The DICOM source series", "it")
        raise ValueError(f"The CE-T1 DICOM folder {folder.name}/ cannot carry the RT structures: {reason}.") from None
    return SourceSeries(folder, ordered, t1c)


def mask_on_source(mask: np.ndarray, grid: sitk.Image, source: SourceSeries) -> np.ndarray:
    """A mask ``[k, j, i]`` of ``grid`` sampled at the source voxel centres: linear interpolation, inside from
    0.5, so that a boundary between two grid voxels falls half-way, as the contours of the mask itself do."""
    image = sitk.GetImageFromArray(np.asarray(mask, np.float32))
    image.CopyInformation(grid)
    return sitk.GetArrayFromImage(resample_onto(source.grid, image, None)) >= 0.5


def labels_on_source(labels: sitk.Image, source: SourceSeries) -> np.ndarray:
    """A label image (any grid aligned with CE-T1, e.g. the case's lesion) on the source grid, nearest label."""
    return sitk.GetArrayFromImage(resample_onto(source.grid, labels, None, labels=True))
