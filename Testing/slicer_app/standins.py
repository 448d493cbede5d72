"""Thin stand-ins for the CTK and qMRML widget classes (C++ in Slicer, so no source file can serve them here).

Each class has the name, base class, Qt properties and signals that Slicer's ``parameterNodeWrapper`` connectors
and this extension's ``.ui`` files use, and nothing more. What each one fakes is listed in its docstring. All of
them behave like the PythonQt classes of ``pythonqt.py`` (properties as attributes, string connections).
"""

from __future__ import annotations

import types

import slicer
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal

import pythonqt

_QWidget = pythonqt.compat(QtWidgets.QWidget)


def _register(cls):
    pythonqt.customClasses[cls.__name__] = cls
    return cls


def _named(name, base):
    """A class that exists only so that ``type(widget) in (ctk.X, ...)`` can be evaluated; never in a .ui file."""
    return _register(type(pythonqt.compat(base))(name, (pythonqt.compat(base),), {"__module__": "ctk"}))


# --- CTK ------------------------------------------------------------------------------------------------------


@_register
class ctkCollapsibleButton(_QWidget):
    """Fakes: a container with a title (``text``) and ``collapsed`` (hides the contents, emits
    ``contentsCollapsed(bool)``). Real: a QAbstractButton that draws a header and animates."""

    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text, self._collapsed = "", False

    def _getText(self):
        return self._text

    def _setText(self, value):
        self._text = value

    def _getCollapsed(self):
        return self._collapsed

    def _setCollapsed(self, value):
        if bool(value) != self._collapsed:
            self._collapsed = bool(value)
            for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(not self._collapsed)
            self.contentsCollapsed.emit(self._collapsed)

    text = Property(str, _getText, _setText)
    collapsed = Property(bool, _getCollapsed, _setCollapsed)


@_register
class ctkDirectoryButton(_QWidget):
    """Fakes: holds a ``directory`` and emits ``directoryChanged(QString)`` when it changes (no file dialog)."""

    directoryChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._directory = "."

    def _getDirectory(self):
        return self._directory

    def _setDirectory(self, value):
        if value != self._directory:
            self._directory = value
            self.directoryChanged.emit(value)

    directory = Property(str, _getDirectory, _setDirectory)


@_register
class ctkMessageBox(pythonqt.compat(QtWidgets.QMessageBox)):
    """Fakes: a QMessageBox that stores ``dontShowAgainVisible``/``dontShowAgainSettingsKey`` (no check box)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._dontShowAgainVisible, self._dontShowAgainSettingsKey = False, ""

    dontShowAgainVisible = Property(bool, lambda self: self._dontShowAgainVisible,
                                    lambda self, value: setattr(self, "_dontShowAgainVisible", value))
    dontShowAgainSettingsKey = Property(str, lambda self: self._dontShowAgainSettingsKey,
                                        lambda self, value: setattr(self, "_dontShowAgainSettingsKey", value))


ctkCheckBox = _named("ctkCheckBox", QtWidgets.QCheckBox)
ctkComboBox = _named("ctkComboBox", QtWidgets.QComboBox)
ctkDoubleSpinBox = _named("ctkDoubleSpinBox", QtWidgets.QDoubleSpinBox)
ctkSliderWidget = _named("ctkSliderWidget", QtWidgets.QWidget)
ctkDoubleSlider = _named("ctkDoubleSlider", QtWidgets.QWidget)
ctkRangeWidget = _named("ctkRangeWidget", QtWidgets.QWidget)
ctkDoubleRangeSlider = _named("ctkDoubleRangeSlider", QtWidgets.QWidget)
ctkPathLineEdit = _named("ctkPathLineEdit", QtWidgets.QWidget)
ctkCheckablePushButton = _named("ctkCheckablePushButton", QtWidgets.QPushButton)
ctkColorPickerButton = _named("ctkColorPickerButton", QtWidgets.QPushButton)


# --- qMRML ----------------------------------------------------------------------------------------------------


@_register
class qMRMLWidget(_QWidget):
    """Fakes: holds the scene and emits ``mrmlSceneChanged(vtkMRMLScene*)`` (a Python object here)."""

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


@_register
class qMRMLNodeComboBox(qMRMLWidget):
    """Fakes the selection logic of Slicer's node selector, without its list model or menus:
    - lists the scene's nodes whose class ``IsA`` one of ``nodeTypes`` (``nodes()``);
    - ``setCurrentNode`` selects only such a node of its scene (else nothing: None), as the real selector does;
    - with ``noneEnabled`` off it selects the first node it can list when its list goes from empty to not empty
      (the scene is set, or the first such node is added: QComboBox's rule), and a removed current node is
      replaced (by the first remaining one, or None);
    - emits ``currentNodeChanged(vtkMRMLNode*)`` and ``currentNodeIDChanged(QString)`` on every change.
    ``addEnabled``/``removeEnabled``/``renameEnabled``/... are stored (the real ones add menu entries)."""

    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes, self._current, self._observed = [], None, []
        self._flags = {}
        self.mrmlSceneChanged.connect(self._observeScene)

    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def _setNodeTypes(self, value):
        self._nodeTypes = [str(v) for v in value]

    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)

    def _flag(name, default):
        def get(self):
            return self._flags.get(name, default)

        def set_(self, value):
            self._flags[name] = value
            if name == "noneEnabled":
                self._selectDefault()

        return Property(bool, get, set_)

    noneEnabled = _flag("noneEnabled", False)
    addEnabled = _flag("addEnabled", True)
    removeEnabled = _flag("removeEnabled", True)
    renameEnabled = _flag("renameEnabled", False)
    editEnabled = _flag("editEnabled", False)
    showHidden = _flag("showHidden", False)
    showChildNodeTypes = _flag("showChildNodeTypes", True)
    selectNodeUponCreation = _flag("selectNodeUponCreation", True)
    del _flag

    def _accepts(self, node) -> bool:
        if node is None or self._scene is None or self._scene.GetNodeByID(node.GetID()) is not node:
            return False
        if node.GetHideFromEditors() and not self.showHidden:
            return False
        return any(node.IsA(kind) if self.showChildNodeTypes else node.GetClassName() == kind
                   for kind in self._nodeTypes)

    def nodes(self):
        if self._scene is None:
            return []
        nodes = self._scene.GetNodes()
        return [n for n in (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())) if self._accepts(n)]

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node):
        self._setCurrent(node if self._accepts(node) else None)

    def setCurrentNodeID(self, nodeId):
        self.setCurrentNode(self._scene.GetNodeByID(nodeId) if self._scene and nodeId else None)

    def _setCurrent(self, node):
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID())

    def _selectDefault(self):
        if self._current is None and not self.noneEnabled:
            candidates = self.nodes()
            if candidates:
                self._setCurrent(candidates[0])

    def _observeScene(self, scene):
        for observed, tag in self._observed:
            observed.RemoveObserver(tag)
        self._observed = []
        self._setCurrent(None)
        if scene is not None:
            self._observed = [(scene, scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._onNodeAdded)),
                              (scene, scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._onNodeRemoved))]
            self._selectDefault()

    def _onNodeAdded(self, *unused):
        if len(self.nodes()) == 1:  # the list was empty
            self._selectDefault()

    def _onNodeRemoved(self, *unused):
        if self._current is not None and self._scene.GetNodeByID(self._current.GetID()) is not self._current:
            self._setCurrent(None)
            self._selectDefault()


@_register
class qMRMLTableView(qMRMLWidget):
    """Fakes: holds the table node it shows (``mrmlTableNode``); draws nothing."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._table = None

    def setMRMLTableNode(self, node):
        self._table = node

    def mrmlTableNode(self):
        return self._table


qMRMLSliderWidget = _named("qMRMLSliderWidget", QtWidgets.QWidget)
qMRMLSpinBox = _named("qMRMLSpinBox", QtWidgets.QDoubleSpinBox)
qMRMLRangeWidget = _named("qMRMLRangeWidget", QtWidgets.QWidget)

CTK = ("ctkCollapsibleButton", "ctkDirectoryButton", "ctkMessageBox", "ctkCheckBox", "ctkComboBox", "ctkDoubleSpinBox",
       "ctkSliderWidget", "ctkDoubleSlider", "ctkRangeWidget", "ctkDoubleRangeSlider", "ctkPathLineEdit",
       "ctkCheckablePushButton", "ctkColorPickerButton")
QMRML = ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLTableView", "qMRMLSliderWidget", "qMRMLSpinBox",
         "qMRMLRangeWidget")


def ctkModule() -> types.ModuleType:
    module = types.ModuleType("ctk", "Test stand-ins for the CTK widget classes (see standins.py).")
    for name in CTK:
        setattr(module, name, globals()[name])
    return module
