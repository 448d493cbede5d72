"""Perfusion-habitat truth in the phantom (issue 14, Yun et al. 2023): off by default and then invisible; on, the
CEL and NEL are divided into the five habitats, and each habitat's curves can be told from the reference tissues
by the rules that name the patterns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from DSCPerfusionLib.baseline import detect_bolus_arrival
from DSCPerfusionLib.features import curve_features
from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY, HABITATS, REGIONS, label_pattern
from GliomaProgressionLib.cli.main import main
from GliomaProgressionLib.phantom import synthetic
from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.phantom.synthetic import HABITAT_SHARE_BOUNDS, LABELS, PhantomConfig

SEED = 1
REGION_LABEL = {"CEL": LABELS["enhancing"], "NEL": LABELS["oedema"]}
# SHA-256 (first 16 hex digits) of the small, noise-free seed-1 case as the phantom made it before habitats
# existed: with habitats off, a seed must keep giving that case bit for bit.
@pytest.fixture(scope="module")
def plain(synthetic_case):
    return synthetic_case(seed=SEED, size="small", noise=False)


@pytest.fixture(scope="module")
def habitat_case(synthetic_case):
    return synthetic_case(seed=SEED, size="small", noise=False, habitats=True)


@pytest.fixture(scope="module")
def anatomy_and_tumour():
    anatomy = synthetic._anatomy(synthetic._load_template("small"))
    return anatomy, synthetic._grow_tumour(anatomy, np.random.default_rng(SEED), PhantomConfig(size="small"))


def test_habitats_off_is_the_default_and_changes_nothing_outside_the_lesion(plain, habitat_case):
    """Off, the case is the one of before: the option only reaches the lesion's perfusion. (A stored digest of
    the arrays would also hold, but would fail on another CPU's or SimpleITK's rounding, not on a change.)"""
    assert PhantomConfig() == PhantomConfig(habitats=False)
    assert plain.habitats is None and not plain.config.habitats
    # 3.5 DSC voxels of margin: the lesion's partial volume on the coarse DSC grid reaches 2.2 voxels beyond the
    # voxels whose centre is in the lesion, and lesion_dsc (the label filling most of each voxel) lies up to a
    # voxel inside those.
    near_lesion = ndimage.distance_transform_edt(habitat_case.truth["lesion_dsc"].array == 0) <= 3.5
    assert near_lesion.any() and not near_lesion.all()
    assert np.array_equal(plain.dsc.array[..., ~near_lesion], habitat_case.dsc.array[..., ~near_lesion])


def test_habitats_change_the_perfusion_only(plain, habitat_case):
    for name in ("t1c", "flair", "lesion"):
        assert np.array_equal(getattr(plain, name).array, getattr(habitat_case, name).array), name
    for name in ("brain", "progression", "nawm", "brain_dsc"):
        assert np.array_equal(plain.truth[name].array, habitat_case.truth[name].array), name
    assert not np.array_equal(plain.dsc.array, habitat_case.dsc.array)
    # T2* leakage (K2 < 0, BSW convention of simulate_dsc) exists only with habitats: the perinecrotic tissue.
    assert plain.truth["k2"].array.min() >= 0 > habitat_case.truth["k2"].array.min()
    assert habitat_case.metadata["config"]["habitats"] is True


def test_habitats_fill_the_lesion_regions_on_both_grids(habitat_case):
    truth = habitat_case.truth
    for habitats, lesion in ((truth["habitats"].array, habitat_case.lesion.array),
                             (truth["habitats_dsc"].array, truth["lesion_dsc"].array)):
        assert np.array_equal(habitats > 0, np.isin(lesion, list(REGION_LABEL.values())))
        for region, label in REGION_LABEL.items():
            allowed = {h.value for h in HABITATS if region in h.regions}
            assert set(np.unique(habitats[lesion == label])) <= allowed, region
    # Infiltrated oedema is where the tumour will come back.
    infiltrated = truth["habitats"].array == HABITAT_BY_KEY["infiltrated_oedema"].value
    assert np.array_equal(infiltrated, truth["progression"].array > 0)
    # Every family is big enough to be seen on the small DSC grid.
    counts = habitat_case.habitats["voxels"]
    for region in REGIONS:
        for key, count in counts[region]["dsc"].items():
            if key != "high_angiogenic" or region == "CEL":
                assert count >= 20, (region, key, count)


def test_fractions_follow_the_maps_and_the_drawn_shares_their_bounds(habitat_case):
    summary = habitat_case.habitats
    habitats, lesion = habitat_case.truth["habitats"].array, habitat_case.lesion.array
    for region, label in REGION_LABEL.items():
        fractions = summary["fractions"][region]
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-5)
        for key, fraction in fractions.items():
            assert fraction == pytest.approx(np.mean(habitats[lesion == label] == HABITAT_BY_KEY[key].value), abs=1e-6)
    assert summary["fractions"]["NEL"]["high_angiogenic"] == 0.0
    for name, (low, high) in HABITAT_SHARE_BOUNDS.items():
        assert low <= summary["shares"][name] <= high, name
    # Nearest-neighbour sampling keeps the template's shares within a few per cent on the CE-T1 grid.
    assert summary["fractions"]["CEL"]["perinecrotic"] == pytest.approx(summary["shares"]["perinecrotic_share"],
                                                                        abs=0.05)
    assert summary["families"]["perinecrotic"]["k2"] < 0


def test_burden_varies_by_seed_and_follows_given_shares(anatomy_and_tumour):
    anatomy, tumour = anatomy_and_tumour
    cel, nel = tumour.labels == LABELS["enhancing"], tumour.labels == LABELS["oedema"]

    def fractions(**config):
        habitats, shares = synthetic._split_habitats(anatomy, tumour, PhantomConfig(size="small", habitats=True,
                                                                                     **config))
        share = {key: float(np.mean(habitats[region] == HABITAT_BY_KEY[key].value))
                 for region, keys in ((cel, ("high_angiogenic", "perinecrotic")),
                                      (nel, ("low_angiogenic", "infiltrated_oedema"))) for key in keys}
        return share, shares

    first, _ = fractions(seed=1)
    second, _ = fractions(seed=2)
    assert first != second
    given, shares = fractions(high_angiogenic_share=0.6, perinecrotic_share=0.15, nel_low_angiogenic_share=0.2,
                              infiltrated_share=0.3)
    assert given == pytest.approx({"high_angiogenic": 0.6, "perinecrotic": 0.15, "low_angiogenic": 0.2,
                                   "infiltrated_oedema": 0.3}, abs=0.002)
    # One share given, the other drawn: the drawn one gives way so that the CEL is not overfilled.
    _, shares = fractions(high_angiogenic_share=0.9)
    assert shares["perinecrotic_share"] == pytest.approx(0.1)
    wedge = tumour.progression.sum() / nel.sum()
    with pytest.raises(ValueError, match="future-progression region"):
        fractions(infiltrated_share=wedge / 2)


def _reference_masks(case) -> dict[str, np.ndarray]:
    """The phantom's own reference tissues on the DSC grid, from its truth: contralateral white matter, and grey
    matter (CBV near grey matter's 4) and CSF (CBV near 0) well away from the lesion."""
    truth = case.truth
    brain = truth["brain_dsc"].array > 0
    away = brain & ~ndimage.binary_dilation(truth["lesion_dsc"].array > 0, iterations=2)
    cbv = truth["cbv"].array
    return {"white_matter": truth["nawm"].array > 0, "grey_matter": away & (cbv > 3.6), "csf": away & (cbv < 0.4)}


@pytest.fixture(scope="module")
def curve_medians(habitat_case):
    """Median Yun curve parameters (features.curve_features) of the reference tissues and of each family in
    each region, keyed as label_pattern reads them."""
    signal = habitat_case.dsc.array.astype(np.float64)
    brain = habitat_case.truth["brain_dsc"].array > 0
    arrival = detect_bolus_arrival(signal[:, brain].mean(axis=1))
    features = curve_features(signal, habitat_case.frame_times_s, arrival)

    def medians(mask):
        assert mask.sum() >= 20
        return {"baseline": float(np.median(features["s0"][mask])),
                "drop": float(np.median(features["drop_depth"][mask])),
                "drop_speed": float(np.nanmedian(features["drop_speed"][mask])),
                "recovery": float(np.nanmedian(features["percentage_recovery"][mask])) / 100.0}

    references = {name: medians(mask) for name, mask in _reference_masks(habitat_case).items()}
    habitats, lesion = habitat_case.truth["habitats_dsc"].array, habitat_case.truth["lesion_dsc"].array
    families = {(region, h.key): medians((habitats == h.value) & (lesion == REGION_LABEL[region]))
                for region in REGIONS for h in HABITATS if region in h.regions
                and (region, h.key) != ("NEL", "high_angiogenic")}
    return references, families


def test_family_curves_are_ordered_as_the_labelling_rules_need(curve_medians):
    references, families = curve_medians
    grey, white, csf = references["grey_matter"], references["white_matter"], references["csf"]
    high, perinecrotic = families["CEL", "high_angiogenic"], families["CEL", "perinecrotic"]
    infiltrated, vasogenic = families["NEL", "infiltrated_oedema"], families["NEL", "vasogenic_oedema"]
    lows = families["CEL", "low_angiogenic"], families["NEL", "low_angiogenic"]
    # Drop: high angiogenic > grey matter > infiltrated oedema > white matter > vasogenic oedema, low angiogenic.
    assert high["drop"] > grey["drop"] > infiltrated["drop"] > white["drop"]
    assert white["drop"] > max(vasogenic["drop"], *(low["drop"] for low in lows))
    assert high["drop_speed"] > grey["drop_speed"] > max(infiltrated["drop_speed"], perinecrotic["drop_speed"])
    # Baseline: CSF > vasogenic > perinecrotic > infiltrated > grey matter > white matter > NEL low angiogenic.
    assert csf["baseline"] > vasogenic["baseline"] > perinecrotic["baseline"] > infiltrated["baseline"]
    assert infiltrated["baseline"] > grey["baseline"] > white["baseline"] > lows[1]["baseline"]
    assert grey["baseline"] > lows[0]["baseline"]
    # Recovery: T2* leakage keeps the perinecrotic signal low; T1 leakage lifts the high-angiogenic one.
    assert perinecrotic["recovery"] < white["recovery"] - 0.05
    assert high["recovery"] > 1.0 > perinecrotic["recovery"]


def test_label_pattern_names_every_family(curve_medians):
    references, families = curve_medians
    named = {(region, key): label_pattern(parameters, references, region)
             for (region, key), parameters in families.items()}
    assert named == {family: family[1] for family in families}


def test_write_case_writes_the_habitat_truth(habitat_case, tmp_path):
    folder = write_case(habitat_case, tmp_path / "case")
    truth = folder / "truth"
    for name in ("habitats.nii.gz", "habitats_dsc.nii.gz", "lesion_dsc.nii.gz", "habitats.json"):
        assert (truth / name).is_file(), name
    written = json.loads((truth / "habitats.json").read_text())
    assert written["fractions"] == habitat_case.habitats["fractions"]
    assert set(written["fractions"]) == set(REGIONS)
    assert written["labels"] == {str(h.value): h.key for h in HABITATS}
    assert set(written["families"]) == {h.key for h in HABITATS}
    assert json.loads((truth / "truth.json").read_text())["config"]["habitats"] is True


@pytest.mark.parametrize("config, words", [
    (dict(perinecrotic_share=0.2), "without habitats"),
    (dict(habitats=True, high_angiogenic_share=1.5), "fraction from 0 to 1"),
    (dict(habitats=True, perinecrotic_share=True), "fraction from 0 to 1"),
    (dict(habitats=True, high_angiogenic_share=0.7, perinecrotic_share=0.4), "exceed the whole CEL"),
    (dict(habitats=True, infiltrated_share=0.9, nel_low_angiogenic_share=0.2), "exceed the whole NEL"),
    (dict(habitats=True, cavity=True), "necrosis"),
])
def test_impossible_habitat_configs_are_refused_in_one_sentence(config, words):
    with pytest.raises(ValueError, match=words):
        PhantomConfig(**config).validated()


def test_command_line_passes_habitats_and_shares(monkeypatch, tmp_path, capsys):
    made = []
    monkeypatch.setattr(synthetic, "generate_case", lambda config, progress=None: made.append(config) or config)
    monkeypatch.setattr("GliomaProgressionLib.phantom.folder.write_case", lambda case, out, dwi=False: out)
    assert main(["phantom", "--out", str(tmp_path / "a"), "--size", "small", "--quiet", "--habitats",
                 "--perinecrotic-share", "0.3", "--infiltrated-share", "0.25"]) == 0
    assert made[0].habitats and made[0].perinecrotic_share == 0.3 and made[0].infiltrated_share == 0.25
    assert made[0].high_angiogenic_share is None
    assert main(["phantom", "--out", str(tmp_path / "b"), "--size", "small", "--perinecrotic-share", "0.3"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--perinecrotic-share" in error[0] and "--habitats" in error[0]
    with pytest.raises(SystemExit) as stopped:
        main(["phantom", "--out", str(tmp_path / "c"), "--habitats", "--perinecrotic-share", "2"])
    assert stopped.value.code == 2 and "fraction from 0 to 1" in capsys.readouterr().err
    assert len(made) == 1 and not any(tmp_path.iterdir())
