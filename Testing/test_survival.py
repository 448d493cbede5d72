"""Survival from perfusion-habitat burden (issue 14, seed 002): the simulation's known hazard ratios recovered by
``cohort survival`` (direction of every effect, CIs, validation C-index beside the truth model's on the same
patients), refusals of bad tables in one sentence with nothing written, the habitat table built from
habitats.json folders, and the two commands end to end."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from GliomaProgressionLib.cli.main import main
from GliomaProgressionLib.cohort.survival import (choose_covariates, fit_cox, habitat_table, proportional_hazards_p,
                                                  survival_analysis)
from GliomaProgressionLib.phantom.survival import (DEFAULT_TRUTH, Censoring, SurvivalTruth, fraction_column,
                                                   simulate_clinical, simulate_cohort, simulate_fractions,
                                                   simulate_survival, truth_concordance, truth_contrast)
from helpers import assert_one_line_error

OUTPUTS = {"survival.json", "survival.md", "hazard_ratios.csv", "patients.csv", "km.png"}


def simulated_cohort(n: int, seed: int, truth: SurvivalTruth = DEFAULT_TRUTH, censoring=Censoring()):
    table = simulate_fractions(n, seed).merge(simulate_clinical(n, seed), on="case")
    return simulate_survival(table, truth, seed, censoring)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A 240-patient simulated cohort (seed 7) analysed with the defaults (bootstrap shortened)."""
    table = simulated_cohort(240, seed=7)
    result = survival_analysis(table, tmp_path_factory.mktemp("survival") / "out", bootstrap=200, seed=0)
    return table, result


# --- the simulation ------------------------------------------------------------------------------------------------


def test_the_simulated_baseline_has_the_asked_median_and_a_plausible_censoring_share():
    from lifelines import KaplanMeierFitter

    no_effect = SurvivalTruth({}, median_months=15.0)
    uncensored = simulated_cohort(1500, 1, no_effect, Censoring(follow_up_months=1e6, dropout_per_year=0.0))
    assert uncensored["event"].all()
    assert np.median(uncensored["time_months"]) == pytest.approx(15.0, rel=0.06)
    censored = simulated_cohort(600, 2)
    assert 0.18 <= 1 - censored["event"].mean() <= 0.32
    fitter = KaplanMeierFitter().fit(censored["time_months"], censored["event"])
    assert 8 <= fitter.median_survival_time_ <= 20  # the average patient's median is 15 months


def test_the_truth_model_ranks_patients_and_a_null_truth_does_not():
    table = simulated_cohort(400, 3)
    assert 0.68 <= truth_concordance(table, DEFAULT_TRUTH) <= 0.78
    noise = table.assign(event=1, time_months=np.random.default_rng(0).exponential(10, len(table)))
    assert truth_concordance(noise, DEFAULT_TRUTH) == pytest.approx(0.5, abs=0.05)


def test_the_contrast_with_the_reference_habitat_is_what_a_cox_model_can_see():
    truth = SurvivalTruth({"NEL_infiltrated_oedema": 1.5, "NEL_vasogenic_oedema": 0.8, "age": 1.4})
    assert truth_contrast(truth, "NEL_infiltrated_oedema") == pytest.approx(1.5 / 0.8)
    assert truth_contrast(truth, "NEL_high_angiogenic") == pytest.approx(1 / 0.8)
    assert truth_contrast(truth, "CEL_low_angiogenic") == 1.0 and truth_contrast(truth, "age") == 1.4


# --- the analysis recovers the truth ---------------------------------------------------------------------------------


def test_every_simulated_effect_is_recovered_in_its_direction(analysed):
    _, result = analysed
    ratios = {r["covariate"]: r for r in result["hazard_ratios"] if r["model"] == "habitats + clinical"}
    for column, truth in DEFAULT_TRUTH.hazard_ratios.items():
        assert (ratios[column]["hazard_ratio"] > 1) == (truth > 1), (column, ratios[column])


def test_the_strong_habitat_effects_lie_inside_their_confidence_intervals(analysed):
    _, result = analysed
    ratios = {r["covariate"]: r for r in result["hazard_ratios"] if r["model"] == "habitats + clinical"}
    for column in ("NEL_infiltrated_oedema", "CEL_low_angiogenic"):
        row = ratios[column]
        assert row["ci_low"] <= truth_contrast(DEFAULT_TRUTH, column) <= row["ci_high"], row
        assert row["ci_low"] > 1 and row["p"] < 0.01, row


def test_the_validation_c_index_is_within_005_of_the_truth_models_on_the_same_patients(analysed):
    table, result = analysed
    validation = table[table["case"].isin(result["validation"]["cases"])]
    assert len(validation) == result["validation"]["patients"] == 80
    full = result["models"]["habitats + clinical"]
    assert abs(full["c_index_validation"] - truth_concordance(validation, DEFAULT_TRUTH)) <= 0.05
    assert full["c_index_ci_low"] < full["c_index_validation"] < full["c_index_ci_high"]
    # The habitats carry what the clinical columns lack, as in Yun et al. (0.72 vs 0.55).
    assert full["c_index_validation"] > result["models"]["clinical only"]["c_index_validation"] + 0.03


def test_the_results_are_written_and_read_back(analysed, tmp_path):
    table, _ = analysed
    result = survival_analysis(table.iloc[:120], tmp_path / "out", bootstrap=100, seed=1)
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS
    written = json.loads((tmp_path / "out" / "survival.json").read_text())
    assert written["covariates_left_out"]["reference_left_out"] == {"CEL": "CEL_high_angiogenic",
                                                                     "NEL": "NEL_vasogenic_oedema"}
    ratios = pd.read_csv(tmp_path / "out" / "hazard_ratios.csv")
    assert "NEL_vasogenic_oedema" not in set(ratios["covariate"]) and len(ratios) == 8 + 3
    assert ratios["ph_test_p"].between(0, 1).all()
    patients = pd.read_csv(tmp_path / "out" / "patients.csv")
    assert (patients["set"] == "validation").sum() == 40 == result["validation"]["patients"]
    assert written["kaplan_meier"]["covariate"] == "NEL_infiltrated_oedema"


def test_crossing_hazards_fail_the_proportional_hazards_test_and_proportional_ones_pass(analysed):
    rng = np.random.default_rng(0)
    early = rng.random(120) < 0.5  # these die within 5-7 months, the others at any time (mean 6): curves cross
    table = pd.DataFrame({"age": np.where(early, 70.0, 50.0) + rng.normal(0, 1, 120), "event": 1,
                          "time_months": np.where(early, rng.uniform(5, 7, 120), rng.exponential(6, 120))})
    model = fit_cox(table, ["age"], "time_months", "event")
    assert proportional_hazards_p(model, table, ["age"], "time_months", "event")["age"] < 0.001
    _, result = analysed
    assert all(r["ph_test_p"] > 0.01 for r in result["hazard_ratios"])  # simulated with proportional hazards


def test_a_model_of_some_fractions_only_says_what_they_replace_and_has_no_clinical_comparison(analysed, tmp_path):
    table, _ = analysed
    result = survival_analysis(table.iloc[:90], tmp_path / "out", covariates=["NEL_infiltrated_oedema"],
                               bootstrap=100)
    assert list(result["models"]) == ["habitats only"] and result["c_index_difference"] is None
    assert result["hazard_ratios"][0]["unit"] == ("per 10 percentage points of the NEL (in place of high angiogenic "
                                                  "tumour or low angiogenic / cellular tumour or vasogenic oedema)")
    assert result["hazard_ratios"][0]["hazard_ratio"] > 1


def test_a_fraction_absent_in_every_patient_is_left_out_and_its_region_still_gets_a_reference():
    table = simulated_cohort(60, 4).assign(NEL_low_angiogenic=0.0)
    chosen, notes = choose_covariates(table, None, "time_months", "event", "table")
    assert notes["constant_left_out"] == ["NEL_low_angiogenic"]
    assert notes["reference_left_out"]["NEL"] == "NEL_vasogenic_oedema"
    assert "NEL_low_angiogenic" not in chosen and "NEL_infiltrated_oedema" in chosen


# --- refusals -------------------------------------------------------------------------------------------------------


def _bad(table: pd.DataFrame, change: str) -> pd.DataFrame:
    table = table.copy()
    if change == "no event":
        return table.drop(columns="event")
    if change == "text age":
        table["age"] = table["age"].astype(object)
        table.loc[5, "age"] = "sixty"
    elif change == "empty kps":
        table.loc[3, "kps"] = np.nan
    elif change == "few patients":
        return table.iloc[:15]
    elif change == "few deaths":
        table["event"] = (np.arange(len(table)) < 6).astype(int)
    elif change == "negative time":
        table.loc[2, "time_months"] = -1.0
    elif change == "event 2":
        table.loc[2, "event"] = 2
    elif change == "fraction above 1":
        table.loc[1, "NEL_infiltrated_oedema"] = 1.4
    return table


@pytest.mark.parametrize("change, fragments", [
    ("no event", ("no column 'event'",)), ("text age", ("'age'", "not a number", "sixty")),
    ("empty kps", ("'kps'", "empty", "sim0003")), ("few patients", ("15 patients", "at least 20")),
    ("few deaths", ("6 deaths", "at least 10")), ("negative time", ("'time_months'", "positive")),
    ("event 2", ("'event'", "1 (death) or 0")), ("fraction above 1", ("NEL_infiltrated_oedema", "outside 0..1"))])
def test_a_bad_table_is_refused_in_one_sentence_and_nothing_is_written(change, fragments, tmp_path):
    table = simulated_cohort(40, 5)
    with pytest.raises(ValueError) as error:
        survival_analysis(_bad(table, change), tmp_path / "out", bootstrap=100)
    message = str(error.value)
    assert "\n" not in message and message.count(". ") == 0, message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_constant_or_unknown_covariate_asked_for_is_refused(tmp_path):
    table = simulated_cohort(40, 5).assign(kps=80)
    with pytest.raises(ValueError, match="'kps' .* same value"):
        survival_analysis(table, tmp_path / "out", covariates=["age", "kps"], bootstrap=100)
    with pytest.raises(ValueError, match="no column 'tumour_grade'"):
        survival_analysis(table, tmp_path / "out", covariates=["age", "tumour_grade"], bootstrap=100)
    assert list(tmp_path.iterdir()) == []


def test_a_covariate_that_repeats_others_is_refused_by_name(tmp_path):
    table = simulated_cohort(40, 5)
    table["age_in_months"] = table["age"] * 12
    with pytest.raises(ValueError, match="'age_in_months' .* linear combination of age"):
        survival_analysis(table, tmp_path / "out", covariates=["age", "kps", "age_in_months"], bootstrap=100)
    nel = ["NEL_low_angiogenic", "NEL_infiltrated_oedema", "NEL_vasogenic_oedema", "NEL_high_angiogenic"]
    chosen, notes = choose_covariates(table, nel, "time_months", "event", "table")  # the reference goes
    assert "NEL_vasogenic_oedema" not in chosen and notes["reference_left_out"] == {"NEL": "NEL_vasogenic_oedema"}
    table["NEL_high_angiogenic"] = 0.0
    table["NEL_vasogenic_oedema"] = (1 - table[nel[:2]].sum(axis=1)).round(4)  # three fractions summing to 1
    with pytest.raises(ValueError, match="'NEL_vasogenic_oedema' .* linear combination"):
        survival_analysis(table, tmp_path / "out", covariates=nel[:3], bootstrap=100)
    assert list(tmp_path.iterdir()) == []


# --- tables from case folders ----------------------------------------------------------------------------------------


def _write_cases(folder, fractions: pd.DataFrame, relative: str) -> None:
    for row in fractions.itertuples(index=False):
        values = row._asdict()
        data = {"fractions": {region: {key: values[fraction_column(region, key)] for key in keys}
                              for region, keys in (("CEL", ("high_angiogenic", "low_angiogenic", "perinecrotic")),
                                                   ("NEL", ("high_angiogenic", "infiltrated_oedema",
                                                            "vasogenic_oedema")))},
                "labels": "ignored"}
        path = folder / values["case"] / relative
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))


def test_the_habitat_table_merges_habitats_json_folders_with_the_clinical_table(tmp_path):
    cohort = simulated_cohort(30, 6)
    fractions = cohort[["case", *[c for c in cohort.columns if c[:4] in ("CEL_", "NEL_")]]]
    _write_cases(tmp_path / "runs", fractions, "habitats/habitats.json")
    clinical = cohort[["case", "age", "kps", "gross_total_resection", "time_months", "event"]]
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    merged = habitat_table(tmp_path / "runs", tmp_path / "clinical.csv").set_index("case").sort_index()
    assert len(merged) == 30
    expected = cohort.set_index("case").sort_index()["NEL_infiltrated_oedema"]
    assert np.allclose(merged["NEL_infiltrated_oedema"], expected)
    assert (merged["NEL_low_angiogenic"] == 0).all()  # a habitat a file does not name has fraction 0
    clinical.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="no row for 1 case.*sim0000"):
        habitat_table(tmp_path / "runs", tmp_path / "short.csv")


def test_a_habitats_file_with_a_habitat_outside_its_region_is_refused(tmp_path):
    case = tmp_path / "runs" / "p1" / "habitats"
    case.mkdir(parents=True)
    (case / "habitats.json").write_text(json.dumps({"fractions": {"CEL": {"vasogenic_oedema": 0.2},
                                                                  "NEL": {"infiltrated_oedema": 1.0}}}))
    (tmp_path / "clinical.csv").write_text("case,time_months,event\np1,10,1\n")
    with pytest.raises(ValueError, match="p1.*'vasogenic_oedema' in the CEL"):
        habitat_table(tmp_path / "runs", tmp_path / "clinical.csv")


def test_a_phantom_cohort_folder_gives_the_simulated_fractions(tmp_path):
    fractions = simulate_fractions(25, 8, cases=[f"phantom{i:02d}" for i in range(25)])
    _write_cases(tmp_path / "phantoms", fractions, "truth/habitats.json")
    record = simulate_cohort(tmp_path / "table.csv", fractions=tmp_path / "phantoms", seed=3)
    table = pd.read_csv(tmp_path / "table.csv")
    assert record["patients"] == len(table) == 25 and table["case"].iloc[0] == "phantom00"
    assert {"time_months", "event", "age", "kps"} <= set(table.columns)
    truth = json.loads((tmp_path / "table.truth.json").read_text())
    assert truth["truth"]["hazard_ratios"]["NEL_infiltrated_oedema"] == 1.5
    fractions.iloc[:1].to_csv(tmp_path / "one.csv", index=False)  # one patient: no pair to rank
    assert simulate_cohort(tmp_path / "one_table.csv", fractions=tmp_path / "one.csv")["truth_c_index"] is None


# --- the commands ---------------------------------------------------------------------------------------------------


def _gliomaprog_here(capsys, *arguments) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` in this process: the console script's parser, handlers and one-line errors
    (``cli.main.main``) without an interpreter's start-up, which costs more than these commands."""
    code = main([str(a) for a in arguments])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, code, out, err)


@pytest.mark.slow
def test_the_commands_end_to_end(tmp_path, capsys):
    simulated = _gliomaprog_here(capsys, "cohort", "simulate-survival", "--n", "60", "--seed", "2", "--out",
                                 tmp_path / "t.csv")
    assert simulated.returncode == 0, simulated.stderr
    assert "truth C-index" in simulated.stdout and (tmp_path / "t.truth.json").is_file()
    run = _gliomaprog_here(capsys, "cohort", "survival", "--table", tmp_path / "t.csv", "--bootstrap", "100",
                           "--quiet", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS and "C-index" in run.stdout
    cohort = pd.read_csv(tmp_path / "t.csv", dtype={"case": str})
    _write_cases(tmp_path / "runs", cohort, "habitats/habitats.json")
    clinical = cohort[["case", "age", "kps", "gross_total_resection", "time_months", "event"]]
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    merged = _gliomaprog_here(capsys, "cohort", "survival", "--habitats", tmp_path / "runs", "--clinical",
                              tmp_path / "clinical.csv", "--bootstrap", "100", "--quiet", "--out", tmp_path / "out2")
    assert merged.returncode == 0, merged.stderr
    assert (pd.read_csv(tmp_path / "out2" / "hazard_ratios.csv")["covariate"] == "NEL_infiltrated_oedema").any()
    clinical.assign(kps=["ninety"] + list(clinical["kps"].iloc[1:])).to_csv(tmp_path / "clinical_bad.csv", index=False)
    refused = _gliomaprog_here(capsys, "cohort", "survival", "--habitats", tmp_path / "runs", "--clinical",
                               tmp_path / "clinical_bad.csv", "--out", tmp_path / "out3")
    assert_one_line_error(refused, "clinical_bad.csv", "'kps'", "ninety")
    assert not (tmp_path / "out3").exists()
    table = cohort.drop(columns="event")
    table.to_csv(tmp_path / "bad.csv", index=False)
    bad = _gliomaprog_here(capsys, "cohort", "survival", "--table", tmp_path / "bad.csv", "--out", tmp_path / "bad_out")
    assert_one_line_error(bad, "bad.csv", "no column 'event'")
    assert not (tmp_path / "bad_out").exists()
