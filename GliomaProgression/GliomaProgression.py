import logging
import os
import tempfile

import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper

from GliomaProgressionLib import process

SAMPLE_CATEGORY = "Glioma progression"
SAMPLE_NAME = "Synthetic glioma case"


#
# GliomaProgression
#


class GliomaProgression(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Glioma Progression"
        self.parent.categories = ["Neuro-oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["GliomaProgression developers"]
        self.parent.helpText = (
            "Predicts where an adult glioblastoma is likely to progress inside the non-enhancing FLAIR lesion, "
            "from pre-operative CE-T1, FLAIR and nCBV, with an nnU-Net model run in a background process. "
            "This version provides the synthetic glioma case: simulated CE-T1, FLAIR, DSC perfusion and lesion "
            "labels with a known future-progression region, generated locally (also under Sample Data). "
            "Synthetic data and the demo models trained on it are not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, nnU-Net, SimpleITK and pyradiomics. The synthetic anatomy is the MNI ICBM152 "
            "2009 template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
            "Neurological Institute, McGill University), as shipped with nilearn. The science follows Heo 2023 "
            "(nnU-Net progression prediction with nCBV), Shim 2021, Yun 2023, Tran 2025 and Yan 2020."
        )
        if hasattr(slicer, "app"):  # the application only; slicer-core has no application to register with
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the synthetic case to Sample Data. It is generated on this computer when chosen: nothing is downloaded."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "GliomaProgression.png"),
        uris=None,
        fileNames=None,
        nodeNames=None,
        customDownloader=_generateSampleCase,
    )


def _generateSampleCase(source=None):
    folder = tempfile.mkdtemp(prefix="SyntheticGliomaCase-", dir=slicer.app.temporaryPath)
    caseFolder = os.path.join(folder, "case")
    logic = GliomaProgressionLogic()
    runner = logic.startSyntheticCase(caseFolder, seed=0, size="small")
    with slicer.util.tryWithErrorDisplay("Could not generate the synthetic glioma case.", waitCursor=True):
        logic.finishSyntheticCase(runner, caseFolder, waitForCompletion=True)
    return [logic.loadedNodes["t1c"]]


#
# Parameters
#


@parameterNodeWrapper
class GliomaProgressionParameterNode:
    """seed, size, cavity: how the synthetic case is generated (see GliomaProgressionLib.phantom)."""

    seed: int = 0
    size: str = "small"
    cavity: bool = False


#
# Widget
#


class GliomaProgressionWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._timer = None
        self._caseFolder = None

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GliomaProgression.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GliomaProgressionLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._pollGeneration)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.progressBar.setVisible(False)
        self.setParameterNode(self.logic.getParameterNode())

    def cleanup(self):
        self._cancelGeneration()
        self.setParameterNode(None)

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onGenerateButton(self):
        if self._runner is not None:  # the button reads "Cancel" while a case is generated
            self._cancelGeneration()
            self.ui.statusLabel.text = "Cancelled; nothing was loaded."
            return
        with slicer.util.tryWithErrorDisplay("Could not start generating the synthetic case.", waitCursor=True):
            self._caseFolder = os.path.join(tempfile.mkdtemp(prefix="SyntheticGliomaCase-",
                                                              dir=slicer.app.temporaryPath), "case")
            parameters = self._parameterNode
            self._runner = self.logic.startSyntheticCase(self._caseFolder, parameters.seed, parameters.size,
                                                         parameters.cavity)
            self.ui.generateButton.text = "Cancel"
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self._timer.start()

    def _pollGeneration(self):
        code = self._runner.poll()
        self.ui.progressBar.value = int(100 * self._runner.progress.fraction)
        self.ui.statusLabel.text = self._runner.progress.message
        if code is None:
            return
        self._timer.stop()
        runner, self._runner = self._runner, None
        self._resetButton()
        with slicer.util.tryWithErrorDisplay("Could not generate the synthetic case.", waitCursor=True):
            nodes = self.logic.finishSyntheticCase(runner, self._caseFolder)
            slicer.util.setSliceViewerLayers(background=nodes["t1c"], fit=True)
            self.ui.statusLabel.text = f"Loaded the synthetic case from {self._caseFolder} (synthetic, not patient data)."

    def _cancelGeneration(self):
        if self._runner is not None:
            self._timer.stop()
            self._runner.cancel()
            self._runner = None
            self._resetButton()

    def _resetButton(self):
        self.ui.generateButton.text = "Generate and load"
        self.ui.progressBar.setVisible(False)


#
# Logic
#


class GliomaProgressionLogic(ScriptedLoadableModuleLogic):
    """Headless-usable logic: takes values and folders, returns nodes; raises ValueError on bad input."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.loadedNodes = {}

    def getParameterNode(self):
        return GliomaProgressionParameterNode(super().getParameterNode())

    def startSyntheticCase(self, caseFolder, seed=0, size="small", cavity=False):
        """Start generating a synthetic case in a background process; returns the running process."""
        from GliomaProgressionLib.files import check_new_output_folder

        if int(seed) < 0:
            raise ValueError(f"The seed must be zero or positive, got {seed}.")
        if size not in ("small", "full"):
            raise ValueError(f"The case size must be 'small' or 'full', got {size!r}.")
        check_new_output_folder(caseFolder, "The case folder")
        arguments = ["phantom", "--out", str(caseFolder), "--seed", str(int(seed)), "--size", size]
        if cavity:
            arguments.append("--cavity")
        return process.BackgroundProcess(process.gliomaprog_command(*arguments)).start()

    def finishSyntheticCase(self, runner, caseFolder, waitForCompletion=False, name=None):
        """Load a finished case into the scene; with ``waitForCompletion`` block until the process ends."""
        from GliomaProgressionLib.cases import load_case_into_scene

        code = runner.wait() if waitForCompletion else runner.poll()
        if code is None:
            raise ValueError("The synthetic case is still being generated.")
        if code != 0:
            raise ValueError(f"Generating the synthetic case failed: {runner.error_message()}")
        self.loadedNodes = load_case_into_scene(caseFolder, slicer.mrmlScene, name=name or "Synthetic glioma case")
        return self.loadedNodes

    def generateSyntheticCase(self, caseFolder, seed=0, size="small", cavity=False):
        """Generate and load a synthetic case, blocking until done (scripts and tests)."""
        runner = self.startSyntheticCase(caseFolder, seed, size, cavity)
        return self.finishSyntheticCase(runner, caseFolder, waitForCompletion=True)


#
# Test
#


class GliomaProgressionTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_SyntheticCaseLoads()
        self.setUp()
        self.test_BadInputIsRefused()

    def test_SyntheticCaseLoads(self):
        self.delayDisplay("Generating a small synthetic case in a background process")
        folder = os.path.join(tempfile.mkdtemp(prefix="GliomaProgressionTest-"), "case")
        nodes = GliomaProgressionLogic().generateSyntheticCase(folder, seed=3, size="small")

        for key in ("t1c", "flair", "lesion", "dsc", "progression_truth"):
            self.assertIsNotNone(nodes.get(key), key)
        self.assertEqual(nodes["dsc"].GetNumberOfDataNodes(), 60)
        segmentation = nodes["lesion"].GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertEqual(names, {"Necrosis", "Non-enhancing lesion (SNFH)", "Enhancing tumour"})
        # The enhancing segment lies where CE-T1 is bright: a misplaced overlay would not.
        from GliomaProgressionLib import mrml

        labels = mrml.labelmap_from_segmentation(nodes["lesion"], nodes["t1c"], {"Enhancing tumour": 3})
        t1c = slicer.util.arrayFromVolume(nodes["t1c"])
        brain = t1c > 0.3 * t1c.max()
        self.assertGreater(t1c[labels.array == 3].mean(), 1.2 * t1c[brain].mean())
        self.delayDisplay("Synthetic case loaded")

    def test_BadInputIsRefused(self):
        logic = GliomaProgressionLogic()
        with self.assertRaises(ValueError):
            logic.startSyntheticCase(tempfile.mkdtemp(), seed=-1)
        with self.assertRaises(ValueError):
            logic.startSyntheticCase(os.path.join(tempfile.mkdtemp(), "case"), size="huge")
        existing = tempfile.mkdtemp()
        open(os.path.join(existing, "keep.txt"), "w").close()
        with self.assertRaises(ValueError):
            logic.startSyntheticCase(existing)
        self.delayDisplay("Bad input refused")
