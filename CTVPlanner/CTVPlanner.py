import numpy as np

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper

from CTVPlannerLib.margins import grow_mm

PROPOSALS_NAME = "CTV proposals"
CTV_COLOUR = (0.95, 0.75, 0.15)


#
# CTVPlanner
#


class CTVPlanner(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CTV Planner"
        self.parent.categories = ["Neuro-oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["GliomaProgression developers"]
        self.parent.helpText = (
            "Proposes radiotherapy clinical target volumes for glioblastoma from the lesion segmentation: "
            "the lesion grown by an exact Euclidean margin in millimetres (anisotropic voxels honoured), "
            "clipped to the brain. Each proposal is a segment in the 'CTV proposals' segmentation, to be "
            "reviewed and edited with the Segment Editor; an edited proposal is never replaced without asking. "
            "Proposals are suggestions for a radiation oncologist, not a treatment plan."
        )
        self.parent.acknowledgementText = (
            "Target definitions follow RTOG/NRG, EORTC and ESTRO-EANO 2023 guidance and Tran 2025 "
            "(deep-learning CTV from predicted progression). Built on 3D Slicer."
        )


#
# Parameters
#


@parameterNodeWrapper
class CTVPlannerParameterNode:
    """lesion: segmentation whose segments form the GTV; referenceVolume: the grid of the margin computation;
    brainMask: optional segmentation the CTV is clipped to; marginMm: CTV margin in mm."""

    lesion: slicer.vtkMRMLSegmentationNode
    referenceVolume: slicer.vtkMRMLScalarVolumeNode
    brainMask: slicer.vtkMRMLSegmentationNode
    marginMm: float = 20.0


#
# Widget
#


class CTVPlannerWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        import vtk

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTVPlanner.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTVPlannerLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._parameterNode.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._updateApplyButton()

    def cleanup(self):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    def _updateApplyButton(self, *unused):
        parameters = self._parameterNode
        ready = bool(parameters.lesion and parameters.referenceVolume)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Create the CTV proposal" if ready else "Choose a lesion and a reference volume"

    def onApplyButton(self):
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not create the CTV proposal.", waitCursor=True):
            name = self.logic.ctvSegmentName(parameters.marginMm)
            overwrite = False
            proposals = self.logic.findProposals()
            if proposals and proposals.GetSegmentation().GetSegmentIdBySegmentName(name):
                overwrite = slicer.util.confirmYesNoDisplay(
                    f"'{name}' already exists and may have been edited. Replace it?")
                if not overwrite:
                    return
            segmentation, segmentId = self.logic.createMarginCTV(
                parameters.lesion, parameters.referenceVolume, parameters.marginMm, parameters.brainMask,
                overwrite=overwrite)
            volume = segmentation.GetSegmentation().GetSegment(segmentId)
            self.ui.statusLabel.text = f"Created '{volume.GetName()}' in '{segmentation.GetName()}'."


#
# Logic
#


class CTVPlannerLogic(ScriptedLoadableModuleLogic):
    """Takes nodes and values, returns nodes; raises ValueError with a readable message on bad input."""

    def getParameterNode(self):
        return CTVPlannerParameterNode(super().getParameterNode())

    @staticmethod
    def ctvSegmentName(marginMm):
        return f"CTV lesion + {marginMm:g} mm"

    def findProposals(self):
        return slicer.mrmlScene.GetFirstNode(PROPOSALS_NAME, "vtkMRMLSegmentationNode")

    def createMarginCTV(self, lesionNode, referenceVolumeNode, marginMm=20.0, brainMaskNode=None, overwrite=False):
        """Grow the union of the lesion's segments by ``marginMm`` on the reference grid, clip it to the brain
        mask (if given) and store it as a segment of the 'CTV proposals' segmentation. An existing segment of
        the same name (possibly edited by the user) is replaced only with ``overwrite=True``.
        Returns (segmentation node, segment ID)."""
        from GliomaProgressionLib import mrml

        if lesionNode is None or lesionNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError("The lesion segmentation is missing or has no segments.")
        if referenceVolumeNode is None:
            raise ValueError("A reference volume is needed: the CTV is computed on its voxel grid.")
        if not np.isfinite(marginMm) or marginMm < 0 or marginMm > 100:
            raise ValueError(f"The margin must be between 0 and 100 mm, got {marginMm}.")
        name = self.ctvSegmentName(marginMm)
        proposals = self.findProposals()
        if proposals and proposals.GetSegmentation().GetSegmentIdBySegmentName(name) and not overwrite:
            raise ValueError(f"'{name}' already exists in '{PROPOSALS_NAME}' and may have been edited; "
                             "confirm to replace it.")

        reference = mrml.volume_from_node(referenceVolumeNode)
        lesion = mrml.labelmap_from_segmentation(lesionNode, referenceVolumeNode).array > 0
        if not lesion.any():
            raise ValueError("The lesion segmentation does not overlap the reference volume.")
        brain = None
        if brainMaskNode is not None:
            brain = mrml.labelmap_from_segmentation(brainMaskNode, referenceVolumeNode).array > 0
            if not (brain & lesion).any():
                raise ValueError("The brain mask does not overlap the lesion.")
        ctv = grow_mm(lesion, reference.spacing[::-1], marginMm, within=brain)
        return self._storeProposal(ctv, reference, name, referenceVolumeNode)

    def _storeProposal(self, ctv, reference, name, referenceVolumeNode):
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.geometry import Volume

        proposals = self.findProposals()
        if proposals is None:
            proposals = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", PROPOSALS_NAME)
            proposals.CreateDefaultDisplayNodes()
            proposals.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        existing = proposals.GetSegmentation().GetSegmentIdBySegmentName(name)
        if existing:
            proposals.GetSegmentation().RemoveSegment(existing)
        # Built in a scratch segmentation and copied over, so the lesion's own segments are never touched.
        scratch = mrml.segmentation_from_labelmap(Volume(ctv.astype(np.uint8), reference.ijk_to_ras),
                                                  {1: (name, CTV_COLOUR)}, "CTV scratch", slicer.mrmlScene)
        try:
            segmentId = scratch.GetSegmentation().GetNthSegmentID(0)
            proposals.GetSegmentation().CopySegmentFromSegmentation(scratch.GetSegmentation(), segmentId)
        finally:
            slicer.mrmlScene.RemoveNode(scratch)
        return proposals, proposals.GetSegmentation().GetSegmentIdBySegmentName(name)


#
# Test
#


class CTVPlannerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_MarginOnAnisotropicGrid()
        self.setUp()
        self.test_EditedProposalIsNotOverwritten()

    def _sphereCase(self):
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.geometry import Volume

        # 1 x 1 x 3 mm voxels, like a thick-slice FLAIR: a 10 mm margin is 10 voxels in-plane but ~3 slices.
        ijkToRas = np.diag([1.0, 1.0, 3.0, 1.0])
        shape = (30, 80, 80)
        k, j, i = np.indices(shape)
        lesion = ((i - 40) ** 2 + (j - 40) ** 2 + ((k - 15) * 3) ** 2) <= 5 ** 2
        reference = mrml.node_from_volume(Volume(np.zeros(shape, np.int16), ijkToRas), "reference")
        lesionNode = mrml.segmentation_from_labelmap(Volume(lesion.astype(np.uint8), ijkToRas),
                                                     {1: ("Lesion", (1, 0, 0))}, "lesion")
        return reference, lesionNode, lesion

    def test_MarginOnAnisotropicGrid(self):
        from GliomaProgressionLib import mrml

        reference, lesionNode, lesion = self._sphereCase()
        logic = CTVPlannerLogic()
        proposals, segmentId = logic.createMarginCTV(lesionNode, reference, 10.0)
        ctv = mrml.labelmap_from_segmentation(proposals, reference, {logic.ctvSegmentName(10.0): 1}).array > 0
        self.assertTrue(ctv[lesion].all(), "the CTV contains the lesion")
        self.assertTrue(ctv[15, 40, 40 + 15] and not ctv[15, 40, 40 + 16], "5 + 10 mm along i")
        # The lesion reaches one 3 mm slice above its centre; 10 mm more is 3 slices (9 mm), not 4 (12 mm).
        self.assertTrue(ctv[15 + 4, 40, 40] and not ctv[15 + 5, 40, 40], "along k in 3 mm slices")
        self.delayDisplay("Margin honours anisotropic voxels")

    def test_EditedProposalIsNotOverwritten(self):
        reference, lesionNode, _ = self._sphereCase()
        logic = CTVPlannerLogic()
        logic.createMarginCTV(lesionNode, reference, 10.0)
        with self.assertRaises(ValueError):
            logic.createMarginCTV(lesionNode, reference, 10.0)
        proposals, _ = logic.createMarginCTV(lesionNode, reference, 10.0, overwrite=True)
        self.assertEqual(proposals.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(lesionNode.GetSegmentation().GetNumberOfSegments(), 1, "the lesion is left untouched")
        with self.assertRaises(ValueError):
            logic.createMarginCTV(lesionNode, reference, -1.0)
        self.delayDisplay("Existing proposal kept unless replacing is confirmed")
