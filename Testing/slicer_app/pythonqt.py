"""``qt`` as Slicer's Python sees it (PythonQt), served by PySide6.

The Qt classes are Qt's own (PySide6). What PythonQt does differently, and what this file therefore adds, is
only this:
- **Qt properties are attributes**: ``button.enabled = False``, ``label.text`` (a string, not a method). Each
  class below gets a Python property per ``Q_PROPERTY`` of its meta-object, read and written through
  ``QMetaProperty`` - so a property hides a getter of the same name, as in PythonQt.
- **``name`` is the object name**, as PythonQt exposes it (``slicer.util.childWidgetVariables`` relies on it).
- **String-signature connections**: ``obj.connect("clicked(bool)", slot)`` and ``disconnect``. A signal that
  the object does not have raises ``AttributeError`` (PythonQt refuses the connection too), so a typo fails.

Every class is a same-named subclass of the PySide6 class, created on first access and cached, so Slicer's
exact-type checks (``type(widget) in (qt.QComboBox, ...)``) hold for widgets this layer creates (``QUiLoader``
below builds these classes for every class name in a ``.ui`` file). ``isinstance``/``issubclass`` against these
classes follow the Qt class hierarchy.
"""

from __future__ import annotations

import re
import sys
import types
import xml.etree.ElementTree as ET

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

_QT_MODULES = (QtCore, QtGui, QtWidgets)
_SIGNATURE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$")
_compatClasses: dict[type, type] = {}
# Classes made by the CTK/qMRML stand-ins: the loader builds them by name.
customClasses: dict[str, type] = {}


class _PythonQtMeta(type(QtCore.QObject)):
    """isinstance/issubclass follow the Qt class the compatibility class stands for."""

    def __instancecheck__(cls, obj):
        qtClass = cls.__dict__.get("_qtClass")
        return isinstance(obj, qtClass) if qtClass else super().__instancecheck__(obj)

    def __subclasscheck__(cls, subclass):
        qtClass = cls.__dict__.get("_qtClass")
        return issubclass(subclass, qtClass) if qtClass else super().__subclasscheck__(subclass)


def _signalName(signature: str) -> tuple[str, int]:
    match = _SIGNATURE.match(signature)
    if not match:
        raise ValueError(f"Not a Qt signal signature: {signature!r}")
    arguments = [a for a in match.group(2).split(",") if a.strip()]
    return match.group(1), len(arguments)


def _signalInstance(obj, signature: str):
    """The bound signal a PythonQt signature names; refuses names and argument counts the object lacks."""
    name, count = _signalName(signature)
    meta = obj.metaObject()
    counts = set()
    for index in range(meta.methodCount()):
        method = meta.method(index)
        if method.methodType() == QtCore.QMetaMethod.Signal and bytes(method.name()).decode() == name:
            counts.add(method.parameterCount())
    if count not in counts:
        raise AttributeError(f"{type(obj).__name__} has no signal {signature!r}")
    return getattr(obj, name)


def _connect(self, signature, slot, *unused):
    _signalInstance(self, signature).connect(slot)
    return True


def _disconnect(self, signature, slot=None):
    signal = _signalInstance(self, signature)
    return signal.disconnect(slot) if slot is not None else signal.disconnect()


def _findChildren(self, kind=None, *arguments, **options):
    base = (vars(kind).get("_qtClass", kind) if kind is not None else None) or QtCore.QObject
    return QtCore.QObject.findChildren(self, base, *arguments, **options)


def _inheritConnect(cls, **kwargs):
    # PySide6 honours a ``connect`` override only on the most-derived class: give every subclass its own.
    cls.connect, cls.disconnect = _connect, _disconnect


def _metaProperty(name: str, metaProperty: QtCore.QMetaProperty):
    def get(self):
        return metaProperty.read(self)

    def set_(self, value):
        if not metaProperty.write(self, value):
            raise AttributeError(f"Cannot set property {name!r} of {type(self).__name__} to {value!r}")

    return property(get, set_)


def _name(self):
    return QtCore.QObject.objectName(self)


def _setName(self, value):
    self.setObjectName(value)


def propertiesOf(qtClass) -> dict:
    """A Python property per Q_PROPERTY the class declares itself (inherited ones come from the base class)."""
    meta = qtClass.staticMetaObject
    return {meta.property(i).name(): _metaProperty(meta.property(i).name(), meta.property(i))
            for i in range(meta.propertyOffset(), meta.propertyCount())}


def compat(qtClass: type) -> type:
    """The PythonQt-behaving same-named subclass of a PySide6 QObject class."""
    if qtClass in _compatClasses:
        return _compatClasses[qtClass]
    namespace = {"_qtClass": qtClass, "connect": _connect, "disconnect": _disconnect,
                 "findChildren": _findChildren, "name": property(_name, _setName), "__module__": "qt",
                 "__init_subclass__": classmethod(_inheritConnect)}
    for klass in reversed([k for k in qtClass.__mro__ if isinstance(k, type) and issubclass(k, QtCore.QObject)]):
        if "staticMetaObject" in vars(klass):
            namespace.update(propertiesOf(klass))
    namespace["name"] = property(_name, _setName)
    if hasattr(qtClass, "exec"):  # PythonQt's name for QDialog::exec (and QEventLoop's)
        namespace["exec_"] = qtClass.exec
    if qtClass is QtWidgets.QFileDialog:  # PythonQt returns the chosen path alone, PySide6 (path, filter)
        for getter in ("getOpenFileName", "getSaveFileName"):
            namespace[getter] = staticmethod(lambda *a, _get=getattr(qtClass, getter), **k: _get(*a, **k)[0])
    cls = _PythonQtMeta(qtClass.__name__, (qtClass,), namespace)
    _compatClasses[qtClass] = cls
    return cls


def isQObjectClass(value) -> bool:
    return isinstance(value, type) and issubclass(value, QtCore.QObject)


class QUiLoader(QtUiTools.QUiLoader):
    """Builds the PythonQt-behaving class for every class name (Qt's own or a CTK/qMRML stand-in), and wires the
    ``.ui`` connections Qt cannot (pointer-typed signals such as ``mrmlSceneChanged(vtkMRMLScene*)``)."""

    def createWidget(self, className, parent=None, name=""):
        if className in customClasses:
            widget = customClasses[className](parent)
        else:
            qtClass = getattr(QtWidgets, className, None)
            if qtClass is None:
                raise RuntimeError(f"The .ui file uses {className}, which neither Qt nor the test layer provides.")
            widget = compat(qtClass)(parent)
        widget.setObjectName(name)
        return widget

    def createLayout(self, className, parent=None, name=""):
        layout = compat(getattr(QtWidgets, className))(parent) if parent is not None else \
            compat(getattr(QtWidgets, className))()
        layout.setObjectName(name)
        return layout

    def load(self, device, parentWidget=None):
        position = device.pos()
        xml = bytes(device.readAll()).decode("utf-8")
        device.seek(position)
        root = ET.fromstring(xml)
        pointerConnections = [c for c in root.iter("connection") if "*" in (c.findtext("signal") or "")]
        for connection in pointerConnections:  # QUiLoader cannot match these: it would only warn
            root.find("connections").remove(connection)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root, encoding="utf-8"))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parentWidget)
        if widget is None:
            return None
        name = QtCore.QObject.objectName
        named = {name(w): w for w in QtCore.QObject.findChildren(widget, QtCore.QObject)}
        named[name(widget)] = widget
        for connection in pointerConnections:
            sender, receiver = named[connection.findtext("sender")], named[connection.findtext("receiver")]
            signal = _signalInstance(sender, connection.findtext("signal"))
            slotName, _ = _signalName(connection.findtext("slot"))
            signal.connect(getattr(receiver, slotName))
        return widget


def buildModule() -> types.ModuleType:
    """The ``qt`` module: every Qt class (QObject classes in their PythonQt-behaving form), Qt enums and
    functions, and the loader above."""
    module = types.ModuleType("qt", __doc__)
    module.__getattr__ = _moduleAttribute
    module.QUiLoader = QUiLoader
    return module


def _moduleAttribute(name: str):
    for qtModule in _QT_MODULES:
        value = getattr(qtModule, name, None)
        if value is not None:
            return compat(value) if isQObjectClass(value) else value
    raise AttributeError(f"module 'qt' has no attribute {name!r}")


def install() -> types.ModuleType:
    if "qt" not in sys.modules:
        sys.modules["qt"] = buildModule()
    return sys.modules["qt"]
