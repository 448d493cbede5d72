"""Small model packages beside the progression models: the perfusion-habitat models (seed 002) and the invasion
models (seed 004) share one registry format, one safe loader and one packager, each parametrised by its
``PackageKind``.

Such a model is small (a few arrays and a JSON description), so a package is a zip of what the kind's ``save`` writes
and a package JSON (id, title, training record). Loading one:

- checks the zip's sha256 against ``Models.json`` for a listed model (a tampered zip is refused);
- refuses unsafe archives with the progression packages' own checks (``packages.check_archive``: absolute paths,
  ``..``, links, encrypted or repeated entries, implausible sizes);
- unpacks into a temporary folder removed afterwards (nothing is cached: it takes milliseconds) and reads the model
  with the kind's ``load``, which reads JSON and arrays without pickle: no code from a package ever runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

# models.packages (and through it numpy, SimpleITK) is imported by the functions: the command line imports the
# kinds' modules to build its parser.

SYNTHETIC_NOTICE = "Trained on synthetic data — not for clinical use."
MODEL_ID = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PackageKind:
    """One kind of small model: its name in messages, its list in Models.json, its files, and how its model folder
    is read and written."""

    noun: str  # "habitat", "invasion"
    article: str  # "a", "an"
    registry_key: str  # Models.json's list, beside the progression "models"
    package_json: str
    model_json: str  # the file the kind's save writes (how a package is recognised)
    load: Callable[[Path], object]
    save: Callable[[object, Path], None]


@dataclass
class SmallModelPackage:
    """A loaded model of one kind and what the outputs record about it."""

    id: str
    title: str
    model: object  # the kind's model (HabitatModel, InvasionClassifier)
    sha256: str | None
    synthetic: bool
    description: str = ""
    source: str = ""  # "Models.json" or the zip/folder it was read from
    extra: dict = field(default_factory=dict)  # the rest of the entry (training record, ...)

    @property
    def notice(self) -> str:
        return SYNTHETIC_NOTICE if self.synthetic else ""

    def info(self) -> dict:
        """The ``model`` block of the outputs' JSON (habitats.json, invasion.json)."""
        return {"id": self.id, "title": self.title, "sha256": self.sha256, "synthetic": self.synthetic,
                "notice": self.notice, "source": self.source}


# --- registry -------------------------------------------------------------------------------------------------


def available(kind: PackageKind) -> list[dict]:
    """The kind's entries of Resources/Models.json (an empty list when there are none)."""
    from GliomaProgressionLib.models.packages import registry_path

    path = registry_path()
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get(kind.registry_key, []))


def _registry_entry(kind: PackageKind, model_id: str) -> dict | None:
    return next((entry for entry in available(kind) if entry.get("id") == model_id), None)


# --- loading ----------------------------------------------------------------------------------------------------


def resolve(kind: PackageKind, id_or_path: str | os.PathLike) -> SmallModelPackage:
    """A listed model id (sha256-verified against Models.json), or a user's package zip or folder."""
    from GliomaProgressionLib.models.packages import resources_folder, sha256_file

    entry = _registry_entry(kind, str(id_or_path))
    if entry is not None:
        path = resources_folder() / entry["file"]
        if not path.is_file():
            raise ValueError(f"The {kind.noun} model {entry['id']!r} is listed in Models.json but its file {path} is "
                             "missing.")
        digest = sha256_file(path)
        if entry.get("sha256") and digest != entry["sha256"]:
            raise ValueError(f"The {kind.noun} model package {path.name} is corrupt or has been tampered with: its sha256 "
                             f"is {digest}, Models.json expects {entry['sha256']}.")
        package = load_package(kind, path, digest)
        return _with_entry(package, entry)
    path = Path(str(id_or_path)).expanduser()
    if path.exists():
        return load_package(kind, path, sha256_file(path) if path.is_file() else None)
    known = ", ".join(e.get("id", "?") for e in available(kind)) or "none"
    raise ValueError(f"Unknown {kind.noun} model {str(id_or_path)!r}: not a listed {kind.noun} model id ({known}) and "
                     "not a zip or folder.")


def _with_entry(package: SmallModelPackage, entry: dict) -> SmallModelPackage:
    """The registry entry's words win over the package's own (as for the progression models)."""
    package.id = str(entry.get("id", package.id))
    package.title = str(entry.get("title", package.title))
    package.description = str(entry.get("description", package.description))
    package.synthetic = bool(entry.get("synthetic", package.synthetic))
    package.source = "Models.json"
    package.extra.update({k: v for k, v in entry.items() if k not in ("id", "title", "description", "synthetic")})
    return package


def load_package(kind: PackageKind, path: str | os.PathLike, sha256: str | None = None) -> SmallModelPackage:
    """A package of the kind (zip, or the folder its ``save`` wrote) read safely; ValueError naming it else."""
    from GliomaProgressionLib.models.packages import _MemberReader, _open_archive, check_archive

    path = Path(path)
    if path.is_dir():
        return _package_from_folder(kind, path, str(path), sha256)
    if not path.is_file():
        raise ValueError(f"The {kind.noun} model package {path} does not exist.")
    label = str(path)
    with _open_archive(path, label) as archive:
        members = check_archive(archive, f"package {path.name}")
        with tempfile.TemporaryDirectory(prefix=f".{kind.noun}-model-") as temporary:
            folder = Path(temporary)
            for member in members:
                if member.is_dir():
                    continue
                destination = folder.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with _MemberReader(archive, member, label) as source:
                    destination.write_bytes(source.read())
            return _package_from_folder(kind, _model_folder(kind, folder, label), label, sha256)


def _model_folder(kind: PackageKind, root: Path, label: str) -> Path:
    """The folder of the package holding the kind's model JSON (the shallowest)."""
    found = sorted((p.parent for p in root.rglob(kind.model_json)), key=lambda p: len(p.parts))
    if not found:
        raise ValueError(f"The {kind.noun} model package {label} has no {kind.model_json}; is it {kind.article} "
                         f"{kind.noun} model?")
    return found[0]


def _package_from_folder(kind: PackageKind, folder: Path, label: str, sha256: str | None) -> SmallModelPackage:
    from GliomaProgressionLib.case.files import read_json_object

    meta_file = folder / kind.package_json
    meta = read_json_object(meta_file, f"{kind.noun} package metadata") if meta_file.is_file() else {}
    try:
        model = kind.load(folder)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"The {kind.noun} model package {label} cannot be loaded ({reason}).") from None
    known = ("id", "title", "description", "synthetic")
    return SmallModelPackage(id=str(meta.get("id") or folder.name), title=str(meta.get("title") or folder.name),
                             model=model, sha256=sha256,
                             synthetic=bool(meta.get("synthetic", getattr(model, "synthetic", False))),
                             description=str(meta.get("description", "")), source=Path(label).name,
                             extra={k: v for k, v in meta.items() if k not in known})


# --- packaging ----------------------------------------------------------------------------------------------------


def package_model(kind: PackageKind, model, out: str | os.PathLike, meta: dict) -> tuple[Path, str]:
    """Write ``model`` and ``meta`` (id, title, description, synthetic, training) as the new zip ``out``, fixed
    dates and modes (same model, same bytes); returns (path, sha256). The zip appears complete or not at all."""
    from GliomaProgressionLib.models.packages import sha256_file
    from GliomaProgressionLib.models.training import zip_folder

    model_id = str(meta.get("id", ""))
    if not MODEL_ID.fullmatch(model_id):
        raise ValueError(f"The {kind.noun} model id must be letters, digits, '.', '_' or '-', got {model_id!r}.")
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"The {kind.noun} model package {out} must end in .zip.")
    if out.exists():
        raise ValueError(f"The {kind.noun} model package {out} already exists; choose a new file name.")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{kind.noun}-package-", dir=out.absolute().parent) as temporary:
        staging = Path(temporary) / model_id
        staging.mkdir()
        kind.save(model, staging)
        (staging / kind.package_json).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        zip_folder(staging, out)
    return out, sha256_file(out)


def package_file_name(model_id: str) -> str:
    """A package's file name: its id, with '_' for '-' ("habitats-demo" -> habitats_demo.zip)."""
    return f"{model_id.replace('-', '_')}.zip"


def registry_entry(meta: dict, zip_path: Path, sha256: str) -> dict:
    """The Models.json entry of a package (its file under Resources/models/)."""
    return {**{k: meta[k] for k in ("id", "title", "description", "synthetic") if k in meta},
            "file": f"models/{Path(zip_path).name}", "sha256": sha256, "size_bytes": Path(zip_path).stat().st_size,
            "licence": "Apache-2.0", **{k: v for k, v in meta.items()
                                        if k not in ("id", "title", "description", "synthetic")}}


def add_to_registry(kind: PackageKind, entry: dict, zip_path: Path) -> Path:
    """Copy a package into Resources/models/ and put its entry in the kind's list of Models.json (replacing one
    with the same id); both written atomically. For the demo models' make targets."""
    import shutil

    from GliomaProgressionLib.case.files import write_text
    from GliomaProgressionLib.models.packages import registry_path, resources_folder

    target = resources_folder() / entry["file"]
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(zip_path, temporary)
    os.replace(temporary, target)
    registry = json.loads(registry_path().read_text(encoding="utf-8"))
    others = [e for e in registry.get(kind.registry_key, []) if e.get("id") != entry["id"]]
    registry[kind.registry_key] = others + [entry]
    write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n", registry_path())
    return target


def register_main(kind: PackageKind, module: str, argv: list[str]) -> None:
    """``python -m MODULE register ENTRY.json PACKAGE.zip``: what the demo models' make targets run."""
    import sys

    from GliomaProgressionLib.models.packages import registry_path

    if len(argv) != 3 or argv[0] != "register":
        sys.exit(f"usage: python -m {module} register ENTRY.json PACKAGE.zip")
    placed = add_to_registry(kind, json.loads(Path(argv[1]).read_text(encoding="utf-8")), Path(argv[2]))
    print(f"{placed} registered in {registry_path()}")
