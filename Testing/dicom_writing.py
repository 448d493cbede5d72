"""DICOM series of test images, written with SimpleITK's writer (test data only; reading is the product's job)."""

from __future__ import annotations

import contextlib
import locale
from pathlib import Path

import SimpleITK as sitk


@contextlib.contextmanager
def _locale_kept():
    """SimpleITK's GDCM writer, once slicer-core is loaded (conftest), leaves the process locale at "C": every later
    ``read_text()`` would then decode as ASCII. Restore it."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


# Every MR image has a frame of reference (Type 1); the test series share one, as the series of one session do.
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.4"
# What a scanner writes about the patient and the study (DICOM tag -> value), for the tests that check that RT
# objects stay with the study they were drawn on; a non-ASCII name checks the character set on the way.
PATIENT_STUDY_TAGS = {
    "0008|0005": "ISO_IR 192", "0010|0010": "Müller^Jürgen", "0010|0020": "MRN-004217", "0010|0030": "19580312",
    "0010|0040": "M", "0010|1010": "066Y", "0008|0020": "20240311", "0008|0030": "093012",
    "0008|0050": "ACC-88121", "0020|0010": "ST-7", "0008|0090": "Referrer^Rita", "0008|1030": "MR brain follow-up",
}


def write_dicom_series(image: sitk.Image, folder: Path, extra_tags: dict | None = None, start: int = 1,
                       series_uid: str = "1.2.826.0.1.3680043.8.498.1") -> None:
    """One file per slice, as SimpleITK's DICOM series example does: position, orientation and spacing per slice."""
    with _locale_kept():
        _write_slices(image, folder, extra_tags or {}, start, series_uid)


def _write_slices(image: sitk.Image, folder: Path, extra_tags: dict, start: int, series_uid: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.8f}" for v in (direction[0], direction[3], direction[6],
                                                    direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        plane = sitk.Cast(image[:, :, k], sitk.sitkInt16)
        tags = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.8.498.2", "0020|000e": series_uid,
                "0020|0037": orientation, "0018|0050": f"{image.GetSpacing()[2]:.6f}",
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0013": str(start + k), "0008|0018": f"1.2.826.0.1.3680043.8.498.3.{start + k}",
                "0020|0052": FRAME_OF_REFERENCE_UID, **extra_tags}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{start + k:05d}.dcm"))
        writer.Execute(plane)


def write_dicom_dsc(series: sitk.Image, folder: Path, tr_ms: float, te_ms: float,
                    extra_tags: dict | None = None) -> None:
    """A 4D image as one DICOM series: each time point's slices tagged with its Temporal Position Identifier."""
    frames = series.GetSize()[3]
    for t in range(frames):
        frame = series[:, :, :, t]
        tags = {"0020|0100": str(t + 1), "0018|0080": f"{tr_ms:g}", "0018|0081": f"{te_ms:g}", **(extra_tags or {})}
        write_dicom_series(frame, folder, tags, start=1 + t * frame.GetDepth())
