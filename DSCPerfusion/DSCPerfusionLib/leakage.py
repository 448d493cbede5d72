"""Contrast-leakage correction of deltaR2* curves (DESIGN.md section 4, step 3), vectorised over voxels.

**Boxerman-Schmainda-Weisskoff (BSW, unidirectional)**: every voxel is fitted as

    deltaR2*(t) = K1 * ref(t) - K2 * R(t),   R(t) = integral_0^t ref  (trapezoid, seconds)

by linear least squares over all frames; the 2x2 normal equations are shared by all voxels, so the fit is
one (2, T) x (T, N) matrix product. Corrected curve: deltaR2* + K2 * R(t). K2 is in 1/s; K2 > 0 is
T1-dominant leakage (signal above baseline late in the series), K2 < 0 T2*-dominant.

**Bidirectional (Leu et al., AJNR 2016)**: leaked contrast also flows back, with rate kep (1/s):

    deltaR2*(t) = K1 * ref(t) - K2 * L(t),   L(t) = integral_0^t ref(s) exp(-kep (t - s)) ds.

Since dL/dt = ref - kep L, integrating the model once gives the linear form used here (our derivation of
Leu's linearisation; Y(t) = integral_0^t deltaR2* of the voxel itself):

    deltaR2*(t) = a * ref(t) + b * R(t) + c * Y(t),   K1 = a,  kep = -c,  K2 = -b - c * a,

and the leakage term K2 * L(t) = -b * R(t) - c * Y(t), which is added back to correct the curve. The 3x3
normal equations differ per voxel (Y is the voxel's own integral) and are solved as one batched solve.
Voxels whose fit gives kep < 0, kep > ``MAX_KEP_PER_S`` or a singular system keep the BSW fit (kep = 0).
The upper bound matters: in non-leaking tissue whose transit time differs from the reference's, the free
kep term "explains" the different curve shape (a wider curve looks like a reference convolved with an
exponential) and the correction then removes real blood volume (+-10-20 % on simulated grey and white
matter with kep ~0.2 1/s). Back-flux rates in tumours measured by DCE are below ~1/min (0.017 1/s); the
bound of 0.05 1/s (3/min) keeps every physiological value and rejects those shape fits.

**Lagged BSW ("bsw-lagged"), insensitive to transit time and arrival delay**: BSW has one regressor for the
vascular curve, so wherever a tissue's first pass is narrower, wider, earlier or later than the reference's,
the least-squares K2 takes up the misfit and the "correction" adds or removes real blood volume (measured on
``simulation.transit_time_dro``, TR 1.5 s: -15 % in tissue with MTT 7 s, +10 % with 3.5 s, -18 % to -28 %
in tissue arriving 3 s late, none of it leaking). Here the vascular part is the reference convolved
with a free, short vascular response h_0..h_J (J + 1 frames):

    deltaR2*(t) = sum_j h_j * ref(t - j dt) - K2 * R(t),     dt = median frame interval,

which absorbs delays and transit-time differences of up to J dt, while K2 * R(t), which persists to the end
of the series, still stands for leakage (in the spirit of the residue-domain correction of Bjornerud et al.,
JCBFM 2011;31:2041, and the arrival-time correction of Leigh et al. 2012). J = 0 is BSW. The design is
shared by all voxels, so only two rows of its pseudo-inverse touch the data: K2 and K1 = sum_j h_j (the
area of the vascular response, BSW's K1 when J = 0): one (2, T) x (T, N) product, as for BSW.
J covers ``RESPONSE_WINDOW_S`` seconds (``response_frames``), a time, not a frame count, since what it must
absorb (transit-time and arrival differences) is physiology. Measured on that DRO (TR 1.5 s, 90 s), the
worst error falls from -28 % (BSW) to -6.9 % with a 4.5 s response, -3.9 % at 9 s, -1.3 % at 18 s and
-0.6 % at 24 s (all in the MTT 7 s tissue), while the K2 noise grows as the window eats the late frames that
tell leakage apart (x1.06, x1.12, x1.26, x1.39 BSW's SD). 18 s is the shortest window within 2 % there. At
most a quarter of the frames are lags, which bounds that growth on short series (TR 1 s, 60 s: 15 frames,
worst -2.7 %, K2 SD x1.75).

**Reference curve** (``select_reference_voxels``): the mean deltaR2* of brain voxels that do not leak,
never a voxel's own curve. Two passes: (1) like Boxerman 2006 / dsc-mri-toolbox, keep voxels whose
late deltaR2* (mean of the last ``TAIL_FRAMES`` frames) lies within ``TAIL_NOISE_SDS`` baseline noise SDs
(floored at ``TAIL_NOISE_FLOOR`` of the median peak) of the brain's median late level (T1 leakage pushes
it below, T2* leakage above); (2) fit BSW against that provisional reference and drop voxels whose K2 is
a robust outlier (more than ``K2_OUTLIER_MADS`` scaled MADs from the median K2), which catches leaky
voxels whose tail is too noisy for pass 1.

Shapes: deltaR2* is (T, ...) with time first (typically (T, N) brain voxels); maps have shape ``...``.
Computation is float32 for the (T, N) data, float64 for the small systems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .signal import cumulative_integral, validate_times

LEAKAGE_METHODS = ("bsw", "bsw-lagged", "bidirectional", "none")
# The default, from the evidence in README.md (DSC Perfusion, "Leakage correction and transit time"): on the
# transit-time DRO BSW is off by up to 28 % in tissue that does not leak and bsw-lagged by 1.3 % at most; in a
# brain without leakage bsw-lagged moves nCBV by 1.4 % at most (BSW 25 %); the OSIPI cases pass with both.
DEFAULT_LEAKAGE_METHOD = "bsw-lagged"
# What each method does, in one line each, for the command-line help and the module's tooltip.
LEAKAGE_DESCRIPTIONS = {
    "bsw": "Boxerman-Schmainda-Weisskoff against the mean curve of non-enhancing brain",
    "bsw-lagged": "BSW with that curve convolved with a free vascular response, so that transit time and "
                  "arrival delay are not taken for leakage",
    "bidirectional": "BSW with back-flux (Leu et al. 2016)",
    "none": "no correction",
}
LEAKAGE_HELP = f"leakage correction (default {DEFAULT_LEAKAGE_METHOD}): " + "; ".join(
    f"{method}: {LEAKAGE_DESCRIPTIONS[method]}" for method in LEAKAGE_METHODS)
# Length (s) of the free vascular response of "bsw-lagged" (module docstring: bias against noise).
RESPONSE_WINDOW_S = 18.0
# Largest share of the frames the response may span, so that late frames remain to identify K2.
MAX_RESPONSE_SHARE = 0.25
# Relative singular-value cut of that pseudo-inverse: lags 0.3 s apart are nearly collinear, and their tiny
# singular values would otherwise be inverted into rounding noise.
PINV_RCOND = 1e-10
# Late frames averaged to judge whether a voxel is enhancing (Boxerman 2006 used the last 10 of 120).
TAIL_FRAMES = 10
TAIL_NOISE_SDS = 2.0
# Lower bound of the per-voxel noise SD in that rule, as a fraction of the brain's median peak deltaR2*.
TAIL_NOISE_FLOOR = 0.01
# Robust z-score (in scaled MADs) beyond which a first-pass K2 marks a voxel as leaky.
K2_OUTLIER_MADS = 3.0
# Largest back-flux rate accepted by the bidirectional fit (1/s); see the module docstring.
MAX_KEP_PER_S = 0.05
# A reference curve averaged over fewer voxels than this is too noisy (and too unrepresentative) to use.
MIN_REFERENCE_VOXELS = 1


@dataclass
class LeakageFit:
    """Result of a leakage fit. Maps have the spatial shape of the input; ``corrected`` is (T, ...) or None.

    k1: unitless (for "bsw-lagged" the area of the vascular response). k2: 1/s. kep: 1/s (zeros for BSW).
    b (1/s), c (1/s): coefficients of the leakage term -b R(t) - c Y(t) that ``remove_leakage`` takes off the
    curves (BSW: b = -K2, c = 0; see the module docstring). corrected: leakage-corrected deltaR2* in 1/s.
    response_frames: J, the vascular response's length in frames beyond lag 0 ("bsw-lagged"; 0 otherwise).
    """

    k1: np.ndarray
    k2: np.ndarray
    kep: np.ndarray
    b: np.ndarray
    c: np.ndarray
    corrected: np.ndarray | None = None
    response_frames: int = 0


def _as_time_first(delta_r2s: np.ndarray, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (T, N) float32 view/copy of the curves and validated times."""
    curves = np.asarray(delta_r2s)
    if curves.ndim < 1:
        raise ValueError("delta_r2s must have time as its first axis.")
    times = validate_times(times_s, curves.shape[0])
    flat = curves.reshape(curves.shape[0], -1)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return flat, times


def _validated_reference(reference: np.ndarray, times: np.ndarray) -> np.ndarray:
    values = np.asarray(reference, dtype=np.float64)
    if values.shape != times.shape:
        raise ValueError(f"reference must have shape {times.shape} (one value per frame), got {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("reference contains NaN or infinite values.")
    if not np.any(values != 0):
        raise ValueError("reference is zero at every frame, so it cannot describe the bolus.")
    return values


def frame_products(weights: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """sum_t weights[k, t] * curves[t, n] for (K, T) or (T,) weights and (T, N) curves -> (K, N) or (N,), float64.

    The skinny products of this module and the pipeline go through ``einsum``, not BLAS: they are memory
    bound, and a multi-threaded BLAS spinning its threads on a busy 2-core machine made them several times
    slower (measured), while einsum's single-threaded loop runs at memory speed everywhere.
    """
    return np.einsum("...t,tn->...n", np.asarray(weights, dtype=np.float32), curves).astype(np.float64)


def voxel_products(curves: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_n curves[t, n] * weights[n] for (T, N) curves and (N,) weights -> (T,) float64 (see ``frame_products``)."""
    return np.einsum("tn,n->t", curves, np.asarray(weights, dtype=np.float32)).astype(np.float64)


def reference_curve(delta_r2s: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Mean deltaR2* (T,) in 1/s over the voxels selected by the boolean ``voxels`` (shape ``...``)."""
    flat = np.asarray(delta_r2s).reshape(np.shape(delta_r2s)[0], -1)
    chosen = np.asarray(voxels, dtype=bool).reshape(-1)
    if chosen.size != flat.shape[1]:
        raise ValueError(f"voxels has {chosen.size} entries but delta_r2s has {flat.shape[1]} voxels.")
    count = int(chosen.sum())
    if count < MIN_REFERENCE_VOXELS:
        raise ValueError("No non-enhancing voxel is left to build the leakage reference curve from.")
    # A weighted matrix-vector product avoids copying the chosen columns.
    return voxel_products(flat, chosen / count)


def select_reference_voxels(
    delta_r2s: np.ndarray,
    times_s: np.ndarray,
    baseline: tuple[int, int],
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean map (shape ``...``) of non-leaking voxels whose mean curve is the BSW reference.

    ``delta_r2s``: (T, ...) in 1/s. ``baseline``: (start, end) frames used for the per-voxel noise SD.
    ``candidates``: optional boolean map of voxels allowed at all (e.g. not saturated). Rule: module docstring.
    """
    flat, times = _as_time_first(delta_r2s, times_s)
    start, end = baseline
    if end - start < 2:
        raise ValueError(f"baseline {baseline} must span at least 2 frames to estimate the noise.")
    allowed = np.ones(flat.shape[1], bool) if candidates is None else np.asarray(candidates, bool).reshape(-1)
    if allowed.size != flat.shape[1]:
        raise ValueError(f"candidates has {allowed.size} entries but delta_r2s has {flat.shape[1]} voxels.")
    tail_frames = min(TAIL_FRAMES, max(3, flat.shape[0] // 6))
    tail = flat[-tail_frames:].mean(axis=0)
    if not allowed.any():
        raise ValueError("candidates excludes every voxel, so no reference curve can be built.")
    # A floor on the noise keeps the rule meaningful for noise-free (simulated or denoised) data.
    noise = np.maximum(flat[start:end].std(axis=0), TAIL_NOISE_FLOOR * np.median(flat.max(axis=0)[allowed]))
    typical_tail = np.median(tail[allowed])
    quiet_tail = np.abs(tail - typical_tail) <= TAIL_NOISE_SDS * noise
    chosen = allowed & quiet_tail
    if not chosen.any():  # every voxel leaks by this rule (e.g. a tiny field of view): keep them all
        chosen = allowed.copy()
    provisional = reference_curve(flat, chosen)
    k2 = fit_bsw(flat, times, provisional).k2
    centre = np.median(k2[chosen])
    spread = 1.4826 * np.median(np.abs(k2[chosen] - centre))
    if spread > 0:
        chosen &= np.abs(k2 - centre) <= K2_OUTLIER_MADS * spread
    return chosen.reshape(np.shape(delta_r2s)[1:])


def bsw_design(reference: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """The (T, 2) BSW regressors [ref(t), -integral_0^t ref] (1/s and unitless)."""
    times = validate_times(times_s)
    ref = _validated_reference(reference, times)
    return np.stack([ref, -cumulative_integral(ref, times)], axis=1)


def fit_bsw(delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray) -> LeakageFit:
    """Least-squares BSW fit of every voxel: returns K1 (unitless) and K2 (1/s) maps; kep = 0.

    ``delta_r2s``: (T, ...) in 1/s; ``reference``: (T,) mean curve of non-enhancing brain in 1/s.
    """
    flat, times = _as_time_first(delta_r2s, times_s)
    design = bsw_design(reference, times)
    gram = design.T @ design
    if abs(np.linalg.det(gram)) <= 1e-12 * np.abs(gram).max() ** 2:
        raise ValueError("reference and its time integral are collinear, so K1 and K2 cannot be separated.")
    projections = frame_products(design.T, flat)  # (2, N): the only pass over the data
    k1, k2 = np.linalg.inv(gram) @ projections  # a 2x2 inverse shared by all voxels
    spatial = np.shape(delta_r2s)[1:]
    k1, k2 = k1.reshape(spatial), k2.reshape(spatial)
    return LeakageFit(k1, k2, np.zeros(spatial), -k2, np.zeros(spatial))


def response_frames(times_s: np.ndarray) -> int:
    """J: the frames the "bsw-lagged" vascular response spans beyond lag 0 (``RESPONSE_WINDOW_S`` at the
    median frame interval, at most ``MAX_RESPONSE_SHARE`` of the frames)."""
    times = validate_times(times_s)
    wanted = int(round(RESPONSE_WINDOW_S / float(np.median(np.diff(times)))))
    return max(0, min(wanted, int(MAX_RESPONSE_SHARE * times.size)))


def lagged_design(reference: np.ndarray, times_s: np.ndarray, frames: int) -> np.ndarray:
    """The (T, frames + 2) regressors [ref(t), ref(t - dt), ..., ref(t - frames dt), -integral_0^t ref].

    dt is the median frame interval; the reference is 0 before the first frame (it is a baseline-subtracted
    curve) and linear between frames, so for a regular series each lag is the curve shifted by whole frames.
    """
    times = validate_times(times_s)
    ref = _validated_reference(reference, times)
    step = float(np.median(np.diff(times)))
    lagged = [np.interp(times - lag * step, times, ref, left=0.0) for lag in range(frames + 1)]
    return np.column_stack(lagged + [-cumulative_integral(ref, times)])


def fit_bsw_lagged(delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray,
                   frames: int | None = None) -> LeakageFit:
    """Lagged-BSW fit of every voxel (module docstring): K2 (1/s) and K1 = area of the vascular response.

    ``frames``: J, the response's length beyond lag 0 (default ``response_frames(times_s)``; 0 is BSW).
    """
    flat, times = _as_time_first(delta_r2s, times_s)
    lags = response_frames(times) if frames is None else int(frames)
    if lags < 0:
        raise ValueError(f"the vascular response needs 0 or more lag frames, got {lags}.")
    design = lagged_design(reference, times, lags)
    # Near-identical lags (short frame intervals) are harmless; only R(t) inside their span hides K2.
    if np.linalg.matrix_rank(design) <= np.linalg.matrix_rank(design[:, :-1]):
        raise ValueError("the lagged references and their time integral are collinear, so K2 cannot be separated.")
    pseudo_inverse = np.linalg.pinv(design, rcond=PINV_RCOND)
    # Only the response's area and K2 are wanted: two rows of the pseudo-inverse, one pass over the data.
    rows = np.stack([pseudo_inverse[:-1].sum(axis=0), pseudo_inverse[-1]])
    k1, k2 = frame_products(rows, flat)
    spatial = np.shape(delta_r2s)[1:]
    k1, k2 = k1.reshape(spatial), k2.reshape(spatial)
    return LeakageFit(k1, k2, np.zeros(spatial), -k2, np.zeros(spatial), response_frames=lags)


def correct_bsw(delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """Leakage-corrected curves deltaR2* + K2 * integral_0^t ref (T, ...) float32, in 1/s (a new array)."""
    voxels = int(np.prod(np.shape(delta_r2s)[1:]))
    leak = np.asarray(k2, dtype=np.float64)
    if leak.size != voxels:
        raise ValueError(f"k2 has {leak.size} entries but delta_r2s has {voxels} voxels.")
    return remove_leakage(delta_r2s, times_s, reference, -leak, np.zeros(leak.shape))


def voxel_integral(flat: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Cumulative trapezoid integral over time of (T, N) float32 curves, 0 at the first frame (float32)."""
    integral = np.empty_like(flat)
    integral[0] = 0.0
    half_steps = (np.diff(times) / 2.0).astype(np.float32)
    for t in range(1, flat.shape[0]):
        np.add(flat[t - 1], flat[t], out=integral[t])
        integral[t] *= half_steps[t - 1]
        integral[t] += integral[t - 1]
    return integral


def fit_bidirectional(
    delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray, own_integral: np.ndarray | None = None
) -> LeakageFit:
    """Bidirectional (Leu 2016) fit of every voxel; see the module docstring for the linear model.

    Returns K1, K2 (1/s), kep (1/s) maps and b, c: the raw coefficients of R(t) and of the voxel's own
    integral Y(t), needed to correct curves or integrals. ``own_integral`` (T, N) float32 may be passed if
    already computed (``voxel_integral``).
    """
    flat, times = _as_time_first(delta_r2s, times_s)
    bsw = fit_bsw(flat, times, reference)
    design = bsw_design(reference, times)  # columns ref, -R
    own = voxel_integral(flat, times) if own_integral is None else own_integral
    gram = np.empty((flat.shape[1], 3, 3))
    gram[:, :2, :2] = design.T @ design
    cross = frame_products(design.T, own)  # (2, N): <ref, Y>, <-R, Y>
    gram[:, 0, 2] = gram[:, 2, 0] = cross[0]
    gram[:, 1, 2] = gram[:, 2, 1] = cross[1]
    gram[:, 2, 2] = _columnwise_dot(own, own)
    rhs = np.empty((flat.shape[1], 3))
    rhs[:, :2] = frame_products(design.T, flat).T
    rhs[:, 2] = _columnwise_dot(own, flat)
    coefficients, solved = _batched_solve(gram, rhs)
    a, minus_b, c = coefficients.T  # second regressor is -R, so its coefficient is -b
    kep = -c
    physical = solved & (kep >= 0) & (kep <= MAX_KEP_PER_S)
    k1 = np.where(physical, a, bsw.k1.reshape(-1))
    b = np.where(physical, -minus_b, -bsw.k2.reshape(-1))
    c = np.where(physical, c, 0.0)
    k2 = -b - c * k1
    spatial = np.shape(delta_r2s)[1:]
    return LeakageFit(k1.reshape(spatial), k2.reshape(spatial), np.where(physical, kep, 0.0).reshape(spatial),
                      b.reshape(spatial), c.reshape(spatial))


def _columnwise_dot(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-column dot product of two (T, N) arrays, accumulated frame by frame in float64."""
    total = np.zeros(first.shape[1])
    for t in range(first.shape[0]):
        total += first[t] * second[t]
    return total


def _batched_solve(gram: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve N 3x3 systems; rows that are singular or badly conditioned are flagged False (and set to 0)."""
    scale = np.sqrt(np.einsum("nii->ni", gram))
    scale[scale == 0] = 1.0
    # Scaling to unit diagonal makes the conditioning test independent of the regressors' units.
    scaled = gram / scale[:, :, None] / scale[:, None, :]
    determinant = np.linalg.det(scaled)
    solved = np.isfinite(determinant) & (np.abs(determinant) > 1e-8)
    safe = np.where(solved[:, None, None], scaled, np.eye(3))
    coefficients = np.linalg.solve(safe, (rhs / scale)[..., None])[..., 0] / scale
    coefficients[~solved] = 0.0
    return coefficients, solved


def fit_leakage(
    delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray, method: str = DEFAULT_LEAKAGE_METHOD,
    own_integral: np.ndarray | None = None,
) -> LeakageFit:
    """Leakage fit of every voxel with a ``method`` of ``LEAKAGE_METHODS`` ("none": K1 = 1, K2 = kep = b = c = 0).

    ``own_integral``: the curves' ``voxel_integral``, if already computed (used by "bidirectional" only).
    """
    if method not in LEAKAGE_METHODS:
        raise ValueError(f"leakage method must be one of {', '.join(LEAKAGE_METHODS)}, got {method!r}.")
    flat, times = _as_time_first(delta_r2s, times_s)
    spatial = np.shape(delta_r2s)[1:]
    if method == "none":
        return LeakageFit(np.ones(spatial), np.zeros(spatial), np.zeros(spatial), np.zeros(spatial),
                          np.zeros(spatial))
    if method == "bsw":
        fit = fit_bsw(flat, times, reference)
    elif method == "bsw-lagged":
        fit = fit_bsw_lagged(flat, times, reference)
    else:
        fit = fit_bidirectional(flat, times, reference, own_integral)
    for name in ("k1", "k2", "kep", "b", "c"):
        setattr(fit, name, getattr(fit, name).reshape(spatial))
    return fit


def remove_leakage(
    delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray, b: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Curves with the leakage term removed: deltaR2* - b R(t) - c Y(t) (the module docstring's notation).

    Returns a new (T, ...) float32 array in 1/s; b and c as in ``LeakageFit``. Y (the voxel's own integral)
    is only computed when some c is non-zero (never for BSW), since it costs a copy of the curves.
    """
    flat, times = _as_time_first(delta_r2s, times_s)
    integral = cumulative_integral(_validated_reference(reference, times), times)
    b32, c32 = np.asarray(b, np.float32).reshape(-1), np.asarray(c, np.float32).reshape(-1)
    own = voxel_integral(flat, times) if np.any(c32) else None
    corrected = flat.copy() if np.may_share_memory(flat, delta_r2s) else flat
    for t in range(times.size):  # one frame at a time keeps temporaries to one frame
        if own is None:
            corrected[t] -= b32 * np.float32(integral[t])
        else:
            corrected[t] -= b32 * np.float32(integral[t]) + c32 * own[t]
    return corrected.reshape(np.shape(delta_r2s))


def correct_leakage(
    delta_r2s: np.ndarray, times_s: np.ndarray, reference: np.ndarray, method: str = DEFAULT_LEAKAGE_METHOD
) -> LeakageFit:
    """Fit and remove leakage with a ``method`` of ``LEAKAGE_METHODS``; returns maps and curves.

    The returned ``corrected`` is a new (T, ...) float32 array; for "none" it is the input as float32 and
    K1 = 1, K2 = kep = 0.
    """
    fit = fit_leakage(delta_r2s, times_s, reference, method)
    fit.corrected = remove_leakage(delta_r2s, times_s, reference, fit.b, fit.c)
    return fit
