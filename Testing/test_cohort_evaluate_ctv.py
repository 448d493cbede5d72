"""``gliomaprog cohort evaluate --ctv`` (seed 003, PREDICT-GBM's equal volume, paired Wilcoxon tests) and, end to
end, ``cohort train --loss size-weighted`` on a tiny dataset -> prediction with it and with a model trained with
nnU-Net's own loss -> CTVs in the layout ``gliomaprog run`` writes -> the comparison.

The cohort is six geometric cases on a 2 mm grid (a core, an oedema, a recurrence growing out of one side of it),
written straight into an nnU-Net raw dataset: a phantom cohort's export costs about 50 s on two cores, and this
file's budget is a minute. ``cohort export`` and ``run`` have their own end-to-end tests."""
import csv
import io
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GliomaProgressionLib.case.files import write_volume
from GliomaProgressionLib.case.geometry import Volume
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.cohort.ctv_evaluate import (MIN_PATIENTS, RUN_CTV, RUN_FILES, paired_wilcoxon,
                                                      ranked_ai_plan)
from GliomaProgressionLib.cohort.export import dataset_json
from GliomaProgressionLib.runs.ctv import run_ctv_files
from helpers import GLIOMAPROG, assert_one_line_error

torch.set_num_threads(1)
SPACING_MM = 2.0
SHAPE = (34, 42, 34)  # k, j, i
IJK_TO_RAS = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
CASES = [f"case_{index:04d}" for index in range(MIN_PATIENTS)]
DATASET = "Dataset906_CtvCompare"
# Each process of nnU-Net's worker pools imports torch and nnU-Net anew: one is enough for six tiny cases.
ONE_PROCESS = {"nnUNet_def_n_proc": "1"}


# --- a tiny cohort ----------------------------------------------------------------------------------------------


def geometric_case(index: int) -> dict:
    """Brain, BraTS labels (the oedema reaching far on the +i side only), a recurrence in a band of that side
    reaching past the oedema and past 15 mm from the core, CE-T1 and FLAIR; the sizes grow with the index."""
    rng = np.random.default_rng(index)
    mm = np.indices(SHAPE).astype(float) * SPACING_MM
    centre = np.array(SHAPE) * SPACING_MM / 2
    brain = sum(((m - c) / r) ** 2 for m, c, r in zip(mm, centre, (30, 38, 30))) <= 1
    tumour = centre + np.array([0.0, 0.0, -10.0]) + rng.uniform(-2, 2, 3)
    distance = np.sqrt(sum((m - c) ** 2 for m, c in zip(mm, tumour)))
    towards, across = mm[2] - tumour[2], np.abs(mm[1] - tumour[1])
    core_mm = 5 + 0.8 * index
    labels = np.where((distance < core_mm + 6) | ((distance < core_mm + 26) & (towards > 0)), 2, 0)
    labels[distance < core_mm] = 3
    labels[distance < core_mm - 3] = 1
    labels[~brain] = 0
    band = (towards > 3) & (across < 6 + index)
    recurrence = band & ((labels == 2) | (distance < core_mm + 28 + index / 2) & (labels == 0)) & brain
    label = recurrence & (labels == 2)
    noise = rng.normal(0, 3, (2,) + SHAPE)
    t1c = 100 * brain + np.select([labels == 3, labels == 1], [120, -40], 0) + noise[0]
    flair = 100 * brain + 70 * (labels == 2) + 25 * label + noise[1]
    return {"brain": brain, "labels": labels, "recurrence": recurrence, "label": label, "t1c": t1c, "flair": flair}


def write_image(array: np.ndarray, path, dtype=np.float32) -> None:
    write_volume(Volume(array.astype(dtype), IJK_TO_RAS), path)


def write_raw_dataset(root, cases: dict) -> None:
    raw = root / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for name, case in cases.items():
        write_image(case["t1c"], raw / "imagesTr" / f"{name}_0000.nii.gz")
        write_image(case["flair"], raw / "imagesTr" / f"{name}_0001.nii.gz")
        write_image(case["label"], raw / "labelsTr" / f"{name}.nii.gz", np.uint8)
    dataset = {**dataset_json(DATASET, ("t1c", "flair"), len(cases)), "spacing_mm": SPACING_MM}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def write_case_run(folder, case: dict, probability: np.ndarray) -> None:
    """One case's run in the layout ``gliomaprog run`` writes, its CTVs made by the function the run calls."""
    (folder / "registered").mkdir(parents=True)
    (folder / "prediction").mkdir()
    paths = {name: folder / RUN_FILES[name] for name in ("lesion", "brain", "recurrence")}
    write_image(case["labels"], paths["lesion"], np.uint8)
    write_image(case["brain"], paths["brain"], np.uint8)
    write_image(case["recurrence"], paths["recurrence"], np.uint8)
    write_image(probability, folder / RUN_FILES["probability"])
    write_image((probability >= 0.5) & (case["labels"] == 2), folder / "prediction" / "progression.nii.gz", np.uint8)
    run_ctv_files(paths["lesion"], paths["brain"], folder / "ctv", ["eortc", "rtog", "ai"],
                  progression=folder / "prediction" / "progression.nii.gz", recurrence=paths["recurrence"])


def write_runs(folder, cases: dict, probabilities: dict) -> None:
    for name, case in cases.items():
        write_case_run(folder / name, case, probabilities[name])


# --- the parts ------------------------------------------------------------------------------------------------------


def test_the_equal_volume_ai_plan_takes_core_then_nel_by_probability_then_distance():
    labels = np.zeros((1, 1, 12), int)
    labels[0, 0, 4:6] = 3  # core
    labels[0, 0, [3, 6, 7]] = 2  # NEL around it
    brain = np.ones_like(labels, bool)
    brain[0, 0, 11] = False
    probability = np.zeros(labels.shape, np.float32)
    probability[0, 0, [3, 6, 7]] = [0.2, 0.1, 0.9]
    probability[0, 0, 9] = 1.0  # outside the NEL the model's map does not count
    plans = {n: np.flatnonzero(ranked_ai_plan(labels, brain, probability, n, (1.0, 1.0, 1.0))).tolist()
             for n in (2, 3, 4, 6, 7, 11)}
    assert plans[2] == [4, 5] and plans[3] == [4, 5, 7] and plans[4] == [3, 4, 5, 7]
    assert plans[6] == [2, 3, 4, 5, 6, 7]  # the whole lesion, then 2 and 8 (1 mm from it): 2 is nearer the core
    assert plans[7] == [2, 3, 4, 5, 6, 7, 8]
    assert plans[11] == list(range(11))  # never outside the brain


def test_paired_wilcoxon_exact_values_and_all_zero_differences():
    six_better = paired_wilcoxon([0.9, 0.8, 0.7, 0.95, 0.85, 0.6], [0.5] * 6)
    assert six_better["p"] == pytest.approx(2 / 2 ** 6) and six_better["statistic"] == 0.0  # exact, all positive
    assert six_better["n_nonzero"] == 6 and six_better["mean_difference"] == pytest.approx(0.3)
    same = paired_wilcoxon([0.5] * 6, [0.5] * 6)
    assert same["p"] == 1.0 and same["statistic"] is None and same["n_nonzero"] == 0


@pytest.fixture(scope="module")
def cohort():
    return {name: geometric_case(index) for index, name in enumerate(CASES)}


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory, cohort):
    """Runs whose model knows the recurrence inside the NEL (probability 0.9 there, 0.1 elsewhere)."""
    folder = tmp_path_factory.mktemp("oracle") / "oracle"
    write_runs(folder, cohort, {name: np.where(case["label"], 0.9, 0.1) for name, case in cohort.items()})
    return folder


def _refusal(capsys, runs, out, *extra) -> subprocess.CompletedProcess:
    """``cohort evaluate --ctv`` in this process (a child process costs 2 s here), as a finished child's record."""
    capsys.readouterr()
    code = cli.main(["cohort", "evaluate", "--ctv", *map(str, runs), "--out", str(out), *map(str, extra)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def test_bad_run_folders_are_one_line_refusals_and_write_nothing(oracle_runs, cohort, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(oracle_runs, broken)
    (broken / CASES[2] / RUN_CTV.format(key="ai")).unlink()
    assert_one_line_error(_refusal(capsys, [broken], tmp_path / "a"), CASES[2], "ctv/ctv_ai.nii.gz", "ai scheme",
                          after_progress=True)
    shutil.copy(oracle_runs / CASES[2] / RUN_CTV.format(key="ai"), broken / CASES[2] / "ctv")
    (broken / CASES[3] / RUN_FILES["recurrence"]).unlink()
    assert_one_line_error(_refusal(capsys, [broken], tmp_path / "b"), CASES[3], "registered/recurrence.nii.gz",
                          "recurrence mask", after_progress=True)
    shutil.copy(oracle_runs / CASES[3] / RUN_FILES["recurrence"], broken / CASES[3] / "registered")
    moved = np.roll(cohort[CASES[4]]["recurrence"], 2, axis=2) & cohort[CASES[4]]["brain"]
    write_image(moved, broken / CASES[4] / RUN_FILES["recurrence"], np.uint8)
    assert_one_line_error(_refusal(capsys, [oracle_runs, broken], tmp_path / "f"), CASES[4],
                          "disagree on the recurrence", after_progress=True)
    shutil.rmtree(broken / CASES[3])
    assert_one_line_error(_refusal(capsys, [broken], tmp_path / "c"), "5 case(s)", f"at least {MIN_PATIENTS} patients")
    assert_one_line_error(_refusal(capsys, [oracle_runs / CASES[0]], tmp_path / "d"), "single run", "--batch")
    assert_one_line_error(_refusal(capsys, [oracle_runs], tmp_path / "e", "--truth", tmp_path), "--truth")
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_a_model_that_knows_the_recurrence_covers_it_better_at_equal_volume(oracle_runs, cohort, tmp_path,
                                                                          capsys):
    flat = tmp_path / "flat"  # a model that knows nothing: the same probability everywhere
    write_runs(flat, cohort, {name: np.full(SHAPE, 0.3) for name in CASES})
    assert cli.main(["cohort", "evaluate", "--ctv", str(oracle_runs), str(flat), "--out", str(tmp_path / "out"),
                     "--quiet"]) == 0
    data = json.loads((tmp_path / "out" / "ctv_evaluation.json").read_text())
    assert [plan["plan"] for plan in data["plans"]] == ["standard eortc", "AI oracle", "AI flat"]
    rows = {(row["case"], row["plan"]): row for row in data["per_case"]}
    for case in CASES:
        oracle, blind, standard = (rows[(case, plan)] for plan in ("AI oracle", "AI flat", "standard eortc"))
        assert oracle["equal_volume_ml"] == blind["equal_volume_ml"] == standard["volume_ml"]
        assert oracle["sensitivity"] == blind["sensitivity"]  # the AI CTV itself is lesion + 5 mm for both
        assert oracle["equal_volume_sensitivity"] > blind["equal_volume_sensitivity"]
        assert oracle["equal_volume_sensitivity"] > standard["equal_volume_sensitivity"]
    tests = {(t["plan"], t["reference"], t["metric"]): t for t in data["wilcoxon"]}
    oracle_vs_flat = tests[("AI flat", "AI oracle", "equal_volume_sensitivity")]
    assert oracle_vs_flat["mean_difference"] < 0 and oracle_vs_flat["p"] == pytest.approx(2 / 2 ** 6)
    assert tests[("AI flat", "AI oracle", "sensitivity")]["p"] == 1.0
    assert "| AI flat | AI oracle |" in capsys.readouterr().out


# --- end to end -----------------------------------------------------------------------------------------------------


def _predict(model_folder, raw, cases: dict) -> dict:
    from GliomaProgressionLib.models.worker import load_predictor, predict_probability

    predictor = load_predictor(model_folder, device="cpu", tta=False)
    return {name: sitk.GetArrayFromImage(predict_probability(predictor, [
        sitk.ReadImage(str(raw / "imagesTr" / f"{name}_{channel:04d}.nii.gz")) for channel in (0, 1)]))
        for name in cases}


@pytest.mark.slow
def test_train_with_the_size_weighted_loss_predict_and_compare_the_ctvs(tmp_path, cohort, capsys):
    """The size-weighted model against one trained with nnU-Net's own loss: the shipped conventional demo model
    (the same trainer and inputs; training one more here would cost a minute, and test_cohort_train trains
    ``cohort train``'s default loss end to end)."""
    from GliomaProgressionLib.models.packages import resolve_model

    write_raw_dataset(tmp_path, cohort)
    run = subprocess.run([*GLIOMAPROG, "cohort", "train", str(tmp_path / DATASET), "--out", str(tmp_path / "sw"),
                          "--epochs", "1", "--iterations", "1", "--device", "cpu", "--threads", "1", "--loss",
                          "size-weighted"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, **ONE_PROCESS})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "size-weighted loss" in run.stdout
    record = json.loads((tmp_path / "sw" / "cohort_train.json").read_text())
    assert record["loss"] == "size-weighted" and record["trainer"] == "nnUNetTrainerGliomaSizeWeighted"
    assert record["loss_alpha"] == 0.5 and "V_i^-0.5" in record["loss_description"]
    results = tmp_path / "sw" / record["results_folder"]
    checkpoint = torch.load(results / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerGliomaSizeWeighted"
    losses = checkpoint["logging"]["train_losses"]
    assert len(losses) == 1 and np.isfinite(losses[0])

    package = tmp_path / "size-weighted.zip"
    assert cli.main(["cohort", "package", str(tmp_path / "sw"), "--id", "sw", "--title", "Size weighted",
                     "--out", str(package), "--synthetic"]) == 0
    with zipfile.ZipFile(package) as archive:
        meta = json.loads(archive.read("gliomaprog.json"))
        card = archive.read("MODEL_CARD.txt").decode()
        slim = torch.load(io.BytesIO(archive.read("fold_0/checkpoint_final.pth")), map_location="cpu",
                          weights_only=True)
    assert meta["training"]["loss"] == "size-weighted" and "size-weighted loss" in meta["description"]
    assert meta["training"]["trainer"] == "nnUNetTrainerGliomaSizeWeighted"
    assert "Training loss: size-weighted" in card
    # Inference builds nnUNetTrainer's network: the package says so, and keeps the class that trained it.
    assert slim["trainer_name"] == "nnUNetTrainer" and slim["trained_with"] == "nnUNetTrainerGliomaSizeWeighted"

    raw = tmp_path / DATASET
    models = {"dice-ce": resolve_model("conventional").folder, "size-weighted": results}
    for loss, folder in models.items():
        write_runs(tmp_path / "runs" / loss, cohort, _predict(folder, raw, cohort))
    out = tmp_path / "comparison"
    capsys.readouterr()
    assert cli.main(["cohort", "evaluate", "--ctv", str(tmp_path / "runs" / "dice-ce"),
                     str(tmp_path / "runs" / "size-weighted"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["ctv_evaluation.csv", "ctv_evaluation.json", "ctv_evaluation.md",
                                                     "ctv_per_case.csv", "ctv_wilcoxon.csv"]
    plans = ["standard eortc", "AI dice-ce", "AI size-weighted"]
    with open(out / "ctv_evaluation.csv") as handle:
        assert [row["plan"] for row in csv.DictReader(handle)] == plans
    with open(out / "ctv_per_case.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["case"], row["plan"]) for row in rows] == [(case, plan) for case in CASES for plan in plans]
    with open(out / "ctv_wilcoxon.csv") as handle:
        tests = list(csv.DictReader(handle))
    assert [(t["plan"], t["reference"]) for t in tests[::4]] == [
        ("AI dice-ce", "standard eortc"), ("AI size-weighted", "standard eortc"), ("AI size-weighted", "AI dice-ce")]
    assert all(0 < float(t["p"]) <= 1 and int(t["n"]) == MIN_PATIENTS for t in tests)
    # Sanity: at equal volume every plan has the standard's volume, and the standard is its own resized plan.
    for case in CASES:
        by_plan = {row["plan"]: row for row in rows if row["case"] == case}
        standard = by_plan["standard eortc"]
        assert standard["equal_volume_sensitivity"] == standard["sensitivity"]
        assert all(row["equal_volume_ml"] == standard["volume_ml"] for row in by_plan.values())
        assert all(0 <= float(row[m]) <= 1 for row in by_plan.values() for m in ("sensitivity", "specificity"))
    table = (out / "ctv_evaluation.md").read_text()
    assert table == printed.split("Results in")[0] and "| AI size-weighted | AI dice-ce |" in table
