"""The Glioma Progression panel's named channels (issue 15), on Slicer's own Python layer (see layer.py).

A progression model whose metadata names ADC (or p and q, derived from MD and FA) is added to the model list as
Models.json would list it: the panel shows a volume selector for each map the chosen model needs and hides them
for a model that needs none; Predict stays disabled with one sentence while a map is not chosen; the chosen map
reaches the job process as ``--map=adc=PATH``, read back by ``PredictionJob.from_arg_list``. The case is a
miniature head built here (the phantom takes longer to make than these tests may run).
"""

import os

import numpy as np
import pytest
import slicer
from test_panels import _alive, _job, widgetOf

from CTVPlannerLib.lesion import LESION_SEGMENTS
from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.geometry import Volume
from GliomaProgressionLib.case.channels import channel_modality

ADC_MODEL = {"id": "unit-adc", "title": "Unit: CE-T1 + FLAIR + ADC",
             "channels": [{"name": "t1c"}, {"name": "flair"}, {"name": "adc"}]}
PQ_MODEL = {"id": "unit-pq", "title": "Unit: CE-T1 + FLAIR + p + q",
            "channels": [{"name": "t1c"}, {"name": "flair"}, {"name": "p"}, {"name": "q"}]}


def miniCase(seed=0):
    """CE-T1, FLAIR and an ADC map (10^-6 mm^2/s) of an ellipsoid head on a 2 mm LPS grid, and a lesion (BraTS
    labels 2 and 3) in the right hemisphere; FLAIR and ADC are bright in the non-enhancing lesion."""
    rng = np.random.default_rng(seed)
    shape = (24, 56, 56)
    k, j, i = np.indices(shape)
    head = ((k - 11.5) / 11) ** 2 + ((j - 27.5) / 26) ** 2 + ((i - 27.5) / 26) ** 2 < 1
    brain = ((k - 11.5) / 10) ** 2 + ((j - 27.5) / 23) ** 2 + ((i - 27.5) / 23) ** 2 < 1
    radius = np.sqrt((k - 12) ** 2 + (j - 28) ** 2 + (i - 36) ** 2)
    lesion = np.zeros(shape, np.uint8)
    lesion[brain & (radius < 8)] = 2
    lesion[brain & (radius < 4)] = 3
    noise = lambda sd: rng.normal(0.0, sd, shape)
    arrays = {"t1c": 300.0 * head + 500.0 * brain + 600.0 * (lesion == 3) + 40 * np.sin(j / 4.0) + noise(15),
              "flair": 200.0 * head + 400.0 * brain + 500.0 * (lesion == 2) + 40 * np.cos(i / 5.0) + noise(15),
              "adc": np.clip(800.0 * brain + 300.0 * (lesion == 2) + noise(30), 0, None)}
    grid = np.diag([-2.0, -2.0, 2.0, 1.0])
    volumes = {name: Volume(array.astype(np.float32), grid) for name, array in arrays.items()}
    volumes["lesion"] = Volume(lesion, grid)
    return volumes


def loadMiniCase(case):
    nodes = {name: mrml.node_from_volume(case[name], name.upper()) for name in ("t1c", "flair", "adc")}
    nodes["lesion"] = mrml.segmentation_from_labelmap(case["lesion"], LESION_SEGMENTS, "Lesion")
    return nodes


@pytest.fixture(scope="module")
def mini():
    return miniCase()


@pytest.fixture
def unitModels(monkeypatch):
    """The Glioma Progression widget with the two unit models listed beside the shipped ones, as if Models.json
    listed them (the widget read the list once, at setup; the logic reads it when asked)."""
    import GliomaProgression

    widget = widgetOf("GliomaProgression")
    shipped = list(widget.logic.availableModels())
    monkeypatch.setattr(GliomaProgression.GliomaProgressionLogic, "availableModels",
                        staticmethod(lambda: shipped + [ADC_MODEL, PQ_MODEL]))
    for entry in (ADC_MODEL, PQ_MODEL):
        monkeypatch.setitem(widget._models, entry["id"], entry)
        widget.ui.modelComboBox.addItem(entry["title"], entry["id"])
    yield widget
    for entry in (ADC_MODEL, PQ_MODEL):
        widget.ui.modelComboBox.removeItem(widget.ui.modelComboBox.findData(entry["id"]))


def chooseModel(ui, model):
    ui.modelComboBox.currentIndex = ui.modelComboBox.findData(model)


def shownMaps(widget):
    """The map selectors the panel shows (their channel names)."""
    if widget.ui.channelMapsWidget.isHidden():
        return set()
    return {name for name, (label, selector) in widget._mapSelectors.items()
            if not selector.isHidden() and not label.isHidden()}


def oneSentence(text):
    return text.strip().endswith(".") and text.count(". ") == 0


def test_the_selectors_follow_the_chosen_models_channels(scene, unitModels, mini):
    widget = unitModels
    ui, parameters = widget.ui, widget._parameterNode
    nodes = loadMiniCase(mini)
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    chooseModel(ui, "conventional")
    assert shownMaps(widget) == set() and ui.predictButton.enabled
    chooseModel(ui, ADC_MODEL["id"])
    assert parameters.model == ADC_MODEL["id"] and shownMaps(widget) == {"adc"}
    label, selector = widget._mapSelectors["adc"]
    assert label.text == f"{channel_modality('adc')}:" and selector.currentNode() is None, "nothing chosen for the user"
    chooseModel(ui, PQ_MODEL["id"])
    assert shownMaps(widget) == {"md", "fa"}, "p and q are derived from MD and FA"
    chooseModel(ui, "multiparametric")
    assert shownMaps(widget) == set()


def test_a_missing_map_keeps_predict_disabled_and_says_why(scene, unitModels, mini):
    widget = unitModels
    ui = widget.ui
    nodes = loadMiniCase(mini)
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    chooseModel(ui, ADC_MODEL["id"])
    reason = ui.predictButton.toolTip
    assert not ui.predictButton.enabled and "ADC" in reason and ADC_MODEL["title"] in reason and oneSentence(reason)
    assert reason in ui.modelDescriptionLabel.text, "the reason is shown, not only in a tooltip"
    slicer.app.click(ui.predictButton)  # disabled: nothing starts, no message box
    assert _job(widget) is None
    with pytest.raises(ValueError, match="ADC") as refused:  # a script calling the logic gets one sentence too
        widget.logic.startPrediction(nodes["t1c"], nodes["flair"], nodes["lesion"], ADC_MODEL["id"])
    assert oneSentence(str(refused.value))
    chooseModel(ui, PQ_MODEL["id"])
    widget._mapSelectors["md"][1].setCurrentNode(nodes["adc"])  # MD chosen, FA not yet
    assert not ui.predictButton.enabled and "FA map (to derive q)" in ui.predictButton.toolTip
    widget._mapSelectors["adc"][1].setCurrentNode(nodes["adc"])  # a hidden selector's volume does not count
    assert not ui.predictButton.enabled and "FA map" in ui.predictButton.toolTip
    chooseModel(ui, ADC_MODEL["id"])
    assert ui.predictButton.enabled and ui.predictButton.toolTip.startswith("Register the series")


def test_the_chosen_map_reaches_the_job_as_a_map_argument(scene, unitModels, mini, monkeypatch):
    """The job's command line carries --map=adc=PATH, read back by PredictionJob.from_arg_list; the file holds the
    chosen volume. The process started is a stand-in that waits: the unit model does not exist as a package."""
    import sys

    from GliomaProgressionLib.case.files import read_volume
    from GliomaProgressionLib.models.process import BackgroundProcess
    from GliomaProgressionLib.runs.predict import JOB_MODULE, PredictionJob

    started = []

    def standIn(job):
        started.append(job.command())
        return BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"]).start()

    monkeypatch.setattr(PredictionJob, "start", standIn)
    widget = unitModels
    ui = widget.ui
    nodes = loadMiniCase(mini)
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    chooseModel(ui, ADC_MODEL["id"])
    widget._mapSelectors["adc"][1].setCurrentNode(nodes["adc"])
    slicer.app.click(ui.predictButton)
    job = _job(widget)
    assert job is not None and ui.predictButton.text == "Cancel" and len(started) == 1
    command = started[0]
    try:
        assert command[1:3] == ["-m", JOB_MODULE]
        sent = PredictionJob.from_arg_list(command[3:])
        assert sent.as_arg_list() == command[3:] and sent.model == ADC_MODEL["id"]
        assert [name for name, _ in sent.maps] == ["adc"] and f"--map=adc={sent.maps[0][1]}" in command
        written = read_volume(str(sent.maps[0][1]))
        assert np.allclose(written.array, mini["adc"].array) and np.allclose(written.ijk_to_ras, mini["adc"].ijk_to_ras)
        assert sent.dsc is None and not sent.out.exists()
    finally:
        slicer.app.click(ui.predictButton)  # cancel
    assert _job(widget) is None and not os.path.exists(job.folder)
    slicer.app.waitFor(lambda: not _alive(job.runner.pid), timeout=5)
