"""``gliomaprog cohort train`` and ``cohort package``: export -> 1-iteration training -> package -> predict."""
import json
import subprocess
import sys
import zipfile

import pytest
import SimpleITK as sitk

from GliomaProgressionLib import cli, models
from GliomaProgressionLib.cohort_export import export_cohort
from GliomaProgressionLib.cohort_replicate import write_phantom_case

SEEDS = (3000, 3001, 3003)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three phantom cases exported (CE-T1 + FLAIR, 2 mm) and trained for one iteration in a fresh process."""
    root = tmp_path_factory.mktemp("train")
    for index, seed in enumerate(SEEDS):
        write_phantom_case((seed, index, str(root / "cohort")))
    raw = root / "Dataset902_TrainTest"
    export_cohort(root / "cohort", raw, 902, "conventional", spacing_mm=2.0)
    results = root / "results"
    # nnU-Net reads its folders from the environment once, on import: training needs its own process.
    run = subprocess.run([sys.executable, "-m", "GliomaProgressionLib.cli", "cohort", "train", str(raw), "--out",
                          str(results), "--epochs", "1", "--iterations", "1", "--device", "cpu"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return root, results


@pytest.mark.slow
def test_train_records_the_site_choices(trained):
    _, results = trained
    record = json.loads((results / "cohort_train.json").read_text())
    assert record["configuration"] == "small" and record["folds"] == [0] and record["device"] == "cpu"
    assert record["epochs"] == 1 and record["iterations_per_epoch"] == 1
    folder = results / record["results_folder"]
    plans = json.loads((folder / "plans.json").read_text())
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.0, 2.0, 2.0]
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    split = json.loads((results / "preprocessed" / record["dataset"] / "splits_final.json").read_text())
    assert split == [{"train": ["case_3000", "case_3001"], "val": ["case_3003"]}]


@pytest.mark.slow
def test_package_round_trip_through_predict(trained, capsys):
    root, results = trained
    package = root / "site.zip"
    assert cli.main(["cohort", "package", str(results), "--id", "site-model", "--title", "Site model",
                     "--out", str(package), "--synthetic"]) == 0
    with zipfile.ZipFile(package) as archive:
        assert sorted(archive.namelist()) == ["MODEL_CARD.txt", "dataset.json", "fold_0/checkpoint_final.pth",
                                              "gliomaprog.json", "plans.json"]
        meta = json.loads(archive.read("gliomaprog.json"))
    assert meta["id"] == "site-model" and meta["synthetic"] is True
    installed = models.install_package(package)
    assert installed.title == "Site model" and installed.channel_names == ["t1c", "flair"]
    case = root / "cohort" / "case_3000"
    out = root / "prediction"
    code = cli.main(["predict", "--t1c", str(case / "t1c.nii.gz"), "--flair", str(case / "flair.nii.gz"),
                     "--lesion", str(case / "lesion.nii.gz"), "--model", str(package), "--out", str(out),
                     "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "progression_prob.nii.gz")))
    assert probability.min() >= 0 and probability.max() <= 1 and probability.std() > 0


@pytest.mark.slow
def test_package_refuses_existing_zip_and_untrained_folder(trained, tmp_path, capsys):
    _, results = trained
    existing = tmp_path / "taken.zip"
    existing.write_bytes(b"keep")
    assert cli.main(["cohort", "package", str(results), "--id", "x", "--title", "X", "--out", str(existing)]) == 2
    assert existing.read_bytes() == b"keep"
    capsys.readouterr()
    assert cli.main(["cohort", "package", str(tmp_path), "--id", "x", "--title", "X",
                     "--out", str(tmp_path / "new.zip")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cohort_train.json" in error
    assert not (tmp_path / "new.zip").exists()


def test_train_rejects_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    code = cli.main(["cohort", "train", str(tmp_path), "--out", str(tmp_path / "results")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "raw dataset" in error
    assert not (tmp_path / "results").exists()
