from typing import Annotated

import numpy as np

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from DSCPerfusionLib.leakage import DEFAULT_LEAKAGE_METHOD, LEAKAGE_METHODS
from DSCPerfusionLib.ftb import (FTB_CLASSES, FTB_KEYS, FTB_THRESHOLD_RANGE, FTB_THRESHOLDS, checked_thresholds,
                                 classify, fractions)
from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY, HABITATS, REFERENCE_TISSUES, REGIONS
from DSCPerfusionLib.signal import ECHO_TIME_MS_RANGE, MAX_FRAMES
from DSCPerfusionLib.protocol import check_protocol, protocol_report, summary_line
from GliomaProgressionLib.models.habitat_packages import (DEFAULT_HABITAT_MODEL, SYNTHETIC_NOTICE,
                                                          available_habitat_models)
from GliomaProgressionLib.mrml import PackageInstalling, ParameterNodeLifecycle
from GliomaProgressionLib.report.figure import NCBV_RANGE

PACKAGES_FOR_NIFTI = ("nibabel",)  # reading a 4D NIfTI (Slicer does not ship nibabel)
PACKAGES_FOR_HABITATS = ("torch",)  # the habitat model's curve encoder (Slicer's PyTorch extension provides it)
# The habitat models the registry (Models.json) lists, read once; the model selector offers these and only these.
HABITAT_MODELS = {entry["id"]: entry for entry in available_habitat_models()}
HABITAT_MODEL_IDS = tuple(HABITAT_MODELS) or ("",)
# Line colours (RGB 0..1) of the reference tissues in the habitat curves plot, where they are drawn dashed: dark
# red and greys, clear of the habitat colours. Their names are labels.REFERENCE_TISSUES.
REFERENCE_CURVE_COLOURS = {"artery": (0.45, 0.0, 0.0), "grey_matter": (0.40, 0.40, 0.40),
                           "white_matter": (0.70, 0.70, 0.70), "csf": (0.0, 0.0, 0.0)}


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
            "Computes normalised cerebral blood volume (nCBV) from a dynamic susceptibility contrast (DSC) MRI "
            "series loaded as a volume sequence: deltaR2*(t) = -ln(S(t)/S0)/TE with the baseline and bolus "
            "arrival detected on the brain-mean curve, leakage correction against the mean curve of non-enhancing "
            "brain (K2 map; by default Boxerman-Schmainda-Weisskoff with a free vascular response, so that transit "
            "time and arrival delay are not taken for leakage), rCBV as the integral of the corrected curve over "
            "time, and nCBV = rCBV / mean rCBV of normal-appearing white matter in the hemisphere opposite the "
            "lesion (or a reference region you draw). Shows the mean curves in a plot and nCBV per lesion "
            "segment in a table. With a lesion, a fractional tumour burden (FTB) segmentation classes each lesion "
            "voxel as low, intermediate or high nCBV (thresholds in Advanced) and the table gives the fraction of "
            "each per segment. The acquisition is checked against the 2020 consensus DSC protocol (Boxerman et "
            "al.), item by item, in a second table. The same computation runs headless as 'gliomaprog perfusion'. "
            "Perfusion habitats (Yun et al. 2023, AJNR): each voxel's whole DSC curve in the enhancing (CEL) and "
            "non-enhancing (NEL) lesion, rescaled by the white-matter signal, is encoded by a small autoencoder and "
            "assigned to a k-means pattern that the habitat model has labelled against reference tissues (artery, "
            "grey and white matter, CSF); the result is a segmentation with one segment per habitat, the fraction "
            "of CEL and NEL in each habitat, and each pattern's mean curve plotted beside the reference tissues. "
            "The demo habitat model is trained on synthetic data - not for clinical use."
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
    """inputSequence: DSC series (volume sequence; frame times from the sequence, else repetitionTimeS); echoTimeMs:
    TE in ms; brainMask, nawm, lesion: optional segmentations; leakage: one of LEAKAGE_METHODS; autoBaseline or
    baselineStart/End (frames [start, end)); firstPass; perSlice; ftbLowThreshold/ftbHighThreshold: nCBV limits of
    the FTB classes; outputNCBV/outputRCBV/outputK2: result volumes; outputFTB: the FTB segmentation.
    habitatModel: a habitat model of the registry; outputHabitats: the perfusion habitats segmentation."""

    inputSequence: slicer.vtkMRMLSequenceNode
    echoTimeMs: Annotated[float, WithinRange(*ECHO_TIME_MS_RANGE)] = 30.0
    repetitionTimeS: Annotated[float, WithinRange(0.0, 10.0)] = 0.0  # 0: the frame times the series carries
    brainMask: slicer.vtkMRMLSegmentationNode
    nawm: slicer.vtkMRMLSegmentationNode
    lesion: slicer.vtkMRMLSegmentationNode
    leakage: Annotated[str, Choice(LEAKAGE_METHODS)] = DEFAULT_LEAKAGE_METHOD
    autoBaseline: bool = True
    baselineStart: Annotated[int, WithinRange(0, MAX_FRAMES - 1)] = 2
    baselineEnd: Annotated[int, WithinRange(1, MAX_FRAMES)] = 10
    firstPass: bool = False
    perSlice: bool = False
    ftbLowThreshold: Annotated[float, WithinRange(*FTB_THRESHOLD_RANGE)] = FTB_THRESHOLDS[0]
    ftbHighThreshold: Annotated[float, WithinRange(*FTB_THRESHOLD_RANGE)] = FTB_THRESHOLDS[1]
    outputNCBV: slicer.vtkMRMLScalarVolumeNode
    outputRCBV: slicer.vtkMRMLScalarVolumeNode
    outputK2: slicer.vtkMRMLScalarVolumeNode
    outputFTB: slicer.vtkMRMLSegmentationNode
    habitatModel: Annotated[str, Choice(HABITAT_MODEL_IDS)] = (
        DEFAULT_HABITAT_MODEL if DEFAULT_HABITAT_MODEL in HABITAT_MODEL_IDS else HABITAT_MODEL_IDS[0])
    outputHabitats: slicer.vtkMRMLSegmentationNode


#
# Widget
#


class DSCPerfusionWidget(PackageInstalling, ParameterNodeLifecycle, ScriptedLoadableModuleWidget,
                         VTKObservationMixin):
    requester = "DSC Perfusion"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._computingHabitats = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DSCPerfusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DSCPerfusionLogic()
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.loadSeriesButton.clicked.connect(self.onLoadSeriesButton)
        self.ui.habitatsApplyButton.clicked.connect(self.onHabitatsApplyButton)
        self.ui.habitatsProgressBar.setVisible(False)
        self.observeScene()

    def updateGui(self):
        parameters = self._parameterNode
        ready = (parameters is not None and parameters.inputSequence is not None and not self.installing
                 and not self._computingHabitats)
        self.ui.applyButton.enabled = ready
        self.ui.loadSeriesButton.enabled = not self.installing
        self.ui.applyButton.toolTip = "Compute nCBV, rCBV and K2" if ready else "Choose a DSC sequence"
        manual = parameters is not None and not parameters.autoBaseline
        self.ui.baselineStartSpinBox.enabled = manual
        self.ui.baselineEndSpinBox.enabled = manual
        self._updateHabitatsGui(parameters)

    def _updateHabitatsGui(self, parameters):
        missing = self._habitatInputsMissing(parameters)
        self.ui.habitatsApplyButton.enabled = missing is None and not self.installing and not self._computingHabitats
        self.ui.habitatsApplyButton.toolTip = missing or "Find the perfusion habitats of the lesion."
        description = self.logic.habitatModelText(parameters.habitatModel) if parameters is not None else ""
        self.ui.habitatModelDescriptionLabel.text = description
        self.ui.habitatModelComboBox.toolTip = description

    @staticmethod
    def _habitatInputsMissing(parameters):
        """What the habitats still need from the Inputs section, in one sentence, or None."""
        if parameters is None or parameters.inputSequence is None:
            return "Choose the DSC series in Inputs."
        if parameters.lesion is None:
            return ("Choose the lesion segmentation in Inputs: habitats are found in its enhancing and "
                    "non-enhancing parts.")
        return None

    def onLoadSeriesButton(self):
        import qt

        path = qt.QFileDialog.getOpenFileName(self.parent, "Load a 4D DSC series", "",
                                              "4D images (*.nii *.nii.gz *.nrrd *.nhdr)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not load the DSC series."):
            if path.lower().endswith((".nii", ".nii.gz")) and not self.ensurePackages(PACKAGES_FOR_NIFTI):
                return
            self._parameterNode.inputSequence = self.logic.loadSeries(path, self._parameterNode.repetitionTimeS)

    def onApplyButton(self):
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not compute the perfusion maps.", waitCursor=True):
            baseline = None if parameters.autoBaseline else (parameters.baselineStart, parameters.baselineEnd)
            ftb = self._outputToReplace(parameters.outputFTB, "FTB")
            results = self.logic.process(
                parameters.inputSequence, parameters.echoTimeMs, repetitionTimeS=parameters.repetitionTimeS or None,
                leakage=parameters.leakage, baseline=baseline,
                firstPass=parameters.firstPass, perSlice=parameters.perSlice, brainMaskNode=parameters.brainMask,
                nawmNode=parameters.nawm, lesionNode=parameters.lesion,
                outputNodes={"ncbv": parameters.outputNCBV, "rcbv": parameters.outputRCBV, "k2": parameters.outputK2,
                             "ftb": ftb},
                progress=lambda fraction, message: slicer.util.showStatusMessage(message),
                ftbThresholds=(parameters.ftbLowThreshold, parameters.ftbHighThreshold))
            parameters.outputNCBV, parameters.outputRCBV, parameters.outputK2 = (
                results["ncbv"], results["rcbv"], results["k2"])
            if results["ftb"] is not None:
                parameters.outputFTB = results["ftb"]
            slicer.util.setSliceViewerLayers(foreground=results["ncbv"], foregroundOpacity=0.5)
            self._showResults(results)
            warnings = results["report"].get("warnings", [])
            made = ", ".join(f"'{results[key].GetName()}'" for key in ("ncbv", "rcbv", "k2"))
            table = (f"; nCBV and FTB per lesion segment in '{results['table'].GetName()}'"
                     if results.get("table") else "")
            protocol = f"{summary_line(results['protocol'])} (table '{results['protocolTable'].GetName()}')"
            self.ui.statusLabel.text = (f"Done in {results['report'].get('total_time_s', 0):.1f} s: {made}{table}.\n"
                                        + protocol + "".join(f"\nWarning: {w}" for w in warnings))

    def onHabitatsApplyButton(self):
        parameters = self._parameterNode
        self.ui.habitatsStatusLabel.text = ""
        try:
            with slicer.util.tryWithErrorDisplay("Could not compute the perfusion habitats.", waitCursor=True):
                self._computeHabitats(parameters)
        except ValueError as error:  # shown in Slicer's error box too; here it stays beside the button
            self.ui.habitatsStatusLabel.text = str(error)
            raise
        finally:
            self._computingHabitats = False
            self.ui.habitatsProgressBar.setVisible(False)
            self.updateGui()

    @staticmethod
    def _outputToReplace(segmentationNode, what):
        """The output segmentation to fill, or None (a new one): one the user edited is replaced only if they say
        so (the FTB and habitat segmentations alike)."""
        if segmentationNode is None or not DSCPerfusionLogic.resultWasEdited(segmentationNode):
            return segmentationNode
        replace = slicer.util.confirmYesNoDisplay(
            f"The {what} segmentation '{segmentationNode.GetName()}' was edited (or not made here).\n\nYes: replace "
            f"it. No: keep it and put the new {what} segments in a new segmentation.", windowTitle="DSC Perfusion")
        return segmentationNode if replace else None

    def _computeHabitats(self, parameters):
        if not self.ensurePackages(PACKAGES_FOR_HABITATS):
            return
        output = self._outputToReplace(parameters.outputHabitats, "habitat")
        self._computingHabitats = True
        self.updateGui()
        results = self.logic.computeHabitats(
            parameters.inputSequence, parameters.lesion, parameters.habitatModel,
            repetitionTimeS=parameters.repetitionTimeS or None, brainMaskNode=parameters.brainMask,
            nawmNode=parameters.nawm, outputNode=output, progress=self._showHabitatProgress)
        parameters.outputHabitats = results["habitats"]
        self._showResults(results)
        self.ui.habitatsStatusLabel.text = self.logic.habitatSummary(results)

    def _showHabitatProgress(self, fraction, message):
        # In-process, as the perfusion maps: the status bar says the step, the section's bar how far it is.
        self.ui.habitatsProgressBar.setVisible(True)
        self.ui.habitatsProgressBar.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        slicer.util.showStatusMessage(message)
        slicer.app.processEvents()

    @staticmethod
    def _showResults(results):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # the application runs without a main window
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        slicer.modules.plots.logic().ShowChartInLayout(results["chart"])
        if results.get("table") is not None:
            layoutManager.tableWidget(0).tableView().setMRMLTableNode(results["table"])


#
# Logic
#


class DSCPerfusionLogic(ScriptedLoadableModuleLogic):
    """Takes nodes and values, returns nodes; raises ValueError with a readable message on bad input.

    The science is ``DSCPerfusionLib.pipeline.compute_perfusion``, the same function ``gliomaprog perfusion``
    runs; this class converts nodes to arrays and results back to nodes.
    """

    requirementsFile = None  # None: the extension's Resources/requirements.txt (tests give another)

    def getParameterNode(self):
        return DSCPerfusionParameterNode(super().getParameterNode())

    @staticmethod
    def loadSeries(path, repetitionTimeS=0.0):
        """A 4D NIfTI or NRRD DSC file as a sequence node indexed by time in seconds (Slicer's own sequence reader
        takes NRRD only). ``repetitionTimeS`` (0: from the file) gives the frame times a file does not carry."""
        from GliomaProgressionLib import mrml

        sequence, _ = mrml.sequence_from_file(path, repetition_time_s=repetitionTimeS or None)
        return sequence

    def process(self, sequenceNode, echoTimeMs=30.0, leakage=DEFAULT_LEAKAGE_METHOD, baseline=None, firstPass=False,
                perSlice=False, brainMaskNode=None, nawmNode=None, lesionNode=None, outputNodes=None, progress=None,
                repetitionTimeS=None, ftbThresholds=FTB_THRESHOLDS):
        """Compute nCBV, leakage-corrected rCBV and K2 of a DSC sequence. Frame times come from the sequence
        (its time index, or the frame times Slicer's DICOM import keeps), else from ``repetitionTimeS``.

        With a lesion, each lesion voxel is classed by nCBV into the FTB classes (``ftbThresholds``: low, high)
        and the acquisition is checked against the 2020 consensus protocol (flip angle and field strength from
        the DICOM headers when the series came through Slicer's DICOM import).

        Returns a dict: 'ncbv', 'rcbv', 'k2' (volume nodes), 'ftb' (segmentation, or None without a lesion),
        'chart' (mean curves), 'table' (per lesion segment, or None), 'protocolTable' (table node), 'protocol'
        (dict), 'report' (dict), 'result' (the pipeline's result).
        """
        import time

        from DSCPerfusionLib.pipeline import PerfusionOptions, compute_perfusion
        from GliomaProgressionLib import mrml

        started = time.monotonic()
        if sequenceNode is None:
            raise ValueError("Choose the DSC series (a volume sequence).")
        low, high = ECHO_TIME_MS_RANGE
        if not low <= echoTimeMs <= high:
            raise ValueError(f"The echo time must be between {low:g} and {high:g} ms, got {echoTimeMs:g}.")
        if leakage not in LEAKAGE_METHODS:
            raise ValueError(f"Unknown leakage correction {leakage!r}: use {', '.join(LEAKAGE_METHODS)}.")
        checked_thresholds(ftbThresholds)
        series, times = mrml.volume_from_sequence(sequenceNode, repetitionTimeS)
        grid = type(series)(series.array[0], series.ijk_to_ras)
        masks = {name: self._maskOnGrid(node, grid, name)
                 for name, node in (("brain mask", brainMaskNode), ("white-matter reference", nawmNode)) if node}
        lesionLabels, segmentNames = self._lesionLabels(lesionNode, grid)
        options = PerfusionOptions(te_s=echoTimeMs / 1000.0, baseline=tuple(baseline) if baseline else None,
                                   leakage=leakage, first_pass=firstPass, per_slice=perSlice)
        result = compute_perfusion(series.array, times, options, ijk_to_ras=series.ijk_to_ras,
                                   spacing_mm=tuple(series.spacing[::-1]), brain_mask=masks.get("brain mask"),
                                   nawm_mask=masks.get("white-matter reference"), lesion_labels=lesionLabels,
                                   progress=progress)
        name = sequenceNode.GetName()
        outputNodes = outputNodes or {}
        nodes = {
            "ncbv": self._storeVolume(result.ncbv, grid, outputNodes.get("ncbv"), f"{name} nCBV", NCBV_RANGE),
            "rcbv": self._storeVolume(result.rcbv, grid, outputNodes.get("rcbv"), f"{name} rCBV"),
            "k2": self._storeVolume(result.k2, grid, outputNodes.get("k2"), f"{name} K2"),
        }
        curveNames = {"brain": "Brain", "nawm": "White-matter reference"}
        curveNames.update({f"label {value}": segment for value, segment in segmentNames.items()})
        nodes["chart"] = mrml.plot_curves(times, {curveNames.get(k, k): v for k, v in result.curves.items()},
                                          f"{name} mean deltaR2*", "Time (s)", "deltaR2* (1/s)")
        ftbClasses = None
        if lesionLabels is not None:
            ftbClasses = classify(result.ncbv, (lesionLabels > 0) & result.brain_mask, ftbThresholds)
        nodes["ftb"] = self._storeFtb(ftbClasses, grid, outputNodes.get("ftb"), f"{name} FTB")
        nodes["table"] = self._regionTable(result, lesionLabels, segmentNames, grid, f"{name} regional perfusion",
                                           ftbClasses)
        nodes["protocol"] = protocol_report(check_protocol(self.acquisitionHeader(sequenceNode), echoTimeMs / 1000.0,
                                                           times, int(result.arrival_frame)))
        nodes["protocolTable"] = self._protocolTable(nodes["protocol"], f"{name} protocol QA")
        report = dict(result.report)
        report["total_time_s"] = time.monotonic() - started
        nodes["report"] = report
        nodes["result"] = result
        return nodes

    @staticmethod
    def _maskOnGrid(segmentationNode, grid, what):
        from GliomaProgressionLib import mrml

        mask = mrml.labelmap_from_segmentation(segmentationNode, grid).array > 0
        if not mask.any():
            raise ValueError(f"The {what} '{segmentationNode.GetName()}' does not overlap the DSC series.")
        return mask

    @staticmethod
    def _lesionLabels(lesionNode, grid):
        from GliomaProgressionLib import mrml

        if lesionNode is None:
            return None, {}
        names = mrml.segment_names(lesionNode)
        values = {segment: index + 1 for index, segment in enumerate(names)}
        labels = mrml.labelmap_from_segmentation(lesionNode, grid, values).array
        if not labels.any():
            raise ValueError(f"The lesion '{lesionNode.GetName()}' does not overlap the DSC series.")
        return labels, {value: segment for segment, value in values.items()}

    @staticmethod
    def _storeVolume(array, grid, node, name, window=None):
        from GliomaProgressionLib import mrml

        volume = type(grid)(np.asarray(array, np.float32), grid.ijk_to_ras)
        if node is None:
            node = mrml.node_from_volume(volume, name)
        else:
            mrml.update_node_from_volume(node, volume)
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            if window is None:
                positive = volume.array[volume.array > 0]
                window = (0.0, float(np.percentile(positive, 99)) if positive.size else 1.0)
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(*window)
            colour = slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
            if colour is not None:
                display.SetAndObserveColorNodeID(colour.GetID())
        return node

    @staticmethod
    def acquisitionHeader(sequenceNode):
        """What the protocol check reads, in the sidecar's names and units, from what Slicer's DICOM import
        keeps: the flip angle (MultiVolumeImporter's attribute) and the field strength (DICOM 0018,0087 of the
        series' first instance, when the DICOM database holds it). Empty for a series loaded from a file."""
        def number(text):
            try:
                value = float(text)
            except (TypeError, ValueError):
                return None
            return value if np.isfinite(value) else None

        header = {"FlipAngle": number(sequenceNode.GetAttribute("MultiVolume.DICOM.FlipAngle"))}
        instances = (sequenceNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if instances and database is not None:
            header["MagneticFieldStrength"] = number(database.instanceValue(instances[0], "0018,0087"))
        return header

    @staticmethod
    def _storeFtb(classes, grid, node, name):
        """The FTB classes as a segmentation (one segment per class present), into ``node`` when given."""
        from GliomaProgressionLib import mrml

        if classes is None:
            return None
        made = mrml.segmentation_from_labelmap(type(grid)(classes, grid.ijk_to_ras), FTB_CLASSES, name)
        node = made if node is None else mrml.replace_segments(node, made)
        mrml.stamp_result(node, grid)  # so that a later Apply can tell whether the user edited it
        return node

    # --- perfusion habitats

    @staticmethod
    def habitatModelEntry(modelId):
        """The registry's entry of a habitat model (Models.json ``habitat_models``), or None."""
        return HABITAT_MODELS.get(modelId)

    def habitatModelText(self, modelId):
        """What the panel says about a habitat model: its title and description, with the synthetic-data notice."""
        entry = self.habitatModelEntry(modelId)
        if entry is None:
            return f"The habitat model '{modelId}' is not installed." if modelId else "No habitat model is installed."
        description = str(entry.get("description", ""))
        if entry.get("synthetic") and SYNTHETIC_NOTICE not in description:
            description = f"{SYNTHETIC_NOTICE} {description}".strip()
        return f"{entry.get('title', modelId)}: {description}" if description else str(entry.get("title", modelId))

    @staticmethod
    def loadHabitatModel(model):
        """A registry id (sha256-checked), a package path, or an already loaded package, as a loaded package."""
        from GliomaProgressionLib.models.habitat_packages import HabitatModelPackage, resolve_habitat_model

        if isinstance(model, HabitatModelPackage):
            return model
        if not model:
            raise ValueError("Choose a habitat model; the registry lists none.")
        return resolve_habitat_model(model)

    @staticmethod
    def resultWasEdited(segmentationNode):
        """Whether replacing this output segmentation (FTB, habitats) would lose the user's edits (ask first)."""
        from GliomaProgressionLib import mrml

        return mrml.result_was_edited(segmentationNode)

    def computeHabitats(self, sequenceNode, lesionNode, model=DEFAULT_HABITAT_MODEL, repetitionTimeS=None,
                        brainMaskNode=None, nawmNode=None, outputNode=None, progress=None):
        """Perfusion habitats (Yun et al. 2023) of the lesion's enhancing (CEL) and non-enhancing (NEL) parts.

        The science is ``DSCPerfusionLib.habitats.pipeline.compute_habitats``, as in ``gliomaprog habitats``; the
        lesion's parts are read from its segment names by the one segment-name rule (``CTVPlannerLib.lesion``).
        ``model``: a registry id, a package path or a loaded package. ``outputNode``: the segmentation to fill
        (its segments are replaced: ask the user first when ``resultWasEdited``); None makes a new one.

        Returns a dict: 'habitats' (segmentation, one segment per habitat found, named and coloured from
        ``HABITATS``), 'table' (percentage of CEL and NEL per habitat), 'chart' (each pattern's mean curve and
        the four reference tissues, dashed), 'model' (the loaded package), 'result' (the pipeline's result),
        'report' (dict with 'total_time_s').
        """
        import time

        from DSCPerfusionLib.habitats.pipeline import compute_habitats
        from GliomaProgressionLib import mrml

        started = time.monotonic()
        if sequenceNode is None:
            raise ValueError("Choose the DSC series (a volume sequence).")
        if lesionNode is None:
            raise ValueError("Choose the lesion segmentation: habitats are found in its enhancing (CEL) and "
                             "non-enhancing (NEL) parts.")
        package = self.loadHabitatModel(model)  # a missing or tampered model fails before the work
        series, times = mrml.volume_from_sequence(sequenceNode, repetitionTimeS)
        grid = type(series)(series.array[0], series.ijk_to_ras)
        cel, nel = self._lesionRegions(lesionNode, grid)
        masks = {name: self._maskOnGrid(node, grid, name)
                 for name, node in (("brain mask", brainMaskNode), ("white-matter reference", nawmNode)) if node}
        result = compute_habitats(series.array, times, cel, nel, package.model,
                                  brain_mask=masks.get("brain mask"), nawm_mask=masks.get("white-matter reference"),
                                  spacing_mm=tuple(series.spacing[::-1]), ijk_to_ras=series.ijk_to_ras,
                                  progress=progress)
        name = sequenceNode.GetName()
        nodes = {
            "habitats": self._storeHabitats(result.labels, grid, outputNode, f"{name} habitats"),
            "table": self._habitatTable(result.fractions, f"{name} habitat fractions"),
            "chart": self._habitatChart(result, f"{name} habitat curves"),
            "model": package,
            "result": result,
        }
        report = dict(getattr(result, "report", None) or {})
        report["total_time_s"] = time.monotonic() - started
        nodes["report"] = report
        return nodes

    @staticmethod
    def _lesionRegions(lesionNode, grid):
        """(CEL, NEL) masks on the DSC grid; one sentence when the lesion lacks either."""
        from CTVPlannerLib.lesion import LESION_SEGMENTS, brats_class
        from GliomaProgressionLib import mrml

        lesion = lesionNode.GetName()
        parts = {brats_class(segment) for segment in mrml.segment_names(lesionNode)}
        regions = {"CEL": (3, "enhancing"), "NEL": (2, "non-enhancing")}
        for region, (part, word) in regions.items():
            if part not in parts:
                raise ValueError(f"The lesion '{lesion}' has no {word} ({region}) segment: name one "
                                 f"'{LESION_SEGMENTS[part][0]}'.")
        masks = mrml.lesion_part_masks(lesionNode, grid, (2, 3))
        for region, (part, word) in regions.items():
            if not masks[part].any():
                raise ValueError(f"The {word} ({region}) part of the lesion '{lesion}' does not overlap the DSC "
                                 "series.")
        return masks[3], masks[2]

    @staticmethod
    def _storeHabitats(labels, grid, node, name):
        """The habitat labels as a segmentation (one segment per habitat present), into ``node`` when given;
        stamped so that a later Apply can tell whether the user edited it."""
        from GliomaProgressionLib import mrml

        segments = {habitat.value: (habitat.name, habitat.colour) for habitat in HABITATS}
        made = mrml.segmentation_from_labelmap(type(grid)(np.asarray(labels, np.uint8), grid.ijk_to_ras), segments,
                                               name)
        node = made if node is None else mrml.replace_segments(node, made)
        mrml.stamp_result(node, grid)
        return node

    @staticmethod
    def _habitatTable(fractions, name):
        """Rows: the habitats of either region; columns: percentage of CEL and of NEL (empty where a habitat
        does not belong to the region)."""
        from GliomaProgressionLib import mrml

        def percent(region, key):
            share = (fractions.get(region) or {}).get(key)
            return round(100.0 * float(share), 2) if share is not None else float("nan")

        found = [h for h in HABITATS if any(h.key in (fractions.get(region) or {}) for region in REGIONS)]
        columns = {"Habitat": [habitat.name for habitat in found]}
        columns.update({f"{region} (%)": [percent(region, habitat.key) for habitat in found] for region in REGIONS})
        return mrml.table_from_columns(columns, name)

    @staticmethod
    def _habitatChart(result, name):
        """Each pattern's mean curve (in its habitat's colour) beside the reference tissues' curves, dashed."""
        from GliomaProgressionLib import mrml

        habitatOf = {f"{row['region']} {row['pattern']}": HABITAT_BY_KEY.get(row["habitat"])
                     for row in result.pattern_table}
        curves, colours = {}, {}
        for pattern, curve in result.pattern_curves.items():
            habitat = habitatOf.get(pattern)
            title = f"{pattern}: {habitat.name}" if habitat is not None else pattern
            curves[title] = curve
            if habitat is not None:
                colours[title] = habitat.colour
        references = []
        for key, tissue in REFERENCE_TISSUES.items():
            if key in result.reference_curves:
                title = f"{tissue} (reference)"
                curves[title] = result.reference_curves[key]
                colours[title] = REFERENCE_CURVE_COLOURS.get(key, (0.0, 0.0, 0.0))
                references.append(title)
        # The curves share one time axis, every curve's bolus arrival at the same point (curves.curve_times).
        chart = mrml.plot_curves(result.times_s, curves, name, "Time, bolus arrivals aligned (s)",
                                 "Signal / white-matter signal", colours=colours)
        mrml.dash_plot_series(chart, references)
        return chart

    @staticmethod
    def habitatSummary(results):
        """What the panel says after a habitat computation."""
        segmentation = results["habitats"]
        found = segmentation.GetSegmentation().GetNumberOfSegments()
        package = results["model"]
        notice = f" {package.notice}" if getattr(package, "notice", "") else ""
        warnings = getattr(results["result"], "warnings", None) or []
        return (f"Done in {results['report'].get('total_time_s', 0):.1f} s: {found} habitats in "
                f"'{segmentation.GetName()}', fractions in '{results['table'].GetName()}', curves in "
                f"'{results['chart'].GetName()}'. Model: {package.title}.{notice}"
                + "".join(f"\nWarning: {warning}" for warning in warnings))

    @staticmethod
    def _protocolTable(report, name):
        from GliomaProgressionLib import mrml

        columns = {"Item": "name", "Expected (2020 consensus)": "expected", "Found": "found", "Status": "status"}
        return mrml.table_from_columns({title: [item[key] for item in report["items"]]
                                        for title, key in columns.items()}, name)

    @staticmethod
    def _regionTable(result, labels, segmentNames, grid, name, ftbClasses=None):
        from GliomaProgressionLib import mrml

        if labels is None:
            return None
        voxelMl = float(np.prod(grid.spacing)) / 1000.0
        rows = {"Segment": [], "Volume (mL)": [], "nCBV mean": [], "nCBV median": [], "nCBV 90th percentile": [],
                "K2 mean (1/s)": []}
        ftbColumns = {key: f"FTB {key} (%)" for key in FTB_KEYS.values()}
        rows.update({column: [] for column in ftbColumns.values()})
        for value, segment in segmentNames.items():
            inside = labels == value
            if not inside.any():
                continue
            ncbv = result.ncbv[inside]
            rows["Segment"].append(segment)
            rows["Volume (mL)"].append(round(float(inside.sum() * voxelMl), 3))
            rows["nCBV mean"].append(round(float(ncbv.mean()), 3))
            rows["nCBV median"].append(round(float(np.median(ncbv)), 3))
            rows["nCBV 90th percentile"].append(round(float(np.percentile(ncbv, 90)), 3))
            rows["K2 mean (1/s)"].append(round(float(result.k2[inside].mean()), 5))
            shares = fractions(ftbClasses, inside)
            for key, column in ftbColumns.items():
                rows[column].append(round(100 * shares[key], 1) if shares[key] is not None else float("nan"))
        return mrml.table_from_columns(rows, name)


#
# Test
#


class DSCPerfusionTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_SyntheticCase()
        self.setUp()
        self.test_BadInputIsRefused()

    def _loadSyntheticCase(self):
        from GliomaProgressionLib import mrml
        from CTVPlannerLib.lesion import LESION_SEGMENTS
        from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

        case = generate_case(PhantomConfig(seed=11, size="small"))
        sequence, _ = mrml.sequence_from_volume(case.dsc, case.frame_times_s, "DSC")
        lesion = mrml.segmentation_from_labelmap(case.lesion, LESION_SEGMENTS, "Lesion")
        return case, sequence, lesion

    def test_SyntheticCase(self):
        self.delayDisplay("Computing nCBV of a synthetic case with known truth")
        case, sequence, lesion = self._loadSyntheticCase()
        results = DSCPerfusionLogic().process(sequence, 30.0, lesionNode=lesion)
        ncbv = slicer.util.arrayFromVolume(results["ncbv"])
        truth = case.truth["ncbv"].array
        nawm = results["result"].nawm_mask
        self.assertAlmostEqual(float(ncbv[nawm].mean()), 1.0, delta=1e-3)
        brain = (case.truth["brain_dsc"].array > 0) & (truth > 0.5)
        self.assertGreater(np.corrcoef(ncbv[brain], truth[brain])[0, 1], 0.8)
        table = results["table"]
        segments = [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())]
        self.assertIn("Enhancing tumour", segments)
        enhancing = segments.index("Enhancing tumour")
        self.assertGreater(float(table.GetCellText(enhancing, 2)), 1.5, "enhancing tumour has raised nCBV")
        self.assertEqual(results["chart"].GetNumberOfPlotSeriesNodes(), 2 + len(segments))
        high = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())].index("FTB high (%)")
        self.assertGreater(float(table.GetCellText(enhancing, high)), 50.0, "the enhancing rim is mostly high nCBV")
        ftb = results["ftb"].GetSegmentation()
        self.assertEqual({ftb.GetNthSegment(i).GetName() for i in range(ftb.GetNumberOfSegments())},
                         {name for name, _ in FTB_CLASSES.values()})
        self.assertEqual(results["protocolTable"].GetNumberOfRows(), len(results["protocol"]["items"]))
        self.delayDisplay("nCBV, table and curves computed")
        self._checkHabitats(sequence, lesion)

    def _checkHabitats(self, sequence, lesion):
        import importlib.util

        if importlib.util.find_spec("torch") is None or not HABITAT_MODEL_IDS[0]:
            self.delayDisplay("Perfusion habitats not tested: PyTorch or a habitat model is not installed")
            return
        self.delayDisplay("Finding the perfusion habitats of the same case")
        results = DSCPerfusionLogic().computeHabitats(sequence, lesion, HABITAT_MODEL_IDS[0])
        segmentation = results["habitats"].GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertTrue(names and names <= {habitat.name for habitat in HABITATS})
        table = results["table"]
        for column in range(1, table.GetNumberOfColumns()):
            shares = [table.GetTable().GetValue(row, column).ToDouble() for row in range(table.GetNumberOfRows())]
            self.assertAlmostEqual(float(np.nansum(shares)), 100.0, delta=0.1)
        self.delayDisplay("Habitats, fractions and pattern curves computed")

    def test_BadInputIsRefused(self):
        case, sequence, _ = self._loadSyntheticCase()
        logic = DSCPerfusionLogic()
        for arguments in ((None,), (sequence, 0.03), (sequence, 30.0, "gamma")):
            with self.assertRaises(ValueError):
                logic.process(*arguments)
        with self.assertRaises(ValueError):
            logic.process(sequence, 30.0, baseline=(0, 99))  # beyond the 60 frames
        self.delayDisplay("Bad input refused")
