"""The voxel-wise invasion classifier (seed 004: Yan et al. 2020, Sci Rep 10:9748) and its pickle-free file format.

Yan et al. classify each peritumoral voxel as future progression or not with a neural network fed the voxel's local
radiomics features from every map (294 features from 7 maps). Here: scikit-learn's ``MLPClassifier`` in a
``Pipeline`` after mean imputation (a texture feature is undefined in a flat neighbourhood; ``SimpleImputer``) and
standardisation (``StandardScaler``). A feature is named ``<channel>:<feature>`` (``flair:firstorder_Mean``).

Sampling: every training patient gives the same number of voxels of each class (at most ``voxels_per_class``,
drawn without replacement; all of a class when it has fewer), so a patient with a large peritumoral region does
not outweigh a small one, and the two classes weigh about alike.

Saving never uses pickle: ``invasion_model.json`` holds the format, the channels and feature names, the feature
settings (radius, bin count, grid spacing), the architecture, the imputer's and scaler's statistics, the decision
threshold and the training record; ``invasion_weights.npz`` holds the network's weight matrices and biases, read with
``allow_pickle=False``. ``load_classifier`` builds the scikit-learn objects back from them, so a saved and
reloaded model gives the same probabilities bit for bit.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL_JSON = "invasion_model.json"
WEIGHTS_NPZ = "invasion_weights.npz"
FORMAT = "gliomaprog-invasion-mlp/1"
DEFAULT_HIDDEN_LAYERS = (32, 16)
DEFAULT_VOXELS_PER_CLASS = 400
DEFAULT_THRESHOLD = 0.5


@dataclass
class InvasionClassifier:
    """A trained voxel classifier and the settings its features must be computed with."""

    channels: tuple[str, ...]  # in the order of the feature columns
    features: tuple[str, ...]  # the feature names ``invasion.features.local_feature_maps`` returns, per channel
    radius: int  # the local window's radius, voxels
    bin_count: int  # grey levels of the texture features
    spacing_mm: float  # the isotropic reference grid the features were computed on
    pipeline: object  # sklearn Pipeline: SimpleImputer -> StandardScaler -> MLPClassifier
    threshold: float = DEFAULT_THRESHOLD
    training: dict = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.channels, self.features)

    def probability(self, matrix: np.ndarray) -> np.ndarray:
        """P(progression) of each row of a feature matrix whose columns are ``feature_names``."""
        matrix = np.asarray(matrix, np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(f"The feature matrix has shape {matrix.shape}; the invasion model expects "
                             f"{len(self.feature_names)} features per voxel.")
        if len(matrix) == 0:
            return np.zeros(0)
        return self.pipeline.predict_proba(matrix)[:, 1]


def feature_names(channels, features) -> list[str]:
    return [f"{channel}:{feature}" for channel in channels for feature in features]


# --- training -----------------------------------------------------------------------------------------------------


def balanced_sample(labels: np.ndarray, voxels_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``voxels_per_class`` voxels of each class (0 and 1) of one patient, without replacement."""
    chosen = []
    for value in (0, 1):
        where = np.flatnonzero(np.asarray(labels) == value)
        if len(where) > voxels_per_class:
            where = rng.choice(where, voxels_per_class, replace=False)
        chosen.append(np.sort(where))
    return np.concatenate(chosen)


def train_classifier(patients: list[tuple[np.ndarray, np.ndarray]], *, channels, features, radius: int,
                     bin_count: int, spacing_mm: float, hidden_layers=DEFAULT_HIDDEN_LAYERS,
                     voxels_per_class: int = DEFAULT_VOXELS_PER_CLASS, max_iter: int = 300, alpha: float = 1e-3,
                     seed: int = 0, training: dict | None = None) -> InvasionClassifier:
    """Fit the classifier on each patient's (feature matrix, 0/1 labels) of its labelled voxels, sampled in balance
    per patient and class."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    names = feature_names(channels, features)
    if voxels_per_class < 1:
        raise ValueError(f"The voxels sampled per patient and class must be at least 1, got {voxels_per_class}.")
    rng = np.random.default_rng(seed)
    matrices, targets = [], []
    for matrix, labels in patients:
        matrix, labels = np.asarray(matrix), np.asarray(labels)
        if matrix.shape != (len(labels), len(names)):
            raise ValueError(f"A training patient's feature matrix has shape {matrix.shape}; {len(labels)} voxels "
                             f"of {len(names)} features were expected.")
        chosen = balanced_sample(labels, voxels_per_class, rng)
        matrices.append(matrix[chosen])
        targets.append(labels[chosen])
    matrix = np.concatenate(matrices).astype(np.float64) if matrices else np.zeros((0, len(names)))
    target = np.concatenate(targets).astype(int) if targets else np.zeros(0, int)
    for value, what in ((1, "progression"), (0, "non-progression")):
        if not (target == value).any():
            raise ValueError(f"The training cases hold no {what} voxel; the invasion classifier needs both classes.")
    pipeline = Pipeline([
        ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("mlp", MLPClassifier(hidden_layer_sizes=tuple(int(n) for n in hidden_layers), alpha=alpha,
                              max_iter=max_iter, random_state=seed)),
    ])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline.fit(matrix, target)
    mlp = pipeline.named_steps["mlp"]
    record = {**(training or {}), "patients": len(patients), "voxels": int(len(target)),
              "progression_voxels": int(target.sum()), "non_progression_voxels": int((target == 0).sum()),
              "voxels_per_class": int(voxels_per_class), "hidden_layers": list(mlp.hidden_layer_sizes),
              "alpha": alpha, "max_iter": max_iter, "iterations": int(mlp.n_iter_), "final_loss": float(mlp.loss_),
              "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught), "seed": seed,
              "training_accuracy": float((pipeline.predict(matrix) == target).mean())}
    return InvasionClassifier(tuple(channels), tuple(features), int(radius), int(bin_count), float(spacing_mm),
                              pipeline, DEFAULT_THRESHOLD, record)


# --- saving and loading without pickle ----------------------------------------------------------------------------


def save_classifier(classifier: InvasionClassifier, folder: str | Path) -> list[Path]:
    """Write ``invasion_model.json`` and ``invasion_weights.npz`` into ``folder``; returns their paths."""
    impute, scale, mlp = (classifier.pipeline.named_steps[name] for name in ("impute", "scale", "mlp"))
    folder = Path(folder)
    description = {
        "format": FORMAT,
        "channels": list(classifier.channels),
        "features": list(classifier.features),
        "feature_names": classifier.feature_names,
        "feature_settings": {"radius": classifier.radius, "bin_count": classifier.bin_count,
                             "spacing_mm": classifier.spacing_mm},
        "threshold": classifier.threshold,
        "architecture": {"hidden_layers": [int(n) for n in mlp.hidden_layer_sizes], "activation": mlp.activation,
                         "out_activation": mlp.out_activation_, "classes": [int(c) for c in mlp.classes_],
                         "layers": int(mlp.n_layers_)},
        "imputer": {"strategy": impute.strategy, "statistics": [float(v) for v in impute.statistics_]},
        "scaler": {"mean": [float(v) for v in scale.mean_], "scale": [float(v) for v in scale.scale_],
                   "var": [float(v) for v in scale.var_], "samples_seen": int(scale.n_samples_seen_)},
        "training": classifier.training,
    }
    weights = {**{f"coef_{i}": w for i, w in enumerate(mlp.coefs_)},
               **{f"intercept_{i}": b for i, b in enumerate(mlp.intercepts_)}}
    json_path, npz_path = folder / MODEL_JSON, folder / WEIGHTS_NPZ
    json_path.write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(npz_path, "wb") as stream:
        np.savez(stream, **weights)
    return [json_path, npz_path]


def load_classifier(folder: str | Path) -> InvasionClassifier:
    """The classifier ``save_classifier`` wrote into ``folder``; ValueError in one sentence if anything is off."""
    folder = Path(folder)
    try:
        description = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
        weights = _read_weights(folder / WEIGHTS_NPZ)
        return _classifier_from(description, weights)
    except FileNotFoundError as error:
        raise ValueError(f"The invasion model in {folder} has no {Path(error.filename).name}.") from None
    except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"The invasion model in {folder} is malformed ({type(error).__name__}: {error}).") from None


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The weight arrays, read without pickle: an object array (which could run code) is refused."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: np.array(stored[name]) for name in stored.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"The invasion model's weights {path.name} cannot be read ({reason}).") from None


def _classifier_from(description: dict, weights: dict[str, np.ndarray]) -> InvasionClassifier:
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if description.get("format") != FORMAT:
        raise ValueError(f"The invasion model's format is {description.get('format')!r}; this version reads "
                         f"{FORMAT!r}.")
    channels, features = tuple(description["channels"]), tuple(description["features"])
    count = len(feature_names(channels, features))
    architecture, settings = description["architecture"], description["feature_settings"]
    layers = int(architecture["layers"])
    coefs = [np.asarray(weights[f"coef_{i}"], np.float64) for i in range(layers - 1)]
    intercepts = [np.asarray(weights[f"intercept_{i}"], np.float64) for i in range(layers - 1)]
    sizes = [count, *architecture["hidden_layers"], 1]
    if [c.shape for c in coefs] != list(zip(sizes[:-1], sizes[1:])) or \
            [b.shape for b in intercepts] != [(n,) for n in sizes[1:]]:
        raise ValueError(f"The invasion model's weights do not fit its {count} features and hidden layers "
                         f"{architecture['hidden_layers']}.")
    statistics = _vector(description["imputer"]["statistics"], count, "imputer statistics")
    pipeline = Pipeline([
        ("impute", SimpleImputer(strategy=description["imputer"]["strategy"], keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("mlp", MLPClassifier(hidden_layer_sizes=tuple(architecture["hidden_layers"]),
                              activation=architecture["activation"], max_iter=1)),
    ])
    # scikit-learn sets its private state by fitting: fit on two stand-in voxels (one per class), then put the
    # saved statistics and weights in the public attributes they were read from.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(np.vstack([statistics, statistics]), np.asarray(architecture["classes"]))
    impute, scale, mlp = (pipeline.named_steps[name] for name in ("impute", "scale", "mlp"))
    impute.statistics_ = statistics
    scale.mean_ = _vector(description["scaler"]["mean"], count, "scaler mean")
    scale.scale_ = _vector(description["scaler"]["scale"], count, "scaler scale")
    scale.var_ = _vector(description["scaler"]["var"], count, "scaler variance")
    scale.n_samples_seen_ = int(description["scaler"]["samples_seen"])
    mlp.coefs_, mlp.intercepts_ = coefs, intercepts
    if mlp.out_activation_ != architecture["out_activation"]:
        raise ValueError(f"The invasion model's output activation is {architecture['out_activation']!r}; a binary "
                         f"classifier's is {mlp.out_activation_!r}.")
    return InvasionClassifier(channels, features, int(settings["radius"]), int(settings["bin_count"]),
                              float(settings["spacing_mm"]), pipeline, float(description["threshold"]),
                              dict(description.get("training", {})))


def _vector(values, count: int, what: str) -> np.ndarray:
    vector = np.asarray(values, np.float64)
    if vector.shape != (count,):
        raise ValueError(f"The invasion model's {what} has {vector.size} values for {count} features.")
    return vector
