import numpy as np

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper

from DSCPerfusionLib.signal import delta_r2s_from_signal, rcbv_trapezoid


#
# DSCPerfusion
#


class DSCPerfusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DSC Perfusion"
        self.parent.categories = ["Neuro-oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["GliomaProgression developers"]
        self.parent.helpText = (
            "Computes cerebral blood volume maps from a dynamic susceptibility contrast (DSC) MRI series loaded "
            "as a volume sequence: the signal is converted to the relaxation-rate change deltaR2*(t) = "
            "-ln(S(t)/S0)/TE with S0 the mean of the chosen pre-bolus frames, and rCBV is its integral over time "
            "(trapezoid rule, seconds). This version does not yet correct contrast leakage or normalise to white "
            "matter: the output is an uncorrected rCBV map, labelled as such."
        )
        self.parent.acknowledgementText = (
            "Follows the consensus DSC processing of dsc-mri-toolbox and the published Boxerman-Schmainda-"
            "Weisskoff method; validation data from the OSIPI DSC challenge. Built on 3D Slicer."
        )


#
# Parameters
#


@parameterNodeWrapper
class DSCPerfusionParameterNode:
    """inputSequence: DSC series (volume sequence, index = time in s); brainMask: optional segmentation;
    echoTimeMs: TE in ms; baselineStart/baselineEnd: pre-bolus frames [start, end) that give S0;
    outputVolume: the rCBV map."""

    inputSequence: slicer.vtkMRMLSequenceNode
    brainMask: slicer.vtkMRMLSegmentationNode
    echoTimeMs: float = 30.0
    baselineStart: int = 2
    baselineEnd: int = 10
    outputVolume: slicer.vtkMRMLScalarVolumeNode


#
# Widget
#


class DSCPerfusionWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        import vtk

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DSCPerfusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DSCPerfusionLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._parameterNode.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._updateApplyButton()

    def cleanup(self):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    def _updateApplyButton(self, *unused):
        ready = self._parameterNode.inputSequence is not None
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Compute rCBV" if ready else "Choose a DSC sequence"

    def onApplyButton(self):
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not compute rCBV.", waitCursor=True):
            output = self.logic.computeRCBV(
                parameters.inputSequence, parameters.echoTimeMs, parameters.baselineStart, parameters.baselineEnd,
                outputVolumeNode=parameters.outputVolume, brainMaskNode=parameters.brainMask)
            parameters.outputVolume = output
            slicer.util.setSliceViewerLayers(foreground=output, foregroundOpacity=0.5)
            self.ui.statusLabel.text = f"'{output.GetName()}' computed (no leakage correction, not normalised)."


#
# Logic
#


class DSCPerfusionLogic(ScriptedLoadableModuleLogic):
    """Takes nodes and values, returns nodes; raises ValueError with a readable message on bad input."""

    def getParameterNode(self):
        return DSCPerfusionParameterNode(super().getParameterNode())

    def computeRCBV(self, sequenceNode, echoTimeMs=30.0, baselineStart=2, baselineEnd=10, outputVolumeNode=None,
                    brainMaskNode=None, progress=None):
        """rCBV (no leakage correction) of a DSC sequence: trapezoid integral of deltaR2*(t) over time (s).

        ``progress(fraction, message)`` is called as the work advances. Returns the output volume node.
        """
        from GliomaProgressionLib import mrml

        report = progress or (lambda fraction, message: None)
        if sequenceNode is None:
            raise ValueError("Choose the DSC series (a volume sequence).")
        report(0.0, "Reading the DSC series")
        series, times = mrml.volume_from_sequence(sequenceNode)
        frames = series.array.shape[0]
        if frames < 10:
            raise ValueError(f"The DSC series has {frames} frames; at least 10 are needed.")
        if not 0 <= baselineStart < baselineEnd <= frames:
            raise ValueError(f"The baseline frames [{baselineStart}, {baselineEnd}) are not within the "
                             f"{frames} frames of the series.")
        if not 1.0 <= echoTimeMs <= 200.0:
            raise ValueError(f"The echo time must be between 1 and 200 ms, got {echoTimeMs}.")
        report(0.3, "Computing deltaR2*")
        deltaR2s = delta_r2s_from_signal(series.array.astype(np.float32), echoTimeMs / 1000.0,
                                         slice(int(baselineStart), int(baselineEnd)))
        report(0.7, "Integrating")
        rcbv = rcbv_trapezoid(deltaR2s, times).astype(np.float32)
        if brainMaskNode is not None:
            brain = mrml.labelmap_from_segmentation(brainMaskNode, sequenceNode.GetNthDataNode(0)).array > 0
            if not brain.any():
                raise ValueError("The brain mask does not overlap the DSC series.")
            rcbv[~brain] = 0
        volume = type(series)(rcbv, series.ijk_to_ras)
        if outputVolumeNode is None:
            outputVolumeNode = mrml.node_from_volume(volume, f"{sequenceNode.GetName()} rCBV (uncorrected)")
        else:
            mrml.update_node_from_volume(outputVolumeNode, volume)
            outputVolumeNode.CreateDefaultDisplayNodes()
        self._showAsColourMap(outputVolumeNode, rcbv)
        report(1.0, "rCBV ready")
        return outputVolumeNode

    @staticmethod
    def _showAsColourMap(node, values):
        display = node.GetDisplayNode()
        if display is None:
            return
        positive = values[values > 0]
        upper = float(np.percentile(positive, 99)) if positive.size else 1.0
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, upper)
        colour = slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
        if colour is not None:
            display.SetAndObserveColorNodeID(colour.GetID())


#
# Test
#


class DSCPerfusionTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_RCBVFollowsTrueCBV()
        self.setUp()
        self.test_BadInputIsRefused()

    def _syntheticSequence(self):
        from DSCPerfusionLib.simulation import simulate_dsc
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.geometry import Volume

        # Three tissues side by side on an oblique 1.8 x 1.8 x 5 mm grid: grey matter, white matter and a
        # voxel block with three times white matter's CBV.
        cbv = np.zeros((4, 6, 9), np.float32)
        cbf = np.zeros_like(cbv)
        cbv[:, :, 0:3], cbf[:, :, 0:3] = 4.0, 60.0
        cbv[:, :, 3:6], cbf[:, :, 3:6] = 2.0, 22.0
        cbv[:, :, 6:9], cbf[:, :, 6:9] = 6.0, 66.0
        times = np.arange(60) * 1.5
        simulated = simulate_dsc(times, cbv, cbf, np.zeros_like(cbv), np.full_like(cbv, 900.0), 0.030)
        angle = np.deg2rad(12)
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                     [0, 0, 1]]) @ np.diag([1.8, 1.8, 5.0])
        sequence, _ = mrml.sequence_from_volume(Volume(simulated.signal, ijkToRas), times, "DSC")
        return sequence, cbv

    def test_RCBVFollowsTrueCBV(self):
        sequence, cbv = self._syntheticSequence()
        output = DSCPerfusionLogic().computeRCBV(sequence, 30.0, 1, 9)
        rcbv = slicer.util.arrayFromVolume(output)
        white = rcbv[:, :, 3:6].mean()
        self.assertAlmostEqual(rcbv[:, :, 0:3].mean() / white, 2.0, delta=0.04)
        self.assertAlmostEqual(rcbv[:, :, 6:9].mean() / white, 3.0, delta=0.06)
        self.delayDisplay("rCBV ratios match the simulated CBV ratios")

    def test_BadInputIsRefused(self):
        sequence, _ = self._syntheticSequence()
        logic = DSCPerfusionLogic()
        for arguments in ((None,), (sequence, 30.0, 9, 3), (sequence, 30.0, 0, 99), (sequence, 0.03, 1, 9)):
            with self.assertRaises(ValueError):
                logic.computeRCBV(*arguments)
        self.delayDisplay("Bad input refused")
