"""Python packages inside Slicer: missing detection, the constraints that protect Slicer's packages, pip command
lines and progress, and (slow) a resolution of the shipped requirements for Slicer's Python 3.12 on three OSs."""

import json
import subprocess
import sys
import time

import pytest

from GliomaProgressionLib import dependencies as deps
from GliomaProgressionLib.models.process import BackgroundProcess

try:
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover
    from pip._vendor.packaging.utils import canonicalize_name


def _requirements_file(tmp_path, text):
    path = tmp_path / "requirements.txt"
    path.write_text(text, encoding="utf-8")
    return path


FAKE = """
# a comment
--prefer-binary
glioma-fake-package-that-does-not-exist>=1.0
oldpkg>=2   # inline comment
goodpkg==1.5
winonly>=1; sys_platform == "nonexistent-os"
"""


def test_missing_reports_absent_and_too_old_and_skips_satisfied_and_foreign_markers(tmp_path):
    path = _requirements_file(tmp_path, FAKE)
    versions = {"OldPkg": "1.9", "goodpkg": "1.5", "torch": "2.13.0+cpu", "pyradiomics": "3.0.1"}
    missing = deps.missing_requirements(path, versions=versions)
    assert [(m.requirement, m.installed, m.provider) for m in missing] == [
        ("glioma-fake-package-that-does-not-exist>=1.0", None, deps.PIP),
        ("oldpkg>=2", "1.9", deps.PIP),
    ]
    assert str(missing[0]) == "glioma-fake-package-that-does-not-exist>=1.0 (not installed)"
    assert str(missing[1]) == "oldpkg>=2 (1.9 installed)"
    assert deps.pip_requirements(missing) == ["glioma-fake-package-that-does-not-exist>=1.0", "oldpkg>=2"]


def test_torch_and_radiomics_come_from_extensions(tmp_path, monkeypatch):
    path = _requirements_file(tmp_path, "goodpkg==1.5\n")
    monkeypatch.setattr(deps.importlib.util, "find_spec", lambda name, *args: None)
    missing = deps.missing_requirements(path, versions={"goodpkg": "1.5", "torch": "2.9.1"})
    assert [(m.requirement, m.installed, m.provider) for m in missing] == [
        ("torch" + deps.TORCH_VERSION, "2.9.1", deps.PYTORCH_EXTENSION),  # nnunetv2 excludes 2.9.*
        ("pyradiomics", None, deps.RADIOMICS_EXTENSION),
    ]
    assert "from the PyTorch extension" in str(missing[0])
    assert deps.pip_requirements(missing) == []
    # 'only' narrows the check to what one action needs
    assert deps.missing_requirements(path, only=["goodpkg"], versions={"goodpkg": "1.5"}) == []
    only_torch = deps.missing_requirements(path, only=deps.PREDICT, versions={})
    assert [m.provider for m in only_torch] == [deps.PYTORCH_EXTENSION]


def test_radiomics_found_on_the_path_without_metadata(tmp_path, monkeypatch):
    path = _requirements_file(tmp_path, "")
    monkeypatch.setattr(deps.importlib.util, "find_spec", lambda name, *args: object())
    assert deps.missing_requirements(path, only=["radiomics"], versions={}) == []


def test_this_environment_has_what_the_shipped_requirements_ask():
    # The development venv installs the same packages (pyproject.toml); on Linux scikit-fmm is not asked for.
    missing = deps.missing_requirements()
    assert [str(m) for m in missing] == []


def test_shipped_requirements_leave_slicer_packages_torch_and_radiomics_alone():
    requirements = deps.read_requirements()
    names = {canonicalize_name(r.name) for r in requirements}
    assert {"nnunetv2", "nilearn", "matplotlib", "scikit-image", "highdicom", "scikit-fmm"} <= names
    assert not names & {"torch", "torchvision", "pyradiomics", "pyradiomics-bhklab", "numpy", "simpleitk",
                        "pydicom", "scipy"}
    slicer = {canonicalize_name(n): v for n, v in deps.SLICER_PACKAGES.items()}
    for requirement in requirements:  # a package Slicer ships may be named only with a range Slicer meets
        name = canonicalize_name(requirement.name)
        if name in slicer:
            assert requirement.specifier.contains(slicer[name]), requirement
    # every name the actions check is a requirement or an extension's
    for name in {*deps.PREDICT, *deps.RADIOMICS, *deps.SYNTHETIC_CASE, *deps.CTV_PLANNER}:
        assert canonicalize_name(name) in names or name in deps.EXTENSION_REQUIREMENTS, name


def test_constraints_pin_slicer_packages_and_torch_at_the_installed_version(tmp_path):
    versions = {"numpy": "2.4.6", "SimpleITK": "2.5.5", "pydicom": "3.0.2", "typing_extensions": "4.15.0",
                "torch": "2.13.0+cpu", "torchvision": "0.28.0", "nnunetv2": "2.8.1", "matplotlib": "3.10.0"}
    path = deps.write_constraints(tmp_path / "sub" / "constraints.txt", versions=versions)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == sorted(lines)
    assert set(lines) == {"numpy==2.4.6", "simpleitk==2.5.5", "pydicom==3.0.2", "typing-extensions==4.15.0",
                          "torch==2.13.0+cpu", "torchvision==0.28.0"}  # not installed: not pinned
    # from this environment: whatever of Slicer's packages is installed here is pinned at its version
    text = deps.constraints_text(deps.installed_versions())
    import numpy

    assert f"numpy=={numpy.__version__}" in text.splitlines()
    assert not any(line.startswith("nnunetv2") for line in text.splitlines())


def test_install_commands(tmp_path):
    constraints = tmp_path / "c.txt"
    command = deps.pip_install_command(["nnunetv2==2.8.1", "nilearn>=0.10"], constraints, python="PythonSlicer")
    assert command[:4] == ["PythonSlicer", "-m", "pip", "install"]
    assert command[command.index("--constraint") + 1] == str(constraints)
    assert command[command.index("--progress-bar") + 1] == "raw"
    assert command[-2:] == ["nnunetv2==2.8.1", "nilearn>=0.10"]
    assert deps.pip_install_command(["x"], constraints)[0] == sys.executable  # outside Slicer: this Python
    with pytest.raises(ValueError):
        deps.pip_install_command([], constraints)

    cpu = deps.cpu_torch_command(constraints, python="PythonSlicer")
    assert cpu[cpu.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "--extra-index-url" not in cpu  # PyPI's Linux torch is the CUDA build
    assert cpu[-2:] == ["torch>=2.5,!=2.9.*", "torchvision"]
    assert cpu[cpu.index("--constraint") + 1] == str(constraints)


PIP_OUTPUT = """\
Collecting nnunetv2==2.8.1
  Downloading nnunetv2-2.8.1-py3-none-any.whl.metadata (22 kB)
Collecting acvl-utils<0.3,>=0.2.6 (from nnunetv2==2.8.1)
  Downloading https://files.example/packages/ab/acvl_utils-0.2.6.tar.gz (11 kB)
Progress 5000000 of 20000000
""".splitlines()


def test_pip_progress_messages():
    assert deps.pip_progress([]) == deps.PipProgress("Starting pip", None)
    assert deps.pip_progress(PIP_OUTPUT[:1]) == deps.PipProgress("Resolving packages (1): nnunetv2==2.8.1", None)
    update = deps.pip_progress(PIP_OUTPUT)
    assert update.message == "Downloading acvl_utils-0.2.6.tar.gz (5 of 20 MB)" and update.fraction == 0.25
    later = PIP_OUTPUT + ["Building wheel for acvl-utils (pyproject.toml) ... done",
                          "Installing collected packages: acvl-utils, nnunetv2"]
    assert deps.pip_progress(later[:-1]) == deps.PipProgress("Building acvl-utils", None)
    assert deps.pip_progress(later) == deps.PipProgress("Installing 2 packages", None)
    done = deps.pip_progress(later + ["Successfully installed acvl-utils-0.2.6 nnunetv2-2.8.1"])
    assert done.fraction == 1.0 and done.message.startswith("Installed acvl-utils-0.2.6")


def test_pip_error_keeps_the_conflict_explanation():
    lines = ["Collecting a", "ERROR: Cannot install nnunetv2 because these package versions have conflicting "
             "dependencies.", "", "The conflict is caused by:", "    The user requested (constraint) numpy==2.4.6",
             "Progress 1 of 2", "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io"]
    message = deps.pip_error(lines)
    assert message.splitlines()[0].startswith("ERROR: Cannot install nnunetv2")
    assert "numpy==2.4.6" in message and "Progress" not in message
    assert deps.pip_error(["Traceback (most recent call last):", "boom"]) == "Traceback (most recent call last):\nboom"


def test_pip_command_runs_in_the_background_process(tmp_path):
    # The real pip, through the extension's runner, on a requirement this environment already satisfies:
    # pip reads the constraints file and exits 0 without touching the network.
    constraints = deps.write_constraints(tmp_path / "constraints.txt")
    runner = BackgroundProcess(deps.pip_install_command(["pytest>=1"], constraints)).start()
    assert runner.wait(timeout=120) == 0, deps.pip_error(runner.lines)
    assert any("Requirement already satisfied: pytest" in line for line in runner.lines)


# --- resolution for Slicer's Python on the three platforms -------------------------------------------------------

# What the PyTorch extension installs (torch with its matching torchvision); the version the venv tests with.
TORCH = {"torch": "2.13.0", "torchvision": "0.28.0"}
# Dependencies published as a pure-Python sdist only: built once into a py3-none-any wheel that every platform takes.
PURE_PYTHON_SDISTS = ["acvl-utils>=0.2.6,<0.3"]  # nnunetv2 2.8.1

_COMMON_ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.10", "implementation_name": "cpython",
                       "implementation_version": "3.12.10", "platform_python_implementation": "CPython"}
# Slicer 5.12 binaries: Linux built on a glibc 2.28 system, Windows x64, macOS on Apple silicon (torch 2.13 needs
# macOS 14 there). pip does not widen a manylinux_2_28 tag by itself, so the older ones are listed too.
PLATFORMS = {
    "linux": ([f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"],
              {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}),
    "windows": (["win_amd64"],
                {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"}),
    "macos": (["macosx_14_0_arm64"],
              {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"}),
}
# pip's --platform/--python-version choose wheels, but environment markers (sys_platform == "win32", ...) are still
# evaluated for the machine pip runs on. This runs pip with the target's marker values, nothing else changed.
_PIP_FOR_TARGET = """\
import json, sys
import pip._vendor.packaging.markers as markers
target = json.loads(sys.argv.pop(1))
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_requirements_resolve_to_wheels_for_slicer_python_312_on_linux_windows_and_macos(tmp_path):
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary", ":all:",
                            "--wheel-dir", str(wheels), *PURE_PYTHON_SDISTS], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert [p.name.endswith("-py3-none-any.whl") for p in wheels.iterdir()] == [True] * len(PURE_PYTHON_SDISTS)

    constraints = deps.write_constraints(tmp_path / "constraints.txt", versions={**deps.SLICER_PACKAGES, **TORCH})
    runs = {}
    for name, (tags, markers) in PLATFORMS.items():
        report = tmp_path / f"{name}.json"
        command = [sys.executable, "-c", _PIP_FOR_TARGET, json.dumps({**_COMMON_ENVIRONMENT, **markers}),
                   "install", "--dry-run", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
                   "--python-version", "3.12", *[f"--platform={tag}" for tag in tags],
                   "--target", str(tmp_path / f"target-{name}"), "--find-links", str(wheels),
                   "--constraint", str(constraints), "--requirement", str(deps.REQUIREMENTS_FILE),
                   *[f"{package}=={version}" for package, version in TORCH.items()], "--report", str(report)]
        log = tmp_path / f"{name}.log"  # a file, not a pipe: a full pipe would stall the runs one behind the other
        with open(log, "w") as out:
            runs[name] = (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), report, log)

    slicer = {canonicalize_name(n): v for n, v in deps.SLICER_PACKAGES.items()}
    for name, (run, report, log) in runs.items():
        run.wait(timeout=600)
        output = "\n".join(line for line in log.read_text().splitlines() if not line.startswith("WARNING: Location"))
        assert run.returncode == 0, f"{name}:\n{output[-5000:]}"
        installed = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
        changed = {n: v for n, v in installed.items() if n in slicer and v != slicer[n]}
        assert not changed, f"{name}: would replace Slicer's {changed}"
        assert installed["torch"] == TORCH["torch"] and installed["nnunetv2"] == "2.8.1", name
        assert {"nilearn", "matplotlib", "scikit-image", "acvl-utils"} <= set(installed), name
        assert ("scikit-fmm" in installed) == (name == "windows"), name
        assert not {"pyradiomics", "pyradiomics-bhklab"} & set(installed), name
    print(f"resolved for {', '.join(runs)} in {time.monotonic() - started:.1f} s")


# --- the built extension ----------------------------------------------------------------------------------------

def _installed_requirements(tree):
    """Where dependencies.REQUIREMENTS_FILE points in the folder a built extension installs."""
    lib_parent = deps.REQUIREMENTS_FILE.parents[1]  # GliomaProgression/ here, qt-scripted-modules/ when installed
    return tree / deps.REQUIREMENTS_FILE.relative_to(lib_parent)


def test_the_resource_line_installs_requirements_where_the_library_looks(tmp_path):
    import install_tree

    cmake = (install_tree.REPO / "GliomaProgression" / "CMakeLists.txt").read_text(encoding="utf-8")
    if "Resources/requirements.txt" not in cmake:
        cmake = cmake.replace("set(MODULE_PYTHON_RESOURCES",
                              "set(MODULE_PYTHON_RESOURCES\n  Resources/requirements.txt", 1)
    tree = install_tree.build_install_tree(tmp_path, {"GliomaProgression": cmake})
    assert (tree / "GliomaProgressionLib" / "dependencies.py").is_file()
    assert _installed_requirements(tree).read_text() == deps.REQUIREMENTS_FILE.read_text()


def test_built_extension_ships_the_requirements(tmp_path):
    import install_tree

    assert _installed_requirements(install_tree.build_install_tree(tmp_path)).is_file()
