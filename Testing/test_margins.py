"""Euclidean margins in mm on anisotropic grids, against brute force."""

import numpy as np
import pytest

from CTVPlannerLib.margins import grow_mm


def test_margin_is_exact_on_an_anisotropic_grid():
    rng = np.random.default_rng(0)
    spacing = np.array([3.0, 1.2, 0.8])  # k, j, i
    mask = np.zeros((12, 20, 24), bool)
    mask[tuple(rng.integers(4, 8, size=(3, 5)))] = True
    grown = grow_mm(mask, spacing, 5.0)
    points = np.argwhere(mask) * spacing
    grid = np.indices(mask.shape).reshape(3, -1).T * spacing
    nearest = np.min(np.linalg.norm(grid[:, None, :] - points[None, :, :], axis=2), axis=1)
    assert np.array_equal(grown.ravel(), nearest <= 5.0 + 1e-6)


def test_margin_is_clipped_and_validated():
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    within = np.zeros_like(mask)
    within[:, :, :3] = True
    grown = grow_mm(mask, (1, 1, 1), 2.0, within=within)
    assert grown[2, 2, 4] == False and grown[2, 2, 1] == True  # noqa: E712
    for bad in (dict(margin_mm=-1), dict(margin_mm=np.nan)):
        with pytest.raises(ValueError):
            grow_mm(mask, (1, 1, 1), **bad)
    with pytest.raises(ValueError):
        grow_mm(mask, (1, 0, 1), 2.0)
    with pytest.raises(ValueError):
        grow_mm(mask, (1, 1, 1), 2.0, within=np.ones((4, 4, 4), bool))
