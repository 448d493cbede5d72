"""Local radiomics feature maps: each voxel's first-order, GLCM and GLRLM features in the cube around it.

Seed 004 (Yan et al. 2020, Sci Rep, "A neural network approach to identify the peritumoral invasive areas in
glioblastoma patients by using MR radiomics") computes radiomics features voxel by voxel in a local
neighbourhood of each peritumoral voxel (42 features per map, 7 maps) and classifies the voxels. This module
computes a documented subset of those features (``FEATURES``, 23 per map, pyradiomics' names and definitions)
as whole maps, vectorised over the voxels instead of pyradiomics' voxel-based extraction, which is far too slow
on a full-size peritumoral region (benchmarks/bench_invasion_features.py measures both in one run).

The definitions are pyradiomics 3.0.1's voxel-based extraction with these settings, and
Testing/test_invasion_features.py checks every feature against it:

- ``kernelRadius = radius``, ``maskedKernel = False``: a voxel's kernel is the whole (2*radius+1)^3 cube of
  image voxels around it (cut only by the image's edge), not just its mask voxels. Every peritumoral voxel then
  sees a full neighbourhood of equal size, also at the border of the region, which keeps its texture matrices
  comparable across the region.
- Discretisation once for the whole image: the image is first clipped to the robust range of the mask's
  voxels (their 1st to 99th percentile, so that a few extreme voxels do not squeeze all texture into one bin),
  then divided into ``bin_count`` equal bins between that range's ends. This is exactly pyradiomics'
  ``binCount = bin_count`` applied to the clipped image (``numpy.histogram`` edges, ``numpy.digitize``, top
  value in the top bin): with ``maskedKernel = False`` pyradiomics bins over the whole image, whose extremes after
  clipping are the range's ends. First-order intensity features (Mean, Median, percentiles, moments) are
  computed on the clipped intensities, as pyradiomics computes them on the image it is given. (pyradiomics'
  ``binWidth = (high - low) / bin_count`` would not give the same bins: it starts them at a multiple of the
  width below the minimum, not at the minimum.)
- GLCM: distance 1, the 13 directions of 3D, symmetric, each direction's matrix normalised and its features
  averaged over the directions (pyradiomics' default). GLRLM: runs along the 13 directions inside the cube,
  features averaged over the directions. No resampling, no normalisation, no weighting, voxelArrayShift 0.

How it is fast: only the mask's voxels are computed, on the mask's bounding box, a chunk of voxels at a time. Per
chunk every voxel's cube is gathered once, as a (cube position, voxel) array of bins; per direction, the pairs
(GLCM) and the cube's lines laid end to end (GLRLM) are rows of it. One ``numpy.bincount`` per direction counts
every voxel's matrix at once: the GLCM as counts of unordered gray-level pairs (the symmetric matrix in half the
memory), whose linear features are weighted sums of the counts and whose energy and entropy come from the
integer counts; the GLRLM from each run's end, its length the distance to the last change of gray level (a
running maximum over the line). First order sorts each cube once for its percentiles. Memory stays at a few tens
of MB per chunk whatever the region's size; about 8 s of one core per 10^5 voxels for all 23 features
(benchmarks/README.md).
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

FIRSTORDER = ("Mean", "Median", "10Percentile", "90Percentile", "Variance", "Skewness", "Kurtosis", "Entropy",
              "Uniformity")
GLCM = ("Autocorrelation", "Contrast", "Correlation", "JointEnergy", "JointEntropy", "Idm", "ClusterShade",
        "ClusterProminence")
GLRLM = ("ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity", "RunLengthNonUniformity", "RunPercentage",
         "RunEntropy")
# pyradiomics' class and feature names joined by "_" (its output keys without the image type "original_")
FEATURES: tuple[str, ...] = (tuple(f"firstorder_{name}" for name in FIRSTORDER) + tuple(f"glcm_{name}" for name in GLCM)
                             + tuple(f"glrlm_{name}" for name in GLRLM))

ROBUST_PERCENTILES = (1.0, 99.0)  # the mask's intensity range that is discretised; outside it, values are clipped
MAX_BIN_COUNT = 255  # the discretised image is uint8, 0 meaning "outside the image"
CHUNK_VOXELS = 8192  # mask voxels computed together: the gathered arrays stay at a few tens of MB
EPS = np.spacing(1)  # pyradiomics' epsilon inside its logarithms
ISOTROPY_TOLERANCE = 0.01  # relative spacing difference between axes accepted as isotropic

Progress = Callable[[float, str], None]


class FeatureMapsCancelled(RuntimeError):
    pass


def local_feature_maps(image: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float], radius: int = 2,
                       bin_count: int = 16, features: Sequence[str] = FEATURES, progress: Progress | None = None,
                       cancel=None) -> dict[str, np.ndarray]:
    """Each voxel's features in the (2*radius+1)^3 cube around it, for the voxels of ``mask``.

    ``image`` and ``mask`` are 3D arrays [k, j, i] on one isotropic grid of spacing ``spacing_mm``; ``features``
    is a subset of ``FEATURES``. Returns one float32 map of the image's shape per feature, NaN outside the mask.
    ``progress(fraction, message)`` is told after each chunk of voxels (8192, about a second); ``cancel`` (a
    ``threading.Event``-like with ``is_set()``, or a callable) set ends the computation with
    ``FeatureMapsCancelled`` before the next chunk. Bad input raises ValueError in one sentence.
    """
    image, mask, names = _checked_input(image, mask, spacing_mm, radius, bin_count, features)
    box = _bounding_box(mask, radius)  # everything the cubes reach: the work is on this box only
    clipped, gray = _discretised(_finite_box(image[box], mask[box], radius), mask[box], bin_count)
    groups = {group: [name.split("_", 1)[1] for name in names if name.startswith(group + "_")]
              for group in ("firstorder", "glcm", "glrlm")}
    values = _feature_values(clipped, gray, mask[box], radius, bin_count, groups, progress, cancel)
    maps = {}
    for name in names:
        maps[name] = np.full(image.shape, np.nan, dtype=np.float32)
        maps[name][box][mask[box]] = values[name]
    return maps


def _feature_values(clipped, gray, mask, radius, bin_count, groups, progress, cancel) -> dict[str, np.ndarray]:
    """The features of the mask's voxels in C order, a chunk of voxels at a time.

    Per chunk, the cube of every voxel is gathered once as (cube position, voxel) arrays: its discretised values
    with one extra row of 0 (a "gap", see ``_line_layout``) and, for first order, its clipped intensities as
    (voxel, cube position). The image is padded by the radius with 0 (gray) and NaN (intensity): the voxels
    beyond the image's edge, which pyradiomics leaves out of a cube.
    """
    padded_shape = tuple(size + 2 * radius for size in mask.shape)
    centres = np.ravel_multi_index(tuple(axis + radius for axis in np.nonzero(mask)), padded_shape)
    padded_gray = np.pad(gray, radius, constant_values=0).ravel()
    padded_values = np.pad(clipped, radius, constant_values=np.nan).ravel() if groups["firstorder"] else None
    cube = _flat(_cube(radius), padded_shape)
    values = {f"{group}_{name}": np.empty(len(centres), dtype=np.float32)
              for group, names in groups.items() for name in names}
    for start in range(0, len(centres), CHUNK_VOXELS):
        if _cancelled(cancel):
            raise FeatureMapsCancelled("The radiomics feature maps were cancelled.")
        chunk = centres[start:start + CHUNK_VOXELS]
        stop = start + len(chunk)
        where = cube[:, None] + chunk[None, :]
        cube_gray = np.zeros((len(cube) + 1, len(chunk)), dtype=np.uint8)
        cube_gray[:-1] = padded_gray[where]
        computed = {}
        if groups["firstorder"]:
            computed["firstorder"] = _firstorder(padded_values[where.T], cube_gray[:-1], bin_count,
                                                 groups["firstorder"])
        if groups["glcm"]:
            computed["glcm"] = _glcm(cube_gray, radius, bin_count, groups["glcm"])
        if groups["glrlm"]:
            computed["glrlm"] = _glrlm(cube_gray, radius, bin_count, groups["glrlm"])
        for group, features in computed.items():
            for name, value in features.items():
                values[f"{group}_{name}"][start:stop] = value
        if progress is not None:
            progress(stop / len(centres), f"Radiomics feature maps: {stop} of {len(centres)} voxels")
    return values


def _cancelled(cancel) -> bool:
    """``cancel``: None, a ``threading.Event``-like with ``is_set()``, or a callable returning True to stop."""
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _checked_input(image, mask, spacing_mm, radius, bin_count, features):
    """The image, the mask as bool and the feature names, or ValueError naming what is wrong."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3:
        raise ValueError(f"The image must be a 3D array; it has {image.ndim} dimensions.")
    if not (np.issubdtype(image.dtype, np.number) and not np.iscomplexobj(image)):
        raise ValueError(f"The image must hold real numbers; it holds {image.dtype}.")
    if mask.shape != image.shape:
        raise ValueError(f"The mask's shape {mask.shape} differs from the image's {image.shape}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("The mask is empty: there is no voxel to compute feature maps for.")
    spacing = np.asarray(spacing_mm, dtype=float).ravel()
    if spacing.size != 3 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"The spacing must be three positive numbers in mm; it is {spacing_mm}.")
    if spacing.max() > spacing.min() * (1 + ISOTROPY_TOLERANCE):
        raise ValueError(f"The voxels must be isotropic (the 1 mm reference grid) for the 13 texture directions to "
                         f"be alike; the spacing is {tuple(float(s) for s in spacing)} mm.")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"The kernel radius must be a whole number of voxels of at least 1; it is {radius!r}.")
    if isinstance(bin_count, bool) or not isinstance(bin_count, (int, np.integer)) \
            or not 2 <= bin_count <= MAX_BIN_COUNT:
        raise ValueError(f"The bin count must be a whole number from 2 to {MAX_BIN_COUNT}; it is {bin_count!r}.")
    names = [features] if isinstance(features, str) else list(features)
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise ValueError(f"Unknown radiomics feature {unknown[0]!r}: the feature maps know {', '.join(FEATURES)}.")
    if not names:
        raise ValueError("No feature was asked for.")
    return image, mask, list(dict.fromkeys(names))


def _finite_box(image: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
    """The box's image as float64, or ValueError when a cube of the mask holds NaN or infinity."""
    image = image.astype(np.float64)
    if not np.all(np.isfinite(image[_dilated(mask, radius)])):
        raise ValueError(f"The image has NaN or infinite values inside the mask or within {radius} voxels of it.")
    return image


def _dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    """The voxels some mask voxel's cube reaches."""
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=radius)


def _discretised(image: np.ndarray, mask: np.ndarray, bin_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The image clipped to the mask's robust range, and its bins 1..bin_count (pyradiomics' binCount rule)."""
    low, high = np.percentile(image[mask], ROBUST_PERCENTILES)
    clipped = np.clip(image, low, high)
    edges = np.histogram_bin_edges(clipped[mask], bin_count)
    edges[-1] += 1  # as pyradiomics: the maximum falls into the top bin under numpy.digitize
    return clipped, np.digitize(clipped, edges).astype(np.uint8)


def _bounding_box(mask: np.ndarray, radius: int) -> tuple[slice, slice, slice]:
    """The mask's bounding box grown by ``radius`` on every side, within the image."""
    corners = np.argwhere(mask)
    low = np.maximum(corners.min(axis=0) - radius, 0)
    high = np.minimum(corners.max(axis=0) + radius + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _flat(offsets: np.ndarray, padded_shape) -> np.ndarray:
    """Flat index steps of (k, j, i) offsets in the padded image."""
    strides = np.array([padded_shape[1] * padded_shape[2], padded_shape[2], 1])
    return np.asarray(offsets).reshape(-1, 3) @ strides


@lru_cache(maxsize=None)
def _cube(radius: int) -> np.ndarray:
    return np.array(list(itertools.product(range(-radius, radius + 1), repeat=3)))


@lru_cache(maxsize=None)
def _cube_position(radius: int) -> dict[tuple[int, int, int], int]:
    """Row of each cube offset in the gathered (cube position, voxel) arrays."""
    return {tuple(int(x) for x in offset): row for row, offset in enumerate(_cube(radius))}


def _directions() -> list[tuple[int, int, int]]:
    """The 13 directions of 3D at distance 1, one of each opposite pair (their GLCMs are symmetric anyway)."""
    return [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]


# ----------------------------------------------------------------------------------------------------------------
# first order


def _firstorder(values: np.ndarray, gray: np.ndarray, bin_count: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """pyradiomics' first-order features of each voxel's cube: ``values`` (voxel, cube position) its clipped
    intensities, NaN beyond the image's edge; ``gray`` (cube position, voxel) their bins, 0 there."""
    values = np.sort(values, axis=1)  # NaN last; the percentiles read the sorted rows
    count = np.count_nonzero(gray, axis=0)
    add = np.nansum if count.min() < values.shape[1] else np.sum  # NaN only in cubes the image's edge cuts
    mean = add(values, axis=1) / count
    centred = values - mean[:, None]
    squared = centred * centred
    m2, m3, m4 = (add(power, axis=1) / count for power in (squared, squared * centred, squared * squared))
    flat = m2 == 0
    m2_safe = np.where(flat, 1.0, m2)  # pyradiomics: a flat cube has skewness and kurtosis 0
    histogram = _column_bincount(gray, bin_count + 1)[:, 1:] / count[:, None]
    results = {"Mean": mean, "Variance": m2,
               "Skewness": np.where(flat, 0.0, m3 / m2_safe ** 1.5), "Kurtosis": np.where(flat, 0.0, m4 / m2_safe ** 2),
               "Entropy": -np.sum(histogram * np.log2(histogram + EPS), axis=1),
               "Uniformity": np.einsum("ij,ij->i", histogram, histogram)}
    for name, q in (("10Percentile", 10), ("Median", 50), ("90Percentile", 90)):
        if name in names:
            results[name] = _sorted_percentile(values, count, q)
    return {name: results[name] for name in names}


def _sorted_percentile(values: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """numpy's (nan)percentile, linear method, of each row of sorted values whose first ``count`` are numbers."""
    rank = q / 100 * (count - 1)
    below = np.floor(rank).astype(np.intp)
    above = np.minimum(below + 1, count - 1)
    rows = np.arange(len(values))
    low, high = values[rows, below], values[rows, above]
    return low + (high - low) * (rank - below)


def _weighted_sums(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """counts (rows, n) times weights (n,) or (columns, n), row by row: einsum's own loop rather than BLAS, whose
    worker threads spin and slow everything else on a busy two-core machine (as DSCPerfusionLib.leakage found)."""
    weights = np.asarray(weights, dtype=float)
    if weights.ndim == 1:
        return np.einsum("rn,n->r", counts.astype(float), weights)
    return np.einsum("rn,cn->rc", counts.astype(float), np.ascontiguousarray(weights))


def _column_bincount(codes: np.ndarray, size: int) -> np.ndarray:
    """Counts of each code 0..size-1 in each column of a 2D integer array: shape (columns, size). An ``intp``
    array of codes is used up (shifted in place) rather than copied."""
    columns = codes.shape[1]
    shifted = codes.astype(np.intp, copy=False)
    shifted += np.arange(columns) * size
    return np.bincount(shifted.ravel(), minlength=columns * size).reshape(columns, size)


# ----------------------------------------------------------------------------------------------------------------
# GLCM


@lru_cache(maxsize=None)
def _pair_starts(radius: int, direction: tuple[int, int, int]) -> np.ndarray:
    """Cube offsets whose neighbour one step along ``direction`` is in the cube too."""
    cube = _cube(radius)
    return cube[np.all(np.abs(cube + np.array(direction)) <= radius, axis=1)]


@lru_cache(maxsize=None)
def _unordered_pairs(bin_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gray-level pairs {a, b} (1 <= a <= b <= bin_count) and, per ordered code a * (bin_count + 1) + b, the
    index of its unordered pair; codes with a 0 (outside the image) go to one extra index past the pairs."""
    levels = bin_count + 1
    a, b = np.triu_indices(bin_count)
    a, b = a + 1, b + 1
    index = np.full((levels, levels), len(a), dtype=np.intp)
    index[a, b] = index[b, a] = np.arange(len(a))
    return a.astype(float), b.astype(float), index.ravel()


@lru_cache(maxsize=None)
def _glcm_moments(bin_count: int) -> np.ndarray:
    """Per unordered pair {i, j}: what one such pair adds to the symmetric matrix M's f-weighted sum,
    f(i, j) + f(j, i), for f = i, i^2, i*j, 1/(1+(i-j)^2), (i+j)^3, (i+j)^4, then a row of 0 for the pairs
    leaving the image. (M's total, (i-j)^2 and (i+j)^2 follow from these and the counts.)"""
    i, j, _ = _unordered_pairs(bin_count)
    columns = [(i + j) / 2, (i ** 2 + j ** 2) / 2, i * j, 1 / (1 + (i - j) ** 2), (i + j) ** 3, (i + j) ** 4]
    weights = 2 * np.stack(columns, axis=1)
    return np.ascontiguousarray(np.concatenate([weights, np.zeros((1, len(columns)))]).T)


@lru_cache(maxsize=None)
def _count_log_count(largest: int) -> np.ndarray:
    """c * log2(c) for the counts 0..largest (0 for 0): a matrix's entropy from its integer counts."""
    counts = np.arange(largest + 1, dtype=float)
    return counts * np.log2(np.maximum(counts, 1.0))


@lru_cache(maxsize=None)
def _pair_rows(radius: int, direction: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows (cube positions) of the pairs' first and second voxels along ``direction`` inside the cube."""
    position = _cube_position(radius)
    starts = _pair_starts(radius, direction)
    first = [position[tuple(int(x) for x in start)] for start in starts]
    second = [position[tuple(int(x) for x in start + np.array(direction))] for start in starts]
    return np.array(first), np.array(second)


def _glcm(cube_gray: np.ndarray, radius: int, bin_count: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """pyradiomics' GLCM features, each direction's symmetric normalised matrix, averaged over the directions.

    ``cube_gray`` is (cube position, voxel). The symmetric matrix M = C + C^T is never built: the counts U of
    unordered pairs {i, j} hold it (M_ij = M_ji = U_ij off the diagonal, M_ii = 2 U_ii), in half the memory.
    """
    _, _, pair_index = _unordered_pairs(bin_count)
    pairs = bin_count * (bin_count + 1) // 2
    voxels = cube_gray.shape[1]
    totals = {name: np.zeros(voxels) for name in names}
    directions_counted = np.zeros(voxels)
    for direction in _directions():
        first_rows, second_rows = _pair_rows(radius, direction)
        codes = cube_gray[first_rows].astype(np.intp)
        codes *= bin_count + 1
        codes += cube_gray[second_rows]
        counts = _column_bincount(pair_index[codes], pairs + 1)  # the last column: pairs leaving the image
        total = 2.0 * (len(first_rows) - counts[:, -1])  # M's sum
        has_pairs = total > 0
        total[~has_pairs] = 1.0
        moments = _weighted_sums(counts, _glcm_moments(bin_count)) / total[:, None]  # sums of p(i, j) f(i, j)
        for name, value in _glcm_direction_features(moments, counts, total, bin_count, names).items():
            totals[name] += np.where(has_pairs, value, 0.0)
        directions_counted += has_pairs
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: total / directions_counted for name, total in totals.items()}


def _glcm_direction_features(moments: np.ndarray, counts: np.ndarray, total: np.ndarray, bin_count: int,
                             names) -> dict[str, np.ndarray]:
    """One direction's features from the moments (sums of p(i, j) f(i, j) for ``_glcm_moments``' f) and the
    unordered pair counts (voxels, pairs + 1; the last column counts the pairs that leave the image); ``total``
    is M's sum (> 0).

    The central moments are expanded into raw ones: with gray levels at most 255 and float64 sums, the
    cancellation costs less than 1e-9 of a feature's scale; a flat cube's variance comes out exactly 0.
    """
    mean, square, product, idm, sum3, sum4 = moments.T  # mean = mu_x = mu_y: M is symmetric
    contrast = 2 * (square - product)  # sum p (i - j)^2
    features = {"Autocorrelation": product, "Contrast": contrast, "Idm": idm}
    if "Correlation" in names:
        variance = square - mean ** 2  # sigma_x * sigma_y, both equal for a symmetric matrix
        flat = variance <= 1e-9 * np.maximum(square, 1.0)  # one gray level: pyradiomics returns 1
        features["Correlation"] = np.where(flat, 1.0, (product - mean ** 2) / (np.where(flat, 1.0, variance) + EPS))
    if "ClusterShade" in names or "ClusterProminence" in names:
        centre = 2 * mean  # the mean of i + j
        sum2 = 2 * (square + product)  # sum p (i + j)^2
        features["ClusterShade"] = sum3 - 3 * centre * sum2 + 2 * centre ** 3
        features["ClusterProminence"] = sum4 - 4 * centre * sum3 + 6 * centre ** 2 * sum2 - 3 * centre ** 4
    if "JointEnergy" in names or "JointEntropy" in names:
        on_diagonal = counts[:, _diagonal_columns(bin_count)]
    if "JointEnergy" in names:  # sum M^2 = 2 sum U^2 + 2 sum U_ii^2
        squares = np.einsum("ij,ij->i", counts, counts) - counts[:, -1] ** 2
        features["JointEnergy"] = (2 * squares + 2 * np.einsum("ij,ij->i", on_diagonal, on_diagonal)) / total ** 2
    if "JointEntropy" in names:
        # sum M log2 M = 2 sum U log2 U + 2 sum U_ii (log2(2 U_ii) = 1 + log2 U_ii), and -sum p log2 p with
        # p = M / total is log2(total) - sum M log2 M / total
        count_log_count = _count_log_count(int(counts.max(initial=0)))
        entropy_sum = count_log_count[counts].sum(axis=1) - count_log_count[counts[:, -1]]
        features["JointEntropy"] = np.log2(total) - (2 * entropy_sum + 2 * on_diagonal.sum(axis=1)) / total
    return {name: features[name] for name in names}


@lru_cache(maxsize=None)
def _diagonal_columns(bin_count: int) -> np.ndarray:
    """The columns of the unordered pairs {i, i} among the pair counts."""
    i, j, _ = _unordered_pairs(bin_count)
    return np.flatnonzero(i == j)


# ----------------------------------------------------------------------------------------------------------------
# GLRLM


@lru_cache(maxsize=None)
def _line_layout(radius: int, direction: tuple[int, int, int]) -> np.ndarray:
    """The cube's lines along ``direction`` laid end to end, each preceded by a gap, and a gap at the end: the
    rows of the gathered (cube position, voxel) array, a gap being its extra row of 0."""
    step = np.array(direction)
    inside = lambda point: np.all(np.abs(point) <= radius)  # noqa: E731
    position = _cube_position(radius)
    gap = len(position)
    rows = []
    for start in _cube(radius):
        if inside(start - step):
            continue  # not the first voxel of its line
        rows.append(gap)
        point = start
        while inside(point):
            rows.append(position[tuple(int(x) for x in point)])
            point = point + step
    rows.append(gap)
    return np.array(rows)


def _glrlm(cube_gray: np.ndarray, radius: int, bin_count: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """pyradiomics' GLRLM features of each cube, per direction, averaged over the directions."""
    longest = 2 * radius + 1
    voxels = cube_gray.shape[1]
    totals = {name: np.zeros(voxels) for name in names}
    directions_counted = np.zeros(voxels)
    for direction in _directions():
        counts = _run_length_counts(cube_gray[_line_layout(radius, direction)], bin_count, longest)
        has_runs, features = _glrlm_direction_features(counts, longest, names)
        for name, value in features.items():
            totals[name] += np.where(has_runs, value, 0.0)
        directions_counted += has_runs
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: total / directions_counted for name, total in totals.items()}


def _run_length_counts(sequence: np.ndarray, bin_count: int, longest: int) -> np.ndarray:
    """Each voxel's run-length matrix from its lines laid end to end, ``sequence`` (entry, voxel), flattened:
    shape (voxels, (bin_count + 1) * longest), entry gray * longest + length - 1. Gray 0's row holds only, in
    its first entry, the count of the entries that end no run (to be dropped).

    A run ends where the next value differs; its length is the distance to the last change before it (a running
    maximum of the change positions). Gaps and voxels outside the image (0) end runs and are not counted.
    """
    value = sequence[1:-1]  # the first and last entries are gaps
    differs = sequence[1:] != sequence[:-1]  # entry k + 1 against entry k
    position = np.arange(1, len(sequence), dtype=np.intp)[:, None]
    run_start = np.where(differs, position, 0)
    for row in range(1, len(run_start)):  # row by row: numpy's accumulate along the first axis is ~20 times slower
        np.maximum(run_start[row], run_start[row - 1], out=run_start[row])
    ends = differs[1:] & (value > 0)
    codes = value.astype(np.intp)
    codes *= longest
    codes += position[:-1]
    codes -= run_start[:-1]
    codes *= ends
    return _column_bincount(codes, (bin_count + 1) * longest)


def _glrlm_direction_features(counts: np.ndarray, longest: int, names) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which voxels have runs, and the features of one direction's run-length counts (``_run_length_counts``)."""
    not_runs = counts[:, 0]
    by_length = counts.reshape(len(counts), -1, longest).sum(axis=1)
    by_length[:, 0] -= not_runs
    run_count = by_length.sum(axis=1)
    has_runs = run_count > 0
    run_count = np.where(has_runs, run_count, 1).astype(float)
    lengths = np.arange(1, longest + 1, dtype=float)
    features = {}
    if "ShortRunEmphasis" in names:
        features["ShortRunEmphasis"] = _weighted_sums(by_length, 1 / lengths ** 2) / run_count
    if "LongRunEmphasis" in names:
        features["LongRunEmphasis"] = _weighted_sums(by_length, lengths ** 2) / run_count
    if "GrayLevelNonUniformity" in names:
        by_gray = counts.reshape(len(counts), -1, longest)[:, 1:, :].sum(axis=2)
        features["GrayLevelNonUniformity"] = np.einsum("ij,ij->i", by_gray, by_gray) / run_count
    if "RunLengthNonUniformity" in names:
        features["RunLengthNonUniformity"] = np.einsum("ij,ij->i", by_length, by_length) / run_count
    if "RunPercentage" in names:
        features["RunPercentage"] = run_count / np.maximum(_weighted_sums(by_length, lengths), 1.0)
    if "RunEntropy" in names:  # -sum p log2 p with p = runs / run_count
        count_log_count = _count_log_count(int(counts.max(initial=0)))
        entropy_sum = count_log_count[counts].sum(axis=1) - count_log_count[not_runs]
        features["RunEntropy"] = np.log2(run_count) - entropy_sum / run_count
    return has_runs, {name: features[name] for name in names}
