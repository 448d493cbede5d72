"""SVD deconvolution of DSC curves: CBF, MTT, TTP and Tmax maps (pure numpy, vectorised over voxels).

Model (indicator dilution): C(t) = integral_0^t Ca(tau) * f*R(t - tau) dtau, where C is the tissue curve, Ca
the arterial input function (AIF), f the flow (1/s, i.e. ml blood per ml tissue per s) and R the residue
function (R(0) = 1, non-increasing). Deconvolution recovers the flow-scaled residue k(t) = f*R(t) in 1/s;
f = max k. Curves are concentrations or deltaR2* (1/s); time is the first axis and in seconds.

Two estimators here, both truncated-SVD pseudo-inverses of a discretised convolution matrix (a third,
``perfusion_maps(method="gamma-fit")``, fits a model residue instead: ``residue_fit``):

* ``ssvd_residues``: standard SVD (Ostergaard et al. 1996): lower-triangular T x T matrix, singular values
  below ``threshold`` x the largest are dropped (default 0.2, i.e. 20 %).
* ``osvd_residues``: block-circulant SVD with an oscillation-index stopping rule (Wu et al. 2003, MRM 50:164).
  The curves are zero-padded to L = 2T so the circular convolution equals the linear one, which makes the
  estimate far less sensitive than sSVD to the tracer reaching tissue later (or earlier) than the AIF
  (simulator, grey matter 1.5 s behind the AIF: oSVD CBF 0.90 of truth, as without delay; sSVD 0.53). For
  each voxel the truncation threshold is the SMALLEST one in ``thresholds`` (least regularisation) whose
  residue has an oscillation index OI = (1/L) (1/max k) sum_{j=2}^{L-1} |k_j - 2 k_{j-1} + k_{j-2}| below
  ``oi_limit``, exactly Wu's "raise the threshold until OI falls below the limit"; a voxel that never gets
  there keeps the largest threshold. Vectorised: the singular components are added to all voxels at once,
  largest threshold first, and the OI of every voxel is checked after each step. The matrix is circulant,
  so its SVD is read off the FFT of its first column (``_circulant_svd``) instead of a dense SVD.

Sub-frame delays (oSVD). The circulant matrix's singular vectors are sines and cosines and its singular
values |FFT(AIF)| do not depend on time shifts, so truncation keeps the same frequencies whatever the delay:
the truncated residue is a trigonometric polynomial that shifts with the tissue curve, by whole frames or
not. Its SAMPLES do not: a delay of half a frame puts the peak between two samples and the largest sample
was up to 20 % low (grey matter 0.77 of truth at 0.75 s, 1.00 at 0 s, TR 1.5 s). CBF and Tmax are therefore
read from the polynomial itself, at 1/8-frame steps around the largest sample (``residue_peak``): over
delays from -1/2 to +2 frames CBF now varies by ~1 % of truth (noise-free; 2-4 % with noise), Tmax follows
the delay to 1/8 frame. Upsampling the curves before the SVD was the alternative; it costs the square of the
upsampling factor per voxel and adds nothing the polynomial does not already define. This needs the matrix
to be EXACTLY circulant (both discretisations below are).

Discretisation (``discretisation``):

* ``"linear"`` (default): AIF and residue piecewise linear between frames, so the convolution integral is
  exact for them (Sourbron et al. 2007 weights (a_{k-1} + 4 a_k + a_{k+1}) dt / 6). This matches a
  continuous-time tissue curve (real data, ``DSCPerfusionLib.simulation``). For sSVD the residue is causal
  and starts at lag 0, so that sample's triangle lies on one side only: weight (a_{n-1} + 2 a_n) dt / 6. For
  oSVD the residue lives on the 2T-frame circle and is piecewise linear all round it (the same weights in
  every column, so the matrix stays circulant): its jump at the arrival is spread over one frame wherever
  the arrival falls. That and the truncation put CBF at 0.87-0.95 of truth for any delay in the simulator
  (grey matter 0.87, tumour 0.95, with noise), where the one-sided lag-0 column gave 1.00 without delay but
  0.77 at half a frame: a uniform scale matters less to relative CBF than a delay-dependent one.
* ``"rectangular"``: weights a_k dt (Ostergaard 1996 / Wu 2003). Exact for curves GENERATED with a
  rectangle-rule convolution (the OSIPI/Chakwizira test data); on continuous curves it misplaces the
  weight of the residue's first half-interval and under-estimates CBF (by ~25 % for grey matter at TR 1.5 s
  in the simulator).

Known limits (docs/dsc-cbf-validation.md, benchmarks/validate_cbf.py): on the 14 OSIPI concentration cases
(no delay, no dispersion, SNR 200) oSVD's CBF errors are -13..+42 % (linear; median |error| 8 %) and -20..+22 %
(rectangular, their generator's rule; median 10 %); their noise alone scatters oSVD's estimate by 4-14 %
(SD) per case, so no choice of rule gets all 14 within 10 %. ``method="gamma-fit"`` (``residue_fit``) does
(-3.6..+6.9 % with the rectangle rule) and finds the delay itself, but only with a known arterial AIF; oSVD's
relative CBF is robust to an automatic AIF that partial volume distorts or that is a tissue curve, so it is
the default and the only method the pipeline uses. Dispersion between the measured AIF and the tissue is
folded into the residue and lowers CBF (simulator, exponential kernel exp(-t/beta)/beta: -19 to -27 % at
beta 1 s, -31 to -43 % at 2 s, -49 to -60 % at 4 s); nothing here corrects it.

What the numbers mean (``PerfusionMaps``): cbf = 6000 x max k, in ml/100 ml/min WHEN tissue and AIF are
concentrations in the same units (or deltaR2* with the same relaxivity kappa for blood and tissue) and no
haematocrit or density correction applies; for ml/100 g/min multiply by k_H = (1 - Hct_large)/(1 - Hct_small)
(~0.73) and divide by the brain density 1.04 g/ml (Ostergaard's k_H/rho ~ 0.705). cbv = 100 x trapz(C)/trapz(Ca)
in ml/100 ml with the same caveat. With an automatic AIF on deltaR2* the arterial amplitude is scaled by
partial volume, so cbf and cbv are RELATIVE (compare or normalise them within a scan); mtt = 60 cbv/cbf (s),
ttp and tmax (s) do not depend on the AIF amplitude and are absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.integrate import trapezoid

from .aif import AIFSelection, roughness, select_aif
from .residue_fit import fit_gamma_residues
from .signal import (
    Discretisation,
    validate_discretisation,
    validate_frame_interval,
    validate_tissue_and_aif,
    validate_times,
)

# How CBF is estimated: block-circulant SVD with the oscillation rule, standard SVD, or a least-squares fit
# of a gamma transit-time residue (``residue_fit``).
Method = Literal["osvd", "ssvd", "gamma-fit"]
METHODS = get_args(Method)
DEFAULT_METHOD = "osvd"

# Thresholds (fractions of the largest singular value) tried by oSVD, smallest first. Wu 2003 and
# dsc-mri-toolbox step 5 % .. 95 % by 5 %; the extra 1-4 % steps let high-SNR voxels with short MTT keep
# enough components to reach their residue peak (on the OSIPI cases the 5 % floor was binding at CBF 70).
DEFAULT_OSVD_THRESHOLDS = (0.01, 0.02, 0.03, 0.04) + tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
# Oscillation-index limit. 0.095 is the clinical value we recall from Wu et al. 2003 (dsc-mri-toolbox uses
# 0.035). Checked here: both pass the 14 OSIPI cases; on continuous simulated curves (TR 1.5 s, SNR 300)
# 0.035 under-estimates grey/white-matter CBF by ~32/18 %, 0.095 by ~2/-2 % (test_dsc_deconvolution.py).
DEFAULT_OI_LIMIT = 0.095
# Ostergaard et al. 1996: 20 % of the largest singular value.
DEFAULT_SSVD_THRESHOLD = 0.2
# ml/100 ml/min per 1/s: x60 s/min, x100 ml -> per 100 ml.
FLOW_SCALE = 6000.0
# Voxels deconvolved together: the oSVD scan makes several passes over (2T x block) arrays per threshold;
# 2048 voxels keep each at ~1-2 MB for T = 60, in cache, and bound the memory for any brain size.
_VOXEL_BLOCK = 2048
# Between-frame resolution of the oSVD residue peak: 1/8 frame; a smooth peak read 1/16 frame off its top
# loses a negligible fraction of its height.
PEAK_STEPS_PER_FRAME = 8
# Relative tolerance on the frame interval for "uniformly sampled".
_UNIFORM_RTOL = 1e-3


@dataclass
class Deconvolution:
    """Result of ``osvd_residues`` / ``ssvd_residues`` for N curves.

    residue: (L, N) flow-scaled residue k(t) = f*R(t) in 1/s (curve units per AIF unit per s), sampled every
    dt_s; L = T for sSVD, 2T for oSVD (lags >= T are the circular wrap: negative delays).
    threshold: (N,) truncation used, fraction of the largest singular value.
    oscillation_index: (N,) OI of the chosen residue (inf where max k <= 0).
    dt_s: frame interval in seconds.
    flow: (N,) peak of the residue, 1/s (x6000 for ml/100 ml/min): for oSVD the maximum of its exact
      between-frame interpolant (``residue_peak``), for sSVD the largest sample.
    peak_lag_s: (N,) lag of that peak (s), between frames for oSVD; negative for tissue ahead of the AIF.
    """

    residue: np.ndarray
    threshold: np.ndarray
    oscillation_index: np.ndarray
    dt_s: float
    flow: np.ndarray
    peak_lag_s: np.ndarray


@dataclass
class PerfusionMaps:
    """Maps from ``perfusion_maps`` (spatial shape of the brain mask; 0 outside it). See the module docstring.

    cbf: 6000 x max residue (ml/100 ml/min for concentration curves, relative otherwise).
    cbv: 100 x trapz(tissue)/trapz(AIF) (ml/100 ml, same caveat).
    mtt_s: cbv/cbf x 60 for the SVD methods, the fitted residue's mean transit time for "gamma-fit"
      (seconds; 0 where cbf <= 0).
    ttp_s: time of the tissue curve's maximum, on the ``times_s`` axis (s).
    tmax_s: time of the residue maximum after the AIF (s); oSVD and the fit give negative values for tissue
      that precedes the AIF.
    threshold: truncation used per voxel (fraction of the largest singular value); NaN for "gamma-fit".
    aif: (T,) AIF used. aif_selection: the automatic selection, or None when an AIF was given.
    method: one of METHODS.
    at_search_limit: "gamma-fit" only (None otherwise): voxels whose fit lies on an edge of its search
      (``residue_fit.ResidueFit.at_limit``), bool.
    """

    cbf: np.ndarray
    cbv: np.ndarray
    mtt_s: np.ndarray
    ttp_s: np.ndarray
    tmax_s: np.ndarray
    threshold: np.ndarray
    aif: np.ndarray
    aif_selection: AIFSelection | None
    method: str
    at_search_limit: np.ndarray | None = None


@dataclass
class _Kernel:
    """SVD of a convolution matrix: M = u @ diag(s) @ vt, L x L; the curves have T <= L frames."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    n_frames: int


def uniform_frame_interval(times_s: np.ndarray) -> float:
    """Return the frame interval (s) of uniformly sampled ``times_s``; ValueError if the spacing varies."""
    times = validate_times(times_s)
    steps = np.diff(times)
    dt = float(steps.mean())
    if np.any(np.abs(steps - dt) > _UNIFORM_RTOL * dt):
        raise ValueError("times_s must be uniformly spaced for SVD deconvolution; resample the series first.")
    return dt


def convolution_matrix(aif: np.ndarray, dt_s: float, circulant: bool, discretisation: Discretisation) -> np.ndarray:
    """Matrix M with C = M @ k for a residue k sampled every ``dt_s`` s: T x T, or 2T x 2T when ``circulant``.

    Circulant matrices are exactly circulant for both discretisations (the residue lives on a circle of 2T
    frames), which is what makes their truncated SVD shift-covariant (module docstring, "Sub-frame delays").
    """
    discretisation = validate_discretisation(discretisation)
    a = np.asarray(aif, dtype=np.float64)
    n_frames = a.size
    size = 2 * n_frames if circulant else n_frames
    padded = np.zeros(size + 2)  # a_{-1} = 0 before the series and a_k = 0 after it
    padded[1 : n_frames + 1] = a
    if discretisation == "rectangular":
        column = padded[1:-1].copy()
    else:
        column = (padded[:-2] + 4.0 * padded[1:-1] + padded[2:]) / 6.0
    lags = np.arange(size)[:, None] - np.arange(size)[None, :]
    matrix = column[lags % size] if circulant else np.where(lags >= 0, column[np.maximum(lags, 0)], 0.0)
    if discretisation == "linear" and not circulant:
        # A causal residue starts at lag 0, so its first sample only has its interval on one side:
        # weight (a_{n-1} + 2 a_n)/6, none at n = 0.
        matrix[:, 0] = (padded[:-2] + 2.0 * padded[1:-1]) / 6.0
        matrix[0, 0] = 0.0
    return matrix * dt_s


def _kernel(aif: np.ndarray, dt_s: float, circulant: bool, discretisation: Discretisation) -> _Kernel:
    """SVD of the convolution matrix of ``aif``."""
    matrix = convolution_matrix(aif, dt_s, circulant, discretisation)
    if circulant:
        return _circulant_svd(matrix[:, 0], np.asarray(aif).size)
    u, s, vt = np.linalg.svd(matrix)
    return _Kernel(u, s, vt, np.asarray(aif).size)


def _circulant_svd(column: np.ndarray, n_frames: int) -> _Kernel:
    """Real SVD of the circulant matrix with first column ``column``, from its spectrum (no LAPACK SVD).

    With A_m = |A_m| e^{i phi_m} = FFT(column)_m, the matrix maps cos(w n) to |A_m| cos(w n + phi_m) and
    sin(w n) to |A_m| sin(w n + phi_m) (w = 2 pi m / L): each frequency gives one (0 and L/2) or two
    singular triplets: O(L^2) work instead of a dense O(L^3) SVD, equal to it up to rounding.
    """
    length = column.size
    spectrum = np.fft.fft(column)[: length // 2 + 1]
    n = np.arange(length)
    right, left, values = [], [], []
    for m, coefficient in enumerate(spectrum):
        angle = 2.0 * np.pi * m * n / length
        if m == 0 or 2 * m == length:  # real frequencies: one triplet, the sign goes into the left vector
            right.append(np.cos(angle) / np.sqrt(length))
            left.append(np.sign(coefficient.real or 1.0) * right[-1])
            values.append(abs(coefficient.real))
            continue
        phase, scale = np.angle(coefficient), np.sqrt(2.0 / length)
        right += [scale * np.cos(angle), scale * np.sin(angle)]
        left += [scale * np.cos(angle + phase), scale * np.sin(angle + phase)]
        values += [abs(coefficient)] * 2
    order = np.argsort(values, kind="stable")[::-1]
    return _Kernel(np.array(left).T[:, order], np.array(values)[order], np.array(right)[order], n_frames)


def _coefficients(kernel: _Kernel, curves: np.ndarray) -> np.ndarray:
    """Spectral coefficients (u^T c)/s of the zero-padded curves, (L, N); components with s = 0 get 0."""
    projected = kernel.u[: kernel.n_frames].T @ curves
    safe = np.where(kernel.s > 0, kernel.s, np.inf)
    return projected / safe[:, None]


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """Wu 2003 oscillation index of residues (L, N): sum |second difference| / (L x max), unitless.

    inf where the maximum is <= 0 (no usable residue). The same measure ranks noisy curves in ``aif``.
    """
    return roughness(residue)


def residue_peak(residue: np.ndarray, steps_per_frame: int = PEAK_STEPS_PER_FRAME) -> tuple[np.ndarray, np.ndarray]:
    """Maximum (N,) and its lag in frames (N,) of circulant residues (L, N) between frames.

    A truncated block-circulant solution is a trigonometric polynomial over the L-frame circle (its kept
    singular vectors are sines and cosines), so its values between frames are exactly its Fourier
    interpolant. It is evaluated every 1/``steps_per_frame`` frame within one frame of the largest sample.
    Lags >= L/2 are returned negative (tissue ahead of the AIF).
    """
    length = residue.shape[0]
    sampled_peak = np.argmax(residue, axis=0)
    # Rotate each residue so that its largest sample is at lag 0: the offsets are then the same for all.
    rotated = np.take_along_axis(residue, (np.arange(length)[:, None] + sampled_peak[None, :]) % length, axis=0)
    spectrum = np.fft.rfft(rotated, axis=0)
    omega = 2.0 * np.pi * np.arange(spectrum.shape[0]) / length  # radians per frame
    weight = np.full(spectrum.shape[0], 2.0 / length)  # a positive frequency stands for itself and its conjugate
    weight[0] = 1.0 / length
    if length % 2 == 0:
        weight[-1] = 1.0 / length  # the Nyquist term is its own conjugate
    offsets = np.arange(-steps_per_frame, steps_per_frame + 1) / steps_per_frame
    phase = np.outer(offsets, omega)
    values = (np.cos(phase) * weight) @ spectrum.real - (np.sin(phase) * weight) @ spectrum.imag  # (offsets, N)
    best = np.argmax(values, axis=0)
    lag = sampled_peak + offsets[best]
    lag = np.where(lag >= length / 2.0, lag - length, lag)
    return values[best, np.arange(values.shape[1])], lag


def _validated_thresholds(thresholds: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Sorted unique thresholds in (0, 1]; ValueError otherwise."""
    values = np.unique(np.asarray(thresholds, dtype=np.float64).ravel())
    if values.size == 0 or not np.all(np.isfinite(values)) or values[0] <= 0 or values[-1] > 1:
        raise ValueError("thresholds must be a non-empty list of fractions of the largest singular value in (0, 1].")
    return values


def _ssvd_block(kernel: _Kernel, curves: np.ndarray, level: float, dt_s: float) -> Deconvolution:
    """sSVD of validated curves (T, N) with a kernel already decomposed."""
    keep = kernel.s >= level * kernel.s[0]
    residue = kernel.vt[keep].T @ _coefficients(kernel, curves)[keep]
    lag = np.argmax(residue, axis=0)
    return Deconvolution(residue, np.full(curves.shape[1], level), oscillation_index(residue), dt_s,
                         residue.max(axis=0), lag * dt_s)


def ssvd_residues(
    tissue: np.ndarray,
    aif: np.ndarray,
    dt_s: float,
    threshold: float = DEFAULT_SSVD_THRESHOLD,
    discretisation: Discretisation = "linear",
) -> Deconvolution:
    """Standard truncated-SVD residues (T, N) of tissue curves (T, N) against ``aif`` (T,), frame interval dt_s (s).

    Singular values below ``threshold`` (fraction of the largest, in (0, 1]) are dropped for every voxel.
    """
    curves, arterial = validate_tissue_and_aif(tissue, aif)
    level = _validated_thresholds([threshold])[0]
    dt = validate_frame_interval(dt_s)
    return _ssvd_block(_kernel(arterial, dt, circulant=False, discretisation=discretisation), curves, level, dt)


def _osvd_choice(kernel: _Kernel, coefficients: np.ndarray, levels: np.ndarray, oi_limit: float) -> np.ndarray:
    """Index into ``levels`` chosen per voxel (smallest threshold with OI < limit, else the largest)."""
    largest_first = levels[::-1]
    counts = np.searchsorted(-kernel.s, -largest_first * kernel.s[0], side="right")  # components kept
    basis = kernel.vt.T
    length = basis.shape[0]
    # The second difference is linear in the residue, so one matmul per step updates both (rows 0..L-1:
    # residue, rows L..: second difference). float32 halves the memory traffic of this scan; it only
    # decides the threshold, the residue itself is recomputed in float64.
    stacked_basis = np.vstack([basis, basis[2:] - 2.0 * basis[1:-1] + basis[:-2]]).astype(np.float32)
    scan_coefficients = coefficients.astype(np.float32)
    state = np.zeros((stacked_basis.shape[0], coefficients.shape[1]), dtype=np.float32)
    chosen = np.full(coefficients.shape[1], levels.size - 1)
    acceptable = np.zeros(coefficients.shape[1], dtype=bool)
    used = 0
    for step, count in enumerate(counts):
        if count > used:  # thresholds that keep the same components share the previous verdict
            state += stacked_basis[:, used:count] @ scan_coefficients[used:count]
            used = count
            peak = state[:length].max(axis=0)
            total = np.abs(state[length:]).sum(axis=0) / length
            acceptable = (peak > 0) & (total < oi_limit * peak)
        # Going from the largest threshold down, the last acceptable one seen is the smallest acceptable.
        chosen[acceptable] = levels.size - 1 - step
    return chosen


def _osvd_block(kernel: _Kernel, curves: np.ndarray, levels: np.ndarray, oi_limit: float, dt_s: float) -> Deconvolution:
    """oSVD of validated curves (T, N) with a block-circulant kernel already decomposed."""
    coefficients = _coefficients(kernel, curves)
    level_per_voxel = levels[_osvd_choice(kernel, coefficients, levels, oi_limit)]
    keep = kernel.s[:, None] >= level_per_voxel[None, :] * kernel.s[0]
    residue = kernel.vt.T @ (coefficients * keep)
    peak, lag = residue_peak(residue)
    return Deconvolution(residue, level_per_voxel, oscillation_index(residue), dt_s, peak, lag * dt_s)


def _validated_oi_limit(oi_limit: float) -> float:
    """Oscillation-index limit as a positive finite float."""
    if not (np.isfinite(oi_limit) and oi_limit > 0):
        raise ValueError(f"oi_limit must be a positive oscillation index, got {oi_limit}.")
    return float(oi_limit)


def osvd_residues(
    tissue: np.ndarray,
    aif: np.ndarray,
    dt_s: float,
    oi_limit: float = DEFAULT_OI_LIMIT,
    thresholds: tuple[float, ...] | np.ndarray = DEFAULT_OSVD_THRESHOLDS,
    discretisation: Discretisation = "linear",
) -> Deconvolution:
    """Block-circulant oSVD residues (2T, N) of tissue curves (T, N) against ``aif`` (T,), frame interval dt_s (s).

    Per voxel, the smallest of ``thresholds`` whose residue has an oscillation index below ``oi_limit``
    (module docstring). Lags T..2T-1 of the residue are the circular wrap (tissue ahead of the AIF).
    """
    curves, arterial = validate_tissue_and_aif(tissue, aif)
    limit = _validated_oi_limit(oi_limit)
    levels = _validated_thresholds(thresholds)
    dt = validate_frame_interval(dt_s)
    kernel = _kernel(arterial, dt, circulant=True, discretisation=discretisation)
    return _osvd_block(kernel, curves, levels, limit, dt)


def _resolve_aif(
    aif: np.ndarray | AIFSelection | None, delta_r2s: np.ndarray, times_s: np.ndarray, brain_mask: np.ndarray
) -> tuple[np.ndarray, AIFSelection | None]:
    """The AIF curve (T,) to use and the automatic selection behind it (None when given)."""
    if aif is None:
        selection = select_aif(delta_r2s, times_s, brain_mask)
        return selection.curve, selection
    if isinstance(aif, AIFSelection):
        return np.asarray(aif.curve, dtype=np.float64), aif
    return np.asarray(aif, dtype=np.float64), None


def _validated_mask(brain_mask: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Brain mask as bool of the series' spatial shape, with at least one voxel."""
    mask = np.asarray(brain_mask)
    if mask.shape != spatial_shape:
        raise ValueError(f"brain_mask has shape {mask.shape} but the series' spatial shape is {spatial_shape}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("brain_mask is empty.")
    return mask


def _maps_from_residues(
    result: Deconvolution, curves: np.ndarray, aif: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, ...]:
    """cbf, cbv, mtt_s, ttp_s, tmax_s, threshold (each (N,)) from the residues of tissue curves (T, N)."""
    flow = FLOW_SCALE * np.maximum(result.flow, 0.0)
    cbv, ttp = _volume_and_peak_time(curves, aif, times)
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(flow > 0, 60.0 * cbv / np.where(flow > 0, flow, 1.0), 0.0)
    return flow, cbv, mtt, ttp, result.peak_lag_s, result.threshold


def _volume_and_peak_time(curves: np.ndarray, aif: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cbv = 100 x trapz(tissue)/trapz(AIF) and the time of each tissue curve's maximum (each (N,))."""
    cbv = 100.0 * trapezoid(curves, x=times, axis=0) / trapezoid(aif, x=times)
    return cbv, times[np.argmax(curves, axis=0)]


def _fitted_maps(curves: np.ndarray, aif: np.ndarray, times: np.ndarray, dt_s: float,
                 discretisation: Discretisation) -> tuple[np.ndarray, ...]:
    """cbf, cbv, mtt_s, ttp_s, tmax_s, threshold and at_search_limit (each (N,)) of a gamma-residue fit of
    tissue curves (T, N)."""
    fit = fit_gamma_residues(curves, aif, dt_s, discretisation)
    cbv, ttp = _volume_and_peak_time(curves, aif, times)
    return FLOW_SCALE * fit.flow, cbv, fit.mtt_s, ttp, fit.delay_s, np.full(fit.flow.size, np.nan), fit.at_limit


def perfusion_maps(
    delta_r2s: np.ndarray,
    times_s: np.ndarray,
    brain_mask: np.ndarray,
    aif: np.ndarray | AIFSelection | None = None,
    method: Method = DEFAULT_METHOD,
    *,
    oi_limit: float = DEFAULT_OI_LIMIT,
    thresholds: tuple[float, ...] | np.ndarray = DEFAULT_OSVD_THRESHOLDS,
    ssvd_threshold: float = DEFAULT_SSVD_THRESHOLD,
    discretisation: Discretisation = "linear",
) -> PerfusionMaps:
    """CBF, CBV, MTT, TTP and Tmax maps from deltaR2* (or concentration) curves (T, ...) in the brain mask.

    ``times_s``: (T,) uniformly spaced frame times (s). ``aif``: (T,) curve in the units of the tissue curves,
    an ``AIFSelection``, or None for automatic selection (``select_aif``). ``method``: "osvd" (block-circulant,
    oscillation-index rule), "ssvd" (fixed ``ssvd_threshold``) or "gamma-fit" (``residue_fit``). Units and
    meaning: module docstring. Voxels outside ``brain_mask`` are 0 in every map.
    """
    series = np.asarray(delta_r2s)
    if series.ndim < 2:
        raise ValueError(f"delta_r2s must be (T, ...) with at least one spatial axis, got shape {series.shape}.")
    times = validate_times(times_s, series.shape[0])
    dt = uniform_frame_interval(times)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    mask = _validated_mask(brain_mask, series.shape[1:])
    brain = np.asarray(series[:, mask], dtype=np.float64)  # (T, N) brain voxels only
    arterial, selection = _resolve_aif(aif, series, times, mask)
    brain, arterial = validate_tissue_and_aif(brain, arterial)
    if method == "gamma-fit":
        outputs = _fitted_maps(brain, arterial, times, dt, discretisation)
    else:
        outputs = _svd_maps(brain, arterial, times, dt, method, discretisation, oi_limit, thresholds, ssvd_threshold)
    *maps, at_search_limit = [None if values is None else _scattered(values, mask) for values in outputs]
    return PerfusionMaps(*maps, aif=arterial, aif_selection=selection, method=method,
                         at_search_limit=at_search_limit)


def _scattered(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` (N,) of the mask's voxels as a volume of the mask's shape, 0 (False) outside it."""
    volume = np.zeros(mask.shape, dtype=values.dtype)
    volume[mask] = values
    return volume


def _svd_maps(brain: np.ndarray, arterial: np.ndarray, times: np.ndarray, dt: float, method: str,
              discretisation: Discretisation, oi_limit: float, thresholds, ssvd_threshold: float) -> list[np.ndarray]:
    """cbf, cbv, mtt_s, ttp_s, tmax_s, threshold (each (N,)) by oSVD or sSVD, block by block, and None for
    the fit's at_search_limit."""
    circulant = method == "osvd"
    kernel = _kernel(arterial, dt, circulant, discretisation)
    if circulant:
        limit, levels = _validated_oi_limit(oi_limit), _validated_thresholds(thresholds)
        solve = lambda curves: _osvd_block(kernel, curves, levels, limit, dt)  # noqa: E731
    else:
        level = _validated_thresholds([ssvd_threshold])[0]
        solve = lambda curves: _ssvd_block(kernel, curves, level, dt)  # noqa: E731
    outputs = [np.zeros(brain.shape[1]) for _ in range(6)]
    for start in range(0, brain.shape[1], _VOXEL_BLOCK):
        curves = brain[:, start : start + _VOXEL_BLOCK]
        for output, values in zip(outputs, _maps_from_residues(solve(curves), curves, arterial, times)):
            output[start : start + _VOXEL_BLOCK] = values
    return [*outputs, None]
