"""``gliomaprog cohort evaluate``: statistics against hand-computed values (Wilson intervals from Newcombe 1998,
McNemar, AUC by pair counting, Dice), a small cohort on disk through the command line, degenerate cohorts and
one-line errors that leave nothing behind."""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.cohort.evaluate import (EvaluationSettings, bootstrap_auc_interval,
                                                  evaluate_cohort, mcnemar_exact, roc_auc, wilson_interval)
from helpers import assert_one_line_error, gliomaprog_in_process

SHAPE = (6, 6, 6)


# --- statistics -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n, low, high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                             (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombe_1998(k, n, low, high):
    """Newcombe (Stat Med 1998;17:857), Table II, method 3 (score interval without continuity correction)."""
    proportion = wilson_interval(k, n)
    assert proportion.value == pytest.approx(k / n)
    assert (round(proportion.low, 4), round(proportion.high, 4)) == (low, high)


def test_wilson_interval_of_all_and_none_and_of_an_empty_denominator():
    assert wilson_interval(3, 3).high == 1.0 and wilson_interval(3, 3).low == pytest.approx(1 - 0.5615, abs=1e-4)
    assert wilson_interval(0, 3).low == 0.0 and wilson_interval(0, 3).high == pytest.approx(0.5615, abs=1e-4)
    assert wilson_interval(0, 0).value is None and wilson_interval(0, 0).low is None


def test_mcnemar_exact_on_a_known_table():
    """b = 1, c = 6: two-sided exact p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128."""
    first = [True] * 1 + [False] * 6 + [True] * 5 + [False] * 2
    second = [False] * 1 + [True] * 6 + [True] * 5 + [False] * 2
    assert mcnemar_exact(first, second) == {"b": 1, "c": 6, "n_discordant": 7, "p": pytest.approx(0.125)}
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0  # no discordant pair


def test_auc_equals_the_hand_counted_pairs():
    """Positives 0.9, 0.6, 0.4; negatives 0.5, 0.3, 0.4: 3 + 3 + (0 + 1 + 1/2) = 7.5 of 9 pairs."""
    scores, labels = np.array([0.9, 0.6, 0.4, 0.5, 0.3, 0.4]), np.array([1, 1, 1, 0, 0, 0], bool)
    fpr, tpr, auc = roc_auc(scores, labels)
    assert auc == pytest.approx(7.5 / 9)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert roc_auc(scores, np.ones(6, bool))[2] is None


def test_bootstrap_interval_is_reproducible_and_brackets_the_auc():
    rng = np.random.default_rng(3)
    scores = np.r_[rng.uniform(0.3, 1.0, 20), rng.uniform(0.0, 0.7, 20)]
    labels = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    low, high = bootstrap_auc_interval(scores, labels)
    assert (low, high) == bootstrap_auc_interval(scores, labels)  # fixed seed
    assert low < roc_auc(scores, labels)[2] < high and 0.5 < low and high <= 1.0
    assert bootstrap_auc_interval(scores, labels, seed=4) != (low, high)  # the seed is what fixes it
    assert bootstrap_auc_interval(scores, np.zeros(40, bool)) == (None, None)


# --- a small cohort on disk --------------------------------------------------------------------------------------

TRUTH_VOXELS = [(1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, 2)]


def _save(array, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _map(voxels_and_values):
    array = np.zeros(SHAPE, np.float32)
    for voxel, value in voxels_and_values:
        array[voxel] = value
    return array


# Model A: p1 predicted exactly (Dice 1), p2 half right plus 2 false voxels (Dice 0.5), p3 missed (max 0.4,
# Dice 0), n1 one false voxel at 0.5 (false positive), n2/n3 below 0.5.
# Model B: only p1 found (0.7); every other case at most 0.2.
OUTSIDE = [(4, 4, 4), (4, 4, 3)]
MODEL_A = {"p1": [(v, 0.9) for v in TRUTH_VOXELS], "p2": [(v, 0.6) for v in TRUTH_VOXELS[:2] + OUTSIDE],
           "p3": [(TRUTH_VOXELS[0], 0.4)], "n1": [(OUTSIDE[0], 0.5)], "n2": [(OUTSIDE[0], 0.3)],
           "n3": [(OUTSIDE[0], 0.4)]}
MODEL_B = {"p1": [(TRUTH_VOXELS[0], 0.7)], **{case: [(OUTSIDE[0], 0.2)] for case in ("p2", "p3", "n1", "n2", "n3")}}


@pytest.fixture
def cohort(tmp_path):
    for folder in ("truth", "multiparametric", "conventional", "nel"):
        (tmp_path / folder).mkdir()
    for case in MODEL_A:
        truth = _map([(v, 1) for v in TRUTH_VOXELS]) if case.startswith("p") else np.zeros(SHAPE)
        _save(truth, tmp_path / "truth" / f"{case}.nii.gz")
        _save(_map(MODEL_A[case]), tmp_path / "multiparametric" / f"{case}.nii.gz")
        _save(_map(MODEL_B[case]), tmp_path / "conventional" / f"{case}.nii.gz")
        nel = np.zeros(SHAPE)
        nel[:3] = 1  # slices 0-2: holds the truth, not the voxels at k = 4
        _save(nel, tmp_path / "nel" / f"{case}.nii.gz")
    return tmp_path


def _row(result, model):
    return next(row for row in result["models"] if row["model"] == model)


def test_hand_computed_cohort(cohort):
    result = evaluate_cohort(cohort / "multiparametric", cohort / "truth", cohort / "out",
                             compare=cohort / "conventional")
    a, b = _row(result, "multiparametric"), _row(result, "conventional")
    assert (a["tp"], a["fn"], a["tn"], a["fp"]) == (2, 1, 2, 1)
    assert a["sensitivity"] == pytest.approx(2 / 3) and a["specificity"] == pytest.approx(2 / 3)
    assert a["accuracy"] == pytest.approx(4 / 6)
    assert (a["sensitivity_ci_low"], a["sensitivity_ci_high"]) == pytest.approx((0.2077, 0.9385), abs=1e-4)
    assert a["auc"] == pytest.approx(7.5 / 9)
    assert a["dice_mean"] == pytest.approx(0.5) and a["dice_sd"] == pytest.approx(0.5) and a["dice_n"] == 3
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (1, 2, 3, 0) and b["specificity"] == 1.0
    assert b["dice_mean"] == pytest.approx((2 * 1 / 5 + 0 + 0) / 3)
    # A right and B wrong: p2; A wrong and B right: n1.
    mcnemar = result["mcnemar"]
    assert mcnemar["all_patients"] == {"b": 1, "c": 1, "n_discordant": 2, "p": 1.0}
    assert (mcnemar["progression_patients"]["b"], mcnemar["non_progression_patients"]["c"]) == (1, 1)


def test_nel_restricts_prediction_and_truth(cohort):
    result = evaluate_cohort(cohort / "multiparametric", cohort / "truth", cohort / "out", nel=cohort / "nel")
    a = result["models"][0]
    # n1's false voxel and p2's two extra voxels lie outside the NEL: n1 becomes a true negative, p2 Dice 2/3.
    assert (a["tp"], a["fn"], a["tn"], a["fp"]) == (2, 1, 3, 0)
    assert a["dice_mean"] == pytest.approx((1 + 2 * 2 / 6 + 0) / 3)
    assert "Dice in NEL" in result["markdown"] and "restricted to the NEL" in result["markdown"]


def test_min_voxels_and_threshold_change_the_verdicts(cohort):
    bigger = evaluate_cohort(cohort / "multiparametric", cohort / "truth", cohort / "o1",
                             settings=EvaluationSettings(min_voxels=2))["models"][0]
    assert (bigger["tp"], bigger["fp"]) == (2, 0)  # n1 had a single voxel
    higher = evaluate_cohort(cohort / "multiparametric", cohort / "truth", cohort / "o2",
                             settings=EvaluationSettings(threshold=0.7))["models"][0]
    assert (higher["tp"], higher["fp"]) == (1, 0)  # only p1 (0.9) stays
    assert higher["auc"] == pytest.approx(7.5 / 9)  # the AUC does not depend on the cut-off


@pytest.mark.slow
def test_cli_writes_the_tables_and_the_roc_plot(cohort):
    out = cohort / "evaluation"
    result = gliomaprog_in_process("cohort", "evaluate", "--predictions", cohort / "multiparametric", "--truth",
                         cohort / "truth", "--compare", cohort / "conventional", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.csv", "evaluation.json", "evaluation.md",
                                                     "per_case.csv", "roc.png"]
    with open(out / "evaluation.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["model"] for r in rows] == ["multiparametric", "conventional"]
    assert float(rows[0]["sensitivity"]) == pytest.approx(2 / 3, abs=1e-6) and rows[1]["fp"] == "0"
    with open(out / "per_case.csv", newline="") as stream:
        cases = list(csv.DictReader(stream))
    assert len(cases) == 12 and cases[0]["case"] == "n1" and cases[0]["predicted_progression"] == "1"
    assert cases[0]["dice"] == ""  # no progression: not part of the Dice summary
    table = (out / "evaluation.md").read_text()
    assert "| multiparametric | 66.7% (2/3) [20.8, 93.9] |" in table and "McNemar exact test" in table
    assert "Dice in NEL" not in table and "no NEL given" in table
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "multiparametric" in result.stdout


@pytest.mark.slow
def test_degenerate_cohorts_give_documented_values_and_no_nan(cohort):
    """Only progression patients, every one predicted positive: specificity and AUC undefined (empty / null)."""
    only = cohort / "only"
    for folder in ("truth", "pred"):
        (only / folder).mkdir(parents=True)
    for case in ("p1", "p2"):
        _save(_map([(v, 1) for v in TRUTH_VOXELS]), only / "truth" / f"{case}.nii.gz")
        _save(_map([(TRUTH_VOXELS[0], 1.0)]), only / "pred" / f"{case}.nii.gz")  # a 0/1 mask works too
    out = only / "out"
    result = gliomaprog_in_process("cohort", "evaluate", "--predictions", only / "pred", "--truth", only / "truth", "--out",
                         out, "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "evaluation.json").read_text())["models"][0]
    assert data["sensitivity"] == 1.0 and data["specificity"] is None and data["auc"] is None
    assert data["dice_mean"] == pytest.approx(2 / 5) and data["dice_sd"] == 0.0
    text = (out / "evaluation.csv").read_text() + (out / "per_case.csv").read_text()
    assert "nan" not in text.lower()
    assert "n/a (no patient)" in (out / "evaluation.md").read_text()


def test_a_cohort_without_progression_has_no_sensitivity_and_no_dice(cohort, tmp_path):
    none = tmp_path / "none"
    for folder in ("truth", "pred"):
        (none / folder).mkdir(parents=True)
    for case, value in (("n1", 0.8), ("n2", 0.1)):
        _save(np.zeros(SHAPE), none / "truth" / f"{case}.nii.gz")
        _save(_map([(OUTSIDE[0], value)]), none / "pred" / f"{case}.nii.gz")
    a = evaluate_cohort(none / "pred", none / "truth", none / "out")["models"][0]
    assert a["sensitivity"] is None and a["dice_mean"] is None and a["dice_n"] == 0
    assert a["specificity"] == 0.5 and not any(isinstance(v, float) and math.isnan(v) for v in a.values())


def _break(cohort, problem):
    if problem == "missing":
        (cohort / "multiparametric" / "p2.nii.gz").unlink()
    elif problem == "unknown":
        _save(np.zeros(SHAPE), cohort / "multiparametric" / "x9.nii.gz")
    elif problem == "grid":
        _save(np.zeros(SHAPE), cohort / "truth" / "n2.nii.gz", spacing=(1.0, 1.0, 2.0))
    elif problem == "range":
        _save(_map([(OUTSIDE[0], 255)]), cohort / "multiparametric" / "n3.nii.gz")


@pytest.mark.parametrize("problem, extra, fragment", [
    ("missing", [], "no file for 1 truth case(s): p2"), ("unknown", [], "1 case(s) without truth: x9"),
    ("grid", [], "is not on the grid"), ("range", [], "outside 0..1"),
    ("none", ["--threshold", "1.5"], "--threshold must be in (0, 1]"), ("none", ["--min-voxels", "0"], "at least 1")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cohort, problem, extra, fragment):
    _break(cohort, problem)
    out = cohort / "out"
    result = gliomaprog_in_process("cohort", "evaluate", "--predictions", cohort / "multiparametric", "--truth",
                         cohort / "truth", "--out", out, "--quiet", *extra)
    assert_one_line_error(result, fragment)
    assert not out.exists() and not list(cohort.glob(".out.partial-*"))


def test_an_existing_output_folder_is_refused(cohort):
    (cohort / "out").mkdir()
    (cohort / "out" / "keep.txt").write_text("keep")
    result = gliomaprog_in_process("cohort", "evaluate", "--predictions", cohort / "multiparametric", "--truth",
                         cohort / "truth", "--out", cohort / "out", "--quiet")
    assert_one_line_error(result, "already exists")
    assert [p.name for p in (cohort / "out").iterdir()] == ["keep.txt"]
