"""Issue 7's acceptance end to end: six small phantom cases -> ``cohort export`` -> nnU-Net's own
integrity check accepts the dataset (inside ``cohort train``, as ``nnUNetv2_plan_and_preprocess
--verify_dataset_integrity`` runs it) -> ``cohort train`` for two epochs on the CPU -> ``cohort package`` ->
``predict`` installs and runs the package."""
import json
import os
import shutil
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GliomaProgressionLib.cli import main as cli

from GliomaProgressionLib.models import packages as models
from GliomaProgressionLib.cohort.export import export_cohort
from GliomaProgressionLib.cohort.replicate import flair_progression, replication_config
from GliomaProgressionLib.models.training import is_positive
from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.phantom.synthetic import generate_case
from helpers import crop_case_to_lesion, gliomaprog

SEEDS = (3000, 3001, 3002, 3003, 3004, 3005)  # 3003: the cohort recipe's case without progression
DATASET = "Dataset902_TrainTest"


def _write_case_without_dsc(seed: int, index: int, folder):
    """``write_phantom_case``'s case folder (same CE-T1, FLAIR, lesion, progression label and index) without its
    DSC series: a conventional export never reads it, and writing it was most of the cohort's making time."""
    case = generate_case(replace(replication_config(seed), dsc=False))
    target = write_case(case, folder / f"case_{seed:04d}")
    if is_positive(seed):
        sitk.WriteImage(flair_progression(case), str(target / "progression.nii.gz"), True)
    (target / "case.json").write_text(json.dumps({"index": index, "seed": seed}), encoding="utf-8")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six phantom cases exported as CE-T1 + FLAIR on a 2 mm grid (all training cases) into an nnU-Net raw folder."""
    root = tmp_path_factory.mktemp("train")
    for index, seed in enumerate(SEEDS):
        _write_case_without_dsc(seed, index, root / "cohort")
    export_cohort(root / "cohort", root / "nnunet_raw" / DATASET, 902, "conventional", spacing_mm=2.0)
    return root


@pytest.fixture(scope="module")
def trained(cohort):
    """``cohort train`` for 2 epochs x 2 iterations in a fresh process (nnU-Net reads its folders on import)."""
    results = cohort / "results"
    run = gliomaprog("cohort", "train", cohort / "nnunet_raw" / DATASET, "--out", results, "--epochs", 2,
                     "--iterations", 2, "--device", "cpu", timeout=None)
    assert run.returncode == 0, run.stderr[-2000:]
    return cohort, results


@pytest.mark.slow
def test_train_runs_two_epochs_and_records_the_site_choices(trained):
    _, results = trained
    record = json.loads((results / "cohort_train.json").read_text())
    assert record["configuration"] == "small" and record["folds"] == [0] and record["device"] == "cpu"
    assert record["epochs"] == 2 and record["iterations_per_epoch"] == 2
    folder = results / record["results_folder"]
    plans = json.loads((folder / "plans.json").read_text())
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.0, 2.0, 2.0]
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    losses = checkpoint["logging"]["train_losses"]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # two epochs, no NaN loss
    split = json.loads((results / "preprocessed" / record["dataset"] / "splits_final.json").read_text())
    assert split == [{"train": [f"case_{seed}" for seed in SEEDS[:-1]], "val": ["case_3005"]}]


@pytest.mark.slow
def test_nnunet_verified_planned_and_preprocessed_the_export(trained):
    """``cohort train`` runs nnU-Net's fingerprint extraction with its dataset integrity check (the function
    ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` calls), its planner and its preprocessing."""
    _, results = trained
    record = json.loads((results / "cohort_train.json").read_text())
    preprocessed = results / "preprocessed" / record["dataset"]
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == len(SEEDS)
    assert all(spacing == pytest.approx([2.0, 2.0, 2.0]) for spacing in fingerprint["spacings"])
    assert len(list(preprocessed.glob("nnUNetPlans_*/*.b2nd"))) == 2 * len(SEEDS)  # image + seg, one configuration


def _slab(case, folder):
    """The case's CE-T1, FLAIR and lesion cut to the slices within 15 mm of the lesion, each by its own grid: the
    round trip checks that the installed package predicts, which half the slices show at half the registration
    and sliding-window cost."""
    folder.mkdir()
    for name in ("t1c", "flair", "lesion"):
        shutil.copy(case / f"{name}.nii.gz", folder / f"{name}.nii.gz")
    crop_case_to_lesion(folder, slab_mm=0.0, margin_mm=15.0)
    return folder


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
    assert "2 epochs x 2 iterations" in meta["description"]
    installed = models.install_package(package)
    assert installed.title == "Site model" and installed.channel_names == ["t1c", "flair"]
    case = _slab(root / "cohort" / "case_3000", root / "slab")
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


@pytest.mark.parametrize("arguments, fragment", [
    (["--configuration", "2d"], "invalid choice"),
    (["--folds", "0,7"], "--folds must be distinct numbers 0..4"),
    (["--folds", "1,1"], "--folds must be distinct numbers 0..4"),
    (["--threads", "0"], "--threads: must be at least 1"),
    (["--epochs", "0"], "--epochs and --iterations must be at least 1"),
])
def test_train_bad_choices_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, arguments, fragment):
    raw = tmp_path / "Dataset904_Bad"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    try:
        code = cli.main(["cohort", "train", str(raw), "--out", str(tmp_path / "results"), *arguments])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in error and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_train_reports_nnunets_integrity_check_in_one_line(cohort, tmp_path):
    broken = tmp_path / DATASET
    shutil.copytree(cohort / "nnunet_raw" / DATASET, broken, copy_function=os.link)
    (broken / "labelsTr" / "case_3001.nii.gz").unlink()
    run = gliomaprog("cohort", "train", broken, "--out", tmp_path / "results", "--device", "cpu", timeout=None)
    lines = run.stderr.strip().splitlines()  # progress lines, then the error
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[-1].startswith("gliomaprog cohort: error: nnU-Net's integrity check rejected " + DATASET)
    assert not (tmp_path / "results").exists() and not list(tmp_path.glob(".results*"))
