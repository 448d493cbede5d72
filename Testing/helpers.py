"""What many test files of the main suite share: the ``gliomaprog`` command line run in a child process, the check
of its one-line errors, and the cut of a case folder to a slab around its lesion (``crop_case_to_lesion``) for the
end-to-end runs, which need the lesion and its surroundings, not the whole head. The synthetic-case fixtures
(``small_case``, ``small_case_folder``, ``full_case``) are in ``conftest.py``; ``conftest.py`` also puts this folder
on ``sys.path``, so ``from helpers import ...`` works.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine

# The ``gliomaprog`` console script, run with this interpreter (the project's environment) as ``python -m``.
GLIOMAPROG = (sys.executable, "-m", "GliomaProgressionLib.cli.main")
PROGRESS_LINE = re.compile(r"^\[\s*\d+%\] ")


def gliomaprog(*arguments, timeout: float | None = 300, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` in a child process, stdout and stderr captured as text (paths may be Path objects).

    ``timeout=None`` for the commands that train a model."""
    return subprocess.run([*GLIOMAPROG, *map(str, arguments)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, after_progress: bool = False,
                          ignore_case: bool = False) -> None:
    """A refusal as the command line must give it: exit code 2, exactly one line on stderr holding every fragment
    (the input or option it names, what is wrong), and no traceback. With ``after_progress`` the progress lines
    of the work done before the input was found wrong may come first; the error is then the last line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if after_progress:
        lines = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        if ignore_case:
            assert fragment.lower() in lines[0].lower(), lines[0]
        else:
            assert fragment in lines[0], lines[0]


@dataclass
class Outcome:
    """What a command run in this process gave: as ``subprocess.CompletedProcess`` names it."""

    returncode: int
    stderr: str
    stdout: str


def gliomaprog_here(capsys, *arguments) -> Outcome:
    """``gliomaprog ARGUMENTS`` in this process (``gliomaprog_in_process``), for tests that hold ``capsys``: what
    the test printed before is cleared first, so the outcome holds only the command's output."""
    capsys.readouterr()
    return gliomaprog_in_process(*arguments)


def gliomaprog_in_process(*arguments, env: dict | None = None) -> Outcome:
    """``gliomaprog ARGUMENTS`` in this process, what it prints captured, ``env`` set only while it runs: for
    module fixtures (no ``capsys`` there) and commands whose interpreter start-up and imports (1-3 s of CPU a
    child) would cost more than their work. The command's own exit code and stderr are checked as ``gliomaprog``'s
    are; a traceback would fail the test as the exception itself."""
    from GliomaProgressionLib.cli import main as cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update({name: str(value) for name, value in (env or {}).items()})
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main([str(a) for a in arguments])
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Outcome(code, stderr.getvalue(), stdout.getvalue())


def assert_nothing_written(parent, out) -> None:
    """Neither the output nor a staging folder beside it (``.partial-``) is left behind."""
    assert not out.exists()
    assert not [p for p in parent.iterdir() if ".partial-" in p.name]


# --- small cases for end-to-end runs: the phantom cut to a slab around its lesion ---------------------------------

# A whole small head costs a `gliomaprog run` about a minute; a slab around the lesion a fraction of it and still
# holds what the chain needs: the whole lesion and recurrence, white matter beside them, every series' own grid.
SLAB_MM = 48.0  # the least superior-inferior extent kept around the lesion
LESION_MARGIN_MM = 5.0  # kept above and below the lesion when the lesion is taller than SLAB_MM allows
# Label files whose every non-zero voxel must survive a crop: a cut lesion or truth would change what a run proves.
LABEL_FILES = ("lesion.nii.gz", "recurrence.nii.gz", "progression.nii.gz")


def _slice_centres_s(image) -> np.ndarray:
    """The superior coordinate of the in-plane centre of each slice (third axis): for an oblique grid the centre
    of the field of view, not the corner voxel, stands for the slice."""
    i, j = (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
    row = image.affine[2]
    return row[0] * i + row[1] * j + row[2] * np.arange(image.shape[2]) + row[3]


def _slab_slices(image, centre_s_mm: float, slab_mm: float, points=None) -> tuple[int, int]:
    """First and last slice (inclusive) of ``image`` kept: those whose centre lies within |S - centre| <=
    slab_mm / 2, widened to every slice that holds one of ``points`` (world RAS, N x 3)."""
    axis = image.affine[:3, 2]
    if abs(axis[2]) < 0.7 * np.linalg.norm(axis):
        raise ValueError("The series' third axis is not superior-inferior, so its slices cannot be cut to an S slab.")
    keep = np.flatnonzero(np.abs(_slice_centres_s(image) - centre_s_mm) <= slab_mm / 2)
    low, high = (int(keep[0]), int(keep[-1])) if keep.size else (image.shape[2], -1)
    if points is not None and len(points):
        k = (np.linalg.inv(image.affine) @ np.c_[points, np.ones(len(points))].T)[2]
        low = min(low, max(int(np.floor(k.min())), 0))
        high = max(high, min(int(np.ceil(k.max())), image.shape[2] - 1))
    if low > high:
        raise ValueError("The slab holds no slice of a series of the case.")
    return low, high


def _crop_folder(folder: Path, centre_s_mm: float, slab_mm: float, points=None) -> None:
    """Every series of the case folder (each ``*.nii.gz`` in it and in its subfolders, e.g. ``truth/``) cut, in
    place, to the slices whose centre lies in the slab |S - centre_s_mm| <= slab_mm / 2. Whole slices: each
    series keeps its own in-plane grid, spacing and orientation (its affine only moves to the first slice kept),
    so registration and resampling work as on the uncut case; a DSC series (4D) is cut on its third axis and keeps
    every frame. A lesion, recurrence or progression file cut by the slab is a ValueError."""
    for path in sorted(Path(folder).rglob("*.nii.gz")):
        image = nib.load(path)
        low, high = _slab_slices(image, centre_s_mm, slab_mm, points)
        if (low, high) == (0, image.shape[2] - 1):
            continue
        before = _label_voxels(path, image)
        cropped = image.slicer[:, :, low:high + 1]  # whole slices; a 4D series keeps every frame
        nib.save(cropped, path)
        if before is not None and _label_voxels(path, nib.load(path)) != before:
            raise ValueError(f"The slab cuts {path.name}: widen it.")


def _label_voxels(path: Path, image) -> int | None:
    return int(np.count_nonzero(np.asarray(image.dataobj))) if path.name in LABEL_FILES else None


def crop_case_to_lesion(folder, slab_mm: float = SLAB_MM, margin_mm: float = LESION_MARGIN_MM) -> tuple[float, float]:
    """The case folder cut in place (every series, ``_crop_folder``) to a slab centred on its lesion (``lesion.nii.gz``):
    ``slab_mm`` tall, or the lesion's height plus ``margin_mm`` above and below if that is more. Each series also
    keeps every slice through which the lesion passes (an oblique grid's slices are tilted against the slab), so
    the lesion lies wholly inside every series. Returns the slab's centre and height (mm)."""
    folder = Path(folder)
    lesion = nib.load(folder / "lesion.nii.gz")
    voxels = np.argwhere(np.asarray(lesion.dataobj) != 0)
    if not len(voxels):
        raise ValueError(f"The lesion of {folder.name} is empty, so there is no slab around it.")
    points = apply_affine(lesion.affine, voxels)
    low, high = points[:, 2].min(), points[:, 2].max()
    centre, height = (low + high) / 2, max(slab_mm, high - low + 2 * margin_mm)
    _crop_folder(folder, centre, height, points)
    return float(centre), float(height)


def write_cropped_case(synthetic_case, folder, seed: int, dsc: bool = True, keep_truth: bool = False) -> Path:
    """The small synthetic case of ``seed`` (``synthetic_case`` is conftest's fixture) written to ``folder`` and
    cut to the slab around its lesion (``crop_case_to_lesion``); its ``truth/`` folder, cut too, only with
    ``keep_truth`` (as a cohort's case folders have none)."""
    from GliomaProgressionLib.phantom.folder import write_case

    folder = Path(folder)
    write_case(synthetic_case(seed=seed, size="small", dsc=dsc), folder)
    if not keep_truth:
        shutil.rmtree(folder / "truth")
    crop_case_to_lesion(folder)
    return folder
