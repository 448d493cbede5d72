"""Tests of DSCPerfusionLib.features: seed 002 (Yun 2023) time-signal curve features."""

import numpy as np
import pytest

from DSCPerfusionLib.features import (
    BASELINE_FRAMES,
    FEATURE_NAMES,
    curve_features,
    post_contrast_frames,
    region_curve_features,
)

TIMES = np.arange(60) * 1.5


def _triangle_dip(s0: float, depth: float, post_fraction: float, minimum_frame: int = 15, arrival: int = 10):
    """Signal: flat at s0, linear dip from ``arrival`` to ``minimum_frame``, then a plateau at a given recovery."""
    curve = np.full(60, s0)
    curve[arrival : minimum_frame + 1] = np.linspace(s0, s0 - depth, minimum_frame - arrival + 1)
    curve[minimum_frame + 1 :] = s0 - depth + post_fraction * depth
    return curve


def test_frame_windows_follow_the_paper_with_0_based_indices():
    assert np.arange(60)[BASELINE_FRAMES].tolist() == list(range(2, 9))  # frames 3-9, 1-based
    assert post_contrast_frames(60) == slice(29, 50)  # frames 30-50, 1-based
    assert post_contrast_frames(120) == slice(58, 100)  # scaled to the series length
    assert post_contrast_frames(30) == slice(14, 25)


def test_features_of_a_known_curve():
    curve = _triangle_dip(1000.0, 400.0, post_fraction=0.75)
    features = curve_features(curve[:, None], TIMES, arrival_frame=10)
    assert set(features) == set(FEATURE_NAMES)
    assert features["s0"][0] == pytest.approx(1000.0)
    assert features["drop_depth"][0] == pytest.approx(400.0)
    assert features["time_of_minimum_s"][0] == pytest.approx(15 * 1.5)
    assert features["drop_speed"][0] == pytest.approx(400.0 / (5 * 1.5))
    assert features["percentage_recovery"][0] == pytest.approx(75.0)


def test_features_are_vectorised_and_keep_the_spatial_shape():
    curves = np.stack([_triangle_dip(800.0 + 10 * n, 100.0 + 20 * n, 0.1 * n) for n in range(6)], axis=1)
    volume = curves.reshape(60, 1, 2, 3)
    features = curve_features(volume, TIMES, arrival_frame=10)
    assert features["drop_depth"].shape == (1, 2, 3)
    assert features["drop_depth"].dtype == np.float32
    np.testing.assert_allclose(features["drop_depth"].ravel(), 100.0 + 20 * np.arange(6), rtol=1e-5)
    np.testing.assert_allclose(features["percentage_recovery"].ravel(), 10.0 * np.arange(6), atol=1e-3)


def test_baseline_is_a_median_and_ignores_a_spike():
    curve = _triangle_dip(1000.0, 300.0, 0.5)
    curve[4] = 5000.0  # one spike in the baseline frames
    features = curve_features(curve[:, None], TIMES, arrival_frame=10)
    assert features["s0"][0] == pytest.approx(1000.0)


def test_voxels_without_a_drop_get_nan_speed_and_recovery():
    flat = np.full((60, 2), 700.0)
    flat[:, 1] = _triangle_dip(700.0, 100.0, 0.5)
    features = curve_features(flat, TIMES, arrival_frame=10)
    assert np.isnan(features["drop_speed"][0]) and np.isnan(features["percentage_recovery"][0])
    assert features["drop_depth"][0] == 0.0
    assert np.isfinite(features["drop_speed"][1])


def test_minimum_on_the_arrival_frame_uses_one_frame_interval():
    curve = np.full(60, 500.0)
    curve[10] = 300.0  # the minimum falls on the arrival frame itself
    features = curve_features(curve[:, None], TIMES, arrival_frame=10)
    assert features["drop_speed"][0] == pytest.approx(200.0 / 1.5)


def test_region_features_use_the_region_mean_curve():
    labels = np.zeros((1, 2, 3), np.int16)
    labels[0, 0, :2] = 3
    labels[0, 1, :] = 1
    curves = np.empty((60, 1, 2, 3))
    curves[:, 0, 0, 0] = _triangle_dip(1000.0, 200.0, 0.5)
    curves[:, 0, 0, 1] = _triangle_dip(1000.0, 400.0, 0.5)
    curves[:, 0, 0, 2] = 123.0  # background, ignored
    curves[:, 0, 1, :] = _triangle_dip(900.0, 90.0, 1.0)[:, None]
    regions = region_curve_features(curves, TIMES, labels, arrival_frame=10)
    assert set(regions) == {1, 3}
    assert regions[3]["drop_depth"] == pytest.approx(300.0)
    assert regions[3]["percentage_recovery"] == pytest.approx(50.0)
    assert regions[1]["percentage_recovery"] == pytest.approx(100.0)
    assert isinstance(regions[1]["s0"], float)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: curve_features(np.ones((60, 2)), TIMES, arrival_frame=40), "before the post-contrast window"),
        (lambda: curve_features(np.ones((60, 2)), TIMES[:50], arrival_frame=10), "has 50 entries"),
        (lambda: curve_features(np.ones((60, 2)), TIMES, 10, baseline_frames=slice(70, 80)), "selects no frame"),
        (lambda: region_curve_features(np.ones((60, 2, 2)), TIMES, np.zeros((2, 3)), 10), "labels has shape"),
        (lambda: region_curve_features(np.ones((60, 2, 2)), TIMES, np.zeros((2, 2)), 10), "no non-zero label"),
    ],
)
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
