"""Check the modules' Qt Designer (.ui) files without the Slicer application.

Every ``<Module>/Resources/UI/<Module>.ui`` is loaded offscreen with PySide6's ``QUiLoader``.
Slicer's own classes (``qMRMLWidget``, ``qMRMLNodeComboBox``, ``ctkCollapsibleButton``, ...) are
unknown to PySide6 and become plain ``QWidget``s (Qt warns about it; those warnings are captured,
not printed), which is enough to check object names. Then every ``self.ui.<name>`` that
``<Module>/<Module>.py`` uses must exist as a child of the loaded UI, so a renamed widget fails
here instead of in Slicer at module load.

The XML itself is checked with ``xml.etree``: top-level widget, ``qMRMLNodeComboBox`` node types,
scene connections and the ``<customwidgets>`` declarations Designer and Slicer need.

Environment variables (optional), e.g. to check module files kept outside the repository:
  GLIOMAPROGRESSION_SOURCE_DIR   root that holds ``CMakeLists.txt`` and ``*/Resources/UI/*.ui``
                                 (default: the repository root, the parent of ``Testing/``)
  GLIOMAPROGRESSION_MODULES_DIR  folder that holds ``<Module>/<Module>.py``
                                 (default: GLIOMAPROGRESSION_SOURCE_DIR)
"""

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# Must be set before PySide6 creates the application: no display needed.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

from PySide6 import QtCore, QtUiTools, QtWidgets  # noqa: E402  (a test dependency: failing to import fails)

SOURCE_DIR = Path(os.environ.get("GLIOMAPROGRESSION_SOURCE_DIR")
                  or Path(__file__).resolve().parents[1]).resolve()
MODULES_DIR = Path(os.environ.get("GLIOMAPROGRESSION_MODULES_DIR") or SOURCE_DIR).resolve()

# Modules the extension must have, even before their files exist (a missing file must fail).
EXPECTED_MODULES = ("DSCPerfusion", "GliomaProgression", "CTVPlanner")

SLICER_WIDGET_PREFIXES = ("qMRML", "qSlicer", "ctk")
UI_ATTRIBUTE_RE = re.compile(r"\bself\.ui\.([A-Za-z_][A-Za-z0-9_]*)")


def _cmake_modules():
    """Module folders added by the top-level CMakeLists.txt (add_subdirectory)."""
    cmake = SOURCE_DIR / "CMakeLists.txt"
    if not cmake.is_file():
        return []
    text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8"))
    return re.findall(r"add_subdirectory\(\s*([A-Za-z0-9_]+)\s*\)", text)


def _modules():
    names = list(EXPECTED_MODULES)
    for name in _cmake_modules():
        if name not in names:
            names.append(name)
    for ui in sorted(SOURCE_DIR.glob("*/Resources/UI/*.ui")):
        name = ui.parents[2].name
        if name not in names:
            names.append(name)
    return names


def _ui_files():
    return sorted(SOURCE_DIR.glob("*/Resources/UI/*.ui"))


MODULES = _modules()
UI_FILES = _ui_files()


# ---------------------------------------------------------------------------
# Qt application and loading
# ---------------------------------------------------------------------------

_qt_messages = []

# What QUiLoader says, expectedly, about Slicer classes it does not know.
EXPECTED_QT_MESSAGES = re.compile(
    r"unable to create a custom widget of the class '(qMRML|qSlicer|ctk)"
    r"|^QObject::connect: +\((sender|receiver) name:"
    r"|^QObject::connect: No such (signal|slot) QWidget::[A-Za-z]+\(vtkMRML")


def _message_handler(mode, context, message):
    # Expected noise: unknown Slicer classes, their properties and the scene connections.
    _qt_messages.append(message)


@pytest.fixture(scope="session")
def qapp():
    previous = QtCore.qInstallMessageHandler(_message_handler)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    yield app
    QtCore.qInstallMessageHandler(previous)


def _load_ui(path):
    """Load a .ui file; return the top-level widget (raises AssertionError on failure)."""
    _parse(path)
    loader = QtUiTools.QUiLoader()
    qfile = QtCore.QFile(str(path))
    assert qfile.open(QtCore.QIODevice.ReadOnly), f"cannot open {path}"
    del _qt_messages[:]
    try:
        widget = loader.load(qfile, None)
    finally:
        qfile.close()
    assert widget is not None, (
        f"QUiLoader could not load {path}: {loader.errorString()}\n"
        + "\n".join(_qt_messages[-20:]))
    return widget


def _parse(path):
    """Parse a .ui file as XML; a malformed file fails with its path in the message."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        pytest.fail(f"{path} is not well-formed XML: {exc}")


def _child_names(widget):
    names = {obj.objectName() for obj in widget.findChildren(QtCore.QObject)}
    names.discard("")
    return names


def _module_ui_path(module):
    return SOURCE_DIR / module / "Resources" / "UI" / f"{module}.ui"


def _module_script_path(module):
    return MODULES_DIR / module / f"{module}.py"


def _used_ui_names(script):
    text = script.read_text(encoding="utf-8")
    return sorted(set(UI_ATTRIBUTE_RE.findall(text)))


def _ui_id(path):
    return str(path.relative_to(SOURCE_DIR))


# ---------------------------------------------------------------------------
# Tests per .ui file (XML and loading)
# ---------------------------------------------------------------------------

def test_every_module_has_a_ui_file():
    missing = [m for m in MODULES if not _module_ui_path(m).is_file()]
    assert not missing, f"modules without Resources/UI/<Module>.ui under {SOURCE_DIR}: {missing}"


@pytest.mark.parametrize("ui_path", UI_FILES, ids=_ui_id)
def test_ui_parses_with_module_named_top_level_widget(qapp, ui_path):
    module = ui_path.parents[2].name
    assert ui_path.stem == module, f"{ui_path}: the .ui file should be named {module}.ui"

    root = _parse(ui_path)
    assert root.tag == "ui", f"{ui_path}: root element is <{root.tag}>, expected <ui>"
    top = root.find("widget")
    assert top is not None, f"{ui_path}: no top-level <widget>"
    assert top.get("name") == module, (
        f"{ui_path}: top-level widget is named {top.get('name')!r}, expected {module!r}")
    assert top.get("class") == "qMRMLWidget", (
        f"{ui_path}: top-level widget class is {top.get('class')!r}, expected 'qMRMLWidget'")
    cls = root.findtext("class")
    assert cls == module, f"{ui_path}: <class> is {cls!r}, expected {module!r}"

    widget = _load_ui(ui_path)
    try:
        assert widget.objectName() == module
    finally:
        widget.deleteLater()
    # e.g. an enum or flag value Qt cannot read ("Qt::Verticalx")
    unexpected = [m for m in _qt_messages if not EXPECTED_QT_MESSAGES.search(m)]
    assert not unexpected, f"{ui_path}: Qt reported while loading:\n" + "\n".join(unexpected)


@pytest.mark.parametrize("ui_path", UI_FILES, ids=_ui_id)
def test_node_combo_boxes_have_node_types_and_scene(ui_path):
    root = _parse(ui_path)
    top_name = root.find("widget").get("name")
    combos = [w for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"]

    without_types = []
    for combo in combos:
        prop = combo.find("property[@name='nodeTypes']")
        types = [s.text for s in prop.iter("string") if s.text] if prop is not None else []
        if not types:
            without_types.append(combo.get("name"))
    assert not without_types, (
        f"{ui_path}: qMRMLNodeComboBox without a 'nodeTypes' property: {without_types}")

    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == top_name
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    unconnected = sorted(c.get("name") for c in combos if c.get("name") not in connected)
    assert not unconnected, (
        f"{ui_path}: qMRMLNodeComboBox not connected to {top_name}'s "
        f"mrmlSceneChanged(vtkMRMLScene*): {unconnected}")


@pytest.mark.parametrize("ui_path", UI_FILES, ids=_ui_id)
def test_slicer_widget_classes_are_declared(ui_path):
    root = _parse(ui_path)
    used = {w.get("class") for w in root.iter("widget")}
    used = {c for c in used if c and c.startswith(SLICER_WIDGET_PREFIXES)}
    declared = {}
    for cw in root.iter("customwidget"):
        declared[cw.findtext("class")] = (cw.findtext("extends"), cw.findtext("header"))
    missing = sorted(used - set(declared))
    assert not missing, f"{ui_path}: <customwidgets> lacks {missing}"
    incomplete = sorted(c for c in used if not all(declared[c]))
    assert not incomplete, f"{ui_path}: <customwidget> without extends/header: {incomplete}"


# ---------------------------------------------------------------------------
# Tests per module (names used by the module code exist in the .ui)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_module_ui_names_exist(qapp, module):
    script = _module_script_path(module)
    ui_path = _module_ui_path(module)
    assert script.is_file(), f"module file {script} does not exist"
    assert ui_path.is_file(), f"UI file {ui_path} does not exist"

    used = _used_ui_names(script)
    widget = _load_ui(ui_path)
    try:
        available = _child_names(widget)
    finally:
        widget.deleteLater()

    missing = [name for name in used if name not in available]
    assert not missing, (
        f"{script.name} uses self.ui.<name> for names missing from {ui_path}: "
        + ", ".join(missing))


def _parameter_fields(module_file: Path) -> set[str]:
    """Annotated fields of the module's @parameterNodeWrapper class."""
    import ast

    tree = ast.parse(module_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    return set()


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_fields_are_bound_to_widgets(module):
    """connectGui binds widgets to parameters through their SlicerParameterName property: every name must be a field.
    That every field is bound (but the ones a module binds by hand, such as a combo box whose items change at run
    time) is checked with Slicer's own connectGui in slicer_app/test_panels.py."""
    ui_path = SOURCE_DIR / module / "Resources" / "UI" / f"{module}.ui"
    bound = {
        prop.find("string").text
        for prop in ET.parse(ui_path).getroot().iter("property")
        if prop.get("name") == "SlicerParameterName"
    }
    fields = _parameter_fields(MODULES_DIR / module / f"{module}.py")
    assert fields, f"{module}.py has no @parameterNodeWrapper class"
    assert bound <= fields, f"{ui_path}: unknown parameter names {sorted(bound - fields)}"
    assert len(fields - bound) <= 1, f"{ui_path}: unbound fields {sorted(fields - bound)}"
