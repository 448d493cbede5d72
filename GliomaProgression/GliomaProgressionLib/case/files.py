"""File input and output that never leaves a half-written result behind.

Images are read and written with SimpleITK (NIfTI, NRRD, and every other format ITK knows). A single file is
written to a temporary name in its destination folder and renamed into place; a folder of results is built
in a hidden staging folder beside its destination and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.geometry import Volume, check_3d, sitk_from_volume, volume_from_sitk


def _stored_bytes(path: Path) -> int:
    """The uncompressed length of a file (streamed: a .gz is decompressed once, never held in memory)."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            total += len(chunk)
    return total


def check_nifti_complete(path: Path, what: str) -> None:
    """ITK reads a truncated NIfTI file without an error and fills the missing voxels with zeros (measured with
    SimpleITK 2.5 on .nii and .nii.gz); a transfer cut short must not become a case. NRRD and MetaImage readers
    do report it."""
    import nibabel

    try:
        header = nibabel.load(str(path)).header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * \
            header.get_data_dtype().itemsize
        stored = _stored_bytes(path)
    except (EOFError, OSError, zlib.error, nibabel.filebasedimages.ImageFileError) as error:
        raise ValueError(f"The {what} file {path} is damaged or incomplete ({error}).") from None
    if stored < expected:
        raise ValueError(f"The {what} file {path} is incomplete: it holds {stored} of the {expected} bytes its "
                         "header announces.")


def read_image(path: str | os.PathLike, what: str = "image") -> sitk.Image:
    """Read an image file, or raise ValueError naming the input and the problem."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"The {what} file {path} does not exist.")
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise ValueError(f"The {what} file {path} could not be read as an image ({reason}).") from None


def read_volume(path: str | os.PathLike, what: str = "image") -> Volume:
    return volume_from_sitk(read_image(path, what))


def read_3d_image(path: str | os.PathLike, what: str = "image") -> sitk.Image:
    """An image file that must hold a 3-D volume (a mask, a label map, a map), as a SimpleITK image."""
    image = read_image(path, what)
    check_3d(image, f"The {what} {path}")
    return image


def read_3d_volume(path: str | os.PathLike, what: str = "image") -> Volume:
    """``read_3d_image`` as a Volume (array ``[k, j, i]`` and IJK-to-RAS)."""
    return volume_from_sitk(read_3d_image(path, what))


def _temporary_sibling(path: Path) -> Path:
    # Keep the full suffix (".nii.gz", ".seq.nrrd") so that ITK picks the right writer for the temporary file.
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(handle)
    return Path(name)


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image atomically: to a temporary file beside ``path``, then renamed over it."""
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        sitk.WriteImage(image, str(temporary), compress)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_volume(volume: Volume, path: str | os.PathLike, time_spacing: float = 1.0) -> Path:
    return write_image(sitk_from_volume(volume, time_spacing), path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (a temporary file beside ``path``, renamed over it): never half a table."""
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json(data: dict, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", path)


def check_new_output_folder(out: str | os.PathLike, what: str = "The output folder") -> Path:
    """Check that a result folder can be created at ``out`` without overwriting anything.

    Raises ValueError when ``out`` exists and is not an empty folder, or when its parent cannot be written.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{what} {out} already exists and is not an empty folder; choose a new folder.")
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {out} cannot be created: {existing} is a file, not a folder.")
    try:  # permissions alone do not tell (root, read-only mounts, special file systems): try it
        Path(tempfile.mkdtemp(prefix=".write-test-", dir=existing)).rmdir()
    except OSError as error:
        raise ValueError(f"{what} {out} cannot be created: {existing} is not writable ({error.strerror}).") from None
    return out


@contextlib.contextmanager
def staged_output_folder(out: str | os.PathLike, what: str = "The output folder") -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out`` and rename it to ``out`` only if the block succeeds.

    On any error the staging folder is removed, so a failed or cancelled run leaves no partial result.
    """
    out = check_new_output_folder(out, what)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()  # only an empty folder reaches this point (checked above)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --- JSON files: every refusal names the file ------------------------------------------------------------


def json_kind(value) -> str:
    """What a JSON value is, in words for a message ("a list", "text", ...)."""
    if isinstance(value, bool):  # before the numbers: JSON true/false arrive as Python bools, which are ints
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    kinds = {str: "text", list: "a list", dict: "an object", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def refuse_broken_link(path: str | os.PathLike, what: str) -> None:
    """A symbolic link whose target is gone looks like a missing file; say what it is, so that the link is fixed."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"The {what} {path} is a broken link: it points to {os.readlink(path)}, which does not "
                         "exist.")


def _parsed_json(text: str, path: Path, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        reason = f"{error.msg} at line {error.lineno}, column {error.colno}"
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        reason = " ".join(str(error).split())
    raise ValueError(f"The {what} {path} could not be read as JSON ({reason}).") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object (named fields) in the file ``path``; otherwise a ValueError of one sentence naming ``what``,
    the file and what is wrong: missing, a broken link, unreadable, not UTF-8, not JSON, not an object."""
    path = Path(path)
    refuse_broken_link(path, what)
    if not path.is_file():
        raise ValueError(f"The {what} {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: the byte-order mark some editors write is no error
    except OSError as error:
        raise ValueError(f"The {what} {path} could not be read ({error.strerror}).") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"The {what} {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at position "
                         f"{error.start}); save it as UTF-8 JSON.") from None
    data = _parsed_json(text, path, what)
    if not isinstance(data, dict):
        raise ValueError(f"The {what} {path} is not a JSON object of named fields (it holds {json_kind(data)}).")
    return data
