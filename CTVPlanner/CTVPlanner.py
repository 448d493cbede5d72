import hashlib
import os
import re
from typing import Annotated

import numpy as np

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from CTVPlannerLib import terminology
from CTVPlannerLib.lesion import LESION_SEGMENTS, brats_class
from CTVPlannerLib.schemes import MARGIN_RANGE_MM, SCHEMES, TARGET_COLOURS, Margins
from GliomaProgressionLib.mrml import PackageInstalling, ParameterNodeLifecycle

Margin = Annotated[float, WithinRange(*MARGIN_RANGE_MM)]

PROPOSALS_NAME = "CTV proposals"
TABLE_NAME = "CTV comparison"
# Hash of a proposal's mask as created: tells an edited proposal from an untouched one.
FINGERPRINT_TAG = "CTVPlanner.Fingerprint"
KIND_TAG = "CTVPlanner.Kind"
# Python packages (PyPI names, versions in the extension's requirements.txt) each action needs beyond Slicer.
PACKAGES_FOR_GEODESIC_MARGINS = ("scikit-fmm",)
PACKAGES_FOR_DICOM_EXPORT = ("scikit-image", "highdicom")


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
            "Proposes radiotherapy target volumes for glioblastoma from a lesion segmentation (BraTS classes: "
            "necrosis, SNFH/oedema, enhancing tumour, resection cavity) and a brain mask: RTOG/NRG CTV46 and CTV60, "
            "EORTC, ESTRO-EANO 2023 (barrier-aware), an AI CTV and a risk-adapted boost from a predicted "
            "progression, optional PTVs. Margins are exact in mm on anisotropic grids, Euclidean or measured "
            "through brain tissue around barriers (falx, ventricles; automatic midline model when none is given). "
            "Each target is a segment of the 'CTV proposals' segmentation, to be reviewed and edited with the "
            "Segment Editor (overwrite mode 'none'); an edited proposal is never replaced without asking. A table "
            "compares targets (volume; sensitivity, specificity, Dice, HD95, Tversky, PCC and recurrence pattern "
            "against a follow-up recurrence). Export: DICOM RT Structure Set with the referenced MR series, or DICOM "
            "SEG. Proposals are suggestions for a radiation oncologist, not a treatment plan."
        )
        self.parent.acknowledgementText = (
            "Target definitions follow RTOG/NRG, EORTC and ESTRO-EANO 2023 guidance and Tran 2025 "
            "(deep-learning CTV from predicted progression). Built on 3D Slicer, scikit-fmm, pydicom and highdicom."
        )
        if hasattr(slicer, "app"):  # the application only: slicer-core has no application to start up
            slicer.app.connect("startupCompleted()", loadExtensionTerminology)


def loadExtensionTerminology():
    """Slicer's Terminologies module learns the extension's codes (CTV/PTV/GTV, lesion types) at startup."""
    from GliomaProgressionLib import mrml

    mrml.load_extension_terminology(terminology.TERMINOLOGY_FILE)


#
# Parameters
#


@parameterNodeWrapper
class CTVPlannerParameterNode:
    """Inputs (segmentations unless noted), the schemes to build and their margins (mm)."""

    lesion: slicer.vtkMRMLSegmentationNode
    referenceVolume: slicer.vtkMRMLScalarVolumeNode
    brainMask: slicer.vtkMRMLSegmentationNode
    progression: slicer.vtkMRMLSegmentationNode
    recurrence: slicer.vtkMRMLSegmentationNode
    organsAtRisk: slicer.vtkMRMLSegmentationNode
    barriers: slicer.vtkMRMLSegmentationNode
    rtog: bool = True
    eortc: bool = True
    estro: bool = True
    ai: bool = False
    boost: bool = False
    geodesic: bool = False
    rtogMarginMm: Margin = Margins.rtog_mm
    eortcMarginMm: Margin = Margins.eortc_mm
    estroMarginMm: Margin = Margins.estro_mm
    aiMarginMm: Margin = Margins.ai_mm
    boostMarginMm: Margin = Margins.boost_mm
    ptvMarginMm: Margin = Margins.ptv_mm
    oarMarginMm: Margin = Margins.oar_mm


#
# Widget
#


class CTVPlannerWidget(PackageInstalling, ParameterNodeLifecycle, ScriptedLoadableModuleWidget,
                       VTKObservationMixin):
    requester = "CTV Planner"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTVPlanner.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTVPlannerLogic()
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.compareButton.clicked.connect(self.onCompareButton)
        self.ui.editButton.clicked.connect(self.onEditButton)
        self.ui.exportRtStructButton.clicked.connect(lambda: self.onExport(("rtstruct",)))
        self.ui.exportSegButton.clicked.connect(lambda: self.onExport(("seg",)))
        self.observeScene()

    def updateGui(self):
        p = self._parameterNode
        idle = not self.installing
        ready = p is not None and bool(p.lesion and p.referenceVolume and p.brainMask) and idle
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = ("Create the CTV proposals" if ready
                                       else "Choose a lesion, a reference volume and a brain mask")
        hasProposals = p is not None and self.logic.findProposals() is not None
        for button in (self.ui.compareButton, self.ui.editButton, self.ui.exportRtStructButton,
                       self.ui.exportSegButton):
            button.enabled = hasProposals and bool(p.referenceVolume) and idle

    def onApplyButton(self):
        try:
            with slicer.util.tryWithErrorDisplay("Could not create the CTV proposals.", waitCursor=True):
                self._createProposals(self._parameterNode)
        finally:
            self.updateGui()  # also after an error: the buttons follow the scene

    def _createProposals(self, p):
        if p.geodesic and not self.ensurePackages(PACKAGES_FOR_GEODESIC_MARGINS):
            return
        kwargs = dict(progressionNode=p.progression, recurrenceNode=p.recurrence, oarNode=p.organsAtRisk,
                      barrierNode=p.barriers, margins=self.logic.marginsFromParameters(p),
                      geodesic=p.geodesic)
        schemes = [s for s in SCHEMES if getattr(p, s)]
        conflicts = self.logic.conflictingProposals(p.lesion, p.referenceVolume, p.brainMask, schemes, **kwargs)
        choice = {}
        if conflicts:
            answer = slicer.util.confirmYesNoDisplay(
                "These proposals were edited (or not made here): " + ", ".join(conflicts)
                + ".\n\nYes: replace them. No: keep them and add the new proposals beside them.")
            choice = {"overwrite": True} if answer else {"besideExisting": True}
        result = self.logic.createProposals(p.lesion, p.referenceVolume, p.brainMask, schemes, **kwargs, **choice)
        self.ui.comparisonTableView.setMRMLTableNode(result["table"])
        self.ui.statusLabel.text = (f"Created {len(result['segmentIds'])} proposals in '{PROPOSALS_NAME}'. "
                                    + " ".join(result["notes"]))

    def onCompareButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not compare the proposals.", waitCursor=True):
            table = self.logic.compareProposals(self.logic.findProposals(), p.referenceVolume, p.brainMask,
                                                p.recurrence)
            self.ui.comparisonTableView.setMRMLTableNode(table)

    def onEditButton(self):
        """The Segment Editor on the proposals, with overwrite mode 'none' so editing one target never cuts
        another (nor anything else)."""
        proposals = self.logic.findProposals()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(proposals)
        editor.setSourceVolumeNode(self._parameterNode.referenceVolume)
        self.logic.configureSegmentEditorNode(editor.mrmlSegmentEditorNode())

    def onExport(self, formats):
        p = self._parameterNode
        folder = self.ui.exportDirectoryButton.directory
        with slicer.util.tryWithErrorDisplay("Could not export the proposals.", waitCursor=True):
            if not self.ensurePackages(PACKAGES_FOR_DICOM_EXPORT):
                return
            out = os.path.join(folder, f"{'RTSTRUCT' if 'rtstruct' in formats else 'SEG'} CTV proposals")
            out = self.logic.uniqueFolder(out)
            written = self.logic.exportDicom(out, self.logic.findProposals(), p.referenceVolume, formats=formats)
            self.ui.statusLabel.text = f"Wrote {sum(len(v) for v in written.values())} DICOM files to {out}."


#
# Logic
#


class CTVPlannerLogic(ScriptedLoadableModuleLogic):
    """Takes nodes and values, returns nodes; raises ValueError with a readable message on bad input."""

    def getParameterNode(self):
        return CTVPlannerParameterNode(super().getParameterNode())

    # --- helpers ------------------------------------------------------------------------------------------

    requirementsFile = None  # None: the extension's Resources/requirements.txt (tests give another)

    @staticmethod
    def marginsFromParameters(parameters):
        from CTVPlannerLib.schemes import Margins

        return Margins(parameters.rtogMarginMm, parameters.eortcMarginMm, parameters.estroMarginMm,
                       parameters.aiMarginMm, parameters.boostMarginMm, parameters.ptvMarginMm,
                       parameters.oarMarginMm)

    @staticmethod
    def uniqueFolder(path):
        candidate, n = path, 2
        while os.path.exists(candidate):
            candidate, n = f"{path} ({n})", n + 1
        return candidate

    def findProposals(self):
        return slicer.mrmlScene.GetFirstNode(PROPOSALS_NAME, "vtkMRMLSegmentationNode")

    @staticmethod
    def _segmentIds(segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    def _maskOf(self, segmentationNode, referenceVolumeNode, segmentIds=None):
        """Union of segments (all by default) as a bool array on the reference grid."""
        from GliomaProgressionLib import mrml

        segmentation = segmentationNode.GetSegmentation()
        ids = self._segmentIds(segmentationNode) if segmentIds is None else list(segmentIds)
        names = {segmentation.GetSegment(i).GetName(): 1 for i in ids if segmentation.GetSegment(i)}
        if not names:
            return np.zeros(mrml.volume_from_node(referenceVolumeNode).array.shape, bool)
        return mrml.labelmap_from_segmentation(segmentationNode, referenceVolumeNode, names).array > 0

    @staticmethod
    def bratsClass(segmentName):
        """BraTS label (1-4) of a lesion segment name, or None (the rule shared with Glioma Progression)."""
        return brats_class(segmentName)

    def lesionLabels(self, lesionNode, referenceVolumeNode, notes=None):
        """The lesion as BraTS labels on the reference grid (SNFH first, so tumour classes win where segments
        overlap). Segments are classified by name, else by their label value 1-4 (said in ``notes``); segments
        whose name mentions progression are left out (they are the prediction)."""
        if lesionNode is None or lesionNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError("The lesion segmentation is missing or has no segments.")
        byClass = {}
        for segmentId in self._segmentIds(lesionNode):
            segment = lesionNode.GetSegmentation().GetSegment(segmentId)
            name = segment.GetName()
            if "progression" in name.lower():
                continue
            label = self.bratsClass(name)
            if label is None and segment.GetLabelValue() in (1, 2, 3, 4):
                label = segment.GetLabelValue()
                if notes is not None:
                    notes.append(f"Lesion segment '{name}' taken as BraTS label {label} from its label value.")
            if label is None:
                raise ValueError(f"The lesion segment '{name}' is not a BraTS class: name segments necrosis, SNFH "
                                 "(oedema / non-enhancing), enhancing tumour and resection cavity, or 1-4.")
            byClass.setdefault(label, []).append(segmentId)
        if not byClass:
            raise ValueError("The lesion segmentation has no necrosis, SNFH, enhancing or cavity segment.")
        labels = None
        for label in (2, 1, 3, 4):
            if label in byClass:
                mask = self._maskOf(lesionNode, referenceVolumeNode, byClass[label])
                labels = np.zeros(mask.shape, np.uint8) if labels is None else labels
                labels[mask] = label
        if not labels.any():
            raise ValueError("The lesion segmentation is empty on the reference volume's grid.")
        return labels

    def _progressionMask(self, progressionNode, referenceVolumeNode, segmentIds=None):
        """Segments named '...progression...' if there are any, else every segment (when no IDs are given)."""
        if segmentIds is None:
            ids = self._segmentIds(progressionNode)
            named = [i for i in ids if "progression" in progressionNode.GetSegmentation().GetSegment(i)
                     .GetName().lower()]
            segmentIds = named or ids
        return self._maskOf(progressionNode, referenceVolumeNode, segmentIds)

    # --- proposals ----------------------------------------------------------------------------------------

    def computeTargets(self, lesionNode, referenceVolumeNode, brainMaskNode, schemes=("rtog", "eortc", "estro"),
                       progressionNode=None, progressionSegmentIds=None, oarNode=None, barrierNode=None,
                       margins=None, geodesic=False, progress=None):
        """The targets (``CTVPlannerLib.schemes.Plan``) of the chosen schemes on the reference grid."""
        from GliomaProgressionLib import mrml

        from CTVPlannerLib.schemes import Margins, PlanningInputs, plan_targets

        if referenceVolumeNode is None:
            raise ValueError("A reference volume is needed: the targets are computed on its voxel grid.")
        if brainMaskNode is None or brainMaskNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError("A brain mask segmentation is needed: every target is clipped to the brain.")
        reference = mrml.volume_from_node(referenceVolumeNode)
        notes = []
        labels = self.lesionLabels(lesionNode, referenceVolumeNode, notes)
        oars = {}
        if oarNode is not None:
            for segmentId in self._segmentIds(oarNode):
                oars[oarNode.GetSegmentation().GetSegment(segmentId).GetName()] = self._maskOf(
                    oarNode, referenceVolumeNode, [segmentId])
        inputs = PlanningInputs(
            lesion_labels=labels,
            brain=self._maskOf(brainMaskNode, referenceVolumeNode), ijk_to_ras=reference.ijk_to_ras,
            progression=None if progressionNode is None else self._progressionMask(
                progressionNode, referenceVolumeNode, progressionSegmentIds),
            oars=oars, barriers=None if barrierNode is None else self._maskOf(barrierNode, referenceVolumeNode),
            image=reference.array.astype(np.float32))
        plan = plan_targets(inputs, schemes, margins or Margins(), geodesic, progress)
        plan.notes[:0] = notes
        return plan

    @staticmethod
    def segmentTag(segment, name, default=""):
        import vtk

        value = vtk.reference("")
        return str(value) if segment.GetTag(name, value) else default

    @staticmethod
    def _fingerprint(mask):
        return hashlib.sha1(np.packbits(np.asarray(mask, bool)).tobytes()).hexdigest()

    def _isUntouched(self, proposals, segmentId, referenceVolumeNode):
        segment = proposals.GetSegmentation().GetSegment(segmentId)
        stored = self.segmentTag(segment, FINGERPRINT_TAG)
        return bool(stored) and stored == self._fingerprint(self._maskOf(proposals, referenceVolumeNode,
                                                                         [segmentId]))

    def conflictingProposals(self, lesionNode, referenceVolumeNode, brainMaskNode, schemes, **kwargs):
        """Names of existing proposals a new Apply would replace although they were edited (or not made here)."""
        proposals = self.findProposals()
        if proposals is None:
            return []
        from CTVPlannerLib.schemes import Margins

        names = self._plannedNames(schemes, kwargs.get("margins") or Margins(), kwargs.get("geodesic", False))
        conflicts = []
        for name in names:
            segmentId = proposals.GetSegmentation().GetSegmentIdBySegmentName(name)
            if segmentId and not self._isUntouched(proposals, segmentId, referenceVolumeNode):
                conflicts.append(name)
        return conflicts

    @staticmethod
    def _plannedNames(schemes, margins, geodesic):
        """Segment names Apply would create (computed on a one-voxel grid: names depend on parameters only)."""
        from CTVPlannerLib.schemes import PlanningInputs, plan_targets

        labels = np.zeros((3, 3, 3), np.uint8)
        labels[1, 1, 1] = 3
        tiny = PlanningInputs(labels, np.ones((3, 3, 3), bool), np.eye(4), progression=labels > 0,
                              barriers=np.zeros((3, 3, 3), bool))
        return [t.name for t in plan_targets(tiny, schemes, margins, geodesic).targets]

    def createProposals(self, lesionNode, referenceVolumeNode, brainMaskNode, schemes=("rtog", "eortc", "estro"),
                        progressionNode=None, progressionSegmentIds=None, recurrenceNode=None, oarNode=None,
                        barrierNode=None, margins=None, geodesic=False, overwrite=False, besideExisting=False,
                        progress=None):
        """Create one segment per target in the 'CTV proposals' segmentation and the comparison table.

        An existing proposal of the same name is replaced when it is untouched since it was created; an edited
        one (or one not made by this module) raises ValueError unless ``overwrite`` (replace it) or
        ``besideExisting`` (add the new one beside it, with a numbered name). The lesion segmentation is never
        modified. Returns a dict: proposals node, segment IDs, table node, plan notes.
        """
        plan = self.computeTargets(lesionNode, referenceVolumeNode, brainMaskNode, schemes, progressionNode,
                                   progressionSegmentIds, oarNode, barrierNode, margins, geodesic, progress)
        proposals = self._proposalsNode(referenceVolumeNode)
        names = self._resolveNames(proposals, plan.targets, referenceVolumeNode, overwrite, besideExisting)
        segmentIds = [self._storeTarget(proposals, target, name, referenceVolumeNode)
                      for target, name in zip(plan.targets, names)]
        table = self.compareProposals(proposals, referenceVolumeNode, brainMaskNode, recurrenceNode)
        return {"proposals": proposals, "segmentIds": segmentIds, "table": table, "notes": plan.notes,
                "barriers": plan.barriers}

    def _resolveNames(self, proposals, targets, referenceVolumeNode, overwrite, besideExisting):
        segmentation = proposals.GetSegmentation()
        names, conflicts = [], []
        for target in targets:
            name = target.name
            existing = segmentation.GetSegmentIdBySegmentName(name)
            if existing and not overwrite and not self._isUntouched(proposals, existing, referenceVolumeNode):
                if besideExisting:
                    n = 2
                    while segmentation.GetSegmentIdBySegmentName(f"{target.name} ({n})"):
                        n += 1
                    name = f"{target.name} ({n})"
                else:
                    conflicts.append(name)
            names.append(name)
        if conflicts:
            raise ValueError(f"{', '.join(repr(c) for c in conflicts)} already exist in '{PROPOSALS_NAME}' and were "
                             "edited (or not made here); confirm to replace them, or add the new proposals beside "
                             "them.")
        return names

    def _proposalsNode(self, referenceVolumeNode):
        proposals = self.findProposals()
        if proposals is None:
            proposals = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", PROPOSALS_NAME)
            proposals.CreateDefaultDisplayNodes()
            proposals.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            self._placeInStudy(proposals, referenceVolumeNode)
        return proposals

    @staticmethod
    def _placeInStudy(node, referenceVolumeNode):
        """Put ``node`` beside the reference volume in the subject hierarchy (under its study)."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        if hierarchy is None:
            return
        referenceItem = hierarchy.GetItemByDataNode(referenceVolumeNode)
        parent = hierarchy.GetItemParent(referenceItem) if referenceItem else 0
        item = hierarchy.GetItemByDataNode(node)
        if parent and item:
            hierarchy.SetItemParent(item, parent)

    def _storeTarget(self, proposals, target, name, referenceVolumeNode):
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.case.geometry import Volume

        segmentation = proposals.GetSegmentation()
        existing = segmentation.GetSegmentIdBySegmentName(name)
        if existing:
            segmentation.RemoveSegment(existing)
        key = target.key.replace("ptv_", "")
        colour = TARGET_COLOURS.get(key, (0.9, 0.9, 0.5))
        if target.kind == "PTV":
            colour = tuple(0.5 + 0.5 * c for c in colour)
        reference = mrml.volume_from_node(referenceVolumeNode)
        # Built in a scratch segmentation and copied over: neither the lesion nor other proposals are touched.
        scratch = mrml.segmentation_from_labelmap(Volume(target.mask.astype(np.uint8), reference.ijk_to_ras),
                                                  {1: (name, colour)}, "CTV scratch", slicer.mrmlScene)
        try:
            if scratch.GetSegmentation().GetNumberOfSegments() == 0:  # an empty target: keep an empty segment
                segmentId = segmentation.AddEmptySegment("", name, colour)
            else:
                source = scratch.GetSegmentation().GetNthSegmentID(0)
                segmentation.CopySegmentFromSegmentation(scratch.GetSegmentation(), source)
                segmentId = segmentation.GetSegmentIdBySegmentName(name)
        finally:
            slicer.mrmlScene.RemoveNode(scratch)
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag(FINGERPRINT_TAG, self._fingerprint(target.mask))
        segment.SetTag(KIND_TAG, target.kind)
        segment.SetTag("CTVPlanner.Description", target.description)
        segment.SetTerminology(terminology.target_entry(target.kind))
        return segmentId

    @staticmethod
    def configureSegmentEditorNode(segmentEditorNode):
        """Overwrite mode 'none': painting one proposal never erases another segment."""
        segmentEditorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
        return segmentEditorNode

    # --- comparison ---------------------------------------------------------------------------------------

    def compareProposals(self, proposalsNode, referenceVolumeNode, brainMaskNode, recurrenceNode=None):
        """A table of every proposal as it is now (edits included): volume, and the metrics against the
        recurrence when one is given. Replaces the previous comparison table."""
        from GliomaProgressionLib import mrml

        from CTVPlannerLib.grid import spacing_kji, voxel_volume_ml
        from CTVPlannerLib.metrics import target_metrics

        if proposalsNode is None:
            raise ValueError(f"There are no proposals yet ('{PROPOSALS_NAME}' is missing): press Apply first.")
        grid = mrml.volume_from_node(referenceVolumeNode)
        spacing, voxelMl = spacing_kji(grid.ijk_to_ras), voxel_volume_ml(grid.ijk_to_ras)
        brain = self._maskOf(brainMaskNode, referenceVolumeNode) if brainMaskNode is not None else None
        recurrence = self._maskOf(recurrenceNode, referenceVolumeNode) if recurrenceNode is not None else None
        if recurrence is not None and brain is None:
            raise ValueError("The metrics against the recurrence need the brain mask.")
        columns = {"Target": [], "Volume": []}
        for segmentId in self._segmentIds(proposalsNode):
            mask = self._maskOf(proposalsNode, referenceVolumeNode, [segmentId])
            columns["Target"].append(proposalsNode.GetSegmentation().GetSegment(segmentId).GetName())
            columns["Volume"].append(float(mask.sum()) * voxelMl)
            if recurrence is not None:
                values = target_metrics(mask, recurrence, brain, spacing, voxelMl)
                for column, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                    ("Dice", "dice"), ("HD95", "hd95_mm"), ("Tversky", "tversky"), ("PCC", "pcc"),
                                    ("Pattern", "pattern")):
                    columns.setdefault(column, []).append(values[key])
        old = slicer.mrmlScene.GetFirstNode(TABLE_NAME, "vtkMRMLTableNode")
        if old is not None:
            slicer.mrmlScene.RemoveNode(old)
        table = mrml.table_from_columns(columns, TABLE_NAME, slicer.mrmlScene, {"Volume": "mL", "HD95": "mm"})
        self._placeInStudy(table, referenceVolumeNode)
        return table

    # --- export -------------------------------------------------------------------------------------------

    def _sourceSeries(self, referenceVolumeNode):
        """The reference volume's DICOM instances (pydicom datasets) when it was loaded from DICOM, else None."""
        uids = (referenceVolumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        import pydicom

        files = [database.fileForInstance(uid) for uid in uids]
        if not all(files):
            return None
        return [pydicom.dcmread(f) for f in files]

    def _patientStudy(self, referenceVolumeNode):
        from CTVPlannerLib.dicom_export import PatientStudy

        study = PatientStudy()
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        if hierarchy is not None:
            referenceItem = hierarchy.GetItemByDataNode(referenceVolumeNode)
            studyItem = hierarchy.GetItemParent(referenceItem) if referenceItem else 0
            patientItem = hierarchy.GetItemParent(studyItem) if studyItem else 0
            if patientItem and patientItem != hierarchy.GetSceneItemID():
                study.patient_name = hierarchy.GetItemName(patientItem) + "^"
                study.patient_id = re.sub(r"[^A-Za-z0-9_.-]", "_", hierarchy.GetItemName(patientItem))[:64]
                study.study_description = hierarchy.GetItemName(studyItem)[:64]
        return study

    def exportDicom(self, folder, proposalsNode, referenceVolumeNode, segmentIds=None, formats=("rtstruct", "seg")):
        """Write the proposals (all, or ``segmentIds``) to the new folder ``folder``: RTSTRUCT.dcm and/or SEG.dcm,
        with the reference volume as an MR series in MR/ when it has no DICOM source. All or nothing.
        Returns the written paths by kind."""
        from GliomaProgressionLib import mrml

        from CTVPlannerLib.dicom_export import Structure, export_dicom

        if proposalsNode is None or proposalsNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError("There are no proposals to export.")
        if referenceVolumeNode is None:
            raise ValueError("A reference volume is needed: the structures are exported on its grid.")
        reference = mrml.volume_from_node(referenceVolumeNode)
        structures = []
        for segmentId in segmentIds or self._segmentIds(proposalsNode):
            segment = proposalsNode.GetSegmentation().GetSegment(segmentId)
            if segment is None:
                raise ValueError(f"The proposals have no segment '{segmentId}'.")
            kind = self.segmentTag(segment, KIND_TAG, "CTV")
            structures.append(Structure(segment.GetName(), self._maskOf(proposalsNode, referenceVolumeNode,
                                                                        [segmentId]),
                                        tuple(segment.GetColor()), "CTV" if kind == "BOOST" else kind))
        return export_dicom(folder, structures, reference.array, reference.ijk_to_ras,
                            self._patientStudy(referenceVolumeNode), formats,
                            self._sourceSeries(referenceVolumeNode))


#
# Test
#


class CTVPlannerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        for test in (self.test_SchemesOnAnisotropicGrid, self.test_EditedProposalsAreKept,
                     self.test_ComparisonAndExport):
            self.setUp()
            test()

    def _case(self):
        """A lesion (necrotic core, enhancing rim, oedema) in a box-shaped brain on 1 x 1 x 3 mm voxels."""
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.case.geometry import Volume

        ijkToRas = np.diag([1.0, 1.0, 3.0, 1.0])
        shape = (20, 70, 70)
        k, j, i = np.indices(shape)
        radius = np.sqrt((i - 35.0) ** 2 + (j - 35.0) ** 2 + ((k - 10.0) * 3) ** 2)
        labels = np.zeros(shape, np.uint8)
        labels[radius <= 9] = 2
        labels[radius <= 6] = 3
        labels[radius <= 3] = 1
        segments = {value: LESION_SEGMENTS[value] for value in (1, 2, 3)}  # as the extension names them
        brain = np.zeros(shape, np.uint8)
        brain[1:-1, 2:-2, 2:-2] = 1
        nodes = {
            "reference": mrml.node_from_volume(Volume((100 * (radius < 30)).astype(np.int16), ijkToRas), "T1"),
            "lesion": mrml.segmentation_from_labelmap(Volume(labels, ijkToRas), segments, "lesion"),
            "brain": mrml.segmentation_from_labelmap(Volume(brain, ijkToRas), {1: ("Brain", (1, 1, 1))}, "brain"),
        }
        recurrence = ((i - 35.0) ** 2 + (j - 47.0) ** 2 + ((k - 10.0) * 3) ** 2 <= 16).astype(np.uint8)
        nodes["recurrence"] = mrml.segmentation_from_labelmap(Volume(recurrence, ijkToRas),
                                                              {1: ("Recurrence", (1, 0, 1))}, "recurrence")
        return nodes, labels

    def _mask(self, logic, nodes, name):
        proposals = logic.findProposals()
        segmentId = proposals.GetSegmentation().GetSegmentIdBySegmentName(name)
        self.assertTrue(segmentId, f"segment {name!r} exists")
        return logic._maskOf(proposals, nodes["reference"], [segmentId])

    def test_SchemesOnAnisotropicGrid(self):
        from CTVPlannerLib.schemes import Margins

        nodes, labels = self._case()
        logic = CTVPlannerLogic()
        result = logic.createProposals(nodes["lesion"], nodes["reference"], nodes["brain"], ("rtog", "eortc"),
                                       margins=Margins(rtog_mm=10.0, eortc_mm=6.0))
        self.assertEqual(len(result["segmentIds"]), 3)
        ctv46 = self._mask(logic, nodes, "CTV46 RTOG-NRG (10 mm)")
        self.assertTrue(ctv46[labels > 0].all(), "CTV46 contains the lesion")
        self.assertTrue(ctv46[10, 35, 35 + 19] and not ctv46[10, 35, 35 + 20], "9 + 10 mm along i (1 mm voxels)")
        self.assertTrue(ctv46[10 + 6, 35, 35] and not ctv46[10 + 7, 35, 35], "9 + 10 mm along k (3 mm slices)")
        eortc = self._mask(logic, nodes, "CTV EORTC (6 mm)")
        self.assertTrue(eortc[10, 35, 35 + 12] and not eortc[10, 35, 35 + 13], "enhancing 6 + 6 mm, oedema out")
        lesion = logic.lesionLabels(nodes["lesion"], nodes["reference"])
        self.assertTrue(np.array_equal(lesion, labels), "the lesion segments are untouched")
        self.assertEqual([logic.bratsClass(n) for n in ("Necrotic core", "Peritumoral edema", "Non-enhancing lesion",
                                                        "GD-enhancing tumor", "Resection cavity", "label_3", "Brain",
                                                        "Non-enhancing tumor core")],
                         [1, 2, 2, 3, 4, 3, None, 1])
        self.delayDisplay("Schemes honour anisotropic voxels and leave the lesion alone")

    def test_EditedProposalsAreKept(self):
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.case.geometry import Volume

        nodes, _ = self._case()
        logic = CTVPlannerLogic()
        args = (nodes["lesion"], nodes["reference"], nodes["brain"], ("eortc",))
        logic.createProposals(*args)
        logic.createProposals(*args)  # untouched: replaced without asking
        proposals = logic.findProposals()
        self.assertEqual(proposals.GetSegmentation().GetNumberOfSegments(), 1)
        # The oncologist edits the proposal: a scratch segment copied over it stands for a Segment Editor stroke.
        name = "CTV EORTC (15 mm)"
        edited = self._mask(logic, nodes, name)
        edited[10, 35, 2:10] = True
        grid = mrml.volume_from_node(nodes["reference"])
        scratch = mrml.segmentation_from_labelmap(Volume(edited.astype(np.uint8), grid.ijk_to_ras),
                                                  {1: (name, (0, 0, 1))}, "edit")
        proposals.GetSegmentation().RemoveSegment(proposals.GetSegmentation().GetSegmentIdBySegmentName(name))
        proposals.GetSegmentation().CopySegmentFromSegmentation(scratch.GetSegmentation(),
                                                                scratch.GetSegmentation().GetNthSegmentID(0))
        self.assertEqual(logic.conflictingProposals(*args), [name])
        with self.assertRaises(ValueError):
            logic.createProposals(*args)
        self.assertTrue(np.array_equal(self._mask(logic, nodes, name), edited), "the edit survived")
        logic.createProposals(*args, besideExisting=True)
        self.assertTrue(np.array_equal(self._mask(logic, nodes, name), edited), "still there")
        self.assertTrue(self._mask(logic, nodes, name + " (2)").any(), "the new proposal is beside it")
        logic.createProposals(*args, overwrite=True)
        self.assertFalse(self._mask(logic, nodes, name)[10, 35, 2], "replaced when confirmed")
        editor = logic.configureSegmentEditorNode(slicer.vtkMRMLSegmentEditorNode())
        self.assertEqual(editor.GetOverwriteMode(), slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
        with self.assertRaises(ValueError):
            logic.createProposals(*args[:3], ("eortc",), margins=logic.marginsFromParameters(
                type("P", (), dict(rtogMarginMm=20, eortcMarginMm=-1, estroMarginMm=15, aiMarginMm=5,
                                   boostMarginMm=5, ptvMarginMm=0, oarMarginMm=0))()))
        self.delayDisplay("Edited proposals are kept unless replacing is confirmed")

    def test_ComparisonAndExport(self):
        import tempfile

        import pydicom

        nodes, _ = self._case()
        logic = CTVPlannerLogic()
        result = logic.createProposals(nodes["lesion"], nodes["reference"], nodes["brain"], ("rtog", "eortc"),
                                       recurrenceNode=nodes["recurrence"])
        table = result["table"]
        self.assertEqual(table.GetNumberOfRows(), 3)
        column = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        self.assertIn("PCC", column)
        sensitivity = [float(table.GetCellText(r, column.index("Sensitivity"))) for r in range(3)]
        self.assertEqual(sensitivity[0], 1.0, "CTV46 covers the recurrence next to the lesion")
        folder = os.path.join(tempfile.mkdtemp(), "export")
        written = logic.exportDicom(folder, result["proposals"], nodes["reference"])
        self.assertEqual(len(written["mr"]), 20)
        rtstruct = pydicom.dcmread(written["rtstruct"][0])
        self.assertEqual([roi.ROIName for roi in rtstruct.StructureSetROISequence],
                         [table.GetCellText(r, 0) for r in range(3)])
        self.assertTrue(os.path.isfile(written["seg"][0]))
        self.delayDisplay("Comparison table and DICOM export")
