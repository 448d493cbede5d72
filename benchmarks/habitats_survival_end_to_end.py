"""End to end: phantoms -> ``gliomaprog habitats`` -> ``cohort survival`` (issue 14 acceptance; seed 002, Yun et al.
2023; docs/replication_habitats_survival.md, section "End to end").

docs/replication_habitats_survival.md checks ``cohort survival`` on fractions drawn directly. Here the fractions
the Cox model sees are MEASURED by the habitat pipeline on simulated images, while the survival times depend on
the phantoms' TRUE fractions, so every error of the pipeline (a habitat confused with another, partial volume at
the DSC resolution, the lesion carried onto the DSC grid) reaches the hazard ratios and the C-index:

1. N small phantoms (``PhantomConfig(size="small", habitats=True)``, seeds ``--seed`` + 0 .. N-1; the demo model
   was trained on seeds 4000-4059, so the default start 5000 keeps them held out). The habitat shares are passed
   explicitly, drawn from each case's seed (``SHARE_RANGES``): wider than the generator's own defaults
   (``HABITAT_SHARE_BOUNDS``) so that burden varies as in the direct simulation (SD of the CEL low-angiogenic
   and NEL infiltrated fractions about 0.09-0.10), yet keeping every family some twenty DSC voxels. The
   infiltrated share starts above the future-progression wedge (about 0.07-0.17 of the NEL), which the generator
   only grows; a case whose wedge is larger anyway is refused by the generator and listed.
2. Each case through ``runs.habitats.run_habitats_files`` (what ``gliomaprog habitats CASE --out OUT`` calls,
   default model and alignment), in a pool of ``--processes`` workers. Cases it refuses are listed and left out.
3. Survival simulated from the TRUE fractions (truth/habitats.json) with ``phantom.survival.simulate_cohort``
   (``DEFAULT_TRUTH``, clinical covariates from ``simulate_clinical``, Weibull times, censoring).
4. ``cohort.survival.survival_analysis`` (what ``gliomaprog cohort survival --habitats RUNS --clinical CSV``
   calls, after ``habitat_table``) on the MEASURED fractions; for comparison the same on the true fractions.
5. A summary (printed, and summary.json): each effect's HR [95 % CI] vs the truth's contrast and its direction;
   the validation C-index vs the truth model's on the same validation patients; measured vs true fractions per
   habitat (mean absolute difference and mean bias in percentage points, Pearson correlation).

Run from the repository root:
    .venv/bin/python benchmarks/habitats_survival_end_to_end.py --out build/e2e120 --n 120 --processes 2
    .venv/bin/python benchmarks/habitats_survival_end_to_end.py --out build/e2e240 --n 240 --reuse build/e2e120
(``--reuse``: the first 120 cases linked from the earlier run, which made them from the same seeds; only the
others are generated, and the wall time counts only them.)
Synthetic data — not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# Habitat shares per case (fractions of the region), uniform; the CEL's low-angiogenic tumour is what the
# high-angiogenic and perinecrotic shares leave (0.15-0.60), the NEL's vasogenic oedema what the other two leave.
SHARE_RANGES = {
    "high_angiogenic_share": (0.25, 0.55),
    "perinecrotic_share": (0.15, 0.30),
    "nel_low_angiogenic_share": (0.05, 0.12),
    "infiltrated_share": (0.20, 0.50),
}
SHARE_STREAM = 1402  # second seed word of the shares' generator, apart from the phantom's own streams
DEFAULT_FIRST_SEED = 5000
DIRECTION_TOLERANCE = 0.05  # the acceptance: validation C-index within 0.05 of the truth model's


def case_shares(seed: int) -> dict[str, float]:
    """The habitat shares of the phantom with this seed (reproducible from the seed alone)."""
    rng = np.random.default_rng([seed, SHARE_STREAM])
    return {name: round(float(rng.uniform(*bounds)), 4) for name, bounds in SHARE_RANGES.items()}


def _quiet_worker() -> None:
    # Two workers on two shared cores: one thread each, or torch and BLAS oversubscribe.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)


def one_case(seed: int, phantoms: Path, runs: Path) -> dict:
    """Generate one phantom and run the habitat pipeline on it; a refusal (ValueError) is returned, not raised."""
    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case
    from GliomaProgressionLib.runs.habitats import run_habitats_files

    name, shares = f"case{seed:05d}", case_shares(seed)
    started = time.monotonic()
    try:
        case = generate_case(PhantomConfig(seed=seed, size="small", habitats=True, **shares))
    except ValueError as error:
        return {"case": name, "seed": seed, "shares": shares, "refused_by": "phantom", "reason": str(error)}
    folder = write_case(case, phantoms / name)
    generated = time.monotonic()
    try:
        run_habitats_files(folder, runs / name)
    except ValueError as error:
        return {"case": name, "seed": seed, "shares": shares, "refused_by": "gliomaprog habitats",
                "reason": str(error), "phantom_s": generated - started}
    return {"case": name, "seed": seed, "shares": shares, "phantom_s": generated - started,
            "habitats_s": time.monotonic() - generated}


def reused_cases(earlier: Path | None, seeds: list[int], phantoms: Path, runs: Path) -> dict[int, dict]:
    """The cases of an earlier run of this script (its summary.json) with seeds asked again: linked, not redone
    (a case depends on its seed alone)."""
    if earlier is None:
        return {}
    summary = earlier / "summary.json"
    if not summary.is_file():
        raise ValueError(f"The earlier run {earlier} has no summary.json.")
    records = {r["seed"]: r for r in json.loads(summary.read_text())["cases"] if r["seed"] in seeds}
    for record in records.values():
        for folder, source in ((phantoms, earlier / "phantoms"), (runs, earlier / "habitats")):
            if (source / record["case"]).is_dir():
                (folder / record["case"]).symlink_to((source / record["case"]).resolve(), target_is_directory=True)
    return records


def run_cases(seeds: list[int], phantoms: Path, runs: Path, processes: int, earlier: Path | None = None) -> list[dict]:
    phantoms.mkdir(parents=True)
    runs.mkdir(parents=True)
    reused = reused_cases(earlier, seeds, phantoms, runs)
    todo = [seed for seed in seeds if seed not in reused]
    if reused:
        print(f"  {len(reused)} cases reused from {earlier}", flush=True)
    records = list(reused.values())
    with ProcessPoolExecutor(max_workers=processes, initializer=_quiet_worker) as pool:
        futures = [pool.submit(one_case, seed, phantoms, runs) for seed in todo]
        for index, future in enumerate(futures, 1):
            records.append(future.result())
            if index % 10 == 0 or index == len(todo):
                print(f"  {index}/{len(todo)} cases done", flush=True)
    return sorted(records, key=lambda r: r["seed"])


# --- comparison with the truth ---------------------------------------------------------------------------------


def fraction_agreement(true, measured) -> dict:
    """Per habitat column: mean |measured - true| and mean (measured - true) in percentage points, Pearson r
    (None when either is constant, e.g. the NEL high-angiogenic fraction, 0 in every phantom)."""
    from GliomaProgressionLib.phantom.survival import fraction_columns

    merged = true.merge(measured, on="case", suffixes=("_true", "_measured"))
    rows = {}
    for column in fraction_columns():
        t, m = merged[f"{column}_true"].to_numpy(float), merged[f"{column}_measured"].to_numpy(float)
        correlation = float(np.corrcoef(t, m)[0, 1]) if np.ptp(t) > 0 and np.ptp(m) > 0 else None
        rows[column] = {"true_mean_pp": 100 * float(t.mean()), "measured_mean_pp": 100 * float(m.mean()),
                        "true_sd_pp": 100 * float(t.std()), "mean_abs_difference_pp": 100 * float(np.abs(m - t).mean()),
                        "mean_bias_pp": 100 * float((m - t).mean()), "pearson_r": correlation}
    return rows


def effect_rows(result: dict, truth) -> list[dict]:
    """The habitats + clinical model's hazard ratios beside the truth's contrasts."""
    from GliomaProgressionLib.cohort.survival import FULL_MODEL
    from GliomaProgressionLib.phantom.survival import truth_contrast

    rows = []
    for row in (r for r in result["hazard_ratios"] if r["model"] == FULL_MODEL):
        true = truth_contrast(truth, row["covariate"])
        direction = None if true == 1 else (row["hazard_ratio"] > 1) == (true > 1)
        rows.append({"covariate": row["covariate"], "unit": row["unit"], "true_hr": true,
                     "hr": row["hazard_ratio"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                     "p": row["p"], "direction_right": direction,
                     "ci_holds_truth": row["ci_low"] <= true <= row["ci_high"]})
    return rows


def c_index_summary(result: dict, table, truth) -> dict:
    """Validation C-indices of the fitted models and of the truth model on the same validation patients (with the
    TRUE fractions: the truth's own linear predictor)."""
    from GliomaProgressionLib.cohort.survival import FULL_MODEL
    from GliomaProgressionLib.phantom.survival import truth_concordance

    validation = table[table["case"].isin(result["validation"]["cases"])]
    truth_c = truth_concordance(validation, truth)
    fitted = result["models"][FULL_MODEL]["c_index_validation"]
    return {"models": {name: {k: m[k] for k in ("c_index_validation", "c_index_ci_low", "c_index_ci_high")}
                       for name, m in result["models"].items()},
            "truth_model": truth_c, "fitted_minus_truth": fitted - truth_c,
            "within_tolerance": abs(fitted - truth_c) <= DIRECTION_TOLERANCE}


def analyse(out: Path, records: list[dict], seed: int) -> dict:
    import pandas as pd

    from GliomaProgressionLib.cohort.survival import habitat_table, survival_analysis
    from GliomaProgressionLib.case.files import write_text
    from GliomaProgressionLib.phantom.survival import (DEFAULT_TRUTH, PHANTOM_HABITATS_FILES, RUN_HABITATS_FILES,
                                                       fraction_columns, fractions_from_case_folders,
                                                       simulate_cohort)

    kept = sorted(r["case"] for r in records if "reason" not in r)
    phantoms, runs = out / "phantoms", out / "habitats"
    # Survival from the TRUE fractions of the phantoms the pipeline measured (the refused ones are left out).
    cohort_csv = out / "cohort_true_fractions.csv"
    true = fractions_from_case_folders(phantoms, PHANTOM_HABITATS_FILES, "phantom cohort folder")
    true = true[true["case"].isin(kept)].reset_index(drop=True)
    true_csv = out / "true_fractions.csv"
    write_text(true.to_csv(index=False, float_format="%.6g", lineterminator="\n"), true_csv)
    simulate_cohort(cohort_csv, fractions=true_csv, seed=seed, truth=DEFAULT_TRUTH)
    cohort = pd.read_csv(cohort_csv, dtype={"case": str})
    clinical_csv = out / "clinical.csv"
    clinical = cohort[[c for c in cohort.columns if c not in fraction_columns()]]
    write_text(clinical.to_csv(index=False, float_format="%.6g", lineterminator="\n"), clinical_csv)

    measured_table = habitat_table(runs, clinical_csv)  # as gliomaprog cohort survival --habitats --clinical
    measured = fractions_from_case_folders(runs, RUN_HABITATS_FILES, "habitats folder")
    on_measured = survival_analysis(measured_table, out / "survival_measured")
    on_true = survival_analysis(cohort, out / "survival_true_fractions")
    return {
        "patients": len(kept), "deaths": on_measured["deaths"], "censored_share": on_measured["censored_share"],
        "truth": {"hazard_ratios": dict(DEFAULT_TRUTH.hazard_ratios), "median_months": DEFAULT_TRUTH.median_months,
                  "weibull_shape": DEFAULT_TRUTH.weibull_shape},
        "measured": {"effects": effect_rows(on_measured, DEFAULT_TRUTH),
                     "c_index": c_index_summary(on_measured, cohort, DEFAULT_TRUTH),
                     "covariates_left_out": on_measured["covariates_left_out"]},
        "true_fractions": {"effects": effect_rows(on_true, DEFAULT_TRUTH),
                           "c_index": c_index_summary(on_true, cohort, DEFAULT_TRUTH),
                           "covariates_left_out": on_true["covariates_left_out"]},
        "fraction_agreement": fraction_agreement(true, measured),
    }


# --- printing ----------------------------------------------------------------------------------------------------


def _direction(value) -> str:
    return "(null)" if value is None else ("right" if value else "WRONG")


def print_summary(summary: dict) -> None:
    print(f"\n{summary['patients']} patients measured ({summary['deaths']} deaths, "
          f"{100 * summary['censored_share']:.0f}% censored); refused: {len(summary['refused'])}"
          + "".join(f"\n  {r['case']} ({r['refused_by']}): {r['reason']}" for r in summary["refused"]))
    for source in ("measured", "true_fractions"):
        part = summary[source]
        print(f"\nCox on the {'measured' if source == 'measured' else 'true'} fractions (habitats + clinical):")
        print("| Covariate | True HR | Estimated HR [95% CI] | Direction | CI holds truth |\n|---|---|---|---|---|")
        for row in part["effects"]:
            print(f"| {row['covariate']} | {row['true_hr']:.2f} | {row['hr']:.2f} [{row['ci_low']:.2f}, "
                  f"{row['ci_high']:.2f}] | {_direction(row['direction_right'])} | "
                  f"{'yes' if row['ci_holds_truth'] else 'no'} |")
        c = part["c_index"]
        for name, model in c["models"].items():
            print(f"{name}: validation C-index {model['c_index_validation']:.3f} "
                  f"[{model['c_index_ci_low']:.3f}, {model['c_index_ci_high']:.3f}]")
        print(f"truth model, same validation patients: {c['truth_model']:.3f}; fitted - truth "
              f"{c['fitted_minus_truth']:+.3f} ({'within' if c['within_tolerance'] else 'NOT within'} 0.05)")
    print("\nMeasured vs true fractions (percentage points):")
    print("| Fraction | True mean (SD) | Measured mean | Mean abs. difference | Mean bias | Pearson r |")
    print("|---|---|---|---|---|---|")
    for column, row in summary["fraction_agreement"].items():
        r = "n/a" if row["pearson_r"] is None else f"{row['pearson_r']:.2f}"
        print(f"| {column} | {row['true_mean_pp']:.1f} ({row['true_sd_pp']:.1f}) | {row['measured_mean_pp']:.1f} | "
              f"{row['mean_abs_difference_pp']:.1f} | {row['mean_bias_pp']:+.1f} | {r} |")
    print(f"\nWall time {summary['wall_time_s'] / 60:.1f} min with {summary['processes']} processes.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new folder for the cases, runs and results")
    parser.add_argument("--n", type=int, default=120, help="number of phantom cases (default 120)")
    parser.add_argument("--seed", type=int, default=DEFAULT_FIRST_SEED,
                        help=f"first phantom seed, also the survival simulation's seed (default {DEFAULT_FIRST_SEED})")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--reuse", type=Path, metavar="EARLIER_OUT",
                        help="link the cases (same seeds) of an earlier run's --out instead of making them again")
    args = parser.parse_args()
    if args.n < 20 or args.processes < 1 or args.seed < 0:
        raise SystemExit("--n must be at least 20, --processes at least 1 and --seed not negative.")
    from GliomaProgressionLib.case.files import check_new_output_folder, write_json

    out = check_new_output_folder(args.out)
    started = time.monotonic()
    seeds = list(range(args.seed, args.seed + args.n))
    print(f"Generating {args.n} phantoms (seeds {seeds[0]}-{seeds[-1]}) and their habitats with "
          f"{args.processes} processes", flush=True)
    records = run_cases(seeds, out / "phantoms", out / "habitats", args.processes, args.reuse)
    summary = {"command": f"benchmarks/habitats_survival_end_to_end.py --n {args.n} --seed {args.seed} "
                          f"--processes {args.processes}" + (f" --reuse {args.reuse}" if args.reuse else ""),
               "share_ranges": SHARE_RANGES, "phantom_size": "small",
               "refused": [r for r in records if "reason" in r]}
    summary.update(analyse(out, records, args.seed))
    done = [r for r in records if "habitats_s" in r]
    summary["mean_phantom_s"] = float(np.mean([r["phantom_s"] for r in done]))
    summary["mean_habitats_s"] = float(np.mean([r["habitats_s"] for r in done]))
    summary["wall_time_s"] = time.monotonic() - started
    summary["processes"] = args.processes
    summary["cases"] = records
    summary["note"] = "Synthetic data — not for clinical use."
    write_json(summary, out / "summary.json")
    print_summary(summary)


if __name__ == "__main__":
    main()
