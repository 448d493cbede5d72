"""The DSC Perfusion module's *Perfusion habitats* section on Slicer's own Python layer (see layer.py).

The panel is driven as a user would: the DSC series and the lesion chosen in Inputs, the habitat model from the
registry, Compute habitats pressed. The case is a miniature DSC brain built here (a disk of grey rim, white core,
CSF and an artery, with a lesion whose enhancing and non-enhancing parts hold two of the phantom's habitat curve
families each): the phantom itself takes longer to make than this whole file may take to run.
"""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
from conftest import savePanel
from layer import REPO
from PySide6.QtWidgets import QMessageBox

from CTVPlannerLib.lesion import LESION_SEGMENTS
from DSCPerfusionLib.habitats.labels import HABITATS, REGIONS
from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.geometry import Volume
from GliomaProgressionLib.models.habitat_packages import SYNTHETIC_NOTICE, available_habitat_models
from DSCPerfusionLib.simulation import add_rician_noise, simulate_dsc
from GliomaProgressionLib.phantom.synthetic import HABITAT_FAMILIES, PhantomConfig

SECTION_WIDGETS = {"habitatModelComboBox": "habitatModel", "outputHabitatsSelector": "outputHabitats",
                   "habitatsApplyButton": None, "habitatsProgressBar": None, "habitatsStatusLabel": None,
                   "habitatModelDescriptionLabel": None}
HABITAT_LOOK = {habitat.name: habitat.colour for habitat in HABITATS}


class MiniCase:
    """DSC series (T, K, J, I) on a 2 x 2 x 4 mm grid and its lesion (BraTS labels 2 and 3) on the same grid."""

    def __init__(self, seed=0):
        config = PhantomConfig()  # the phantom's tissue values
        shape = (6, 40, 40)
        k, j, i = np.indices(shape)
        radius = np.hypot(j - 19.5, i - 19.5)
        brain = radius < 18
        csf = radius < 3
        tissues = {"grey": brain & (radius >= 14), "white": brain & (radius < 14) & ~csf, "csf": csf}
        maps = {name: np.zeros(shape, np.float32) for name in ("cbv", "cbf", "k2", "s0")}
        for tissue, inside in tissues.items():
            for key, values in (("cbv", config.cbv), ("cbf", config.cbf), ("s0", config.dsc_s0)):
                maps[key][inside] = getattr(values, tissue)
        artery = brain & (np.abs(j - 19.5) < 2) & (np.abs(i - 4) < 1.5)  # a short vessel in the left cortex
        maps["cbv"][artery], maps["cbf"][artery], maps["s0"][artery] = 40.0, 2000.0, config.dsc_s0.grey
        fromCentre = np.hypot(j - 19.5, i - 28.0)  # the lesion sits in the right hemisphere
        self.lesion = np.zeros(shape, np.uint8)
        self.lesion[brain & (fromCentre < 7)] = 2
        self.lesion[brain & (fromCentre < 4)] = 3
        self.highAngiogenic = (self.lesion == 3) & (j < 20)  # truth: the first family of the CEL
        for part, families in ((3, ("high_angiogenic", "low_angiogenic")),
                               (2, ("infiltrated_oedema", "vasogenic_oedema"))):
            for family, half in zip(families, (j < 20, j >= 20)):
                inside = (self.lesion == part) & half
                values = HABITAT_FAMILIES[family]
                for key, value in (("cbv", values.cbv), ("cbf", values.cbf), ("k2", values.k2), ("s0", values.dsc_s0)):
                    maps[key][inside] = value
        self.times = np.arange(60) * 1.5
        simulation = simulate_dsc(self.times, maps["cbv"], maps["cbf"], maps["k2"], maps["s0"], 0.030,
                                  brain_mask=brain)
        self.signal = add_rician_noise(simulation.signal, config.dsc_s0.white / 40.0, np.random.default_rng(seed))
        self.ijk_to_ras = np.diag([2.0, 2.0, 4.0, 1.0])

    @property
    def grid(self):
        return Volume(self.signal[0], self.ijk_to_ras)


@pytest.fixture(scope="module")
def habitatCase():
    return MiniCase()


def loadInputs(case, lesionLabels=None):
    sequence, _ = mrml.sequence_from_volume(Volume(case.signal, case.ijk_to_ras), case.times, "DSC")
    labels = case.lesion if lesionLabels is None else lesionLabels
    lesion = mrml.segmentation_from_labelmap(Volume(labels, case.ijk_to_ras), LESION_SEGMENTS, "Lesion")
    return sequence, lesion


def panel():
    widget = slicer.app.selectModule("DSCPerfusion")
    return widget, widget.ui, widget._parameterNode


def segmentsOf(node):
    segmentation = node.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): tuple(segmentation.GetNthSegment(i).GetColor())
            for i in range(segmentation.GetNumberOfSegments())}


def tableColumns(table):
    return {table.GetColumnName(c): [table.GetTable().GetValue(r, c).ToString() for r in range(table.GetNumberOfRows())]
            for c in range(table.GetNumberOfColumns())}


def test_the_section_is_in_the_ui_and_offers_the_registrys_models(scene):
    root = ET.parse(REPO / "DSCPerfusion" / "Resources" / "UI" / "DSCPerfusion.ui").getroot()
    section = next(w for w in root.iter("widget") if w.get("name") == "habitatsCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton"
    inside = {w.get("name"): w for w in section.iter("widget")}
    for name, parameter in SECTION_WIDGETS.items():
        assert name in inside, name
        bound = inside[name].find("property[@name='SlicerParameterName']/string")
        assert (bound.text if bound is not None else None) == parameter, name
    widget, ui, parameters = panel()
    registry = [entry["id"] for entry in available_habitat_models()]
    assert registry and [ui.habitatModelComboBox.itemText(i) for i in range(ui.habitatModelComboBox.count)] == registry
    demo = next(entry for entry in available_habitat_models() if entry.get("synthetic"))
    parameters.habitatModel = demo["id"]
    assert SYNTHETIC_NOTICE in ui.habitatModelDescriptionLabel.text
    assert SYNTHETIC_NOTICE in ui.habitatModelComboBox.toolTip
    assert not ui.habitatsApplyButton.enabled and "DSC series" in ui.habitatsApplyButton.toolTip
    assert not ui.habitatsProgressBar.visible


def test_compute_habitats_in_the_panel_and_an_edited_result_is_kept(scene, habitatCase, monkeypatch, panelsDir):
    widget, ui, parameters = panel()
    sequence, lesion = loadInputs(habitatCase)
    ui.inputSequenceSelector.setCurrentNode(sequence)
    assert not ui.habitatsApplyButton.enabled and "lesion" in ui.habitatsApplyButton.toolTip
    ui.lesionSelector.setCurrentNode(lesion)
    assert ui.habitatsApplyButton.enabled
    shown = []
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda message, *a: shown.append(message))
    slicer.app.click(ui.habitatsApplyButton)
    habitats = parameters.outputHabitats
    assert habitats is not None and shown, "progress was shown in the status bar"
    assert not ui.habitatsProgressBar.visible and ui.habitatsApplyButton.enabled
    segments = segmentsOf(habitats)
    assert len(segments) >= 2 and set(segments) <= set(HABITAT_LOOK)
    for name, colour in segments.items():
        assert colour == pytest.approx(HABITAT_LOOK[name], abs=1e-6), name
    assert ui.habitatsStatusLabel.text.startswith("Done in") and SYNTHETIC_NOTICE in ui.habitatsStatusLabel.text
    gridNode = mrml.node_from_volume(habitatCase.grid, "DSC grid")
    high = HABITATS[0].name
    found = slicer.util.arrayFromSegmentBinaryLabelmap(
        habitats, habitats.GetSegmentation().GetSegmentIdBySegmentName(high), gridNode) > 0
    assert (found & habitatCase.highAngiogenic).sum() >= 0.9 * found.sum() > 0, "the habitat is where its curves are"

    table = slicer.mrmlScene.GetFirstNodeByName("DSC habitat fractions")
    columns = tableColumns(table)
    assert set(columns["Habitat"]) <= set(HABITAT_LOOK)
    shares = {region: dict(zip(columns["Habitat"], map(float, columns[f"{region} (%)"]))) for region in REGIONS}
    for region in REGIONS:
        assert np.nansum(list(shares[region].values())) == pytest.approx(100.0, abs=0.1), region
        for habitat in HABITATS:  # a habitat of the other region only has no share here
            if habitat.name in shares[region]:
                assert np.isnan(shares[region][habitat.name]) == (region not in habitat.regions), habitat.name
    assert shares["CEL"][high] == pytest.approx(100.0 * habitatCase.highAngiogenic.sum() / (habitatCase.lesion == 3)
                                                .sum(), abs=10.0)

    chart = slicer.mrmlScene.GetFirstNodeByName("DSC habitat curves")
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    dashed = [s.GetName() for s in series if s.GetLineStyle() == s.LineStyleDash]
    assert len(dashed) == 4 and all("(reference)" in name for name in dashed)
    assert len(series) - len(dashed) >= len(segments), "one mean curve per pattern"
    savePanel(widget, panelsDir, "DSCPerfusion-habitats")

    # Untouched, it is replaced without a question; edited, the user is asked and No keeps it.
    slicer.app.click(ui.habitatsApplyButton)
    assert parameters.outputHabitats is habitats
    first = habitats.GetSegmentation().GetNthSegmentID(0)
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(habitats, first, gridNode)
    edited[: edited.shape[0] // 2] = 0  # the user trims a habitat
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, habitats, first, gridNode)
    with slicer.app.answeringDialogs(QMessageBox.No) as asked:
        slicer.app.click(ui.habitatsApplyButton)
    assert len(asked) == 1 and "edited" in asked[0]
    kept = slicer.util.arrayFromSegmentBinaryLabelmap(habitats, first, gridNode)
    assert np.array_equal(kept, edited), "an edited habitat segmentation was overwritten"
    assert parameters.outputHabitats is not habitats and segmentsOf(parameters.outputHabitats)


def _oneSentence(text):
    return text.endswith(".") and text.count(". ") == 0 and "Traceback" not in text


def test_bad_input_is_one_sentence_in_the_panel_and_the_logic(scene, habitatCase):
    widget, ui, parameters = panel()
    labels = habitatCase.lesion
    sequence, lesion = loadInputs(habitatCase, np.where(labels == 3, 3, 0).astype(np.uint8))
    ui.inputSequenceSelector.setCurrentNode(sequence)
    ui.lesionSelector.setCurrentNode(lesion)
    with slicer.app.answeringDialogs(QMessageBox.Ok) as shown:  # Slicer's error box, closed by the user
        slicer.app.click(ui.habitatsApplyButton)
    errors = slicer.app.recorder.take()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    sentence = str(errors[0])
    assert "non-enhancing (NEL)" in sentence and _oneSentence(sentence)
    assert len(shown) == 1 and sentence in shown[0]
    assert ui.habitatsStatusLabel.text == sentence and parameters.outputHabitats is None

    logic = widget.logic
    _, fullLesion = loadInputs(habitatCase)
    fewVoxels = np.zeros(labels.shape, np.uint8)  # two voxels of each part
    for part in (2, 3):
        for voxel in np.argwhere(labels == part)[:2]:
            fewVoxels[tuple(voxel)] = part
    _, tinyLesion = loadInputs(habitatCase, fewVoxels)
    _, onlyOedema = loadInputs(habitatCase, np.where(labels == 2, 2, 0).astype(np.uint8))
    cases = {
        "DSC series": (None, fullLesion),
        "lesion segmentation": (sequence, None),
        "enhancing (CEL)": (sequence, onlyOedema),
        "voxels": (sequence, tinyLesion),
    }
    for expected, (dsc, lesionNode) in cases.items():
        with pytest.raises(ValueError) as raised:
            logic.computeHabitats(dsc, lesionNode)
        assert expected in str(raised.value) and _oneSentence(str(raised.value)), str(raised.value)
    with pytest.raises(ValueError, match="habitat model"):
        logic.computeHabitats(sequence, fullLesion, "no-such-model")


def test_an_edited_ftb_segmentation_is_kept_when_the_user_says_no(scene, habitatCase):
    """The FTB output follows the same rule as the habitats: untouched, replaced; edited, asked first."""
    widget, ui, parameters = panel()
    sequence, lesion = loadInputs(habitatCase)
    ui.inputSequenceSelector.setCurrentNode(sequence)
    ui.lesionSelector.setCurrentNode(lesion)
    slicer.app.click(ui.applyButton)
    ftb = parameters.outputFTB
    assert ftb is not None and not widget.logic.resultWasEdited(ftb)
    gridNode = mrml.node_from_volume(habitatCase.grid, "DSC grid")
    first = ftb.GetSegmentation().GetNthSegmentID(0)
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(ftb, first, gridNode)
    edited[:] = 0
    edited[2, 10:14, 10:14] = 1  # the user redraws a class
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, ftb, first, gridNode)
    assert widget.logic.resultWasEdited(ftb)
    with slicer.app.answeringDialogs(QMessageBox.No) as asked:
        slicer.app.click(ui.applyButton)
    assert len(asked) == 1 and "FTB" in asked[0] and "edited" in asked[0]
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(ftb, first, gridNode), edited)
    assert parameters.outputFTB is not ftb
