"""Target metrics against hand counts, the empty cases, and HD95 against brute force."""

import math

import numpy as np
import pytest
from scipy import ndimage

from CTVPlannerLib.metrics import hd95_mm, json_safe, recurrence_pattern, target_metrics

SPACING = (1.0, 1.0, 2.0)  # k, j, i: voxels of 2 mm^3 along a line


def _line(*ranges):
    mask = np.zeros((1, 1, 10), bool)
    for start, stop in ranges:
        mask[0, 0, start:stop] = True
    return mask


def test_metrics_equal_hand_counts():
    brain = _line((0, 10))
    recurrence = _line((2, 6))  # voxels 2-5
    target = _line((4, 9))  # voxels 4-8: TP 2 (4, 5), FP 3, FN 2
    m = target_metrics(target, recurrence, brain, SPACING)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(3 / 6)  # brain 10 - |R u T| 7 = 3 spared, of 6 non-recurrence
    assert m["dice"] == pytest.approx(4 / 9)
    assert m["tversky"] == pytest.approx(2 / (2 + 0.02 * 3 + 0.98 * 2))
    beta = 1 / (4 / 10 + 1)
    assert m["pcc"] == pytest.approx(2 / (2 + (1 - beta) * 3 + beta * 2))
    # Every voxel of a one-voxel-thick line is surface. T -> R: 0, 0, 2, 4, 6 mm; R -> T: 4, 2, 0, 0 mm.
    assert m["hd95_mm"] == pytest.approx(max(np.percentile([0, 0, 2, 4, 6], 95), np.percentile([4, 2, 0, 0], 95)))
    assert m["hd95_mm"] == pytest.approx(5.6)
    assert (m["target_ml"], m["recurrence_ml"], m["recurrence_inside_ml"]) == pytest.approx((0.010, 0.008, 0.004))
    assert m["pattern"] == "marginal"


def test_target_and_recurrence_are_taken_within_the_brain():
    brain = _line((0, 6))
    m = target_metrics(_line((4, 10)), _line((5, 10)), brain, SPACING)
    assert m["target_ml"] == pytest.approx(0.004) and m["recurrence_ml"] == pytest.approx(0.002)
    assert m["sensitivity"] == 1.0 and m["pattern"] == "central"


@pytest.mark.parametrize("target, recurrence, expected", [
    (_line((4, 9)), _line(), dict(sensitivity=1.0, specificity=0.5, dice=0.0, hd95_mm=math.inf, tversky=0.0,
                                  pcc=1.0, pattern="none")),
    (_line(), _line((2, 6)), dict(sensitivity=0.0, specificity=1.0, dice=0.0, hd95_mm=math.inf, tversky=0.0,
                                  pcc=0.0, pattern="distant")),
    (_line(), _line(), dict(sensitivity=1.0, specificity=1.0, dice=1.0, hd95_mm=0.0, tversky=1.0, pcc=1.0,
                            pattern="none")),
])
def test_empty_target_or_recurrence_have_documented_values(target, recurrence, expected):
    m = target_metrics(target, recurrence, _line((0, 10)), SPACING)
    for key, value in expected.items():
        assert m[key] == value, key
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
    safe = json_safe(m)
    assert safe["hd95_mm"] is None if math.isinf(expected["hd95_mm"]) else safe["hd95_mm"] == expected["hd95_mm"]


def test_pattern_thresholds():
    assert [recurrence_pattern(f) for f in (1.0, 0.95, 0.949, 0.80, 0.799, 0.20, 0.199, 0.0, None)] == [
        "central", "central", "in-field", "in-field", "marginal", "marginal", "distant", "distant", "none"]


def _brute_hd95(a, b, spacing):
    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, border_value=0)

    pa, pb = np.argwhere(surface(a)) * spacing, np.argwhere(surface(b)) * spacing
    d = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=2)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_matches_brute_force_on_anisotropic_blobs():
    rng = np.random.default_rng(3)
    spacing = np.array([3.0, 1.1, 0.7])
    a = ndimage.binary_dilation(rng.random((12, 18, 20)) > 0.985, iterations=2)
    b = ndimage.binary_dilation(rng.random((12, 18, 20)) > 0.985, iterations=2)
    assert hd95_mm(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing))
    assert hd95_mm(a, a, spacing) == 0.0


def test_bad_metric_inputs_are_refused():
    with pytest.raises(ValueError, match="share one grid"):
        target_metrics(_line(), np.zeros((1, 1, 9), bool), _line((0, 10)), SPACING)
    with pytest.raises(ValueError, match="brain mask is empty"):
        target_metrics(_line(), _line(), _line(), SPACING)
