"""Invasion model packages (seed 004, Yan et al. 2020): the registry's ``invasion_models``, safe loading and
packaging, through the small-package machinery shared with the habitat models (``models.small_packages``).

A package is a zip of what ``invasion.classifier.save_classifier`` writes (``invasion_model.json``,
``invasion_weights.npz``) and ``invasion_package.json`` (id, title, training record and held-out evaluation); it is
read without pickle. A model trained on synthetic data says so: "Trained on synthetic data — not for clinical use."
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from GliomaProgressionLib.models.small_packages import (MODEL_ID, SYNTHETIC_NOTICE, PackageKind,  # noqa: F401
                                                         SmallModelPackage, add_to_registry as _add, available,
                                                         load_package, package_file_name, package_model,
                                                         register_main, registry_entry, resolve)

DEFAULT_INVASION_MODEL = "invasion-demo"
InvasionModelPackage = SmallModelPackage


def _load(folder: Path):
    from GliomaProgressionLib.invasion.classifier import load_classifier

    return load_classifier(folder)


def _save(model, folder: Path) -> None:
    from GliomaProgressionLib.invasion.classifier import save_classifier

    save_classifier(model, folder)


KIND = PackageKind(noun="invasion", article="an", registry_key="invasion_models",
                   package_json="invasion_package.json", model_json="invasion_model.json", load=_load, save=_save)
REGISTRY_KEY, PACKAGE_JSON, MODEL_JSON = KIND.registry_key, KIND.package_json, KIND.model_json


def available_invasion_models() -> list[dict]:
    return available(KIND)


def resolve_invasion_model(id_or_path: str | os.PathLike = DEFAULT_INVASION_MODEL) -> SmallModelPackage:
    """A listed invasion model id (sha256-verified against Models.json), or a user's package zip or folder."""
    return resolve(KIND, id_or_path)


def load_invasion_package(path: str | os.PathLike, sha256: str | None = None) -> SmallModelPackage:
    return load_package(KIND, path, sha256)


def package_invasion_model(model, out: str | os.PathLike, meta: dict) -> tuple[Path, str]:
    return package_model(KIND, model, out, meta)


def add_to_registry(entry: dict, zip_path: Path) -> Path:
    """For ``make demo-invasion-model``."""
    return _add(KIND, entry, zip_path)


if __name__ == "__main__":  # python -m GliomaProgressionLib.models.invasion_packages register ENTRY.json ZIP
    register_main(KIND, "GliomaProgressionLib.models.invasion_packages", sys.argv[1:])
