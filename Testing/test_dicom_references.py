"""RTSTRUCT and SEG stay with the study they were drawn on (issue 18, item 12).

From a case whose CE-T1 is a DICOM series, the structures must be filed under the source's patient and study, in
its frame of reference, on its instances (no MR copy of our own). The export is called as ``gliomaprog run``
calls it, on a small case with stand-in targets on the 1 mm reference grid, and read back with pydicom and
highdicom against the source files. From NIfTI, the identity is generated and never the case folder's name; and
report.json records no absolute input path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CTVPlannerLib.dicom_export import PatientStudy
from CTVPlannerLib.schemes import gtv_masks
from dicom_writing import PATIENT_STUDY_TAGS, write_dicom_series
from GliomaProgressionLib.case.folder import read_case
from GliomaProgressionLib.case.registration import isotropic_reference, resample_onto
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.runs import chain
from test_ctv_dicom import DCIODVFY, _read_rtstruct

# A folder name that reads like a patient: it must end up nowhere in the exported objects.
FOLDER_NAME = "Doe_Jane_19600101"
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                  "ReferringPhysicianName", "StudyDescription")


# --- the case and its export ------------------------------------------------------------------------------------


def _dicom_case(small_case_folder: Path, target: Path, tags: dict) -> Path:
    """The small case with its CE-T1 as a DICOM series from a scanner (patient and study attributes)."""
    case = Path(shutil.copytree(small_case_folder, target, ignore=shutil.ignore_patterns("truth", "dsc*")))
    write_dicom_series(sitk.ReadImage(str(case / "t1c.nii.gz")), case / "t1c", tags)
    (case / "t1c.nii.gz").unlink()
    return case


def _results(inputs) -> SimpleNamespace:
    """What the export reads of a run: the 1 mm reference grid, the lesion on it and two targets (6 mm and 15 mm
    around the GTV core, as CTVs are)."""
    reference = isotropic_reference(inputs.t1c)
    lesion = resample_onto(reference, inputs.lesion, None, labels=True)
    core = gtv_masks(sitk.GetArrayFromImage(lesion))["core"]
    distance = ndimage.distance_transform_edt(~core)
    targets = [chain.TargetMask("boost", "Boost 6 mm", "BOOST", distance <= 6, {"description": "test boost"}),
               chain.TargetMask("estro", "CTV 15 mm", "CTV", distance <= 15, {"description": "test CTV"})]
    return SimpleNamespace(inputs=inputs, prepared=SimpleNamespace(reference=reference, lesion=lesion),
                           targets=targets)


@pytest.fixture(scope="module")
def dicom_export(tmp_path_factory, small_case_folder):
    case = _dicom_case(small_case_folder, tmp_path_factory.mktemp("dicom-source") / FOLDER_NAME, PATIENT_STUDY_TAGS)
    inputs = read_case(case, with_dsc=False)
    results = _results(inputs)
    out = case.parent / "rtstruct"
    info = chain.export_dicom_structures(out, results)
    source = sorted((pydicom.dcmread(p) for p in (case / "t1c").iterdir()), key=lambda ds: int(ds.InstanceNumber))
    return SimpleNamespace(case=case, out=out, info=info, source=source, results=results,
                           rtstruct=pydicom.dcmread(out / "RTSTRUCT.dcm"), seg=hd.seg.segread(out / "SEG.dcm"))


def _distance_to_plane(points: np.ndarray, image: pydicom.Dataset) -> np.ndarray:
    orientation = np.asarray(image.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    return np.abs((points - np.asarray(image.ImagePositionPatient, float)) @ normal)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# --- DICOM source: patient, study, frame of reference, instances ---------------------------------------------------


def test_no_mr_copy_is_written_beside_a_dicom_source(dicom_export):
    assert sorted(p.name for p in dicom_export.out.iterdir()) == ["RTSTRUCT.dcm", "SEG.dcm"]
    assert set(dicom_export.info["files"]) == {"rtstruct", "seg"}


@pytest.mark.parametrize("kind", ["rtstruct", "seg"])
def test_exports_carry_the_source_patient_and_study(dicom_export, kind):
    exported, source = getattr(dicom_export, kind), dicom_export.source[0]
    for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
        assert exported.get(keyword) == source.get(keyword), keyword
    assert str(exported.PatientName) == "Müller^Jürgen"
    assert FOLDER_NAME not in str(exported.PatientName) + str(exported.PatientID)


def test_rtstruct_references_the_source_frame_of_reference_series_and_instances(dicom_export):
    ds, source = dicom_export.rtstruct, dicom_export.source
    uids = {image.SOPInstanceUID for image in source}
    assert ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == source[0].StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence} == uids
    assert {roi.ReferencedFrameOfReferenceUID for roi in ds.StructureSetROISequence} == {source[0].FrameOfReferenceUID}


def test_each_contour_lies_on_the_source_slice_it_references(dicom_export):
    by_uid = {image.SOPInstanceUID: image for image in dicom_export.source}
    contours = [c for roi in dicom_export.rtstruct.ROIContourSequence for c in roi.ContourSequence]
    assert contours
    for contour in contours:
        image = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        assert contour.ContourImageSequence[0].ReferencedSOPClassUID == image.SOPClassUID
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert _distance_to_plane(points, image).max() < 0.01, "a contour lies in the plane of its image"


def test_seg_references_the_source_instances_frame_by_frame(dicom_export):
    seg, source = dicom_export.seg, dicom_export.source
    by_uid = {image.SOPInstanceUID: image for image in source}
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} <= \
        set(by_uid)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, np.asarray(by_uid[uid].ImagePositionPatient, float), atol=1e-3)


def test_structures_on_the_source_slices_are_the_planned_ones(dicom_export):
    """The targets (1 mm grid) sampled on the 2-2.4 mm source slices, and the GTV exactly the lesion's core there."""
    case, results = dicom_export.case, dicom_export.results
    grid = sitk.ReadImage(sorted(str(p) for p in (case / "t1c").iterdir()), imageIO="GDCMImageIO")
    expected = {target.name: _on_grid(target.mask, results.prepared.reference, grid) for target in results.targets}
    lesion = sitk.Resample(sitk.ReadImage(str(case / "lesion.nii.gz")), grid, sitk.Transform(),
                           sitk.sitkNearestNeighbor)
    expected["GTV"] = gtv_masks(sitk.GetArrayFromImage(lesion))["core"]
    contours = {name: sitk.GetArrayFromImage(mask) > 0
                for name, mask in _read_rtstruct(dicom_export.out / "RTSTRUCT.dcm", case / "t1c").items()}
    seg, uids = dicom_export.seg, [ds.SOPInstanceUID for ds in dicom_export.source]
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)[..., 0] > 0
        sharp = 0.999 if name == "GTV" else 0.95  # the targets were resampled; the GTV was on this grid
        assert _dice(pixels, expected[name]) >= sharp, name
        assert _dice(contours[name], pixels) > 0.999, "RTSTRUCT and SEG hold the same voxels"
    assert set(contours) == set(expected)


def _on_grid(mask: np.ndarray, reference: sitk.Image, grid: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0


@pytest.mark.parametrize("name", ["RTSTRUCT.dcm", "SEG.dcm"])
def test_dciodvfy_reports_no_error(dicom_export, name):
    result = subprocess.run([DCIODVFY, str(dicom_export.out / name)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert "Error" not in report, report
    assert report.strip(), "dciodvfy ran and reported"


def test_a_dicom_ce_t1_without_frame_of_reference_is_refused_before_the_work(tmp_path, small_case_folder, capsys):
    case = _dicom_case(small_case_folder, tmp_path / "case", {**PATIENT_STUDY_TAGS, "0020|0052": ""})
    out = tmp_path / "out"
    code = cli.main(["run", str(case), "--out", str(out), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert "CE-T1" in error and "frame of reference" in error
    assert not out.exists()


# --- NIfTI source: a generated identity ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nifti_export(tmp_path_factory, small_case_folder):
    folder = tmp_path_factory.mktemp("nifti-source")
    (folder / FOLDER_NAME).symlink_to(small_case_folder, target_is_directory=True)
    out = folder / "rtstruct"
    info = chain.export_dicom_structures(out, _results(read_case(folder / FOLDER_NAME, with_dsc=False)))
    return out, info


def test_nifti_input_gets_a_generated_identity_not_the_folder_name(nifti_export):
    out, info = nifti_export
    written = [pydicom.dcmread(out / "RTSTRUCT.dcm"), pydicom.dcmread(out / "SEG.dcm"),
               pydicom.dcmread(sorted((out / "MR").iterdir())[0])]
    assert "mr" in info["files"], "the NIfTI CE-T1 is written as the MR series the structures reference"
    for ds in written:
        assert str(ds.PatientName) == "Anonymous^"
        for part in FOLDER_NAME.split("_"):
            assert part not in str(ds.PatientName) + str(ds.PatientID)
        assert ds.PatientID and ds.PatientID == written[0].PatientID
        assert ds.StudyInstanceUID == written[0].StudyInstanceUID
        assert ds.FrameOfReferenceUID == written[0].FrameOfReferenceUID
    assert PatientStudy().patient_id != PatientStudy().patient_id, "two anonymous patients are not merged"


# --- report.json: no absolute input path ---------------------------------------------------------------------------


def test_inputs_are_recorded_relative_to_the_case_folder(tmp_path, small_case_folder):
    case = _dicom_case(small_case_folder, tmp_path / FOLDER_NAME, PATIENT_STUDY_TAGS)
    outside = tmp_path / "elsewhere" / "follow-up.nii.gz"
    outside.parent.mkdir()
    shutil.copy(case / "lesion.nii.gz", outside)
    inputs = read_case(case, recurrence=outside, with_dsc=False)
    recorded = chain.recorded_inputs(inputs.sources, inputs.folder)
    assert recorded == {"t1c": "DICOM folder t1c", "flair": "flair.nii.gz", "lesion": "lesion.nii.gz",
                        "recurrence": "follow-up.nii.gz"}
    text = json.dumps(recorded)
    assert str(tmp_path) not in text and not any(os.path.isabs(v.split()[-1]) for v in recorded.values())
