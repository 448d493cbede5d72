"""``gliomaprog cohort invasion-train`` and ``gliomaprog invasion`` on a tiny phantom cohort (seed 004, Yan et al.
2020): a model trained on one patient is evaluated on the other (the phantom's future-progression region has raised
FLAIR), the one-case command writes the documented files, and bad inputs end in one line with exit code 2.

Fast settings throughout (3 mm grid, a 3x3x3 window, three features per channel, 60 iterations): what is tested is
the workflow and that the held-out AUC beats chance, not the model's quality."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import assert_nothing_written, assert_one_line_error, gliomaprog_here

from GliomaProgressionLib.cli import main as cli

SEEDS = (1, 2)
FAST = ("--channels", "t1c", "flair", "--spacing", "3", "--radius", "1", "--features", "firstorder_Mean",
        "firstorder_Median", "glcm_Contrast", "--max-iter", "60", "--voxels-per-class", "150", "--test-fraction", "0.5")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, synthetic_case):
    """Two small phantom case folders without DSC (CE-T1, FLAIR, lesion, truth/progression)."""
    from GliomaProgressionLib.phantom.folder import write_case

    folder = tmp_path_factory.mktemp("invasion") / "cohort"
    for seed in SEEDS:
        write_case(synthetic_case(seed=seed, size="small", dsc=False), folder / f"case{seed}")
    return folder


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """The model ``cohort invasion-train`` writes (one patient trained, one held out), and what it printed."""
    out = tmp_path_factory.mktemp("invasion-model") / "model"
    code = cli.main(["cohort", "invasion-train", str(cohort), "--out", str(out), *FAST, "--id", "invasion-test",
                     "--synthetic", "--quiet"])
    assert code == 0
    return out


@pytest.fixture
def listed(trained, tmp_path, monkeypatch):
    """A Resources folder whose Models.json lists the trained package under its id (sha256 checked on use)."""
    resources = tmp_path / "Resources"
    (resources / "models").mkdir(parents=True)
    entry = json.loads((trained / "models_entry.json").read_text())
    shutil.copy(trained / "invasion_test.zip", resources / entry["file"])
    (resources / "Models.json").write_text(json.dumps({"models": [], "invasion_models": [entry]}))
    monkeypatch.setenv("GLIOMAPROG_RESOURCES", str(resources))
    return resources / entry["file"]


@pytest.mark.slow
def test_invasion_train_writes_a_package_and_a_held_out_evaluation_better_than_chance(trained):
    from GliomaProgressionLib.models.invasion_packages import load_invasion_package
    from GliomaProgressionLib.models.packages import sha256_file

    assert sorted(p.name for p in trained.iterdir()) == ["evaluation.json", "evaluation_cases.csv",
                                                          "invasion_test.zip", "models_entry.json", "training.json"]
    entry = json.loads((trained / "models_entry.json").read_text())
    assert entry["sha256"] == sha256_file(trained / "invasion_test.zip")
    assert entry["synthetic"] is True and entry["description"].startswith("Trained on synthetic data")
    training = json.loads((trained / "training.json").read_text())
    assert training["cases"] == 1 and training["held_out_cases"] == 1 and training["channels"] == ["t1c", "flair"]
    assert training["truth"] == ["phantom"]
    evaluation = json.loads((trained / "evaluation.json").read_text())["evaluation"]
    assert evaluation["patients"] == 1 and evaluation["patients_with_auc"] == 1
    assert evaluation["mean_patient_auc"] > 0.5 and evaluation["pooled_auc"] > 0.5
    assert evaluation["voxel_balanced_accuracy"] > 0.5
    assert 0.5 < evaluation["mean_patient_distance_auc"] <= 1  # progression lies near the tumour: the baseline to beat
    assert evaluation["mean_patient_auc_ci95"] is None and "at least 3" in evaluation["ci_note"]
    package = load_invasion_package(trained / "invasion_test.zip")
    assert package.model.feature_names == ["t1c:firstorder_Mean", "t1c:firstorder_Median", "t1c:glcm_Contrast",
                                           "flair:firstorder_Mean", "flair:firstorder_Median", "flair:glcm_Contrast"]
    assert package.model.spacing_mm == 3.0 and package.model.radius == 1


@pytest.mark.slow
def test_invasion_writes_the_documented_files_for_a_listed_model(cohort, trained, listed, tmp_path, capsys):
    held_out = next(name for name, part in json.loads((trained / "training.json").read_text())
                    ["split_of_cases"].items() if part == "test")
    out = tmp_path / "out"
    result = gliomaprog_here(capsys, "invasion", cohort / held_out, "--out", out, "--model", "invasion-test", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "not for clinical use" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["invasion.json", "invasion_label.nii.gz",
                                                    "invasion_probability.nii.gz"]
    data = json.loads((out / "invasion.json").read_text())
    assert data["model"]["id"] == "invasion-test" and data["model"]["source"] == "Models.json"
    assert data["model"]["sha256"] == json.loads((trained / "models_entry.json").read_text())["sha256"]
    assert data["channels"] == ["t1c", "flair"] and data["evaluation"]["truth"] == "phantom"
    assert data["evaluation"]["auc"] > 0.5
    probability = sitk.ReadImage(str(out / "invasion_probability.nii.gz"))
    label = sitk.ReadImage(str(out / "invasion_label.nii.gz"))
    assert probability.GetSpacing() == pytest.approx((3.0, 3.0, 3.0)) and label.GetSize() == probability.GetSize()
    p, labels = sitk.GetArrayFromImage(probability), sitk.GetArrayFromImage(label)
    assert p.min() >= 0 and p.max() <= 1 and int((p > 0).sum()) <= data["region_voxels"]
    assert int(labels.sum()) == data["label_voxels"] > 0
    assert np.array_equal(labels == 1, p >= data["threshold"])


def test_an_unknown_or_tampered_model_is_refused_before_any_work(cohort, listed, tmp_path, capsys):
    result = gliomaprog_here(capsys, "invasion", cohort / "case1", "--out", tmp_path / "out", "--model", "no-such-model")
    assert_one_line_error(result, "Unknown invasion model 'no-such-model'", "invasion-test")
    assert_nothing_written(tmp_path, tmp_path / "out")
    data = bytearray(listed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    listed.write_bytes(bytes(data))
    result = gliomaprog_here(capsys, "invasion", cohort / "case1", "--out", tmp_path / "out", "--model", "invasion-test")
    assert_one_line_error(result, listed.name, "tampered")
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_channel_the_case_lacks_is_refused_in_one_line(cohort, tmp_path, capsys):
    from GliomaProgressionLib.invasion.classifier import train_classifier
    from GliomaProgressionLib.models.invasion_packages import package_invasion_model

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    model = train_classifier([(rng.normal(size=(40, 2)) + labels[:, None], labels)], channels=("t1c", "ncbv"),
                             features=("firstorder_Mean",), radius=1, bin_count=16, spacing_mm=3.0,
                             hidden_layers=(4,), max_iter=5)
    package, _ = package_invasion_model(model, tmp_path / "needs_ncbv.zip", {"id": "needs-ncbv", "title": "t"})
    result = gliomaprog_here(capsys, "invasion", cohort / "case1", "--out", tmp_path / "out", "--model", package)
    assert_one_line_error(result, "case1 has no nCBV channel (ncbv)", "'needs-ncbv'", "DSC series",
                          after_progress=True)
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_nan_map_is_refused_in_one_line(cohort, trained, tmp_path, capsys):
    case = shutil.copytree(cohort / "case1", tmp_path / "case")
    flair = sitk.ReadImage(str(case / "flair.nii.gz"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(flair)
    array[array.shape[0] // 2, :4, :4] = np.nan
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(flair)
    sitk.WriteImage(changed, str(case / "flair.nii.gz"))
    result = gliomaprog_here(capsys, "invasion", case, "--out", tmp_path / "out", "--model",
                         trained / "invasion_test.zip", "--quiet")
    assert_one_line_error(result, "FLAIR", "16")
    assert_nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("option, fragments", [
    (("--features", "glcm_Nothing"), ("'glcm_Nothing' is not one of the local feature maps",)),
    (("--channels", "t1c", "T2"), ("A channel of the invasion model is named 'T2'",)),
    (("--test-fraction", "1"), ("test fraction must be at least 0 and below 1",)),
])
def test_invasion_train_refuses_bad_settings_before_reading_any_case(cohort, tmp_path, capsys, option, fragments):
    result = gliomaprog_here(capsys, "cohort", "invasion-train", cohort, "--out", tmp_path / "model", *option, "--quiet")
    assert_one_line_error(result, *fragments)
    assert_nothing_written(tmp_path, tmp_path / "model")
