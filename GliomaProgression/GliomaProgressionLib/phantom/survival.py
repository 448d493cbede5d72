"""Simulated overall survival from perfusion-habitat burden, with known hazard ratios (seed 002, Yun et al. 2023).

Yun et al. (AJNR 2023) fitted a Cox proportional-hazards model of overall survival to the fraction of the
contrast-enhancing (CEL) and non-enhancing lesion (NEL) in each perfusion pattern, with age, extent of resection
and KPS, and judged it by Harrell's C-index on a validation set (0.72 with the patterns, 0.55 clinical only;
NEL infiltrated oedema HR 1.88, low-angiogenic tumour HR 2.18). This module makes cohorts on which such an
analysis can be checked against a truth it cannot see:

- ``simulate_fractions``: habitat fractions per region drawn from a Dirichlet distribution (``DIRICHLET``), or
  read from cases (``fractions_from_case_folders``: a phantom's ``truth/habitats.json``, a run's
  ``habitats/habitats.json``) or a CSV;
- ``simulate_clinical``: age, KPS and gross-total resection, drawn plausibly for adult glioblastoma (median age
  about 60, KPS mostly 70-90, gross-total resection in about 45 %, as in surgical series);
- ``simulate_survival``: Weibull proportional-hazards survival times, S(t | x) = exp(-(t / scale)^shape e^(b.x)),
  b = ln(HR) per unit (``covariate_unit``), x centred on the cohort mean so that ``median_months`` is the median
  survival of the average patient; censored administratively (uniform accrual, fixed end of study) and by random
  loss to follow-up (``Censoring``; about 20-30 % censored with the defaults);
- ``truth_concordance``: Harrell's C-index of the true linear predictor, the ceiling a fitted model can approach.

The table vocabulary is declared here once and imported by ``cohort.survival``: fraction columns are
``<REGION>_<habitat key>`` (``fraction_column``), clinical columns ``CLINICAL_COLUMNS``, outcome ``time_months``
and ``event`` (1 = death, 0 = censored), one row per ``case``. Hazard ratios are per ``covariate_unit``: 10
percentage points of a region's fraction (in place of the region's reference habitat, ``REFERENCE_HABITAT``:
fractions of one region sum to 1, so only contrasts between habitats are identifiable), a decade of age, 10 KPS
points, gross-total vs less than gross-total resection. Synthetic data — not for clinical use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY, HABITATS, REGIONS

CASE_COLUMN = "case"
TIME_COLUMN = "time_months"
EVENT_COLUMN = "event"
CLINICAL_COLUMNS = ("age", "kps", "gross_total_resection")
FRACTION_UNIT = 0.1  # hazard ratios of fractions are per 10 percentage points
CLINICAL_UNITS = {"age": (10.0, "per decade"), "kps": (10.0, "per 10 KPS points"),
                  "gross_total_resection": (1.0, "gross-total vs less")}
# The habitat each region's other fractions are contrasted with: the pattern expected to dominate the region.
REFERENCE_HABITAT = {"CEL": "high_angiogenic", "NEL": "vasogenic_oedema"}
# Dirichlet concentrations of the simulated fractions (mean = concentration / sum; a sum of 8-10 gives each
# fraction an SD of 0.1-0.15, i.e. patients differ by one to two hazard-ratio units).
DIRICHLET = {"CEL": {"high_angiogenic": 4.0, "low_angiogenic": 2.0, "perinecrotic": 2.0},
             "NEL": {"high_angiogenic": 1.0, "low_angiogenic": 1.0, "infiltrated_oedema": 3.0,
                     "vasogenic_oedema": 5.0}}
# Where a case folder keeps its habitat fractions: a run (gliomaprog habitats / run) and a phantom's truth.
RUN_HABITATS_FILES = ("habitats/habitats.json", "habitats.json")
PHANTOM_HABITATS_FILES = ("truth/habitats.json",)


# --- the table's vocabulary --------------------------------------------------------------------------------------


def fraction_column(region: str, key: str) -> str:
    """The table column of the fraction of ``region`` (CEL, NEL) in habitat ``key``: ``NEL_infiltrated_oedema``."""
    return f"{region}_{key}"


def region_fraction_columns(region: str) -> tuple[str, ...]:
    """Every fraction column of one region, in the vocabulary's order (habitats that may occur there)."""
    return tuple(fraction_column(region, h.key) for h in HABITATS if region in h.regions)


def fraction_columns() -> tuple[str, ...]:
    """Every fraction column: CEL's then NEL's."""
    return tuple(column for region in REGIONS for column in region_fraction_columns(region))


def column_region(column: str) -> str | None:
    """The region of a fraction column, None for any other column."""
    return next((region for region in REGIONS if column in region_fraction_columns(region)), None)


def covariate_unit(column: str) -> tuple[float, str]:
    """(unit, words) of a covariate's hazard ratio: 0.1 of a fraction, a decade of age, ..."""
    region = column_region(column)
    if region is not None:
        reference = HABITAT_BY_KEY[REFERENCE_HABITAT[region]].name.lower()
        return FRACTION_UNIT, f"per 10 percentage points of the {region} (in place of {reference})"
    return CLINICAL_UNITS.get(column, (1.0, "per unit"))


# --- the truth -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Censoring:
    """Administrative censoring (accrual uniform over ``accrual_months``, analysis ``follow_up_months`` after the
    last patient) and random loss to follow-up (exponential, ``dropout_per_year``)."""

    accrual_months: float = 36.0
    follow_up_months: float = 24.0
    dropout_per_year: float = 0.06


@dataclass(frozen=True)
class SurvivalTruth:
    """Hazard ratios per ``covariate_unit`` (covariates not named have HR 1) and the Weibull baseline."""

    hazard_ratios: Mapping[str, float]
    median_months: float = 15.0  # median overall survival of the cohort-average patient (glioblastoma: ~15)
    weibull_shape: float = 1.3  # > 1: the hazard rises with time, as in glioblastoma

    def log_hazard(self, table) -> np.ndarray:
        """The true linear predictor b.x of every row (x centred on the table's mean; b = ln HR per unit)."""
        missing = [c for c in self.hazard_ratios if c not in table.columns]
        if missing:
            raise ValueError(f"The cohort table has no column {missing[0]!r}, which the simulated survival depends "
                             "on.")
        predictor = np.zeros(len(table))
        for column, ratio in self.hazard_ratios.items():
            if not ratio > 0:
                raise ValueError(f"The hazard ratio of {column} must be positive, got {ratio}.")
            values = table[column].to_numpy(float)
            predictor += np.log(ratio) / covariate_unit(column)[0] * (values - values.mean())
        return predictor


# Yun's two harmful patterns (smaller than the study's ratios, whose unit the paper does not give), and clinical
# effects at the strong end of those reported for glioblastoma cohorts, so that a cohort of 120 shows each one's
# direction (with GTR 0.7 and KPS 0.8 one cohort in five did not); truth C-index about 0.72, Yun's value.
DEFAULT_TRUTH = SurvivalTruth({"NEL_infiltrated_oedema": 1.5, "CEL_low_angiogenic": 1.6, "age": 1.4, "kps": 0.75,
                               "gross_total_resection": 0.6})


def truth_contrast(truth: SurvivalTruth, column: str) -> float:
    """The hazard ratio a Cox model estimates for ``column`` when its region's reference habitat is left out:
    HR(column) / HR(reference), per unit."""
    region = column_region(column)
    ratio = truth.hazard_ratios.get(column, 1.0)
    if region is None:
        return ratio
    return ratio / truth.hazard_ratios.get(fraction_column(region, REFERENCE_HABITAT[region]), 1.0)


# --- simulation ----------------------------------------------------------------------------------------------------


def _case_ids(n: int) -> list[str]:
    return [f"sim{i:04d}" for i in range(n)]


def _check_size(n: int) -> None:
    if n < 1:
        raise ValueError(f"A simulated cohort needs at least one patient, got {n}.")


def simulate_fractions(n: int, seed: int = 0, cases: Sequence[str] | None = None):
    """Habitat fractions of ``n`` patients, each region drawn from its ``DIRICHLET`` distribution."""
    import pandas as pd

    _check_size(n)
    rng = np.random.default_rng([seed, 1])
    table = pd.DataFrame({CASE_COLUMN: list(cases) if cases is not None else _case_ids(n)})
    for region, concentration in DIRICHLET.items():
        draws = rng.dirichlet(list(concentration.values()), size=n)
        for index, key in enumerate(concentration):
            table[fraction_column(region, key)] = draws[:, index]
    return table


def simulate_clinical(n: int, seed: int = 0, cases: Sequence[str] | None = None):
    """Age (years), KPS (50-100 in steps of 10) and gross-total resection (1/0) of ``n`` adult glioblastoma
    patients."""
    import pandas as pd

    _check_size(n)
    rng = np.random.default_rng([seed, 2])
    return pd.DataFrame({
        CASE_COLUMN: list(cases) if cases is not None else _case_ids(n),
        "age": np.round(np.clip(rng.normal(60.0, 11.0, n), 25.0, 85.0), 1),
        "kps": rng.choice([50, 60, 70, 80, 90, 100], size=n, p=[0.05, 0.10, 0.20, 0.30, 0.25, 0.10]),
        "gross_total_resection": (rng.random(n) < 0.45).astype(int),
    })


def simulate_survival(table, truth: SurvivalTruth = DEFAULT_TRUTH, seed: int = 0,
                      censoring: Censoring = Censoring()):
    """A copy of ``table`` with ``time_months`` (observed time) and ``event`` (1 death, 0 censored) drawn from the
    Weibull proportional-hazards model of ``truth``."""
    rng = np.random.default_rng([seed, 3])
    n = len(table)
    shape = truth.weibull_shape
    scale = truth.median_months / np.log(2.0) ** (1.0 / shape)
    # Inverse transform: S(T) = U  <=>  T = scale (-ln U / e^(b.x))^(1/shape).
    death = scale * (-np.log(rng.random(n)) / np.exp(truth.log_hazard(table))) ** (1.0 / shape)
    study_end = censoring.follow_up_months + censoring.accrual_months * rng.random(n)
    lost = rng.exponential(12.0 / censoring.dropout_per_year, n) if censoring.dropout_per_year > 0 else np.inf
    censored_at = np.minimum(study_end, lost)
    result = table.copy()
    result[TIME_COLUMN] = np.round(np.minimum(death, censored_at), 2).clip(min=0.01)
    result[EVENT_COLUMN] = (death <= censored_at).astype(int)
    return result


def truth_concordance(table, truth: SurvivalTruth = DEFAULT_TRUTH, time: str = TIME_COLUMN,
                      event: str = EVENT_COLUMN) -> float | None:
    """Harrell's C-index of the true linear predictor on ``table`` (lifelines); None without a comparable pair
    (fewer than two patients, or no death before a later time)."""
    from lifelines.utils import concordance_index

    try:
        return float(concordance_index(table[time].to_numpy(float), -truth.log_hazard(table),
                                       table[event].to_numpy(int)))
    except ZeroDivisionError:  # lifelines: no admissible pair
        return None


# --- fractions of cases on disk ------------------------------------------------------------------------------------


def read_fractions_json(path: str | os.PathLike, what: str = "habitats file") -> dict[str, float]:
    """``{fraction column: value}`` from the ``"fractions"`` object of a habitats JSON file
    (``{"fractions": {"CEL": {key: f}, "NEL": {key: f}}}``); habitats a region lacks have fraction 0."""
    from GliomaProgressionLib.case.files import json_kind, read_json_object

    data = read_json_object(path, what)
    fractions = data.get("fractions")
    if not isinstance(fractions, dict):
        raise ValueError(f"The {what} {path} has no \"fractions\" object (found {json_kind(fractions)}).")
    row: dict[str, float] = {}
    for region in REGIONS:
        values = fractions.get(region)
        if not isinstance(values, dict):
            raise ValueError(f"The {what} {path} has no {region} fractions (an object of habitat fractions).")
        allowed = region_fraction_columns(region)
        for key, value in values.items():
            if fraction_column(region, key) not in allowed:
                raise ValueError(f"The {what} {path} gives a fraction for {key!r} in the {region}, which is not a "
                                 f"habitat of that region ({', '.join(c.split('_', 1)[1] for c in allowed)}).")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"The {what} {path} gives the {region} {key} fraction as {value!r}; expected a "
                                 "number from 0 to 1.")
        row.update({column: float(values.get(column.split("_", 1)[1], 0.0)) for column in allowed})
    return row


def fractions_from_case_folders(folder: str | os.PathLike, candidates: Sequence[str] = RUN_HABITATS_FILES,
                                what: str = "case folder"):
    """The fraction table of a folder of case folders (case id = folder name), each holding its habitats JSON at
    the first of ``candidates`` (paths relative to the case folder) that exists."""
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The {what} {folder} does not exist or is not a folder.")
    rows = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = next((case / c for c in candidates if (case / c).is_file()), None)
        if path is None:
            raise ValueError(f"The case {case.name} in {folder} has no habitat fractions (looked for "
                             f"{' and '.join(candidates)}).")
        rows.append({CASE_COLUMN: case.name, **read_fractions_json(path, f"habitats file of case {case.name}")})
    if not rows:
        raise ValueError(f"The {what} {folder} holds no case folder.")
    return pd.DataFrame(rows)


def read_table(path: str | os.PathLike, what: str):
    """A CSV table with one row per ``case`` (case ids as text, unique); ValueError naming the file otherwise."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"The {what} {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}.")
    try:
        table = pd.read_csv(path, dtype={CASE_COLUMN: str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split()) or "no columns"
        raise ValueError(f"The {what} {path} could not be read as CSV ({reason}).") from None
    if CASE_COLUMN not in table.columns:
        raise ValueError(f"The {what} {path} has no {CASE_COLUMN!r} column (one row per case, named by its id).")
    if table.empty:
        raise ValueError(f"The {what} {path} holds no row.")
    if table[CASE_COLUMN].isna().any():
        row = int(table[CASE_COLUMN].isna().idxmax()) + 2  # the header is line 1
        raise ValueError(f"The {what} {path} has a row without a case id (line {row} of the file).")
    duplicated = table[CASE_COLUMN][table[CASE_COLUMN].duplicated()]
    if len(duplicated):
        raise ValueError(f"The {what} {path} holds case {duplicated.iloc[0]} more than once.")
    return table


# --- a simulated cohort on disk -------------------------------------------------------------------------------------


def simulate_cohort(out_csv: str | os.PathLike, *, fractions: str | os.PathLike | None = None, n: int | None = None,
                    seed: int = 0, truth: SurvivalTruth = DEFAULT_TRUTH, censoring: Censoring = Censoring()) -> dict:
    """Write a simulated survival table (fractions, clinical columns, time_months, event) to the new CSV file
    ``out_csv`` and its truth (hazard ratios, units, censoring, truth C-index) to ``<name>.truth.json`` beside it.

    ``fractions``: a CSV of fraction columns, or a folder of phantom cases (``truth/habitats.json``); without it,
    ``n`` patients' fractions are drawn from ``DIRICHLET``."""
    from GliomaProgressionLib.case.files import write_text

    out_csv = Path(out_csv)
    truth_path = out_csv.with_name(out_csv.stem + ".truth.json")
    for path in (out_csv, truth_path):
        if path.exists():
            raise ValueError(f"The simulated table's file {path} already exists; choose a new name.")
    if not out_csv.absolute().parent.is_dir():
        raise ValueError(f"The folder of the simulated table {out_csv} does not exist.")
    table = _fraction_source(fractions, n, seed)
    clinical = simulate_clinical(len(table), seed, cases=table[CASE_COLUMN].tolist())
    table = simulate_survival(table.merge(clinical, on=CASE_COLUMN), truth, seed, censoring)
    record = {"seed": seed, "patients": len(table), "events": int(table[EVENT_COLUMN].sum()),
              "censored_share": float(1 - table[EVENT_COLUMN].mean()),
              "fractions": str(fractions) if fractions is not None else "Dirichlet", "dirichlet": DIRICHLET,
              "truth": {"hazard_ratios": dict(truth.hazard_ratios), "median_months": truth.median_months,
                        "weibull_shape": truth.weibull_shape},
              "units": {c: covariate_unit(c)[1] for c in (*fraction_columns(), *CLINICAL_COLUMNS)},
              "reference_habitats": REFERENCE_HABITAT, "censoring": asdict(censoring),
              "truth_c_index": truth_concordance(table, truth),
              "note": "Synthetic data — not for clinical use."}
    write_text(json.dumps(record, indent=2) + "\n", truth_path)
    write_text(table.to_csv(index=False, float_format="%.6g", lineterminator="\n"), out_csv)
    return record


def _fraction_source(fractions, n: int | None, seed: int):
    if fractions is None:
        if n is None:
            raise ValueError("A simulated cohort needs either habitat fractions or a number of patients.")
        return simulate_fractions(n, seed)
    path = Path(fractions)
    table = (fractions_from_case_folders(path, PHANTOM_HABITATS_FILES, "phantom cohort folder") if path.is_dir()
             else read_table(path, "fractions table"))
    present = [c for c in fraction_columns() if c in table.columns]
    if not present:
        raise ValueError(f"The fractions table {path} has no fraction column (named like "
                         f"{fraction_column('NEL', 'infiltrated_oedema')}).")
    if n is not None and n != len(table):
        raise ValueError(f"The fractions {path} hold {len(table)} patients, not the {n} asked for.")
    for column in present:
        values = table[column]
        if not np.issubdtype(values.dtype, np.number) or values.isna().any() or not values.between(0, 1).all():
            raise ValueError(f"The column {column} of the fractions {path} must hold numbers from 0 to 1 in every "
                             "row.")
    return table[[CASE_COLUMN, *present]]
