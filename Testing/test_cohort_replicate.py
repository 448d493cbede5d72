"""``gliomaprog cohort replicate``: the simulated cohort's recipe, and the whole command on a tiny cohort."""
import csv
import json

import pytest

from GliomaProgressionLib.cli import main as cli
from helpers import gliomaprog
from GliomaProgressionLib.cohort.replicate import (FLAIR_VISIBLE_RATIO, flair_visible, replication_config,
                                                   detections_by_group)
from GliomaProgressionLib.models.training import cohort_config, is_positive

SEEDS = range(3000, 3090)  # the committed replication's cohort


def test_flair_shows_progression_in_some_patients_only():
    visible = [seed for seed in SEEDS if flair_visible(seed)]
    positives = [seed for seed in SEEDS if is_positive(seed)]
    assert set(visible) < set(positives) and 0.25 < len(visible) / len(positives) < 0.75
    for seed in SEEDS:
        config, demo = replication_config(seed), cohort_config(seed)
        assert config.progression_cbv_ratio == demo.progression_cbv_ratio  # nCBV: as the demo recipe, always
        if seed in visible:
            assert FLAIR_VISIBLE_RATIO[0] <= config.progression_flair_ratio <= FLAIR_VISIBLE_RATIO[1]
        else:
            assert config == demo
    assert replication_config(3004) == replication_config(3004)


def test_sensitivity_is_split_by_flair_visibility(tmp_path):
    for seed, visible in ((1, True), (2, False), (3, False)):
        (tmp_path / f"case_{seed}").mkdir()
        (tmp_path / f"case_{seed}" / "case.json").write_text(json.dumps({"flair_visible": visible}))
    rows = [("m", "case_1", 1, 1, 0.8), ("m", "case_2", 1, 0, 0.0), ("m", "case_3", 1, 1, 0.6),
            ("m", "case_4", 0, 1, ""), ("c", "case_1", 1, 1, 0.5), ("c", "case_2", 1, 0, 0.0),
            ("c", "case_3", 1, 0, 0.1), ("c", "case_4", 0, 0, "")]
    with open(tmp_path / "per_case.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "case", "truth_progression", "predicted_progression", "dice"])
        writer.writerows(rows)
    counts = detections_by_group(tmp_path / "per_case.csv", tmp_path)
    assert counts == {"m": {"flair_visible": {"detected": 1, "cases": 1, "mean_dice": 0.8},
                            "ncbv_only": {"detected": 1, "cases": 2, "mean_dice": 0.3}},
                      "c": {"flair_visible": {"detected": 1, "cases": 1, "mean_dice": 0.5},
                            "ncbv_only": {"detected": 0, "cases": 2, "mean_dice": 0.05}}}


@pytest.mark.slow
@pytest.mark.replicate  # its parts (export, train, package, predict, evaluate) are tested end to end in make test
def test_replicate_runs_end_to_end_on_a_tiny_cohort(tmp_path, fresh_model_cache):
    """The command as a user runs it, in a process of its own (its pools, training processes and descriptor
    redirections do not meet the test runner's output capture)."""
    out = tmp_path / "replicate"
    printed = gliomaprog("cohort", "replicate", "--out", out, "--train", 4, "--test", 2, "--epochs", 1,
                         "--iterations", 1, "--seed", 3000, "--quiet", timeout=None)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "| multiparametric |" in printed.stdout and "| conventional |" in printed.stdout
    record = json.loads((out / "replication.json").read_text())
    assert record["seeds"] == [3000, 3005] and record["epochs"] == 1
    assert set(record["detected_by_group"]) == {"multiparametric", "conventional"}
    assert sum(g["cases"] for g in record["detected_by_group"]["conventional"].values()) == 2  # 3004/5
    for name in ("evaluation.md", "evaluation.csv", "per_case.csv", "roc.png"):
        assert (out / "evaluation" / name).stat().st_size > 0
    assert not fresh_model_cache.exists() or not list(fresh_model_cache.iterdir())  # the user's cache untouched
    assert sorted(p.name for p in (out / "predictions" / "conventional").iterdir()) == ["case_3004.nii.gz",
                                                                                          "case_3005.nii.gz"]


@pytest.mark.parametrize("arguments, fragment", [
    (["--train", "3"], "at least 4 training and 2 test cases"),
    (["--test", "1"], "at least 4 training and 2 test cases"),
    (["--epochs", "0"], "--epochs and --iterations must be at least 1"),
])
def test_replicate_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, arguments, fragment):
    code = cli.main(["cohort", "replicate", "--out", str(tmp_path / "out"), *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.splitlines() == [error] and fragment in error
    assert list(tmp_path.iterdir()) == []


def test_the_adc_study_compares_diffusion_with_multiparametric_on_its_own_cohort():
    from GliomaProgressionLib.cohort.export import CHANNEL_SETS
    from GliomaProgressionLib.cohort.replicate import STUDIES, adc_group

    study = STUDIES["adc"]
    assert CHANNEL_SETS[study.channels][:-1] == CHANNEL_SETS[study.baseline]  # the baseline drops ADC only
    groups = [adc_group(seed) for seed in SEEDS]
    assert {"adc_only", "ncbv_only", "none"} == set(groups)
    assert all((group == "none") == (not is_positive(seed)) for seed, group in zip(SEEDS, groups))
    config = study.config(3000)
    assert config.progression_flair_ratio == 1.0


def test_paired_dice_difference_has_a_bootstrap_interval_and_a_wilcoxon_test(tmp_path):
    from GliomaProgressionLib.cohort.replicate import paired_dice

    rows = [(m, f"case_{i}", 1, 1, d) for i in range(8) for m, d in (("a", 0.6 + 0.02 * i), ("b", 0.3 + 0.01 * i))]
    rows += [("a", "case_9", 0, 0, ""), ("b", "case_9", 0, 1, "")]
    with open(tmp_path / "per_case.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "case", "truth_progression", "predicted_progression", "dice"])
        writer.writerows(rows)
    result = paired_dice(tmp_path / "per_case.csv", "a", "b")
    assert result["cases"] == 8 and result["mean_difference"] == pytest.approx(0.335, abs=1e-3)
    assert result["difference_ci95"][0] <= 0.335 <= result["difference_ci95"][1]
    assert result["wilcoxon_p"] < 0.01
