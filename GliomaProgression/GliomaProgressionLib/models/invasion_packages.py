"""Invasion model packages (seed 004, Yan et al. 2020): the registry's ``invasion_models``, safe loading and
packaging.

An invasion model is small (an MLP's weights, the imputer's and scaler's statistics, the channel and feature names
and the feature settings), so a package is a zip of what ``invasion.classifier.save_classifier`` writes
(``invasion_model.json``, ``invasion_weights.npz``) and ``invasion_package.json`` (id, title, training record and
held-out evaluation). Loading one:

- checks the zip's sha256 against ``Models.json`` for a listed model (a tampered zip is refused);
- refuses unsafe archives with the progression packages' own checks (``packages.check_archive``: absolute paths,
  ``..``, links, encrypted or repeated entries, implausible sizes);
- unpacks into a temporary folder removed afterwards (nothing is cached: it takes milliseconds) and reads the model
  with ``classifier.load_classifier``, which reads JSON and arrays without pickle: no code from a package ever runs.

A model trained on synthetic data says so: "Trained on synthetic data — not for clinical use."
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# models.packages (and through it numpy, SimpleITK) is imported by the functions: the command line imports this module
# to build its parser.

DEFAULT_INVASION_MODEL = "invasion-demo"
REGISTRY_KEY = "invasion_models"  # Models.json's list of invasion models, beside the progression "models"
PACKAGE_JSON = "invasion_package.json"
MODEL_JSON = "invasion_model.json"  # written by invasion.classifier.save_classifier
SYNTHETIC_NOTICE = "Trained on synthetic data — not for clinical use."
MODEL_ID = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class InvasionModelPackage:
    """A loaded invasion model and what the outputs record about it."""

    id: str
    title: str
    model: object  # invasion.classifier.InvasionClassifier
    sha256: str | None
    synthetic: bool
    description: str = ""
    source: str = ""  # "Models.json" or the zip/folder it was read from
    extra: dict = field(default_factory=dict)  # the rest of the entry (training record, ...)

    @property
    def notice(self) -> str:
        return SYNTHETIC_NOTICE if self.synthetic else ""

    def info(self) -> dict:
        """The ``model`` block of invasion.json."""
        return {"id": self.id, "title": self.title, "sha256": self.sha256, "synthetic": self.synthetic,
                "notice": self.notice, "source": self.source}


# --- registry -------------------------------------------------------------------------------------------------


def available_invasion_models() -> list[dict]:
    """The ``invasion_models`` entries of Resources/Models.json (an empty list when there are none)."""
    from GliomaProgressionLib.models.packages import registry_path

    path = registry_path()
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get(REGISTRY_KEY, []))


def _registry_entry(model_id: str) -> dict | None:
    return next((entry for entry in available_invasion_models() if entry.get("id") == model_id), None)


# --- loading ----------------------------------------------------------------------------------------------------


def resolve_invasion_model(id_or_path: str | os.PathLike = DEFAULT_INVASION_MODEL) -> InvasionModelPackage:
    """A listed invasion model id (sha256-verified against Models.json), or a user's package zip or folder."""
    from GliomaProgressionLib.models.packages import resources_folder, sha256_file

    entry = _registry_entry(str(id_or_path))
    if entry is not None:
        path = resources_folder() / entry["file"]
        if not path.is_file():
            raise ValueError(f"The invasion model {entry['id']!r} is listed in Models.json but its file {path} is "
                             "missing.")
        digest = sha256_file(path)
        if entry.get("sha256") and digest != entry["sha256"]:
            raise ValueError(f"The invasion model package {path.name} is corrupt or has been tampered with: its sha256 "
                             f"is {digest}, Models.json expects {entry['sha256']}.")
        package = load_invasion_package(path, digest)
        return _with_entry(package, entry)
    path = Path(str(id_or_path)).expanduser()
    if path.exists():
        return load_invasion_package(path, sha256_file(path) if path.is_file() else None)
    known = ", ".join(e.get("id", "?") for e in available_invasion_models()) or "none"
    raise ValueError(f"Unknown invasion model {str(id_or_path)!r}: not a listed invasion model id ({known}) and not a "
                     "zip or folder.")


def _with_entry(package: InvasionModelPackage, entry: dict) -> InvasionModelPackage:
    """The registry entry's words win over the package's own (as for the progression models)."""
    package.id = str(entry.get("id", package.id))
    package.title = str(entry.get("title", package.title))
    package.description = str(entry.get("description", package.description))
    package.synthetic = bool(entry.get("synthetic", package.synthetic))
    package.source = "Models.json"
    package.extra.update({k: v for k, v in entry.items() if k not in ("id", "title", "description", "synthetic")})
    return package


def load_invasion_package(path: str | os.PathLike, sha256: str | None = None) -> InvasionModelPackage:
    """An invasion model package (zip, or the folder ``save_classifier`` wrote) read safely; ValueError naming it
    else."""
    from GliomaProgressionLib.models.packages import _MemberReader, _open_archive, check_archive

    path = Path(path)
    if path.is_dir():
        return _package_from_folder(path, str(path), sha256)
    if not path.is_file():
        raise ValueError(f"The invasion model package {path} does not exist.")
    label = str(path)
    with _open_archive(path, label) as archive:
        members = check_archive(archive, f"package {path.name}")
        with tempfile.TemporaryDirectory(prefix=".invasion-model-") as temporary:
            folder = Path(temporary)
            for member in members:
                if member.is_dir():
                    continue
                destination = folder.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with _MemberReader(archive, member, label) as source:
                    destination.write_bytes(source.read())
            return _package_from_folder(_model_folder(folder, label), label, sha256)


def _model_folder(root: Path, label: str) -> Path:
    """The folder of the package holding invasion_model.json (the shallowest; one only)."""
    found = sorted((p.parent for p in root.rglob(MODEL_JSON)), key=lambda p: len(p.parts))
    if not found:
        raise ValueError(f"The invasion model package {label} has no {MODEL_JSON}; is it an invasion model?")
    return found[0]


def _package_from_folder(folder: Path, label: str, sha256: str | None) -> InvasionModelPackage:
    from GliomaProgressionLib.invasion.classifier import load_classifier

    from GliomaProgressionLib.case.files import read_json_object

    meta = read_json_object(folder / PACKAGE_JSON, "invasion package metadata") if (folder / PACKAGE_JSON).is_file() \
        else {}
    try:
        model = load_classifier(folder)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"The invasion model package {label} cannot be loaded ({reason}).") from None
    known = ("id", "title", "description", "synthetic")
    return InvasionModelPackage(id=str(meta.get("id") or folder.name), title=str(meta.get("title") or folder.name),
                               model=model, sha256=sha256,
                               synthetic=bool(meta.get("synthetic", getattr(model, "synthetic", False))),
                               description=str(meta.get("description", "")), source=Path(label).name,
                               extra={k: v for k, v in meta.items() if k not in known})


# --- packaging ----------------------------------------------------------------------------------------------------


def package_invasion_model(model, out: str | os.PathLike, meta: dict) -> tuple[Path, str]:
    """Write ``model`` and ``meta`` (id, title, description, synthetic, training) as the new zip ``out``, fixed
    dates and modes (same model, same bytes); returns (path, sha256). The zip appears complete or not at all."""
    from GliomaProgressionLib.invasion.classifier import save_classifier

    from GliomaProgressionLib.models.packages import sha256_file
    from GliomaProgressionLib.models.training import zip_folder

    model_id = str(meta.get("id", ""))
    if not MODEL_ID.fullmatch(model_id):
        raise ValueError(f"The invasion model id must be letters, digits, '.', '_' or '-', got {model_id!r}.")
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"The invasion model package {out} must end in .zip.")
    if out.exists():
        raise ValueError(f"The invasion model package {out} already exists; choose a new file name.")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".invasion-package-", dir=out.absolute().parent) as temporary:
        staging = Path(temporary) / model_id
        staging.mkdir()
        save_classifier(model, staging)
        (staging / PACKAGE_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        zip_folder(staging, out)
    return out, sha256_file(out)


def package_file_name(model_id: str) -> str:
    """A package's file name: its id, with '_' for '-' ("invasion-demo" -> invasion_demo.zip)."""
    return f"{model_id.replace('-', '_')}.zip"


def registry_entry(meta: dict, zip_path: Path, sha256: str) -> dict:
    """The ``invasion_models`` entry of Models.json for a package (its file under Resources/models/)."""
    return {**{k: meta[k] for k in ("id", "title", "description", "synthetic") if k in meta},
            "file": f"models/{Path(zip_path).name}", "sha256": sha256, "size_bytes": Path(zip_path).stat().st_size,
            "licence": "Apache-2.0", **{k: v for k, v in meta.items()
                                        if k not in ("id", "title", "description", "synthetic")}}


def add_to_registry(entry: dict, zip_path: Path) -> Path:
    """Copy a package into Resources/models/ and put its entry in Models.json's ``invasion_models`` (replacing one
    with the same id); both written atomically. For a demo invasion model."""
    import shutil

    from GliomaProgressionLib.case.files import write_text
    from GliomaProgressionLib.models.packages import registry_path, resources_folder

    target = resources_folder() / entry["file"]
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(zip_path, temporary)
    os.replace(temporary, target)
    registry = json.loads(registry_path().read_text(encoding="utf-8"))
    others = [e for e in registry.get(REGISTRY_KEY, []) if e.get("id") != entry["id"]]
    registry[REGISTRY_KEY] = others + [entry]
    write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n", registry_path())
    return target


if __name__ == "__main__":  # python -m GliomaProgressionLib.models.invasion_packages register ENTRY.json ZIP
    import sys

    from GliomaProgressionLib.models.packages import registry_path

    if len(sys.argv) != 4 or sys.argv[1] != "register":
        sys.exit("usage: python -m GliomaProgressionLib.models.invasion_packages register ENTRY.json PACKAGE.zip")
    placed = add_to_registry(json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")), Path(sys.argv[3]))
    print(f"{placed} registered in {registry_path()}")
