"""CBF by oSVD against known answers, before and after issue 13 item 2; writes docs/dsc-cbf-validation.md.

"Before" is ``DSCPerfusionLib/deconvolution.py`` as of commit ``BEFORE_COMMIT`` (read with ``git show``),
"after" is the working tree. Both run through ``perfusion_maps`` with the known AIF.

1. The 14 OSIPI concentration cases (``Testing/data/dsc_reference``, group ``osipi_csv``: CBV 2 and 4, CBF
   5-70, exponential residue, no delay, no dispersion, SNR 200), with each discretisation.
2. Their noise floor: the cases' own documented generator (rectangle-rule convolution, README of the data),
   noise-free, plus Gaussian noise of each case's measured pre-bolus SD, ``DRAWS`` times: how far the oSVD
   estimate scatters at that noise, i.e. what any single noisy case can be expected to show.
3. Simulated tissues (``DSCPerfusionLib.simulation``, continuous-time exponential residue, TR 1.5 s):
   arrival delays in fractions of a frame, and a dispersed AIF (the tissue is fed the measured AIF convolved
   with exp(-t/beta)/beta).
4. The phantom (``GliomaProgressionLib.phantom``, small, tumour's hemisphere late by ``arrival_delay_s``)
   through ``compute_perfusion`` as a user runs it: signal with Rician noise, automatic AIF, relative CBF.

Run from the repository root:  .venv/bin/python benchmarks/validate_cbf.py [--out docs/dsc-cbf-validation.md]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from unittest import mock

import numpy as np
from scipy.signal import fftconvolve

from DSCPerfusionLib import deconvolution as after
from DSCPerfusionLib.pipeline import PerfusionOptions, compute_perfusion
from DSCPerfusionLib.simulation import gamma_variate_aif, tissue_delta_r2s
from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "Testing" / "data" / "dsc_reference"
BEFORE_COMMIT = "ef2bbfe"
DRAWS = 200
# Frames before the OSIPI bolus (t < 20 s): where each case's noise SD is measured.
OSIPI_PRE_BOLUS = slice(0, 17)
TR_S = 1.5
TIMES = np.arange(60) * TR_S
TISSUES = {"grey matter": (4.0, 60.0), "white matter": (2.0, 22.0), "slow white matter": (2.1, 18.0),
           "enhancing tumour": (7.0, 85.0)}
DELAYS_S = (0.0, 0.375, 0.75, 1.125, 1.5, 3.0, -0.75)  # 0, 1/4, 1/2, 3/4, 1 and 2 frames late; 1/2 frame early
DISPERSIONS_S = (1.0, 2.0, 4.0)
VOXELS_PER_TISSUE = 100
# Noise on the simulated concentration curves: 0.3 % of the largest tissue value (as test_dsc_deconvolution).
SIMULATED_NOISE = 0.003
PHANTOM_DELAYS_S = (0.0, 0.75, 1.125, 3.0)  # TR 1.5 s: none, 1/2, 3/4 and 2 frames
# Phantom voxels by their true CBF (ml/100 g/min): grey-matter-like and white-matter-like (oedema included).
PHANTOM_CLASSES = {"grey (CBF >= 45)": (45.0, np.inf), "white (CBF 15-28)": (15.0, 28.0)}


def _before_module():
    """deconvolution.py at BEFORE_COMMIT, loaded as a module of the installed DSCPerfusionLib package."""
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:DSCPerfusion/DSCPerfusionLib/deconvolution.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    name = "DSCPerfusionLib.deconvolution_before"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "DSCPerfusionLib"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, f"deconvolution.py@{BEFORE_COMMIT}", "exec"), module.__dict__)
    return module


def _osipi_cases() -> list[dict]:
    cases = json.loads((REFERENCE / "cases.json").read_text())["cases"]
    return [case for case in cases if case["group"] == "osipi_csv"]


def _flows(module, tissue: np.ndarray, aif: np.ndarray, times: np.ndarray, discretisation: str) -> np.ndarray:
    """CBF (ml/100 ml/min) of tissue curves (T, N) with the known AIF."""
    maps = module.perfusion_maps(tissue, times, np.ones(tissue.shape[1], bool), aif=aif,
                                 discretisation=discretisation)
    return maps.cbf


def _percent(values: np.ndarray, truth) -> np.ndarray:
    return 100.0 * (np.asarray(values) / truth - 1.0)


def _summary(errors: np.ndarray) -> str:
    worst = errors[np.argmax(np.abs(errors))]
    within = int(np.sum(np.abs(errors) <= 10.0))
    return f"median \\|e\\| {np.median(np.abs(errors)):.1f} %, worst {worst:+.1f} %, {within}/{errors.size} within 10 %"


# --- 1. OSIPI cases ---------------------------------------------------------------------------------------

VARIANTS = (("before", "linear"), ("before", "rectangular"), ("after", "linear"), ("after", "rectangular"))


def osipi_table(modules: dict) -> tuple[list[str], dict]:
    rows, errors = [], {variant: [] for variant in VARIANTS}
    for case in _osipi_cases():
        arrays = np.load(REFERENCE / case["file"])
        truth = case["reference"]["cbf_ml_per_100ml_per_min"]
        cells = []
        for variant in VARIANTS:
            cbf = _flows(modules[variant[0]], arrays["C_tis"][:, None], arrays["C_aif"], arrays["t"], variant[1])[0]
            errors[variant].append(_percent(cbf, truth))
            cells.append(f"{errors[variant][-1]:+.1f}")
        rows.append(f"| {case['reference']['cbv_ml_per_100ml']:g} | {truth:g} | " + " | ".join(cells) + " |")
    errors = {variant: np.array(values) for variant, values in errors.items()}
    rows.append("| **summary** | | " + " | ".join(_summary(errors[variant]) for variant in VARIANTS) + " |")
    return rows, errors


# --- 2. Noise floor of the OSIPI cases ----------------------------------------------------------------------


def _generator_curve(case: dict, arrays) -> np.ndarray:
    """The documented OSIPI generator, noise-free: Ct = CBF dt (Ca conv exp(-t/MTT)), rectangle rule."""
    cbf, cbv = case["reference"]["cbf_ml_per_100ml_per_min"], case["reference"]["cbv_ml_per_100ml"]
    times, dt = arrays["t"], float(arrays["tr"])
    residue = np.exp(-times / (60.0 * cbv / cbf))
    return cbf / 6000.0 * dt * np.convolve(arrays["C_aif"], residue)[: times.size]


def noise_floor_table(modules: dict) -> list[str]:
    rng = np.random.default_rng(13)
    rows = []
    for case in _osipi_cases():
        arrays = np.load(REFERENCE / case["file"])
        truth = case["reference"]["cbf_ml_per_100ml_per_min"]
        clean = _generator_curve(case, arrays)
        sd = float(np.std(arrays["C_tis"][OSIPI_PRE_BOLUS]))
        noisy = clean[:, None] + rng.normal(0.0, sd, (clean.size, DRAWS))
        cells = [f"{sd:.4f}"]
        for variant in (("before", "rectangular"), ("after", "rectangular"), ("after", "linear")):
            errors = _percent(_flows(modules[variant[0]], noisy, arrays["C_aif"], arrays["t"], variant[1]), truth)
            noise_free = _percent(_flows(modules[variant[0]], clean[:, None], arrays["C_aif"], arrays["t"],
                                         variant[1])[0], truth)
            cells.append(f"{noise_free:+.1f} / {np.median(errors):+.1f} ± {np.std(errors):.1f} / "
                         f"{100.0 * np.mean(np.abs(errors) <= 10.0):.0f} %")
        rows.append(f"| {case['reference']['cbv_ml_per_100ml']:g} | {truth:g} | " + " | ".join(cells) + " |")
    return rows


# --- 3. Simulated tissues -----------------------------------------------------------------------------------


def _dispersed_aif(beta_s: float, delay_s: float = 0.0):
    """Callable AIF: the default gamma variate convolved with exp(-t/beta)/beta (unit area), then delayed."""
    fine_dt = 0.01
    fine = np.arange(0.0, TIMES[-1] + 60.0, fine_dt)
    arterial = gamma_variate_aif(fine)
    if beta_s > 0:
        kernel = np.exp(-fine / beta_s) * fine_dt / beta_s
        arterial = fftconvolve(arterial, kernel / kernel.sum())[: fine.size]
    return lambda t: np.interp(np.asarray(t) - delay_s, fine, arterial, left=0.0)


def _simulated_ratios(modules: dict, feed, rng: np.random.Generator) -> dict:
    """Median CBF/truth per tissue and variant for tissue fed by ``feed`` (callable AIF), measured AIF undelayed."""
    cbv = np.repeat([values[0] for values in TISSUES.values()], VOXELS_PER_TISSUE)
    cbf = np.repeat([values[1] for values in TISSUES.values()], VOXELS_PER_TISSUE)
    tissue = tissue_delta_r2s(TIMES, feed, cbv, cbf, r2_eff=1.0)
    tissue = tissue + rng.normal(0.0, SIMULATED_NOISE * tissue.max(), tissue.shape)
    measured_aif = gamma_variate_aif(TIMES)
    ratios = {}
    for variant in (("before", "linear"), ("after", "linear")):
        flows = _flows(modules[variant[0]], tissue, measured_aif, TIMES, variant[1]) / cbf
        ratios[variant] = np.median(flows.reshape(len(TISSUES), VOXELS_PER_TISSUE), axis=1)
    return ratios


def simulated_tables(modules: dict) -> tuple[list[str], list[str], dict]:
    rng = np.random.default_rng(7)
    by_delay = {delay: _simulated_ratios(modules, functools.partial(gamma_variate_aif, arrival_s=15.0 + delay), rng)
                for delay in DELAYS_S}
    by_dispersion = {beta: _simulated_ratios(modules, _dispersed_aif(beta), rng) for beta in DISPERSIONS_S}

    def rows_for(results: dict, label) -> list[str]:
        rows = []
        for key, ratios in results.items():
            cells = [f"{before:.2f} → **{after_:.2f}**"
                     for before, after_ in zip(ratios[("before", "linear")], ratios[("after", "linear")])]
            rows.append(f"| {label(key)} | " + " | ".join(cells) + " |")
        return rows

    delay_rows = rows_for(by_delay, lambda delay: f"{delay:+.3f} s ({delay / TR_S:+.2f} frame)")
    spread = {variant: np.ptp([by_delay[d][variant] for d in DELAYS_S], axis=0)
              for variant in (("before", "linear"), ("after", "linear"))}
    delay_rows.append("| spread over the delays (max − min) | " + " | ".join(
        f"{before:.2f} → **{after_:.2f}**" for before, after_ in zip(spread[("before", "linear")],
                                                                     spread[("after", "linear")])) + " |")
    dispersion_rows = rows_for(by_dispersion, lambda beta: f"β = {beta:g} s")
    return delay_rows, dispersion_rows, {"delay": by_delay, "dispersion": by_dispersion}


# --- 4. The phantom ---------------------------------------------------------------------------------------


def _phantom_cbf(module, case) -> np.ndarray:
    """CBF map of ``compute_perfusion`` (leakage off, automatic AIF) with ``module``'s perfusion_maps.

    The pipeline imports perfusion_maps from the deconvolution module when it runs, so patching that name
    runs the exact user path with the "before" deconvolution.
    """
    truth = {name: volume.array for name, volume in case.truth.items()}
    options = PerfusionOptions(te_s=case.config.te_s, leakage="none", deconvolution=True)
    with mock.patch.object(after, "perfusion_maps", module.perfusion_maps):
        result = compute_perfusion(case.dsc.array, case.frame_times_s, options, brain_mask=truth["brain_dsc"] > 0,
                                   nawm_mask=truth["nawm"] > 0)
    return result.cbf


def phantom_table(modules: dict) -> tuple[list[str], dict]:
    """Median CBF/truth per region, normalised to the early (contralateral) NAWM: 1.00 = right relative CBF."""
    late = generate_case(PhantomConfig(size="small", arrival_delay_s=max(PHANTOM_DELAYS_S))).truth
    late_side = late["arrival_delay"].array > 0  # the same anatomy for every delay (one seed)
    rows, late_over_early = [], {"before": [], "after": []}
    for delay in PHANTOM_DELAYS_S:
        case = generate_case(PhantomConfig(size="small", arrival_delay_s=delay))
        truth = {name: volume.array for name, volume in case.truth.items()}
        usable = (truth["brain_dsc"] > 0) & (truth["k2"] == 0) & (truth["cbf"] > 10)  # no leaking tumour
        cells = {}
        for name in ("before", "after"):
            ratio = np.where(usable, _phantom_cbf(modules[name], case) / np.where(usable, truth["cbf"], 1.0), np.nan)
            ratio /= np.nanmedian(ratio[(truth["nawm"] > 0) & ~late_side])
            cells[name] = [np.nanmedian(ratio[usable & side & (truth["cbf"] >= low) & (truth["cbf"] <= high)])
                           for side in (~late_side, late_side) for low, high in PHANTOM_CLASSES.values()]
            classes = len(PHANTOM_CLASSES)
            late_over_early[name] += list(np.divide(cells[name][classes:], cells[name][:classes]))
        rows.append(f"| {delay:g} s | " + " | ".join(f"{b:.2f} → **{a:.2f}**"
                                                   for b, a in zip(cells["before"], cells["after"])) + " |")
    return rows, late_over_early


# --- the document -------------------------------------------------------------------------------------------


def _range(values) -> str:
    return f"{np.min(values):+.0f} to {np.max(values):+.0f} %"


def findings(errors: dict, simulated: dict, phantom: dict) -> list[str]:
    """What the tables show, in numbers taken from them."""
    def within(variant):
        return int(np.sum(np.abs(errors[variant]) <= 10.0))

    delays, dispersions = simulated["delay"], simulated["dispersion"]
    before_delay = [delays[d][("before", "linear")] for d in DELAYS_S]
    after_delay = [delays[d][("after", "linear")] for d in DELAYS_S]
    lines = [
        "## What the tables show",
        "",
        f"* **OSIPI, the issue's 14 (no delay, no dispersion among them):** with the `linear` default, "
        f"{within(('before', 'linear'))}/14 within 10 % before, {within(('after', 'linear'))}/14 after "
        f"(median \|error\| {np.median(np.abs(errors[('before', 'linear')])):.1f} → "
        f"{np.median(np.abs(errors[('after', 'linear')])):.1f} %); with the generator's own `rectangular` rule "
        f"{within(('after', 'rectangular'))}/14 (median {np.median(np.abs(errors[('after', 'rectangular')])):.1f} %, "
        f"range {_range(errors[('after', 'rectangular')])}). **CBF within 10 % on all 14 is not reached.** "
        "Table 2 says why: at these cases' noise one oSVD estimate scatters by 4–14 % (SD), and the oscillation "
        "rule then truncates more than without noise, so the median error falls to −10…−17 % at the highest "
        "flows (`rectangular`; the residue's jump at t = 0 is rounded, more the shorter the MTT). The chance "
        "that all 14 land within 10 % (the product of the shares in table 2) is below 1 % for every rule "
        "here; the worst case (CBV 2, CBF 5: peak 0.019 mM against noise SD 0.0017 mM) is noise.",
        f"* **Sub-frame delays (table 3):** CBF/truth over delays of −1/2 to +2 frames ranged "
        f"{np.min(before_delay):.2f}–{np.max(before_delay):.2f} before and {np.min(after_delay):.2f}–"
        f"{np.max(after_delay):.2f} after; per tissue the spread fell from "
        f"{np.min(np.ptp(before_delay, axis=0)):.2f}–{np.max(np.ptp(before_delay, axis=0)):.2f} to "
        f"{np.min(np.ptp(after_delay, axis=0)):.2f}–{np.max(np.ptp(after_delay, axis=0)):.2f}. The price: "
        f"without delay the level is {np.min(delays[0.0][('after', 'linear')]):.2f}–"
        f"{np.max(delays[0.0][('after', 'linear')]):.2f} of truth instead of "
        f"{np.min(delays[0.0][('before', 'linear')]):.2f}–{np.max(delays[0.0][('before', 'linear')]):.2f}, "
        "about the same for every delay, which a relative map does not see.",
        "* **Dispersion (table 4) still biases CBF low:** "
        + "; ".join(f"β = {beta:g} s: {_range(100 * (dispersions[beta][('after', 'linear')] - 1))}"
                    for beta in DISPERSIONS_S)
        + ". It is about the same before and after: the dispersion kernel is part of the residue that any "
        "deconvolution with the measured AIF returns. A local AIF or a model of the dispersion would be needed.",
        f"* **The phantom (table 5):** late over early hemisphere, same tissue class, {np.min(phantom['before']):.2f}–"
        f"{np.max(phantom['before']):.2f} before and {np.min(phantom['after']):.2f}–{np.max(phantom['after']):.2f} "
        "after. At 3 s the automatic AIF itself changes (early grey matter moves in both columns), which is not "
        "the deconvolution's doing.",
        "",
    ]
    return lines


def document(osipi_rows: list[str], floor_rows: list[str], delay_rows: list[str], dispersion_rows: list[str],
             phantom_rows: list[str], summary: list[str]) -> str:
    tissue_header = " | ".join(f"{name} ({cbv:g}, {cbf:g})" for name, (cbv, cbf) in TISSUES.items())
    tissue_rule = "|---" * (len(TISSUES) + 1) + "|"
    return "\n".join([
        "# CBF by oSVD: validation (issue 13 item 2)",
        "",
        f"Generated by `benchmarks/validate_cbf.py` on {date.today().isoformat()}; re-run it to re-measure. "
        f"\"Before\" is `deconvolution.py` at commit `{BEFORE_COMMIT}`, \"after\" the current one. Known AIF "
        "throughout, oSVD defaults (oscillation-index limit 0.095, thresholds 1 %–95 %).",
        "",
        "What changed: the block-circulant matrix is now exactly circulant for both discretisations (the "
        "`linear` one no longer gives lag 0 a one-sided weight), so its truncated SVD is a filter that does not "
        "depend on where between two frames the residue starts; and CBF is read as the maximum of the "
        "truncated residue's exact between-frame interpolant (it is a trigonometric polynomial), not of its "
        "samples. Together they make the estimate insensitive to sub-frame arrival delays (table 3). See the "
        "module docstring of `DSCPerfusionLib/deconvolution.py`.",
        "",
        *summary,
        "## 1. OSIPI concentration cases (CBF error, %)",
        "",
        "All 14 have no delay and no dispersion (`cases.json`: `delay_s` 0, `dispersion` null); exponential "
        "residue, SNR 200, TR 1.243 s. Their generator convolves with the rectangle rule, so `rectangular` "
        "is the discretisation that matches their signal model; `linear` (piecewise-linear AIF and residue) "
        "matches a continuous-time tissue curve, which is what real data and the project's simulator are.",
        "",
        "| CBV | CBF | before, linear | before, rectangular | after, linear | after, rectangular |",
        "|---|---|---|---|---|---|",
        *osipi_rows,
        "",
        "## 2. What the OSIPI noise allows (CBF error, %)",
        "",
        f"The documented generator, noise-free, and with {DRAWS} draws of Gaussian noise of each case's "
        "pre-bolus SD. Cells: noise-free error / median ± SD over the draws / share of draws within 10 %. "
        "Without noise the oscillation rule keeps many components and the peak read between frames slightly "
        "overshoots the residue's jump (`after`: +1…+17 %); with noise it truncates more and rounds the jump "
        "(median error falling with flow). The SD is the scatter one noisy curve carries.",
        "",
        "| CBV | CBF | noise SD (mM) | before, rectangular | after, rectangular | after, linear |",
        "|---|---|---|---|---|---|",
        *floor_rows,
        "",
        f"## 3. Simulated tissues: arrival delay (CBF / truth, median of {VOXELS_PER_TISSUE} voxels, before → after)",
        "",
        f"`DSCPerfusionLib.simulation`, continuous-time exponential residue, TR {TR_S} s, 60 frames, Gaussian "
        f"noise {100 * SIMULATED_NOISE:g} % of the largest tissue value, `linear` discretisation. Tissues as "
        "(CBV ml/100 ml, CBF ml/100 ml/min). The tissue's AIF arrives `delay` after the measured one.",
        "",
        f"| delay | {tissue_header} |",
        tissue_rule,
        *delay_rows,
        "",
        "## 4. Simulated tissues: dispersion (CBF / truth, before → after)",
        "",
        "The tissue is fed the measured AIF convolved with exp(−t/β)/β (no delay). No deconvolution with the "
        "measured AIF can undo this: the dispersion kernel is folded into the residue it returns, whose peak "
        "is lower and later. This bias remains.",
        "",
        f"| dispersion | {tissue_header} |",
        tissue_rule,
        *dispersion_rows,
        "",
        "## 5. The phantom: relative CBF with a late hemisphere (before → after)",
        "",
        "`GliomaProgressionLib.phantom` (small, seed 0): the tumour's hemisphere receives the bolus "
        "`arrival_delay_s` late. `compute_perfusion` as a user runs it: signal with Rician noise (white-matter "
        "SNR 40), automatic AIF, leakage correction off, the leaking tumour left out. Cells: median of "
        "CBF/true CBF over the voxels of a region, divided by the same in the early (contralateral) "
        "normal-appearing white matter; 1.00 = the relative CBF is right.",
        "",
        "| delay | early " + " | early ".join(PHANTOM_CLASSES) + " | late " + " | late ".join(PHANTOM_CLASSES) + " |",
        "|---" * (1 + 2 * len(PHANTOM_CLASSES)) + "|",
        *phantom_rows,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dsc-cbf-validation.md")
    args = parser.parse_args()
    modules = {"before": _before_module(), "after": after}
    osipi_rows, errors = osipi_table(modules)
    floor_rows = noise_floor_table(modules)
    delay_rows, dispersion_rows, simulated = simulated_tables(modules)
    phantom_rows, late_over_early = phantom_table(modules)
    text = document(osipi_rows, floor_rows, delay_rows, dispersion_rows, phantom_rows,
                    findings(errors, simulated, late_over_early))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
