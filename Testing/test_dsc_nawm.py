"""Tests of DSCPerfusionLib.nawm: automatic contralateral NAWM and CBV normalisation."""

import numpy as np
import pytest
from scipy import ndimage

from DSCPerfusionLib.nawm import (
    abnormal_from_k2,
    automatic_nawm,
    deeper_than,
    left_right_coordinate,
    nawm_divisors,
    near_mask,
    normalise_cbv,
    spacing_from_matrix,
)

SHAPE = (12, 48, 56)  # k, j, i
SPACING = np.array([5.0, 2.0, 2.0])  # mm per k, j, i


def _matrix(i_points_left: bool) -> np.ndarray:
    """Axial IJK-to-RAS: i along R (or along L, as in LPS-stored data), j along A, k along S."""
    matrix = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    if i_points_left:
        matrix[0, 0] = -SPACING[2]
    matrix[:3, 3] = [-50.0, -40.0, -30.0]
    return matrix


def _depth_mm(mask: np.ndarray, spacing: np.ndarray, continued_slices: int = 20) -> np.ndarray:
    """Distance (mm) of every voxel to the outside of ``mask``: beyond the array in-plane is outside, beyond the
    end slices the mask continues as in them (the rule of ``deeper_than``), by a direct distance transform."""
    extended = np.pad(mask, ((continued_slices, continued_slices), (0, 0), (0, 0)), mode="edge")
    extended = np.pad(extended, ((0, 0), (1, 1), (1, 1)))
    depth = ndimage.distance_transform_edt(extended, sampling=spacing)
    return depth[continued_slices : continued_slices + mask.shape[0], 1:-1, 1:-1]


def _synthetic_brain(lesion_at_high_i: bool = True, seed: int = 0):
    """Baseline image, rCBV, brain, white matter, and a lesion in one hemisphere (array halves along i)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((k - 5.5) / 6.0) ** 2 + ((j - 23.5) / 22.0) ** 2 + ((i - 27.5) / 26.0) ** 2 <= 1.0
    pattern = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0.5, 2.0, 2.0))
    white = brain & (pattern < 0.0)
    csf = brain & (np.abs(i - 27.5) < 1.5) & (np.abs(j - 23.5) < 8)
    white &= ~csf
    grey = brain & ~white & ~csf
    s0 = np.select([white, grey, csf], [900.0, 1050.0, 1500.0], 20.0) + rng.normal(0, 10, SHAPE)
    rcbv = np.select([white, grey, csf], [100.0, 200.0, 5.0], 0.0) * (1 + 0.05 * rng.standard_normal(SHAPE))
    centre_i = 42 if lesion_at_high_i else 13
    lesion = brain & ((((k - 6) * 5.0) ** 2 + ((j - 24) * 2.0) ** 2 + ((i - centre_i) * 2.0) ** 2) <= 12.0**2)
    rcbv[lesion] = 350.0
    return s0.astype(np.float32), rcbv.astype(np.float32), brain, white, lesion


@pytest.mark.parametrize("i_points_left", [False, True])
@pytest.mark.parametrize("lesion_at_high_i", [False, True])
def test_nawm_is_contralateral_white_matter_away_from_the_lesion(i_points_left, lesion_at_high_i):
    s0, rcbv, brain, white, lesion = _synthetic_brain(lesion_at_high_i)
    matrix = _matrix(i_points_left)
    labels = lesion.astype(np.uint8) * 3
    selection = automatic_nawm(rcbv, s0, brain, ijk_to_ras=matrix, lesion_labels=labels)
    nawm = selection.mask
    assert nawm.sum() >= 50
    i_index = np.nonzero(nawm)[2]
    if lesion_at_high_i:
        assert i_index.max() < 27.5  # opposite half of the array
    else:
        assert i_index.min() > 27.5
    lesion_points_right = lesion_at_high_i != i_points_left
    assert selection.hemisphere == ("left" if lesion_points_right else "right")
    assert (white[nawm]).mean() > 0.9
    distance = ndimage.distance_transform_edt(~lesion, sampling=SPACING)
    assert distance[nawm].min() > 12.0
    assert _depth_mm(brain, SPACING)[nawm].min() > 5.0
    assert rcbv[nawm].mean() == pytest.approx(100.0, rel=0.05)
    assert selection.warnings == []


def test_abnormal_voxels_stand_in_for_missing_labels():
    s0, rcbv, brain, white, lesion = _synthetic_brain(lesion_at_high_i=True)
    k2 = np.where(lesion, 0.02, 0.0) + np.random.default_rng(1).normal(0, 5e-4, SHAPE)
    scattered = np.zeros(SHAPE, bool)
    scattered[2, 10:40:6, 8] = True  # isolated outliers (vessels, noise) on the other side
    k2[scattered] = -0.02
    abnormal = abnormal_from_k2(k2, brain)
    assert abnormal[lesion].mean() > 0.9 and not abnormal[brain & ~lesion].any()
    assert not abnormal_from_k2(np.where(scattered, 0.02, k2 * 0.0) + np.random.default_rng(2).normal(0, 5e-4, SHAPE),
                                brain).any()  # scattered outliers alone are no lesion
    nawm = automatic_nawm(rcbv, s0, brain, ijk_to_ras=_matrix(False), abnormal=abnormal).mask
    assert np.nonzero(nawm)[2].max() < 27.5


def test_without_any_lesion_both_hemispheres_are_used_and_reported():
    s0, rcbv, brain, white, _ = _synthetic_brain()
    selection = automatic_nawm(rcbv, s0, brain, ijk_to_ras=_matrix(False))
    i_index = np.nonzero(selection.mask)[2]
    assert i_index.min() < 27.5 < i_index.max()
    assert selection.hemisphere == "both"
    assert any("both hemispheres" in warning for warning in selection.warnings)


def test_without_geometry_array_axis_i_is_left_right():
    s0, rcbv, brain, white, lesion = _synthetic_brain(lesion_at_high_i=True)
    selection = automatic_nawm(rcbv, s0, brain, spacing_mm=tuple(SPACING), lesion_labels=lesion)
    assert np.nonzero(selection.mask)[2].max() < 27.5
    assert selection.hemisphere == "low-i"
    assert any("left-right" in warning for warning in selection.warnings)


def test_white_matter_probability_map_replaces_the_intensity_rule():
    s0, rcbv, brain, white, lesion = _synthetic_brain()
    probability = np.where(white, 0.95, 0.1)
    flat_s0 = np.full(SHAPE, 1000.0, np.float32)  # no intensity contrast at all
    nawm = automatic_nawm(rcbv, flat_s0, brain, ijk_to_ras=_matrix(False), lesion_labels=lesion,
                          wm_probability=probability).mask
    assert white[nawm].all()
    assert nawm.sum() > 100


def test_unusable_voxels_are_never_chosen():
    s0, rcbv, brain, white, lesion = _synthetic_brain()
    unusable = np.zeros(SHAPE, bool)
    unusable[:, :, :20] = True
    nawm = automatic_nawm(rcbv, s0, brain, ijk_to_ras=_matrix(False), lesion_labels=lesion, unusable=unusable).mask
    assert not (nawm & unusable).any()


def test_too_little_white_matter_is_refused():
    s0, rcbv, brain, white, lesion = _synthetic_brain()
    with pytest.raises(ValueError, match="give a NAWM mask"):
        automatic_nawm(rcbv, s0, brain, ijk_to_ras=_matrix(False), lesion_labels=lesion, margin_mm=200.0)
    with pytest.raises(ValueError, match="at least 100000 are needed"):
        automatic_nawm(rcbv, s0, brain, ijk_to_ras=_matrix(False), lesion_labels=lesion, min_voxels=100000)


def test_shape_mismatch_is_refused():
    s0, rcbv, brain, white, lesion = _synthetic_brain()
    with pytest.raises(ValueError, match="lesion_labels has shape"):
        automatic_nawm(rcbv, s0, brain, lesion_labels=lesion[:-1])
    with pytest.raises(ValueError, match="ijk_to_ras must be a finite 4x4"):
        automatic_nawm(rcbv, s0, brain, ijk_to_ras=np.eye(3))


def test_geometry_helpers():
    matrix = _matrix(True)
    np.testing.assert_allclose(spacing_from_matrix(matrix), SPACING)
    x = left_right_coordinate(SHAPE, matrix)
    assert x[0, 0, 0] == pytest.approx(-50.0) and x[0, 0, 1] == pytest.approx(-52.0)
    mask = np.zeros((5, 9, 9), bool)
    mask[2, 4, 4] = True
    near = near_mask(mask, np.array([5.0, 2.0, 2.0]), 4.0)
    assert near[2, 4, 6] and not near[2, 4, 7] and not near[3, 4, 4]
    # In-plane the array's edge is outside; beyond the end slices the mask continues, so every slice keeps 5x5.
    assert deeper_than(np.ones((5, 9, 9), bool), np.ones(3), 2.0).sum() == 5 * 5 * 5


@pytest.mark.parametrize("spacing", [(5.0, 1.8, 1.8), (6.0, 3.6, 3.6), (1.0, 1.0, 1.0)])
def test_depth_and_proximity_equal_the_distance_transform(spacing):
    spacing = np.array(spacing)
    rng = np.random.default_rng(4)
    region = ndimage.gaussian_filter(rng.random((14, 40, 36)), 3) > 0.5
    seed = np.zeros(region.shape, bool)
    seed[7, 20, 18] = True
    for millimetres in (3.6, 5.0, 12.0):
        np.testing.assert_array_equal(deeper_than(region, spacing, millimetres), _depth_mm(region, spacing) > millimetres)
        distance = ndimage.distance_transform_edt(~seed, sampling=spacing)
        np.testing.assert_array_equal(near_mask(seed, spacing, millimetres), distance <= millimetres)


def test_global_and_per_slice_normalisation():
    rcbv = np.ones((3, 4, 5), np.float32)
    rcbv[1] *= 2.0
    rcbv[2] *= 3.0
    nawm = np.zeros((3, 4, 5), bool)
    nawm[0] = True  # 20 voxels
    nawm[1, :2] = True  # 10 voxels
    nawm[2, 0, :3] = True  # 3 voxels: too few for a slice of its own
    global_mean = rcbv[nawm].mean()
    np.testing.assert_allclose(normalise_cbv(rcbv, nawm), rcbv / global_mean)
    divisors, fallback = nawm_divisors(rcbv, nawm, per_slice=True)
    np.testing.assert_allclose(divisors, [1.0, 2.0, global_mean])
    assert fallback == [2]
    per_slice = normalise_cbv(rcbv, nawm, per_slice=True)
    assert per_slice.dtype == np.float32
    np.testing.assert_allclose(per_slice[0], 1.0)
    np.testing.assert_allclose(per_slice[1], 1.0)
    np.testing.assert_allclose(per_slice[2], 3.0 / global_mean)


@pytest.mark.parametrize(
    ("rcbv", "nawm", "message"),
    [
        (np.ones((2, 3, 3)), np.zeros((2, 3, 3), bool), "empty"),
        (-np.ones((2, 3, 3)), np.ones((2, 3, 3), bool), "not positive"),
        (np.ones((2, 3, 3)), np.ones((2, 3, 4), bool), "nawm_mask has shape"),
    ],
)
def test_normalisation_bad_input_raises(rcbv, nawm, message):
    with pytest.raises(ValueError, match=message):
        normalise_cbv(rcbv, nawm)


# --- thin slabs: beyond the end slices the brain continues (issue 12) -----------------------------------------


def test_depth_in_a_single_slice_is_the_in_plane_depth():
    region = ndimage.gaussian_filter(np.random.default_rng(5).random((1, 40, 36)), 3) > 0.5
    disk_depth = ndimage.distance_transform_edt(np.pad(region[0], 1), sampling=SPACING[1:])[1:-1, 1:-1]
    np.testing.assert_array_equal(deeper_than(region, SPACING, 5.0)[0], disk_depth > 5.0)


@pytest.mark.parametrize("slices", [slice(6, 7), slice(5, 7), slice(5, 8)], ids=["1 slice", "2 slices", "3 slices"])
def test_a_thin_slab_finds_nawm_in_every_slice_including_the_end_slices(slices):
    # 5 mm slices: the 5 mm depth reaches the neighbouring slices, which used to exclude both end slices.
    s0, rcbv, brain, white, lesion = _synthetic_brain(lesion_at_high_i=True)
    selection = automatic_nawm(rcbv[slices], s0[slices], brain[slices], ijk_to_ras=_matrix(False),
                               lesion_labels=lesion[slices].astype(np.uint8))
    per_slice = selection.mask.sum(axis=(1, 2))
    assert per_slice.min() >= 10, per_slice
    assert white[slices][selection.mask].mean() > 0.9
    assert rcbv[slices][selection.mask].mean() == pytest.approx(100.0, rel=0.05)
