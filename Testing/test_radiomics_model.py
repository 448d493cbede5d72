"""``gliomaprog radiomics model``: seed 001's z-score, SMOTE, SVM-RFE, MLP pipeline on synthetic feature tables
(separable data, pure noise, SMOTE confined to training folds, informative features selected, bad input)."""

import csv
import json

import numpy as np
import pytest

from GliomaProgressionLib.cohort import radiomics_model
from GliomaProgressionLib.cohort.radiomics_model import ModelSettings, cross_validate, run_model
from helpers import assert_one_line_error, gliomaprog_in_process

INFORMATIVE = 4  # the first columns carry the class; the rest are noise


def _table(seed, cases=60, distant=20, columns=80, shift=3.0):
    """Imbalanced cohort (as seed 001: fewer distant recurrences); columns 0..3 shifted by ``shift`` SD in the
    distant cases, the others pure noise. ``shift=0`` gives a table with no information at all."""
    rng = np.random.default_rng(seed)
    y = np.array([1] * distant + [0] * (cases - distant))
    X = rng.standard_normal((cases, columns)) * 5.0 + 10.0  # not z-scored: the pipeline must do it
    X[:, :INFORMATIVE] += shift * 5.0 * y[:, None]
    return X, y


def _write(tmp_path, X, y, names=None, label_cases=None):
    names = names or [f"enhancing_original_firstorder_F{i:03d}" for i in range(X.shape[1])]
    cases = [f"case{i:03d}" for i in range(len(y))]
    with (tmp_path / "features.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "enhancing_voxels", "enhancing_warning", *names, "seconds"])
        writer.writerows([case, 100, "", *row, 1.5] for case, row in zip(cases, X))
    with (tmp_path / "labels.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "label"])
        writer.writerows(zip(label_cases or cases, ["distant" if v else "local" for v in y]))
    return tmp_path / "features.csv", tmp_path / "labels.csv"


SMALL = ModelSettings(folds=5, features_kept=8, seed=1)


@pytest.mark.parametrize("seed", [1, 2])
def test_separable_data_gives_an_auc_near_1(seed):
    X, y = _table(seed)
    result = cross_validate(X, y, ModelSettings(folds=5, features_kept=8, seed=seed))
    assert result["mean_auc"] >= 0.95, result["folds"]
    assert min(fold["auc"] for fold in result["folds"]) >= 0.85


@pytest.mark.slow
def test_noise_gives_an_auc_near_one_half():
    means = [cross_validate(*_table(seed, shift=0.0), ModelSettings(folds=5, features_kept=8, seed=seed))["mean_auc"]
             for seed in (1, 2, 3, 4)]
    assert 0.3 <= np.mean(means) <= 0.7, means
    assert max(means) < 0.85, means  # no seed should look like a real signal


def test_smote_only_ever_sees_training_rows(monkeypatch):
    """A recording SMOTE: every call must get exactly one training fold (never a validation row, never the whole
    cohort), and predictions must be made on the untouched validation rows. Oversampling before the split, or a
    sampler outside the pipeline, would show up as a call with all 60 rows, or as rows not in a training fold."""
    from imblearn.over_sampling import SMOTE

    X, y = _table(5)
    X[:, -1] = np.arange(len(y))  # a row id column: survives z-scoring as a monotone map, so rows can be traced
    seen = []

    class RecordingSMOTE(SMOTE):
        def fit_resample(self, X, y, **params):
            seen.append(X[:, -1].copy())
            return super().fit_resample(X, y, **params)

    monkeypatch.setattr(radiomics_model, "smote_class", lambda: RecordingSMOTE)
    result = cross_validate(X, y, SMALL)
    assert len(seen) == SMALL.folds
    for fold, ids in zip(result["folds"], seen):
        assert len(ids) == fold["train_cases"] == len(y) - fold["validation_cases"]
        validation = np.flatnonzero(result["fold_of"] == fold["fold"])
        # SMOTE gets z-scored ids: exactly the training ids, scaled with the training rows' own mean and SD.
        training = np.setdiff1d(np.arange(len(y)), validation)
        assert np.allclose(np.sort(ids), (training - training.mean()) / training.std())
    assert np.isfinite(result["probability"]).all()


def test_feature_selection_keeps_the_informative_columns():
    X, y = _table(7, shift=2.0)
    result = cross_validate(X, y, SMALL)
    informative_kept = result["selected"][:, :INFORMATIVE].mean()
    noise_kept = result["selected"][:, INFORMATIVE:].mean()
    assert informative_kept >= 0.9, result["selected"][:, :INFORMATIVE]
    assert noise_kept <= 8 / 76  # at most the remaining slots
    assert (result["selected"].sum(axis=1) == SMALL.features_kept).all()


@pytest.mark.slow
def test_cli_writes_every_output(tmp_path):
    features, labels = _write(tmp_path, *_table(3))
    out = tmp_path / "model"
    result = gliomaprog_in_process("radiomics", "model", "--features", features, "--labels", labels, "--out", out,
                         "--features-kept", "8", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"folds.csv", "predictions.csv", "selected_features.csv",
                                               "summary.json", "roc.png"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 60 and summary["distant"] == 20
    assert summary["feature_columns"] == 80  # voxels constant, warning text and seconds dropped
    assert len(summary["fold_auc"]) == 5 and summary["mean_auc"] == pytest.approx(np.mean(summary["fold_auc"]))
    assert summary["sd_auc"] == pytest.approx(np.std(summary["fold_auc"], ddof=1))
    assert len(summary["selected_features"]) == 8
    assert set(summary["selected_features"]) >= {f"enhancing_original_firstorder_F{i:03d}" for i in range(4)}
    with (out / "predictions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 60 and all(0.0 <= float(row["probability_distant"]) <= 1.0 for row in rows)
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "5-fold CV AUC" in result.stdout


@pytest.mark.parametrize("problem, fragment", [
    ("ids", "list different cases"), ("one class", "same label"), ("few", "for 5 folds"),
    ("kept", "exceeds the 80 usable"), ("exists", "already exists")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, problem, fragment):
    X, y = _table(1)
    kept = "8"
    if problem == "ids":
        features, labels = _write(tmp_path, X, y, label_cases=[f"other{i}" for i in range(len(y))])
    elif problem == "one class":
        features, labels = _write(tmp_path, X, np.zeros_like(y))
    elif problem == "few":
        features, labels = _write(tmp_path, X[16:], y[16:])  # 4 distant cases for 5 folds
    else:
        features, labels = _write(tmp_path, X, y)
        kept = "81" if problem == "kept" else kept
    out = tmp_path / "model"
    if problem == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    result = gliomaprog_in_process("radiomics", "model", "--features", features, "--labels", labels, "--out", out,
                         "--features-kept", kept)
    assert_one_line_error(result, fragment)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] if problem == "exists" else not out.exists()
    assert not list(tmp_path.glob(".model.partial-*"))
