"""What a built extension installs is enough to run: models, radiomics settings, icons and .ui files.

A built extension holds only what each module's CMakeLists.txt lists (see install_tree.py); the source tree, where
every other test runs, holds everything. Here the modules are imported in a separate Python whose only path is a
copy of exactly the listed files laid out as ``lib/Slicer-5.12/qt-scripted-modules/``, without the
``GLIOMAPROG_RESOURCES`` override, and with the repository's editable install shadowed (checked, not assumed).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import install_tree

REPO = install_tree.REPO

# Run inside the install tree: imports the three Lib packages from it, then uses the shipped resources.
PROBE = r"""
import json, sys
from pathlib import Path

import CTVPlannerLib, DSCPerfusionLib, GliomaProgressionLib
from GliomaProgressionLib.models import packages as models
from GliomaProgressionLib.cohort import radiomics_features

mode, only = sys.argv[1], sys.argv[2:]
report = {"packages": {p.__name__: str(Path(p.__file__).resolve())
                       for p in (DSCPerfusionLib, GliomaProgressionLib, CTVPlannerLib)},
          "resources_folder": str(models.resources_folder()),
          "models": [entry["id"] for entry in models.available_models()], "installed": {}, "errors": {}}
if mode == "full":
    for model_id in only or report["models"]:
        try:
            package = models.resolve_model(model_id)
            verified = models.verify_model(model_id)
            report["installed"][model_id] = {"folder": str(package.folder), "ok": verified["ok"],
                                             "sha256_matches_registry": verified["sha256_matches_registry"],
                                             "channels": package.channel_names}
        except ValueError as error:
            report["errors"][model_id] = str(error)
    try:
        extractor = radiomics_features.make_extractor()
        report["radiomics"] = {"file": str(radiomics_features.default_settings_file()),
                               "image_types": sorted(extractor.enabledImagetypes),
                               "features": sorted(extractor.enabledFeatures),
                               "bin_width": extractor.settings.get("binWidth")}
    except ValueError as error:
        report["errors"]["radiomics"] = str(error)
try:  # CTV Planner's terminology list, once the module has one
    from CTVPlannerLib import terminology
    report["terminology"] = str(terminology.TERMINOLOGY_FILE)
except ImportError:
    pass
print("REPORT " + json.dumps(report))
"""


def run_probe(tree: Path, models_dir: Path, mode: str = "full", only: tuple[str, ...] = ()) -> dict:
    """Runs PROBE in the tree: "full" installs and verifies the listed models (``only`` these, if given) and
    parses the radiomics settings; "light" only reads the registry."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("GLIOMAPROG_RESOURCES", "PYTHONHOME", "PYTHONSTARTUP")}
    environment.update(PYTHONPATH=str(tree), GLIOMAPROG_MODELS_DIR=str(models_dir), PYTHONNOUSERSITE="1",
                       CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run([sys.executable, "-c", PROBE, mode, *only], cwd=tree, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])
    # The editable install of the repository must not win: every package comes from the tree.
    for name, path in report["packages"].items():
        assert Path(path).is_relative_to(tree.resolve()), f"{name} was imported from {path}, not the install tree"
    return report


def _without_line(text: str, needle: str) -> str:
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if needle not in line.split("#")[0]]
    assert len(kept) == len(lines) - 1, f"expected exactly one line with {needle!r}"
    return "".join(kept)


def _registry():
    return json.loads((REPO / "GliomaProgression" / "Resources" / "Models.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return install_tree.build_install_tree(tmp_path_factory.mktemp("extension"))


def test_tree_has_the_scripted_module_layout(tree):
    assert tree.as_posix().endswith("lib/Slicer-5.12/qt-scripted-modules")
    for module in install_tree.MODULES:
        assert (tree / f"{module}.py").is_file()
        assert (tree / f"{module}Lib" / "__init__.py").is_file()
    # Only listed files: nothing of the source tree comes along by accident.
    assert not any(tree.rglob("CMakeLists.txt")) and not (tree / "Testing").exists()


def test_installed_extension_finds_verifies_and_installs_both_shipped_models(tree, tmp_path):
    report = run_probe(tree, tmp_path / "models")
    assert Path(report["resources_folder"]) == tree / "Resources"
    shipped = [entry["id"] for entry in _registry()["models"]]
    assert set(shipped) == {"conventional", "multiparametric"}
    assert report["models"] == shipped and not report["errors"]
    for model_id in shipped:
        installed = report["installed"][model_id]
        assert installed["ok"] and installed["sha256_matches_registry"]
        assert Path(installed["folder"]).is_relative_to(tmp_path / "models")
    assert report["installed"]["multiparametric"]["channels"] == ["t1c", "flair", "ncbv"]
    radiomics = report["radiomics"]
    assert Path(radiomics["file"]) == tree / "Resources" / "radiomics_ncbv.yaml"
    assert radiomics["image_types"] == ["Original", "Wavelet"] and radiomics["bin_width"] == 0.1
    assert {"shape", "firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm"} <= set(radiomics["features"])
    if "terminology" in report:
        assert Path(report["terminology"]).is_relative_to(tree) and Path(report["terminology"]).is_file(), \
            f"CTVPlannerLib reads {report['terminology']}, which CTVPlanner/CMakeLists.txt does not install"


def _resources_named_in(module_file: Path) -> set[str]:
    """Resources a module file reads: resourcePath("X") and os.path.join(dirname(__file__), "Resources", ...)."""
    text = module_file.read_text(encoding="utf-8")
    names = {f"Resources/{name}" for name in re.findall(r"resourcePath\(\s*[\"']([^\"']+)[\"']", text)}
    for arguments in re.findall(r"os\.path\.join\(\s*os\.path\.dirname\(__file__\)\s*,\s*([^)]*)\)", text):
        parts = re.findall(r"[\"']([^\"']+)[\"']", arguments)
        if parts and parts[0] == "Resources":
            names.add("/".join(parts))
    return names


@pytest.mark.parametrize("module", install_tree.MODULES)
def test_each_module_icon_and_ui_are_installed(tree, module):
    # Slicer takes a scripted module's icon from Resources/Icons/<Module>.png beside the installed module file.
    named = _resources_named_in(REPO / module / f"{module}.py") | {f"Resources/Icons/{module}.png"}
    assert f"Resources/UI/{module}.ui" in named
    missing = sorted(name for name in named if not (tree / name).is_file())
    assert not missing, f"{module}.py reads {missing}, which its CMakeLists.txt does not install"


def test_every_registered_model_file_is_listed_for_install():
    listed = install_tree.module_from_repo("GliomaProgression").resources
    assert "Resources/Models.json" in listed and "Resources/radiomics_ncbv.yaml" in listed
    assert {f"Resources/{entry['file']}" for entry in _registry()["models"]} <= set(listed)


def test_without_the_registry_line_a_built_extension_has_no_models(tmp_path):
    text = (REPO / "GliomaProgression" / "CMakeLists.txt").read_text(encoding="utf-8")
    tree = install_tree.build_install_tree(
        tmp_path / "extension", {"GliomaProgression": _without_line(text, "Resources/Models.json")})
    report = run_probe(tree, tmp_path / "models", mode="light")
    assert report["models"] == []  # the defect of issue 11: the model list is empty


def test_without_a_model_or_the_yaml_line_the_error_names_the_missing_file(tmp_path):
    text = (REPO / "GliomaProgression" / "CMakeLists.txt").read_text(encoding="utf-8")
    text = _without_line(_without_line(text, "Resources/models/conventional.zip"), "Resources/radiomics_ncbv.yaml")
    tree = install_tree.build_install_tree(tmp_path / "extension", {"GliomaProgression": text})
    report = run_probe(tree, tmp_path / "models", only=("conventional",))
    assert "conventional" in report["models"] and "conventional" not in report["installed"]
    assert "models/conventional.zip" in report["errors"]["conventional"]
    assert "is missing" in report["errors"]["conventional"]
    assert "radiomics_ncbv.yaml" in report["errors"]["radiomics"]
    assert "does not exist" in report["errors"]["radiomics"]


def test_a_listed_file_that_does_not_exist_stops_the_build_as_cmake_does():
    text = (REPO / "CTVPlanner" / "CMakeLists.txt").read_text(encoding="utf-8")
    text = text.replace("Resources/UI/${MODULE_NAME}.ui", "Resources/UI/${MODULE_NAME}.ui\n  Resources/NoSuchFile.json")
    with pytest.raises(install_tree.CMakeListsError, match="nonexistent file or directory 'Resources/NoSuchFile.json'"):
        install_tree.module_from_repo("CTVPlanner", text)


def _slicer_macro() -> Path | None:
    roots = [Path(os.environ["SLICER_PYTHON_DIR"])] if os.environ.get("SLICER_PYTHON_DIR") else []
    roots.append(REPO.parent / "shared" / "slicer-reference")
    for root in roots:
        for candidate in (root / "CMake", root / "slicer-5.12.3" / "CMake"):
            if (candidate / "SlicerMacroBuildScriptedModule.cmake").is_file():
                return candidate / "SlicerMacroBuildScriptedModule.cmake"
    return None


def test_the_layout_is_the_one_slicers_macro_installs():
    """What install_tree assumes, read in Slicer's own macro: one flat qt-scripted-modules folder for all modules."""
    macro = _slicer_macro()
    if macro is None:
        pytest.skip("Slicer's CMake/SlicerMacroBuildScriptedModule.cmake not found (set SLICER_PYTHON_DIR)")
    text = macro.read_text(encoding="utf-8")
    assert re.search(r"DESTINATION_DIR \$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}"
                     r"\$\{_destination_subdir\}", text)
    assert 'set(_destination_subdir "")' in text and "if(MY_SLICER_WITH_SUBDIR)" in text
    assert 'SCRIPTS "${MY_SLICER_SCRIPTS}"' in text and 'RESOURCES "${MY_SLICER_RESOURCES}"' in text
    for module in install_tree.MODULES:
        assert not install_tree.module_from_repo(module).with_subdir
