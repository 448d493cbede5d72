"""Geometry is sacred: an oblique, anisotropic volume keeps every landmark's RAS position through every helper,
through NIfTI and NRRD files, through MRML nodes, sequences, segmentations and a scene bundle."""

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.case import geometry

from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.files import read_volume, write_volume
from GliomaProgressionLib.case.geometry import Volume

LANDMARK_IJK = (3, 5, 7)  # (i, j, k)
LANDMARK_VALUE = 1000


def _oblique_ijk_to_ras() -> np.ndarray:
    """Rotated about all three axes, voxels 0.9 x 1.3 x 3.1 mm, origin off-centre."""
    a, b, c = np.deg2rad([17.0, -8.0, 25.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx @ np.diag([0.9, 1.3, 3.1])
    matrix[:3, 3] = [-41.5, 12.25, 63.0]
    return matrix


def _volume_with_landmark(dtype=np.int16) -> Volume:
    array = np.zeros((11, 9, 8), dtype)  # k, j, i: every axis a different length
    i, j, k = LANDMARK_IJK
    array[k, j, i] = LANDMARK_VALUE
    return Volume(array, _oblique_ijk_to_ras())


def _landmark_ras(volume: Volume) -> np.ndarray:
    array = volume.array if volume.array.ndim == 3 else volume.array[-1]
    k, j, i = np.argwhere(array == array.max())[0]
    return geometry.ras_from_ijk(np.array([i, j, k], float), volume.ijk_to_ras)


EXPECTED_RAS = geometry.ras_from_ijk(np.array(LANDMARK_IJK, float), _oblique_ijk_to_ras())


def test_ijk_and_ras_helpers_are_inverse():
    ras = geometry.ras_from_ijk(np.array([[0, 0, 0], LANDMARK_IJK], float), _oblique_ijk_to_ras())
    assert np.allclose(geometry.ijk_from_ras(ras, _oblique_ijk_to_ras()), [[0, 0, 0], LANDMARK_IJK])
    assert np.allclose(geometry.lps_from_ras(geometry.ras_from_lps(ras)), ras)
    assert np.allclose(geometry.ras_from_lps([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])


def test_sitk_round_trip_matches_itk_physical_points():
    image = geometry.sitk_from_volume(_volume_with_landmark())
    # ITK's own index-to-point (LPS), converted once, must agree with our matrix.
    lps = image.TransformIndexToPhysicalPoint(LANDMARK_IJK)
    assert np.allclose(geometry.ras_from_lps(np.array(lps)), EXPECTED_RAS, atol=1e-6)
    back = geometry.volume_from_sitk(image)
    assert np.allclose(back.ijk_to_ras, _oblique_ijk_to_ras())
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_file_round_trip(tmp_path, suffix):
    path = write_volume(_volume_with_landmark(), tmp_path / f"landmark{suffix}")
    back = read_volume(path)
    assert back.array.shape == (11, 9, 8)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS, atol=1e-4)


def test_nifti_agrees_with_nibabel(tmp_path):
    """An independent reader: nibabel's affine maps (i, j, k) to RAS directly."""
    path = write_volume(_volume_with_landmark(), tmp_path / "landmark.nii.gz")
    image = nibabel.load(path)
    data = np.asarray(image.dataobj)  # nibabel indexes [i, j, k]
    assert tuple(np.argwhere(data == LANDMARK_VALUE)[0]) == LANDMARK_IJK
    assert np.allclose(image.affine @ np.r_[LANDMARK_IJK, 1.0], np.r_[EXPECTED_RAS, 1.0], atol=1e-4)


def test_4d_file_round_trip(tmp_path):
    series = Volume(np.stack([_volume_with_landmark().array] * 4), _oblique_ijk_to_ras())
    back = read_volume(write_volume(series, tmp_path / "series.nii.gz", time_spacing=1.5))
    assert back.array.shape == (4, 11, 9, 8)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS, atol=1e-4)
    assert sitk.ReadImage(str(tmp_path / "series.nii.gz")).GetSpacing()[3] == pytest.approx(1.5)


def test_volume_node_round_trip(scene):
    node = mrml.node_from_volume(_volume_with_landmark(), "landmark", scene)
    back = mrml.volume_from_node(node)
    assert np.allclose(back.ijk_to_ras, _oblique_ijk_to_ras())
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


def test_sequence_round_trip(scene):
    series = Volume(np.stack([_volume_with_landmark().array * (t + 1) for t in range(3)]), _oblique_ijk_to_ras())
    sequence, _ = mrml.sequence_from_volume(series, [0.0, 1.5, 3.0], "series", scene)
    back, times = mrml.volume_from_sequence(sequence)
    assert np.allclose(times, [0.0, 1.5, 3.0])
    assert np.array_equal(back.array, series.array)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


def test_segmentation_round_trip(scene):
    labels = Volume((_volume_with_landmark().array > 0).astype(np.uint8) * 3, _oblique_ijk_to_ras())
    reference = mrml.node_from_volume(_volume_with_landmark(), "reference", scene)
    segmentation = mrml.segmentation_from_labelmap(labels, {3: ("Enhancing tumour", (1, 0, 0))}, "lesion", scene)
    back = mrml.labelmap_from_segmentation(segmentation, reference)
    assert np.array_equal(back.array, labels.array)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


def test_scene_bundle_round_trip(scene, tmp_path):
    mrml.node_from_volume(_volume_with_landmark(), "landmark", scene)
    path = mrml.write_scene_bundle(tmp_path / "landmark.mrb", scene)
    read = mrml.read_scene_bundle(path, tmp_path / "cache")
    node = read.GetFirstNode("landmark", "vtkMRMLScalarVolumeNode")
    assert node is not None
    assert np.allclose(_landmark_ras(mrml.volume_from_node(node)), EXPECTED_RAS, atol=1e-4)


def test_transformed_volume_is_refused(scene):
    node = mrml.node_from_volume(_volume_with_landmark(), "moved", scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="under a transform"):
        mrml.volume_from_node(node)


def test_one_same_grid_and_one_3d_rule():
    volume = _volume_with_landmark()
    moved = volume.ijk_to_ras.copy()
    moved[0, 3] += 0.5
    assert geometry.same_grid(volume.ijk_to_ras, volume.ijk_to_ras, volume.array.shape, volume.array.shape)
    assert not geometry.same_grid(volume.ijk_to_ras, moved, volume.array.shape, volume.array.shape)
    assert not geometry.same_grid(volume.ijk_to_ras, volume.ijk_to_ras, volume.array.shape, (11, 9, 9))
    geometry.check_3d(volume, "The landmark")
    geometry.check_3d(geometry.sitk_from_volume(volume), "The landmark")
    series = Volume(np.stack([volume.array] * 2), volume.ijk_to_ras)
    for image in (series, geometry.sitk_from_volume(series), series.array):
        with pytest.raises(ValueError, match=r"^The series must be a 3D image, it is 4D\.$"):
            geometry.check_3d(image, "The series")


def test_a_nrrd_case_folder_loads_into_the_scene_as_gliomaprog_run_reads_it(scene, tmp_path):
    """The scene loader finds the series as the case-folder reader does (any suffix), and needs only frame times."""
    import json

    from GliomaProgressionLib.report.scene import load_case_into_scene

    volume = _volume_with_landmark()
    write_volume(volume, tmp_path / "t1c.nrrd")
    write_volume(volume, tmp_path / "flair.nii")
    write_volume(Volume((volume.array > 0).astype(np.uint8) * 2, volume.ijk_to_ras), tmp_path / "lesion.nrrd")
    write_volume(Volume(np.stack([volume.array] * 3), volume.ijk_to_ras), tmp_path / "dsc.nrrd")
    (tmp_path / "dsc.json").write_text(json.dumps({"FrameTimes": [0.0, 1.2, 2.5]}), encoding="utf-8")
    nodes = load_case_into_scene(tmp_path, scene, name="nrrd case")
    assert {"t1c", "flair", "dsc", "lesion"} <= set(nodes) and "progression_truth" not in nodes
    assert np.allclose(_landmark_ras(mrml.volume_from_node(nodes["t1c"])), EXPECTED_RAS)
    _, times = mrml.volume_from_sequence(nodes["dsc"])
    assert np.allclose(times, [0.0, 1.2, 2.5])
    (tmp_path / "flair.nii").unlink()
    with pytest.raises(ValueError, match="has no FLAIR"):
        load_case_into_scene(tmp_path, scene)


def test_a_subdivided_grid_centres_each_block_on_its_voxel_oblique_and_anisotropic():
    grid = sitk.Image(4, 3, 2, sitk.sitkUInt8)
    grid.SetSpacing((1.8, 2.2, 5.0))
    angle = np.deg2rad(20)
    grid.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    grid.SetOrigin((-10.0, 4.0, 30.0))
    fine = geometry.subdivided_grid(grid, (2, 3, 5), sitk.sitkUInt8)
    assert fine.GetSize() == (8, 9, 10) and fine.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(fine.GetSpacing(), (0.9, 2.2 / 3, 1.0))
    for index in ((0, 0, 0), (3, 2, 1), (1, 2, 0)):
        block = [(index[0] * 2 + a, index[1] * 3 + b, index[2] * 5 + c)
                 for a in range(2) for b in range(3) for c in range(5)]
        centre = np.mean([fine.TransformIndexToPhysicalPoint(i) for i in block], axis=0)
        assert np.allclose(centre, grid.TransformIndexToPhysicalPoint(index), atol=1e-9)
