"""File input and output that never leaves a half-written result behind.

Images are read and written with SimpleITK (NIfTI, NRRD, and every other format ITK knows). A single file is
written to a temporary name in its destination folder and renamed into place; a folder of results is built
in a hidden staging folder beside its destination and renamed into place once complete.

Every image file is read through ``read_image``, the one place that checks what the readers let through:
NaN and infinity (refused, with their count: the NIfTI library reads them as 0, which changes the answer
without a word), voxel sizes and axes (``geometry.check_voxel_grid``), truncated NIfTI files. What ITK, GDCM and
the NIfTI library print on the process's stderr is kept from the user (``library_messages``): a refusal is one
sentence.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import sys
import zlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case.geometry import (Volume, check_3d, check_voxel_grid, check_voxel_size, sitk_from_volume,
                                                volume_from_sitk)

# NIfTI data are scanned in pieces of this many bytes (a .gz is decompressed once, never held whole in memory).
SCAN_CHUNK_BYTES = 1 << 22
NIFTI_1_HEADER_BYTES, NIFTI_2_HEADER_BYTES = 348, 540


# --- what the C++ libraries print -----------------------------------------------------------------------------


@contextlib.contextmanager
def library_messages() -> Iterator[list[str]]:
    """Keep what ITK, GDCM and the NIfTI library print from the user; the list holds it once the block ends.

    They print warnings and errors from C++ straight to the process's stderr (file descriptor 2), which no Python
    setting reaches: 2-31 lines of them came before a one-line refusal. ITK's own warnings are switched off; the
    rest is caught by pointing descriptor 2 at a temporary file for the duration of the block. A process without
    a descriptor 2 (a GUI on Windows) has nothing to protect.
    """
    messages: list[str] = []
    warnings_were_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    if sys.stderr is not None:
        sys.stderr.flush()  # what Python wrote before the block goes out before the descriptor moves
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    sink = tempfile.TemporaryFile()
    try:
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        yield messages
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_shown)
        sink.seek(0)
        messages.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())
        sink.close()


def itk_reason(error: RuntimeError) -> str:
    """The informative end of an ITK exception, without its source file, class name and address."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "unknown reason"
    reason = re.sub(r"^(ITK ERROR|sitk::ERROR):\s*", "", lines[-1])
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)


# --- NIfTI files as stored ------------------------------------------------------------------------------------


def _open_stored(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _stored_nifti_header(path: Path, what: str):
    """The NIfTI-1 or -2 header exactly as stored (nibabel.load would correct it, and log that it did)."""
    import nibabel

    try:
        with _open_stored(path) as stream:
            start = stream.read(4)
            sizes = {int.from_bytes(start, order) for order in ("little", "big")} if len(start) == 4 else set()
            kind = nibabel.Nifti2Header if NIFTI_2_HEADER_BYTES in sizes else nibabel.Nifti1Header
            if not sizes & {NIFTI_1_HEADER_BYTES, NIFTI_2_HEADER_BYTES}:
                raise ValueError(f"The {what} file {path} is not a NIfTI file (no NIfTI header).")
            stream.seek(0)
            header = kind.from_fileobj(stream, check=False)
        header.get_data_dtype(), header.get_data_shape()  # an unknown data type or shape is a damaged header
        return header
    except (EOFError, OSError, zlib.error, nibabel.spatialimages.HeaderDataError) as error:
        raise ValueError(f"The {what} file {path} is damaged or incomplete ({error}).") from None


def _scan_nifti_data(path: Path, header) -> tuple[int, int]:
    """(bytes stored, voxels that are NaN or infinite) of a NIfTI file, in one streamed pass."""
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    voxels = int(np.prod(header.get_data_shape()))
    stored = non_finite = counted = 0
    rest = b""  # a voxel split between two pieces
    with _open_stored(path) as stream:
        while piece := stream.read(SCAN_CHUNK_BYTES):
            data = rest + piece[max(offset - stored, 0):]
            stored += len(piece)
            if dtype.kind not in "fc":  # integers cannot hold NaN
                continue
            whole = min(len(data) // dtype.itemsize, voxels - counted)
            values = np.frombuffer(data[:whole * dtype.itemsize], dtype)
            non_finite += values.size - int(np.count_nonzero(np.isfinite(values)))
            counted += whole
            rest = data[whole * dtype.itemsize:] if counted < voxels else b""
    return stored, non_finite


def check_nifti_file(path: Path, what: str) -> None:
    """Check a NIfTI file for what ITK's reader hides (measured with SimpleITK 2.5 on .nii and .nii.gz): it reads a
    truncated file zero-filled, NaN and infinity as 0, and a zero, negative or undefined voxel size as 1 mm."""
    header = _stored_nifti_header(path, what)
    if int(header["sform_code"]) == 0:  # with an sform, ITK takes the voxel size from it: checked after reading
        spatial = min(max(int(header["dim"][0]), 1), 3)
        check_voxel_size(header["pixdim"][1:1 + spatial], f"The {what} file {path}")
    try:
        stored, non_finite = _scan_nifti_data(path, header)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"The {what} file {path} is damaged or incomplete ({error}).") from None
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if stored < expected:
        raise ValueError(f"The {what} file {path} is incomplete: it holds {stored} of the {expected} bytes its "
                         "header announces.")
    refuse_non_finite(non_finite, int(np.prod(header.get_data_shape())), f"The {what} file {path}")


check_nifti_complete = check_nifti_file  # its earlier name, which the tests of truncated files use


def _check_metaimage_spacing(path: Path, what: str) -> None:
    """MetaImage's reader turns a negative ElementSpacing into a flipped axis: read the header's own value."""
    with open(path, "rb") as stream:
        header = stream.read(1 << 16).split(b"ElementDataFile", 1)[0].decode("latin-1")
    found = re.search(r"^\s*Element(?:Spacing|Size)\s*=\s*(.+)$", header, re.MULTILINE)
    if found:
        try:
            spacing = [float(value) for value in found.group(1).split()]
        except ValueError:
            return  # not numbers: ITK's reader says so
        check_voxel_size(spacing[:3], f"The {what} file {path}")


# --- reading --------------------------------------------------------------------------------------------------


def refuse_non_finite(count: int, total: int, what: str) -> None:
    """Refuse an image with NaN or infinite voxels (``what``: "The CE-T1 file t1c.nii.gz").

    Refused rather than read: ITK's NIfTI reader would make them 0 and every later step would take them for
    numbers (a NaN block in CE-T1 changed the predicted progression from 9.1 to 3.4 mL, with exit 0); no value
    put in their place would be the image's own.
    """
    if count:
        raise ValueError(f"{what} has {count} of {total} voxels that are NaN or infinite (not numbers); an image must "
                         "hold finite numbers: replace them (e.g. by 0 outside the head) and save it again.")


def _non_finite_voxels(image: sitk.Image) -> int:
    array = sitk.GetArrayViewFromImage(image)
    return array.size - int(np.count_nonzero(np.isfinite(array))) if array.dtype.kind in "fc" else 0


def check_image(image: sitk.Image, what: str) -> sitk.Image:
    """The checks every image read gets, from a file or a DICOM folder (``what``: "The CE-T1 file t1c.nii.gz"):
    a voxel grid (positive voxel size, axes at right angles) and finite values."""
    check_voxel_grid(image, what)
    refuse_non_finite(_non_finite_voxels(image), int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel(),
                      what)
    return image


def check_signal(image: sitk.Image | Volume | np.ndarray, what: str) -> None:
    """Refuse an image in which every voxel holds one value (all zero, saturated): nothing in it can be registered
    or measured, and ITK would fail on it deep in the registration ("Total Mass of the image was zero")."""
    if isinstance(image, sitk.Image):
        array = sitk.GetArrayViewFromImage(image)
    else:
        array = np.asarray(image.array if isinstance(image, Volume) else image)
    if array.size and array.min() == array.max():
        raise ValueError(f"{what} holds no signal (every voxel is {float(array.flat[0]):g}).")


# ITK's exceptions that are about the geometry in the header, in words; the rest are passed on as ITK says them.
ITK_GEOMETRY_REASONS = (
    (re.compile(r"Refusing to change spacing from \[[^\]]*\] to \[([^\]]*)\]"),
     lambda found: f"has a voxel size of {' x '.join(found.group(1).split(', '))} mm; every voxel size must be a "
                   "positive number."),
    (re.compile(r"orthonormal direction cosines"),
     lambda found: "has a sheared voxel grid (its axes are not at right angles, e.g. gantry tilt); resample it onto "
                   "an orthogonal grid first."),
)


def _read_error(error: RuntimeError, path: Path, what: str) -> ValueError:
    for pattern, sentence in ITK_GEOMETRY_REASONS:
        found = pattern.search(str(error))
        if found:
            return ValueError(f"The {what} file {path} {sentence(found)}")
    return ValueError(f"The {what} file {path} could not be read as an image ({itk_reason(error)}).")


def read_image(path: str | os.PathLike, what: str = "image") -> sitk.Image:
    """Read an image file, or raise ValueError naming the input and the problem: missing, unreadable, truncated,
    NaN or infinite voxels, a voxel size that is not positive, axes not at right angles."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"The {what} file {path} does not exist.")
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        check_nifti_file(path, what)
    if path.is_file() and path.name.endswith((".mha", ".mhd")):
        _check_metaimage_spacing(path, what)
    try:
        with library_messages():
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise _read_error(error, path, what) from None
    return check_image(image, f"The {what} file {path}")


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
    """Write an image atomically: to a temporary file beside ``path``, then renamed over it.

    A write that fails (a full disk) is a ValueError of one sentence, and nothing is left at ``path``. The NIfTI
    writer does not raise then: it prints "** ERROR: NWAD: wrote only 0 of 256000 bytes" and returns, so what it
    prints is read too.
    """
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        failure = None
        with library_messages() as messages:
            try:
                sitk.WriteImage(image, str(temporary), compress)
            except RuntimeError as error:
                failure = itk_reason(error)
        failure = failure or next((line.removeprefix("** ERROR:").strip() for line in messages
                                   if line.startswith("** ERROR")), None)
        if failure:
            raise ValueError(f"The image {path} could not be written ({failure}); is the disk full?")
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
    return parse_json(text, f"The {what} {path}")


def parse_json(text: str, subject: str):
    """``text`` as JSON, or ValueError "<subject> could not be read as JSON (<why>)." in one sentence."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        reason = f"{error.msg} at line {error.lineno}, column {error.colno}"
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        reason = " ".join(str(error).split())
    raise ValueError(f"{subject} could not be read as JSON ({reason}).") from None


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
