"""Lets pytest import the modules' ``<Module>.py`` files on ``slicer-core``, without the Slicer application.

What this supplies is only what the *application* provides and ``slicer-core`` does not: the scripted-module
base classes (``slicer.ScriptedLoadableModule``) and the typed parameter-node decorator
(``slicer.parameterNodeWrapper``). Both are re-implemented minimally here and say so; they fake no MRML
behaviour. Everything the modules' Logic and Test classes do with data (scene, nodes, storage, segmentations,
sequences, module logics) runs on the real MRML classes of ``slicer-core``, attached to a real
``vtkMRMLScene`` set as ``slicer.mrmlScene``.

Not supplied, so not testable here: widgets (``qt``, ``ctk``, ``slicer.app``); the ``.ui`` files are checked
separately with PySide6 (``test_ui_files.py``).
"""

from __future__ import annotations

import logging
import sys
import types
import typing
import unittest
from pathlib import Path

import slicer

REPO = Path(__file__).resolve().parent.parent
MODULES = ("DSCPerfusion", "GliomaProgression", "CTVPlanner")


# --- slicer.ScriptedLoadableModule ------------------------------------------------------------------------


class _ModuleParent(types.SimpleNamespace):
    """Stands in for the application's qSlicerScriptedLoadableModule: a holder of the module's descriptions."""


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else _ModuleParent()
        self.moduleName = self.__class__.__name__
        self.parent.title = self.moduleName
        self.parent.categories = []
        self.parent.dependencies = []
        self.parent.contributors = []
        self.parent.helpText = ""
        self.parent.acknowledgementText = ""

    def getDefaultModuleDocumentationLink(self, docPage=None):
        return ""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        raise RuntimeError("Module widgets need the Slicer application; they are not available on slicer-core.")


class ScriptedLoadableModuleLogic:
    """As in Slicer: a module logic with one parameter node per module, a real vtkMRMLScriptedModuleNode."""

    def __init__(self, parent=None):
        name = self.__class__.__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        scene = slicer.mrmlScene
        nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetSingletonTag(self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """As in Slicer: ``runTest`` is the entry point the application calls; delayDisplay only logs here."""

    def delayDisplay(self, message, msec=1000):
        logging.info(message)


# --- slicer.parameterNodeWrapper --------------------------------------------------------------------------


def _is_node_type(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, slicer.vtkMRMLNode)


def _node_property(name: str):
    def get(self):
        return self.parameterNode.GetNodeReference(name)

    def set_(self, node):
        self.parameterNode.SetNodeReferenceID(name, node.GetID() if node is not None else None)

    return property(get, set_)


def _value_property(name: str, kind: type, default):
    def get(self):
        text = self.parameterNode.GetParameter(name)
        if text == "":
            return default
        if kind is bool:
            return text == "true"
        return kind(text)

    def set_(self, value):
        if kind is bool:
            text = "true" if value else "false"
        else:
            text = str(kind(value))
        self.parameterNode.SetParameter(name, text)

    return property(get, set_)


def parameterNodeWrapper(cls):
    """Typed access to a parameter node's values (float, int, bool, str) and node references (vtkMRML types).

    A minimal stand-in for Slicer's decorator of the same name; GUI connection (``connectGui``) needs the
    application and is not provided.
    """
    hints = typing.get_type_hints(cls)
    defaults = {name: getattr(cls, name, None) for name in hints}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode

    namespace = {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__}
    for name, annotation in hints.items():
        if _is_node_type(annotation) or (typing.get_origin(annotation) is typing.Union
                                         and any(_is_node_type(a) for a in typing.get_args(annotation))):
            namespace[name] = _node_property(name)
        elif annotation in (float, int, bool, str):
            namespace[name] = _value_property(name, annotation, defaults[name])
        else:
            raise TypeError(f"{cls.__name__}.{name}: the test shim supports float, int, bool, str and MRML nodes.")
    return type(cls.__name__, (), namespace)


# --- installation -----------------------------------------------------------------------------------------


def install() -> None:
    """Register the shim modules under ``slicer`` and make the module folders importable (idempotent)."""
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        scripted = types.ModuleType("slicer.ScriptedLoadableModule", "Test shim: scripted-module base classes.")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest):
            setattr(scripted, cls.__name__, cls)
        scripted.__all__ = [cls for cls in vars(scripted) if cls.startswith("ScriptedLoadableModule")]
        wrapper = types.ModuleType("slicer.parameterNodeWrapper", "Test shim: typed parameter nodes.")
        wrapper.parameterNodeWrapper = parameterNodeWrapper
        sys.modules[scripted.__name__] = slicer.ScriptedLoadableModule = scripted
        sys.modules[wrapper.__name__] = slicer.parameterNodeWrapper = wrapper
    for module in MODULES:
        folder = str(REPO / module)
        if folder not in sys.path:
            sys.path.insert(0, folder)


def fresh_scene():
    """A new real vtkMRMLScene as ``slicer.mrmlScene``, with the core module logics attached."""
    from GliomaProgressionLib import mrml

    return mrml.new_scene()
