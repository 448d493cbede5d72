"""Every terminology code the extension writes onto a segment is one Slicer knows, and every scene bundle states a
Slicer version the extension runs in.

The terms come from their one declaration, ``CTVPlannerLib.terminology.TERMS``: each is looked up in Slicer's own
terminology lists (read from a Slicer checkout: ``SLICER_PYTHON_DIR``, else ``../shared/slicer-reference/
slicer-5.12.3`` beside the repository) or in the list the extension ships, by hand in the JSON and through Slicer's
Terminologies logic (slicer-core). A code written anywhere else in the modules' Python fails
``test_no_terminology_code_is_written_outside_the_declaration``.
"""

import json
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import slicer
import vtk
from CTVPlannerLib import terminology
from CTVPlannerLib.terminology import TERMS

from GliomaProgressionLib.report import scene as case_scene

from GliomaProgressionLib import mrml
from GliomaProgressionLib.report.scene import PROGRESSION_SEGMENT, PROGRESSION_TERMINOLOGY
from CTVPlannerLib.lesion import LESION_TERMINOLOGY, LESION_SEGMENTS
from GliomaProgressionLib.case.geometry import Volume

REPO = Path(__file__).resolve().parents[1]
TERMINOLOGY_RESOURCES = Path("Modules") / "Loadable" / "Terminologies" / "Resources"
SLICER_LISTS = ("SegmentationCategoryTypeModifier-DICOM-Master.json",
                "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json")
# Supported Slicer versions (CMakeLists.txt EXTENSION_DESCRIPTION): 5.12 (stable) and the 5.13 preview.
SUPPORTED_SLICER = {(5, 12), (5, 13)}
MANDATORY = ("CodeMeaning", "CodingSchemeDesignator", "CodeValue")


# --- Slicer's lists and the shipped one ---------------------------------------------------------------------------


def _slicer_resources() -> Path | None:
    roots = [Path(os.environ["SLICER_PYTHON_DIR"])] if os.environ.get("SLICER_PYTHON_DIR") else []
    roots.append(REPO.parent / "shared" / "slicer-reference" / "slicer-5.12.3")
    for root in roots:
        for candidate in (root / TERMINOLOGY_RESOURCES, root / "slicer-5.12.3" / TERMINOLOGY_RESOURCES):
            if all((candidate / name).is_file() for name in SLICER_LISTS):
                return candidate
    return None


@pytest.fixture(scope="module")
def slicer_lists() -> dict[str, dict]:
    """Slicer's terminology lists by context name."""
    folder = _slicer_resources()
    if folder is None:
        message = ("Slicer's terminology lists not found: set SLICER_PYTHON_DIR to a Slicer 5.12 source checkout "
                   f"(the folder holding {TERMINOLOGY_RESOURCES.as_posix()})")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    lists = [json.loads((folder / name).read_text(encoding="utf-8")) for name in SLICER_LISTS]
    return {data["SegmentationCategoryTypeContextName"]: data for data in lists}


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(terminology.TERMINOLOGY_FILE.read_text(encoding="utf-8"))


def _find(items: list, code) -> dict | None:
    return next((item for item in items
                 if (item["CodingSchemeDesignator"], item["CodeValue"]) == (code.scheme, code.value)), None)


@pytest.mark.parametrize("role", sorted(TERMS))
def test_every_declared_term_is_in_slicers_lists_or_the_shipped_one(role, slicer_lists, shipped):
    term = TERMS[role]
    lists = {**slicer_lists, shipped["SegmentationCategoryTypeContextName"]: shipped}
    assert term.context in lists, f"{role}: the context '{term.context}' is neither Slicer's nor the extension's"
    category = _find(lists[term.context]["SegmentationCodes"]["Category"], term.category)
    assert category is not None, f"{role}: category {term.category} is not in '{term.context}'"
    assert category["CodeMeaning"] == term.category.meaning
    found = _find(category["Type"], term.type)
    assert found is not None, f"{role}: type {term.type} is not in '{term.context}' / {term.category.meaning}"
    assert found["CodeMeaning"] == term.type.meaning
    if term.modifier is not None:
        modifier = _find(found.get("Modifier", []), term.modifier)
        assert modifier is not None and modifier["CodeMeaning"] == term.modifier.meaning


def test_slicers_terminology_logic_resolves_every_entry(slicer_lists):
    """Loaded as Slicer loads them, each entry reads back (Slicer 5.12's serialisation) and names a known type."""
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    folder = _slicer_resources()
    for name in SLICER_LISTS:
        assert logic.LoadTerminologyFromFile(str(folder / name))
    assert mrml.load_extension_terminology(terminology.TERMINOLOGY_FILE, logic)
    assert logic.IsTerminologyContextLoaded(terminology.EXTENSION_CONTEXT)
    for role, term in TERMS.items():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(term.entry(), entry), role
        assert logic.SerializeTerminologyEntry(entry) == term.entry(), role
        assert _type_in_logic(logic, term) == (term.category.meaning, term.type.meaning), role


def _type_in_logic(logic, term):
    category = slicer.vtkSlicerTerminologyCategory()
    for index in range(logic.GetNumberOfCategoriesInTerminology(term.context)):
        logic.GetNthCategoryInTerminology(term.context, index, category)
        if (category.GetCodingSchemeDesignator(), category.GetCodeValue()) != (term.category.scheme,
                                                                                term.category.value):
            continue
        found = slicer.vtkSlicerTerminologyType()
        for type_index in range(logic.GetNumberOfTypesInTerminologyCategory(term.context, category)):
            logic.GetNthTypeInTerminologyCategory(term.context, category, type_index, found)
            if (found.GetCodingSchemeDesignator(), found.GetCodeValue()) == (term.type.scheme, term.type.value):
                return category.GetCodeMeaning(), found.GetCodeMeaning()
    return None


def test_the_shipped_list_has_the_structure_of_slicers_lists(slicer_lists, shipped):
    reference = next(iter(slicer_lists.values()))
    assert set(shipped) == set(reference)
    assert shipped["@schema"] == reference["@schema"]
    assert set(shipped["SegmentationCodes"]) == {"Category"}
    assert shipped["SegmentationCategoryTypeContextName"] == terminology.EXTENSION_CONTEXT
    assert terminology.EXTENSION_CONTEXT not in slicer_lists
    category_keys = {key for data in slicer_lists.values() for c in data["SegmentationCodes"]["Category"] for key in c}
    type_keys = {key for data in slicer_lists.values() for c in data["SegmentationCodes"]["Category"]
                 for t in c["Type"] for key in t}
    codes = set()
    for category in shipped["SegmentationCodes"]["Category"]:
        assert set(category) <= category_keys, set(category) - category_keys
        assert all(isinstance(category[key], str) and category[key] for key in MANDATORY)
        assert isinstance(category["showAnatomy"], bool) and isinstance(category["Type"], list) and category["Type"]
        for entry in category["Type"]:
            assert set(entry) <= type_keys, set(entry) - type_keys
            assert all(isinstance(entry[key], str) and entry[key] for key in MANDATORY)
            colour = entry.get("recommendedDisplayRGBValue", [0, 0, 0])
            assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
            key = (category["CodeValue"], entry["CodingSchemeDesignator"], entry["CodeValue"])
            assert key not in codes, f"{key} is listed twice"
            codes.add(key)


def test_the_shipped_list_holds_only_codes_slicer_lacks_and_the_extension_uses(slicer_lists, shipped):
    used = {(t.category.value, t.type.scheme, t.type.value) for t in TERMS.values()
            if t.context == terminology.EXTENSION_CONTEXT}
    listed = {(c["CodeValue"], t["CodingSchemeDesignator"], t["CodeValue"])
              for c in shipped["SegmentationCodes"]["Category"] for t in c["Type"]}
    assert listed == used
    in_slicer = {(c["CodeValue"], t["CodingSchemeDesignator"], t["CodeValue"]) for data in slicer_lists.values()
                 for c in data["SegmentationCodes"]["Category"] for t in c["Type"]}
    assert not listed & in_slicer, "a code Slicer already lists belongs to Slicer's list, not the extension's"


def test_the_shipped_list_is_installed_with_the_ctv_planner():
    cmake = (REPO / "CTVPlanner" / "CMakeLists.txt").read_text(encoding="utf-8")
    relative = terminology.TERMINOLOGY_FILE.relative_to(REPO / "CTVPlanner").as_posix()
    assert re.search(rf"set\(MODULE_PYTHON_RESOURCES[^)]*\b{re.escape(relative)}\b", cmake), \
        f"{relative} is not in CTVPlanner/CMakeLists.txt's MODULE_PYTHON_RESOURCES"


def test_loading_the_list_headless_is_a_no_op():
    assert mrml.load_extension_terminology(terminology.TERMINOLOGY_FILE) is False
    with pytest.raises(ValueError, match="does not exist"):
        mrml.load_extension_terminology(REPO / "no-such.term.json", slicer.vtkSlicerTerminologiesModuleLogic())


def test_no_terminology_code_is_written_outside_the_declaration():
    """A serialised code (``SCT^...^...``) or terminology entry in a module's Python other than the declaration."""
    pattern = re.compile(r"\b(?:SCT|DCM|NCIt|UMLS|99[A-Z0-9]+)\^[^\^\s\"']+\^|~\^\^~|category and type - ")
    offenders = []
    for module in ("CTVPlanner", "DSCPerfusion", "GliomaProgression"):
        for path in sorted((REPO / module).rglob("*.py")):
            if path.resolve() == Path(terminology.__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, f"terminology written outside CTVPlannerLib/terminology.py: {offenders}"


def test_builders_refuse_what_is_not_declared():
    with pytest.raises(ValueError, match="kind 'OAR'"):
        terminology.target_entry("OAR")
    with pytest.raises(ValueError, match="label 5"):
        terminology.lesion_entry(5)
    assert terminology.target_entry("BOOST") == terminology.target_entry("CTV") == terminology.entry("ctv")
    assert set(LESION_TERMINOLOGY) == set(LESION_SEGMENTS)


# --- segments as written ----------------------------------------------------------------------------------------


def _segment_terminologies(node) -> dict[str, str]:
    segments = node.GetSegmentation()
    return {segments.GetNthSegment(i).GetName(): segments.GetNthSegment(i).GetTerminology()
            for i in range(segments.GetNumberOfSegments())}


@pytest.fixture
def written_scene(scene, tmp_path):
    """Segmentations as the case scene makes them (lesion, an empty prediction, CTV proposals, NAWM), written as a
    bundle and read back."""
    ijk_to_ras = np.diag([1.0, 1.0, 2.0, 1.0])
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[2:4, 3:6, 3:6], labels[2:4, 6:8, 3:6], labels[2:4, 3:6, 6:8], labels[1, 1, 1] = 1, 2, 3, 4
    reference = mrml.node_from_volume(Volume(np.zeros(labels.shape, np.int16), ijk_to_ras), "CE-T1", scene)
    lesion = mrml.segmentation_from_labelmap(Volume(labels, ijk_to_ras), LESION_SEGMENTS, "Lesion", scene,
                                             LESION_TERMINOLOGY)
    truth = mrml.segmentation_from_labelmap(Volume((labels == 2).astype(np.uint8), ijk_to_ras), PROGRESSION_SEGMENT,
                                            "Progression truth", scene, PROGRESSION_TERMINOLOGY)
    empty = case_scene._segmentation(np.zeros(labels.shape, bool), ijk_to_ras, "Predicted progression",
                                     ("Predicted progression", (0, 1, 1)), "neoplasm", scene, reference)
    targets = [SimpleNamespace(key=key, name=name, kind=kind, mask=labels > 0, entry={"description": name})
               for key, name, kind in (("rtog60", "CTV60", "CTV"), ("boost", "Boost", "BOOST"),
                                       ("ptv_rtog60", "PTV60", "PTV"))]
    proposals = case_scene._ctv_proposals(SimpleNamespace(targets=targets), reference, ijk_to_ras, scene)
    written = {node.GetName(): _segment_terminologies(node) for node in (lesion, truth, empty, proposals)}
    path = mrml.write_scene_bundle(tmp_path / "scene.mrb", scene)
    read = mrml.read_scene_bundle(path, tmp_path / "cache")
    return path, written, read


def test_every_segment_written_carries_a_declared_term_and_keeps_it_in_the_bundle(written_scene):
    _, written, read = written_scene
    declared = {term.entry() for term in TERMS.values()}
    assert written["Lesion"] == {LESION_SEGMENTS[v][0]: terminology.lesion_entry(v) for v in LESION_SEGMENTS}
    assert written["Predicted progression"] == {"Predicted progression": terminology.entry("neoplasm")}
    assert written["CTV proposals"] == {"CTV60": terminology.entry("ctv"), "Boost": terminology.entry("ctv"),
                                        "PTV60": terminology.entry("ptv")}
    nodes = read.GetNodesByClass("vtkMRMLSegmentationNode")
    assert nodes.GetNumberOfItems() == len(written)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        assert _segment_terminologies(node) == written[node.GetName()]
        assert set(written[node.GetName()].values()) <= declared


# --- the scene's Slicer version -----------------------------------------------------------------------------------


def supported_scene_version(version: str) -> bool:
    """Whether a scene's version string is one Slicer parses and names a Slicer the extension runs in."""
    application, major, minor, patch, revision = (vtk.reference(""), *(vtk.reference(0) for _ in range(4)))
    if not slicer.vtkMRMLScene.ParseVersion(version, application, major, minor, patch, revision):
        return False
    return str(application) == "Slicer" and (int(major), int(minor)) in SUPPORTED_SLICER and int(revision) > 0


@pytest.mark.parametrize("version, supported", [
    ("Slicer 5.12.3 34627", True), ("Slicer 5.13.0 35000", True), ("Slicer 5.8.1 33241", False),
    ("Slicer 5.8.1 r33241", False), ("Slicer 5.14.0 36000", False), ("slicer-core 4.0.0 0", False)])
def test_the_version_check_tells_supported_from_unsupported(version, supported):
    assert supported_scene_version(version) is supported


def test_a_written_bundle_states_a_supported_slicer_version(written_scene):
    path, _, read = written_scene
    with zipfile.ZipFile(path) as bundle:
        scene_files = [name for name in bundle.namelist() if name.endswith(".mrml")]
        assert len(scene_files) == 1
        text = bundle.read(scene_files[0]).decode("utf-8")
    stated = re.search(r'<MRML\s+version="([^"]*)"', text).group(1)
    assert stated == mrml.SCENE_SLICER_VERSION == read.GetLastLoadedVersion()
    assert supported_scene_version(stated), stated
