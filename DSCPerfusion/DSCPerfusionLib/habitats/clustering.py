"""k-means on the latent curve features, the number of patterns chosen by silhouette (Yun et al. 2023).

For each k in ``k_range`` (both ends included) scikit-learn's KMeans is fitted on at most ``max_samples``
latent vectors (a seeded random subset; k-means centres settle long before 20 000 points) and the mean
silhouette score is computed on at most ``SILHOUETTE_SAMPLES`` of them (silhouette costs the square of the
number of points). The k with the highest score wins; ties go to the smaller k. Assigning a voxel to its
nearest centre needs only numpy, so applying a model does not need scikit-learn.
"""

from __future__ import annotations

import numpy as np

DEFAULT_K_RANGE = (2, 6)
DEFAULT_MAX_SAMPLES = 20000
SILHOUETTE_SAMPLES = 4000
KMEANS_INITIALISATIONS = 4


def checked_k_range(k_range) -> tuple[int, int]:
    try:
        low, high = (int(value) for value in k_range)
    except (TypeError, ValueError):
        raise ValueError(f"The range of pattern counts must be two whole numbers (low, high), got "
                         f"{k_range!r}.") from None
    if not 2 <= low <= high <= 20:
        raise ValueError(f"The range of pattern counts must satisfy 2 <= low <= high <= 20, got ({low}, {high}).")
    return low, high


def fit_kmeans(
    latent: np.ndarray,
    k_range=DEFAULT_K_RANGE,
    seed: int = 0,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> tuple[np.ndarray, int, dict[int, float]]:
    """(centres (k, D) float32, chosen k, {k: silhouette score}) for latent features (N, D)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    low, high = checked_k_range(k_range)
    points = np.asarray(latent, dtype=np.float64)
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"The latent features must be a finite (N, D) array, got shape {points.shape}.")
    if points.shape[0] < 2 * low:
        raise ValueError(f"{points.shape[0]} curves are too few to look for {low} patterns "
                         f"(at least {2 * low} are needed).")
    high = min(high, points.shape[0] // 2)
    rng = np.random.default_rng(seed)
    fitted = points
    if points.shape[0] > max_samples:
        fitted = points[rng.choice(points.shape[0], max_samples, replace=False)]
    scored = fitted[rng.choice(fitted.shape[0], min(SILHOUETTE_SAMPLES, fitted.shape[0]), replace=False)]
    scores, centres = {}, {}
    for k in range(low, high + 1):
        kmeans = KMeans(n_clusters=k, n_init=KMEANS_INITIALISATIONS, random_state=seed).fit(fitted)
        labels = assign(scored, kmeans.cluster_centers_)
        scores[k] = float(silhouette_score(scored, labels)) if np.unique(labels).size > 1 else -1.0
        centres[k] = kmeans.cluster_centers_.astype(np.float32)
    best = max(scores, key=lambda k: (scores[k], -k))
    return centres[best], best, scores


def assign(latent: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index (N,) int64 of the nearest centre (Euclidean) of each latent vector (N, D)."""
    points = np.asarray(latent, dtype=np.float64)
    centre_array = np.asarray(centres, dtype=np.float64)
    if points.ndim != 2 or centre_array.ndim != 2 or points.shape[1] != centre_array.shape[1]:
        raise ValueError(f"The latent features {points.shape} and centres {centre_array.shape} do not match.")
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every centre.
    distances = -2.0 * points @ centre_array.T + (centre_array**2).sum(axis=1)
    return np.argmin(distances, axis=1)
