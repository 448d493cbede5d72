"""Euclidean and barrier-aware (geodesic) margins against cases with exact answers."""

import numpy as np
import pytest

from CTVPlannerLib import margins as mg

SPACING = np.array([2.5, 1.2, 0.9])  # k, j, i: anisotropic on purpose
DIAGONAL = float(np.linalg.norm(SPACING))


def _sphere_in_cube(radius_mm=8.0, shape=(30, 70, 90)):
    """A sphere GTV at the centre of a cube-shaped brain; returns (gtv, brain, distance of each voxel centre from
    the sphere's centre in mm)."""
    centre = (np.array(shape) - 1) / 2
    k, j, i = np.indices(shape)
    radius = np.sqrt(((k - centre[0]) * SPACING[0]) ** 2 + ((j - centre[1]) * SPACING[1]) ** 2
                     + ((i - centre[2]) * SPACING[2]) ** 2)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return radius <= radius_mm, brain, radius


@pytest.mark.parametrize("geodesic", [False, True])
def test_sphere_grows_to_radius_plus_margin_within_a_voxel_diagonal(geodesic):
    gtv, brain, radius = _sphere_in_cube(8.0)
    margin = 15.0
    if geodesic:
        ctv = mg.grow_geodesic_mm(gtv, SPACING, margin, brain)
    else:
        ctv = mg.grow_mm(gtv, SPACING, margin, within=brain)
    assert ctv[gtv].all()
    assert ctv[brain & (radius <= 8.0 + margin - DIAGONAL)].all(), "everything well inside r + margin is in"
    assert not ctv[radius > 8.0 + margin + DIAGONAL].any(), "nothing beyond r + margin + one voxel diagonal"
    assert not ctv[~brain].any()


def test_euclidean_margin_is_exact_against_brute_force_and_cropping_changes_nothing():
    rng = np.random.default_rng(1)
    mask = np.zeros((14, 22, 26), bool)
    mask[tuple(rng.integers(3, 10, size=(3, 6)))] = True
    grown = mg.grow_mm(mask, SPACING, 6.0)
    points = np.argwhere(mask) * SPACING
    grid = np.indices(mask.shape).reshape(3, -1).T * SPACING
    nearest = np.min(np.linalg.norm(grid[:, None, :] - points[None, :, :], axis=2), axis=1)
    assert np.array_equal(grown.ravel(), nearest <= 6.0 + 1e-6)
    assert np.array_equal(grown, mg.distance_from_mask_mm(mask, SPACING) <= 6.0 + 1e-6)


def _wall_case(hole: bool):
    """A seed left of a wall (a plane of barrier voxels along i); optionally a small hole in the wall."""
    shape = (9, 60, 60)
    spacing = np.array([3.0, 1.0, 1.0])
    brain = np.ones(shape, bool)
    barrier = np.zeros(shape, bool)
    barrier[:, :, 30] = True
    if hole:
        barrier[:, 50:54, 30] = False  # the "corpus callosum": a 4 mm gap, 20 mm away from the seed's row
    seed = np.zeros(shape, bool)
    seed[4, 30, 25] = True
    return seed, brain & ~barrier, spacing


def test_a_wall_stops_the_geodesic_margin():
    seed, passable, spacing = _wall_case(hole=False)
    euclidean = mg.grow_mm(seed, spacing, 12.0)
    geodesic = mg.grow_geodesic_mm(seed, spacing, 12.0, passable)
    assert euclidean[4, 30, 31:38].all(), "straight line: 6-12 mm across the wall"
    assert not geodesic[:, :, 30:].any(), "the geodesic margin does not cross a closed wall"
    assert geodesic[4, 30, 13:30].all(), "and grows freely on its own side"


def test_the_callosal_passage_lets_the_margin_cross_only_as_far_as_the_path_allows():
    seed, passable, spacing = _wall_case(hole=True)
    geodesic = mg.grow_geodesic_mm(seed, spacing, 35.0, passable)
    # Through the gap at j = 50..53: 5 mm along i and 20 mm along j to reach it, then on.
    assert geodesic[4, 51, 31], "just across the wall next to the gap"
    path_to_far_side = np.hypot(5.0, 20.0) + np.hypot(5.0, 20.0)  # seed -> gap -> (j=30, i=35)
    assert path_to_far_side > 35.0 + 1.0
    assert not geodesic[4, 30, 35], "5 mm away in a straight line but ~41 mm by the passage"
    assert mg.grow_mm(seed, spacing, 35.0)[4, 30, 35]
    reachable = mg.grow_reachable_mm(seed, spacing, 35.0, passable)
    assert reachable[4, 30, 35], "the quick variant cuts at barriers but does not count the detour"
    closed_seed, closed_passable, _ = _wall_case(hole=False)
    assert not mg.grow_reachable_mm(closed_seed, spacing, 35.0, closed_passable)[:, :, 30:].any()


def test_geodesic_ctv_is_inside_the_euclidean_ctv_with_random_barriers():
    rng = np.random.default_rng(7)
    shape = (16, 40, 44)
    passable = rng.random(shape) > 0.15  # a porous brain
    seed = np.zeros(shape, bool)
    seed[8, 20, 20:24] = True
    for margin in (4.0, 10.0, 18.0):
        geodesic = mg.grow_geodesic_mm(seed, SPACING, margin, passable)
        euclidean = mg.grow_mm(seed, SPACING, margin)
        assert geodesic.any() and not (geodesic & ~euclidean).any()
        assert not (geodesic & ~passable & ~seed).any(), "never into a barrier"


def test_margin_inputs_are_validated():
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="margin"):
            mg.grow_mm(mask, (1, 1, 1), bad)
        with pytest.raises(ValueError, match="margin"):
            mg.grow_geodesic_mm(mask, (1, 1, 1), bad, np.ones_like(mask))
    with pytest.raises(ValueError, match="spacing"):
        mg.grow_mm(mask, (1, 0, 1), 2.0)
    with pytest.raises(ValueError, match="shape"):
        mg.grow_geodesic_mm(mask, (1, 1, 1), 2.0, np.ones((4, 4, 4), bool))
    assert not mg.grow_geodesic_mm(np.zeros_like(mask), (1, 1, 1), 3.0, np.ones_like(mask)).any()
    distances = mg.euclidean_distance_map(mask, (1, 1, 1), 2.0)
    with pytest.raises(ValueError, match="exceeds"):
        distances.within(3.0)
