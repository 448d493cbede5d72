"""The invasion map's labels, classifier and pipeline (seed 004, Yan et al. 2020) on small arrays: labels as
documented (mm on an anisotropic grid), balanced sampling, the JSON + NPZ round trip, the package's safe load, and
the pipeline's refusals. The phantom cohort, the held-out AUC and the command line are in test_invasion_cli.py."""

import json
import zipfile

import numpy as np
import pytest

from GliomaProgressionLib.invasion.classifier import (MODEL_JSON, WEIGHTS_NPZ, balanced_sample, load_classifier,
                                                      save_classifier, train_classifier)
from GliomaProgressionLib.invasion.labels import (NON_PROGRESSION, PROGRESSION, UNLABELLED, distance_mm,
                                                  peritumoral_region, training_labels)

SPACING = (3.0, 1.0, 1.0)  # k, j, i: 3 mm slices, 1 mm in plane
CENTRE = (10, 30, 30)
FEATURES = ("firstorder_Mean", "firstorder_Median", "glcm_Contrast")


def lesion_with_one_core_voxel():
    lesion = np.zeros((21, 61, 61), np.uint8)
    lesion[CENTRE] = 3  # enhancing tumour: the core the shells are measured from
    return lesion


def test_distances_are_in_mm_on_an_anisotropic_grid():
    core = np.zeros((21, 61, 61), bool)
    core[CENTRE] = True
    distance = distance_mm(core, SPACING)
    assert distance[10, 30, 35] == pytest.approx(5.0)  # 5 voxels of 1 mm in plane
    assert distance[12, 30, 30] == pytest.approx(6.0)  # 2 slices of 3 mm
    assert distance[11, 31, 30] == pytest.approx(np.hypot(3.0, 1.0))


def test_labels_are_the_progression_area_and_the_5_to_20_mm_shells():
    lesion = lesion_with_one_core_voxel()
    lesion[10, 30, 55:58] = 2  # a strand of NEL 25-27 mm from the core
    truth = np.zeros(lesion.shape, bool)
    truth[10, 30, 33] = True  # 3 mm from the core: inside the region, inside the unlabelled 0-5 mm band
    truth[10, 30, 57] = True  # in the NEL beyond the shells
    truth[CENTRE] = True  # inside the tumour core: not a peritumoral progression
    labels = training_labels(lesion, truth, SPACING)
    assert labels.dtype == np.int8
    assert labels[10, 30, 33] == PROGRESSION and labels[10, 30, 57] == PROGRESSION
    assert labels[CENTRE] == UNLABELLED
    # in plane (1 mm voxels): 4 mm unlabelled, 5 and 20 mm non-progression, 21 mm outside the region
    assert [labels[10, 30, 30 + d] for d in (4, 5, 20, 21)] == [UNLABELLED, NON_PROGRESSION, NON_PROGRESSION,
                                                                UNLABELLED]
    # across slices (3 mm): 3 mm unlabelled, 6 and 18 mm non-progression, 21 mm outside
    assert [labels[10 + n, 30, 30] for n in (1, 2, 6, 7)] == [UNLABELLED, NON_PROGRESSION, NON_PROGRESSION,
                                                              UNLABELLED]
    assert labels[10, 30, 55] == UNLABELLED  # NEL 25 mm away: in the region, beyond the shells, not progression
    region = peritumoral_region(lesion, SPACING)
    assert region[10, 30, 55] and not region[10, 30, 51] and not region[CENTRE]


def test_the_brain_mask_bounds_the_region_and_a_lesion_without_core_is_refused():
    lesion = lesion_with_one_core_voxel()
    brain = np.zeros(lesion.shape, bool)
    brain[:, :, :38] = True
    labels = training_labels(lesion, np.zeros(lesion.shape, bool), SPACING, brain)
    assert labels[10, 30, 36] == NON_PROGRESSION and labels[10, 30, 40] == UNLABELLED
    only_nel = np.where(lesion > 0, 2, 0).astype(np.uint8)
    with pytest.raises(ValueError, match="no tumour core"):
        training_labels(only_nel, np.zeros(lesion.shape, bool), SPACING)
    with pytest.raises(ValueError, match="voxel size"):
        training_labels(lesion, np.zeros(lesion.shape, bool), (1.0, 1.0))


def random_patients(rng, sizes=(2000, 300), features=6):
    patients = []
    for size in sizes:
        labels = (rng.random(size) < 0.3).astype(np.int8)
        matrix = rng.normal(size=(size, features)) + 1.5 * labels[:, None]
        matrix[::97, 2] = np.nan  # an undefined texture feature: imputed
        patients.append((matrix, labels))
    return patients


def small_model(rng, channels=("t1c", "flair"), voxels_per_class=100):
    return train_classifier(random_patients(rng, features=len(channels) * len(FEATURES)), channels=channels,
                            features=FEATURES, radius=1, bin_count=16, spacing_mm=3.0, hidden_layers=(8,),
                            voxels_per_class=voxels_per_class, max_iter=40, seed=1)


def test_balanced_sampling_gives_every_patient_the_same_voxels_per_class():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 500 + [1] * 30)
    chosen = balanced_sample(labels, 100, rng)
    assert (labels[chosen] == 0).sum() == 100 and (labels[chosen] == 1).sum() == 30  # all 30: fewer than 100
    assert len(set(chosen)) == len(chosen)
    model = small_model(np.random.default_rng(1))
    big, small = random_patients(np.random.default_rng(1))
    expected = sum(min(100, int((y == v).sum())) for _, y in (big, small) for v in (0, 1))
    assert model.training["voxels"] == expected
    assert model.feature_names[0] == "t1c:firstorder_Mean" and len(model.feature_names) == 6


def test_the_classifier_round_trips_through_json_and_npz_with_identical_probabilities(tmp_path):
    model = small_model(np.random.default_rng(2))
    paths = save_classifier(model, tmp_path)
    assert sorted(p.name for p in paths) == sorted([MODEL_JSON, WEIGHTS_NPZ])
    saved = json.loads((tmp_path / MODEL_JSON).read_text())
    assert saved["feature_names"][:2] == ["t1c:firstorder_Mean", "t1c:firstorder_Median"]
    assert saved["feature_settings"] == {"radius": 1, "bin_count": 16, "spacing_mm": 3.0}
    assert len(saved["scaler"]["mean"]) == 6 and saved["architecture"]["hidden_layers"] == [8]
    with zipfile.ZipFile(tmp_path / WEIGHTS_NPZ) as weights:
        assert all(name.endswith(".npy") for name in weights.namelist())  # plain arrays, no pickle
    loaded = load_classifier(tmp_path)
    matrix = np.vstack([m for m, _ in random_patients(np.random.default_rng(3))])
    assert np.array_equal(model.probability(matrix), loaded.probability(matrix))
    assert loaded.channels == model.channels and loaded.training == model.training


def test_a_malformed_or_pickled_model_is_refused_in_one_sentence(tmp_path):
    save_classifier(small_model(np.random.default_rng(4)), tmp_path)
    document = json.loads((tmp_path / MODEL_JSON).read_text())
    document["architecture"]["hidden_layers"] = [9]
    (tmp_path / MODEL_JSON).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="weights do not fit"):
        load_classifier(tmp_path)
    np.savez(tmp_path / WEIGHTS_NPZ, coef_0=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="weights invasion_weights.npz cannot be read"):
        load_classifier(tmp_path)
    with pytest.raises(ValueError, match="The training cases hold no progression voxel"):
        train_classifier([(np.zeros((5, 3)), np.zeros(5, int))], channels=("t1c",), features=FEATURES[:3],
                         radius=1, bin_count=16, spacing_mm=1.0)


def pipeline_case(rng):
    lesion = np.zeros((16, 20, 20), np.uint8)
    lesion[7:9, 9:11, 9:11] = 3
    lesion[5:11, 7:13, 7:13] = np.where(lesion[5:11, 7:13, 7:13] == 3, 3, 2)
    channels = {"t1c": rng.normal(100, 10, lesion.shape).astype(np.float32),
                "flair": rng.normal(100, 10, lesion.shape).astype(np.float32)}
    return channels, lesion


def test_the_pipeline_maps_the_peritumoral_region_only():
    from GliomaProgressionLib.invasion.pipeline import invasion_probability

    channels, lesion = pipeline_case(np.random.default_rng(5))
    model = small_model(np.random.default_rng(6))
    result = invasion_probability(channels, lesion, model, spacing_mm=(3.0, 3.0, 3.0))
    region = peritumoral_region(lesion, (3.0, 3.0, 3.0))
    assert np.array_equal(result.region, region)
    assert result.probability.dtype == np.float32
    assert np.all(result.probability[~region] == 0) and not result.label[~region].any()
    inside = result.probability[region]
    assert np.all((inside >= 0) & (inside <= 1)) and inside.std() > 0
    assert np.array_equal(result.label[region] == 1, inside >= model.threshold)
    assert result.report["region_voxels"] == int(region.sum())


@pytest.mark.parametrize("change, message", [
    (lambda channels: channels.pop("flair"), "needs the flair channel, which the case does not have"),
    (lambda channels: channels["t1c"].__setitem__((6, 10, 6), np.nan), "The t1c map has 1 non-finite"),
])
def test_the_pipeline_refuses_a_missing_channel_or_a_nan_map(change, message):
    from GliomaProgressionLib.invasion.pipeline import invasion_probability

    channels, lesion = pipeline_case(np.random.default_rng(7))
    change(channels)
    with pytest.raises(ValueError, match=message):
        invasion_probability(channels, lesion, small_model(np.random.default_rng(8)), spacing_mm=(3.0, 3.0, 3.0))


def test_the_pipeline_refuses_a_grid_other_than_the_models():
    from GliomaProgressionLib.invasion.pipeline import invasion_probability

    channels, lesion = pipeline_case(np.random.default_rng(9))
    with pytest.raises(ValueError, match="1 x 1 x 1 mm grid; the invasion model's features were computed on 3 mm"):
        invasion_probability(channels, lesion, small_model(np.random.default_rng(8)), spacing_mm=(1.0, 1.0, 1.0))


def test_a_package_round_trips_and_a_tampered_listed_package_is_refused(tmp_path, monkeypatch):
    from GliomaProgressionLib.models.invasion_packages import (REGISTRY_KEY, package_invasion_model,
                                                               registry_entry, resolve_invasion_model)

    model = small_model(np.random.default_rng(10))
    meta = {"id": "invasion-unit", "title": "unit", "synthetic": True}
    resources = tmp_path / "Resources"
    (resources / "models").mkdir(parents=True)
    zip_path, sha256 = package_invasion_model(model, resources / "models" / "invasion_unit.zip", meta)
    (resources / "Models.json").write_text(json.dumps({"models": [], REGISTRY_KEY: [
        registry_entry(meta, zip_path, sha256)]}))
    monkeypatch.setenv("GLIOMAPROG_RESOURCES", str(resources))
    package = resolve_invasion_model("invasion-unit")
    assert package.sha256 == sha256 and package.synthetic and "not for clinical use" in package.notice
    matrix = np.vstack([m for m, _ in random_patients(np.random.default_rng(11))])
    assert np.array_equal(package.model.probability(matrix), model.probability(matrix))
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="invasion_unit.zip is corrupt or has been tampered with"):
        resolve_invasion_model("invasion-unit")
    with pytest.raises(ValueError, match="Unknown invasion model 'nothing-here'"):
        resolve_invasion_model("nothing-here")
