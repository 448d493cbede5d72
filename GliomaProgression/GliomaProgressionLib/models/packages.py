"""Model packages: the registry (GliomaProgression/Resources/Models.json), safe installation and verification.

A package is an nnU-Net v2 results folder (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``),
zipped or as a folder. Installing one:

- checks the zip's sha256 when one is expected (every shipped model has one in ``Models.json``);
- refuses archives with absolute paths, ``..`` components, symbolic links, encrypted or repeated entries or
  implausible sizes;
- checks the package as a whole before anything is written: dataset.json, gliomaprog.json and plans.json are read
  straight from the zip and checked together (channel and label numbering, configurations and their inheritance,
  cycles included, every setting nnU-Net reads while predicting; see ``worker.check_plans_settings``), so that a
  broken or hostile package ends in one sentence naming it and the problem;
- unpacks into a hidden staging folder in the cache, renamed into place only when complete: an error or an
  interruption leaves nothing behind, and the staging folders of killed installs are swept by the next one; a full
  or unwritable cache is reported as such, not as a damaged package;
- checks that it can be loaded **without running code from it**: the architecture and layer classes named in the
  plans must be on an allow-list, each checkpoint must load with ``torch.load(weights_only=True)`` and fit the
  network the plans describe (see ``worker``). A checkpoint that cannot be loaded weights-only is refused unless the
  caller passes ``trust=True``.

Shipped models are unzipped once into a user cache folder (``GLIOMAPROG_MODELS_DIR``, else
``$XDG_CACHE_HOME/gliomaprog/models`` or ``~/.cache/gliomaprog/models``). The demo models are trained on synthetic
data — not for clinical use.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from GliomaProgressionLib.case.files import json_kind, refuse_broken_link
from GliomaProgressionLib.models.worker import (check_network_fits, check_plans_settings, default_configuration,
                                                load_checkpoint)

MANIFEST = ".gliomaprog-install.json"
MAX_UNCOMPRESSED_BYTES = 4 * 1024 ** 3
MAX_MEMBERS = 10000
MAX_DOCUMENT_BYTES = 16 * 1024 ** 2  # dataset.json, plans.json, gliomaprog.json: read into memory to be checked
STAGING = ".partial-"  # staging folders in the cache: .<target>.partial-<pid>-<random>
STALE_STAGING_SECONDS = 24 * 3600
FOLD_FOLDER = re.compile(r"fold_([0-9]+)")
CHANNEL_NUMBER = re.compile(r"[0-9]+")
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


def _size_text(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _check_member(member: zipfile.ZipInfo, name: str) -> None:
    """ValueError if the member could write outside the target, is not a plain file or folder, or is encrypted."""
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
    if member.flag_bits & 0x1:
        raise ValueError(f"The model {name} contains an encrypted entry ({raw!r}); refusing to unpack it.")


def check_archive(archive: zipfile.ZipFile, name: str = "archive") -> list[zipfile.ZipInfo]:
    """The archive's members, or ValueError if any could write outside the target, is not a plain file, is
    there twice (which copy would win?) or the whole would unpack to an implausible size."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"The model {name} has {len(members)} entries; refusing to unpack it.")
    seen = set()
    for member in members:
        _check_member(member, name)
        path = PurePosixPath(member.filename.replace("\\", "/"))
        if path in seen:
            raise ValueError(f"The model {name} contains {member.filename!r} twice; refusing to unpack it.")
        seen.add(path)
    total = sum(member.file_size for member in members)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ValueError(f"The model {name} would unpack to {_size_text(total)}; refusing to unpack it.")
    return members


def _open_archive(zip_path: Path, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise ValueError(f"The model package {label} is not a valid zip file.") from None
    except OSError as error:
        raise ValueError(f"The model package {label} could not be read ({error.strerror or error}).") from None


class _MemberReader:
    """One archive member, read: an error here is the package's fault (damaged), never the disk's, so that a full
    disk while unpacking is not reported as a damaged package."""

    def __init__(self, archive: zipfile.ZipFile, member: zipfile.ZipInfo, label: str):
        self.member, self.label = member, label
        try:
            self.stream = archive.open(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
            raise self._damaged(error) from None

    def _damaged(self, error: BaseException) -> ValueError:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        return ValueError(f"The model package {self.label} is damaged: its entry {self.member.filename!r} cannot be "
                          f"read ({reason}).")

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
            raise self._damaged(error) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
        return False


def _cache_error(error: OSError, cache: Path, label: str) -> ValueError:
    """What went wrong writing the model cache, in words: a full disk is not a damaged package."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ValueError(f"The model package {label} could not be installed: the disk holding the model cache "
                          f"{cache} is full; free some space or set GLIOMAPROG_MODELS_DIR to a folder on another "
                          "disk.")
    reason = ("a file is in the way of that folder" if error.errno in (errno.ENOTDIR, errno.EEXIST)
              else error.strerror or str(error))
    return ValueError(f"The model package {label} could not be installed: the model cache {cache} is not writable "
                      f"({reason}); set GLIOMAPROG_MODELS_DIR to a writable folder.")


def _unpack(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, label: str) -> None:
    """The checked members into ``target``; a member that cannot be read is a damaged package, a file that cannot
    be written is the cache's problem (``_cache_error``: the caller says which cache)."""
    for member in members:
        destination = target.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with _MemberReader(archive, member, label) as source, open(destination, "wb") as sink:
            shutil.copyfileobj(source, sink)


def extract_package(zip_path: Path, target: Path) -> None:
    """Unpack a model zip into ``target``, refusing members that could write outside it."""
    label = str(zip_path)
    with _open_archive(Path(zip_path), label) as archive:
        members = check_archive(archive, f"package {Path(zip_path).name}")
        try:
            _unpack(archive, members, Path(target), label)
        except OSError as error:
            raise _cache_error(error, Path(target), label) from None


# --- what a package holds, read before anything is unpacked -----------------------------------------------------


@dataclass
class PackageContents:
    """A package's documents and fold checkpoints, read from its folder or straight from its zip."""
    label: str  # how messages name the package: the zip or folder as it was given
    folder_name: str  # the results folder's name (nnU-Net names it Trainer__Plans__configuration)
    dataset: object
    plans: object
    meta: object  # gliomaprog.json, None when there is none
    folds: list[int]  # the folds with a checkpoint_final.pth


def _json_document(data: bytes, name: str, label: str):
    """The JSON value in a package's document, or ValueError naming the package, the document and the problem."""
    what = f"The {name} of the model package {label}"
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what} is {_size_text(len(data))}; a model's {name} is a few kB.")
    try:
        text = data.decode("utf-8-sig")  # -sig: the byte-order mark some editors write is no error
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at position "
                         f"{error.start}).") from None
    from GliomaProgressionLib.case.files import parse_json

    return parse_json(text, what)


def _results_prefix(files: list[PurePosixPath], label: str) -> PurePosixPath:
    """The folder (relative to the package root) holding dataset.json and plans.json: the shallowest one."""
    names = set(files)
    candidates = sorted({path.parent for path in files if path.name == "plans.json"
                         and path.parent / "dataset.json" in names}, key=lambda path: len(path.parts))
    if not candidates:
        raise ValueError(f"The model package {label} has no nnU-Net results folder (dataset.json and plans.json).")
    if len(candidates) > 1 and len(candidates[0].parts) == len(candidates[1].parts):
        raise ValueError(f"The model package {label} holds several nnU-Net results folders; give one.")
    return candidates[0]


def _fold_of(path: PurePosixPath) -> int | None:
    """N for ``fold_N/checkpoint_final.pth`` (ASCII digits only: int() would take other scripts' digits)."""
    match = FOLD_FOLDER.fullmatch(path.parent.name) if path.name == "checkpoint_final.pth" else None
    return int(match[1]) if match else None


def _archive_contents(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo],
                      label: str) -> tuple[PurePosixPath, PackageContents]:
    files = {PurePosixPath(member.filename.replace("\\", "/")): member for member in members if not member.is_dir()}
    prefix = _results_prefix(list(files), label)

    def document(name: str):
        member = files.get(prefix / name)
        if member is None:
            return None
        if member.file_size > MAX_DOCUMENT_BYTES:  # before reading it into memory
            raise ValueError(f"The {name} of the model package {label} is {_size_text(member.file_size)}; a "
                             f"model's {name} is a few kB.")
        with _MemberReader(archive, member, label) as reader:
            return _json_document(reader.read(), name, label)

    folds = sorted(fold for path in files if path.parent.parent == prefix and (fold := _fold_of(path)) is not None)
    contents = PackageContents(label, prefix.name, document("dataset.json"), document("plans.json"),
                               document("gliomaprog.json"), folds)
    return prefix, contents


def _folder_document(folder: Path, name: str, label: str, required: bool):
    path = folder / name
    refuse_broken_link(path, f"{name} of the model package {label}")
    if not path.exists():
        if required:
            raise ValueError(f"The model package {label} has no {name} (in {folder}).")
        return None
    if not path.is_file():
        raise ValueError(f"The {name} of the model package {label} is a folder, not a file.")
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"The {name} of the model package {label} is {_size_text(path.stat().st_size)}; a "
                         f"model's {name} is a few kB.")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"The {name} of the model package {label} could not be read ({error.strerror}).") from None
    return _json_document(data, name, label)


def _folder_contents(folder: Path, label: str) -> PackageContents:
    folds = sorted(fold for path in folder.glob("fold_*/checkpoint_final.pth")
                   if path.is_file() and (fold := _fold_of(PurePosixPath(*path.relative_to(folder).parts))) is not None)
    return PackageContents(label, folder.name, _folder_document(folder, "dataset.json", label, True),
                           _folder_document(folder, "plans.json", label, True),
                           _folder_document(folder, "gliomaprog.json", label, False), folds)


def find_results_folder(root: Path, label: str | None = None) -> Path:
    """The folder holding dataset.json and plans.json (the package root or a folder inside it)."""
    files = [PurePosixPath(*path.relative_to(root).parts) for path in Path(root).rglob("*") if path.is_file()]
    return Path(root).joinpath(*_results_prefix(files, label or str(root)).parts)


def _manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


# --- the package checked as a whole -----------------------------------------------------------------------------


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_meta(meta, what: str) -> dict:
    """gliomaprog.json (or the registry entry): the fields read from it of the right kinds."""
    if not isinstance(meta, dict):
        raise ValueError(f"{what} is not a JSON object of named fields (it holds {json_kind(meta)}).")
    if "configuration" in meta and not isinstance(meta["configuration"], str):
        raise ValueError(f"{what} gives 'configuration' as {json_kind(meta['configuration'])}, not a configuration "
                         "name.")
    folds = meta.get("folds")
    if "folds" in meta and not (isinstance(folds, list) and folds and all(_is_index(fold) for fold in folds)):
        raise ValueError(f"{what} gives 'folds' as {str(folds)[:60]!r}, not a list of fold numbers.")
    channels = meta.get("channels", [])
    if not isinstance(channels, list) or not all(
            isinstance(channel, dict) and isinstance(channel.get("name"), str) and channel["name"]
            and isinstance(channel.get("modality", ""), str) for channel in channels):
        raise ValueError(f"{what} gives 'channels' as {str(channels)[:60]}, not a list of objects each with a "
                         "'name' (and a 'modality').")
    return meta


def _dataset_channels(dataset, what: str) -> list[dict]:
    """The input channels dataset.json names, in model order; its keys must be the channel numbers 0, 1, ..."""
    if not isinstance(dataset, dict):
        raise ValueError(f"{what} is not a JSON object of named fields (it holds {json_kind(dataset)}).")
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{what} has no 'channel_names' object naming the model's input channels (found "
                         f"{json_kind(names)}).")
    for key, modality in names.items():
        if not CHANNEL_NUMBER.fullmatch(key):
            raise ValueError(f"{what} has the channel_names key {key!r}, which is not a channel number (0, 1, ...).")
        if not isinstance(modality, str) or not modality.strip():
            raise ValueError(f"{what} gives channel_names {key!r} as {json_kind(modality)}, not a channel name.")
    numbers = sorted(int(key) for key in names)
    if numbers != list(range(len(names))):
        raise ValueError(f"{what} numbers its channel_names {', '.join(map(str, numbers))[:60]}, not 0 to "
                         f"{len(names) - 1} once each.")
    ordered = sorted(names.items(), key=lambda item: int(item[0]))
    return [{"name": MODALITY_NAMES.get(modality.lower(), modality.lower()), "modality": modality}
            for _, modality in ordered]


def _dataset_label_count(dataset: dict, what: str) -> int:
    """The number of labels (the network's output channels): background 0 and the others numbered after it."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise ValueError(f"{what} gives 'labels' as {json_kind(labels)}, not an object of label names and numbers.")
    for name, value in labels.items():
        if isinstance(value, list):  # nnU-Net regions: the foreground is no longer one minus the background
            raise ValueError(f"{what} has region-based labels ({name!r}: {value}), which these models cannot use.")
        if not _is_index(value):
            raise ValueError(f"{what} gives the labels entry {name!r} as {str(value)[:40]!r}, not a label number.")
    if labels.get("background") != 0:
        raise ValueError(f"{what} has no 'background' label numbered 0.")
    if sorted(labels.values()) != list(range(len(labels))) or len(labels) < 2:
        raise ValueError(f"{what} numbers its labels {str(sorted(labels.values()))[:60]}, not 0 (background), 1, ... once "
                         "each.")
    return len(labels)


@dataclass
class _Checked:
    """A package's documents after checking them together: what a ModelPackage and the loading check need."""
    meta: dict
    configuration: str
    folds: list[int]
    channels: list[dict]
    labels: int
    entry: dict  # the configuration's plans, inheritance resolved


def _checked_folds(meta: dict, contents: PackageContents) -> list[int]:
    folds = [int(fold) for fold in meta.get("folds", contents.folds)]
    missing = [fold for fold in folds if fold not in contents.folds]
    if missing or not folds:
        raise ValueError(f"The model package {contents.label} misses fold_N/checkpoint_final.pth for folds "
                         f"{missing or 'any'}.")
    return folds


def _checked_channels(meta: dict, dataset_channels: list[dict], label: str) -> list[dict]:
    """The channels the metadata names (with their modalities), else those of dataset.json; as many as it has."""
    channels = [{"name": c["name"], "modality": c.get("modality", c["name"])} for c in meta.get("channels", [])] \
        or dataset_channels
    if len(channels) != len(dataset_channels):
        raise ValueError(f"The model package {label} lists {len(channels)} channels in its metadata but its "
                         f"dataset.json has {len(dataset_channels)}.")
    return channels


def _check_contents(contents: PackageContents, entry: dict | None) -> _Checked:
    """Everything in a package that can be checked without loading a checkpoint, as a whole: dataset.json,
    gliomaprog.json (or the registry entry), the plans of the configuration used, the folds, the channels."""
    label = contents.label
    if entry:
        meta = _check_meta(dict(entry), f"The registry entry of the model package {label}")
    elif contents.meta is not None:
        meta = _check_meta(contents.meta, f"The gliomaprog.json of the model package {label}")
    else:
        meta = {}
    what = f"The dataset.json of the model package {label}"
    dataset_channels = _dataset_channels(contents.dataset, what)
    labels = _dataset_label_count(contents.dataset, what)
    where = f"The plans.json of the model package {label}"
    configuration = meta.get("configuration") or default_configuration(contents.plans, contents.folder_name, where)
    plans_entry = check_plans_settings(contents.plans, configuration, len(dataset_channels), where)
    return _Checked(meta, configuration, _checked_folds(meta, contents),
                    _checked_channels(meta, dataset_channels, label), labels, plans_entry)


def _check_checkpoints(folder: Path, checked: _Checked, trust: bool, label: str) -> None:
    """Each fold's checkpoint loads weights-only and fits the network the plans describe. Trusting a package
    only allows unrestricted unpickling, which is left to the prediction itself."""
    if trust:
        return
    for fold in checked.folds:
        name = f"fold_{fold}/checkpoint_final.pth of the model package {label}"  # not the staging folder's path
        checkpoint = load_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", trust=False, name=name)
        check_network_fits(checked.entry, len(checked.channels), checked.labels, checkpoint["network_weights"],
                           name, f"The plans.json of the model package {label}")


def check_loadable(folder: Path, configuration: str, folds: list[int], trust: bool = False,
                   label: str | None = None) -> None:
    """Raise ValueError (UnsafeModelError) unless the package loads without running code from it and its
    checkpoints fit the network its plans describe."""
    label = label or str(folder)
    checked = _check_contents(_folder_contents(Path(folder), label), {"configuration": configuration,
                                                                      "folds": list(folds)})
    _check_checkpoints(Path(folder), checked, trust, label)


def package_from_folder(folder: Path, entry: dict | None = None, sha256: str | None = None,
                        trust: bool = False, check: bool = True, label: str | None = None) -> ModelPackage:
    """Describe (and check) an nnU-Net results folder as a ModelPackage; registry entry or gliomaprog.json wins."""
    folder = Path(folder)
    label = label or str(folder)
    contents = _folder_contents(folder, label)
    checked = _check_contents(contents, entry)
    if check:
        _check_checkpoints(folder, checked, trust, label)
    meta, dataset = checked.meta, contents.dataset
    known = {"id", "title", "channels", "configuration", "folds", "label", "synthetic", "description", "sha256"}
    return ModelPackage(
        id=str(meta.get("id") or folder.name), title=str(meta.get("title") or dataset.get("name") or folder.name),
        folder=folder, channels=checked.channels, configuration=checked.configuration, folds=checked.folds,
        label=str(meta.get("label") or ", ".join(k for k in dataset["labels"] if k != "background")),
        synthetic=bool(meta.get("synthetic", False)), description=str(meta.get("description", "")),
        sha256=sha256 or meta.get("sha256"), trusted=trust, extra={k: v for k, v in meta.items() if k not in known})


# --- install / resolve / verify -----------------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sweep_stale_staging(cache: Path) -> None:
    """Remove the staging folders of installs that were killed: their process is gone, or they began a day ago
    (an install stopped by SIGKILL or a power cut cannot clean up after itself)."""
    for folder in cache.glob(".*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        match = re.search(rf"{re.escape(STAGING)}(\d+)-", folder.name)
        owner_gone = match is not None and int(match[1]) != os.getpid() and not _process_alive(int(match[1]))
        if owner_gone or time.time() - folder.stat().st_mtime > STALE_STAGING_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)


def _staging_folder(target: Path, needed_bytes: int, label: str) -> Path:
    """A new hidden folder beside ``target`` (the same disk, so that the final rename is atomic), once the cache
    is known to be writable and to have room for the package."""
    cache = target.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _sweep_stale_staging(cache)
        free = shutil.disk_usage(cache).free
        if needed_bytes > free:
            raise ValueError(f"The model package {label} needs {_size_text(needed_bytes)} but the disk holding the "
                             f"model cache {cache} has {_size_text(free)} free; free some space or set "
                             "GLIOMAPROG_MODELS_DIR to a folder on another disk.")
        return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING}{os.getpid()}-", dir=cache))
    except OSError as error:
        raise _cache_error(error, cache, label) from None


def _installed(target: Path, digest: str, entry: dict | None, trust: bool, label: str) -> ModelPackage | None:
    """The package already installed at ``target`` from the same zip, or None (a stale copy is removed)."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if (isinstance(manifest, dict) and manifest.get("sha256") == digest and (trust or not manifest.get("trusted"))
            and isinstance(manifest.get("results_folder"), str)):
        return package_from_folder(target / manifest["results_folder"], entry, digest,
                                   trust or bool(manifest.get("trusted")), check=False, label=label)
    if target.exists():  # another zip's copy, a trusted copy not to be reused untrusted, or an old partial one
        try:
            shutil.rmtree(target)
        except OSError as error:
            raise _cache_error(error, target.parent, label) from None
    return None


def _move_into_place(staging: Path, target: Path, label: str) -> None:
    """Rename the complete staging folder to ``target``; if another process installed the same zip meanwhile,
    keep its copy."""
    try:
        os.replace(staging, target)
    except OSError as error:
        if not (target / MANIFEST).is_file():
            raise _cache_error(error, target.parent, label) from None
        shutil.rmtree(staging, ignore_errors=True)


def _install_zip(source: Path, digest: str, target: Path, trust: bool, entry: dict | None, label: str) -> str:
    """Check the zip as a whole, then unpack, load-check and rename it into ``target``; the results folder
    inside it. Nothing is written for a package refused, and a failure removes what was unpacked."""
    with _open_archive(source, label) as archive:
        members = check_archive(archive, f"package {source.name}")
        prefix, contents = _archive_contents(archive, members, label)
        _check_contents(contents, entry)  # refuses a broken package before anything is written
        staging = _staging_folder(target, sum(member.file_size for member in members), label)
        try:
            try:
                _unpack(archive, members, staging, label)
            except OSError as error:
                raise _cache_error(error, target.parent, label) from None
            package_from_folder(staging / prefix, entry, digest, trust, label=label)  # loads the checkpoints
            manifest = {"sha256": digest, "source": source.name, "trusted": trust, "results_folder": str(prefix),
                        "files": _manifest(staging)}
            try:
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            except OSError as error:
                raise _cache_error(error, target.parent, label) from None
            _move_into_place(staging, target, label)
        except BaseException:  # KeyboardInterrupt too: nothing half-unpacked stays in the cache
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return str(prefix)


def _package_digest(source: Path, label: str) -> str:
    try:
        return sha256_file(source)
    except OSError as error:
        raise ValueError(f"The model package {label} could not be read ({error.strerror or error}).") from None


def install_package(source: Path, expected_sha256: str | None = None, trust: bool = False,
                    entry: dict | None = None) -> ModelPackage:
    """Install a zip into the cache (once per sha256), or check a folder in place; return its ModelPackage."""
    source = Path(source).expanduser()
    label = str(source)
    refuse_broken_link(source, "model package")
    if not source.exists():
        raise ValueError(f"The model package {source} does not exist.")
    if source.is_dir():
        if expected_sha256 is not None:
            raise ValueError("A sha256 can only be checked for a zipped package.")
        return package_from_folder(find_results_folder(source, label), entry, None, trust, label=label)
    if not source.is_file():
        raise ValueError(f"The model package {label} is neither a zip file nor a folder.")
    digest = _package_digest(source, label)
    if expected_sha256 is not None and digest.lower() != expected_sha256.lower():
        raise ValueError(f"The model package {source.name} is corrupt or has been tampered with: its sha256 is "
                         f"{digest}, expected {expected_sha256}.")
    name = (entry or {}).get("id") or re.sub(r"[^A-Za-z0-9_.-]", "_", source.stem)
    target = cache_folder() / f"{name}-{digest[:16]}"
    installed = _installed(target, digest, entry, trust, label)
    if installed is not None:
        return installed
    results = _install_zip(source, digest, target, trust, entry, label)
    return package_from_folder(target / results, entry, digest, trust, check=False, label=label)


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
