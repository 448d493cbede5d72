"""CTVPlannerLogic on real MRML (slicer-core): proposals on an oblique grid equal the library's targets, and the
Logic's DICOM export reads back into them."""

import subprocess

import numpy as np
import pytest

from CTVPlannerLib.schemes import Margins, PlanningInputs, plan_targets
from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.geometry import Volume
from test_ctv_dicom import DCIODVFY, _dice, _on_source_grid, _read_rtstruct


@pytest.fixture
def oblique_case(scene):
    angle = np.deg2rad(15)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                   [0, 0, 1]]) @ np.diag([1.2, 0.9, 2.5])
    ijk_to_ras[:3, 3] = [10.0, -20.0, 5.0]
    shape = (18, 60, 50)
    k, j, i = np.indices(shape)
    r = np.sqrt(((k - 9) * 2.5) ** 2 + ((j - 30) * 0.9) ** 2 + ((i - 25) * 1.2) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r <= 14] = 2
    labels[r <= 8] = 3
    brain = np.zeros(shape, np.uint8)
    brain[1:-1, 2:-2, 2:-2] = 1
    segments = {2: ("Oedema", (0, 1, 0)), 3: ("Enhancing tumour", (1, 0, 0))}
    nodes = {
        "reference": mrml.node_from_volume(Volume((r * 10).astype(np.int16), ijk_to_ras), "T1"),
        "lesion": mrml.segmentation_from_labelmap(Volume(labels, ijk_to_ras), segments, "lesion"),
        "brain": mrml.segmentation_from_labelmap(Volume(brain, ijk_to_ras), {1: ("Brain", (1, 1, 1))}, "brain"),
    }
    return nodes, labels, brain > 0, ijk_to_ras


def test_logic_proposals_equal_the_library_targets_and_export_reads_back(oblique_case, tmp_path):
    import CTVPlanner

    nodes, labels, brain, ijk_to_ras = oblique_case
    logic = CTVPlanner.CTVPlannerLogic()
    margins = Margins(rtog_mm=12.0, eortc_mm=10.0, ptv_mm=3.0)
    result = logic.createProposals(nodes["lesion"], nodes["reference"], nodes["brain"], ("rtog", "eortc"),
                                   margins=margins)
    expected = plan_targets(PlanningInputs(labels, brain, ijk_to_ras, image=(np.zeros(labels.shape))),
                            ("rtog", "eortc"), margins)
    proposals = result["proposals"]
    assert len(result["segmentIds"]) == len(expected.targets) == 6
    for target, segment_id in zip(expected.targets, result["segmentIds"]):
        stored = logic._maskOf(proposals, nodes["reference"], [segment_id])
        assert np.array_equal(stored, target.mask), target.name
    written = logic.exportDicom(tmp_path / "export", proposals, nodes["reference"])
    masks = _read_rtstruct(written["rtstruct"][0], tmp_path / "export" / "MR")
    for target in expected.targets:
        back = _on_source_grid(masks[target.name], target.mask, ijk_to_ras)
        assert _dice(back, target.mask) >= 0.95, target.name
    report = subprocess.run([DCIODVFY, str(written["rtstruct"][0])], capture_output=True, text=True, timeout=120)
    assert "Error" not in report.stdout + report.stderr


def test_logic_refuses_bad_lesion_segments(oblique_case):
    import CTVPlanner

    nodes, labels, _, ijk_to_ras = oblique_case
    logic = CTVPlanner.CTVPlannerLogic()
    odd = mrml.segmentation_from_labelmap(Volume((labels > 0).astype(np.uint8), ijk_to_ras),
                                          {1: ("Tumour thing", (1, 1, 0))}, "odd")
    odd.GetSegmentation().GetNthSegment(0).SetLabelValue(7)
    with pytest.raises(ValueError, match="not a BraTS class"):
        logic.createProposals(odd, nodes["reference"], nodes["brain"], ("rtog",))
    with pytest.raises(ValueError, match="brain mask"):
        logic.createProposals(nodes["lesion"], nodes["reference"], None, ("rtog",))
    with pytest.raises(ValueError, match="predicted-progression"):
        logic.createProposals(nodes["lesion"], nodes["reference"], nodes["brain"], ("ai",))
    assert logic.findProposals() is None, "nothing created on bad input"
