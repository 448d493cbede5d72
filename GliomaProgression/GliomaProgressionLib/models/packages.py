"""Model packages: the registry (GliomaProgression/Resources/Models.json), safe installation and verification.

A package is an nnU-Net v2 results folder (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``),
zipped or as a folder. Installing one:

- checks the zip's sha256 when one is expected (every shipped model has one in ``Models.json``);
- refuses archives with absolute paths, ``..`` components, symbolic links or implausible sizes, and extracts into
  a staging folder that is renamed into place only when complete (an error leaves nothing behind);
- checks that it can be loaded **without running code from it**: the architecture and layer classes named in the
  plans must be on an allow-list and each checkpoint must load with ``torch.load(weights_only=True)``
  (see ``predict_worker``). A package that fails this is refused unless the caller passes ``trust=True``.

Shipped models are unzipped once into a user cache folder (``GLIOMAPROG_MODELS_DIR``, else
``$XDG_CACHE_HOME/gliomaprog/models`` or ``~/.cache/gliomaprog/models``). The demo models are trained on synthetic
data — not for clinical use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST = ".gliomaprog-install.json"
MAX_UNCOMPRESSED_BYTES = 4 * 1024 ** 3
MAX_MEMBERS = 10000
MODALITY_NAMES = {"ce-t1": "t1c", "t1c": "t1c", "t1ce": "t1c", "t1-ce": "t1c", "t1gd": "t1c", "flair": "flair",
                  "t2-flair": "flair", "t2flair": "flair", "ncbv": "ncbv", "rcbv": "ncbv", "cbv": "ncbv"}


@dataclass
class ModelPackage:
    id: str
    title: str
    folder: Path  # nnU-Net results folder (dataset.json, plans.json, fold_N/checkpoint_final.pth)
    channels: list[dict]  # [{"name": "t1c", "modality": "CE-T1"}, ...] in model order
    configuration: str
    folds: list[int]
    label: str
    synthetic: bool
    description: str
    sha256: str | None
    trusted: bool = False  # loaded with unrestricted unpickling (only when the user said so)
    extra: dict = field(default_factory=dict)  # the rest of the registry entry (licence, intended use, ...)

    @property
    def channel_names(self) -> list[str]:
        return [channel["name"] for channel in self.channels]

    def describe_channels(self) -> str:
        return ", ".join(f"{i}: {c['name']} ({c.get('modality', c['name'])})" for i, c in enumerate(self.channels))


# --- registry -------------------------------------------------------------------------------------------------


def resources_folder() -> Path:
    """The GliomaProgression module's Resources folder (Models.json, models/*.zip); ``GLIOMAPROG_RESOURCES`` overrides.

    It is the ``Resources`` folder beside this package, in the source tree (``GliomaProgression/Resources``) and in a
    built extension alike: Slicer installs a scripted module's scripts and resources with their paths relative to the
    module folder kept, into one ``lib/Slicer-X.Y/qt-scripted-modules/`` folder (see the module's CMakeLists.txt,
    which must list every file read from here).
    """
    if os.environ.get("GLIOMAPROG_RESOURCES"):
        return Path(os.environ["GLIOMAPROG_RESOURCES"])
    return Path(__file__).resolve().parents[2] / "Resources"


def registry_path() -> Path:
    return resources_folder() / "Models.json"


def available_models() -> list[dict]:
    """The entries of Resources/Models.json (an empty list when there is no registry)."""
    path = registry_path()
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("models", []))


def _registry_entry(model_id: str) -> dict | None:
    return next((entry for entry in available_models() if entry.get("id") == model_id), None)


def cache_folder() -> Path:
    if os.environ.get("GLIOMAPROG_MODELS_DIR"):
        return Path(os.environ["GLIOMAPROG_MODELS_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gliomaprog" / "models"


# --- hashing and archives ---------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(archive: zipfile.ZipFile, name: str = "archive") -> list[zipfile.ZipInfo]:
    """The archive's members, or ValueError if any could write outside the target or is not a plain file."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"The model {name} has {len(members)} entries; refusing to unpack it.")
    total = 0
    for member in members:
        raw = member.filename
        path = PurePosixPath(raw.replace("\\", "/"))
        if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw) or path.is_absolute():
            raise ValueError(f"The model {name} contains an absolute path ({raw!r}); refusing to unpack it.")
        if ".." in path.parts:
            raise ValueError(f"The model {name} contains a path that leaves its folder ({raw!r}); refusing to "
                             "unpack it.")
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ValueError(f"The model {name} contains a symbolic link ({raw!r}); refusing to unpack it.")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ValueError(f"The model {name} contains a special file ({raw!r}); refusing to unpack it.")
        total += member.file_size
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ValueError(f"The model {name} would unpack to {total / 1e9:.1f} GB; refusing to unpack it.")
    return members


def extract_package(zip_path: Path, target: Path) -> None:
    """Unpack a model zip into ``target``, refusing members that could write outside it."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ValueError(f"The model package {zip_path} is not a valid zip file.") from None
    with archive:
        for member in check_archive(archive, f"package {zip_path.name}"):
            destination = target.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
            except (zipfile.BadZipFile, OSError) as error:  # CRC errors: a damaged or tampered archive
                raise ValueError(f"The model package {zip_path} is damaged ({error}).") from None


def find_results_folder(root: Path) -> Path:
    """The folder holding dataset.json and plans.json (the package root or a folder inside it)."""
    candidates = sorted({p.parent for p in root.rglob("plans.json") if (p.parent / "dataset.json").is_file()},
                        key=lambda p: len(p.parts))
    if not candidates:
        raise ValueError(f"The model package {root} has no nnU-Net results folder (dataset.json and plans.json).")
    if len(candidates) > 1 and len(candidates[0].parts) == len(candidates[1].parts):
        raise ValueError(f"The model package {root} holds several nnU-Net results folders; give one.")
    return candidates[0]


def _fold_numbers(folder: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in folder.glob("fold_*")
                  if p.name[5:].isdigit() and (p / "checkpoint_final.pth").is_file())


def _manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


# --- loading checks -------------------------------------------------------------------------------------------


def check_loadable(folder: Path, configuration: str, folds: list[int], trust: bool = False) -> None:
    """Raise ValueError (UnsafeModelError) unless the package loads without running code from it."""
    from GliomaProgressionLib.models.worker import check_plans, load_checkpoint

    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    if trust:
        check_plans_structure(plans, configuration)
        return
    check_plans(plans, configuration)
    for fold in folds:
        load_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", trust=False)


def check_plans_structure(plans: dict, configuration: str) -> None:
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"The model's plans have no configuration {configuration!r}.")


def _channels_from_dataset(dataset: dict) -> list[dict]:
    names = dataset.get("channel_names", dataset.get("modality", {}))
    channels = []
    for key in sorted(names, key=int):
        modality = str(names[key])
        channels.append({"name": MODALITY_NAMES.get(modality.lower(), modality.lower()), "modality": modality})
    return channels


def package_from_folder(folder: Path, entry: dict | None = None, sha256: str | None = None,
                        trust: bool = False, check: bool = True) -> ModelPackage:
    """Describe (and check) an nnU-Net results folder as a ModelPackage; registry entry or gliomaprog.json wins."""
    folder = Path(folder)
    for required in ("dataset.json", "plans.json"):
        if not (folder / required).is_file():
            raise ValueError(f"The model folder {folder} has no {required}.")
    try:
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"The model folder {folder} has an unreadable dataset.json or plans.json ({error}).")
    meta = dict(entry or {})
    if not meta and (folder / "gliomaprog.json").is_file():
        meta = json.loads((folder / "gliomaprog.json").read_text(encoding="utf-8"))
    configurations = list(plans.get("configurations", {}))
    configuration = meta.get("configuration")
    if configuration is None:
        from_name = folder.name.split("__")[-1] if folder.name.count("__") == 2 else None
        configuration = from_name if from_name in configurations else (
            "3d_fullres" if "3d_fullres" in configurations else (configurations[0] if configurations else None))
    if configuration not in configurations:
        raise ValueError(f"The model's plans have no configuration {configuration!r}.")
    available = _fold_numbers(folder)
    folds = [int(f) for f in meta.get("folds", available)]
    missing = [f for f in folds if f not in available]
    if missing or not folds:
        raise ValueError(f"The model folder {folder} misses fold_N/checkpoint_final.pth for folds "
                         f"{missing or 'any'}.")
    dataset_channels = _channels_from_dataset(dataset)
    channels = [{"name": c["name"], "modality": c.get("modality", c["name"])} for c in meta.get("channels", [])] \
        or dataset_channels
    if len(channels) != len(dataset_channels):
        raise ValueError(f"The model's metadata lists {len(channels)} channels but its dataset.json has "
                         f"{len(dataset_channels)}.")
    if check:
        check_loadable(folder, configuration, folds, trust)
    known = {"id", "title", "channels", "configuration", "folds", "label", "synthetic", "description", "sha256"}
    return ModelPackage(
        id=str(meta.get("id") or folder.name), title=str(meta.get("title") or dataset.get("name") or folder.name),
        folder=folder, channels=channels, configuration=configuration, folds=folds,
        label=str(meta.get("label") or ", ".join(k for k in dataset.get("labels", {}) if k != "background")),
        synthetic=bool(meta.get("synthetic", False)), description=str(meta.get("description", "")),
        sha256=sha256 or meta.get("sha256"), trusted=trust, extra={k: v for k, v in meta.items() if k not in known})


# --- install / resolve / verify -----------------------------------------------------------------------------------


def install_package(source: Path, expected_sha256: str | None = None, trust: bool = False,
                    entry: dict | None = None) -> ModelPackage:
    """Install a zip into the cache (once per sha256), or check a folder in place; return its ModelPackage."""
    source = Path(source).expanduser()
    if not source.exists():
        raise ValueError(f"The model package {source} does not exist.")
    if source.is_dir():
        if expected_sha256 is not None:
            raise ValueError("A sha256 can only be checked for a zipped package.")
        return package_from_folder(find_results_folder(source), entry, None, trust)
    digest = sha256_file(source)
    if expected_sha256 is not None and digest.lower() != expected_sha256.lower():
        raise ValueError(f"The model package {source.name} is corrupt or has been tampered with: its sha256 is "
                         f"{digest}, expected {expected_sha256}.")
    name = (entry or {}).get("id") or re.sub(r"[^A-Za-z0-9_.-]", "_", source.stem)
    target = cache_folder() / f"{name}-{digest[:16]}"
    if (target / MANIFEST).is_file():
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("sha256") == digest and (trust or not manifest.get("trusted")):
            results = target / manifest["results_folder"]
            return package_from_folder(results, entry, digest, trust or manifest.get("trusted", False), check=False)
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        extract_package(source, staging)
        results = find_results_folder(staging)
        package_from_folder(results, entry, digest, trust)  # refuses before anything is installed
        manifest = {"sha256": digest, "source": source.name, "trusted": trust,
                    "results_folder": str(results.relative_to(staging)), "files": _manifest(staging)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return package_from_folder(target / manifest["results_folder"], entry, digest, trust, check=False)


def _shipped_zip(entry: dict) -> Path:
    path = resources_folder() / entry["file"]
    if not path.is_file():
        raise ValueError(f"The model {entry['id']!r} is listed in Models.json but its file {path} is missing.")
    return path


def resolve_model(id_or_path: str, trust: bool = False) -> ModelPackage:
    """A shipped model id (installed on first use, sha256-verified) or a user's zip or folder."""
    entry = _registry_entry(str(id_or_path))
    if entry is not None:
        return install_package(_shipped_zip(entry), entry.get("sha256"), trust, entry)
    path = Path(str(id_or_path)).expanduser()
    if path.exists():
        return install_package(path, None, trust)
    known = ", ".join(e.get("id", "?") for e in available_models()) or "none"
    raise ValueError(f"Unknown model {id_or_path!r}: not a shipped model id ({known}) and not a zip or folder.")


def verify_model(id_or_path: str) -> dict:
    """Check a model's sha256, files and safe loadability; a report dict, or ValueError naming the problem."""
    entry = _registry_entry(str(id_or_path))
    report: dict = {"model": str(id_or_path)}
    if entry is not None:
        zip_path = _shipped_zip(entry)
        digest = sha256_file(zip_path)
        if entry.get("sha256") and digest != entry["sha256"]:
            raise ValueError(f"The model package {zip_path.name} is corrupt or has been tampered with: its sha256 "
                             f"is {digest}, Models.json expects {entry['sha256']}.")
        report.update({"file": str(zip_path), "sha256": digest, "sha256_matches_registry": True})
        package = install_package(zip_path, entry.get("sha256"), False, entry)
        installed = package.folder
        while installed != installed.parent and not (installed / MANIFEST).is_file():
            installed = installed.parent
        manifest = json.loads((installed / MANIFEST).read_text(encoding="utf-8"))
        changed = [name for name, digest_ in manifest["files"].items()
                   if not (installed / name).is_file() or sha256_file(installed / name) != digest_]
        if changed:
            raise ValueError(f"The installed copy of {entry['id']!r} in {installed} has missing or modified files: "
                             f"{', '.join(changed)}. Delete that folder to reinstall it.")
        report["installed_folder"] = str(installed)
    else:
        package = resolve_model(id_or_path, trust=False)
        report["sha256"] = package.sha256
    check_loadable(package.folder, package.configuration, package.folds, trust=False)
    report.update({"id": package.id, "folder": str(package.folder), "folds": package.folds,
                   "configuration": package.configuration, "channels": package.channels,
                   "loads_weights_only": True, "ok": True})
    return report
