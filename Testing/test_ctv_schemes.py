"""CTV schemes: exact definitions on small arrays, bad input, the automatic barriers, and the phantom checks."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from CTVPlannerLib import margins as mg
from CTVPlannerLib.barriers import fallback_barriers, find_ventricles
from CTVPlannerLib.metrics import target_metrics
from CTVPlannerLib.schemes import Margins, PlanningInputs, plan_targets

SPACING = np.array([2.0, 1.0, 1.5])  # k, j, i
IJK_TO_RAS = np.diag([*SPACING[::-1], 1.0])


def _case():
    """Enhancing rim, necrotic core, oedema tail, a predicted-progression blob inside the oedema."""
    shape = (24, 70, 60)
    k, j, i = np.indices(shape)
    r = np.sqrt(((k - 12) * SPACING[0]) ** 2 + ((j - 30) * SPACING[1]) ** 2 + ((i - 30) * SPACING[2]) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[(r <= 30) & (j >= 30) & (i < 38)] = 2  # oedema reaching 30 mm towards +j
    labels[r <= 9] = 3
    labels[r <= 5] = 1
    progression = (labels == 2) & (np.abs((j - 30) * SPACING[1] - 17) <= 3)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return labels, brain, progression


def _targets(plan):
    return {t.key: t.mask for t in plan.targets}


def test_schemes_follow_their_definitions_exactly():
    labels, brain, progression = _case()
    plan = plan_targets(PlanningInputs(labels, brain, IJK_TO_RAS, progression=progression,
                                       barriers=np.zeros_like(brain)), margins=Margins(ptv_mm=3.0))
    t = _targets(plan)
    lesion, core = labels > 0, np.isin(labels, (1, 3, 4))
    assert np.array_equal(t["rtog46"], mg.grow_mm(lesion, SPACING, 20.0) & brain)
    assert np.array_equal(t["rtog60"], mg.grow_mm(core, SPACING, 20.0) & brain)
    assert np.array_equal(t["eortc"], mg.grow_mm(core, SPACING, 15.0) & brain)
    assert t["rtog46"][12, 30 + 28, 30] and not t["eortc"][12, 30 + 28, 30], "EORTC leaves out oedema 19 mm away"
    assert np.array_equal(t["estro"], t["eortc"]), "no barrier given: ESTRO-EANO equals EORTC (same 15 mm)"
    assert np.array_equal(t["ai"], mg.grow_mm(lesion | progression, SPACING, 5.0) & brain)
    assert np.array_equal(t["boost"], mg.grow_mm(progression, SPACING, 5.0) & t["rtog46"])
    assert np.array_equal(t["ptv_eortc"], mg.grow_mm(t["eortc"], SPACING, 3.0) & brain)
    assert {target.kind for target in plan.targets} == {"CTV", "BOOST", "PTV"}
    assert all(target.description for target in plan.targets)


def test_targets_are_clipped_to_the_brain_and_oars_removed_but_never_the_gtv():
    labels, brain, _ = _case()
    brain[:, :, :26] = False  # the brain ends 4 voxels from the tumour centre: the lesion pokes out
    oar = np.zeros_like(brain)
    oar[:, 24:34, 36:40] = True  # crosses the enhancing tumour (radius 9 mm = 6 voxels along i)
    plan = plan_targets(PlanningInputs(labels, brain, IJK_TO_RAS, oars={"brainstem": oar}), ("eortc",),
                        Margins(oar_mm=2.0))
    eortc = _targets(plan)["eortc"]
    core = np.isin(labels, (1, 3))
    assert not eortc[~brain].any()
    assert eortc[core & brain].all(), "the GTV stays in the CTV even where an OAR overlaps it"
    grown_oar = mg.grow_mm(oar, SPACING, 2.0)
    assert not eortc[grown_oar & ~core].any(), "OAR + 2 mm is removed elsewhere"
    assert eortc[12, 30, 36] and eortc[12, 30, 42] and not eortc[12, 30, 40], "GTV kept, OAR + 2 mm cut, beyond kept"


def test_geodesic_targets_are_inside_euclidean_ones_and_respect_barriers():
    labels, brain, progression = _case()
    barrier = np.zeros_like(brain)
    barrier[:, :, 40] = True  # a wall 15 mm from the centre, 6 mm beyond the enhancing rim
    inputs = PlanningInputs(labels, brain, IJK_TO_RAS, progression=progression, barriers=barrier)
    euclidean = _targets(plan_targets(inputs, margins=Margins()))
    geodesic_plan = plan_targets(inputs, geodesic=True)
    geodesic = _targets(geodesic_plan)
    for key in ("rtog46", "rtog60", "eortc", "ai", "boost"):
        assert geodesic[key].any() and not (geodesic[key] & ~euclidean[key]).any(), key
        assert not geodesic[key][:, :, 40:].any(), key
    assert euclidean["rtog60"][:, :, 41:].any(), "the Euclidean margin crosses the wall"
    assert not euclidean["estro"][:, :, 40:].any(), "ESTRO-EANO respects the barrier without --geodesic too"
    assert all("geodesic" in t.name for t in geodesic_plan.targets)


@pytest.mark.parametrize("change, message", [
    (dict(lesion_labels=lambda x: np.where(x == 2, 5, x).astype(np.uint8)), "not BraTS labels"),
    (dict(lesion_labels=lambda x: x * 0.5), "non-integer"),
    (dict(lesion_labels=lambda x: np.zeros_like(x)), "empty"),
    (dict(brain=lambda b: np.zeros_like(b)), "brain mask is empty"),
    (dict(brain=lambda b: b[:, :, :-1]), "shape"),
    (dict(progression=lambda p: p[:-1]), "shape"),
])
def test_bad_inputs_raise_one_clear_sentence(change, message):
    labels, brain, progression = _case()
    values = dict(lesion_labels=labels, brain=brain, ijk_to_ras=IJK_TO_RAS, progression=progression)
    for key, f in change.items():
        values[key] = f(values[key])
    with pytest.raises(ValueError, match=message):
        plan_targets(PlanningInputs(**values), ("rtog", "ai"))


def test_bad_parameters_are_refused():
    labels, brain, _ = _case()
    inputs = PlanningInputs(labels, brain, IJK_TO_RAS)
    with pytest.raises(ValueError, match="needs a predicted-progression"):
        plan_targets(inputs, ("boost",))
    with pytest.raises(ValueError, match="Unknown scheme"):
        plan_targets(inputs, ("rtog", "nrg2"))
    with pytest.raises(ValueError, match="margins grow"):
        plan_targets(inputs, ("eortc",), Margins(eortc_mm=-5))
    outside = np.zeros_like(brain)
    outside[:, :, :20] = True  # the lesion is centred at i = 30, radius <= 15 voxels
    with pytest.raises(ValueError, match="inside the brain mask"):
        plan_targets(PlanningInputs(labels, outside, IJK_TO_RAS), ("rtog",))
    sheared = IJK_TO_RAS.copy()
    sheared[0, 2] = 0.5
    with pytest.raises(ValueError, match="sheared"):
        plan_targets(PlanningInputs(labels, brain, sheared), ("rtog",))


# --- automatic barriers ------------------------------------------------------------------------------------


def _head(tilt_deg=0.0):
    """An ellipsoid brain (2 mm voxels), optionally on a grid tilted about the S axis, with dark ventricles near
    the midline, a dark sulcus at the surface and a dark necrosis in the lesion."""
    shape = (60, 90, 70)
    angle = np.deg2rad(tilt_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([2.0, 2.0, 2.0])
    ijk_to_ras[:3, 3] = -ijk_to_ras[:3, :3] @ (np.array(shape[::-1]) - 1) / 2
    k, j, i = np.indices(shape)
    ras = np.stack([i, j, k, np.ones_like(i)], -1) @ ijk_to_ras.T
    r, a, s = ras[..., 0], ras[..., 1], ras[..., 2]
    brain = (r / 65) ** 2 + (a / 85) ** 2 + (s / 55) ** 2 <= 1
    image = np.where(brain, 100.0, 0.0)
    ventricles = ((np.abs(r) - 12) / 6) ** 2 + (a / 30) ** 2 + ((s - 5) / 8) ** 2 <= 1
    sulcus = brain & ((r / 65) ** 2 + (a / 85) ** 2 + (s / 55) ** 2 > 0.85) & (np.abs(a) < 8) & (r > 0)
    lesion = (r + 30) ** 2 + a ** 2 + s ** 2 <= 100
    image[ventricles | sulcus | lesion] = 20.0
    return brain, ijk_to_ras, image, ventricles, lesion, r


@pytest.mark.parametrize("tilt_deg", [0.0, 12.0])
def test_fallback_falx_separates_the_hemispheres_except_at_the_corpus_callosum(tilt_deg):
    brain, ijk_to_ras, image, ventricles, lesion, r = _head(tilt_deg)
    barriers = fallback_barriers(brain, ijk_to_ras, image, lesion)
    parts = barriers.parts
    assert parts["passage"].any() and not (parts["passage"] & barriers.mask).any()
    left, right = brain & (r < -3), brain & (r > 3)
    closed = brain & ~barriers.mask & ~parts["passage"]
    components, _ = ndimage.label(closed, structure=np.ones((3, 3, 3)))  # not even a corner leak
    assert not set(np.unique(components[left])) & set(np.unique(components[right])) - {0}
    opened, _ = ndimage.label(brain & ~barriers.mask)
    assert set(np.unique(opened[left])) & set(np.unique(opened[right])) - {0}, "the passage joins them"
    assert "tentorium" in barriers.description


def test_ventricles_are_found_from_intensity_but_not_sulci_or_the_lesion():
    brain, ijk_to_ras, image, ventricles, lesion, _ = _head()
    found = find_ventricles(image, brain, ijk_to_ras, lesion)
    dice = 2 * (found & ventricles).sum() / (found.sum() + ventricles.sum())
    assert dice > 0.95
    assert not (found & lesion).any()
    assert found.sum() < 1.05 * ventricles.sum(), "the surface sulcus is not taken"


# --- phantom -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[dict(seed=3), dict(seed=5, cavity=True)], ids=["pre-op", "cavity"])
def phantom(request):
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    return generate_case(PhantomConfig(size="small", **request.param))


def test_phantom_rtog_ctv_holds_the_lesion_and_every_brain_voxel_within_20_mm(phantom):
    labels, ijk_to_ras = phantom.lesion.array, phantom.lesion.ijk_to_ras
    brain = phantom.truth["brain"].array > 0
    plan = plan_targets(PlanningInputs(labels, brain, ijk_to_ras), ("rtog",))
    ctv46 = _targets(plan)["rtog46"]
    # Independent distances: physical voxel centres through the (tilted) IJK-to-RAS matrix and a k-d tree.
    k, j, i = np.indices(labels.shape)
    ras = np.stack([i, j, k, np.ones(labels.shape)], -1) @ ijk_to_ras.T
    lesion = (labels > 0) & brain
    distance, _ = cKDTree(ras[lesion][:, :3]).query(ras[..., :3].reshape(-1, 3), distance_upper_bound=40.0)
    distance = distance.reshape(labels.shape)
    diagonal = float(np.linalg.norm(np.linalg.norm(ijk_to_ras[:3, :3], axis=0)))
    assert not np.allclose(ijk_to_ras[:3, :3], np.diag(np.diag(ijk_to_ras[:3, :3]))), "an oblique grid"
    assert ctv46[lesion].all()
    assert ctv46[brain & (distance <= 20.0 - 1e-6)].all()
    assert not ctv46[distance > 20.0 + diagonal].any()
    assert not ctv46[~brain].any()


def test_phantom_ai_ctv_covers_the_progression_at_least_as_well_as_eortc(phantom):
    labels, ijk_to_ras = phantom.lesion.array, phantom.lesion.ijk_to_ras
    brain = phantom.truth["brain"].array > 0
    truth = phantom.truth["progression"].array > 0
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)[::-1]
    for geodesic in (False, True):
        targets = _targets(plan_targets(PlanningInputs(labels, brain, ijk_to_ras, progression=truth,
                                                       image=phantom.t1c.array), ("eortc", "ai", "boost"),
                                        geodesic=geodesic))
        ai = target_metrics(targets["ai"], truth, brain, spacing)
        eortc = target_metrics(targets["eortc"], truth, brain, spacing)
        assert ai["sensitivity"] >= eortc["sensitivity"]
        assert ai["sensitivity"] == 1.0 and ai["pattern"] == "central"
        assert target_metrics(targets["boost"], truth, brain, spacing)["sensitivity"] == 1.0
