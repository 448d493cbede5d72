"""A trained habitat model on disk: ``habitat_model.json`` (settings, centres, labels, metadata) and
``encoder.npz`` (the autoencoder's weights as plain numeric arrays).

Nothing is pickled: the JSON is parsed as data and the weights are read with ``np.load(allow_pickle=False)``,
so a model folder from elsewhere can hold no code. Everything is checked on loading (format, regions, labels
against the habitat vocabulary, centre shapes against the encoder, the curve axis against this library's),
and a bad file is refused in one sentence that names it. Both files are written to temporary names and
renamed, the weights first, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .curves import ARRIVAL_INDEX, CURVE_POINTS, CURVE_STEP_S
from .labels import REGIONS, habitats_of_region

MODEL_FILE = "habitat_model.json"
ENCODER_FILE = "encoder.npz"
MODEL_FORMAT = "gliomaprog-habitat-model"
MODEL_VERSION = 1
SYNTHETIC_NOTICE = "Trained on synthetic data — not for clinical use."


def curve_settings() -> dict:
    """The curve axis this library makes (``curves``): a model must have been trained on the same one."""
    return {"curve_points": CURVE_POINTS, "step_s": CURVE_STEP_S, "arrival_index": ARRIVAL_INDEX,
            "normalisation": "white-matter baseline = 1"}


@dataclass
class HabitatModel:
    """Encoder weights, k-means centres and the habitat key of each cluster, per lesion region."""

    encoder: dict[str, np.ndarray]
    centres: dict[str, np.ndarray]  # region -> (k, latent) float32
    labels: dict[str, list[str]]  # region -> habitat key of each cluster
    curve_settings: dict = field(default_factory=curve_settings)
    training: dict = field(default_factory=dict)  # JSON-serialisable metadata
    synthetic: bool = False
    notice: str = ""

    @property
    def latent(self) -> int:
        return int(np.shape(self.encoder["to_latent.weight"])[0])

    @property
    def k_per_region(self) -> dict[str, int]:
        return {region: len(self.labels[region]) for region in REGIONS}


def _write_atomically(path: Path, write) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def model_document(model: HabitatModel) -> dict:
    """The JSON content of ``habitat_model.json`` for ``model``."""
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "synthetic": bool(model.synthetic),
        "notice": str(model.notice),
        "curve_settings": dict(model.curve_settings),
        "latent": model.latent,
        "regions": {region: {"centres": np.asarray(model.centres[region], np.float64).round(7).tolist(),
                             "labels": list(model.labels[region])} for region in REGIONS},
        "training": model.training,
        "encoder_file": ENCODER_FILE,
    }


def save_model(model: HabitatModel, folder: str | os.PathLike) -> Path:
    """Write ``habitat_model.json`` and ``encoder.npz`` into ``folder`` (created if needed); the folder."""
    _checked_model(model, "The habitat model")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    text = json.dumps(model_document(model), indent=2, allow_nan=False) + "\n"
    arrays = {name: np.asarray(value, np.float32) for name, value in model.encoder.items()}
    _write_atomically(target / ENCODER_FILE, lambda stream: np.savez(stream, **arrays))
    _write_atomically(target / MODEL_FILE, lambda stream: stream.write(text.encode("utf-8")))
    return target


def load_model(folder: str | os.PathLike) -> HabitatModel:
    """Read and check a model folder written by ``save_model``; ValueError naming the file when it is not one."""
    root = Path(folder)
    json_path, npz_path = root / MODEL_FILE, root / ENCODER_FILE
    for path in (json_path, npz_path):
        if not path.is_file():
            raise ValueError(f"The habitat model file {path} does not exist.")
    document = _read_document(json_path)
    encoder = _read_encoder(npz_path)
    try:
        model = HabitatModel(
            encoder=encoder,
            centres={region: np.asarray(document["regions"][region]["centres"], np.float32) for region in REGIONS},
            labels={region: list(document["regions"][region]["labels"]) for region in REGIONS},
            curve_settings=dict(document["curve_settings"]),
            training=dict(document.get("training", {})),
            synthetic=document["synthetic"],
            notice=document.get("notice", ""),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"The habitat model file {json_path} lacks or misstates a field ({error}).") from None
    _checked_model(model, f"The habitat model {json_path}")
    return model


def _read_document(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"The habitat model file {path} could not be read as JSON ({type(error).__name__}).") from None
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise ValueError(f"The file {path} is not a habitat model (its format is not {MODEL_FORMAT}).")
    if document.get("version") != MODEL_VERSION:
        raise ValueError(f"The habitat model file {path} has version {document.get('version')!r}; this library "
                         f"reads version {MODEL_VERSION}.")
    if not isinstance(document.get("regions"), dict) or sorted(document["regions"]) != sorted(REGIONS):
        raise ValueError(f"The habitat model file {path} must give centres and labels for {', '.join(REGIONS)}.")
    return document


def _read_encoder(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"The habitat encoder file {path} could not be read as plain numeric arrays "
                         f"({type(error).__name__}).") from None
    if not all(array.dtype.kind == "f" for array in arrays.values()):
        raise ValueError(f"The habitat encoder file {path} holds arrays that are not floating point.")
    return arrays


def _checked_model(model: HabitatModel, subject: str) -> None:
    from .autoencoder import architecture_of  # torch is needed only once a model is used

    if not isinstance(model.synthetic, bool):
        raise ValueError(f"{subject} must say whether it was trained on synthetic data (true or false).")
    if model.curve_settings != curve_settings():
        raise ValueError(f"{subject} was made for another curve axis ({model.curve_settings}), not "
                         f"{curve_settings()}.")
    try:
        n_points, latent = architecture_of(model.encoder)
    except ValueError as error:
        raise ValueError(f"{subject}: {str(error)[0].lower()}{str(error)[1:]}") from None
    if n_points != CURVE_POINTS:
        raise ValueError(f"{subject} has an encoder for {n_points}-point curves, not {CURVE_POINTS}.")
    for region in REGIONS:
        centres, labels = np.asarray(model.centres.get(region)), model.labels.get(region)
        if centres.ndim != 2 or centres.shape[1] != latent or centres.shape[0] < 1:
            raise ValueError(f"{subject} has {region} centres of shape {centres.shape}, not (k, {latent}).")
        if not np.all(np.isfinite(centres)):
            raise ValueError(f"{subject} has NaN or infinite {region} centres.")
        allowed = habitats_of_region(region)
        if not isinstance(labels, list) or len(labels) != centres.shape[0] or any(
                label not in allowed for label in labels):
            raise ValueError(f"{subject} must name each of its {centres.shape[0]} {region} patterns with one of "
                             f"{', '.join(allowed)}.")
    try:
        json.dumps(model.training, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{subject} has training metadata that is not plain JSON.") from None
