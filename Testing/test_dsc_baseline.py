"""Tests of DSCPerfusionLib.baseline (bolus arrival, baseline window, first-pass end) and .brainmask."""

import numpy as np
import pytest
from scipy import ndimage

from DSCPerfusionLib.baseline import (
    DEFAULT_SKIP_FRAMES,
    baseline_window,
    detect_bolus_arrival,
    detect_first_pass_end,
    validate_baseline,
)
from DSCPerfusionLib.brainmask import brain_mask_from_baseline, fill_holes, otsu_threshold, validate_mask
from DSCPerfusionLib.simulation import gamma_variate_aif, simulate_dsc

TIMES = np.arange(60) * 1.5
TE = 0.030


def _brain_mean_signal(arrival_s: float, noise: float = 0.0, seed: int = 0, recirculation: float = 0.1) -> np.ndarray:
    """Mean signal of a grey/white-matter mix whose bolus arrives at ``arrival_s``, with Gaussian noise (fraction)."""
    aif = lambda t: gamma_variate_aif(t, arrival_s=arrival_s, recirculation=recirculation)  # noqa: E731
    sim = simulate_dsc(TIMES, np.array([4.0, 2.0]), np.array([60.0, 22.0]), 0.0, 1000.0, TE, aif=aif)
    mean = sim.signal.mean(axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    return mean * (1.0 + noise * rng.standard_normal(mean.size))


def test_arrival_is_the_first_visibly_lowered_frame_without_noise():
    curve = _brain_mean_signal(arrival_s=15.0)  # tissue first carries contrast at frame 11 (t = 16.5 s)
    assert curve[10] == curve[3] and curve[11] < curve[10]
    assert detect_bolus_arrival(curve) == 11
    assert baseline_window(11) == (DEFAULT_SKIP_FRAMES, 10)


@pytest.mark.parametrize("seed", range(5))
def test_arrival_is_robust_to_noise_and_the_baseline_stays_pre_bolus(seed):
    # 1 % noise on the brain mean is far worse than a real brain average (thousands of voxels).
    curve = _brain_mean_signal(arrival_s=21.0, noise=0.01, seed=seed)  # contrast from frame 15 on
    arrival = detect_bolus_arrival(curve)
    assert 15 <= arrival <= 17
    start, end = baseline_window(arrival)
    assert end <= 15  # no frame with contrast in the baseline


def test_single_noisy_dip_is_not_taken_for_the_bolus():
    curve = _brain_mean_signal(arrival_s=21.0)
    curve[6] *= 0.90  # one corrupt frame, 10 % low
    assert detect_bolus_arrival(curve) >= 15


def test_steady_state_frames_are_skipped():
    curve = _brain_mean_signal(arrival_s=21.0)
    curve[:2] *= 1.3  # T1 steady state not yet reached: brighter first frames
    assert detect_bolus_arrival(curve, skip_frames=2) == 15
    assert baseline_window(15, skip_frames=2) == (2, 14)


def test_no_bolus_raises():
    flat = np.full(60, 500.0) + np.random.default_rng(0).normal(0, 2.0, 60)
    with pytest.raises(ValueError, match="No detectable bolus"):
        detect_bolus_arrival(flat)


def test_bolus_too_early_for_a_baseline_raises():
    with pytest.raises(ValueError, match="fewer than 2 baseline frames"):
        baseline_window(4, skip_frames=2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: detect_bolus_arrival(np.ones((3, 20))), "1-D curve"),
        (lambda: detect_bolus_arrival(np.array([1.0, np.nan, 1.0, 1.0])), "NaN"),
        (lambda: detect_bolus_arrival(np.ones(20), skip_frames=19), "skip_frames"),
        (lambda: detect_bolus_arrival(np.ones(20), drop_fraction=5.0), "drop_fraction"),
        (lambda: validate_baseline((5, 3), 20), "0 <= start < end <= 20"),
        (lambda: validate_baseline((0, 99), 60), "0 <= start < end <= 60"),
        (lambda: validate_baseline("ab", 60), "pair of frame indices"),
        (lambda: detect_first_pass_end(np.zeros(20), 3), "no positive first-pass peak"),
        (lambda: detect_first_pass_end(np.ones(20), 25), "arrival_frame"),
    ],
)
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_validate_baseline_accepts_a_good_window():
    assert validate_baseline((2, 10), 60) == (2, 10)
    assert validate_baseline(np.array([0, 17]), 161) == (0, 17)


def test_first_pass_ends_where_recirculation_begins():
    times = np.arange(80) * 1.0
    first = gamma_variate_aif(times, arrival_s=10.0, recirculation=0.0)
    # A clearly separated second pass (recirculation) 25 s after arrival.
    second = 0.3 * gamma_variate_aif(times, arrival_s=35.0, recirculation=0.0)
    curve = first + second
    end = detect_first_pass_end(curve, arrival_frame=10)
    trough = 14 + int(np.argmin(curve[14:40]))
    assert abs(end - trough) <= 1
    assert curve[end] < 0.5 * curve.max()


def test_first_pass_without_recirculation_runs_to_the_last_frame():
    times = np.arange(40) * 1.5
    curve = gamma_variate_aif(times, arrival_s=10.0, recirculation=0.0) + 1e-3 * (40 - np.arange(40))
    assert detect_first_pass_end(curve, arrival_frame=6) == 39


# --- brain mask ----------------------------------------------------------------------------------------------


def _head_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy baseline image: bright ellipsoidal brain with a CSF-bright ventricle, dark background."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[:16, :48, :40]
    brain = ((k - 7.5) / 7.0) ** 2 + ((j - 23.5) / 20.0) ** 2 + ((i - 19.5) / 16.0) ** 2 <= 1.0
    ventricle = ((k - 7.5) / 2.0) ** 2 + ((j - 23.5) / 6.0) ** 2 + ((i - 19.5) / 3.0) ** 2 <= 1.0
    image = np.where(brain, 900.0, 0.0) + np.where(ventricle, 600.0, 0.0)
    image = np.hypot(image + rng.normal(0, 25.0, image.shape), rng.normal(0, 25.0, image.shape))
    return image.astype(np.float32), brain


def test_otsu_matches_scikit_image():
    from skimage.filters import threshold_otsu

    image, _ = _head_image()
    assert otsu_threshold(image) == pytest.approx(threshold_otsu(image), rel=1e-6)
    bimodal = np.concatenate([np.random.default_rng(1).normal(10, 2, 500), np.random.default_rng(2).normal(50, 5, 300)])
    assert otsu_threshold(bimodal) == pytest.approx(threshold_otsu(bimodal), rel=1e-6)


def test_automatic_brain_mask_recovers_the_brain():
    image, brain = _head_image()
    speck = (0, 2, 2)
    image[speck] = 2000.0  # an isolated bright noise speck outside the head
    mask = brain_mask_from_baseline(image)
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.97
    assert not mask[speck]
    assert mask[7, 23, 19]  # the bright ventricle is inside


def test_holes_are_filled_in_3d_and_in_plane():
    mask = np.zeros((5, 12, 12), bool)
    mask[:, 2:10, 2:10] = True
    mask[2, 5:7, 5:7] = False  # enclosed in 3-D
    mask[0, 4:6, 4:6] = False  # open to the top of the array, closed in its slice
    filled = fill_holes(mask)
    assert filled[2, 5, 5] and filled[0, 4, 4]
    assert filled.sum() == 5 * 64
    reference = ndimage.binary_fill_holes(mask)
    for k in range(5):
        reference[k] = ndimage.binary_fill_holes(reference[k])
    assert np.array_equal(filled, reference)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: brain_mask_from_baseline(np.ones((4, 4))), "3-D image"),
        (lambda: brain_mask_from_baseline(np.full((3, 4, 4), np.nan)), "NaN"),
        (lambda: brain_mask_from_baseline(np.ones((3, 4, 4))), "flat"),
        (lambda: validate_mask(np.ones((3, 4, 5)), (3, 4, 4), "brain_mask"), "shape"),
        (lambda: validate_mask(np.zeros((3, 4, 4)), (3, 4, 4), "brain_mask"), "empty"),
        (lambda: otsu_threshold(np.array([])), "non-empty"),
    ],
)
def test_brain_mask_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
