"""The radiomics invasion map (seed 004, Yan et al. 2020) as the Glioma Progression panel's second method, on Slicer's
own Python layer (see layer.py).

The invasion model is a tiny one trained here on random features (CE-T1, FLAIR and ADC channels, 3 mm feature
grid), given to the panel as a user's package file; the case is test_channels_panel's miniature head. The panel
starts one background process from an ``InvasionJob`` (its argument list read back by the process's parser), Cancel
ends it, and the finished map shows as a heat map over CE-T1 with its segment: from a stand-in process that writes
known outputs, and end to end (slow).
"""

import json
import os
import sys

import numpy as np
import pytest
import slicer
from test_channels_panel import loadMiniCase, miniCase
from test_panels import _alive, _job, widgetOf

from GliomaProgressionLib.models.invasion_packages import SYNTHETIC_NOTICE
from GliomaProgressionLib.report.figure import INVASION_NAME
from GliomaProgressionLib.report.scene import PROGRESSION_COLOUR

MODEL_TITLE = "Unit invasion model (random features)"


@pytest.fixture(scope="module")
def invasionPackage(tmp_path_factory):
    from GliomaProgressionLib.invasion.classifier import train_classifier
    from GliomaProgressionLib.models.invasion_packages import package_invasion_model

    rng = np.random.default_rng(0)
    features = ("firstorder_Mean", "firstorder_Median", "glcm_Contrast")
    channels = ("t1c", "flair", "adc")
    patients = []
    for size in (400, 200):
        labels = (rng.random(size) < 0.3).astype(np.int8)
        patients.append((rng.normal(size=(size, len(channels) * len(features))) + labels[:, None], labels))
    model = train_classifier(patients, channels=channels, features=features, radius=1, bin_count=16, spacing_mm=3.0,
                             hidden_layers=(4,), voxels_per_class=50, max_iter=20, seed=1)
    path, _ = package_invasion_model(model, tmp_path_factory.mktemp("invasion") / "unit_invasion.zip",
                                     {"id": "unit-invasion", "title": MODEL_TITLE, "synthetic": True})
    return str(path)


@pytest.fixture(scope="module")
def mini():
    return miniCase(seed=1)


@pytest.fixture
def invasionPanel(invasionPackage):
    """The panel on the invasion method with the unit package chosen (as a user's package file)."""
    import GliomaProgression

    widget = widgetOf("GliomaProgression")
    ui = widget.ui
    ui.invasionModelComboBox.addItem(MODEL_TITLE, invasionPackage)
    ui.invasionModelComboBox.currentIndex = ui.invasionModelComboBox.findData(invasionPackage)
    ui.methodComboBox.currentIndex = ui.methodComboBox.findText(GliomaProgression.Method.INVASION.value)
    yield widget
    ui.methodComboBox.currentIndex = ui.methodComboBox.findText(GliomaProgression.Method.NNUNET.value)
    ui.invasionModelComboBox.removeItem(ui.invasionModelComboBox.findData(invasionPackage))


def chooseInputs(widget, nodes):
    ui = widget.ui
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.dscSelector.setCurrentNode(None)
    widget._mapSelectors["adc"][1].setCurrentNode(nodes["adc"])


def test_the_invasion_method_shows_its_model_and_the_maps_it_names(scene, invasionPanel, mini):
    import GliomaProgression

    widget = invasionPanel
    ui, parameters = widget.ui, widget._parameterNode
    assert [ui.methodComboBox.itemText(i) for i in range(ui.methodComboBox.count)] == [
        method.value for method in GliomaProgression.Method]
    assert parameters.method == GliomaProgression.Method.INVASION
    assert ui.modelComboBox.isHidden() and ui.thresholdSpinBox.isHidden() and not ui.invasionModelComboBox.isHidden()
    nodes = loadMiniCase(mini)
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    assert not ui.channelMapsWidget.isHidden() and not widget._mapSelectors["adc"][1].isHidden()
    reason = ui.predictButton.toolTip
    assert not ui.predictButton.enabled and "ADC" in reason and reason in ui.modelDescriptionLabel.text
    widget._mapSelectors["adc"][1].setCurrentNode(nodes["adc"])
    assert ui.predictButton.enabled and ui.predictButton.text == "Map invasion"
    ui.methodComboBox.currentIndex = ui.methodComboBox.findText(GliomaProgression.Method.NNUNET.value)
    assert ui.predictButton.text == "Predict progression" and ui.invasionModelComboBox.isHidden()
    assert ui.channelMapsWidget.isHidden(), "the multiparametric model names no map"


def test_the_invasion_job_carries_the_case_folder_and_cancel_ends_it(scene, invasionPanel, mini, invasionPackage):
    from GliomaProgressionLib.runs.invasion_job import JOB_MODULE, InvasionJob

    widget = invasionPanel
    ui = widget.ui
    chooseInputs(widget, loadMiniCase(mini))
    slicer.app.click(ui.predictButton)
    job = _job(widget)
    assert job is not None and job.kind == "invasion" and ui.predictButton.text == "Cancel"
    command = job.runner.command
    try:
        assert command[1:3] == ["-m", JOB_MODULE]
        sent = InvasionJob.from_arg_list(command[3:])
        assert sent.as_arg_list() == command[3:] and sent.model == invasionPackage
        assert sorted(os.listdir(sent.case)) == ["adc.nii.gz", "flair.nii.gz", "lesion.nii.gz", "t1c.nii.gz"]
        assert not sent.out.exists()
    finally:
        slicer.app.click(ui.predictButton)  # cancel
    assert _job(widget) is None and ui.statusLabel.text.startswith("Cancelled")
    slicer.app.waitFor(lambda: not _alive(job.runner.pid), timeout=5)
    assert not os.path.exists(job.folder)
    assert slicer.mrmlScene.GetFirstNodeByName("Invasion probability") is None


def test_the_finished_map_shows_as_a_heat_map_and_a_segment(scene, invasionPanel, mini, monkeypatch):
    """A stand-in process: the outputs run_invasion_files writes (known values) and one progress line."""
    from GliomaProgressionLib.case.files import write_volume
    from GliomaProgressionLib.case.geometry import Volume
    from GliomaProgressionLib.models.process import BackgroundProcess
    from GliomaProgressionLib.runs.invasion import INVASION_JSON, LABEL_FILE, PROBABILITY_FILE
    from GliomaProgressionLib.runs.invasion_job import InvasionJob

    grid = mini["t1c"].ijk_to_ras
    k = np.indices(mini["t1c"].array.shape)[0]
    probability = np.where(mini["lesion"].array == 2, k / k.max(), 0.0).astype(np.float32)
    label = (probability >= 0.5).astype(np.uint8)

    def standIn(job):
        os.makedirs(job.out)
        write_volume(Volume(probability, grid), str(job.out / PROBABILITY_FILE))
        write_volume(Volume(label, grid), str(job.out / LABEL_FILE))
        (job.out / INVASION_JSON).write_text(json.dumps({
            "label_volume_ml": 1.5, "region_volume_ml": 20.0, "threshold": 0.5, "evaluation": None,
            "model": {"id": "unit-invasion", "synthetic": True, "notice": SYNTHETIC_NOTICE}}), encoding="utf-8")
        line = "[ 60%] Computing the local feature maps (0.1 s)"
        return BackgroundProcess([sys.executable, "-c", f"print({line!r})"]).start()

    monkeypatch.setattr(InvasionJob, "start", standIn)
    widget = invasionPanel
    ui = widget.ui
    chooseInputs(widget, loadMiniCase(mini))
    slicer.app.click(ui.predictButton)
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=30)
    assert ui.statusLabel.text.startswith("Invasion map finished"), ui.statusLabel.text
    assert "Computing the local feature maps" in ui.logTextEdit.toPlainText()
    heatMap = slicer.mrmlScene.GetFirstNodeByName("Invasion probability")
    assert np.allclose(slicer.util.arrayFromVolume(heatMap), probability)
    display = heatMap.GetDisplayNode()
    assert not display.GetAutoWindowLevel() and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0, 1)
    segmentation = slicer.mrmlScene.GetFirstNodeByName(f"Invasion {INVASION_NAME.lower()}")
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == INVASION_NAME and tuple(segment.GetColor()) == pytest.approx(PROGRESSION_COLOUR)
    found = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0),
                                                       heatMap)
    assert np.array_equal(found > 0, label > 0)
    assert INVASION_NAME in ui.verdictLabel.text and "1.5 mL" in ui.verdictLabel.text
    assert SYNTHETIC_NOTICE in ui.verdictLabel.text


@pytest.mark.slow
def test_the_invasion_map_end_to_end(scene, invasionPanel, mini):
    widget = invasionPanel
    ui = widget.ui
    chooseInputs(widget, loadMiniCase(mini))
    slicer.app.click(ui.predictButton)
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=300)
    assert ui.statusLabel.text.startswith("Invasion map finished"), ui.statusLabel.text
    assert "Computing the local feature maps" in ui.logTextEdit.toPlainText()
    values = slicer.util.arrayFromVolume(slicer.mrmlScene.GetFirstNodeByName("Invasion probability"))
    assert values.min() >= 0.0 and 0.0 < values.max() <= 1.0
    segmentation = slicer.mrmlScene.GetFirstNodeByName(f"Invasion {INVASION_NAME.lower()}")
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == INVASION_NAME
    assert INVASION_NAME in ui.verdictLabel.text and SYNTHETIC_NOTICE in ui.verdictLabel.text
