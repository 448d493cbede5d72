"""Python packages inside Slicer: what is missing, and the pip command lines that install it without harm.

Pure Python (no slicer, qt, vtk or ctk): the module widgets do the asking and the running. The packages the
three modules need beyond what Slicer ships are listed in ``Resources/requirements.txt`` (``REQUIREMENTS_FILE``,
the Slicer template's convention). Two come from Slicer extensions instead of pip: torch from the PyTorch
extension (``PyTorchUtils``, which picks the build for the machine's GPU) and ``radiomics`` from SlicerRadiomics
(PyPI has no Python 3.12 wheel of pyradiomics).

What a widget does on first use (e.g. when Predict is pressed), in this order:

1. ``missing = dependencies.missing_requirements(only=...)``; nothing missing: go on.
   ``only`` narrows the check to what the action needs, e.g. ``dependencies.CTV_PLANNER`` (CTV Planner) or
   ``dependencies.SYNTHETIC_CASE`` (Generate / Sample Data); ``None`` checks everything.
2. Ask once, listing ``str(m) for m in missing`` (declined: stop, leave the button as it was).
3. Extensions, for each ``m`` with ``m.provider`` in ``EXTENSIONS`` (``PYTORCH_EXTENSION``, ``RADIOMICS_EXTENSION``):
   if the extension's module is not importable (``import PyTorchUtils``), install it with
   ``slicer.app.extensionsManagerModel().installExtensionFromServer(m.provider)`` and ask for a restart.
   torch with the PyTorch extension present:
   ``PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION)``.
   Without the extension (not wanted, or not available for this Slicer): run ``cpu_torch_command(constraints)``
   like step 4 (the CPU build from the PyTorch CPU index).
4. ``constraints = dependencies.write_constraints(<temp folder>/"constraints.txt")`` (after torch is in, so it
   is pinned too), then ``runner = process.BackgroundProcess(dependencies.pip_install_command(
   pip_requirements(missing), constraints)).start()``; a QTimer polls ``runner.poll()`` and shows
   ``dependencies.pip_progress(runner.lines)`` (message, and a fraction or None for "busy").
5. Exit code 0: ``importlib.invalidate_caches()`` and call ``missing_requirements`` again (it should be empty);
   otherwise show ``dependencies.pip_error(runner.lines)``. A package that was already imported and got a new
   version needs a Slicer restart (``restart_needed(before, after)`` with ``installed_versions()`` taken
   before and after).

The constraints file pins every package Slicer ships (``SLICER_PACKAGES``), and torch/torchvision, to the
version installed, so pip fails with a readable conflict instead of upgrading or replacing any of them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:  # Slicer 5.12 ships packaging (slicer.packaging uses it); pip's vendored copy is the fallback
    from packaging.markers import InvalidMarker
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - only in a Python without packaging
    from pip._vendor.packaging.markers import InvalidMarker
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

# Installed beside this package as qt-scripted-modules/Resources/requirements.txt (the module's Resources folder),
# in the source tree as GliomaProgression/Resources/requirements.txt: the same relative place.
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"

PIP = "pip"
PYTORCH_EXTENSION = "PyTorch"  # its module is PyTorchUtils
RADIOMICS_EXTENSION = "SlicerRadiomics"
EXTENSIONS = (PYTORCH_EXTENSION, RADIOMICS_EXTENSION)

# torch.serialization.safe_globals (safe model loading) needs 2.5; nnunetv2 2.8.1 excludes 2.9.*.
TORCH_VERSION = ">=2.5,!=2.9.*"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

# Import name -> (requirement, provider) of what extensions provide.
EXTENSION_REQUIREMENTS = {
    "torch": ("torch" + TORCH_VERSION, PYTORCH_EXTENSION),
    "radiomics": ("pyradiomics", RADIOMICS_EXTENSION),
}

# What each action needs (distribution or import names as in requirements.txt / EXTENSION_REQUIREMENTS).
PREDICT = ("torch", "nnunetv2", "nibabel", "matplotlib", "dipy")
RADIOMICS = ("radiomics", "nibabel", "matplotlib")
SYNTHETIC_CASE = ("nilearn", "nibabel", "matplotlib")  # Generate, Sample Data
CTV_PLANNER = ("scikit-image", "highdicom", "scikit-fmm")
INVASION = ("scikit-learn", "nibabel", "dipy")  # the radiomics invasion map (MLP) on the case's channels

# Python packages Slicer itself installs (SuperBuild/External_python-*.cmake of Slicer 5.12.3, unchanged in the
# 5.13 preview), with the 5.12.3 versions: the names are pinned to whatever version is installed at run time;
# the versions are what the resolution test checks against.
SLICER_PACKAGES = {
    "certifi": "2026.5.20", "cffi": "2.0.0", "chardet": "7.4.3", "charset-normalizer": "3.4.7", "couchdb": "1.2",
    "cryptography": "48.0.0", "dcmqi": "0.4.0", "deprecated": "1.3.1", "dicomweb-client": "0.61.0",
    "gitdb": "4.0.12", "gitpython": "3.1.50", "highdicom": "0.27.0", "idna": "3.16", "numpy": "2.4.6",
    "packaging": "26.2", "pillow": "12.2.0", "pip": "26.1.1", "pycparser": "3.0", "pydicom": "3.0.2",
    "pygithub": "2.9.1", "pyjpegls": "1.5.1", "pyjwt": "2.13.0", "pynacl": "1.6.2", "pyparsing": "3.3.2",
    "python-dateutil": "2.9.0.post0", "requests": "2.34.2", "retrying": "1.4.2", "scipy": "1.17.1",
    "setuptools": "82.0.1", "simpleitk": "2.5.5", "six": "1.17.0", "smmap": "5.0.3",
    "typing-extensions": "4.15.0", "urllib3": "2.7.0", "wheel": "0.47.0", "wrapt": "2.2.1",
}
# Installed by the PyTorch extension: pinned too once present, so no dependency swaps the build it chose.
TORCH_PACKAGES = ("torch", "torchvision")


@dataclass(frozen=True)
class MissingRequirement:
    requirement: str  # as pip takes it, e.g. "nnunetv2==2.8.1"
    installed: str | None  # the installed version that does not satisfy it, None when not installed
    provider: str  # PIP, or the extension that provides it (PYTORCH_EXTENSION, RADIOMICS_EXTENSION)

    def __str__(self) -> str:
        where = "" if self.provider == PIP else f", from the {self.provider} extension"
        state = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.requirement} ({state}{where})"


@dataclass(frozen=True)
class PipProgress:
    message: str
    fraction: float | None  # None: busy, no measure (resolving, building, installing)


def read_requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements in a pip requirements file (comments, blank lines and pip options skipped)."""
    requirements = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirements.append(Requirement(line))
        except (InvalidRequirement, InvalidMarker) as error:
            raise ValueError(f"{path}, line {number}: {error}") from error
    return requirements


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str]:
    """{canonical distribution name: version} of everything installed (fresh: caches invalidated first)."""
    importlib.invalidate_caches()
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions.setdefault(canonicalize_name(name), distribution.version)
    return versions


def _unsatisfied(requirement: Requirement, versions: dict[str, str]) -> str | None | bool:
    """False when satisfied, else the installed version (None when not installed)."""
    installed = versions.get(canonicalize_name(requirement.name))
    if installed is None:
        return None
    try:
        return False if requirement.specifier.contains(Version(installed), prereleases=True) else installed
    except InvalidVersion:
        return installed


def missing_requirements(path: str | Path = REQUIREMENTS_FILE, only=None,
                         versions: dict[str, str] | None = None) -> list[MissingRequirement]:
    """What is not installed, or installed at a version that does not satisfy the requirement.

    ``only``: names (distribution names from the requirements file, or ``torch`` / ``radiomics``) to check;
    None checks all. Requirements whose environment marker does not apply here are skipped. ``versions``
    (``installed_versions()`` by default) is for tests.
    """
    versions = installed_versions() if versions is None else {canonicalize_name(n): v for n, v in versions.items()}
    wanted = None if only is None else {canonicalize_name(name) for name in only}
    missing = []
    for requirement in read_requirements(path):
        if wanted is not None and canonicalize_name(requirement.name) not in wanted:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        state = _unsatisfied(requirement, versions)
        if state is not False:
            missing.append(MissingRequirement(str(requirement), state, PIP))
    for module, (text, provider) in EXTENSION_REQUIREMENTS.items():
        if wanted is not None and module not in wanted:
            continue
        requirement = Requirement(text)
        state = _unsatisfied(requirement, versions)
        if state is None and module == "radiomics" and importlib.util.find_spec(module) is not None:
            state = False  # SlicerRadiomics puts the package on the path, its metadata may live elsewhere
        if state is not False:
            missing.append(MissingRequirement(text, state, provider))
    return missing


def pip_requirements(missing: list[MissingRequirement]) -> list[str]:
    """The requirements of ``missing`` that pip installs (not the extensions' ones)."""
    return [m.requirement for m in missing if m.provider == PIP]


def constraints_text(versions: dict[str, str]) -> str:
    """A pip constraints file pinning each package Slicer ships, and torch/torchvision, to its version in ``versions``.

    Packages that are not installed are not pinned (installing them replaces nothing).
    """
    by_name = {canonicalize_name(name): version for name, version in versions.items()}
    lines = ["# Written by GliomaProgression: packages Slicer ships (and torch) stay at the installed version."]
    for name in sorted({*map(canonicalize_name, SLICER_PACKAGES), *TORCH_PACKAGES}):
        if name in by_name:
            lines.append(f"{name}=={by_name[name]}")
    return "\n".join(lines) + "\n"


def write_constraints(path: str | Path, versions: dict[str, str] | None = None) -> Path:
    """Write ``constraints_text`` for what is installed now (or ``versions``) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(constraints_text(installed_versions() if versions is None else versions), encoding="utf-8")
    return path


def _python(python: str | None) -> str:
    if python is not None:
        return python
    from GliomaProgressionLib.models.process import python_executable  # PythonSlicer inside Slicer

    return python_executable()


def _pip_install(python: str | None, constraints: str | Path) -> list[str]:
    return [_python(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "raw", "--constraint", str(constraints)]


def pip_install_command(requirements: list[str], constraints: str | Path, python: str | None = None) -> list[str]:
    """``python -m pip install`` of ``requirements`` under ``constraints`` (from ``write_constraints``).

    ``python`` defaults to the interpreter children run with (PythonSlicer inside Slicer). Run it with
    ``process.BackgroundProcess(command).start()``.
    """
    if not requirements:
        raise ValueError("Nothing to install.")
    return _pip_install(python, constraints) + list(requirements)


def cpu_torch_command(constraints: str | Path, python: str | None = None) -> list[str]:
    """Install the CPU build of torch and torchvision from the PyTorch CPU index (without the PyTorch extension).

    Only that index is used, so pip cannot pick PyPI's CUDA build on Linux; dependencies already installed (Slicer's
    packages) satisfy torch's requirements in place.
    """
    return _pip_install(python, constraints) + ["--index-url", CPU_TORCH_INDEX, "torch" + TORCH_VERSION,
                                                "torchvision"]


def restart_needed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Distributions that changed version or were newly installed and that have a module imported in this process."""
    changed = {name for name, version in after.items() if before.get(name) != version}
    if not changed:
        return []
    imported = set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module in sys.modules:
            imported.update(canonicalize_name(d) for d in distributions)
    return sorted(changed & imported)


_RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
_COLLECTING = re.compile(r"^Collecting (\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+?)(?:\s+\(([^)]*)\))?$")
_BUILDING = re.compile(r"^\s*Building wheel for (\S+)")
_INSTALLING = re.compile(r"^Installing collected packages: (.*)$")
_INSTALLED = re.compile(r"^Successfully installed (.*)$")


def _file_name(url_or_name: str) -> str:
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


def pip_progress(lines: list[str]) -> PipProgress:
    """What pip is doing, from its output so far (``runner.lines``), as one message for a status label.

    The fraction is that of the file being downloaded (pip's ``--progress-bar raw`` lines); None otherwise.
    """
    collected = 0
    state = PipProgress("Starting pip", None)
    download = None
    for line in lines:
        line = line.rstrip()
        if match := _RAW_PROGRESS.match(line):
            done, total = int(match.group(1)), int(match.group(2))
            if download and total > 0:
                state = PipProgress(f"Downloading {download} ({done / 1e6:.0f} of {total / 1e6:.0f} MB)",
                                    min(1.0, done / total))
        elif match := _COLLECTING.match(line):
            collected += 1
            state = PipProgress(f"Resolving packages ({collected}): {match.group(1)}", None)
        elif match := _DOWNLOADING.match(line):
            download = _file_name(match.group(1))
            size = f" ({match.group(2)})" if match.group(2) else ""
            state = PipProgress(f"Downloading {download}{size}", 0.0)
        elif match := _BUILDING.match(line):
            state = PipProgress(f"Building {match.group(1)}", None)
        elif match := _INSTALLING.match(line):
            count = len([name for name in match.group(1).split(",") if name.strip()])
            state = PipProgress(f"Installing {count} package{'s' if count != 1 else ''}", None)
        elif match := _INSTALLED.match(line):
            state = PipProgress(f"Installed {match.group(1)}", 1.0)
        elif line.startswith("ERROR:"):
            state = PipProgress(line, None)
    return state


def pip_error(lines: list[str], count: int = 12) -> str:
    """A readable reason for a failed pip run: its first error with the conflict explanation that follows it."""
    start = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), None)
    if start is None:
        tail = [line for line in lines if line.strip() and not _RAW_PROGRESS.match(line)]
        return "\n".join(tail[-count:]) or "pip wrote nothing"
    selected = [line for line in lines[start:] if line.strip() and not _RAW_PROGRESS.match(line)]
    return "\n".join(selected[:count])
