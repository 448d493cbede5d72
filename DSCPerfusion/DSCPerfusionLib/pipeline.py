"""DSC series -> leakage-corrected rCBV, nCBV and K2: the one entry point of the CLI and the Slicer Logic.

Stages (DESIGN.md section 4): validate -> brain mask -> bolus arrival and baseline -> deltaR2* -> leakage
fit (``leakage.LEAKAGE_METHODS``) -> rCBV (trapezoid, seconds) -> NAWM -> nCBV.

The automatic brain mask (``brainmask``) is made from a pre-bolus image before the arrival is known: the
mean of the two frames after the steady-state frames, which lie inside every baseline the arrival
detection can accept (or the user's baseline frames). The brain-mean curve over that mask gives the arrival
and the baseline window (``baseline``).

Memory and speed: the series is read one frame at a time; only brain voxels are gathered, once, into a
(T, N) float32 array, and every later step is a matrix-vector product on it or works frame by frame. The
leakage-corrected rCBV never needs the corrected curves: integral(deltaR2* + K2 R) = rCBV + K2 integral(R),
so the (T, N) array is converted to deltaR2* in place and never copied (the bidirectional fit needs one
more (T, N) array for the voxels' own integrals). Measured peak on a 128x128x20x60 series
(benchmarks/README.md): 0.65x the input as float32 with BSW, 1.2x with the bidirectional fit.

Conventions: ``signal`` is (T, K, J, I), time first; times and TE in seconds; frame indices 0-based;
windows are [start, end). Integration runs from the first baseline frame (frames before it are the
steady-state frames, brighter than baseline, and would add a spurious negative area) to the end of the
series, or to the end of the first pass (inclusive) when ``first_pass`` is set.

Guards, reported and not fatal: samples <= 0 are clipped before the logarithm (``signal`` module), voxels
with S0 <= 0 get zero curves; for integer input, voxels with a sample at the dtype's maximum are counted as
saturated. Negative and saturated voxels are counted within the brain mask and excluded from the leakage
reference and from the automatic NAWM.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import baseline as baseline_rules
from .brainmask import brain_mask_from_baseline, validate_mask
from .leakage import (
    DEFAULT_LEAKAGE_METHOD,
    LEAKAGE_METHODS,
    LeakageFit,
    correct_bsw,
    fit_bsw,
    fit_leakage,
    frame_products,
    reference_curve,
    select_reference_voxels,
    voxel_integral,
    voxel_products,
)
from .nawm import abnormal_from_k2, automatic_nawm, nawm_divisors, spacing_from_matrix, validate_ijk_to_ras
from .signal import cumulative_integral, log_signal_ratio_in_place, validate_times

MIN_FRAMES = 15
# The frame interval of a DSC acquisition (the repetition time): multiband EPI reaches ~0.3 s, whole-brain
# single-shot EPI up to ~2.5 s. A median interval outside [0.2, 5] s is milliseconds read as seconds (1500 for
# TR 1.5 s, which would scale K2, rCBV and the time windows by 1000) or another mistake. Frame numbers (1 s apart)
# cannot be told from seconds here; mrml.volume_from_sequence refuses sequences that carry only frame numbers.
FRAME_INTERVAL_RANGE_S = (0.2, 5.0)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PerfusionOptions:
    """What to compute. Times in seconds; frame indices 0-based; windows [start, end)."""

    te_s: float
    te2_s: float | None = None  # dual echo when signal_te2 is given
    baseline: tuple[int, int] | None = None  # [start, end) frames; None = automatic
    leakage: str = DEFAULT_LEAKAGE_METHOD  # one of leakage.LEAKAGE_METHODS
    first_pass: bool = False
    per_slice: bool = False  # nCBV per slice (along array axis k)
    # CBF (relative), MTT, TTP by oSVD with an automatic AIF. Not the gamma-residue fit: with an automatic AIF
    # from half-volume arteries it read grey matter 1.24-1.28x high where oSVD was right
    # (docs/dsc-cbf-validation.md, table 6), and 0.2-1.8x on the phantom, whose AIF can only be tissue (5a).
    deconvolution: bool = False


@dataclass
class PerfusionResult:
    """Maps on the DSC grid (K, J, I); curves (T,) in 1/s; see ``compute_perfusion``."""

    rcbv: np.ndarray  # (K,J,I) float32, leakage-corrected unless leakage == "none"
    rcbv_uncorrected: np.ndarray  # float32
    ncbv: np.ndarray  # float32
    k2: np.ndarray  # float32, 1/s; zeros when leakage == "none"
    k1: np.ndarray  # float32
    brain_mask: np.ndarray  # bool
    nawm_mask: np.ndarray  # bool
    baseline: tuple[int, int]
    arrival_frame: int
    first_pass_end: int | None
    reference_curve: np.ndarray  # (T,) the BSW regressor actually used
    curves: dict[str, np.ndarray]  # mean corrected dR2* (T,) for "brain", "nawm" and "label <v>"
    report: dict  # JSON-serialisable
    cbf: np.ndarray | None = None
    mtt: np.ndarray | None = None
    ttp: np.ndarray | None = None


@dataclass
class _Stages:
    """Calls ``progress`` at the start of each stage and records the seconds each one took."""

    progress: Progress | None
    timings: dict[str, float] = field(default_factory=dict)
    _name: str | None = None
    _started: float = 0.0
    _first: float = field(default_factory=time.perf_counter)

    def start(self, name: str, fraction: float, message: str) -> None:
        self._close()
        self._name, self._started = name, time.perf_counter()
        if self.progress is not None:
            self.progress(fraction, message)

    def finish(self) -> dict[str, float]:
        self._close()
        self.timings["total"] = round(time.perf_counter() - self._first, 4)
        if self.progress is not None:
            self.progress(1.0, "Perfusion maps ready")
        return self.timings

    def _close(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.perf_counter() - self._started, 4)
            self._name = None


@dataclass
class _FrameScan:
    """Voxels flagged while checking the frames: a sample at the integer dtype's maximum, or below zero."""

    saturated: np.ndarray
    negative: np.ndarray


# --- validation --------------------------------------------------------------------------------------------


def _checked_echo_time(value: float | None, name: str) -> float:
    try:
        te = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an echo time in seconds, got {value!r}.") from None
    if not np.isfinite(te) or te <= 0:
        raise ValueError(f"{name} must be a positive echo time in seconds, got {value}.")
    if te > 1.0:
        raise ValueError(f"{name} = {value:g} looks like milliseconds; give seconds (e.g. {te / 1000:g}).")
    return te


def _checked_options(options: PerfusionOptions, dual_echo: bool) -> tuple[float, float | None]:
    if not isinstance(options, PerfusionOptions):
        raise ValueError(f"options must be a PerfusionOptions, got {type(options).__name__}.")
    if options.leakage not in LEAKAGE_METHODS:
        raise ValueError(f"options.leakage must be one of {', '.join(LEAKAGE_METHODS)}, got {options.leakage!r}.")
    te = _checked_echo_time(options.te_s, "options.te_s")
    if dual_echo != (options.te2_s is not None):
        raise ValueError("A dual-echo series needs both signal_te2 and options.te2_s (give both or neither).")
    if not dual_echo:
        return te, None
    te2 = _checked_echo_time(options.te2_s, "options.te2_s")
    if te2 <= te:
        raise ValueError(f"options.te2_s ({te2:g} s) must be longer than options.te_s ({te:g} s).")
    return te, te2


def _checked_series(signal: np.ndarray, name: str) -> np.ndarray:
    series = np.asarray(signal)
    if series.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a numeric array, got dtype {series.dtype}.")
    if series.ndim != 4:
        raise ValueError(
            f"{name} must be a 4-D series (T, K, J, I) with time first; got a {series.ndim}-D array {series.shape}."
        )
    if series.shape[0] < MIN_FRAMES:
        raise ValueError(f"{name} has {series.shape[0]} frames; at least {MIN_FRAMES} are needed (baseline and bolus).")
    return series


def _checked_frame_interval(times: np.ndarray, name: str) -> None:
    """Frame times must be seconds: a median interval outside ``FRAME_INTERVAL_RANGE_S`` is refused."""
    interval = float(np.median(np.diff(times)))
    low, high = FRAME_INTERVAL_RANGE_S
    if low <= interval <= high:
        return
    if low * 1000 <= interval <= high * 1000:
        raise ValueError(f"{name} look like milliseconds (median frame interval {interval:g}); give the frame "
                         f"times in seconds (an interval of {interval / 1000:g} s).")
    raise ValueError(f"{name} have a median frame interval of {interval:g} s, outside the {low:g}-{high:g} s of a "
                     "DSC acquisition; give the frame times in seconds.")


def _scan_frames(series: np.ndarray, name: str) -> _FrameScan:
    """Check every frame (finite, not all zero) and flag saturated and negative voxels."""
    spatial = series.shape[1:]
    negative = np.zeros(spatial, bool)
    saturated = np.zeros(spatial, bool)
    ceiling = np.iinfo(series.dtype).max if series.dtype.kind in "iu" else None
    for t, frame in enumerate(series):
        # Two reductions per frame; the voxel-wise comparisons run only on frames that need them.
        low, high = frame.min(), frame.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{name} contains NaN or infinite values (first in frame {t}).")
        if low == 0 and high == 0:
            raise ValueError(f"{name} frame {t} is all zero (a missing or corrupt frame).")
        if low < 0:
            negative |= frame < 0
        if ceiling is not None and high == ceiling:
            saturated |= frame == ceiling
    return _FrameScan(saturated, negative)


def _checked_labels(labels: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(labels)
    if values.shape != spatial:
        raise ValueError(f"lesion_labels has shape {values.shape} but the DSC grid is {spatial}.")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError("lesion_labels must hold whole-number labels (0 = background).")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iub":
        raise ValueError(f"lesion_labels must be an integer label array, got dtype {values.dtype}.")
    return values


def _checked_spacing(spacing_mm: tuple[float, float, float] | None, ijk_to_ras: np.ndarray | None) -> np.ndarray | None:
    """Voxel size (mm) per array axis (k, j, i): from the matrix if given, else ``spacing_mm``, else None."""
    if ijk_to_ras is not None:
        return spacing_from_matrix(validate_ijk_to_ras(ijk_to_ras))
    if spacing_mm is None:
        return None
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive voxel sizes in mm (k, j, i), got {spacing_mm!r}.")
    return spacing


# --- stages ------------------------------------------------------------------------------------------------


def _mean_image(series: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Mean of frames [start, end) (float32, spatial shape), accumulated frame by frame."""
    total = np.zeros(series.shape[1:], np.float32)
    for t in range(*window):
        total += series[t]
    return total / np.float32(window[1] - window[0])


def _mask_frames(n_frames: int, user_baseline: tuple[int, int] | None) -> tuple[int, int]:
    """Frames averaged for the automatic brain mask: the user's baseline, else the first frames after the
    steady state, which lie inside every baseline the arrival detection can accept."""
    if user_baseline is not None:
        return baseline_rules.validate_baseline(user_baseline, n_frames)
    start = baseline_rules.DEFAULT_SKIP_FRAMES
    return start, start + baseline_rules.MIN_BASELINE_FRAMES


def _arrival_and_baseline(
    mean_signal: np.ndarray, user_baseline: tuple[int, int] | None, warnings: list[str]
) -> tuple[int, tuple[int, int]]:
    """Bolus arrival on the brain-mean signal curve and the baseline window (the user's if given)."""
    if user_baseline is None:
        arrival = baseline_rules.detect_bolus_arrival(mean_signal)
        return arrival, baseline_rules.baseline_window(arrival)
    window = baseline_rules.validate_baseline(user_baseline, mean_signal.size)
    try:
        arrival = baseline_rules.detect_bolus_arrival(mean_signal, skip_frames=min(window[0], mean_signal.size - 3))
    except ValueError:
        warnings.append("No bolus found on the brain-mean curve; the arrival is set to the end of the given baseline.")
        return window[1], window
    if arrival < window[1]:
        warnings.append(f"The given baseline {window} extends past the detected bolus arrival (frame {arrival}).")
    return arrival, window


def _gather(series: np.ndarray, flat_index: np.ndarray) -> np.ndarray:
    """(T, N) float32 copy of the voxels ``flat_index``, filled one frame at a time."""
    gathered = np.empty((series.shape[0], flat_index.size), np.float32)
    for t, frame in enumerate(series):
        gathered[t] = frame.reshape(-1)[flat_index]
    return gathered


def _delta_r2s_in_place(
    curves: np.ndarray, window: tuple[int, int], te: float, second: np.ndarray | None, te2: float | None
) -> np.ndarray:
    """Turn gathered signal (T, N) into deltaR2* in place (dual echo if ``second`` is given); return S0 (N,)."""
    s0 = curves[window[0] : window[1]].mean(axis=0, dtype=np.float64)
    log_signal_ratio_in_place(curves, s0)
    if second is None:
        curves *= np.float32(-1.0 / te)
        return s0
    log_signal_ratio_in_place(second, second[window[0] : window[1]].mean(axis=0, dtype=np.float64))
    curves -= second
    curves *= np.float32(1.0 / (te2 - te))
    return s0


def trapezoid_weights(times: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Weights w (T,) with w @ y = trapezoid integral of y over frames [start, stop) in seconds."""
    weights = np.zeros(times.size)
    steps = np.diff(times[start:stop]) / 2.0
    weights[start : stop - 1] += steps
    weights[start + 1 : stop] += steps
    return weights


def _region_weights(region: np.ndarray) -> np.ndarray | None:
    count = int(region.sum())
    return None if count == 0 else region.astype(np.float32) / np.float32(count)


def _fit_leakage(curves: np.ndarray, times: np.ndarray, reference: np.ndarray, method: str,
                 weights: np.ndarray) -> tuple[LeakageFit, np.ndarray]:
    """Leakage fit of the gathered curves (T, N) and its correction of the rCBV integral (weights: trapezoid).

    The correction is the integral of the leakage term, so the corrected curves are never built: the voxel's
    own integral Y is computed once, for the bidirectional fit and its area, and dropped.
    """
    own = voxel_integral(curves, times) if method == "bidirectional" else None
    fit = fit_leakage(curves, times, reference, method, own_integral=own)
    rcbv_correction = -fit.b * float(weights @ cumulative_integral(reference, times))
    if own is not None:
        rcbv_correction -= fit.c * frame_products(weights, own)
    return fit, rcbv_correction


def _mean_corrected_curve(curves: np.ndarray, times: np.ndarray, reference: np.ndarray, leak: LeakageFit,
                          region: np.ndarray) -> np.ndarray:
    """Mean leakage-corrected deltaR2* (T,) over a region (bool (N,)), from the uncorrected curves."""
    weights = _region_weights(region)
    if weights is None:
        return np.zeros(times.size)
    mean_curve = voxel_products(curves, weights)
    mean_curve -= float(leak.b[region].mean()) * cumulative_integral(reference, times)
    if np.any(leak.c[region] != 0):
        mean_curve -= cumulative_integral(voxel_products(curves, weights * leak.c), times)
    return mean_curve


def _scatter(values: np.ndarray, flat_index: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    volume = np.zeros(int(np.prod(spatial)), np.float32)
    volume[flat_index] = values
    return volume.reshape(spatial)


# --- entry point -------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """Validated arguments of ``compute_perfusion``."""

    series: np.ndarray
    second: np.ndarray | None
    times: np.ndarray
    te: float
    te2: float | None
    spacing: np.ndarray | None
    brain: np.ndarray | None
    nawm: np.ndarray | None
    labels: np.ndarray | None
    flagged: _FrameScan


def _validated_inputs(
    signal: np.ndarray,
    times_s: np.ndarray,
    options: PerfusionOptions,
    ijk_to_ras: np.ndarray | None,
    spacing_mm: tuple[float, float, float] | None,
    brain_mask: np.ndarray | None,
    nawm_mask: np.ndarray | None,
    lesion_labels: np.ndarray | None,
    signal_te2: np.ndarray | None,
) -> _Inputs:
    """Check every argument of ``compute_perfusion`` (one ValueError sentence each) and scan the frames."""
    series = _checked_series(signal, "signal")
    second = None if signal_te2 is None else _checked_series(signal_te2, "signal_te2")
    if second is not None and second.shape != series.shape:
        raise ValueError(f"signal_te2 has shape {second.shape} but signal has shape {series.shape}.")
    te, te2 = _checked_options(options, second is not None)
    times = validate_times(times_s, series.shape[0])
    _checked_frame_interval(times, "The frame times (times_s)")
    spatial = series.shape[1:]
    spacing = _checked_spacing(spacing_mm, ijk_to_ras)
    brain = None if brain_mask is None else validate_mask(brain_mask, spatial, "brain_mask")
    nawm = None if nawm_mask is None else validate_mask(nawm_mask, spatial, "nawm_mask")
    labels = None if lesion_labels is None else _checked_labels(lesion_labels, spatial)
    flagged = _scan_frames(series, "signal")
    if second is not None:
        second_scan = _scan_frames(second, "signal_te2")
        flagged.saturated |= second_scan.saturated
        flagged.negative |= second_scan.negative
    return _Inputs(series, second, times, te, te2, spacing, brain, nawm, labels, flagged)


def _integration_window(curves: np.ndarray, times: np.ndarray, arrival: int, window: tuple[int, int],
                        first_pass: bool) -> tuple[int | None, int]:
    """End of the first pass (or None) and the exclusive last frame integrated."""
    if not first_pass:
        return None, times.size
    mean_delta_r2s = voxel_products(curves, np.full(curves.shape[1], 1.0 / curves.shape[1]))
    end = baseline_rules.detect_first_pass_end(mean_delta_r2s, arrival)
    return end, end + 1


def _nawm_stage(inputs: _Inputs, brain: np.ndarray, maps: dict, baseline_image: np.ndarray, screening_k2: np.ndarray,
                ijk_to_ras: np.ndarray | None, warnings: list[str]) -> tuple[np.ndarray, str, str]:
    """NAWM mask, its hemisphere and its source ("user" or "automatic")."""
    if inputs.nawm is not None:
        nawm = inputs.nawm & brain
        if not nawm.any():
            raise ValueError("nawm_mask does not overlap the brain mask.")
        if nawm.sum() < inputs.nawm.sum():
            outside = int(inputs.nawm.sum() - nawm.sum())
            warnings.append(f"{outside} NAWM mask voxels outside the brain mask were ignored.")
        return nawm, "user", "user"
    selection = automatic_nawm(
        maps["rcbv_uncorrected"], baseline_image, brain, ijk_to_ras=ijk_to_ras,
        spacing_mm=None if inputs.spacing is None else tuple(inputs.spacing), lesion_labels=inputs.labels,
        abnormal=abnormal_from_k2(screening_k2, brain),
        unusable=inputs.flagged.saturated | inputs.flagged.negative)
    warnings.extend(selection.warnings)
    return selection.mask, selection.hemisphere, "automatic"


def _flag_warnings(flagged: _FrameScan, brain: np.ndarray) -> tuple[int, int, list[str]]:
    """Saturated and negative brain-voxel counts and the warnings they call for."""
    saturated = int((flagged.saturated & brain).sum())
    negative = int((flagged.negative & brain).sum())
    warnings = []
    if saturated:
        warnings.append(f"{saturated} brain voxels reach the data type's maximum (saturated) and were left out of "
                        "the leakage reference and the NAWM.")
    if negative:
        warnings.append(f"{negative} brain voxels have negative samples, clipped before the logarithm and left out "
                        "of the leakage reference and the NAWM.")
    return saturated, negative, warnings


def compute_perfusion(
    signal: np.ndarray,
    times_s: np.ndarray,
    options: PerfusionOptions,
    *,
    ijk_to_ras: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    brain_mask: np.ndarray | None = None,
    nawm_mask: np.ndarray | None = None,
    lesion_labels: np.ndarray | None = None,
    signal_te2: np.ndarray | None = None,
    progress: Progress | None = None,
) -> PerfusionResult:
    """Leakage-corrected rCBV, nCBV, K1/K2 maps and mean curves of a DSC series (see the module docstring).

    ``signal``: (T, K, J, I) magnitude series (any integer or float dtype; not modified). ``times_s``: (T,)
    frame times in s (a median interval outside 0.2-5 s, such as milliseconds, is refused).
    ``ijk_to_ras``: 4x4 matrix of the grid (left-right for the NAWM, voxel size).
    ``spacing_mm``: voxel size per array axis (k, j, i) when no matrix is given. ``brain_mask``,
    ``nawm_mask``: optional user masks (K, J, I). ``lesion_labels``: integer labels on the DSC grid.
    ``signal_te2``: second echo (dual echo, with ``options.te2_s``). ``progress(fraction, message)``.
    Raises ValueError, one sentence, for bad input.
    """
    stages = _Stages(progress)
    stages.start("validate", 0.0, "Checking the DSC series")
    inputs = _validated_inputs(signal, times_s, options, ijk_to_ras, spacing_mm, brain_mask, nawm_mask,
                               lesion_labels, signal_te2)
    series, times, spatial = inputs.series, inputs.times, inputs.series.shape[1:]
    warnings: list[str] = []

    stages.start("brain_mask", 0.1, "Finding the brain")
    brain = inputs.brain
    if brain is None:
        brain = brain_mask_from_baseline(_mean_image(series, _mask_frames(series.shape[0], options.baseline)))
    flat_index = np.flatnonzero(brain)

    stages.start("baseline", 0.2, "Detecting the bolus arrival")
    curves = _gather(series, flat_index)
    mean_signal = voxel_products(curves, np.full(flat_index.size, 1.0 / flat_index.size))
    arrival, window = _arrival_and_baseline(mean_signal, options.baseline, warnings)

    stages.start("delta_r2s", 0.3, "Converting signal to deltaR2*")
    second_curves = None if inputs.second is None else _gather(inputs.second, flat_index)
    baseline_image = _scatter(_delta_r2s_in_place(curves, window, inputs.te, second_curves, inputs.te2),
                              flat_index, spatial)
    del second_curves
    first_pass_end, stop = _integration_window(curves, times, arrival, window, options.first_pass)
    weights = trapezoid_weights(times, window[0], stop)

    stages.start("leakage", 0.5, "Fitting contrast leakage")
    flagged = (inputs.flagged.saturated | inputs.flagged.negative).reshape(-1)[flat_index]
    reference_voxels = select_reference_voxels(curves, times, window, candidates=~flagged)
    reference = reference_curve(curves, reference_voxels)
    leak, rcbv_correction = _fit_leakage(curves, times, reference, options.leakage, weights)
    # The lesion side for the NAWM comes from BSW K2 whatever the method: it is the most stable leak map.
    screening_k2 = leak.k2 if options.leakage == "bsw" else fit_bsw(curves, times, reference).k2

    stages.start("rcbv", 0.7, "Integrating rCBV")
    rcbv_uncorrected = frame_products(weights, curves).astype(np.float32)
    rcbv = rcbv_uncorrected + rcbv_correction.astype(np.float32)
    maps = {name: _scatter(values, flat_index, spatial) for name, values in (
        ("rcbv", rcbv), ("rcbv_uncorrected", rcbv_uncorrected), ("k1", leak.k1), ("k2", leak.k2),
        ("screening_k2", screening_k2))}

    stages.start("nawm", 0.8, "Finding normal-appearing white matter")
    nawm, hemisphere, nawm_source = _nawm_stage(inputs, brain, maps, baseline_image, maps.pop("screening_k2"),
                                                ijk_to_ras, warnings)

    stages.start("normalise", 0.9, "Normalising to white matter")
    divisors, fallback = nawm_divisors(maps["rcbv"], nawm, options.per_slice)
    ncbv = (maps["rcbv"] / divisors[:, None, None].astype(np.float32)).astype(np.float32)
    if options.per_slice and fallback:
        warnings.append(f"{len(fallback)} slices had too little NAWM and were normalised by the global NAWM mean.")
    curves_out = _region_curves(curves, times, reference, leak, brain, nawm, inputs.labels, flat_index, warnings)
    saturated, negative, flag_warnings = _flag_warnings(inputs.flagged, brain)
    warnings.extend(flag_warnings)
    deconvolved = {}
    if options.deconvolution:
        stages.start("cbf", 0.95, "Estimating CBF, MTT and TTP")
        deconvolved = _deconvolution_maps(curves, times, reference, leak, flat_index, spatial, warnings)
    timings = stages.finish()

    report = {
        "warnings": warnings,
        "saturated_voxels": saturated,
        "negative_voxels": negative,
        "brain_voxels": int(flat_index.size),
        "brain_mask_source": "user" if inputs.brain is not None else "automatic",
        "reference_voxels": int(reference_voxels.sum()),
        "nawm_voxels": int(nawm.sum()),
        "nawm_source": nawm_source,
        "nawm_hemisphere": hemisphere,
        "nawm_mean_rcbv": float(maps["rcbv"][nawm].mean()),
        "per_slice_fallback_slices": [int(k) for k in fallback] if options.per_slice else [],
        "baseline_frames": [int(window[0]), int(window[1])],
        "baseline_source": "user" if options.baseline is not None else "automatic",
        "arrival_frame": int(arrival),
        "arrival_time_s": float(times[min(arrival, times.size - 1)]),
        "first_pass_end_frame": first_pass_end,
        "integration_frames": [int(window[0]), int(stop)],
        "leakage_method": options.leakage,
        "leakage_response_frames": int(leak.response_frames),  # J of "bsw-lagged", 0 for the other methods
        "dual_echo": inputs.second is not None,
        "timings_s": timings,
        "total_time_s": timings["total"],
        "options": _json_options(options),
    }
    if inputs.spacing is not None:
        report["nawm_volume_ml"] = round(float(nawm.sum() * np.prod(inputs.spacing) / 1000.0), 4)
        report["voxel_size_mm"] = [float(s) for s in inputs.spacing]
    return PerfusionResult(
        rcbv=maps["rcbv"], rcbv_uncorrected=maps["rcbv_uncorrected"], ncbv=ncbv, k2=maps["k2"], k1=maps["k1"],
        brain_mask=brain, nawm_mask=nawm, baseline=(int(window[0]), int(window[1])), arrival_frame=int(arrival),
        first_pass_end=first_pass_end, reference_curve=reference, curves=curves_out, report=report, **deconvolved)


def _deconvolution_maps(curves: np.ndarray, times: np.ndarray, reference: np.ndarray, leak: LeakageFit,
                        flat_index: np.ndarray, spatial: tuple, warnings: list[str]) -> dict[str, np.ndarray]:
    """CBF (relative), MTT (s) and TTP (s) by oSVD with an automatic AIF, on BSW-corrected curves.

    Optional extras: when no credible arterial voxels exist the maps are skipped with a warning rather than
    failing the nCBV, which does not need them.
    """
    from .deconvolution import perfusion_maps

    corrected = correct_bsw(curves, times, reference, leak.k2) if np.any(leak.k2) else curves
    try:
        maps = perfusion_maps(corrected, times, np.ones(corrected.shape[1], bool))
    except ValueError as error:
        warnings.append(f"CBF, MTT and TTP were not computed: {error}")
        return {}
    return {name: _scatter(np.asarray(getattr(maps, field), np.float32), flat_index, spatial)
            for name, field in (("cbf", "cbf"), ("mtt", "mtt_s"), ("ttp", "ttp_s"))}


def _region_curves(curves: np.ndarray, times: np.ndarray, reference: np.ndarray, leak: LeakageFit, brain: np.ndarray,
                   nawm: np.ndarray, labels: np.ndarray | None, flat_index: np.ndarray,
                   warnings: list[str]) -> dict[str, np.ndarray]:
    """Mean corrected deltaR2* (T,) of the brain, the NAWM and each lesion label (over its brain voxels)."""
    regions = {"brain": np.ones(flat_index.size, bool), "nawm": nawm.reshape(-1)[flat_index]}
    if labels is not None:
        flat_labels = labels.reshape(-1)
        for value in (int(v) for v in np.unique(flat_labels) if v != 0):
            regions[f"label {value}"] = flat_labels[flat_index] == value
            if not regions[f"label {value}"].any():
                warnings.append(f"Lesion label {value} lies outside the brain mask; its curve is zero.")
    return {name: _mean_corrected_curve(curves, times, reference, leak, region) for name, region in regions.items()}


def _json_options(options: PerfusionOptions) -> dict:
    values = asdict(options)
    if values["baseline"] is not None:
        values["baseline"] = [int(v) for v in values["baseline"]]
    return values
