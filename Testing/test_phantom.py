"""The synthetic case: its truths are consistent with each other and with the images simulated from them."""

import numpy as np
import pytest
import SimpleITK as sitk

from DSCPerfusionLib.signal import delta_r2s_from_signal, rcbv_trapezoid
from GliomaProgressionLib.case import geometry
from GliomaProgressionLib.phantom.synthetic import LABELS, PhantomConfig, generate_case


@pytest.fixture(scope="module")
def clean_case(synthetic_case):
    return synthetic_case(seed=5, size="small", noise=False)


@pytest.fixture(scope="module")
def noisy_case(synthetic_case):
    return synthetic_case(seed=5, size="small")


@pytest.fixture(scope="module")
def leak_free_case(synthetic_case):
    """Noise-free and leakage-free: the series carries the truth CBV alone."""
    return synthetic_case(seed=5, size="small", noise=False, k2_enhancing=0.0)


def _baseline(case):
    arrival_frame = int(15.0 / case.config.tr_s)  # the simulator's default bolus arrival, 15 s
    return slice(2, arrival_frame - 1)


def test_series_have_their_own_clinical_grids(noisy_case):
    spacings = {name: getattr(noisy_case, name).spacing for name in ("t1c", "flair")}
    spacings["dsc"] = noisy_case.dsc.spacing
    assert np.allclose(spacings["t1c"], [2.0, 2.0, 2.4])  # small size: clinical grids coarsened
    assert np.allclose(spacings["flair"], [2.0, 2.0, 4.0])
    assert np.allclose(spacings["dsc"], [3.6, 3.6, 6.0])
    assert noisy_case.dsc.array.shape[0] == 60
    # Oblique: slice tilt differs per series, so no grid is axis-aligned and no two grids coincide.
    for name in ("t1c", "flair"):
        direction = getattr(noisy_case, name).ijk_to_ras[:3, :3] / getattr(noisy_case, name).spacing
        assert not np.allclose(direction, np.diag(np.diag(direction)), atol=1e-3)


def test_full_size_protocol_is_clinical():
    from GliomaProgressionLib.phantom.synthetic import _protocols

    protocols = _protocols("full")
    assert protocols["t1c"].spacing == (0.9375, 0.9375, 1.2)
    assert protocols["flair"].spacing[2] == 3.0
    assert protocols["dsc"].spacing == (1.8, 1.8, 5.0)


@pytest.mark.slow
def test_full_size_case_is_acquired_on_the_clinical_grids(full_case):
    """The case ``make demo`` runs on: each series on its protocol's grid, the lesion and its truths on CE-T1's."""
    from GliomaProgressionLib.phantom.synthetic import _protocols

    protocols = _protocols("full")
    for name in ("t1c", "flair"):
        assert np.allclose(getattr(full_case, name).spacing, protocols[name].spacing, atol=1e-6), name
    assert np.allclose(full_case.dsc.spacing, protocols["dsc"].spacing, atol=1e-6)
    assert full_case.dsc.array.shape[0] == len(full_case.frame_times_s) == 60
    assert full_case.lesion.array.shape == full_case.t1c.array.shape == full_case.truth["progression"].array.shape
    assert set(np.unique(full_case.lesion.array)) == {0, 1, 2, 3}
    progression = full_case.truth["progression"].array > 0
    assert progression.any() and np.all(full_case.lesion.array[progression] == LABELS["oedema"])


@pytest.mark.slow
def test_deterministic_per_seed(noisy_case):
    again = generate_case(PhantomConfig(seed=5, size="small"))
    other = generate_case(PhantomConfig(seed=6, size="small"))
    assert np.array_equal(again.dsc.array, noisy_case.dsc.array)
    assert np.array_equal(again.lesion.array, noisy_case.lesion.array)
    assert not np.array_equal(other.lesion.array, noisy_case.lesion.array)


def test_lesion_labels_and_progression_inside_the_nel(noisy_case):
    lesion, progression = noisy_case.lesion.array, noisy_case.truth["progression"].array > 0
    assert set(np.unique(lesion)) == {0, 1, 2, 3}
    assert progression.any()
    assert np.all(lesion[progression] == LABELS["oedema"])


def test_enhancing_rim_is_3_to_5_mm_and_bright(noisy_case):
    rim = noisy_case.metadata["tumour"]["enhancing_rim_thickness_mm"]
    assert 3.0 <= rim <= 5.0
    t1c, lesion = noisy_case.t1c.array, noisy_case.lesion.array
    brain = noisy_case.truth["brain"].array > 0
    assert t1c[lesion == 3].mean() > 1.25 * t1c[brain & (lesion == 0)].mean()
    assert t1c[lesion == 1].mean() < 0.7 * t1c[brain & (lesion == 0)].mean()


@pytest.mark.slow
def test_oedema_prefers_white_matter():
    from GliomaProgressionLib.phantom.synthetic import _anatomy, _grow_tumour, _load_template

    anatomy = _anatomy(_load_template("small"))
    tumour = _grow_tumour(anatomy, np.random.default_rng(2), PhantomConfig(size="small"))
    oedema = tumour.labels == LABELS["oedema"]
    shell = ~oedema & (tumour.labels == 0) & anatomy.brain
    # Oedema is far richer in white matter than the brain around it.
    assert anatomy.white[oedema].mean() > anatomy.white[shell].mean() + 0.2


@pytest.mark.slow
def test_cavity_variant():
    case = generate_case(PhantomConfig(seed=5, size="small", cavity=True))
    labels = set(np.unique(case.lesion.array))
    assert LABELS["cavity"] in labels and LABELS["necrosis"] not in labels


def test_truth_ncbv_is_one_in_nawm(noisy_case):
    ncbv, nawm = noisy_case.truth["ncbv"].array, noisy_case.truth["nawm"].array > 0
    assert nawm.sum() > 50
    assert ncbv[nawm].mean() == pytest.approx(1.0, abs=1e-6)
    # and NAWM lies in the hemisphere opposite the tumour
    centre = np.array(noisy_case.metadata["tumour"]["centre_ras_mm"])
    k, j, i = np.nonzero(nawm)
    ras = geometry.ras_from_ijk(np.stack([i, j, k], axis=1).astype(float), noisy_case.truth["nawm"].ijk_to_ras)
    assert np.all(np.sign(ras[:, 0]) != np.sign(centre[0]))


@pytest.mark.slow
def test_dsc_signal_encodes_the_truth_cbv(leak_free_case):
    """rCBV from the noise-free, leakage-free simulated series, normalised in NAWM, equals the truth nCBV."""
    case = leak_free_case
    delta = delta_r2s_from_signal(case.dsc.array.astype(np.float64), case.config.te_s, _baseline(case))
    rcbv = rcbv_trapezoid(delta, case.frame_times_s)
    nawm = case.truth["nawm"].array > 0
    measured = rcbv / rcbv[nawm].mean()
    truth = case.truth["ncbv"].array
    tissue = (case.truth["brain_dsc"].array > 0) & (truth > 0.5)
    relative_error = np.abs(measured[tissue] - truth[tissue]) / truth[tissue]
    assert np.median(relative_error) < 0.02
    assert np.corrcoef(measured[tissue], truth[tissue])[0, 1] > 0.995


@pytest.mark.slow
def test_k2_is_nonzero_only_where_the_series_leaks(clean_case, leak_free_case):
    no_leak = leak_free_case
    k2 = clean_case.truth["k2"].array
    assert k2.max() == pytest.approx(clean_case.config.k2_enhancing, rel=0.05)
    changed = np.any(clean_case.dsc.array != no_leak.dsc.array, axis=0)
    assert changed.any()
    assert np.all(k2[changed] > 0), "the series changes only where K2 > 0"
    strong = k2 > 0.25 * k2.max()
    assert np.all(changed[strong]), "every voxel with substantial K2 leaks"
    # T1-dominant leakage: the late signal rises above baseline in leaking voxels
    late = clean_case.dsc.array[-5:].mean(axis=0)
    assert np.all(late[strong] > no_leak.dsc.array[-5:].mean(axis=0)[strong])


def test_k2_truth_sits_in_the_enhancing_tumour(clean_case):
    """K2 (DSC grid) resampled onto the CE-T1 grid lands on the enhancing label: the truths are co-registered."""
    t1c_grid = geometry.sitk_from_volume(clean_case.lesion)
    k2 = sitk.Resample(geometry.sitk_from_volume(clean_case.truth["k2"]), t1c_grid, sitk.Transform(),
                       sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # Both series were acquired with their own head pose; undo the DSC pose relative to CE-T1 first.
    matrix_ras = np.array(clean_case.metadata["series"]["dsc"]["ras_t1c_from_ras_series"])
    lps = geometry.lps_from_ras(matrix_ras) @ geometry.ras_from_lps(np.eye(4))
    transform = sitk.AffineTransform(lps[:3, :3].ravel().tolist(), lps[:3, 3].tolist())
    aligned = sitk.GetArrayFromImage(sitk.Resample(geometry.sitk_from_volume(clean_case.truth["k2"]), t1c_grid,
                                                   transform.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    unaligned = sitk.GetArrayFromImage(k2)
    enhancing = clean_case.lesion.array == LABELS["enhancing"]
    assert aligned[enhancing].mean() > 0.3 * clean_case.config.k2_enhancing
    assert aligned[enhancing].mean() > unaligned[enhancing].mean(), "the recorded transform improves overlap"


@pytest.mark.slow
def test_progression_visibility_is_tunable():
    """The future-progression region can be made visible in nCBV but not in FLAIR (seed 000's finding)."""
    config = PhantomConfig(seed=5, size="small", noise=False, progression_cbv_ratio=1.8, progression_flair_ratio=1.0)
    case = generate_case(config)
    from GliomaProgressionLib.phantom.synthetic import _anatomy, _grow_tumour, _load_template, _tissue_maps

    anatomy = _anatomy(_load_template("small"))
    tumour = _grow_tumour(anatomy, np.random.default_rng(5), config)
    maps = _tissue_maps(anatomy, tumour, config)
    rest = (tumour.labels == LABELS["oedema"]) & ~tumour.progression
    assert maps["flair"][tumour.progression].mean() == pytest.approx(maps["flair"][rest].mean())
    assert maps["cbv"][tumour.progression].mean() == pytest.approx(1.8 * config.cbv.white)
    assert maps["cbv"][rest].mean() < config.cbv.white
    assert case.truth["progression"].array.any()


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(size="huge"), dict(k2_enhancing=-0.1),
                                 dict(progression_cbv_ratio=0), dict(frames=5)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        generate_case(PhantomConfig(**bad))
