"""``gliomaprog radiomics model``: seed 001's classifier of local (0) vs distant (1) recurrence from nCBV radiomics.

Pipeline (one per training fold, an imblearn Pipeline so that every step is fitted on the training rows only):
median imputation (regions pyradiomics refused are NaN) -> z-score -> SMOTE -> SVM-RFE down to ``features_kept``
features -> MLP. SMOTE sits inside the pipeline, so oversampling never sees a validation row; it comes after the
z-score because its nearest neighbours are distances, and before SVM-RFE so that selection and classifier both
learn from balanced classes. Stratified k-fold cross-validation gives one AUC per fold, their mean and SD, and the
out-of-fold probabilities for a pooled ROC curve.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

NON_FEATURE_COLUMNS = {"case", "seconds"}  # extraction bookkeeping, not image features
LABEL_WORDS = {"0": 0, "1": 1, "local": 0, "distant": 1}
RFE_STEP = 0.1  # sklearn drops 10% of the *initial* columns per round: ~1700 columns to 32 in ~10 rounds


@dataclass(frozen=True)
class ModelSettings:
    folds: int = 5
    features_kept: int = 32
    seed: int = 1
    hidden_units: int = 32

    def validated(self) -> "ModelSettings":
        if self.folds < 2:
            raise ValueError(f"The number of cross-validation folds must be at least 2, got {self.folds}.")
        if self.features_kept < 1:
            raise ValueError(f"The number of features kept must be at least 1, got {self.features_kept}.")
        if self.seed < 0:
            raise ValueError(f"The random seed must be zero or positive, got {self.seed}.")
        return self


def _read_records(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """The non-blank records of a CSV file with the line each ends on, or one sentence on why it cannot be read."""
    from GliomaProgressionLib.case.files import refuse_broken_link

    refuse_broken_link(path, f"{what} file")
    if not path.is_file():
        raise ValueError(f"The {what} file {path} does not exist.")
    try:  # decoded whole, so that a bad byte's position is its position in the file; -sig: Excel's byte-order mark
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise ValueError(f"The {what} file {path} could not be read ({error.strerror}).") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"The {what} file {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                         f"position {error.start}); save it as UTF-8 CSV.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, record) for record in reader if record]
    except csv.Error as error:
        raise ValueError(f"The {what} file {path} is not a readable CSV table (line {reader.line_num}: "
                         f"{error}).") from None


def _check_header(header: list[str], path: Path, what: str) -> None:
    if "case" not in header:
        raise ValueError(f"The {what} file {path} has no 'case' column (its header line reads "
                         f"{','.join(header)[:60]!r}; columns are separated by commas).")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"The {what} file {path} repeats the column {repeated[0]!r}; every column needs its own "
                         "name.")


def _read_rows(path: Path, what: str) -> list[dict]:
    """The rows of a CSV table with a 'case' column, each with as many cells as the header (a short or long row
    would shift its values into the wrong columns)."""
    records = _read_records(path, what)
    if not records:
        raise ValueError(f"The {what} file {path} is empty.")
    header = records[0][1]
    _check_header(header, path, what)
    if len(records) == 1:
        raise ValueError(f"The {what} file {path} has a header but no rows.")
    for line, record in records[1:]:
        if len(record) != len(header):
            raise ValueError(f"The {what} file {path} has {len(record)} cells on line {line} where its header has "
                             f"{len(header)}.")
    rows = [dict(zip(header, record)) for _, record in records[1:]]
    cases = [row["case"] for row in rows]
    if len(set(cases)) != len(cases):
        raise ValueError(f"The {what} file {path} lists a case more than once.")
    return rows


def _cell_value(text: str) -> float | str:
    """A cell as a number (NaN when empty: a missing value), or its text when it is not a number."""
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        return text


def _feature_column(rows: list[dict], name: str, path) -> list[float] | None:
    """One column as finite numbers or NaN (empty or 'nan': missing); None for a text column (no number at all).
    A column mixing numbers and text, or holding an infinity, is refused: imputing it would change the answer."""
    values = [_cell_value(row[name]) for row in rows]
    numbers = [value for value in values if isinstance(value, float) and not math.isnan(value)]
    if not numbers:
        return None if any(isinstance(value, str) for value in values) else [math.nan] * len(values)
    for row, value in zip(rows, values):
        if isinstance(value, str) or math.isinf(value):
            raise ValueError(f"The features file {path}: case {row['case']}, column {name} holds {row[name]!r}, "
                             "which is not a finite number (leave the cell empty or write nan for a missing value).")
    return values


def read_features(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Case ids, feature names and the case x feature matrix of a ``gliomaprog radiomics extract`` CSV (or any CSV
    with a 'case' column). Text columns (the *_warning ones, and any without a single number), the timing column,
    all-NaN and constant columns are dropped: they carry no information, and a constant column would divide by
    zero in the z-score."""
    rows = _read_rows(Path(path), "features")
    candidates = [name for name in rows[0] if name not in NON_FEATURE_COLUMNS and not name.endswith("_warning")]
    columns = {name: _feature_column(rows, name, path) for name in candidates}
    names = [name for name, values in columns.items() if values is not None]
    matrix = np.array([columns[name] for name in names], dtype=float).T.reshape(len(rows), len(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: nanmin warns, the test below drops them
        informative = np.nanmax(matrix, axis=0, initial=-np.inf) > np.nanmin(matrix, axis=0, initial=np.inf)
    if not informative.any():
        raise ValueError(f"The features file {path} has no numeric column that varies between cases.")
    return [row["case"] for row in rows], [n for n, keep in zip(names, informative) if keep], matrix[:, informative]


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """``{case: 0 (local) or 1 (distant)}`` from a CSV with 'case' and 'label' columns (0/1 or local/distant)."""
    rows = _read_rows(Path(path), "labels")
    if "label" not in rows[0]:
        raise ValueError(f"The labels file {path} has no 'label' column (0 = local, 1 = distant recurrence).")
    labels = {}
    for row in rows:
        word = (row["label"] or "").strip().lower()
        if word not in LABEL_WORDS:
            raise ValueError(f"The labels file {path}: case {row['case']} has label {row['label']!r}; "
                             "use 0/local or 1/distant.")
        labels[row["case"]] = LABEL_WORDS[word]
    return labels


def align(cases: list[str], labels: dict[str, int]) -> np.ndarray:
    """The label of every feature row; the two files must list the same cases."""
    missing, extra = sorted(set(labels) - set(cases)), sorted(set(cases) - set(labels))
    if missing or extra:
        shown = ", ".join((missing + extra)[:5])
        raise ValueError(f"The features and labels list different cases ({len(missing)} only in the labels, "
                         f"{len(extra)} only in the features: {shown}).")
    return np.array([labels[case] for case in cases], dtype=int)


def check_design(y: np.ndarray, n_features: int, settings: ModelSettings) -> None:
    """Refuse what cross-validation cannot answer: one class, fewer cases of a class than folds (a validation fold
    without both classes has no AUC), too few minority cases for SMOTE, more features kept than available."""
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise ValueError(f"All {len(y)} cases have the same label; both local (0) and distant (1) are needed.")
    if counts.min() < settings.folds:
        raise ValueError(f"Only {counts.min()} case(s) of the smaller class for {settings.folds} folds: every "
                         "validation fold needs both classes (use fewer folds or more cases).")
    if counts.min() - math.ceil(counts.min() / settings.folds) < 2:
        raise ValueError("Too few cases of the smaller class in a training fold for SMOTE (at least 2 needed).")
    if settings.features_kept > n_features:
        raise ValueError(f"The number of features kept, {settings.features_kept}, exceeds the {n_features} usable "
                         "feature columns.")


def smote_class():
    """The oversampler class (a function so that tests can substitute a recording one)."""
    from imblearn.over_sampling import SMOTE

    return SMOTE


def build_pipeline(settings: ModelSettings, minority_in_training: int):
    """Impute -> z-score -> SMOTE -> SVM-RFE -> MLP as one imblearn Pipeline (samplers act in fit only)."""
    from imblearn.pipeline import Pipeline
    from sklearn.feature_selection import RFE
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    neighbours = max(1, min(5, minority_in_training - 1))  # SMOTE needs k < minority cases
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("zscore", StandardScaler()),
        ("smote", smote_class()(k_neighbors=neighbours, random_state=settings.seed)),
        ("svm_rfe", RFE(LinearSVC(C=1.0, max_iter=20000, random_state=settings.seed),
                        n_features_to_select=settings.features_kept, step=RFE_STEP)),
        ("mlp", MLPClassifier(hidden_layer_sizes=(settings.hidden_units,), solver="lbfgs", alpha=1e-2,
                              max_iter=2000, random_state=settings.seed)),
    ])


def _fit(pipeline, X: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # lbfgs / liblinear on a few dozen cases often stop at max_iter; the AUC is what is judged.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(X, y)


def cross_validate(X: np.ndarray, y: np.ndarray, settings: ModelSettings) -> dict:
    """Stratified k-fold CV: per-fold AUC and sizes, out-of-fold probabilities, features selected per fold."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    probability, fold_of = np.full(len(y), np.nan), np.zeros(len(y), dtype=int)
    folds, selected = [], []
    for index, (train, test) in enumerate(splitter.split(X, y), start=1):
        pipeline = _fit(build_pipeline(settings, int(np.bincount(y[train]).min())), X[train], y[train])
        probability[test] = pipeline.predict_proba(X[test])[:, 1]
        fold_of[test] = index
        selected.append(pipeline.named_steps["svm_rfe"].support_)
        folds.append({"fold": index, "train_cases": len(train), "validation_cases": len(test),
                      "validation_distant": int(y[test].sum()), "auc": float(roc_auc_score(y[test], probability[test]))})
    aucs = np.array([fold["auc"] for fold in folds])
    return {"folds": folds, "probability": probability, "fold_of": fold_of, "selected": np.array(selected),
            "mean_auc": float(aucs.mean()), "sd_auc": float(aucs.std(ddof=1)),
            "pooled_auc": float(roc_auc_score(y, probability))}


def final_selection(X: np.ndarray, y: np.ndarray, settings: ModelSettings) -> np.ndarray:
    """SVM-RFE ranking (1 = kept) of the pipeline fitted on every case: the feature list a site would deploy. Not
    used for any AUC (that would be evaluated on its own training rows)."""
    pipeline = _fit(build_pipeline(settings, int(np.bincount(y).min())), X, y)
    return pipeline.named_steps["svm_rfe"].ranking_


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_roc(path: Path, y: np.ndarray, result: dict) -> None:
    """Per-fold ROC curves (thin) and the pooled out-of-fold curve (thick)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or in a batch job
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axes = plt.subplots(figsize=(5, 5))
    for fold in result["folds"]:
        mask = result["fold_of"] == fold["fold"]
        fpr, tpr, _ = roc_curve(y[mask], result["probability"][mask])
        axes.plot(fpr, tpr, lw=1, alpha=0.5, label=f"fold {fold['fold']} (AUC {fold['auc']:.2f})")
    fpr, tpr, _ = roc_curve(y, result["probability"])
    axes.plot(fpr, tpr, lw=2.5, color="black", label=f"pooled (AUC {result['pooled_auc']:.2f})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity",
             title=f"nCBV radiomics, distant vs local: mean AUC {result['mean_auc']:.2f} ± {result['sd_auc']:.2f}")
    axes.title.set_fontsize(9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(folder: Path, cases: list[str], names: list[str], y: np.ndarray, result: dict,
                  ranking: np.ndarray, settings: ModelSettings) -> dict:
    """folds.csv, predictions.csv, selected_features.csv, summary.json and roc.png into ``folder``."""
    from GliomaProgressionLib.case.files import write_json

    fold = result["folds"]
    _write_csv(folder / "folds.csv", list(fold[0]), [list(row.values()) for row in fold])
    _write_csv(folder / "predictions.csv", ["case", "label", "fold", "probability_distant"],
               [[c, int(l), int(f), repr(float(p))] for c, l, f, p in
                zip(cases, y, result["fold_of"], result["probability"])])
    counts = result["selected"].sum(axis=0)
    order = sorted(range(len(names)), key=lambda i: (ranking[i], -counts[i], names[i]))
    _write_csv(folder / "selected_features.csv", ["feature", "selected_in_final_model", "folds_selected"],
               [[names[i], int(ranking[i] == 1), int(counts[i])] for i in order if ranking[i] == 1 or counts[i]])
    summary = {"cases": len(y), "distant": int(y.sum()), "local": int(len(y) - y.sum()),
               "feature_columns": len(names), "settings": asdict(settings),
               "pipeline": "median impute -> z-score -> SMOTE (training folds only) -> SVM-RFE -> MLP",
               "fold_auc": [row["auc"] for row in fold], "mean_auc": result["mean_auc"], "sd_auc": result["sd_auc"],
               "pooled_out_of_fold_auc": result["pooled_auc"],
               "selected_features": [names[i] for i in order if ranking[i] == 1]}
    write_json(summary, folder / "summary.json")
    write_roc(folder / "roc.png", y, result)
    return summary


def run_model(features: str | os.PathLike, labels: str | os.PathLike, out: str | os.PathLike,
              settings: ModelSettings = ModelSettings()) -> dict:
    """Read, check, cross-validate and write everything into the new folder ``out`` (staged: all or nothing)."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder

    settings = settings.validated()
    check_new_output_folder(out)
    cases, names, X = read_features(features)
    y = align(cases, read_labels(labels))
    check_design(y, len(names), settings)
    result = cross_validate(X, y, settings)
    ranking = final_selection(X, y, settings)
    with staged_output_folder(out) as staging:
        summary = write_results(staging, cases, names, y, result, ranking, settings)
    return summary
