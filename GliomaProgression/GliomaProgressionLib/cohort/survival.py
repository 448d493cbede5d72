"""Overall survival from perfusion-habitat fractions and clinical predictors (``gliomaprog cohort survival``),
as in seed 002 (Yun et al., AJNR 2023).

Yun et al. fitted a Cox proportional-hazards model of overall survival to the fraction of the CEL and NEL in
each perfusion pattern with age, extent of resection and KPS, on a training set, and judged it by Harrell's
C-index on a validation set, beside a clinical-only model (0.72 vs 0.55). This module does the same with
lifelines (no survival statistics are written here):

- patients split 2/3 training, 1/3 validation, stratified by event (scikit-learn, fixed seed);
- ``CoxPHFitter`` on the training patients, covariates in the units of ``phantom.survival.covariate_unit``
  (hazard ratios per 10 percentage points of a region's fraction, per decade of age, per 10 KPS points,
  gross-total vs less than gross-total resection), with their 95 % CIs and Wald p-values;
- the fractions of one region sum to 1, so a model holding all of them is not identifiable (any constant can
  move between the coefficients): when every habitat column of a region is a covariate, that region's reference
  habitat (``REFERENCE_HABITAT``: high-angiogenic tumour in the CEL, vasogenic oedema in the NEL) is left out,
  and each other habitat's hazard ratio is per 10 points *in place of* the reference habitat. A small ridge
  penalty (``PENALIZER`` = 0.01, lifelines' penalty on standardised coefficients) is kept only so that the fit
  converges when a habitat is rare or nearly separates the deaths; on the simulated cohorts of 120-240 patients
  it changes no hazard ratio by more than 4 % (benchmarks/simulate_survival_cohort.py);
- Harrell's C-index of each model's risk score on the validation patients (lifelines ``concordance_index``),
  with a percentile bootstrap 95 % CI over the validation patients (``scipy.stats.bootstrap``; the models are
  kept fixed, the same resamples for both models, so that their difference has a CI too);
- each covariate's test of proportional hazards (lifelines ``proportional_hazard_test``, scaled Schoenfeld
  residuals against the rank of time), since the hazard ratios mean little where that assumption fails;
- a Kaplan-Meier plot of all patients above vs at or below the median of one fraction (pattern burden;
  lifelines ``KaplanMeierFitter``), with the log-rank test (``lifelines.statistics.logrank_test``).

The table (CSV or DataFrame, one row per ``case``) holds ``time_months``, ``event`` (1 death, 0 censored) and the
covariates, named as in ``phantom.survival`` (``NEL_infiltrated_oedema``, ``age``, ...). ``habitat_table`` builds
it from per-case habitats JSON files and a clinical CSV. Results go into a new folder, all or nothing:
survival.json, survival.md, hazard_ratios.csv, patients.csv (split and risk scores) and km.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY
from GliomaProgressionLib.phantom.survival import (CASE_COLUMN, CLINICAL_COLUMNS, EVENT_COLUMN, REFERENCE_HABITAT,
                                                   RUN_HABITATS_FILES, TIME_COLUMN, column_region, covariate_unit,
                                                   fraction_column, fraction_columns, fractions_from_case_folders,
                                                   read_table, region_fraction_columns)

CONFIDENCE = 0.95
PENALIZER = 0.01
VALIDATION_FRACTION = 1 / 3  # as Yun et al.: two thirds to fit, one third to validate
BOOTSTRAP_REPLICATES = 1000
MIN_PATIENTS = 20
MIN_EVENTS = 10
KM_DEFAULT = fraction_column("NEL", "infiltrated_oedema")  # Yun's strongest pattern
FULL_MODEL, CLINICAL_MODEL, HABITATS_MODEL = "habitats + clinical", "clinical only", "habitats only"


# --- the table -----------------------------------------------------------------------------------------------------


def habitat_table(habitats: str | os.PathLike, clinical_csv: str | os.PathLike):
    """One row per case: the habitat fractions (a folder of case folders holding ``habitats/habitats.json``, or a
    CSV of fraction columns) merged by case id with the clinical CSV (time_months, event, age, ...)."""
    habitats = Path(habitats)
    fractions = (fractions_from_case_folders(habitats, RUN_HABITATS_FILES, "habitats folder") if habitats.is_dir()
                 else read_table(habitats, "habitat fractions table"))
    clinical = read_table(clinical_csv, "clinical table")
    shared = [c for c in fractions.columns if c != CASE_COLUMN and c in clinical.columns]
    if shared:
        raise ValueError(f"The clinical table {clinical_csv} and the habitat fractions both hold a column "
                         f"{shared[0]!r}; keep each column in one of them.")
    without_clinical = sorted(set(fractions[CASE_COLUMN]) - set(clinical[CASE_COLUMN]))
    without_habitats = sorted(set(clinical[CASE_COLUMN]) - set(fractions[CASE_COLUMN]))
    if without_clinical:
        raise ValueError(f"The clinical table {clinical_csv} has no row for {len(without_clinical)} case(s) with "
                         f"habitats: {_first(without_clinical)}.")
    if without_habitats:
        raise ValueError(f"The clinical table {clinical_csv} holds {len(without_habitats)} case(s) without habitat "
                         f"fractions in {habitats}: {_first(without_habitats)}.")
    table = fractions.merge(clinical, on=CASE_COLUMN)
    table.attrs["source"] = f"{habitats} with {clinical_csv}"  # named in the analysis' messages
    return table


def _first(names: Sequence[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")


def _load(table, what: str):
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        frame = table.copy()
        if CASE_COLUMN not in frame.columns:
            frame.insert(0, CASE_COLUMN, [f"row{i + 1}" for i in range(len(frame))])
        frame[CASE_COLUMN] = frame[CASE_COLUMN].astype(str)
        return frame
    return read_table(table, what)


def _check_numeric(table, column: str, what: str) -> np.ndarray:
    import pandas as pd

    if column not in table.columns:
        raise ValueError(f"The {what} has no column {column!r}.")
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise ValueError(f"The column {column!r} of the {what} holds a value that is not a number "
                         f"({table[column].iloc[row]!r}, case {table[CASE_COLUMN].iloc[row]}).")
    if values.isna().any():
        row = int(np.argmax(values.isna().to_numpy()))
        raise ValueError(f"The column {column!r} of the {what} is empty for {int(values.isna().sum())} case(s) "
                         f"(first: {table[CASE_COLUMN].iloc[row]}).")
    values = values.to_numpy(float)
    if not np.isfinite(values).all():
        raise ValueError(f"The column {column!r} of the {what} holds an infinite value.")
    return values


def _check_outcome(table, time: str, event: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    times, events = _check_numeric(table, time, what), _check_numeric(table, event, what)
    if (times <= 0).any():
        raise ValueError(f"The column {time!r} of the {what} must hold positive survival times; case "
                         f"{table[CASE_COLUMN].iloc[int(np.argmax(times <= 0))]} has {times[times <= 0][0]:g}.")
    if not np.isin(events, (0, 1)).all():
        raise ValueError(f"The column {event!r} of the {what} must hold 1 (death) or 0 (censored); case "
                         f"{table[CASE_COLUMN].iloc[int(np.argmax(~np.isin(events, (0, 1))))]} has "
                         f"{events[~np.isin(events, (0, 1))][0]:g}.")
    if len(table) < MIN_PATIENTS:
        raise ValueError(f"The {what} holds {len(table)} patients; a Cox model with a validation set needs at least "
                         f"{MIN_PATIENTS}.")
    if events.sum() < MIN_EVENTS:
        raise ValueError(f"The {what} holds {int(events.sum())} deaths; a Cox model with a validation set needs at "
                         f"least {MIN_EVENTS}.")
    return times, events.astype(int)


def choose_covariates(table, covariates: Sequence[str] | None, time: str, event: str,
                      what: str) -> tuple[list[str], dict]:
    """The covariates to fit and notes on the ones left out: by default every fraction column and clinical
    column present, without those constant in the cohort; then each region's reference habitat when all of the
    region's fractions are covariates (they sum to 1)."""
    notes: dict = {"constant_left_out": [], "reference_left_out": {}}
    if covariates is None:
        chosen = [c for c in (*fraction_columns(), *CLINICAL_COLUMNS) if c in table.columns]
        if not chosen:
            raise ValueError(f"The {what} has no habitat fraction column (named like {KM_DEFAULT}) and no clinical "
                             f"column ({', '.join(CLINICAL_COLUMNS)}).")
    else:
        chosen = list(dict.fromkeys(covariates))
        if not chosen:
            raise ValueError("The list of covariates is empty.")
    for column in chosen:
        if column in (time, event, CASE_COLUMN):
            raise ValueError(f"The column {column!r} of the {what} cannot be a covariate (it is the case id or the "
                             "outcome).")
        values = _check_numeric(table, column, what)
        if column_region(column) and not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"The fraction column {column!r} of the {what} holds values outside 0..1.")
        if np.ptp(values) == 0:
            if covariates is not None:
                raise ValueError(f"The covariate {column!r} of the {what} has the same value ({values[0]:g}) for "
                                 "every patient, so it cannot explain survival.")
            notes["constant_left_out"].append(column)
    chosen = [c for c in chosen if c not in notes["constant_left_out"]]
    for region, reference in REFERENCE_HABITAT.items():
        columns = [c for c in region_fraction_columns(region) if c in chosen]
        left = [c for c in region_fraction_columns(region) if c not in chosen]
        complete = not left or all(c in notes["constant_left_out"] for c in left)
        if len(columns) > 1 and complete:
            drop = fraction_column(region, reference)
            drop = drop if drop in columns else columns[-1]
            chosen.remove(drop)
            notes["reference_left_out"][region] = drop
    _refuse_collinear(table, chosen, what)
    return chosen, notes


def _refuse_collinear(table, covariates: Sequence[str], what: str) -> None:
    """A covariate that is a linear combination of the ones before it (and a constant) leaves the Cox model
    unidentifiable: refuse it by name rather than report meaningless hazard ratios."""
    values = np.column_stack([table[c].astype(float).to_numpy() for c in covariates])
    values = (values - values.mean(axis=0)) / values.std(axis=0)
    for index in range(1, len(covariates)):
        before = values[:, :index]
        coefficients = np.linalg.lstsq(before, values[:, index], rcond=None)[0]
        # Relative to the covariate's SD (1 here): fractions rounded to 4 decimals still sum to 1 within 1e-3.
        if np.std(values[:, index] - before @ coefficients) < 1e-3:
            named = [covariates[i] for i in np.flatnonzero(np.abs(coefficients) > 1e-6)]
            raise ValueError(f"The covariate {covariates[index]!r} of the {what} is a linear combination of "
                             f"{', '.join(named)}, so the model cannot tell them apart; leave one of them out.")


# --- models --------------------------------------------------------------------------------------------------------


def _scaled(table, covariates: Sequence[str]):
    """The covariates divided by their units, so that exp(coefficient) is the hazard ratio per unit."""
    import pandas as pd

    return pd.DataFrame({c: table[c].astype(float) / covariate_unit(c)[0] for c in covariates},
                        index=table.index)


def _model_data(table, covariates: Sequence[str], time: str, event: str):
    data = _scaled(table, covariates)
    data["_time"], data["_event"] = table[time].astype(float).to_numpy(), table[event].astype(int).to_numpy()
    return data


def fit_cox(table, covariates: Sequence[str], time: str, event: str, penalizer: float = PENALIZER):
    """lifelines ``CoxPHFitter`` on ``table``'s covariates in their units; ValueError when it cannot converge."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    data = _model_data(table, covariates, time, event)
    try:
        return CoxPHFitter(penalizer=penalizer).fit(data, duration_col="_time", event_col="_event")
    except ConvergenceError:
        raise ValueError(f"The Cox model of {', '.join(covariates)} did not converge on the training patients "
                         "(a covariate may separate deaths from survivors, or two covariates say the same).") from None


def risk_scores(model, table, covariates: Sequence[str]) -> np.ndarray:
    """The model's log partial hazard of every row (higher = shorter survival)."""
    return np.asarray(model.predict_log_partial_hazard(_scaled(table, covariates)), float)


def proportional_hazards_p(model, table, covariates: Sequence[str], time: str, event: str) -> dict[str, float]:
    """p of each covariate's test of proportional hazards (scaled Schoenfeld residuals against the rank of time;
    lifelines ``proportional_hazard_test``): a small p says its hazard ratio changes with time."""
    import warnings

    from lifelines.statistics import proportional_hazard_test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines' advice to read the plots: the p-values are reported instead
        test = proportional_hazard_test(model, _model_data(table, covariates, time, event), time_transform="rank")
    return {str(name if isinstance(name, str) else name[0]): float(p) for name, p in test.summary["p"].items()}


def unit_words(column: str, covariates: Sequence[str], absent: Sequence[str] = ()) -> str:
    """What a covariate's hazard ratio is per: for a fraction, 10 percentage points of its region taken from the
    region's habitats that are not covariates (the reference habitat when the others all are), leaving out those
    ``absent`` from every patient."""
    region = column_region(column)
    if region is None:
        return covariate_unit(column)[1]
    others = [HABITAT_BY_KEY[c.split("_", 1)[1]].name.lower() for c in region_fraction_columns(region)
              if c not in covariates and c not in absent]
    return f"per 10 percentage points of the {region} (in place of {' or '.join(others) or 'nothing'})"


def hazard_ratio_rows(model, covariates: Sequence[str], name: str, ph_p: dict[str, float],
                      absent: Sequence[str] = ()) -> list[dict]:
    summary = model.summary
    rows = []
    for column in covariates:
        row = summary.loc[column]
        rows.append({"model": name, "covariate": column, "unit": unit_words(column, covariates, absent),
                     "hazard_ratio": float(row["exp(coef)"]),
                     "ci_low": float(row["exp(coef) lower 95%"]), "ci_high": float(row["exp(coef) upper 95%"]),
                     "p": float(row["p"]), "coef": float(row["coef"]), "se": float(row["se(coef)"]),
                     "ph_test_p": ph_p[column]})
    return rows


def concordance(times: np.ndarray, events: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of a risk score (higher risk, earlier death), lifelines."""
    from lifelines.utils import concordance_index

    return float(concordance_index(times, -risk, events))


def bootstrap_concordance(times: np.ndarray, events: np.ndarray, risks: Sequence[np.ndarray],
                          replicates: int, seed: int) -> list[tuple[float | None, float | None]]:
    """Percentile 95 % CIs of each risk score's C-index and of the first minus the second (when two), from the
    same bootstrap resamples of the patients (scipy). A resample without a comparable pair (no death, or deaths
    only after every censoring) has no C-index and is left out of the percentiles."""
    from scipy.stats import bootstrap

    def statistic(index):
        index = index.astype(int)
        try:
            values = [concordance(times[index], events[index], r[index]) for r in risks]
        except ZeroDivisionError:  # lifelines: no admissible pair in this resample
            values = [np.nan] * len(risks)
        return np.array(values + ([values[0] - values[1]] if len(values) == 2 else []))

    result = bootstrap((np.arange(len(times), dtype=float),), statistic, n_resamples=replicates, vectorized=False,
                       confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    distribution = np.atleast_2d(result.bootstrap_distribution)
    tail = 100 * (1 - CONFIDENCE) / 2
    intervals = []
    for values in distribution:
        values = values[np.isfinite(values)]
        intervals.append((float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                         if values.size else (None, None))
    return intervals


def split_patients(events: np.ndarray, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices, stratified by event (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    if not 0 < validation_fraction < 1:
        raise ValueError(f"The validation share must be between 0 and 1, got {validation_fraction}.")
    rows = np.arange(len(events))
    train, validation = train_test_split(rows, test_size=validation_fraction, stratify=events, random_state=seed)
    if events[validation].sum() < 3 or events[train].sum() < 5:
        raise ValueError("The validation split leaves too few deaths on one side (at least 5 to fit, 3 to "
                         "validate); give more patients or another validation share.")
    return np.sort(train), np.sort(validation)


# --- Kaplan-Meier ----------------------------------------------------------------------------------------------------


def kaplan_meier_groups(table, column: str, time: str, event: str, what: str) -> dict:
    """Patients above vs at or below the median of ``column``: sizes, median survivals and the log-rank p."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    if column not in table.columns:
        raise ValueError(f"The {what} has no column {column!r} to split the Kaplan-Meier curves by.")
    values = _check_numeric(table, column, what)
    median = float(np.median(values))
    high = values > median
    if high.all() or not high.any():
        raise ValueError(f"The column {column!r} of the {what} cannot split the patients at its median "
                         f"({median:g}): too many patients share that value.")
    times, events = table[time].to_numpy(float), table[event].to_numpy(int)
    groups = {}
    for label, mask in ((f"{column} > {median:.3g}", high), (f"{column} ≤ {median:.3g}", ~high)):
        fitter = KaplanMeierFitter(label=label).fit(times[mask], events[mask])
        median_survival = float(fitter.median_survival_time_)
        groups[label] = {"fitter": fitter, "patients": int(mask.sum()), "deaths": int(events[mask].sum()),
                         "median_months": median_survival if np.isfinite(median_survival) else None}
    test = logrank_test(times[high], times[~high], events[high], events[~high])
    return {"covariate": column, "median": median, "groups": groups, "logrank_p": float(test.p_value)}


def plot_kaplan_meier(km: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or in a batch job
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for label, group in km["groups"].items():
        group["fitter"].plot_survival_function(ax=axes, ci_show=True, show_censors=True,
                                               label=f"{label} (n = {group['patients']})")
    axes.set(xlabel="Months", ylabel="Overall survival", ylim=(0, 1.02),
             title=f"Kaplan-Meier by {km['covariate']} (log-rank p = {km['logrank_p']:.3g})")
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- the analysis ----------------------------------------------------------------------------------------------------


def survival_analysis(table, out: str | os.PathLike, *, covariates: Sequence[str] | None = None,
                      time: str = TIME_COLUMN, event: str = EVENT_COLUMN,
                      validation_fraction: float = VALIDATION_FRACTION, bootstrap: int = BOOTSTRAP_REPLICATES,
                      seed: int = 0, km_covariate: str | None = None, penalizer: float = PENALIZER,
                      progress: Callable[[float, str], None] | None = None) -> dict:
    """Cox models (habitats + clinical, clinical only) fitted on a training split, their validation C-index with
    bootstrap CIs, hazard ratios and a Kaplan-Meier plot, written into the new folder ``out`` (all or nothing).

    ``table``: a CSV file or a DataFrame, one row per case. Everything is checked before anything is written."""
    from GliomaProgressionLib.case.files import check_new_output_folder, staged_output_folder

    report = progress or (lambda fraction, message: None)
    what = (f"survival table {table}" if isinstance(table, (str, os.PathLike))
            else f"survival table of {table.attrs['source']}" if "source" in table.attrs else "survival table")
    out = check_new_output_folder(out)
    if bootstrap < 100:
        raise ValueError(f"A bootstrap CI needs at least 100 replicates, got {bootstrap}.")
    frame = _load(table, "survival table")
    times, events = _check_outcome(frame, time, event, what)
    chosen, notes = choose_covariates(frame, covariates, time, event, what)
    frame[time], frame[event] = times, events
    clinical = [c for c in chosen if column_region(c) is None]
    km_column = km_covariate or (KM_DEFAULT if KM_DEFAULT in frame.columns
                                 else next((c for c in chosen if column_region(c)), chosen[0]))
    km = kaplan_meier_groups(frame, km_column, time, event, what)

    report(0.1, f"Fitting the Cox models on {len(frame)} patients ({int(events.sum())} deaths)")
    train, validation = split_patients(events, validation_fraction, seed)
    habitats = [c for c in chosen if column_region(c)]
    models = {(FULL_MODEL if clinical else HABITATS_MODEL) if habitats else CLINICAL_MODEL: chosen}
    if clinical and habitats:
        models[CLINICAL_MODEL] = clinical
    fitted = {name: fit_cox(frame.iloc[train], columns, time, event, penalizer) for name, columns in models.items()}
    risks = {name: risk_scores(fitted[name], frame, models[name]) for name in models}

    report(0.4, f"Bootstrapping the validation C-index ({bootstrap} resamples)")
    v_times, v_events = times[validation], events[validation]
    intervals = bootstrap_concordance(v_times, v_events, [risks[name][validation] for name in models], bootstrap, seed)
    summaries = {}
    for (name, columns), (low, high) in zip(models.items(), intervals):
        summaries[name] = {"covariates": columns, "c_index_training": float(fitted[name].concordance_index_),
                           "c_index_validation": concordance(v_times, v_events, risks[name][validation]),
                           "c_index_ci_low": low, "c_index_ci_high": high}
    result = {
        "table": str(table) if isinstance(table, (str, os.PathLike)) else None,
        "patients": len(frame), "deaths": int(events.sum()), "censored_share": float(1 - events.mean()),
        "training": {"patients": len(train), "deaths": int(events[train].sum())},
        "validation": {"patients": len(validation), "deaths": int(v_events.sum()),
                       "cases": frame[CASE_COLUMN].iloc[validation].tolist()},
        "settings": {"time": time, "event": event, "validation_fraction": validation_fraction,
                     "bootstrap": bootstrap, "seed": seed, "penalizer": penalizer, "confidence": CONFIDENCE},
        "covariates_left_out": notes, "models": summaries,
        "c_index_difference": ({"value": summaries[FULL_MODEL]["c_index_validation"]
                                - summaries[CLINICAL_MODEL]["c_index_validation"],
                                "ci_low": intervals[2][0], "ci_high": intervals[2][1]}
                               if len(summaries) == 2 else None),
        "hazard_ratios": [row for name in models for row in hazard_ratio_rows(
            fitted[name], models[name], name,
            proportional_hazards_p(fitted[name], frame.iloc[train], models[name], time, event),
            notes["constant_left_out"])],
        "kaplan_meier": {"covariate": km["covariate"], "split_at_median": km["median"], "logrank_p": km["logrank_p"],
                         "groups": {label: {k: v for k, v in g.items() if k != "fitter"}
                                    for label, g in km["groups"].items()}},
    }
    result["markdown"] = markdown_report(result)
    report(0.9, "Writing the tables and the Kaplan-Meier plot")
    with staged_output_folder(out) as staging:
        write_results(staging, result, frame, train, risks, time, event, km)
    return result


# --- writing ---------------------------------------------------------------------------------------------------------


def _interval(low: float | None, high: float | None, spec: str = ".3f") -> str:
    return "[n/a]" if low is None else f"[{low:{spec}}, {high:{spec}}]"


def _ratio(row: dict) -> str:
    return f"{row['hazard_ratio']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def markdown_report(result: dict) -> str:
    """Yun's Table layout: hazard ratios (95 % CI, p) of the first model (habitats + clinical when both were
    given), then the C-indices."""
    first = next(iter(result["models"]))
    lines = ["| Covariate | Unit | HR (95% CI) | p | PH test p |", "|---|---|---|---|---|"]
    for row in (r for r in result["hazard_ratios"] if r["model"] == first):
        lines.append(f"| {row['covariate']} | {row['unit']} | {_ratio(row)} | {row['p']:.3g} | "
                     f"{row['ph_test_p']:.3g} |")
    lines += ["", "| Model | C-index, training | C-index, validation (95% CI) |", "|---|---|---|"]
    for name, model in result["models"].items():
        lines.append(f"| {name} | {model['c_index_training']:.3f} | {model['c_index_validation']:.3f} "
                     f"{_interval(model['c_index_ci_low'], model['c_index_ci_high'])} |")
    difference = result["c_index_difference"]
    settings, km = result["settings"], result["kaplan_meier"]
    left = result["covariates_left_out"]
    references = "; ".join(f"{region}: {column} (reference: the region's fractions sum to 1)"
                           for region, column in left["reference_left_out"].items())
    constant = ", ".join(left["constant_left_out"])
    lines += ["", f"Patients: {result['patients']} ({result['deaths']} deaths, {100 * result['censored_share']:.0f}% "
              f"censored); training {result['training']['patients']} ({result['training']['deaths']} deaths), "
              f"validation {result['validation']['patients']} ({result['validation']['deaths']} deaths), split "
              f"stratified by event (seed {settings['seed']}). Cox proportional hazards (lifelines, ridge penalizer "
              f"{settings['penalizer']:g}) fitted on the training patients (PH test: proportional hazards, scaled "
              f"Schoenfeld residuals against the rank of time; a small p says the hazard ratio changes with time); "
              f"Harrell's C-index on the validation "
              f"patients, 95% percentile CI from {settings['bootstrap']} bootstrap resamples of them."
              + (f" Habitats + clinical minus clinical only: {difference['value']:+.3f} "
                 f"{_interval(difference['ci_low'], difference['ci_high'], '+.3f')}." if difference else "")
              + (f" Left out: {references}." if references else "")
              + (f" Constant in the cohort, left out: {constant}." if constant else "")]
    groups = "; ".join(f"{label}: {g['patients']} patients, {g['deaths']} deaths, median "
                       + (f"{g['median_months']:.1f} months" if g["median_months"] is not None else "not reached")
                       for label, g in km["groups"].items())
    lines += ["", f"Kaplan-Meier by {km['covariate']} (all patients, split at its median): {groups}; log-rank "
              f"p = {km['logrank_p']:.3g}."]
    return "\n".join(lines) + "\n"


HAZARD_COLUMNS = ("model", "covariate", "unit", "hazard_ratio", "ci_low", "ci_high", "p", "coef", "se", "ph_test_p")


def write_results(folder: Path, result: dict, frame, train: np.ndarray, risks: dict, time: str, event: str,
                  km: dict) -> None:
    """survival.json, survival.md, hazard_ratios.csv, patients.csv and km.png into ``folder``."""
    import pandas as pd

    pd.DataFrame(result["hazard_ratios"], columns=list(HAZARD_COLUMNS)).to_csv(
        folder / "hazard_ratios.csv", index=False, float_format="%.6g", lineterminator="\n")
    patients = pd.DataFrame({CASE_COLUMN: frame[CASE_COLUMN].to_numpy(),
                             "set": np.where(np.isin(np.arange(len(frame)), train), "training", "validation"),
                             time: frame[time].to_numpy(), event: frame[event].to_numpy()})
    for name, risk in risks.items():
        patients[f"risk_{name.replace(' + ', '_').replace(' ', '_')}"] = risk
    patients.to_csv(folder / "patients.csv", index=False, float_format="%.6g", lineterminator="\n")
    (folder / "survival.md").write_text(result["markdown"], encoding="utf-8")
    data = {k: v for k, v in result.items() if k != "markdown"}
    # allow_nan=False: a NaN reaching this point is a bug, and must fail rather than write invalid JSON.
    (folder / "survival.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plot_kaplan_meier(km, folder / "km.png")
