"""The modules as a built extension installs them (only what each CMakeLists.txt lists, in one qt-scripted-modules
folder), loaded by the Slicer layer from there: every panel sets up, the model list is full, the terminology file
loads. Runs in a process of its own (a second copy of the modules cannot share this process's module names)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import VERSION
from layer import MODULE_NAMES, REPO

CHECK = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import layer
app = layer.install(sys.argv[3])
tree = sys.argv[1]
app.loadModules({name: tree for name in layer.MODULE_NAMES})
import slicer, GliomaProgressionLib, CTVPlanner
report = {"lib": GliomaProgressionLib.__file__, "errors": [repr(e) for e in app.recorder.take()]}
for name in layer.MODULE_NAMES:
    widget = app.selectModule(name)
    report[name] = sys.modules[name].__file__
combo = slicer.modules.GliomaProgressionWidget.ui.modelComboBox
report["models"] = [combo.itemData(i) for i in range(combo.count)]
import vtk
names = vtk.vtkStringArray()
slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
report["terminologies"] = [names.GetValue(i) for i in range(names.GetNumberOfValues())]
report["errors"] += [repr(e) for e in app.recorder.take()]
print("REPORT " + json.dumps(report))
"""


def test_panels_run_from_the_built_extension(app, tmp_path):
    sys.path.insert(0, str(REPO / "Testing"))
    import install_tree

    tree = install_tree.build_install_tree(tmp_path / "Slicer-build")
    environment = {key: value for key, value in os.environ.items() if key != "GLIOMAPROG_RESOURCES"}
    environment["PYTHONPATH"] = str(tree)
    result = subprocess.run([sys.executable, "-c", CHECK, str(tree), str(Path(__file__).parent), VERSION],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert Path(report["lib"]).is_relative_to(tree), "the Lib packages must come from the installed tree"
    for name in MODULE_NAMES:
        assert Path(report[name]).parent == tree, name
    assert report["models"] == ["conventional", "multiparametric"]
    assert report["errors"] == []
    shipped = json.loads((REPO / "CTVPlanner" / "Resources" / "Terminologies" /
                          "GliomaProgressionTerminology.term.json").read_text(encoding="utf-8"))
    assert shipped["SegmentationCategoryTypeContextName"] in report["terminologies"], report["terminologies"]
