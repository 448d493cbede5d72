"""The three Slicer modules, imported through the slicer-core shim: descriptions, Logic, and the very
``<Module>Test.runTest()`` the Slicer application runs as its self-test."""

import importlib

import pytest

MODULES = ("DSCPerfusion", "GliomaProgression", "CTVPlanner")


@pytest.mark.parametrize("name", MODULES)
def test_module_describes_itself(name):
    module = importlib.import_module(name)
    described = getattr(module, name)(None).parent
    assert described.title and described.categories == ["Neuro-oncology"]
    assert len(described.helpText) > 200 and len(described.acknowledgementText) > 50
    assert described.contributors


@pytest.mark.parametrize("name", MODULES)
def test_parameter_node_is_a_real_scripted_module_node(scene, name):
    module = importlib.import_module(name)
    parameters = getattr(module, f"{name}Logic")().getParameterNode()
    assert parameters.parameterNode.GetClassName() == "vtkMRMLScriptedModuleNode"
    assert scene.GetNodeByID(parameters.parameterNode.GetID()) is not None


def test_parameter_values_persist_in_the_node(scene):
    import GliomaProgression

    logic = GliomaProgression.GliomaProgressionLogic()
    logic.getParameterNode().seed = 42
    assert logic.getParameterNode().seed == 42
    assert logic.getParameterNode().parameterNode.GetParameter("seed") == "42"


@pytest.mark.parametrize("name", MODULES)
def test_self_test(scene, name):
    module = importlib.import_module(name)
    test = getattr(module, f"{name}Test")()
    test.runTest()
