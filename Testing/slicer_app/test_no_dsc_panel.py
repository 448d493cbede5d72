"""The Glioma Progression panel on a case without DSC (issue 12), on Slicer's own Python layer (see layer.py).

A case folder without a DSC series is loaded as a user would (``load_case_into_scene``): the DSC selector stays at
None. The conventional model (CE-T1 + FLAIR) predicts and the results say that perfusion was skipped; a model with
an nCBV channel keeps Predict disabled and says why in one sentence, without a message box.
"""

import pytest
import slicer
from conftest import savePanel
from test_panels import _job, widgetOf

from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case
from GliomaProgressionLib.report.figure import PERFUSION_SKIPPED, PROGRESSION_NAME
from GliomaProgressionLib.report.scene import load_case_into_scene


@pytest.fixture(scope="module")
def noDscFolder(tmp_path_factory):
    return write_case(generate_case(PhantomConfig(seed=12, size="small", dsc=False)),
                      tmp_path_factory.mktemp("no-dsc") / "case")


def chooseInputsWithoutDsc(ui, nodes, model):
    """As a user: the loaded case's series and lesion, no DSC series, ``model`` on the CPU."""
    assert "dsc" not in nodes, "the case has no DSC series"
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.dscSelector.setCurrentNode(None)
    ui.modelComboBox.currentIndex = ui.modelComboBox.findData(model)
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")


def oneSentence(text):
    return text.strip().endswith(".") and text.count(". ") == 0


def test_a_model_with_ncbv_keeps_predict_disabled_without_dsc_and_says_why(scene, noDscFolder):
    widget = widgetOf("GliomaProgression")
    ui, parameters = widget.ui, widget._parameterNode
    nodes = load_case_into_scene(noDscFolder, slicer.mrmlScene, name="No DSC")
    chooseInputsWithoutDsc(ui, nodes, "multiparametric")
    assert parameters.dsc is None and parameters.model == "multiparametric"
    assert not ui.predictButton.enabled and not ui.echoTimeSpinBox.enabled
    reason = ui.predictButton.toolTip
    assert "DSC" in reason and "nCBV" in reason and oneSentence(reason), reason
    assert reason in ui.modelDescriptionLabel.text, "the reason is shown, not only in a tooltip"
    slicer.app.click(ui.predictButton)  # a disabled button: nothing starts, no message box
    assert _job(widget) is None
    with pytest.raises(ValueError, match="DSC") as refused:  # a script calling the logic gets one sentence too
        widget.logic.startPrediction(nodes["t1c"], nodes["flair"], nodes["lesion"], "multiparametric")
    assert oneSentence(str(refused.value))


def test_the_conventional_model_starts_without_dsc_and_sends_no_dsc(scene, noDscFolder):
    from GliomaProgressionLib.runs.predict import PredictionJob

    widget = widgetOf("GliomaProgression")
    ui = widget.ui
    chooseInputsWithoutDsc(ui, load_case_into_scene(noDscFolder, slicer.mrmlScene, name="No DSC"), "conventional")
    assert ui.predictButton.enabled and ui.predictButton.toolTip.startswith("Register the series")
    assert "needs nCBV" not in ui.modelDescriptionLabel.text
    slicer.app.click(ui.predictButton)
    job = _job(widget)
    try:
        sent = PredictionJob.from_arg_list(job.runner.command[3:])
        assert sent.model == "conventional" and sent.dsc is None and sent.dsc_json is None
    finally:
        slicer.app.click(ui.predictButton)  # cancel
    assert _job(widget) is None


@pytest.mark.slow
def test_the_conventional_model_predicts_without_dsc_and_says_perfusion_was_skipped(scene, noDscFolder, panelsDir):
    widget = widgetOf("GliomaProgression")
    ui, parameters = widget.ui, widget._parameterNode
    chooseInputsWithoutDsc(ui, load_case_into_scene(noDscFolder, slicer.mrmlScene, name="No DSC"), "conventional")
    slicer.app.click(ui.predictButton)
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=600)
    assert ui.statusLabel.text.startswith("Prediction finished"), ui.statusLabel.text
    assert "predicted" in ui.verdictLabel.text
    assert PERFUSION_SKIPPED.lower() in ui.verdictLabel.text.lower()
    segmentation = slicer.mrmlScene.GetFirstNodeByName("Progression predicted progression")
    assert segmentation is not None
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == PROGRESSION_NAME
    assert slicer.mrmlScene.GetFirstNodeByName("Progression probability") is not None
    assert parameters.ncbv is None, "no nCBV map comes from a case without DSC"
    savePanel(widget, panelsDir, "GliomaProgression-without-DSC")
