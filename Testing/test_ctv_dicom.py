"""DICOM export of target volumes on an oblique, anisotropic grid: read back by independent readers (GDCM geometry
+ pydicom contours + scikit-image polygons for the RTSTRUCT; highdicom for the SEG), and checked by dciodvfy."""

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from skimage.draw import polygon2mask

from CTVPlannerLib.dicom_export import PatientStudy, Structure, export_dicom, read_series
from GliomaProgressionLib.case.geometry import Volume, sitk_from_volume

DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")


def _oblique_grid():
    """Rotated 20/-7/10 degrees, voxels 0.8 x 1.1 x 2.5 mm (non-square pixels: catches swapped PixelSpacing)."""
    def rotation(axis, degrees):
        c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
        a, b = [n for n in range(3) if n != axis]
        m = np.eye(3)
        m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
        return m

    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation(2, 20) @ rotation(1, -7) @ rotation(0, 10) @ np.diag([0.8, 1.1, 2.5])
    ijk_to_ras[:3, 3] = [-30.0, 20.0, -15.0]
    return ijk_to_ras


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ijk_to_ras = _oblique_grid()
    shape = (22, 60, 70)
    k, j, i = np.indices(shape)
    ras = np.stack([i, j, k, np.ones(shape)], -1) @ ijk_to_ras.T
    centre = ras[11, 30, 35, :3]
    radius = np.linalg.norm(ras[..., :3] - centre, axis=-1)
    offset = ras[..., :3] - centre
    structures = [
        Structure("CTV shell", (radius < 17) & (radius >= 6), (1.0, 0.5, 0.0), "CTV"),  # holes on many slices
        Structure("PTV box", np.all(np.abs(offset) < [10, 6, 12], axis=-1), (0.0, 1.0, 0.0), "PTV"),
        Structure("Boost", radius < 4, (1.0, 0.0, 0.0), "CTV"),
    ]
    image = (1000 * np.exp(-radius / 40)).astype(np.int16)
    out = tmp_path_factory.mktemp("dicom") / "export"
    written = export_dicom(out, structures, image, ijk_to_ras, PatientStudy("Test^Patient", "P001"))
    return out, written, structures, ijk_to_ras, image


def _read_rtstruct(rtstruct: Path, series: Path) -> dict[str, sitk.Image]:
    """An RTSTRUCT reader independent of the writer: image geometry from GDCM (SimpleITK), contours from pydicom,
    polygons filled by scikit-image with the even-odd rule (XOR per slice)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    size = image.GetSize()
    ds = pydicom.dcmread(rtstruct)
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    masks = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(size[::-1], bool)
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
            assert np.ptp(index[:, 2]) < 1e-3, "a contour lies in one image plane"
            mask[int(round(index[0, 2]))] ^= polygon2mask((size[1], size[0]), index[:, [1, 0]])
        result = sitk.GetImageFromArray(mask.astype(np.uint8))
        result.CopyInformation(image)
        masks[names[roi.ReferencedROINumber]] = result
    return masks


def _on_source_grid(image: sitk.Image, like: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    grid = sitk_from_volume(Volume(like.astype(np.uint8), ijk_to_ras))
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_rtstruct_reads_back_into_the_source_masks(exported):
    out, written, structures, ijk_to_ras, _ = exported
    assert sorted(p.name for p in out.iterdir()) == ["MR", "RTSTRUCT.dcm", "SEG.dcm"]
    masks = _read_rtstruct(out / "RTSTRUCT.dcm", out / "MR")
    assert set(masks) == {s.name for s in structures}
    for structure in structures:
        back = _on_source_grid(masks[structure.name], structure.mask, ijk_to_ras)
        assert _dice(back, structure.mask) >= 0.95, structure.name
        assert _dice(back, structure.mask) > 0.999, "the 0.5-level outline encloses exactly the voxel centres"
    ds = pydicom.dcmread(out / "RTSTRUCT.dcm")
    mr = pydicom.dcmread(written["mr"][0])
    assert ds.FrameOfReferenceUID == mr.FrameOfReferenceUID and ds.StudyInstanceUID == mr.StudyInstanceUID
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["CTV", "PTV", "CTV"]
    assert list(ds.ROIContourSequence[1].ROIDisplayColor) == [0, 255, 0]
    assert str(ds.PatientName) == "Test^Patient"


def test_seg_reads_back_with_highdicom(exported):
    out, _, structures, ijk_to_ras, _ = exported
    seg = hd.seg.segread(out / "SEG.dcm")
    series = sorted(read_series(out / "MR"), key=lambda ds: int(ds.InstanceNumber))
    for number in seg.segment_numbers:
        label = seg.get_segment_description(number).segment_label
        source = next(s for s in structures if s.name == label)
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in series], segment_numbers=[number],
            assert_missing_frames_are_empty=True)[..., 0] > 0
        assert _dice(pixels, source.mask) >= 0.95 and np.array_equal(pixels, source.mask), label
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [s.name for s in structures]


@pytest.mark.parametrize("name", ["RTSTRUCT.dcm", "SEG.dcm", "MR/MR_0001.dcm", "MR/MR_0022.dcm"])
def test_dciodvfy_reports_no_error(exported, name):
    out = exported[0]
    result = subprocess.run([DCIODVFY, str(out / name)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert "Error" not in report, report
    assert report.strip(), "dciodvfy ran and reported"


def test_export_into_an_existing_dicom_series_writes_only_the_new_objects(exported, tmp_path):
    out, written, structures, ijk_to_ras, image = exported
    source = read_series(out / "MR")
    target = tmp_path / "with-source"
    files = export_dicom(target, structures[:1], image, ijk_to_ras, formats=("rtstruct",), source=source)
    assert sorted(p.name for p in target.iterdir()) == ["RTSTRUCT.dcm"] and "mr" not in files
    ds = pydicom.dcmread(target / "RTSTRUCT.dcm")
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ds.ROIContourSequence[0].ContourSequence}
    assert referenced <= {s.SOPInstanceUID for s in source}
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID


def test_bad_exports_leave_nothing_behind(exported, tmp_path):
    out, _, structures, ijk_to_ras, image = exported
    with pytest.raises(ValueError, match="already exists"):
        export_dicom(out, structures, image, ijk_to_ras)
    moved = ijk_to_ras.copy()
    moved[:3, 3] += 5.0
    with pytest.raises(ValueError, match="slice positions"):
        export_dicom(tmp_path / "a", structures, image, moved, source=read_series(out / "MR"))
    with pytest.raises(ValueError, match="same name"):
        export_dicom(tmp_path / "b", structures + structures[:1], image, ijk_to_ras)
    with pytest.raises(ValueError, match="shape"):
        export_dicom(tmp_path / "c", [Structure("x", np.ones((2, 2, 2), bool))], image, ijk_to_ras)
    assert list(tmp_path.iterdir()) == [], "no partial folder"


def test_a_source_without_some_type_2_attributes_still_gives_both_objects(exported, tmp_path):
    """Some anonymisers drop Type 2 attributes; the exports then hold them empty (highdicom would need them)."""
    out, _, structures, ijk_to_ras, image = exported
    source = read_series(out / "MR")
    for ds in source:
        del ds.AccessionNumber, ds.StudyID, ds.PatientSex
    export_dicom(tmp_path / "x", structures, image, ijk_to_ras, source=source)
    for name in ("RTSTRUCT.dcm", "SEG.dcm"):
        ds = pydicom.dcmread(tmp_path / "x" / name)
        assert ds.PatientID == source[0].PatientID and ds.StudyInstanceUID == source[0].StudyInstanceUID
        assert ds.AccessionNumber == "" and ds.StudyID == "" and ds.PatientSex == "", name
    assert "AccessionNumber" not in source[0], "the caller's datasets are left as they were"
