"""MRML glue for scenes (``mrml.py``) on a real slicer-core scene: subject hierarchy, transforms, saved views."""
import numpy as np
import pytest

from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.geometry import Volume


def volume_node(scene, name):
    return mrml.node_from_volume(Volume(np.zeros((2, 3, 4), np.float32), np.eye(4)), name, scene)


def test_group_in_study_puts_nodes_in_folders_of_one_study(scene):
    import slicer

    first, second, third = (volume_node(scene, name) for name in ("first", "second", "third"))
    mrml.group_in_study(scene, "Case 7", {None: [first], "Results": [second, None, third]})
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(first))
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(second))
    assert hierarchy.GetItemName(study) == "Pre-operative MRI" and hierarchy.GetItemLevel(study) == "Study"
    assert hierarchy.GetItemName(hierarchy.GetItemParent(study)) == "Case 7"
    assert hierarchy.GetItemName(folder) == "Results" and hierarchy.GetItemParent(folder) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(third)) == folder


def test_linear_transform_node_keeps_the_matrix(scene):
    matrix = np.array([[0.0, -1.0, 0.0, 5.0], [1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 1.0, 3.5], [0.0, 0.0, 0.0, 1.0]])
    node = mrml.linear_transform_node(matrix, "moved", scene)
    import vtk

    stored = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(stored)
    assert np.array([[stored.GetElement(r, c) for c in range(4)] for r in range(4)]) == pytest.approx(matrix)


def test_set_up_views_saves_layout_layers_and_centre(scene):
    background, heat = volume_node(scene, "background"), volume_node(scene, "heat")
    table = mrml.table_from_columns({"a": [1.0]}, "table", scene)
    mrml.set_up_views(scene, background, {"Red": heat}, [10.0, -20.0, 30.0], table=table)
    composite = [node for node in scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
                 if node.GetLayoutName() == "Red"][0]
    assert composite.GetBackgroundVolumeID() == background.GetID()
    assert composite.GetForegroundVolumeID() == heat.GetID() and composite.GetForegroundOpacity() == 0.6
    red = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    assert red.GetSliceToRAS().GetElement(0, 3) == pytest.approx(10.0)
    assert red.GetSliceToRAS().GetElement(2, 3) == pytest.approx(30.0)
    assert scene.GetSingletonNode("TableView1", "vtkMRMLTableViewNode").GetTableNodeID() == table.GetID()


def test_place_beside_files_results_with_their_input(scene):
    import slicer

    source, result = volume_node(scene, "CE-T1"), volume_node(scene, "result")
    mrml.group_in_study(scene, "Case 8", {"Inputs": [source]})
    mrml.place_beside([result], source)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(source))
    assert hierarchy.GetItemName(folder) == "Inputs"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result)) == folder
