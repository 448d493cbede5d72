"""Model-based deconvolution: each tissue curve fitted with a gamma transit-time residue (CBF, MTT, delay).

Model (Mouridsen et al. 2006, NeuroImage 33:570; the family the OSIPI test data were generated from,
Chakwizira et al. 2022, MAGMA 35:791): C(t) = f * integral Ca(tau) R(t - tau - delay) dtau, where the transit
times through the voxel are gamma distributed with mean MTT and shape ``lambda``, so the residue is their
survival function R(t) = Q(lambda, lambda t / MTT) for t >= 0 (Q the regularised upper incomplete gamma
function; R(0) = 1) and 0 before. lambda = 1 is the exponential residue of a well-mixed compartment, large
lambda a plug flow (box residue). CBF is f, the height of the residue's jump, and Tmax is the delay.

Fit (least squares, vectorised over voxels): f enters linearly, so for every point of a grid over
(MTT, lambda, delay) the model curve b = Ca conv R is ONE convolution shared by all voxels, f = <c, b>/<b, b>
in closed form, and the residual is |c|^2 - <c, b>^2/<b, b>: the grid point with the largest
<c, b>^2/<b, b> (and f > 0) is the least-squares fit. Two passes keep the grid small: half-frame delays and
every fifth MTT first, then, per voxel, the delays within a quarter frame of the first pass's (1/8-frame
steps; one whole frame either side for the rectangle rule) and every MTT (a delay off by a quarter frame moves
the best MTT by a third, so the first pass's MTT cannot narrow the second's). The curves and model curves
are projected on the leading singular vectors of the model curves (they are smooth: 20-30 of them hold all
but 1e-6 of every model curve's energy), so a voxel-model product costs ~25 multiplications instead of T; the
chosen fit's f is then computed from the full curves. The
residues are tabulated once per call on a 1/8-frame lag grid (``_ResidueTable``), on which every delay lies.

Delays. With the ``linear`` discretisation (AIF piecewise linear between frames, residue continuous) the
model curve depends on where between frames the residue starts, so delays are searched at 1/8 frame. With
the ``rectangular`` rule (C_n = dt sum_k a_k R((n - k) dt - delay)) the residue is only ever sampled at whole
lags: a start between two frames cannot be told from a smaller f (for an exponential residue exactly:
R(t + s) = exp(-s/MTT) R(t)), so the fit would trade delay for flow. There delays are whole frames.
Delays are searched over ``DELAY_RANGE_S`` (-3 to +12 s, in whole frames of the series): negative ones are
tissue ahead of the measured AIF. Validated at TR 1.243 and 1.5 s only.

Measured (docs/dsc-cbf-validation.md, benchmarks/validate_cbf.py): the 14 OSIPI concentration cases with
their generator's rectangle rule within 10 % of the true CBF (-3.6..+6.9 %); the simulator's continuous curves
1.01-1.02 of truth at delays on and off the search grid for MTTs of 4-7 s, but 1.11-1.14 at MTT 2 s and
0.93-1.31 at MTT 1-1.5 s (noise-free): a residue not much longer than a frame is poorly determined when the
AIF is only known at its samples. The phantom with its own AIF: 0.99-1.05 in relative CBF. The fit needs a
known arterial AIF: with a tissue-like one (later and broader than the tissue: the phantom's automatic AIF)
it returns short box residues and relative CBF 0.18-1.83, and with an automatic AIF from arteries that fill
half their voxels it reads grey matter 1.24-1.28x high, where oSVD's relative CBF stays near 1. So the
pipeline does not offer it. ``ResidueFit.at_limit`` flags fits on the edge of the search, where many of the
tissue-like AIF's land. Dispersion between the measured AIF and the tissue still biases CBF low (beta = 1 s:
-2..-37 %; 2 s: -32..-54 %; the more, the shorter the MTT): it is not in the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc

from .signal import validate_discretisation, validate_frame_interval, validate_tissue_and_aif

# Gamma shapes searched: exponential (1) to nearly a box (100), as the OSIPI generator's 1, 5 and 100.
DEFAULT_SHAPES = (1.0, 2.0, 4.0, 10.0, 100.0)
# Mean transit times searched (s): log-spaced at FINE_MTT_STEP; the first pass takes every
# COARSE_EVERY-th of them.
MTT_RANGE_S = (0.5, 40.0)
FINE_MTT_STEP = 0.016
COARSE_EVERY = 5
# Delays of the tissue after the measured AIF (s), both ends searched, rounded outwards to whole frames.
DELAY_RANGE_S = (-3.0, 12.0)
# Delay step of the first pass (frames); the second searches one step either side of its choice, at every
# fine MTT.
COARSE_DELAY_STEP_FRAMES = 0.5
# Sub-frame delay step of the second pass for the linear discretisation (see the module docstring).
LINEAR_DELAY_STEP_FRAMES = 0.125
# Residues are tabulated every 1/LAG_STEPS_PER_FRAME frame: the linear discretisation's triangle weights
# are integrated on this grid, and every delay searched falls on it.
LAG_STEPS_PER_FRAME = 8
# Model-curve energy left out by the projection on the leading singular vectors.
_PROJECTION_TOLERANCE = 1e-6
# Voxels fitted together: the (voxels x models) scores and their temporaries take ~150 MB at 1024. Scores are
# float64: at MTTs under a frame two different fits can score within 1e-7 of each other, and float32 rounding
# then let the other voxels of the block decide between them.
_VOXEL_BLOCK = 1024


@dataclass
class ResidueFit:
    """Result of ``fit_gamma_residues`` for N curves.

    flow: (N,) f = the residue's height, 1/s (x6000 for ml/100 ml/min); 0 where no model correlates.
    mtt_s: (N,) mean transit time of the fitted residue (s). shape: (N,) its gamma shape lambda.
    delay_s: (N,) start of the residue after the AIF (s): Tmax. dt_s: frame interval (s).
    at_limit: (N,) bool, the fit lies on an edge of the search (shortest or longest MTT, earliest or latest
      delay): the best model is outside the grid, typically because the AIF is later or broader than the
      tissue (a dispersed or tissue-like AIF), and its CBF is not to be trusted.
    """

    flow: np.ndarray
    mtt_s: np.ndarray
    shape: np.ndarray
    delay_s: np.ndarray
    dt_s: float
    at_limit: np.ndarray


@dataclass
class _Models:
    """Unit-flow model curves (K, T) for grid points (K,) of MTT, shape and delay; projection basis (T, r)."""

    curves: np.ndarray
    mtt_s: np.ndarray
    shape: np.ndarray
    delay_frames: np.ndarray
    basis: np.ndarray
    projected: np.ndarray  # (K, r)
    energy: np.ndarray  # (K,)

    @classmethod
    def of(cls, curves: np.ndarray, mtt_s: np.ndarray, shape: np.ndarray, delay_frames: np.ndarray) -> "_Models":
        basis = _projection_basis(curves)
        projected = curves @ basis
        return cls(curves, mtt_s, shape, delay_frames, basis, projected, (projected**2).sum(axis=1))


def gamma_residue(lags_s: np.ndarray, mtt_s: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """R(t) = Q(shape, shape t / MTT) for t >= 0, 0 before (broadcast over the arguments)."""
    lags = np.asarray(lags_s, dtype=np.float64)
    return np.where(lags >= 0, gammaincc(shape, shape * np.maximum(lags, 0.0) / mtt_s), 0.0)


class _ResidueTable:
    """The residues of a grid of (MTT, shape), as the discretisation weighs them, every 1/8 frame of lag.

    Row i is MTT ``mtt_s[i]`` and shape ``shape[i]``; column j the lag ``first + j / LAG_STEPS_PER_FRAME``
    frames. For the linear rule each value is the residue integrated against a one-frame triangle (a
    piecewise-linear AIF's sample), on the same grid with the jump at 0 counted half (trapezoid rule).
    """

    def __init__(self, n_frames: int, dt_s: float, mtt_s: np.ndarray, shapes: np.ndarray, discretisation: str):
        mtt, shape = (axis.ravel() for axis in np.meshgrid(mtt_s, shapes, indexing="ij"))
        self.mtt_s, self.shape, self.dt_s = mtt, shape, dt_s
        self.delays = delay_range_frames(dt_s)
        steps = LAG_STEPS_PER_FRAME
        self.lead = 1 - self.delays[0]  # lags before 0 that a negative delay reaches
        self.first = -self.lead - self.delays[1] - 1  # the earliest lag - delay asked for
        last = n_frames - self.delays[0] + 1
        lags = np.arange(self.first * steps - steps, last * steps + steps + 1) / steps  # one frame spare each side
        values = gamma_residue(lags[None, :] * dt_s, mtt[:, None], shape[:, None])
        if discretisation == "linear":
            values[:, lags == 0] = 0.5
            triangle = 1.0 - np.abs(np.arange(-steps, steps + 1)) / steps
            triangle /= triangle.sum()
            values = sum(weight * values[:, k : values.shape[1] - 2 * steps + k] for k, weight in enumerate(triangle))
        else:
            values = values[:, steps:-steps]
        self.values = values

    def models(self, aif: np.ndarray, rows: np.ndarray, delay_frames: np.ndarray) -> _Models:
        """Unit-flow model curves for every row in ``rows`` with every delay (frames, on the 1/8 grid)."""
        row, delay = (axis.ravel() for axis in np.meshgrid(rows, delay_frames, indexing="ij"))
        n_frames, lead = aif.size, self.lead
        lags = np.arange(-lead, n_frames)
        columns = np.rint((lags[None, :] - delay[:, None] - self.first) * LAG_STEPS_PER_FRAME).astype(int)
        kernels = self.values[row[:, None], columns]
        size = 2 * n_frames + lead
        spectrum = np.fft.rfft(kernels, size, axis=1) * np.fft.rfft(aif, size)[None, :]
        curves = np.fft.irfft(spectrum, size, axis=1)[:, lead : lead + n_frames] * self.dt_s
        # A short series or a late bolus leaves some delayed models with nothing inside the series.
        norms = np.linalg.norm(curves, axis=1)
        seen = norms > 1e-9 * norms.max()
        return _Models.of(curves[seen], self.mtt_s[row[seen]], self.shape[row[seen]], delay[seen])


def delay_range_frames(dt_s: float) -> tuple[int, int]:
    """DELAY_RANGE_S in whole frames of ``dt_s``, rounded outwards."""
    return int(np.floor(DELAY_RANGE_S[0] / dt_s)), int(np.ceil(DELAY_RANGE_S[1] / dt_s))


def _projection_basis(curves: np.ndarray) -> np.ndarray:
    """Orthonormal (T, r): the fewest leading right singular vectors of the normalised model curves that
    leave at most _PROJECTION_TOLERANCE of any curve's energy out."""
    norms = np.linalg.norm(curves, axis=1, keepdims=True)
    unit = curves / np.where(norms > 0, norms, 1.0)
    _, _, vt = np.linalg.svd(unit, full_matrices=False)
    captured = np.cumsum((unit @ vt.T) ** 2, axis=1)  # (K, T): energy kept by the first 1, 2, ... vectors
    rank = int(np.argmax(np.all(captured >= 1.0 - _PROJECTION_TOLERANCE, axis=0))) + 1
    return vt[:rank].T


def _best_models(curves: np.ndarray, models: _Models) -> np.ndarray:
    """Index (N,) of the least-squares model of each curve (T, N) among those with <c, b> > 0 (if any)."""
    products = (curves.T @ models.basis) @ models.projected.T  # (N, K): <c, b>
    return np.argmax(products * np.abs(products) / models.energy[None, :], axis=1)


def _log_grid() -> np.ndarray:
    low, high = np.log(MTT_RANGE_S[0]), np.log(MTT_RANGE_S[1])
    return np.exp(np.linspace(low, high, int(np.ceil((high - low) / FINE_MTT_STEP)) + 1))


def _validated_grid(shapes: tuple[float, ...], discretisation: str) -> tuple[np.ndarray, float]:
    values = np.unique(np.asarray(shapes, dtype=np.float64).ravel())
    if values.size == 0 or not np.all(np.isfinite(values)) or values[0] <= 0:
        raise ValueError("shapes must be a non-empty list of positive gamma shapes.")
    validate_discretisation(discretisation)
    return values, (LINEAR_DELAY_STEP_FRAMES if discretisation == "linear" else 1.0)


def fit_gamma_residues(tissue: np.ndarray, aif: np.ndarray, dt_s: float, discretisation: str = "linear",
                       shapes: tuple[float, ...] = DEFAULT_SHAPES) -> ResidueFit:
    """Least-squares gamma-residue fit (module docstring) of tissue curves (T, N) against ``aif`` (T,), frames
    ``dt_s`` seconds apart."""
    shape_values, delay_step = _validated_grid(shapes, discretisation)
    curves, arterial = validate_tissue_and_aif(tissue, aif)
    dt_s = validate_frame_interval(dt_s)
    table = _ResidueTable(arterial.size, dt_s, _log_grid(), shape_values, discretisation)
    all_rows = np.arange(table.mtt_s.size)
    coarse_rows = all_rows[(all_rows // shape_values.size) % COARSE_EVERY == 0]
    coarse_step = max(delay_step, COARSE_DELAY_STEP_FRAMES)
    earliest, latest = table.delays
    coarse = table.models(arterial, coarse_rows, np.arange(earliest, latest + 1e-9, coarse_step))
    reach = max(1, int(round(coarse_step / 2 / delay_step)))
    offsets = delay_step * np.arange(-reach, reach + 1)
    refined: dict[float, _Models] = {}
    n = curves.shape[1]
    fit = ResidueFit(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), dt_s, np.zeros(n, bool))
    for start in range(0, n, _VOXEL_BLOCK):
        block = np.arange(start, min(start + _VOXEL_BLOCK, n))
        first = coarse.delay_frames[_best_models(curves[:, block], coarse)]
        for frame in np.unique(first):
            if frame not in refined:
                delays = np.unique(np.clip(frame + offsets, earliest, latest))
                refined[frame] = table.models(arterial, all_rows, delays)
            _store_best(fit, refined[frame], curves, block[first == frame], table.delays)
    return fit


def _store_best(fit: ResidueFit, models: _Models, curves: np.ndarray, voxels: np.ndarray,
                delays: tuple[int, int]) -> None:
    """Fit ``voxels`` among ``models`` and write their parameters into ``fit`` (all 0 where f <= 0)."""
    chosen = _best_models(curves[:, voxels], models)
    model_curves = models.curves[chosen]
    flow = np.einsum("nt,tn->n", model_curves, curves[:, voxels]) / (model_curves**2).sum(axis=1)
    positive = flow > 0
    fit.flow[voxels] = np.where(positive, flow, 0.0)
    fit.mtt_s[voxels] = np.where(positive, models.mtt_s[chosen], 0.0)
    fit.shape[voxels] = np.where(positive, models.shape[chosen], 0.0)
    fit.delay_s[voxels] = np.where(positive, models.delay_frames[chosen] * fit.dt_s, 0.0)
    mtt_range = np.exp(np.log(MTT_RANGE_S) + np.array([0.5, -0.5]) * FINE_MTT_STEP)  # within half a step
    on_edge = (models.mtt_s[chosen] <= mtt_range[0]) | (models.mtt_s[chosen] >= mtt_range[1]) | \
        np.isin(models.delay_frames[chosen], delays)
    fit.at_limit[voxels] = positive & on_edge
