"""Each module as Slicer loads it: its description, its parameter node, and its own self-test
(``<Module>Test.runTest()``, what Slicer's "Reload and Test" and ctest run), all on Slicer's Python layer."""

import pytest
import slicer
from layer import MODULE_NAMES


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_describes_itself(app, name):
    entry = getattr(slicer.modules, name.lower())
    assert entry.title and entry.categories == ["Neuro-oncology"]
    assert len(entry.helpText) > 200 and len(entry.acknowledgementText) > 50
    assert entry.contributors and entry.icon is not None and not entry.icon.isNull()
    assert slicer.selfTests[name]


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_parameter_node_is_a_real_scripted_module_node(scene, name):
    module = __import__(name)
    parameters = getattr(module, f"{name}Logic")().getParameterNode()
    assert parameters.parameterNode.GetClassName() == "vtkMRMLScriptedModuleNode"
    assert scene.GetNodeByID(parameters.parameterNode.GetID()) is not None


def test_parameter_values_persist_in_the_node(scene):
    import GliomaProgression

    logic = GliomaProgression.GliomaProgressionLogic()
    logic.getParameterNode().seed = 42
    assert logic.getParameterNode().seed == 42
    assert logic.getParameterNode().parameterNode.GetParameter("seed") == "42"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULE_NAMES)
def test_self_test(scene, name):
    slicer.app.testing = True  # as Slicer runs self-tests (--testing)
    try:
        slicer.selfTests[name](msec=0)
    finally:
        slicer.app.testing = False
