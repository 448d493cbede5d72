import enum
import os
import tempfile
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

from DSCPerfusionLib.signal import ECHO_TIME_MS_RANGE
from GliomaProgressionLib.case.channels import DERIVED, channel_modality, map_sources
from GliomaProgressionLib.models import process
from GliomaProgressionLib.models.invasion_packages import SYNTHETIC_NOTICE as INVASION_SYNTHETIC_NOTICE
from GliomaProgressionLib import dependencies
from GliomaProgressionLib import mrml
from GliomaProgressionLib.mrml import ALIGNED_WITH_CE_T1, ParameterNodeLifecycle
from GliomaProgressionLib.phantom.synthetic import SIZES
from GliomaProgressionLib.report.figure import INVASION_NAME, PERFUSION_SKIPPED, PROGRESSION_NAME
from GliomaProgressionLib.runs.predict import DEVICES, MIN_VOXELS_RANGE, THRESHOLD_RANGE

RADIOMICS_BUTTON_TEXT = "Compute nCBV features"
SAMPLE_CATEGORY = "Glioma progression"
SAMPLE_NAME = "Synthetic glioma case"


class UnregisteredMapError(ValueError):
    """An nCBV map that may not be registered to the CE-T1 the lesion was drawn on."""


class Method(enum.Enum):
    """The panel's two methods; the selector shows their labels (Slicer's enum connector calls ``label``)."""

    NNUNET = "nnU-Net progression model"
    INVASION = "Radiomics invasion map (Yan 2020)"

    def label(self):
        return self.value


# What the start button says and which background job it starts, per method.
START_TEXT = {Method.NNUNET: "Predict progression", Method.INVASION: "Map invasion"}
JOB_KIND = {Method.NNUNET: "predict", Method.INVASION: "invasion"}
INVASION_TOOLTIP = ("Register the series, compute the local radiomics feature maps in the peritumoral region and "
                    "classify each voxel, in a background process.")


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
            "from pre-operative CE-T1, FLAIR and nCBV (seed 000: Heo 2023). The series are registered rigidly "
            "onto the 1 mm CE-T1 grid, nCBV is computed from the DSC series, and an nnU-Net model runs in a "
            "background process (Cancel stops it and everything it started). The result is a probability heat "
            f"map, a '{PROGRESSION_NAME}' segment (p >= threshold inside the non-enhancing lesion) and a "
            "patient verdict. Without a DSC series, choose a model that uses no nCBV (the conventional demo model: "
            "CE-T1 and FLAIR); perfusion is then skipped and the results say so. A model that names diffusion or other "
            "maps (ADC, FA, MD, p and q from MD and FA, map_<name>) shows a selector for each; they are registered to "
            "CE-T1 like FLAIR. The second method, the radiomics invasion map (seed 004: Yan et al. 2020), computes "
            "local radiomics features in the peritumoral region and classifies each voxel with a small neural "
            f"network: a probability heat map and a '{INVASION_NAME}' segment. A synthetic glioma case with a "
            "known future-progression region can be generated here or from Sample Data. The shipped demo models "
            "are trained on synthetic data - not for clinical use."
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
        uris=[], fileNames=[], nodeNames=[],  # nothing to download: the case is generated here
        customDownloader=generateSampleCase,
    )


def generateSampleCase(source=None):
    """Start generating the small synthetic case in a background process and return at once (the job, or None);
    a progress dialog with Cancel follows it, and the case is loaded when it is ready."""
    logic = GliomaProgressionLogic()
    missing = logic.missingPackages("phantom")
    if missing:
        slicer.util.errorDisplay(f"The {SAMPLE_NAME.lower()} needs Python packages that are not installed ("
                                 + ", ".join(str(m) for m in missing) + "). Open the Glioma Progression module and "
                                 "press 'Generate and load': it offers to install them.")
        return None
    parent = tempfile.mkdtemp(prefix="SyntheticGliomaCase-", dir=slicer.app.temporaryPath)
    folder = os.path.join(parent, "case")
    with slicer.util.tryWithErrorDisplay("Could not start generating the synthetic glioma case."):
        try:
            runner = logic.startSyntheticCase(folder, seed=0, size="small")
        except Exception:
            logic.discardJobFolder(parent)
            raise
    return _followSampleCase(logic, runner, parent, folder)


def _followSampleCase(logic, runner, parent, folder):
    import qt

    dialog = qt.QProgressDialog(f"Generating the {SAMPLE_NAME.lower()} (synthetic, not patient data)...",
                                "Cancel", 0, 100, slicer.util.mainWindow())
    dialog.setWindowTitle(SAMPLE_NAME)
    dialog.setModal(False)
    dialog.show()

    def finished(job):
        dialog.close()
        dialog.deleteLater()
        _sampleJobs.discard(job)
        if job.cancelled:
            logic.discardJobFolder(parent)
            return
        with slicer.util.tryWithErrorDisplay("Could not generate the synthetic glioma case."):
            nodes = logic.finishSyntheticCase(job.runner, folder)
            slicer.util.setSliceViewerLayers(background=nodes["t1c"], fit=True)

    job = mrml.BackgroundJob("phantom", runner, folder, onFinished=finished,
                             onProgress=lambda fraction, message: dialog.setValue(int(100 * fraction)))
    dialog.canceled.connect(job.cancel)
    job.dialog = dialog
    _sampleJobs.add(job)  # the job lives until it ends, whatever holds the dialog
    return job


_sampleJobs = set()


#
# Parameters
#


@parameterNodeWrapper
class GliomaProgressionParameterNode:
    """Prediction: method, t1c, flair, dsc (+ echoTimeMs), lesion, model (id), device, threshold, minVoxels. dsc may
    be None (a node parameter's default): models without an nCBV channel do not need it. The maps a model names
    beyond these (adc, fa, md, map_<name>) and the invasion model are chosen in selectors the panel makes from the
    model lists at run time (see GliomaProgressionWidget).
    CBV radiomics: ncbv (an nCBV map) with the same lesion.
    Synthetic case: seed, size, cavity (see GliomaProgressionLib.phantom.synthetic)."""

    method: Method = Method.NNUNET
    t1c: slicer.vtkMRMLScalarVolumeNode
    flair: slicer.vtkMRMLScalarVolumeNode
    dsc: slicer.vtkMRMLSequenceNode
    echoTimeMs: Annotated[float, WithinRange(*ECHO_TIME_MS_RANGE)] = 30.0
    lesion: slicer.vtkMRMLSegmentationNode
    ncbv: slicer.vtkMRMLScalarVolumeNode
    model: str = "multiparametric"  # bound by hand: the model list is read from Models.json at run time
    device: Annotated[str, Choice(DEVICES)] = "auto"
    threshold: Annotated[float, WithinRange(*THRESHOLD_RANGE)] = 0.5
    minVoxels: Annotated[int, WithinRange(*MIN_VOXELS_RANGE)] = 1
    seed: Annotated[int, WithinRange(0, 1_000_000)] = 0
    size: Annotated[str, Choice(SIZES)] = "small"
    cavity: bool = False


#
# Widget
#


class GliomaProgressionWidget(ParameterNodeLifecycle, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._job = None  # the running BackgroundJob (one at a time)
        self._mapSelectors = {}  # channel name -> (label, node selector), made when a chosen model first needs it
        self._invasionChannels = {}  # invasion model -> its channel names, or why they cannot be read (read once)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GliomaProgression.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GliomaProgressionLogic()
        self._models = {entry["id"]: entry for entry in self.logic.availableModels()}  # Models.json, read once
        for modelId, entry in self._models.items():
            self.ui.modelComboBox.addItem(entry.get("title", modelId), modelId)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChosen)
        self._invasionModels = {entry["id"]: entry for entry in self.logic.availableInvasionModels()}
        for modelId, entry in self._invasionModels.items():
            self.ui.invasionModelComboBox.addItem(entry.get("title", modelId), modelId)
        self.ui.invasionModelComboBox.currentIndexChanged.connect(lambda *unused: self.updateGui())
        # the .ui's; replaced by the reason while disabled
        self._startToolTip = {Method.NNUNET: self.ui.predictButton.toolTip, Method.INVASION: INVASION_TOOLTIP}
        self.ui.generateButton.clicked.connect(self.onGenerateButton)
        self.ui.predictButton.clicked.connect(self.onPredictButton)
        self.ui.radiomicsButton.clicked.connect(self.onRadiomicsButton)
        self.ui.progressBar.setVisible(False)
        self.ui.channelMapsWidget.setVisible(False)
        self.observeScene()

    def cancelJobs(self):
        self._cancel()

    def onModelChosen(self, *unused):
        # Read the index from the combo box: Qt 5's currentIndexChanged also has a QString overload in PythonQt.
        index = self.ui.modelComboBox.currentIndex
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def updateGui(self):
        parameters = self._parameterNode
        if parameters is None:
            return
        running = self._job.kind if self._job is not None else None  # one background job at a time
        invasion = parameters.method == Method.INVASION
        self._showMethodRows(invasion)
        self._showMapSelectors(self.logic.mapsNeeded(self._chosenModelChannels(parameters)))
        blocked = self._whyPredictionCannotStart(parameters)
        self.ui.predictButton.enabled = running in JOB_KIND.values() or (running is None and blocked is None)
        self.ui.predictButton.toolTip = blocked or self._startToolTip[parameters.method]
        self.ui.echoTimeSpinBox.enabled = parameters.dsc is not None
        self.ui.radiomicsButton.enabled = running == "radiomics" or (
            running is None and bool(parameters.ncbv and parameters.lesion))
        self.ui.generateButton.enabled = running in (None, "phantom")
        self.ui.predictButton.text = "Cancel" if running in JOB_KIND.values() else START_TEXT[parameters.method]
        self.ui.radiomicsButton.text = "Cancel" if running == "radiomics" else RADIOMICS_BUTTON_TEXT
        self.ui.generateButton.text = "Cancel" if running == "phantom" else "Generate and load"
        index = self.ui.modelComboBox.findData(parameters.model)
        if index != self.ui.modelComboBox.currentIndex:
            self.ui.modelComboBox.setCurrentIndex(index)
        self.ui.modelDescriptionLabel.text = self._modelDescription(parameters)

    def _showMethodRows(self, invasion):
        """The nnU-Net model's rows, or the invasion model's: each method shows only what it uses."""
        for widget in (self.ui.modelLabel0, self.ui.modelComboBox, self.ui.modelLabel2, self.ui.deviceComboBox,
                       self.ui.modelLabel3, self.ui.thresholdSpinBox, self.ui.modelLabel4, self.ui.minVoxelsSpinBox):
            widget.setVisible(not invasion)
        self.ui.invasionModelLabel.setVisible(invasion)
        self.ui.invasionModelComboBox.setVisible(invasion)

    # --- the maps a model names (case.channels): one selector each, shown while the chosen model needs it

    def _showMapSelectors(self, needed):
        for name in needed:
            if name not in self._mapSelectors:
                self._mapSelectors[name] = self._newMapSelector(name)
        for name, (label, selector) in self._mapSelectors.items():
            label.setVisible(name in needed)
            selector.setVisible(name in needed)
        self.ui.channelMapsWidget.setVisible(bool(needed))

    def _newMapSelector(self, name):
        import qt

        modality = channel_modality(name)
        selector = slicer.qMRMLNodeComboBox()
        selector.setObjectName(f"{name}MapSelector")
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.showChildNodeTypes = False
        selector.noneEnabled = True  # nothing is chosen for the user: a wrong map would be registered silently
        selector.addEnabled = selector.removeEnabled = selector.renameEnabled = False
        selector.toolTip = f"The {modality} map ({name}) the model uses, on its own grid: it is registered rigidly to " \
                           "CE-T1 like FLAIR."
        selector.setMRMLScene(slicer.mrmlScene)
        selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *unused: self.updateGui())
        label = qt.QLabel(f"{modality}:")
        self.ui.channelMapsWidget.layout().addRow(label, selector)
        return label, selector

    def chosenMaps(self, channels):
        """The volume chosen for each map ``channels`` need (channel name -> node), chosen ones only."""
        chosen = {name: self._mapSelectors[name][1].currentNode() for name in self.logic.mapsNeeded(channels)
                  if name in self._mapSelectors}
        return {name: node for name, node in chosen.items() if node is not None}

    def _chosenModelChannels(self, parameters):
        """The channel names of the chosen method's chosen model ([] when unknown or unreadable)."""
        if parameters.method == Method.INVASION:
            channels = self._invasionModelChannels(self.chosenInvasionModel())
            return channels if isinstance(channels, list) else []
        entry = self._models.get(parameters.model)
        return self.logic.modelChannels(entry)

    def chosenInvasionModel(self):
        """The invasion model's id (or package path) in the selector, or None when none is listed."""
        index = self.ui.invasionModelComboBox.currentIndex
        return self.ui.invasionModelComboBox.itemData(index) if index >= 0 else None

    def _invasionModelChannels(self, model):
        """The channel names of an invasion model, or the sentence saying why they cannot be read; read once."""
        if model is None:
            return []
        if model not in self._invasionChannels:
            try:
                self._invasionChannels[model] = self.logic.invasionModelChannels(model)
            except ValueError as error:
                self._invasionChannels[model] = str(error)
        return self._invasionChannels[model]

    # --- what the start button still needs

    def _whyPredictionCannotStart(self, parameters):
        """One sentence saying what the start button still needs, or None when it can start."""
        if not (parameters.t1c and parameters.flair and parameters.lesion):
            return "Choose the CE-T1, the FLAIR and the lesion segmentation."
        if parameters.method == Method.INVASION:
            return self._whyInvasionCannotStart(parameters)
        entry = self._models.get(parameters.model)
        return self._missingDscSentence(parameters) or self._missingMapSentence(
            entry.get("title", parameters.model) if entry else parameters.model, self.logic.modelChannels(entry))

    def _whyInvasionCannotStart(self, parameters):
        model = self.chosenInvasionModel()
        if model is None:
            return "No invasion model is installed: Models.json lists none."
        channels = self._invasionModelChannels(model)
        if isinstance(channels, str):
            return channels
        title = self._invasionModels.get(model, {}).get("title", model)
        if "ncbv" in channels and parameters.dsc is None:
            return (f"The invasion model '{title}' needs nCBV, which is computed from a DSC series: choose the DSC "
                    "series.")
        return self._missingMapSentence(title, channels)

    def _missingDscSentence(self, parameters):
        """Why the chosen model cannot run without the DSC series (it has an nCBV channel), or None."""
        entry = self._models.get(parameters.model)
        if parameters.dsc is not None or not self.logic.modelNeedsNcbv(entry):
            return None
        withoutNcbv = [e.get("title", e["id"]) for e in self._models.values() if not self.logic.modelNeedsNcbv(e)]
        alternative = f", or the model '{withoutNcbv[0]}'" if withoutNcbv else ""
        return (f"The model '{entry.get('title', parameters.model)}' needs nCBV, which is computed from a DSC "
                f"series: choose the DSC series{alternative}.")

    def _missingMapSentence(self, title, channels):
        """The first map the model needs that no selector has a volume for, in one sentence; or None."""
        chosen = self.chosenMaps(channels)
        for name in self.logic.mapsNeeded(channels):
            if name not in chosen:
                return self.logic.missingMapSentence(title, name, channels)
        return None

    def _modelDescription(self, parameters):
        # What is missing is said here too: a disabled button's tooltip is easy to miss.
        if parameters.method == Method.INVASION:
            model = self.chosenInvasionModel()
            entry = self._invasionModels.get(model, {})
            notice = INVASION_SYNTHETIC_NOTICE if entry.get("synthetic") else ""
            reason = self._whyInvasionCannotStart(parameters)
            return " ".join(text for text in (entry.get("description", ""), notice, reason) if text)
        entry = self._models.get(parameters.model)
        if entry is None:
            return f"The model '{parameters.model}' is not installed."
        missingMap = self._missingMapSentence(entry.get("title", parameters.model), self.logic.modelChannels(entry))
        return " ".join(text for text in (entry.get("description", ""), self._missingDscSentence(parameters),
                                          missingMap) if text)

    def onPredictButton(self):
        parameters = self._parameterNode
        if parameters.method == Method.INVASION:
            self._startOrCancel("invasion", "Could not start the invasion map.", self._startInvasion)
            return
        maps = self.chosenMaps(self.logic.modelChannels(self._models.get(parameters.model)))
        self._startOrCancel("predict", "Could not start the prediction.", lambda: self.logic.startPrediction(
            parameters.t1c, parameters.flair, parameters.lesion, parameters.model, dscNode=parameters.dsc,
            echoTimeMs=parameters.echoTimeMs, device=parameters.device, threshold=parameters.threshold,
            minVoxels=parameters.minVoxels, maps=maps))

    def _startInvasion(self):
        parameters = self._parameterNode
        model = self.chosenInvasionModel()
        if model is None:
            raise ValueError("No invasion model is installed: Models.json lists none.")
        channels = self._invasionModelChannels(model)
        return self.logic.startInvasion(parameters.t1c, parameters.flair, parameters.lesion, model,
                                        dscNode=parameters.dsc, echoTimeMs=parameters.echoTimeMs,
                                        maps=self.chosenMaps(channels if isinstance(channels, list) else []))

    def onRadiomicsButton(self):
        self._startOrCancel("radiomics", "Could not start the nCBV feature extraction.", self._startRadiomics)

    def _startRadiomics(self):
        parameters = self._parameterNode
        try:
            return self.logic.startRadiomics(parameters.ncbv, parameters.lesion)
        except UnregisteredMapError as error:
            question = f"{error}\n\nIs '{parameters.ncbv.GetName()}' registered to the CE-T1? Compute anyway?"
            if not slicer.util.confirmYesNoDisplay(question, windowTitle="nCBV radiomics"):
                return None
            return self.logic.startRadiomics(parameters.ncbv, parameters.lesion, assumeRegistered=True)

    def onGenerateButton(self):
        self._startOrCancel("phantom", "Could not start generating the synthetic case.", self._startSyntheticCase)

    def _startSyntheticCase(self):
        parameters = self._parameterNode
        folder = os.path.join(tempfile.mkdtemp(prefix="SyntheticGliomaCase-", dir=slicer.app.temporaryPath), "case")
        return self.logic.startSyntheticCase(folder, parameters.seed, parameters.size, parameters.cavity), folder

    def _startOrCancel(self, kind, failure, start):
        """A job button: Cancel while its job runs, else ``start()`` -> (runner, folder), or None if the user
        declined. Python packages the job needs and Slicer lacks are offered first (see _offerPackages)."""
        if self._job is not None:
            self._cancel()
            return
        with slicer.util.tryWithErrorDisplay(failure):  # no wait cursor: a question may be asked
            missing = self.logic.missingPackages(kind)
            started = self._offerPackages(missing) if missing else start()
            if started is not None:
                self._start(kind, *started, installing=bool(missing))

    def _offerPackages(self, missing):
        """Ask once, then pip in the background: -> (runner, folder), or None."""
        if not mrml.offer_packages(missing, "Glioma Progression"):
            return None
        missing = mrml.packages_left_after_extensions(missing)
        if not missing:
            self.ui.statusLabel.text = "PyTorch is installed; press the button again to start."
            return None
        return mrml.start_package_install(missing)

    def _start(self, kind, runner, folder, installing=False):
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.logTextEdit.clear()
        self._job = mrml.BackgroundJob(kind, runner, folder, onProgress=self._showProgress, onLines=self._showLines,
                                       onFinished=self._onJobFinished, installing=installing)
        self.updateGui()

    def _showProgress(self, fraction, message):
        self.ui.progressBar.setRange(0, 0 if fraction is None else 100)  # None: busy (pip resolving, building)
        self.ui.progressBar.value = int(100 * (fraction or 0))
        self.ui.statusLabel.text = message

    def _showLines(self, lines):
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)

    def _onJobFinished(self, job):
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.updateGui()
        self.ui.progressBar.setRange(0, 100)
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled; nothing was loaded."
            return
        if job.installing:
            self.ui.statusLabel.text = mrml.package_install_outcome(job)
            return
        with slicer.util.tryWithErrorDisplay("The background work failed.", waitCursor=True):
            {"phantom": self._loadSyntheticCase, "radiomics": self._showRadiomics,
             "predict": self._showPrediction, "invasion": self._showInvasion}[job.kind](job)

    def _loadSyntheticCase(self, job):
        nodes = self.logic.finishSyntheticCase(job.runner, job.folder)
        slicer.util.setSliceViewerLayers(background=nodes["t1c"], fit=True)
        self.ui.statusLabel.text = f"Loaded the synthetic case (synthetic, not patient data) from {job.folder}."

    def _showRadiomics(self, job):
        table = self.logic.finishRadiomics(job.runner, job.folder)
        self.logic.showTable(table)
        self.ui.statusLabel.text = self.logic.radiomicsSummary(table)

    def _showPrediction(self, job):
        nodes = self.logic.finishPrediction(job.runner, job.folder)
        parameters = self.logic.getParameterNode()  # also when the module is no longer shown
        if nodes["ncbv"] is not None and parameters.ncbv is None:
            parameters.ncbv = nodes["ncbv"]  # the map radiomics should use
        slicer.util.setSliceViewerLayers(background=parameters.t1c, foreground=nodes["probability"],
                                         foregroundOpacity=0.5)
        self.ui.verdictLabel.text = "\n".join([self.logic.verdictText(nodes["verdict"], nodes["model"]),
                                               *(self.logic.noteLine(note) for note in nodes["notes"])])
        self.ui.statusLabel.text = f"Prediction finished; files in {job.folder}."

    def _showInvasion(self, job):
        nodes = self.logic.finishInvasion(job.runner, job.folder)
        parameters = self.logic.getParameterNode()  # also when the module is no longer shown
        slicer.util.setSliceViewerLayers(background=parameters.t1c, foreground=nodes["probability"],
                                         foregroundOpacity=0.5)
        self.ui.verdictLabel.text = self.logic.invasionText(nodes["invasion"])
        self.ui.statusLabel.text = f"Invasion map finished; files in {job.folder}."

    def _cancel(self):
        if self._job is not None:
            self._job.cancel()


#
# Logic
#


class GliomaProgressionLogic(ScriptedLoadableModuleLogic):
    """Headless-usable logic: takes nodes and values, returns nodes; raises ValueError on bad input. Long work
    (prediction, synthetic case) runs in a background process: start* returns it, finish* loads its results."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.loadedNodes = {}

    def getParameterNode(self):
        return GliomaProgressionParameterNode(super().getParameterNode())

    # --- Python packages (inside Slicer)

    requirementsFile = None  # None: the extension's Resources/requirements.txt (tests give another)
    def missingPackages(self, kind):
        """Packages the job ``kind`` (predict, invasion, radiomics, phantom) needs that are missing (empty outside
        Slicer). The lists are read when asked, so that a test can change them."""
        packages = {"predict": dependencies.PREDICT, "radiomics": dependencies.RADIOMICS,
                    "phantom": dependencies.SYNTHETIC_CASE,
                    # scikit-learn runs the invasion classifier; until dependencies declares the invasion's list
                    "invasion": dependencies.INVASION}
        return mrml.missing_packages(packages[kind], self.requirementsFile)

    # --- models

    @staticmethod
    def availableModels():
        from GliomaProgressionLib.models.packages import available_models

        return available_models()

    def modelEntry(self, modelId):
        return next((entry for entry in self.availableModels() if entry["id"] == modelId), None)

    @staticmethod
    def modelNeedsNcbv(entry):
        """Whether a model (its Models.json entry; None: unknown) has an nCBV channel, which needs a DSC series."""
        return bool(entry) and "ncbv" in [channel["name"] for channel in entry.get("channels", [])]

    @staticmethod
    def modelChannels(entry):
        """The channel names a progression model (its Models.json entry; None: unknown, []) takes, in order."""
        return [channel["name"] for channel in entry.get("channels", [])] if entry else []

    @staticmethod
    def mapsNeeded(channels):
        """The maps (adc, fa, md, map_<name>) that ``channels`` need from the scene, in model order: p and q are
        derived from MD and FA (case.channels.DERIVED), CE-T1, FLAIR and nCBV have inputs of their own."""
        return map_sources(channels)

    @staticmethod
    def missingMapSentence(model, name, channels):
        """One sentence: the model needs the map ``name`` (for the derived channels among ``channels``)."""
        modality = channel_modality(name)
        derived = [channel for channel in channels if name in DERIVED.get(channel, ()) and channel != name]
        purpose = f" (to derive {' and '.join(derived)})" if derived and name not in channels else ""
        return f"The model '{model}' needs the {modality} map{purpose}: choose the {modality} volume."

    def _checkMaps(self, model, channels, maps):
        missing = [name for name in self.mapsNeeded(channels) if (maps or {}).get(name) is None]
        if missing:
            raise ValueError(self.missingMapSentence(model, missing[0], channels))
        return {name: maps[name] for name in self.mapsNeeded(channels)}

    # --- invasion models (seed 004)

    @staticmethod
    def availableInvasionModels():
        from GliomaProgressionLib.models.invasion_packages import available_invasion_models

        return available_invasion_models()

    def invasionModelChannels(self, model):
        """The channel names an invasion model (a listed id, or a package zip or folder) takes: from its
        Models.json entry, else from the package (read without running anything of it). ValueError when it cannot
        be read."""
        from GliomaProgressionLib.models.invasion_packages import resolve_invasion_model

        entry = next((e for e in self.availableInvasionModels() if e.get("id") == model), None)
        if entry is not None and entry.get("channels"):
            return [str(name) for name in entry["channels"]]
        return list(resolve_invasion_model(model).model.channels)

    # --- prediction

    def startPrediction(self, t1cNode, flairNode, lesionNode, model, dscNode=None, echoTimeMs=30.0, device="auto",
                        threshold=0.5, minVoxels=1, tta=None, maps=None):
        """Write the inputs to a job folder and start one background process that prepares the case (registration,
        nCBV) and runs the model (``runs.predict.PredictionJob``). ``maps``: channel name -> volume node of the maps
        the model names (adc, fa, md, map_<name>; MD and FA for p and q), each registered to CE-T1 by the job.
        Returns (process, job folder)."""
        from GliomaProgressionLib.runs.predict import PredictionJob, PredictionSettings

        if t1cNode is None or flairNode is None or lesionNode is None:
            raise ValueError("Choose the CE-T1, the FLAIR and the lesion segmentation.")
        settings = PredictionSettings(threshold=threshold, min_voxels=int(minVoxels), device=device,
                                      tta=tta).validated()
        entry = self.modelEntry(model) if isinstance(model, str) else None
        needsNcbv = self.modelNeedsNcbv(entry)
        if needsNcbv and dscNode is None:
            raise ValueError(f"The model '{model}' needs the DSC series (it uses nCBV).")
        # A model outside Models.json (a package path): only the job can tell which maps it uses; it gets all given.
        maps = self._checkMaps(model, self.modelChannels(entry), maps) if entry is not None else dict(maps or {})
        low, high = ECHO_TIME_MS_RANGE
        if not low <= echoTimeMs <= high:
            raise ValueError(f"The DSC echo time must be between {low:g} and {high:g} ms, got {echoTimeMs:g}.")
        self._resultsBeside = t1cNode
        self._predictionNotes = self._perfusionNotes(model, dscNode, entry)
        # A model outside Models.json (a package path) may use nCBV: only the job can tell, so it gets the DSC.
        useDsc = dscNode is not None and (needsNcbv or entry is None)
        folder = tempfile.mkdtemp(prefix="GliomaProgression-")
        try:
            files = self._writeCaseFolder(os.path.join(folder, "inputs"), t1cNode, flairNode, lesionNode,
                                          dscNode if useDsc else None, echoTimeMs, maps)
            job = PredictionJob(model=str(model), out=os.path.join(folder, "results"), settings=settings, **files)
            return job.start(), folder
        except Exception:
            self.discardJobFolder(folder)
            raise

    @staticmethod
    def _perfusionNotes(model, dscNode, entry):
        """What the results must say about perfusion (the same words as the report of ``gliomaprog run``)."""
        if dscNode is None:
            return [PERFUSION_SKIPPED]
        if entry is not None and not GliomaProgressionLogic.modelNeedsNcbv(entry):
            return [f"the DSC series was not used: the model '{model}' has no nCBV channel"]
        return []

    @staticmethod
    def noteLine(note):
        """A note as a sentence of its own line."""
        return note[0].upper() + note[1:] + "."

    @staticmethod
    def _writeCaseFolder(inputs, t1cNode, flairNode, lesionNode, dscNode, echoTimeMs, maps=None):
        """The series as files for the job process, named as a case folder names them (``case.folder.read_case``;
        the lesion as BraTS labels on the CE-T1 grid, each map on its own grid); -> the paths by PredictionJob
        field (``maps``: channel name -> path, only when there are maps)."""
        from GliomaProgressionLib.case.files import write_json, write_volume
        from GliomaProgressionLib.mrml import brats_labels_from_segmentation

        os.mkdir(inputs)
        files = {name: os.path.join(inputs, f"{name}.nii.gz") for name in ("t1c", "flair", "lesion")}
        write_volume(mrml.volume_from_node(t1cNode), files["t1c"])
        write_volume(mrml.volume_from_node(flairNode), files["flair"])
        write_volume(brats_labels_from_segmentation(lesionNode, t1cNode), files["lesion"])
        if dscNode is not None:
            series, times = mrml.volume_from_sequence(dscNode)
            files["dsc"], files["dsc_json"] = os.path.join(inputs, "dsc.nii.gz"), os.path.join(inputs, "dsc.json")
            write_volume(series, files["dsc"],
                         time_spacing=float(np.median(np.diff(times))) if len(times) > 1 else 1.0)
            write_json({"EchoTime": echoTimeMs / 1000.0, "FrameTimes": [float(t) for t in times]}, files["dsc_json"])
        if maps:
            files["maps"] = {name: os.path.join(inputs, f"{name}.nii.gz") for name in maps}
            for name, node in maps.items():
                write_volume(mrml.volume_from_node(node), files["maps"][name])
        return files

    def _jobResults(self, runner, folder, waitForCompletion, running, failed):
        """The results folder of a background job that has ended; ValueError ``running`` while it has not, and
        ``failed: <its last error line>`` (the job folder removed) when it ended badly."""
        code = runner.wait() if waitForCompletion else runner.poll()
        if code is None:
            raise ValueError(running)
        if code != 0:
            message = runner.error_message()
            self.discardJobFolder(folder)
            raise ValueError(f"{failed}: {message}")
        return os.path.join(folder, "results")

    def finishPrediction(self, runner, folder, waitForCompletion=False, name=None):
        """Load a finished prediction: heat map (0-1), the PROGRESSION_NAME segment, verdict, and the notes
        about perfusion (PERFUSION_SKIPPED without a DSC series). Returns nodes."""
        import json

        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.case.files import read_volume

        results = self._jobResults(runner, folder, waitForCompletion, "The prediction is still running.",
                                   "The prediction failed")
        prediction = json.loads(open(os.path.join(results, "prediction.json")).read())
        name = name or "Progression"
        probability, segmentation = self._loadHeatMapAndSegment(
            os.path.join(results, "progression_prob.nii.gz"), os.path.join(results, "progression.nii.gz"),
            PROGRESSION_NAME, name)
        loaded = [probability, segmentation]
        channels = [channel["name"] for channel in prediction["model"]["channels"]]
        ncbv = None
        if "ncbv" in channels:  # the nCBV the model saw: registered to CE-T1, on the 1 mm reference grid
            path = os.path.join(results, "inputs", f"case_{channels.index('ncbv'):04d}.nii.gz")
            ncbv = mrml.node_from_volume(read_volume(path), f"{name} nCBV (registered to CE-T1)")
            ncbv.SetAttribute(ALIGNED_WITH_CE_T1, "true")
            loaded.append(ncbv)
        if getattr(self, "_resultsBeside", None) is not None:
            mrml.place_beside(loaded, self._resultsBeside)
        self.loadedNodes = {"probability": probability, "segmentation": segmentation, "ncbv": ncbv,
                            "verdict": prediction["verdict"], "model": prediction["model"], "folder": results,
                            "notes": list(getattr(self, "_predictionNotes", []))}
        return self.loadedNodes

    def _loadHeatMapAndSegment(self, probabilityPath, maskPath, segmentName, name):
        """A probability map (0-1) as a heat-map volume '<name> probability' and its mask as a segmentation
        '<name> <segmentName>' with that one segment (empty when nothing was found: it says so)."""
        from CTVPlannerLib import terminology
        from GliomaProgressionLib.case.files import read_volume
        from GliomaProgressionLib.report.scene import PROGRESSION_COLOUR

        probability = mrml.node_from_volume(read_volume(probabilityPath), f"{name} probability")
        self._showAsHeatMap(probability)
        mask = read_volume(maskPath)
        segment, neoplasm = (segmentName, PROGRESSION_COLOUR), terminology.entry("neoplasm")
        segmentation = mrml.segmentation_from_labelmap(mask, {1: segment}, f"{name} {segmentName.lower()}",
                                                       terminology={1: neoplasm})
        if segmentation.GetSegmentation().GetNumberOfSegments() == 0:  # nothing found: say so with an empty segment
            emptyId = segmentation.GetSegmentation().AddEmptySegment("", segment[0], segment[1])
            segmentation.GetSegmentation().GetSegment(emptyId).SetTerminology(neoplasm)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(probability)
        return probability, segmentation

    @staticmethod
    def _showAsHeatMap(node):
        display = node.GetDisplayNode()
        if display is None:
            return
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        for colourId in ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeRainbow"):
            colour = slicer.mrmlScene.GetNodeByID(colourId)
            if colour is not None:
                display.SetAndObserveColorNodeID(colour.GetID())
                break

    @staticmethod
    def verdictText(verdict, model):
        outcome = "Progression predicted" if verdict["progression_predicted"] else "No progression predicted"
        text = (f"{outcome}: {verdict['predicted_volume_ml']} mL inside the non-enhancing lesion "
                f"(max p {verdict['max_probability_in_nel']}).")
        if model.get("synthetic"):
            text += " Demo model trained on synthetic data - not for clinical use."
        return text

    @staticmethod
    def discardJobFolder(folder):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    def predict(self, t1cNode, flairNode, lesionNode, model, dscNode=None, echoTimeMs=30.0, **settings):
        """Blocking prediction (scripts and tests)."""
        runner, folder = self.startPrediction(t1cNode, flairNode, lesionNode, model, dscNode, echoTimeMs, **settings)
        return self.finishPrediction(runner, folder, waitForCompletion=True)

    # --- invasion map (seed 004: Yan et al. 2020)

    def startInvasion(self, t1cNode, flairNode, lesionNode, model, dscNode=None, echoTimeMs=30.0, maps=None):
        """Write the scene's series as a case folder (the DSC series only when the model names nCBV; the maps it
        names, ``maps``: channel name -> volume node) and start one background process that prepares the case and
        maps invasion (``runs.invasion_job.InvasionJob``). ``model``: a listed invasion model's id or a package
        path. Returns (process, job folder)."""
        from GliomaProgressionLib.runs.invasion_job import InvasionJob

        if t1cNode is None or flairNode is None or lesionNode is None:
            raise ValueError("Choose the CE-T1, the FLAIR and the lesion segmentation.")
        channels = self.invasionModelChannels(str(model))
        useDsc = "ncbv" in channels
        if useDsc and dscNode is None:
            raise ValueError(f"The invasion model '{model}' needs nCBV, which is computed from a DSC series: choose "
                             "the DSC series.")
        low, high = ECHO_TIME_MS_RANGE
        if useDsc and not low <= echoTimeMs <= high:
            raise ValueError(f"The DSC echo time must be between {low:g} and {high:g} ms, got {echoTimeMs:g}.")
        maps = self._checkMaps(model, channels, maps)
        self._resultsBeside = t1cNode
        folder = tempfile.mkdtemp(prefix="GliomaProgression-invasion-")
        try:
            case = os.path.join(folder, "case")
            self._writeCaseFolder(case, t1cNode, flairNode, lesionNode, dscNode if useDsc else None, echoTimeMs, maps)
            return InvasionJob(case, os.path.join(folder, "results"), str(model)).start(), folder
        except Exception:
            self.discardJobFolder(folder)
            raise

    def finishInvasion(self, runner, folder, waitForCompletion=False, name=None):
        """Load a finished invasion map: heat map (0-1, on the model's feature grid) and the INVASION_NAME segment
        (p >= the model's threshold in the peritumoral region), beside the CE-T1; ``invasion`` holds
        invasion.json. Returns nodes."""
        import json

        from GliomaProgressionLib.runs.invasion import INVASION_JSON, LABEL_FILE, PROBABILITY_FILE

        results = self._jobResults(runner, folder, waitForCompletion, "The invasion map is still being computed.",
                                   "The invasion map failed")
        with open(os.path.join(results, INVASION_JSON), encoding="utf-8") as document:
            invasion = json.load(document)
        probability, segmentation = self._loadHeatMapAndSegment(
            os.path.join(results, PROBABILITY_FILE), os.path.join(results, LABEL_FILE), INVASION_NAME,
            name or "Invasion")
        if getattr(self, "_resultsBeside", None) is not None:
            mrml.place_beside([probability, segmentation], self._resultsBeside)
        self.loadedNodes = {"probability": probability, "segmentation": segmentation, "invasion": invasion,
                            "folder": results}
        return self.loadedNodes

    def mapInvasion(self, t1cNode, flairNode, lesionNode, model, dscNode=None, echoTimeMs=30.0, maps=None):
        """Blocking invasion map (scripts and tests)."""
        runner, folder = self.startInvasion(t1cNode, flairNode, lesionNode, model, dscNode, echoTimeMs, maps)
        return self.finishInvasion(runner, folder, waitForCompletion=True)

    @staticmethod
    def invasionText(invasion):
        """What the panel says of an invasion map (invasion.json): the volume at the threshold, the measures
        against a truth when the case had one, the synthetic model's notice."""
        text = (f"{INVASION_NAME}: {invasion['label_volume_ml']} mL of the {invasion['region_volume_ml']} mL "
                f"peritumoral region with p >= {invasion['threshold']:g}.")
        evaluation = invasion.get("evaluation") or {}
        if evaluation.get("auc") is not None:
            text += f" Against {evaluation['truth_description']}: AUC {evaluation['auc']:.2f}."
        notice = invasion.get("model", {}).get("notice")
        return f"{text} {notice}" if notice else text

    # --- CBV radiomics (seed 001)

    def startRadiomics(self, ncbvNode, lesionNode, assumeRegistered=False):
        """Write the nCBV map and the lesion labels (resampled onto the nCBV grid) to a job folder and start
        ``gliomaprog radiomics extract`` on them in a background process. Returns (process, job folder).

        The lesion is drawn on CE-T1; an nCBV map not registered to CE-T1 (the DSC grid: head motion between the
        series) would put the regions in the wrong place. Maps this module registered carry the attribute
        ``ALIGNED_WITH_CE_T1``; any other map needs ``assumeRegistered=True`` (the GUI asks the user)."""
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.mrml import brats_labels_from_segmentation
        from GliomaProgressionLib.case.files import write_volume

        if ncbvNode is None or lesionNode is None:
            raise ValueError("Choose the nCBV map and the lesion segmentation.")
        if not assumeRegistered and ncbvNode.GetAttribute(ALIGNED_WITH_CE_T1) != "true":
            raise UnregisteredMapError(
                f"The nCBV map '{ncbvNode.GetName()}' is not known to be registered to the CE-T1 the lesion was "
                "drawn on; a map on the DSC grid would put the regions off by the head motion between the series.")
        labels = brats_labels_from_segmentation(lesionNode, ncbvNode)  # resampled onto the nCBV grid
        folder = tempfile.mkdtemp(prefix="GliomaProgression-radiomics-")
        case = os.path.join(folder, "case")
        os.mkdir(case)
        try:
            write_volume(mrml.volume_from_node(ncbvNode), os.path.join(case, "ncbv.nii.gz"))
            write_volume(labels, os.path.join(case, "lesion.nii.gz"))
        except Exception:
            self.discardJobFolder(folder)
            raise
        self._radiomicsSource = ncbvNode
        command = process.gliomaprog_command("radiomics", "extract", "--case-dir", case, "--out",
                                             os.path.join(folder, "features.csv"))
        return process.BackgroundProcess(command).start(), folder

    def finishRadiomics(self, runner, folder, waitForCompletion=False, name=None):
        """The finished extraction as a new table node: one row per feature ('voxels' first), one column per
        region. A region too small for features gets NaN, and the reason in the node attribute
        ``GliomaProgression.warning.<region>``. The job folder is removed."""
        from GliomaProgressionLib import mrml
        from GliomaProgressionLib.cohort.radiomics_features import region_columns_from_csv

        code = runner.wait() if waitForCompletion else runner.poll()
        if code is None:
            raise ValueError("The feature extraction is still running.")
        try:
            if code != 0:
                raise ValueError(f"The feature extraction failed: {runner.error_message()}")
            columns, warnings = region_columns_from_csv(os.path.join(folder, "features.csv"))
        finally:
            self.discardJobFolder(folder)
        source = getattr(self, "_radiomicsSource", None)
        table = mrml.table_from_columns(columns, name or f"{source.GetName() if source else 'nCBV'} radiomics")
        for region, warning in warnings.items():
            table.SetAttribute(f"GliomaProgression.warning.{region}", warning)
        if source is not None:
            mrml.place_beside([table], source)
        return table

    def computeRadiomics(self, ncbvNode, lesionNode, assumeRegistered=False, name=None):
        """Blocking feature extraction (scripts and tests)."""
        runner, folder = self.startRadiomics(ncbvNode, lesionNode, assumeRegistered)
        return self.finishRadiomics(runner, folder, waitForCompletion=True, name=name)

    @staticmethod
    def radiomicsSummary(table):
        """One line for the status label: features per region and any region left without features."""
        features = table.GetNumberOfRows() - 1  # the first row is the voxel count
        regions = [table.GetColumnName(i) for i in range(1, table.GetNumberOfColumns())]
        notes = [f"{region}: {table.GetAttribute(f'GliomaProgression.warning.{region}')}" for region in regions
                 if table.GetAttribute(f"GliomaProgression.warning.{region}")]
        return f"{features} nCBV features per region in table '{table.GetName()}'." + "".join(f" {n}." for n in notes)

    @staticmethod
    def showTable(table):
        """Show the table in a layout with a table view (application only)."""
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    # --- synthetic case

    def startSyntheticCase(self, caseFolder, seed=0, size="small", cavity=False):
        """Start generating a synthetic case in a background process; returns the running process."""
        from GliomaProgressionLib.case.files import check_new_output_folder

        if int(seed) < 0:
            raise ValueError(f"The seed must be zero or positive, got {seed}.")
        if size not in SIZES:
            raise ValueError(f"The case size must be one of {', '.join(SIZES)}, got {size!r}.")
        check_new_output_folder(caseFolder, "The case folder")
        arguments = ["phantom", "--out", str(caseFolder), "--seed", str(int(seed)), "--size", size]
        if cavity:
            arguments.append("--cavity")
        return process.BackgroundProcess(process.gliomaprog_command(*arguments)).start()

    def finishSyntheticCase(self, runner, caseFolder, waitForCompletion=False, name=None):
        """Load a finished case into the scene; with ``waitForCompletion`` block until the process ends."""
        from GliomaProgressionLib.report.scene import load_case_into_scene

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
        self.test_PredictionOnSyntheticCase()
        self.setUp()
        self.test_BadInputIsRefused()
        self.setUp()
        self.test_RadiomicsTable()

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

    def test_PredictionOnSyntheticCase(self):
        self.delayDisplay("Predicting progression on a synthetic case with the multiparametric demo model")
        from GliomaProgressionLib import mrml
        from CTVPlannerLib.lesion import LESION_SEGMENTS
        from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

        case = generate_case(PhantomConfig(seed=901, size="small"))
        t1c = mrml.node_from_volume(case.t1c, "CE-T1")
        flair = mrml.node_from_volume(case.flair, "FLAIR")
        dsc, _ = mrml.sequence_from_volume(case.dsc, case.frame_times_s, "DSC")
        lesion = mrml.segmentation_from_labelmap(case.lesion, LESION_SEGMENTS, "Lesion")
        nodes = GliomaProgressionLogic().predict(t1c, flair, lesion, "multiparametric", dscNode=dsc, device="cpu")
        probability = slicer.util.arrayFromVolume(nodes["probability"])
        self.assertGreaterEqual(float(probability.min()), 0.0)
        self.assertLessEqual(float(probability.max()), 1.0)
        segmentation = nodes["segmentation"].GetSegmentation()
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), PROGRESSION_NAME)
        self.assertIn("progression_predicted", nodes["verdict"])
        self.assertTrue(nodes["model"]["synthetic"])
        ncbv = nodes["ncbv"]  # the registered nCBV the model saw, ready for CBV radiomics
        self.assertEqual(ncbv.GetAttribute(ALIGNED_WITH_CE_T1), "true")
        self.assertEqual(ncbv.GetImageData().GetDimensions(), nodes["probability"].GetImageData().GetDimensions())
        table = GliomaProgressionLogic().computeRadiomics(ncbv, lesion)
        rows = {table.GetCellText(r, 0): r for r in range(table.GetNumberOfRows())}
        mean = lambda column: float(table.GetCellText(rows["original_firstorder_Mean"], column))
        self.assertGreater(mean(1), 1.5 * mean(2))  # enhancing rim above the non-enhancing lesion
        self.delayDisplay("Heat map, segment, verdict and registered nCBV loaded")

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

    def test_RadiomicsTable(self):
        """A small synthetic case: an enhancing sphere (nCBV about 3) inside a non-enhancing shell (about 1); the
        lesion segmentation is stored on a grid shifted by two voxels, so it must be resampled onto the map."""
        self.delayDisplay("Computing nCBV radiomics on a small synthetic case")
        from GliomaProgressionLib import mrml
        from CTVPlannerLib.lesion import LESION_SEGMENTS
        from GliomaProgressionLib.case.geometry import Volume
        from GliomaProgressionLib.cohort.radiomics_features import expected_feature_names, make_extractor

        shape = (20, 24, 24)
        k, j, i = np.indices(shape)
        radius = np.sqrt((k - 10) ** 2 + (j - 12) ** 2 + (i - 12) ** 2)
        labels = np.where(radius < 4, 3, np.where(radius < 8, 2, 0)).astype(np.uint8)
        noise = np.random.default_rng(0).standard_normal(shape)
        ijkToRas = np.diag([-1.0, -1.0, 1.0, 1.0])  # 1 mm, LPS-like axes: the lesion must still land on the map
        ncbv = mrml.node_from_volume(Volume((1.0 + 0.3 * noise + 2.0 * (labels == 3)).astype(np.float32), ijkToRas),
                                     "nCBV")
        shifted = ijkToRas.copy()
        shifted[:3, 3] = ijkToRas[:3, :3] @ [2.0, 0.0, 0.0]  # the lesion array starts two columns later
        lesion = mrml.segmentation_from_labelmap(Volume(labels[:, :, 2:], shifted), LESION_SEGMENTS, "Lesion")
        logic = GliomaProgressionLogic()
        with self.assertRaises(UnregisteredMapError):  # nothing says this map is registered to the CE-T1
            logic.computeRadiomics(ncbv, lesion)
        ncbv.SetAttribute(ALIGNED_WITH_CE_T1, "true")
        table = logic.computeRadiomics(ncbv, lesion)

        self.assertEqual(table.GetClassName(), "vtkMRMLTableNode")
        names = expected_feature_names(make_extractor())
        self.assertEqual(table.GetNumberOfRows(), 1 + len(names))
        self.assertEqual([table.GetColumnName(c) for c in range(3)], ["feature", "enhancing", "nonenhancing"])
        rows = {table.GetCellText(r, 0): r for r in range(table.GetNumberOfRows())}
        value = lambda feature, column: float(table.GetCellText(rows[feature], column))
        self.assertEqual(value("voxels", 1), float((labels == 3).sum()))
        self.assertEqual(value("voxels", 2), float((labels == 2).sum()))
        self.assertAlmostEqual(value("original_firstorder_Mean", 1), 3.0, delta=0.15)
        self.assertAlmostEqual(value("original_firstorder_Mean", 2), 1.0, delta=0.1)
        self.assertEqual(table.GetAttribute("GliomaProgression.warning.enhancing"), "")
        self.assertIn(str(len(names)), logic.radiomicsSummary(table))
        with self.assertRaises(ValueError):
            logic.computeRadiomics(None, lesion)
        self.delayDisplay("Per-region nCBV feature table computed")
