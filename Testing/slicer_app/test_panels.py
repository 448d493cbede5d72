"""The three panels built and driven as a user would, on Slicer's own Python layer (see layer.py).

Each test builds the module's real widget (``setup()`` with its ``.ui``), lets Slicer's real ``connectGui`` bind
it, chooses inputs in the widgets, presses the buttons and looks at the scene. Exceptions raised in Qt slots
(which the application would only print) fail the test (the ``scene`` fixture).
"""

import os
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
from conftest import savePanel
from layer import MODULE_NAMES, REPO

from GliomaProgressionLib import mrml
from CTVPlannerLib.lesion import LESION_SEGMENTS
from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case


def widgetOf(name):
    """The module's widget, shown (entered) as when the user opens the module."""
    return slicer.app.selectModule(name)


def boundParameters(widget):
    """Parameter name -> the connector Slicer's parameterNodeWrapper made for it."""
    wrapper = widget._parameterNode
    return dict(wrapper._parameterGUIs[widget._parameterNodeGuiTag])


def uiRanges(name):
    """SlicerParameterName -> (minimum, maximum) written in the module's .ui file."""
    root = ET.parse(REPO / name / "Resources" / "UI" / f"{name}.ui").getroot()
    ranges = {}
    for widget in root.iter("widget"):
        properties = {p.get("name"): p for p in widget.findall("property")}
        if "SlicerParameterName" in properties and "minimum" in properties:
            value = lambda p: float(next(iter(p)).text)
            ranges[properties["SlicerParameterName"].findtext("string")] = (value(properties["minimum"]),
                                                                           value(properties["maximum"]))
    return ranges


def withinRange(widget, parameter):
    from slicer.parameterNodeWrapper import WithinRange
    from slicer.parameterNodeWrapper.util import findFirstAnnotation, splitAnnotations

    annotations = splitAnnotations(type(widget._parameterNode).dataType(parameter))[1]
    return findFirstAnnotation(annotations, WithinRange)


@pytest.fixture(scope="module")
def smallCase():
    return generate_case(PhantomConfig(seed=11, size="small"))


def loadCase(case):
    nodes = {"t1c": mrml.node_from_volume(case.t1c, "CE-T1"), "flair": mrml.node_from_volume(case.flair, "FLAIR"),
             "lesion": mrml.segmentation_from_labelmap(case.lesion, LESION_SEGMENTS, "Lesion")}
    nodes["dsc"], _ = mrml.sequence_from_volume(case.dsc, case.frame_times_s, "DSC")
    return nodes


# --- every panel ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_setup_binds_every_parameter(scene, name):
    widget = widgetOf(name)
    bound = boundParameters(widget)
    parameters = type(widget._parameterNode).allParameters
    handBound = {"model"} if name == "GliomaProgression" else set()  # items change at run time: see the module
    assert set(bound) == set(parameters) - handBound


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_spin_boxes_keep_the_declared_ranges(scene, name):
    """Slicer's connectors set a bound widget's range from WithinRange (else +-2^31 or +-inf): the range must be
    the module's declared one, and the .ui must say the same."""
    widget = widgetOf(name)
    declared = uiRanges(name)
    assert declared, "the .ui declares spin-box ranges"
    for parameter, connector in boundParameters(widget).items():
        if parameter not in declared:
            continue
        limits = withinRange(widget, parameter)
        assert limits is not None, f"{name}.{parameter} has no WithinRange annotation"
        spin = connector.widget()
        assert (spin.minimum, spin.maximum) == pytest.approx((limits.minimum, limits.maximum)), parameter
        assert declared[parameter] == pytest.approx((limits.minimum, limits.maximum)), parameter


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_close_scene_and_reload_leave_nothing_behind(scene, name):
    widget = widgetOf(name)
    calls = []
    widget.updateGui = lambda *a, original=widget.updateGui: (calls.append(1), original())[1]
    widget.setParameterNode(widget.logic.getParameterNode())  # re-observe with the spy installed
    calls.clear()
    slicer.app.closeScene()  # the parameter node is a singleton: Slicer keeps it and clears its node references
    from slicer.parameterNodeWrapper.util import isNodeOrUnionOfNodes

    references = [p for p, info in type(widget._parameterNode).allParameters.items()
                  if isNodeOrUnionOfNodes(info.unalteredType)]
    assert references and all(getattr(widget._parameterNode, p) is None for p in references)
    slicer.util.reloadScriptedModule(name)
    reloaded = widgetOf(name)
    assert reloaded is not widget
    assert widget.Observations == [], "the old widget still observes something"
    calls.clear()
    reloaded.logic.getParameterNode().parameterNode.Modified()
    assert calls == [], "the old widget still reacts to the parameter node"
    assert reloaded._parameterNode is not None and boundParameters(reloaded)


def test_sample_data_entry_is_registered_by_slicers_own_code(scene):
    import GliomaProgression

    sources = slicer.modules.sampleDataSources[GliomaProgression.SAMPLE_CATEGORY]
    source = next(s for s in sources if s.sampleName == GliomaProgression.SAMPLE_NAME)
    assert source.customDownloader.__qualname__ == GliomaProgression.generateSampleCase.__qualname__
    assert os.path.isfile(source.thumbnailFileName)


def test_sample_data_generates_in_the_background(scene):
    import GliomaProgression

    source = next(s for s in slicer.modules.sampleDataSources[GliomaProgression.SAMPLE_CATEGORY]
                  if s.sampleName == GliomaProgression.SAMPLE_NAME)
    started = time.monotonic()
    job = source.customDownloader(source)
    assert time.monotonic() - started < 2.0, "choosing the sample must not block the application"
    assert job.running and slicer.mrmlScene.GetFirstNodeByName("Synthetic glioma case CE-T1") is None
    slicer.app.waitFor(lambda: not job.running, timeout=120)
    assert job.code == 0 and not job.dialog.isVisible()
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() >= 2
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems() == 1


def test_sample_data_cancel_ends_the_process(scene):
    import GliomaProgression

    source = next(s for s in slicer.modules.sampleDataSources[GliomaProgression.SAMPLE_CATEGORY]
                  if s.sampleName == GliomaProgression.SAMPLE_NAME)
    job = source.customDownloader(source)
    pid = job.runner.pid
    import qt

    slicer.app.click(job.dialog.findChildren(qt.QPushButton)[0])  # the dialog's Cancel button
    assert not job.running and job.cancelled
    slicer.app.waitFor(lambda: not _alive(pid), timeout=5)
    assert not os.path.exists(job.folder)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


# --- DSC Perfusion -------------------------------------------------------------------------------------------


def test_dsc_panel_apply(scene, smallCase, panelsDir):
    widget = widgetOf("DSCPerfusion")
    ui, parameters = widget.ui, widget._parameterNode
    nodes = loadCase(smallCase)
    ui.inputSequenceSelector.setCurrentNode(nodes["dsc"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.echoTimeSpinBox.value = 30.0
    ui.leakageComboBox.currentIndex = ui.leakageComboBox.findText("bsw")
    assert parameters.inputSequence is nodes["dsc"] and parameters.lesion is nodes["lesion"]
    assert parameters.leakage == "bsw" and ui.applyButton.enabled
    ui.echoTimeSpinBox.value = 5000.0  # typed beyond the range: the spin box keeps it in range
    assert parameters.echoTimeMs == ui.echoTimeSpinBox.maximum
    ui.echoTimeSpinBox.value = 30.0
    slicer.app.click(ui.applyButton)
    ncbv = parameters.outputNCBV
    assert ncbv is not None and ncbv.GetName() == "DSC nCBV"
    values = slicer.util.arrayFromVolume(ncbv)
    assert np.isfinite(values).all() and values.max() > 1.5
    assert ui.statusLabel.text.startswith("Done in") and "DSC nCBV" in ui.statusLabel.text
    savePanel(widget, panelsDir, "DSCPerfusion")


def test_dsc_panel_frame_numbers_only_asks_for_the_repetition_time(scene, smallCase):
    """A sequence indexed by frame number (a 4D NRRD without times): Apply refuses in one sentence naming the
    repetition time; with TR typed in the panel it runs."""
    widget = widgetOf("DSCPerfusion")
    ui = widget.ui
    sequence, _ = mrml.sequence_from_volume(smallCase.dsc, np.arange(len(smallCase.frame_times_s)), "DSC frames")
    sequence.SetIndexName("frame")
    sequence.SetIndexUnit("")
    ui.inputSequenceSelector.setCurrentNode(sequence)
    ui.repetitionTimeSpinBox.value = 0.0
    from PySide6.QtWidgets import QMessageBox

    with slicer.app.answeringDialogs(QMessageBox.Ok) as shown:  # Slicer's error box, closed by the user
        slicer.app.click(ui.applyButton)
    errors = slicer.app.recorder.take()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "repetition time" in str(errors[0]).lower() and str(errors[0]).count(". ") <= 1
    assert len(shown) == 1 and str(errors[0]) in shown[0]
    assert widget._parameterNode.outputNCBV is None
    ui.repetitionTimeSpinBox.value = float(np.median(np.diff(smallCase.frame_times_s)))
    slicer.app.click(ui.applyButton)
    assert widget._parameterNode.outputNCBV is not None


# --- CTV Planner ---------------------------------------------------------------------------------------------


def test_ctv_panel_apply_and_edited_proposal_asks(scene, smallCase, panelsDir):
    from PySide6.QtWidgets import QMessageBox

    widget = widgetOf("CTVPlanner")
    ui, parameters = widget.ui, widget._parameterNode
    nodes = loadCase(smallCase)
    brain = mrml.segmentation_from_labelmap(smallCase.truth["brain"], {1: ("Brain", (0.8, 0.8, 0.8))}, "Brain")
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.referenceVolumeSelector.setCurrentNode(nodes["t1c"])
    ui.brainMaskSelector.setCurrentNode(brain)
    ui.rtogMarginSpinBox.value = 20.0
    assert parameters.brainMask is brain and parameters.rtogMarginMm == 20.0 and ui.applyButton.enabled
    assert not ui.exportRtStructButton.enabled
    slicer.app.click(ui.applyButton)
    proposals = widget.logic.findProposals()
    assert proposals is not None and proposals.GetSegmentation().GetNumberOfSegments() >= 3
    assert ui.comparisonTableView.mrmlTableNode() is not None
    assert ui.exportRtStructButton.enabled and ui.statusLabel.text.startswith("Created")
    savePanel(widget, panelsDir, "CTVPlanner")
    segmentation = proposals.GetSegmentation()
    first = segmentation.GetNthSegmentID(0)
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(proposals, first, nodes["t1c"])
    edited[:, :, : edited.shape[2] // 2] = 0  # the oncologist trims the target
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, proposals, first, nodes["t1c"])
    with slicer.app.answeringDialogs(QMessageBox.No) as asked:  # No: keep the edited one
        slicer.app.click(ui.applyButton)
    assert len(asked) == 1 and "edited" in asked[0]
    kept = slicer.util.arrayFromSegmentBinaryLabelmap(proposals, first, nodes["t1c"])
    assert np.array_equal(kept, edited), "an edited proposal was overwritten"


# --- Glioma Progression --------------------------------------------------------------------------------------


def _job(widget):
    return widget._job


def test_generate_runs_in_the_background_and_loads(scene):
    widget = widgetOf("GliomaProgression")
    ui = widget.ui
    ui.sizeComboBox.currentIndex = ui.sizeComboBox.findText("small")
    ui.seedSpinBox.value = 5
    assert widget._parameterNode.size == "small" and widget._parameterNode.seed == 5
    started = time.monotonic()
    slicer.app.click(ui.generateButton)
    assert time.monotonic() - started < 2.0, "Generate must not block the application"
    assert ui.generateButton.text == "Cancel" and not ui.progressBar.isHidden() and not ui.predictButton.enabled
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=120)
    assert ui.generateButton.text == "Generate and load" and ui.progressBar.isHidden()
    assert "synthetic" in ui.statusLabel.text
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems() == 1


def choosePredictionInputs(ui, nodes):
    """As a user: the case's series and lesion, the multiparametric demo model, on the CPU."""
    ui.t1cSelector.setCurrentNode(nodes["t1c"])
    ui.flairSelector.setCurrentNode(nodes["flair"])
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.dscSelector.setCurrentNode(nodes["dsc"])
    ui.modelComboBox.currentIndex = ui.modelComboBox.findData("multiparametric")
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")


def test_predict_cancel_ends_every_process(scene, smallCase):
    widget = widgetOf("GliomaProgression")
    ui, parameters = widget.ui, widget._parameterNode
    choosePredictionInputs(ui, loadCase(smallCase))
    assert parameters.model == "multiparametric" and parameters.device == "cpu" and ui.predictButton.enabled
    slicer.app.click(ui.predictButton)
    job = _job(widget)
    assert job is not None and ui.predictButton.text == "Cancel"
    slicer.app.waitFor(lambda: len(job.runner.lines) > 0, timeout=60)  # the worker is up
    pid = job.runner.pid
    started = time.monotonic()
    slicer.app.click(ui.predictButton)
    assert time.monotonic() - started < 1.5, "Cancel must not block the application"
    assert _job(widget) is None and ui.predictButton.text == "Predict progression"
    assert ui.statusLabel.text.startswith("Cancelled")
    slicer.app.waitFor(lambda: not _alive(pid), timeout=5)
    assert not os.path.exists(job.folder)
    assert slicer.mrmlScene.GetFirstNodeByName("Progression probability") is None


def test_predict_starts_one_job_process_from_its_parameter_object(scene, smallCase):
    """The panel's choices reach the job process through PredictionJob's own argument list, read back by the
    parser of the process it starts (python -m GliomaProgressionLib.runs.predict): no command written by hand."""
    from pathlib import Path

    from GliomaProgressionLib.runs.predict import JOB_MODULE, PredictionJob

    widget = widgetOf("GliomaProgression")
    ui, parameters = widget.ui, widget._parameterNode
    choosePredictionInputs(ui, loadCase(smallCase))
    parameters.threshold, parameters.minVoxels = 0.4, 3
    slicer.app.click(ui.predictButton)
    job = _job(widget)
    command = job.runner.command
    try:
        assert command[1:3] == ["-m", JOB_MODULE]
        sent = PredictionJob.from_arg_list(command[3:])
        assert sent.as_arg_list() == command[3:]
        assert (sent.model, sent.settings.device, sent.settings.threshold, sent.settings.min_voxels) == (
            "multiparametric", "cpu", 0.4, 3)
        assert sent.out == Path(job.folder) / "results" and not sent.out.exists()
        assert all(path.is_file() for path in (sent.t1c, sent.flair, sent.lesion, sent.dsc, sent.dsc_json))
    finally:
        slicer.app.click(ui.predictButton)  # cancel
    assert _job(widget) is None and not os.path.exists(job.folder)


@pytest.mark.slow
def test_predict_panel_full_run(scene, smallCase, panelsDir):
    widget = widgetOf("GliomaProgression")
    ui = widget.ui
    choosePredictionInputs(ui, loadCase(smallCase))
    slicer.app.click(ui.predictButton)
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=600)
    assert "not for clinical use" in ui.verdictLabel.text and "predicted" in ui.verdictLabel.text
    assert slicer.mrmlScene.GetFirstNodeByName("Progression probability") is not None
    assert widget._parameterNode.ncbv is not None and ui.radiomicsButton.enabled
    savePanel(widget, panelsDir, "GliomaProgression")


# A distribution of this process's own: the two Slicer versions' suites run side by side in one environment.
DUMMY = f"gliomaprog-dummy{os.getpid()}"
DUMMY_MODULE = DUMMY.replace("-", "_")
DUMMY_WHEEL = f"{DUMMY_MODULE}-1.0-py3-none-any.whl"


def _dummyWheel(folder):
    """A one-module wheel pip installs offline (the install flow is tested without the network)."""
    import zipfile

    path = folder / DUMMY_WHEEL
    info = f"{DUMMY_MODULE}-1.0.dist-info"
    files = {f"{DUMMY_MODULE}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {DUMMY}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n")
    return path


def test_missing_packages_are_offered_once_and_installed_in_the_background(scene, tmp_path, monkeypatch):
    import subprocess
    import sys

    from PySide6.QtWidgets import QMessageBox

    from GliomaProgressionLib import dependencies

    widget = widgetOf("GliomaProgression")
    ui = widget.ui
    wheel = _dummyWheel(tmp_path)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{DUMMY} @ {wheel.as_uri()}\n", encoding="utf-8")
    monkeypatch.setattr(widget.logic, "requirementsFile", requirements)
    monkeypatch.setattr(dependencies, "SYNTHETIC_CASE", (DUMMY,))
    try:
        with slicer.app.answeringDialogs(QMessageBox.Ok) as asked:
            slicer.app.click(ui.generateButton)
        assert len(asked) == 1 and DUMMY in asked[0]
        assert _job(widget) is not None and _job(widget).installing and ui.generateButton.text == "Cancel"
        slicer.app.waitFor(lambda: _job(widget) is None, timeout=120)
        assert "press the button again" in ui.statusLabel.text, ui.statusLabel.text
        assert widget.logic.missingPackages("phantom") == []
        assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems() == 0  # nothing generated
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", DUMMY], check=False)


def test_a_failed_install_says_why(scene, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from GliomaProgressionLib import dependencies

    widget = widgetOf("GliomaProgression")
    requirements = tmp_path / "requirements.txt"
    absent = tmp_path / DUMMY_WHEEL  # never written
    requirements.write_text(f"{DUMMY} @ {absent.as_uri()}\n", encoding="utf-8")
    monkeypatch.setattr(widget.logic, "requirementsFile", requirements)
    monkeypatch.setattr(dependencies, "SYNTHETIC_CASE", (DUMMY,))
    with slicer.app.answeringDialogs(QMessageBox.Ok):
        slicer.app.click(widget.ui.generateButton)
    slicer.app.waitFor(lambda: _job(widget) is None, timeout=60)
    assert widget.ui.statusLabel.text.startswith("Installing the Python packages failed:")
    assert DUMMY_WHEEL in widget.ui.statusLabel.text


def test_ctv_export_offers_its_packages_and_installs_them_in_the_background(scene, smallCase, tmp_path,
                                                                            monkeypatch):
    import subprocess
    import sys

    import CTVPlanner
    from PySide6.QtWidgets import QMessageBox

    widget = widgetOf("CTVPlanner")
    ui = widget.ui
    nodes = loadCase(smallCase)
    brain = mrml.segmentation_from_labelmap(smallCase.truth["brain"], {1: ("Brain", (0.8, 0.8, 0.8))}, "Brain")
    ui.lesionSelector.setCurrentNode(nodes["lesion"])
    ui.referenceVolumeSelector.setCurrentNode(nodes["t1c"])
    ui.brainMaskSelector.setCurrentNode(brain)
    slicer.app.click(ui.applyButton)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{DUMMY} @ {_dummyWheel(tmp_path).as_uri()}\n", encoding="utf-8")
    monkeypatch.setattr(widget.logic, "requirementsFile", requirements)
    monkeypatch.setattr(CTVPlanner, "PACKAGES_FOR_DICOM_EXPORT", (DUMMY,))
    ui.exportDirectoryButton.directory = str(tmp_path / "export")
    try:
        with slicer.app.answeringDialogs(QMessageBox.Ok) as asked:
            slicer.app.click(ui.exportSegButton)
        assert len(asked) == 1 and DUMMY in asked[0]
        assert widget._installJob is not None and not ui.exportSegButton.enabled and not ui.applyButton.enabled
        slicer.app.waitFor(lambda: widget._installJob is None, timeout=120)
        assert "press the button again" in ui.statusLabel.text and ui.exportSegButton.enabled
        assert not (tmp_path / "export").exists(), "nothing is exported before the packages are there"
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", DUMMY], check=False)


def test_dsc_panel_loads_a_4d_nifti_as_a_time_sequence(scene, smallCase, tmp_path):
    from GliomaProgressionLib.case.files import write_volume

    widget = widgetOf("DSCPerfusion")
    interval = float(np.median(np.diff(smallCase.frame_times_s)))
    path = tmp_path / "dsc.nii.gz"
    write_volume(smallCase.dsc, str(path), time_spacing=interval)
    assert widget.ui.loadSeriesButton.text.startswith("Load a 4D file")
    sequence = widget.logic.loadSeries(str(path))
    assert sequence.GetIndexUnit() == "s" and sequence.GetNumberOfDataNodes() == smallCase.dsc.array.shape[0]
    assert float(sequence.GetNthIndexValue(1)) == pytest.approx(interval)
    widget.ui.inputSequenceSelector.setCurrentNode(sequence)
    slicer.app.click(widget.ui.applyButton)
    assert widget._parameterNode.outputNCBV is not None


def test_close_scene_while_a_job_runs_cancels_it(scene):
    widget = widgetOf("GliomaProgression")
    slicer.app.click(widget.ui.generateButton)
    job = _job(widget)
    assert job is not None and job.running
    widgetOf("DSCPerfusion")  # the user goes to another module, the job goes on
    assert job.running
    slicer.app.closeScene()
    assert _job(widget) is None and job.cancelled
    slicer.app.waitFor(lambda: not _alive(job.runner.pid), timeout=5)
    slicer.app.processEvents()
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


def _withoutPackage(monkeypatch, name):
    """This Slicer as if ``name`` were not installed (the requirement checks read installed_versions())."""
    from GliomaProgressionLib import dependencies

    real = dependencies.installed_versions
    monkeypatch.setattr(dependencies, "installed_versions",
                        lambda: {k: v for k, v in real().items() if k != name})


def test_dsc_load_button_offers_nibabel_for_a_nifti(scene, smallCase, tmp_path, monkeypatch):
    import qt
    from PySide6.QtWidgets import QMessageBox

    from GliomaProgressionLib.case.files import write_volume

    widget = widgetOf("DSCPerfusion")
    path = tmp_path / "dsc.nii.gz"
    write_volume(smallCase.dsc, str(path), time_spacing=1.5)
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *a: str(path)))  # the user's pick
    _withoutPackage(monkeypatch, "nibabel")
    with slicer.app.answeringDialogs(QMessageBox.Cancel) as asked:  # the user declines
        slicer.app.click(widget.ui.loadSeriesButton)
    assert len(asked) == 1 and "nibabel" in asked[0]
    assert widget._parameterNode.inputSequence is None and not widget.installing
    monkeypatch.undo()
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *a: str(path)))
    slicer.app.click(widget.ui.loadSeriesButton)  # nibabel there: it loads
    assert widget._parameterNode.inputSequence is not None


def test_declining_the_packages_starts_nothing(scene, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    widget = widgetOf("GliomaProgression")
    _withoutPackage(monkeypatch, "nilearn")
    with slicer.app.answeringDialogs(QMessageBox.Cancel) as asked:
        slicer.app.click(widget.ui.generateButton)
    assert len(asked) == 1 and "nilearn" in asked[0]
    assert _job(widget) is None and widget.ui.generateButton.text == "Generate and load"
