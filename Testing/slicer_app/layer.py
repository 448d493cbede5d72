"""The modules run on Slicer's own Python layer, without the Slicer application.

Whose code is what:
- **Slicer's, unmodified**: ``slicer.util``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
  ``slicer.i18n`` and ``SampleData`` come from a Slicer source tree (``SLICER_PYTHON_DIR``, else the reference
  copy beside the repository, ``../shared/slicer-reference/slicer-<version>``). Nothing of it is copied here.
- **Real MRML**: scene, nodes, storage and module logics are ``slicer-core``.
- **Qt**: PySide6 with PythonQt's behaviour (``pythonqt.py``); CTK/qMRML widgets are thin stand-ins
  (``standins.py``, each lists what it fakes).
- **Here**: only what no source file can give - the application object (``slicer.app``: module manager,
  temporary path, layout manager, settings) and the module loading that the C++ application does
  (``slicer.modules.<name>``, ``widgetRepresentation()``, ``startupCompleted``, enter/exit).

Use: ``install(version)`` once per process (it replaces ``qt``, ``ctk`` and parts of ``slicer``), then
``loadModules()``. Patching Qt classes and ``slicer`` is process-wide: these tests run in their own pytest
process (``make test`` runs them once per Slicer version).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from PySide6 import QtCore, QtWidgets  # noqa: E402
from PySide6.QtCore import Signal  # noqa: E402

import pythonqt  # noqa: E402
import standins  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULE_NAMES = ("DSCPerfusion", "GliomaProgression", "CTVPlanner")
VERSIONS = {"5.12.3": "slicer-5.12.3", "main": "slicer-main"}
HOW_TO_POINT = ("set SLICER_PYTHON_DIR to a Slicer source checkout (the folder holding Base/Python/slicer) or "
                "keep Slicer's Python layer in ../shared/slicer-reference beside the repository")
# Core module logics the application gives every scripted module (slicer.modules.<name>.logic()).
CORE_LOGICS = {"colors": "vtkSlicerColorLogic", "volumes": "vtkSlicerVolumesLogic",
               "segmentations": "vtkSlicerSegmentationsModuleLogic", "sequences": "vtkSlicerSequencesLogic",
               "tables": "vtkSlicerTablesLogic", "plots": "vtkSlicerPlotsLogic",
               "terminologies": "vtkSlicerTerminologiesModuleLogic",
               "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic"}


def referenceRoot(version: str) -> Path | None:
    """The Slicer source tree of ``version``: SLICER_PYTHON_DIR, else the reference copy beside the repository."""
    configured = os.environ.get("SLICER_PYTHON_DIR")
    candidates = [Path(configured), Path(configured) / VERSIONS[version]] if configured else []
    candidates.append(REPO.parent / "shared" / "slicer-reference" / VERSIONS[version])
    for candidate in candidates:
        if (candidate / "Base" / "Python" / "slicer" / "ScriptedLoadableModule.py").is_file():
            return candidate
    return None


def _loadSource(name: str, path: Path, package: bool = False):
    """Import Slicer's file (or package) at ``path`` as module ``name``."""
    location = path / "__init__.py" if package else path
    spec = importlib.util.spec_from_file_location(
        name, location, submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Exceptions raised in Qt slots (the application prints them to its Python console and carries on)."""

    def __init__(self):
        self.errors: list[BaseException] = []

    def __call__(self, kind, value, traceback):
        import traceback as tb

        tb.print_exception(kind, value, traceback)
        self.errors.append(value)

    def take(self):
        errors, self.errors = self.errors, []
        return errors


def install(version: str):
    """Make ``qt``, ``ctk``, ``slicer.util``/``ScriptedLoadableModule``/``parameterNodeWrapper``/``i18n``,
    ``SampleData`` and ``slicer.app`` the ones of Slicer ``version``. Returns the application object."""
    root = referenceRoot(version)
    if root is None:
        raise FileNotFoundError(f"Slicer's Python layer for {version} was not found: {HOW_TO_POINT}.")
    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["SlicerTestLayer"])
    settings = tempfile.mkdtemp(prefix="slicer-layer-settings-")
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings)
    pythonqt.install()
    sys.modules["ctk"] = standins.ctkModule()
    import slicer

    python = root / "Base" / "Python" / "slicer"
    slicer.__path__.insert(0, str(python))
    slicer.i18n = _loadSource("slicer.i18n", python / "i18n.py")
    slicer.util = _loadSource("slicer.util", python / "util.py")
    for name in standins.QMRML:
        setattr(slicer, name, getattr(standins, name))
    application = Application(qapp, version, root)
    slicer.app = application
    slicer.modules = types.SimpleNamespace()
    slicer.mrmlScene = application.scene
    slicer.ScriptedLoadableModule = _loadSource("slicer.ScriptedLoadableModule", python / "ScriptedLoadableModule.py")
    slicer.parameterNodeWrapper = _loadSource("slicer.parameterNodeWrapper", python / "parameterNodeWrapper", True)
    application.registerCoreModules()
    sys.path.insert(0, str(root / "Modules" / "Scripted" / "SampleData"))
    sys.excepthook = application.recorder
    return application


QObject = pythonqt.compat(QtCore.QObject)

class ModuleManager(QObject):
    """Stands in for qSlicerModuleManager: looks modules up by name, announces unloading."""

    moduleAboutToBeUnloaded = Signal(str)

    def __init__(self, application):
        super().__init__()
        self._application = application

    def module(self, name):
        return self._application.moduleEntries.get(name)

    @property
    def modulesNames(self):
        return list(self._application.moduleEntries)

class LayoutManager(QObject):
    """Stands in for qSlicerLayoutManager without views: the layout is kept in the scene's layout node."""

    layoutChanged = Signal(int)

    def __init__(self, application):
        super().__init__()
        self._application = application
        self._tableView = None

    def setLayout(self, layout):
        import slicer

        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLayoutNode")
        node.SetViewArrangement(int(layout))
        self.layoutChanged.emit(int(layout))

    @property
    def layout(self):
        import slicer

        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        return node.GetViewArrangement() if node is not None else 0

    def tableWidget(self, index):
        import slicer

        if self._tableView is None:
            self._tableView = slicer.qMRMLTableView()
            self._tableView.setMRMLScene(slicer.mrmlScene)
        return types.SimpleNamespace(tableView=lambda: self._tableView)

    def sliceViewNames(self):
        return []

    def mrmlSliceLogics(self):
        import vtk

        return vtk.vtkCollection()

class Application(QObject):
    """Stands in for qSlicerApplication: what the C++ application gives Python, nothing of Slicer's logic."""

    startupCompleted = Signal()

    def __init__(self, qapp, version, root):
        super().__init__()
        import slicer

        self.qapp, self.version, self.referenceRoot = qapp, version, root
        self.scene = slicer.vtkMRMLScene()
        self.logic = slicer.vtkSlicerApplicationLogic()
        self.logic.SetMRMLScene(self.scene)
        self.moduleEntries = {}
        self._moduleManager = ModuleManager(self)
        self._layoutManager = LayoutManager(self)
        self._temporaryPath = tempfile.mkdtemp(prefix="slicer-layer-tmp-")
        self.recorder = Recorder()
        self.currentModule = None
        # The main window, as Slicer's: message boxes and the status bar need one (no views, no module panel).
        self.mainWindow = pythonqt.compat(QtWidgets.QMainWindow)()
        self.mainWindow.setObjectName("qSlicerMainWindow")
        self.testing = False  # as for a user; the self-tests set it, as Slicer's --testing does
        self.unexpectedDialogs, self._answer, self._answered = [], None, None
        self._watchdog = QtCore.QTimer()
        self._watchdog.setInterval(20)
        self._watchdog.timeout.connect(self._answerModalDialog)
        self._watchdog.start()

    # --- what qSlicerApplication offers ---------------------------------------------------------------

    temporaryPath = property(lambda self: self._temporaryPath)
    applicationName = "3D Slicer"
    majorVersion = property(lambda self: int(self.version.split(".")[0]) if self.version[0].isdigit() else 5)
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def moduleDocumentationUrl(self, name):
        return f"{self.documentationBaseUrl}user_guide/modules/{name.lower()}.html"

    def mrmlScene(self):
        return self.scene

    def applicationLogic(self):
        return self.logic

    def moduleManager(self):
        return self._moduleManager

    def layoutManager(self):
        return self._layoutManager

    def testingEnabled(self):
        """Slicer's --testing (message boxes only logged); off by default, so dialogs show as for a user."""
        return self.testing

    def translate(self, context, text):
        return text

    def processEvents(self):
        self.qapp.processEvents()

    def topLevelWidgets(self):
        return self.qapp.topLevelWidgets()

    def setOverrideCursor(self, cursor):
        self.qapp.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        self.qapp.restoreOverrideCursor()

    # --- what the C++ application does when it loads modules ---------------------------------------

    def registerCoreModules(self):
        import slicer

        for name, className in CORE_LOGICS.items():
            logic = getattr(slicer, className)()
            if hasattr(logic, "SetMRMLApplicationLogic"):
                logic.SetMRMLApplicationLogic(self.logic)
            if name == "colors":  # slicer-core ships no colour files: silence the logic's search for them
                self.logic.SetHomeDirectory(str(Path(slicer.__file__).parent))
                self.logic.SetShareDirectory(".")
            logic.SetMRMLScene(self.scene)
            self.logic.SetModuleLogic(name.capitalize(), logic)
            setattr(slicer.modules, name, ModuleEntry(name, None, logic=logic))

    def terminologyFolder(self):
        """Slicer's terminology lists (kept in the 5.12.3 tree; they have not changed on main)."""
        for root in (self.referenceRoot, REPO.parent / "shared" / "slicer-reference" / VERSIONS["5.12.3"]):
            folder = root / "Modules" / "Loadable" / "Terminologies" / "Resources"
            if folder.is_dir():
                return folder
        return self.referenceRoot

    def loadModule(self, name, folder):
        """As Slicer loads a scripted module: import the file, give the class its qSlicer module object."""
        import slicer

        path = Path(folder) / f"{name}.py"
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        entry = ModuleEntry(name, str(path))
        instance = getattr(module, name)(entry)
        entry.instance = instance
        self.moduleEntries[name] = entry
        setattr(slicer.modules, name.lower(), entry)
        setattr(slicer.modules, f"{name}Instance", instance)
        return entry

    def loadModules(self, folders=None):
        folders = folders or {name: REPO / name for name in MODULE_NAMES}
        entries = [self.loadModule(name, folder) for name, folder in folders.items()]
        self.startupCompleted.emit()
        return entries

    def selectModule(self, name):
        """As the module panel does: exit() the current module's widget, enter() the new one's."""
        if self.currentModule == name:
            return self.moduleEntries[name].widgetRepresentation().self()
        if self.currentModule is not None:
            previous = self.moduleEntries[self.currentModule].widgetRepresentation()
            previous.isEntered = False
            if hasattr(previous.self(), "exit"):  # the application calls enter()/exit() when the widget has them
                previous.self().exit()
        self.currentModule = name
        panel = self.moduleEntries[name].widgetRepresentation()
        panel.isEntered = True
        if hasattr(panel.self(), "enter"):
            panel.self().enter()
        return panel.self()

    def closeScene(self):
        """File > Close Scene."""
        self.scene.Clear(0)

    # --- for tests ---------------------------------------------------------------------------------

    def waitFor(self, condition, timeout=120.0, interval=0.05):
        """Run the event loop (timers fire, as in the application) until ``condition()`` or the timeout."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("The condition did not hold in time.")
            self.qapp.processEvents()
            time.sleep(interval)

    def inEventLoop(self, action):
        """Run ``action()`` from inside the main event loop, as every user action runs in the application (a
        modal dialog's own loop is then nested, and deleteLater() waits for the outer loop, as in Slicer)."""
        loop = QtCore.QEventLoop()
        outcome = {}

        def run():
            try:
                outcome["value"] = action()
            finally:
                loop.quit()

        QtCore.QTimer.singleShot(0, run)
        loop.exec()
        return outcome.get("value")

    def click(self, button):
        """A user's click on ``button``."""
        self.inEventLoop(button.click)

    def _answerModalDialog(self):
        """A modal message box, as a user meets it: answered with the button a test chose (answeringDialogs), or
        closed and recorded as unexpected (the ``scene`` fixture fails the test on it)."""
        box = QtWidgets.QApplication.activeModalWidget()
        if not isinstance(box, QtWidgets.QMessageBox):
            return
        text = QtWidgets.QMessageBox.text(box)
        if self._answered is None:
            self.unexpectedDialogs.append(text)
            box.done(int(QtWidgets.QMessageBox.Cancel.value))
        else:
            self._answered.append(text)
            box.done(int(getattr(self._answer, "value", self._answer)))

    @contextlib.contextmanager
    def answeringDialogs(self, button):
        """Answer every modal message box shown meanwhile with ``button`` (e.g. QMessageBox.Yes) as a user would
        click it; yields the list of their texts."""
        self._answer, self._answered = button, []
        try:
            yield self._answered
        finally:
            self._answer, self._answered = None, None


class ModuleEntry:
    """Stands in for qSlicerScriptedLoadableModule / a core module: descriptions, path, widget, logic."""

    def __init__(self, name, path, logic=None):
        self.name, self.path, self._logic = name, path, logic
        self.title, self.categories, self.dependencies, self.contributors = name, [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None
        self.instance = None
        self._panel = None

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        if self._panel is None:
            self._panel = ModulePanel(self.name)
            self._panel.reload()
        return self._panel



class ModulePanel(standins.qMRMLWidget):
    """Stands in for qSlicerScriptedLoadableModuleWidget: makes <Module>Widget(self) and calls setup()."""

    def __init__(self, name):
        super().__init__()
        self.moduleName = name
        self.setLayout(pythonqt.compat(QtWidgets.QVBoxLayout)())
        import slicer

        self.setMRMLScene(slicer.mrmlScene)
        self._self = None
        self.isEntered = False

    def reload(self):
        import slicer

        widgetClass = getattr(sys.modules[self.moduleName], f"{self.moduleName}Widget")
        self._self = widgetClass(self)
        self._self.setup()
        setattr(slicer.modules, f"{self.moduleName}Widget", self._self)

    def self(self):
        return self._self

