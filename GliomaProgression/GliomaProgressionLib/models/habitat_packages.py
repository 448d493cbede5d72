"""Perfusion-habitat model packages (seed 002, Yun et al. 2023): the registry's ``habitat_models``, safe loading and
packaging, through the small-package machinery shared with the invasion models (``models.small_packages``).

A package is a zip of what ``DSCPerfusionLib.habitats.model.save_model`` writes (``habitat_model.json``,
``encoder.npz``) and ``habitat_package.json`` (id, title, training record); it is read without pickle.
The shipped demo model is trained on synthetic data — not for clinical use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from GliomaProgressionLib.models.small_packages import (MODEL_ID, SYNTHETIC_NOTICE, PackageKind,  # noqa: F401
                                                         SmallModelPackage, add_to_registry as _add, available,
                                                         load_package, package_file_name, package_model,
                                                         register_main, registry_entry, resolve)

DEFAULT_HABITAT_MODEL = "habitats-demo"
HabitatModelPackage = SmallModelPackage


def _load(folder: Path):
    from DSCPerfusionLib.habitats.model import load_model

    return load_model(folder)


def _save(model, folder: Path) -> None:
    from DSCPerfusionLib.habitats.model import save_model

    save_model(model, folder)


KIND = PackageKind(noun="habitat", article="a", registry_key="habitat_models", package_json="habitat_package.json",
                   model_json="habitat_model.json", load=_load, save=_save)
REGISTRY_KEY, PACKAGE_JSON, MODEL_JSON = KIND.registry_key, KIND.package_json, KIND.model_json


def available_habitat_models() -> list[dict]:
    return available(KIND)


def resolve_habitat_model(id_or_path: str | os.PathLike = DEFAULT_HABITAT_MODEL) -> SmallModelPackage:
    """A shipped habitat model id (sha256-verified against Models.json), or a user's package zip or folder."""
    return resolve(KIND, id_or_path)


def load_habitat_package(path: str | os.PathLike, sha256: str | None = None) -> SmallModelPackage:
    return load_package(KIND, path, sha256)


def package_habitat_model(model, out: str | os.PathLike, meta: dict) -> tuple[Path, str]:
    return package_model(KIND, model, out, meta)


def add_to_registry(entry: dict, zip_path: Path) -> Path:
    """For ``make demo-habitat-model``."""
    return _add(KIND, entry, zip_path)


if __name__ == "__main__":  # python -m GliomaProgressionLib.models.habitat_packages register ENTRY.json ZIP
    register_main(KIND, "GliomaProgressionLib.models.habitat_packages", sys.argv[1:])
