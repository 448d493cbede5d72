"""Tests of DSCPerfusionLib.habitats: curves, parameters, reference tissues, labelling rules, autoencoder,
k-means, the model files and the habitats of a simulated brain whose truth is known."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from DSCPerfusionLib.habitats.autoencoder import TrainingCancelled, encode, reconstruct, train_autoencoder
from DSCPerfusionLib.habitats.clustering import assign, fit_kmeans
from DSCPerfusionLib.habitats.curves import (
    ARRIVAL_INDEX,
    CURVE_POINTS,
    curve_parameters,
    normalised_curves,
)
from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY, HABITATS, REGIONS, habitats_of_region, label_pattern
from DSCPerfusionLib.habitats.model import ENCODER_FILE, MODEL_FILE, load_model, save_model
from DSCPerfusionLib.habitats.pipeline import (
    HabitatTrainingCase,
    compute_habitats,
    region_k_range,
    train_habitat_model,
)
from DSCPerfusionLib.habitats.references import find_reference_tissues, reference_curves, reference_parameters
from DSCPerfusionLib.simulation import add_rician_noise, simulate_dsc

torch.set_num_threads(1)
TIMES = np.arange(60) * 1.5
TE = 0.030
SHAPE = (4, 30, 40)
# tissue: (CBV ml/100 g, CBF ml/100 g/min, K2 1/s, S0); the lesion tissues are named by their habitat.
TISSUES = {
    "csf": (0.2, 3.0, 0.0, 1500.0),
    "grey": (4.0, 60.0, 0.0, 1050.0),
    "white": (2.0, 22.0, 0.0, 900.0),
    "high_angiogenic": (9.0, 110.0, 0.01, 1000.0),
    "low_angiogenic": (2.2, 20.0, 0.0, 950.0),
    "infiltrated_oedema": (2.6, 26.0, 0.0, 1150.0),
    "vasogenic_oedema": (1.0, 9.0, 0.0, 1380.0),
}


def _tissue_map() -> np.ndarray:
    """Columns of tissue along array axis i: CSF, cortex, white matter, then NEL and CEL, two habitats each."""
    names = np.empty(SHAPE, object)
    names[..., 0:4] = "csf"
    names[..., 4:10] = "grey"
    names[..., 10:30] = "white"
    names[:, :15, 30:35], names[:, 15:, 30:35] = "infiltrated_oedema", "vasogenic_oedema"
    names[:, :15, 35:40], names[:, 15:, 35:40] = "high_angiogenic", "low_angiogenic"
    return names


def _simulated_brain(seed: int, with_artery: bool = True):
    """A noisy DSC series of ``_tissue_map`` (60 frames of 1.5 s, TE 30 ms) and its masks."""
    names = _tissue_map()
    values = {index: np.vectorize(lambda n: TISSUES[n][index])(names).astype(np.float64) for index in range(4)}
    simulation = simulate_dsc(TIMES, values[0], values[1], values[2], values[3], TE)
    signal = simulation.signal
    if with_artery:  # a few arterial voxels in the cortex: the AIF itself, partial-volumed
        peak = simulation.aif / simulation.aif.max() * 60.0
        signal[:, :, 2:27:3, 6] = (1000.0 * np.exp(-TE * peak))[:, None, None]
    signal = add_rician_noise(signal, 900.0 / 60.0, np.random.default_rng(seed))
    cel = np.isin(names, ["high_angiogenic", "low_angiogenic"])
    nel = np.isin(names, ["infiltrated_oedema", "vasogenic_oedema"])
    nawm = names == "white"
    nawm[..., 24:] = False
    return {"signal": signal, "names": names, "cel": cel, "nel": nel, "nawm": nawm,
            "brain": np.ones(SHAPE, bool), "spacing": (4.0, 2.0, 2.0)}


def _case(brain: dict) -> HabitatTrainingCase:
    return HabitatTrainingCase(brain["signal"], TIMES, brain["cel"], brain["nel"], brain_mask=brain["brain"],
                               nawm_mask=brain["nawm"], spacing_mm=brain["spacing"])


@pytest.fixture(scope="module")
def brain():
    return _simulated_brain(seed=7)


@pytest.fixture(scope="module")
def model():
    return train_habitat_model([_case(_simulated_brain(seed)) for seed in (1, 2)], epochs=15, seed=0,
                               k_range=(2, 4), synthetic=True)


# --- curves and parameters ----------------------------------------------------------------------------------


def test_curve_parameters_match_hand_computed_values():
    curve = np.full(60, 2.0)
    curve[12:16] = [1.75, 1.5, 1.25, 1.0]  # from baseline 2 down to 1 at frame 15 (0-based)
    curve[16:] = 1.5  # recovered half-way: S1 = 1.5
    parameters = curve_parameters(curve[None], TIMES)
    assert parameters["baseline"][0] == pytest.approx(2.0)
    assert parameters["drop"][0] == pytest.approx(1.0)
    # onset = frame 12 (first with more than 5 % of the drop), minimum at frame 15: 1 / (3 x 1.5 s)
    assert parameters["drop_speed"][0] == pytest.approx(1.0 / 4.5)
    assert parameters["recovery"][0] == pytest.approx(0.5)


def test_a_curve_without_drop_has_no_speed_nor_recovery():
    parameters = curve_parameters(np.full((1, 60), 1.3), TIMES)
    assert parameters["drop"][0] == 0 and np.isnan(parameters["drop_speed"][0]) and np.isnan(parameters["recovery"][0])


def test_normalised_curves_divide_by_white_matter_and_keep_an_aligned_60_frame_series(brain):
    curves, times = normalised_curves(brain["signal"], TIMES, brain["cel"], brain["nawm"], arrival_frame=ARRIVAL_INDEX)
    assert curves.shape == (int(brain["cel"].sum()), CURVE_POINTS) and curves.dtype == np.float32
    np.testing.assert_allclose(times, TIMES)
    white = brain["signal"][:, brain["nawm"]].mean(axis=1)
    expected = brain["signal"][:, brain["cel"]].T / np.median(white[2:9])
    np.testing.assert_allclose(curves[:, 2:], expected[:, 2:], rtol=1e-5)
    # The two steady-state frames are replaced by the first baseline frame.
    np.testing.assert_allclose(curves[:, :2], expected[:, [2, 2]], rtol=1e-5)


def test_normalised_curves_put_a_slower_series_on_the_same_axis(brain):
    fast, _ = normalised_curves(brain["signal"], TIMES, brain["nel"], brain["nawm"], arrival_frame=ARRIVAL_INDEX)
    # Every other frame (TR 3 s, 30 frames), the same arrival time: frame 5 of the slow series is frame 11.
    slow, _ = normalised_curves(brain["signal"][1::2], TIMES[1::2], brain["nel"], brain["nawm"], arrival_frame=5)
    difference = np.abs(slow.mean(axis=0) - fast.mean(axis=0))
    assert np.max(difference) < 0.05 and np.median(difference) < 0.005


@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, "cel": np.zeros(SHAPE, bool)}, "empty"),
    (lambda b: {**b, "nawm": np.zeros(SHAPE, bool)}, "white-matter mask is empty"),
    (lambda b: {**b, "signal": b["signal"][:15], "times": TIMES[:15]}, "at least 20"),
    (lambda b: {**b, "times": TIMES[::-1]}, "not strictly increasing"),
    (lambda b: {**b, "signal": np.where(b["cel"], -1.0, b["signal"])}, "negative"),
    (lambda b: {**b, "signal": np.where(b["cel"], np.nan, b["signal"])}, "NaN"),
    (lambda b: {**b, "cel": b["cel"][:2]}, "shape"),
])
def test_normalised_curves_refuse_bad_input_in_one_sentence(brain, change, message):
    bad = change({**brain, "times": TIMES})
    with pytest.raises(ValueError, match=message) as error:
        normalised_curves(bad["signal"], bad["times"], bad["cel"], bad["nawm"])
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


# --- reference tissues ----------------------------------------------------------------------------------------


def test_reference_tissues_are_found_in_the_right_tissue(brain):
    masks = find_reference_tissues(brain["signal"], TIMES, brain["brain"], lesion_mask=brain["cel"] | brain["nel"],
                                   nawm_mask=brain["nawm"], spacing_mm=brain["spacing"])
    names = brain["names"]
    assert np.mean(names[masks["grey_matter"]] == "grey") >= 0.9
    assert np.all(names[masks["csf"]] == "csf")
    arterial = np.zeros(SHAPE, bool)
    arterial[:, 2:27:3, 6] = True
    assert masks["artery"].any() and np.all(arterial[masks["artery"]])
    assert not np.any(masks["grey_matter"] & arterial)
    curves, times = reference_curves(brain["signal"], TIMES, masks)
    parameters = reference_parameters(curves, times)
    assert parameters["white_matter"]["baseline"] == pytest.approx(1.0, abs=0.01)
    assert parameters["csf"]["baseline"] > parameters["grey_matter"]["baseline"] > 1.0
    assert parameters["artery"]["drop"] > parameters["grey_matter"]["drop"] > parameters["white_matter"]["drop"]


def test_a_missing_artery_is_refused_unless_allowed():
    brain = _simulated_brain(seed=3, with_artery=False)
    arguments = dict(lesion_mask=brain["cel"] | brain["nel"], nawm_mask=brain["nawm"], spacing_mm=brain["spacing"])
    with pytest.raises(ValueError, match="No arterial voxels"):
        find_reference_tissues(brain["signal"], TIMES, brain["brain"], **arguments)
    masks = find_reference_tissues(brain["signal"], TIMES, brain["brain"], require_artery=False, **arguments)
    assert not masks["artery"].any() and masks["csf"].any()


# --- labelling rules ------------------------------------------------------------------------------------------

REFERENCES = {
    "grey_matter": {"baseline": 1.15, "drop": 0.50, "drop_speed": 0.085, "recovery": 0.97},
    "white_matter": {"baseline": 1.00, "drop": 0.27, "drop_speed": 0.060, "recovery": 0.98},
    "csf": {"baseline": 1.65, "drop": 0.05, "drop_speed": 0.010, "recovery": 1.00},
}


def _pattern(baseline, drop, speed, recovery):
    return {"baseline": baseline, "drop": drop, "drop_speed": speed, "recovery": recovery}


@pytest.mark.parametrize("region, parameters, adc, expected", [
    ("CEL", _pattern(1.1, 0.80, 0.15, 1.05), None, "high_angiogenic"),  # rule 1
    ("NEL", _pattern(1.3, 0.60, 0.09, 0.95), None, "high_angiogenic"),  # rule 1 in the NEL
    ("CEL", _pattern(1.1, 0.80, 0.05, 1.05), None, "low_angiogenic"),  # deep but slow: not rule 1
    ("CEL", _pattern(1.35, 0.30, 0.06, 0.90), None, "perinecrotic"),  # rule 2
    ("CEL", _pattern(1.35, 0.30, 0.06, 1.02), None, "low_angiogenic"),  # bright but recovers: rule 3
    ("CEL", _pattern(1.05, 0.30, 0.06, 0.90), None, "low_angiogenic"),  # poor recovery, dark: rule 3
    ("NEL", _pattern(1.05, 0.30, 0.06, 0.98), None, "low_angiogenic"),  # rule 4
    ("NEL", _pattern(1.05, 0.30, 0.06, 0.98), 1.2, "low_angiogenic"),  # rule 4, low ADC
    ("NEL", _pattern(1.05, 0.30, 0.06, 0.98), 1.9, "infiltrated_oedema"),  # high ADC: oedema (rule 6)
    ("NEL", _pattern(1.05, 0.20, 0.04, 0.98), 1.9, "vasogenic_oedema"),  # high ADC, less than WM's drop (rule 5)
    ("NEL", _pattern(1.30, 0.20, 0.05, 0.98), None, "vasogenic_oedema"),  # rule 5: drop below WM's
    ("NEL", _pattern(1.45, 0.35, 0.06, 0.98), None, "vasogenic_oedema"),  # rule 5: baseline nearer CSF
    ("NEL", _pattern(1.30, 0.35, 0.06, 0.98), None, "infiltrated_oedema"),  # rule 6
    ("NEL", _pattern(1.30, 0.0, float("nan"), float("nan")), None, "vasogenic_oedema"),  # no drop at all
])
def test_each_labelling_rule(region, parameters, adc, expected):
    assert label_pattern(parameters, REFERENCES, region, adc) == expected
    assert expected in habitats_of_region(region)


def test_labelling_refuses_unknown_region_and_missing_references():
    with pytest.raises(ValueError, match="region must be one of CEL, NEL"):
        label_pattern(_pattern(1, 0.3, 0.06, 1), REFERENCES, "oedema")
    with pytest.raises(ValueError, match="lack the csf"):
        label_pattern(_pattern(1, 0.3, 0.06, 1), {k: v for k, v in REFERENCES.items() if k != "csf"}, "NEL")


# --- autoencoder and k-means ----------------------------------------------------------------------------------


def test_autoencoder_training_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    curves = (1.0 - 0.3 * np.exp(-((np.arange(60) - 15) / 3.0) ** 2))[None] * rng.uniform(0.8, 1.2, (300, 1))
    first = train_autoencoder(curves, epochs=3, seed=5)
    second = train_autoencoder(curves, epochs=3, seed=5)
    assert all(np.array_equal(first[key], second[key]) for key in first)
    other = train_autoencoder(curves, epochs=3, seed=6)
    assert not np.array_equal(first["to_latent.weight"], other["to_latent.weight"])
    latent = encode(curves, first)
    assert latent.shape == (300, 5) and latent.dtype == np.float32
    assert torch.get_num_threads() == 1  # restored after training and encoding (set at the top of this file)


def test_autoencoder_learns_the_curves_and_can_be_cancelled():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 0.5, (400, 1))
    curves = 1.0 - depth * np.exp(-((np.arange(60) - 15) / 3.0) ** 2)[None]
    messages = []
    weights = train_autoencoder(curves, epochs=25, seed=0, batch_size=32, progress=lambda f, m: messages.append((f, m)))
    assert len(messages) == 25 and messages[-1][0] == 1.0
    error = np.mean((reconstruct(curves, weights) - curves) ** 2)
    assert error < 0.1 * np.var(curves)  # far better than the mean curve
    with pytest.raises(TrainingCancelled):
        train_autoencoder(curves, epochs=2, seed=0, should_stop=lambda: True)


def test_kmeans_picks_the_number_of_separated_groups_by_silhouette():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0, 0, 0], [6, 0, 0, 0, 0], [0, 6, 0, 0, 0]], float)
    truth = np.repeat(np.arange(3), 200)
    points = centres[truth] + rng.normal(0, 0.5, (600, 5))
    fitted, k, scores = fit_kmeans(points, (2, 5), seed=0)
    assert k == 3 and fitted.shape == (3, 5) and scores[3] == max(scores.values())
    assert adjusted_rand_score(truth, assign(points, fitted)) > 0.99


# --- habitats of a simulated brain ----------------------------------------------------------------------------


def test_habitats_of_a_held_out_brain_agree_with_the_truth(model, brain):
    assert model.synthetic and "synthetic" in model.notice
    result = compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], model, brain_mask=brain["brain"],
                              nawm_mask=brain["nawm"], spacing_mm=brain["spacing"])
    lesion = brain["cel"] | brain["nel"]
    truth = np.vectorize(lambda n: HABITAT_BY_KEY[n].value if n in HABITAT_BY_KEY else 0)(brain["names"])
    assert adjusted_rand_score(truth[lesion], result.labels[lesion]) >= 0.8
    for habitat in ("high_angiogenic", "low_angiogenic", "infiltrated_oedema", "vasogenic_oedema"):
        found = result.labels[brain["names"] == habitat]
        assert np.bincount(found).argmax() == HABITAT_BY_KEY[habitat].value, habitat
    assert np.all(result.labels[~lesion] == 0) and np.all(result.patterns[lesion] > 0)
    for region in REGIONS:
        assert list(result.fractions[region]) == list(habitats_of_region(region))
        assert sum(result.fractions[region].values()) == pytest.approx(1.0, abs=1e-5)
    assert result.fractions["CEL"]["high_angiogenic"] == pytest.approx(0.5, abs=0.1)
    assert {row["region"] for row in result.pattern_table} == set(REGIONS)
    assert set(result.reference_curves) == {"artery", "grey_matter", "white_matter", "csf"}
    assert all(len(curve) == CURVE_POINTS for curve in result.pattern_curves.values())
    json.dumps(result.report, allow_nan=False)


def test_each_region_is_searched_for_at_least_as_many_patterns_as_it_has_habitats(model):
    assert region_k_range((2, 6), "CEL") == (3, 6) and region_k_range((2, 6), "NEL") == (4, 6)
    assert region_k_range((5, 6), "NEL") == (5, 6)
    for region in REGIONS:
        k = model.training["regions"][region]["k"]
        assert len(model.labels[region]) == k == model.centres[region].shape[0] >= len(habitats_of_region(region))
        assert model.k_per_region[region] == k
        searched = [int(key) for key in model.training["regions"][region]["silhouettes"]]
        assert min(searched) == len(habitats_of_region(region))


def test_training_refuses_an_empty_or_foreign_cohort_and_can_be_cancelled(brain):
    with pytest.raises(ValueError, match="The training cohort has no case"):
        train_habitat_model([], epochs=1)
    with pytest.raises(ValueError, match="must be a HabitatTrainingCase"):
        train_habitat_model([brain], epochs=1)
    with pytest.raises(ValueError, match=r"Training case 1: The CEL mask has no voxel"):
        train_habitat_model([_case({**brain, "cel": np.zeros(SHAPE, bool)})], epochs=1)
    with pytest.raises(TrainingCancelled):
        train_habitat_model([_case(brain)], epochs=1, should_stop=lambda: True)


def test_model_labels_are_used_when_not_relabelled(model, brain):
    result = compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], model, brain_mask=brain["brain"],
                              nawm_mask=brain["nawm"], spacing_mm=brain["spacing"], relabel=False)
    assert all(row["habitat"] == row["model_habitat"] for row in result.pattern_table)
    assert result.report["relabelled"] is False


def test_each_brain_renames_the_patterns_against_its_own_references(model, brain):
    wrong = dataclasses.replace(model, labels={"CEL": list(model.labels["CEL"]),
                                               "NEL": ["infiltrated_oedema"] * len(model.labels["NEL"])})
    arguments = dict(brain_mask=brain["brain"], nawm_mask=brain["nawm"], spacing_mm=brain["spacing"])
    renamed = compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], wrong, **arguments)
    vasogenic = brain["names"] == "vasogenic_oedema"
    assert np.mean(renamed.labels[vasogenic] == HABITAT_BY_KEY["vasogenic_oedema"].value) > 0.9
    assert any("Named differently from training" in warning for warning in renamed.warnings)
    kept = compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], wrong, relabel=False, **arguments)
    assert np.all(kept.labels[brain["nel"]] == HABITAT_BY_KEY["infiltrated_oedema"].value)


def test_adc_ratio_to_white_matter_is_reported_per_pattern(model, brain):
    adc = np.where(brain["nel"], 1.6e-3, 0.8e-3)
    result = compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], model, brain_mask=brain["brain"],
                              nawm_mask=brain["nawm"], spacing_mm=brain["spacing"], adc=adc)
    ratios = {row["region"]: row["adc_ratio"] for row in result.pattern_table if row["voxels"]}
    assert ratios["NEL"] == pytest.approx(2.0) and ratios["CEL"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="The ADC map has shape"):
        compute_habitats(brain["signal"], TIMES, brain["cel"], brain["nel"], model, nawm_mask=brain["nawm"],
                         brain_mask=brain["brain"], adc=adc[:2])


def test_a_lesion_filling_the_brain_leaves_no_reference(brain):
    lesion = np.ones(SHAPE, bool)
    lesion[..., :2] = False
    with pytest.raises(ValueError, match="Too little brain lies away from the lesion"):
        find_reference_tissues(brain["signal"], TIMES, brain["brain"], lesion_mask=lesion, nawm_mask=brain["nawm"],
                               require_artery=False,
                               spacing_mm=brain["spacing"])


@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, "cel": np.zeros(SHAPE, bool)}, "The CEL mask has no voxel"),
    (lambda b: {**b, "nel": np.zeros(SHAPE, bool)}, "The NEL mask has no voxel"),
    (lambda b: {**b, "nel": np.pad(np.ones((1, 3, 3), bool), ((0, 3), (0, 27), (30, 7)))}, "at least 20"),
    (lambda b: {**b, "cel": b["cel"][:, :, :20]}, "shape"),
    (lambda b: {**b, "signal": None}, "No DSC series"),
])
def test_compute_habitats_refuses_bad_input_in_one_sentence(model, brain, change, message):
    bad = change(brain)
    with pytest.raises(ValueError, match=message) as error:
        compute_habitats(bad["signal"], TIMES, bad["cel"], bad["nel"], model, brain_mask=brain["brain"],
                         nawm_mask=brain["nawm"])
    assert str(error.value).count(". ") == 0


# --- model files ----------------------------------------------------------------------------------------------


def test_model_round_trip_gives_the_same_habitats(model, brain, tmp_path):
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.labels == model.labels and loaded.synthetic is True and loaded.notice == model.notice
    for region in REGIONS:
        np.testing.assert_allclose(loaded.centres[region], model.centres[region], atol=1e-6)
    assert all(np.array_equal(loaded.encoder[key], model.encoder[key]) for key in model.encoder)
    assert loaded.training == json.loads(json.dumps(model.training))


def _saved(model, folder):
    save_model(model, folder)
    return json.loads((folder / MODEL_FILE).read_text())


@pytest.mark.parametrize("tamper, message", [
    (lambda d: d["regions"]["CEL"]["labels"].__setitem__(0, "vasogenic_oedema"), "name each of its"),
    (lambda d: d["regions"]["NEL"]["labels"].__setitem__(0, "necrosis"), "name each of its"),
    (lambda d: d["regions"]["NEL"].__setitem__("centres", [[0.0, 1.0]]), "centres of shape"),
    (lambda d: d.__setitem__("version", 99), "version 99"),
    (lambda d: d.__setitem__("synthetic", "yes"), "synthetic data"),
    (lambda d: d["curve_settings"].__setitem__("step_s", 2.0), "another curve axis"),
])
def test_a_tampered_model_json_is_refused_naming_the_file(model, tmp_path, tamper, message):
    document = _saved(model, tmp_path)
    tamper(document)
    (tmp_path / MODEL_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message) as error:
        load_model(tmp_path)
    assert MODEL_FILE in str(error.value)


def test_unreadable_json_and_object_arrays_are_refused(model, tmp_path):
    _saved(model, tmp_path)
    (tmp_path / MODEL_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{MODEL_FILE} could not be read as JSON"):
        load_model(tmp_path)
    _saved(model, tmp_path)
    arrays = dict(model.encoder)
    arrays["to_latent.bias"] = np.array([{"code": 1}] * 5, dtype=object)
    np.savez(tmp_path / ENCODER_FILE, **arrays)
    with pytest.raises(ValueError, match=f"{ENCODER_FILE} could not be read as plain numeric arrays"):
        load_model(tmp_path)
    arrays["to_latent.bias"] = np.zeros(7, np.float32)
    np.savez(tmp_path / ENCODER_FILE, **arrays)
    with pytest.raises(ValueError, match="shapes of the curve autoencoder"):
        load_model(tmp_path)


def test_vocabulary_is_unchanged():
    assert [h.key for h in HABITATS] == ["high_angiogenic", "low_angiogenic", "perinecrotic", "infiltrated_oedema",
                                         "vasogenic_oedema"]
    assert [h.value for h in HABITATS] == [1, 2, 3, 4, 5] and REGIONS == ("CEL", "NEL")
