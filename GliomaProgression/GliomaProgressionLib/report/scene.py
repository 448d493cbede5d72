"""The case's Slicer scene (``scene.mrb``): every volume, the heat map with its colour table, the segmentations
with names and colours, the DSC sequence, the tables and the curves, and the views set up for review.

Content, under one patient/study in the subject hierarchy:

- reference grid (1 mm CE-T1): CE-T1, registered FLAIR and nCBV, the progression probability (heat map with the
  "Progression heat map" colour table), segmentations "Lesion", "Predicted progression", "Brain", "CTV proposals"
  (the name and segment tags the CTV Planner module looks for, so its edit protection and comparison table work
  on them), "Recurrence" when given and "Perfusion habitats" when the run found them (one segment per habitat
  present, names and colours from ``DSCPerfusionLib.habitats.labels.HABITATS``; hidden at first, since it would
  cover the heat map); with the invasion map (seed 004), its probability ("Invasion probability", colour table
  "Invasion heat map", hidden at first) and the segmentation "Predicted invasion" (``report.figure.INVASION_NAME``,
  outlined in ``INVASION_COLOUR``);
- acquired grids under the registration transforms ("FLAIR to CE-T1", "DSC to CE-T1"), so they overlay the
  reference exactly as the pipeline aligned them: the acquired CE-T1 and FLAIR, the DSC series (a sequence with a
  browser), nCBV, rCBV and K2 on the DSC grid and the NAWM reference region;
- tables "Verdict", "nCBV by region", "Perfusion habitat fractions" (percent of the contrast-enhancing and
  non-enhancing lesion per habitat), "CTV comparison"; the plot "Mean deltaR2* curves". When the habitats were
  skipped, the "Verdict" table says why.

A case without DSC has no nCBV, DSC, rCBV, K2, NAWM or curve nodes; the "Verdict" table says "perfusion
skipped: no DSC series" (as every note of the run: labels mapped...) and Yellow shows FLAIR instead of nCBV.

Views: the "Four-Up Plot Table" layout (axial + plot, coronal + sagittal, table below), which Slicer restores when
it opens the scene from its layout node. Red and Green show CE-T1 with the heat map, Yellow CE-T1 with nCBV; all
three are centred on the lesion.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from CTVPlannerLib import terminology

from CTVPlannerLib.lesion import LESION_SEGMENTS, LESION_TERMINOLOGY
from DSCPerfusionLib.habitats.labels import HABITATS, REGIONS

from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.files import read_volume
from GliomaProgressionLib.case.folder import has_series, locate_series, read_dsc_series, read_series
from GliomaProgressionLib.case.geometry import Volume, volume_from_sitk
from GliomaProgressionLib.report.figure import (HEAT_MAP_LOWER, INVASION_COLOUR, INVASION_NAME, PROGRESSION_NAME,
                                                TARGET_COLOURS, curve_name, heat_map_colours, invasion_colours,
                                                invasion_lines, region_share)

if TYPE_CHECKING:
    from GliomaProgressionLib.runs.chain import CaseResults

PROGRESSION_COLOUR = (0.0, 0.9, 0.9)  # cyan: stands out on the heat map, as in report.png
RECURRENCE_COLOUR = (1.0, 1.0, 1.0)  # white, as the dashed outline in report.png
# The CTV Planner module's segment tags (CTVPlanner.FINGERPRINT_TAG, KIND_TAG): an untouched proposal carries
# the fingerprint of its mask as created, so the module can tell it from an edited one.
HABITATS_NAME = "Perfusion habitats"
HABITAT_FRACTIONS_NAME = "Perfusion habitat fractions"
FINGERPRINT_TAG = "CTVPlanner.Fingerprint"
KIND_TAG = "CTVPlanner.Kind"


# --- colour tables -----------------------------------------------------------------------------------------


def colour_table(scene, name: str, colormap, transparent_first: bool):
    """A 256-entry colour table node from a matplotlib colour map (saved in the scene, so it needs no file)."""
    from matplotlib import colormaps

    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    colours = (colormaps[colormap] if isinstance(colormap, str) else colormap)(np.linspace(0.0, 1.0, 256))
    for index, (r, g, b, _) in enumerate(colours):
        node.SetColor(index, f"{index / 255:.3f}", r, g, b, 0.0 if transparent_first and index == 0 else 1.0)
    return node


def _show_with(node, table, low: float, high: float, threshold: float | None = None) -> None:
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(table.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(low, high)
    if threshold is not None:
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(threshold)
        display.SetUpperThreshold(high)


# --- nodes -------------------------------------------------------------------------------------------------


def _volume(image: sitk.Image, name: str, scene, dtype=np.float32, decimals: int | None = None):
    """A volume node; ``dtype``/``decimals`` shrink what the bundle stores (its exact values are in the output
    folder's NIfTI files): the noise of a float anatomy image or of tiny probabilities does not compress."""
    volume = volume_from_sitk(image)
    array = volume.array if decimals is None else np.round(volume.array, decimals)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    return mrml.node_from_volume(Volume(array.astype(dtype), volume.ijk_to_ras), name, scene)


def _stored_type(acquired: sitk.Image):
    """Integers for a resampled series that was acquired as integers (MR scanners store integers; rounding loses
    nothing the scanner measured), else float32 (a normalised series would lose everything)."""
    return np.int32 if "integer" in sitk.GetPixelIDValueAsString(acquired.GetPixelID()) else np.float32


def _segmentation(mask: np.ndarray, ijk_to_ras: np.ndarray, name: str, segment: tuple, role: str, scene, reference):
    """One-segment segmentation, with the terminology of ``role`` (``CTVPlannerLib.terminology.TERMS``); an empty
    mask keeps an empty segment (the node says 'nothing here')."""
    entry = terminology.entry(role)
    node = mrml.segmentation_from_labelmap(Volume(mask.astype(np.uint8), ijk_to_ras), {1: segment}, name, scene,
                                           {1: entry})
    if node.GetSegmentation().GetNumberOfSegments() == 0:
        empty = node.GetSegmentation().AddEmptySegment("", segment[0], segment[1])
        node.GetSegmentation().GetSegment(empty).SetTerminology(entry)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return node


def _ctv_proposals(results: CaseResults, reference_node, ijk_to_ras: np.ndarray, scene):
    """'CTV proposals': one segment per target, coloured and tagged as the CTV Planner module makes them."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CTV proposals")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = node.GetSegmentation()
    for target in results.targets:
        colour = TARGET_COLOURS.get(target.key.replace("ptv_", ""), (0.9, 0.9, 0.5))
        scratch = mrml.segmentation_from_labelmap(Volume(target.mask.astype(np.uint8), ijk_to_ras),
                                                  {1: (target.name, colour)}, "scratch", scene,
                                                  {1: terminology.target_entry(target.kind)})
        try:
            if scratch.GetSegmentation().GetNumberOfSegments():
                segmentation.CopySegmentFromSegmentation(scratch.GetSegmentation(),
                                                         scratch.GetSegmentation().GetNthSegmentID(0))
            else:
                segmentation.AddEmptySegment("", target.name, colour)
        finally:
            scene.RemoveNode(scratch)
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(target.name))
        segment.SetTerminology(terminology.target_entry(target.kind))
        segment.SetTag(FINGERPRINT_TAG, hashlib.sha1(np.packbits(target.mask).tobytes()).hexdigest())
        segment.SetTag(KIND_TAG, target.kind)
        segment.SetTag("CTVPlanner.Description", target.entry.get("description", ""))
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(0.0)  # nested targets: outlines only, or the anatomy disappears under them
    display.SetOpacity2DOutline(1.0)
    return node


def reference_nodes(results: CaseResults, scene) -> dict:
    prepared = results.prepared
    reference = volume_from_sitk(prepared.reference)
    nodes = {"t1c": _volume(prepared.reference, "CE-T1 (1 mm)", scene, _stored_type(results.inputs.t1c)),
             "flair": _volume(prepared.channels["flair"], "FLAIR (registered)", scene,
                              _stored_type(results.inputs.flair)),
             "probability": _volume(results.prediction.probability, "Progression probability", scene, decimals=3)}
    nodes["heat_map_colours"] = colour_table(scene, "Progression heat map", heat_map_colours(), transparent_first=True)
    _show_with(nodes["probability"], nodes["heat_map_colours"], 0.0, 1.0, HEAT_MAP_LOWER)
    if "ncbv" in prepared.channels:
        nodes["ncbv"] = _volume(prepared.channels["ncbv"], "nCBV (registered)", scene, decimals=3)
        nodes["ncbv"].SetAttribute(mrml.ALIGNED_WITH_CE_T1, "true")
        nodes["ncbv_colours"] = colour_table(scene, "nCBV (ratio to NAWM)", "turbo", transparent_first=False)
        _show_with(nodes["ncbv"], nodes["ncbv_colours"], 0.0, 5.0)
    labels = Volume(sitk.GetArrayFromImage(prepared.lesion), reference.ijk_to_ras)
    nodes["lesion"] = mrml.segmentation_from_labelmap(labels, LESION_SEGMENTS, "Lesion", scene, LESION_TERMINOLOGY)
    nodes["lesion"].SetReferenceImageGeometryParameterFromVolumeNode(nodes["t1c"])
    masks = {"progression": (results.prediction.progression, (PROGRESSION_NAME, PROGRESSION_COLOUR), "neoplasm"),
             "brain": (results.brain, ("Brain", (0.9, 0.8, 0.7)), "brain")}
    if results.recurrence is not None:
        masks["recurrence"] = (results.recurrence, ("Recurrence", RECURRENCE_COLOUR), "neoplasm")
    for key, (image, segment, role) in masks.items():
        nodes[key] = _segmentation(sitk.GetArrayFromImage(image) > 0, reference.ijk_to_ras, segment[0], segment,
                                   role, scene, nodes["t1c"])
    nodes["brain"].GetDisplayNode().SetVisibility(False)  # an input for CTV Planner, not something to look at
    nodes["ctv"] = _ctv_proposals(results, nodes["t1c"], reference.ijk_to_ras, scene)
    if results.habitats is not None:
        nodes["habitats"] = habitat_segmentation(results.habitats.reference_labels, nodes["t1c"], scene)
    if results.invasion is not None:
        nodes.update(invasion_nodes(results.invasion, nodes["t1c"], scene))
    return nodes


def invasion_nodes(invasion, reference_node, scene) -> dict:
    """The invasion map (reference grid): its probability under the "Invasion heat map" colour table, not shown at
    first (the progression heat map is), and the segmentation "Predicted invasion" as outlines."""
    probability = _volume(invasion.probability, "Invasion probability", scene, decimals=3)
    colours = colour_table(scene, "Invasion heat map", invasion_colours(), transparent_first=True)
    _show_with(probability, colours, 0.0, 1.0, HEAT_MAP_LOWER)
    label = volume_from_sitk(invasion.label)
    segmentation = _segmentation(label.array > 0, label.ijk_to_ras, INVASION_NAME, (INVASION_NAME, INVASION_COLOUR),
                                 "neoplasm", scene, reference_node)
    segmentation.GetDisplayNode().SetOpacity2DFill(0.0)  # an outline: the anatomy and heat maps stay visible
    return {"invasion_probability": probability, "invasion_colours": colours, "invasion": segmentation}


def habitat_segmentation(labels: sitk.Image, reference_node, scene):
    """"Perfusion habitats": one segment per habitat present in ``labels`` (reference grid), named and coloured
    as HABITATS declares; hidden at first (on top of the heat map it would hide it)."""
    segments = {habitat.value: (habitat.name, habitat.colour) for habitat in HABITATS}
    # Oedema patterns (found only in the NEL) are non-enhancing lesion; the others are tumour.
    terms = {habitat.value: terminology.entry("non_enhancing_lesion" if habitat.regions == ("NEL",) else "neoplasm")
             for habitat in HABITATS}
    node = mrml.segmentation_from_labelmap(volume_from_sitk(labels), segments, HABITATS_NAME, scene, terms)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    node.GetDisplayNode().SetVisibility(False)
    return node


def acquired_nodes(results: CaseResults, scene) -> dict:
    """The series on their own grids, each under the transform the registration found."""
    inputs, prepared = results.inputs, results.prepared
    flair_to_t1c = mrml.linear_transform_node(prepared.registrations["flair"].matrix_ras_reference_from_moving(),
                                              "FLAIR to CE-T1", scene)
    nodes = {"flair_to_t1c": flair_to_t1c,
             "t1c_acquired": _volume(inputs.t1c, "CE-T1 (acquired)", scene),
             "flair_acquired": _volume(inputs.flair, "FLAIR (acquired)", scene)}
    nodes["flair_acquired"].SetAndObserveTransformNodeID(flair_to_t1c.GetID())
    if prepared.perfusion is not None:
        nodes.update(dsc_nodes(results, scene))
    return nodes


def dsc_nodes(results: CaseResults, scene) -> dict:
    """The DSC series (a sequence) and the perfusion maps on its grid, under the DSC registration."""
    inputs, prepared = results.inputs, results.prepared
    perfusion = prepared.perfusion
    dsc_to_t1c = mrml.linear_transform_node(prepared.registrations["dsc"].matrix_ras_reference_from_moving(),
                                            "DSC to CE-T1", scene)
    nodes = {"dsc_to_t1c": dsc_to_t1c}
    nodes["dsc"], nodes["dsc_browser"] = mrml.sequence_from_volume(inputs.dsc, inputs.timing.times_s, "DSC", scene)
    dsc_grid = inputs.dsc.ijk_to_ras
    maps = {"ncbv_dsc": (perfusion.ncbv, "nCBV (DSC grid)"), "rcbv_dsc": (perfusion.rcbv, "rCBV (DSC grid)"),
            "k2_dsc": (perfusion.k2, "K2 (DSC grid, 1/s)")}
    for key, (array, name) in maps.items():
        nodes[key] = mrml.node_from_volume(Volume(np.asarray(array, np.float32), dsc_grid), name, scene)
    nodes["nawm"] = mrml.segmentation_from_labelmap(Volume(perfusion.nawm_mask.astype(np.uint8), dsc_grid),
                                                    {1: ("NAWM reference", (0.2, 0.4, 1.0))}, "NAWM reference", scene,
                                                    {1: terminology.entry("reference_region")})
    proxy = nodes["dsc_browser"].GetProxyNode(nodes["dsc"])
    for node in [proxy, nodes["ncbv_dsc"], nodes["rcbv_dsc"], nodes["k2_dsc"], nodes["nawm"]]:
        if node is not None:
            node.SetAndObserveTransformNodeID(dsc_to_t1c.GetID())
    nodes["dsc_proxy"] = proxy
    return nodes


def table_nodes(data: dict, results: CaseResults, scene) -> dict:
    verdict = data["verdict"]
    verdict_rows = {"Verdict": "Progression predicted" if verdict["progression_predicted"] else
                    "No progression predicted",
                    "Predicted volume (mL)": verdict["predicted_volume_ml"],
                    "Highest probability in the non-enhancing lesion": verdict["max_probability_in_nel"],
                    "Non-enhancing lesion (mL)": verdict["nel_volume_ml"], "Rule": verdict["rule"],
                    "Model": f"{data['model']['title']} ({data['model']['id']})"}
    if data["model"]["notice"]:
        verdict_rows["Notice"] = data["model"]["notice"]
    habitats = data["habitats"]
    verdict_rows["Perfusion habitats"] = habitats.get("skipped") or (
        f"the segmentation '{HABITATS_NAME}' and the table '{HABITAT_FRACTIONS_NAME}' (habitat model "
        f"{habitats['model']['id']})")
    if not habitats.get("skipped") and habitats["model"]["notice"]:
        verdict_rows["Habitat model notice"] = habitats["model"]["notice"]
    invasion = data["invasion"]
    verdict_rows["Invasion map"] = invasion.get("skipped") or (
        f"the segmentation '{INVASION_NAME}' and the volume 'Invasion probability' (invasion model "
        f"{invasion['model']['id']}): " + "; ".join(invasion_lines(invasion)))
    if not invasion.get("skipped") and invasion["model"]["notice"]:
        verdict_rows["Invasion model notice"] = invasion["model"]["notice"]
    for index, note in enumerate(data.get("notes", [])):
        verdict_rows[f"Note {index + 1}"] = note
    nodes = {"verdict": mrml.table_from_columns({"Item": list(verdict_rows), "Value": [str(v) for v in
                                                                                         verdict_rows.values()]},
                                                "Verdict", scene)}
    nodes["ctv_table"] = mrml.table_from_columns(_ctv_columns(data), "CTV comparison", scene,
                                                 units={"Volume": "mL", "HD95": "mm"})
    if results.prepared.perfusion is not None:
        nodes.update(perfusion_tables(data, results, scene))
    if not data["habitats"].get("skipped"):
        nodes["habitats_table"] = mrml.table_from_columns(habitat_fraction_columns(data["habitats"]),
                                                          HABITAT_FRACTIONS_NAME, scene,
                                                          units={region: "%" for region in REGIONS})
    return nodes


def habitat_fraction_columns(habitats: dict) -> dict:
    """Habitat name, then the percentage of each lesion region it covers (NaN where it cannot occur)."""
    columns = {"Habitat": [habitat.name for habitat in HABITATS]}
    for region in REGIONS:
        fractions = habitats["fractions"].get(region, {})
        columns[region] = [float("nan") if share is None else round(100 * share, 2)
                           for share in (region_share(fractions, habitat, region) for habitat in HABITATS)]
    return columns


def perfusion_tables(data: dict, results: CaseResults, scene) -> dict:
    """"nCBV by region" and the plot "Mean deltaR2* curves"."""
    nodes = {}
    regions = data["ncbv"]["regions"]
    nodes["ncbv_table"] = mrml.table_from_columns(
        {"Region": list(regions), **{column: [float(r[column]) if r[column] is not None else float("nan")
                                               for r in regions.values()]
                                     for column in ("volume_ml", "mean", "median", "p90")}},
        "nCBV by region", scene, units={"volume_ml": "mL"})
    perfusion = results.prepared.perfusion
    curves = {curve_name(key): np.asarray(values, float) for key, values in perfusion.curves.items()}
    nodes["curves"] = mrml.plot_curves(results.inputs.timing.times_s, curves, "Mean deltaR2* curves", "time (s)",
                                       "deltaR2* (1/s)", scene,
                                       colours={name: colour for name, colour in LESION_SEGMENTS.values()})
    return nodes


def _ctv_columns(data: dict) -> dict:
    targets = data["ctv"]["targets"]
    columns = {"Target": [t["name"] for t in targets], "Volume": [float(t["volume_ml"]) for t in targets]}
    if data["ctv"]["recurrence"] is not None:
        for column, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("Dice", "dice"),
                            ("HD95", "hd95_mm"), ("Tversky", "tversky"), ("PCC", "pcc")):
            columns[column] = [float("nan") if t["metrics"][key] is None else float(t["metrics"][key])
                               for t in targets]
        columns["Pattern"] = [t["metrics"]["pattern"] for t in targets]
    return columns


# --- views -------------------------------------------------------------------------------------------------


def _centre_ras(results: CaseResults) -> list[float]:
    """The lesion's centre of mass (RAS, mm): where every slice view opens."""
    from GliomaProgressionLib.case.geometry import ras_from_ijk

    labels = sitk.GetArrayViewFromImage(results.prepared.lesion) > 0
    centre_kji = np.argwhere(labels).mean(axis=0)
    return [float(v) for v in ras_from_ijk(centre_kji[::-1], volume_from_sitk(results.prepared.lesion).ijk_to_ras)]


# --- the bundle --------------------------------------------------------------------------------------------


def build_case_scene(scene, data: dict, results: CaseResults) -> dict:
    """Add the case to ``scene``; returns the nodes by role."""
    reference = reference_nodes(results, scene)
    acquired = acquired_nodes(results, scene)
    tables = table_nodes(data, results, scene)
    mrml.group_in_study(scene, results.inputs.name, {"Results on the 1 mm CE-T1 grid": list(reference.values()),
                                                     "Acquired series": list(acquired.values()),
                                                     "Tables and curves": list(tables.values())})
    return {**reference, **acquired, **tables}


def write_case_scene(path: Path, data: dict, results: CaseResults) -> Path:
    """A new headless scene with the case, its views set up, written as a Slicer data bundle."""
    scene = mrml.new_scene()
    nodes = build_case_scene(scene, data, results)
    # Red and Green: CE-T1 under the heat map; Yellow: CE-T1 under nCBV (FLAIR without DSC).
    mrml.set_up_views(scene, nodes["t1c"], {"Red": nodes["probability"], "Green": nodes["probability"],
                                            "Yellow": nodes.get("ncbv", nodes["flair"])}, _centre_ras(results),
                      nodes.get("curves"), nodes["ctv_table"])
    return mrml.write_scene_bundle(path, scene)


# --- a case folder ------------------------------------------------------------------------------------------

PROGRESSION_SEGMENT = {1: ("Future progression (truth)", (0.85, 0.25, 0.85))}
PROGRESSION_TERMINOLOGY = {1: terminology.entry("neoplasm")}


def load_case_into_scene(folder: str | os.PathLike, scene=None, name: str | None = None) -> dict:
    """Load a case folder into a scene: volumes, the DSC series as a sequence, the lesion segmentation (and the
    progression truth when present), grouped under one study in the subject hierarchy. Returns the nodes.

    The series are found and read by the case-folder reader (``case.folder``), so every layout ``gliomaprog run``
    accepts (NIfTI, NRRD, DICOM folders) loads here too; the DSC needs its frame times, not its echo time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The case folder {folder} does not exist.")
    scene = scene or mrml.current_scene()
    name = name or folder.name
    nodes = {
        "t1c": mrml.node_from_volume(volume_from_sitk(read_series(folder, "t1c")), f"{name} CE-T1", scene),
        "flair": mrml.node_from_volume(volume_from_sitk(read_series(folder, "flair")), f"{name} FLAIR", scene),
    }
    if has_series(folder, "dsc"):  # a case without DSC loads without it
        dsc, timing = read_dsc_series(folder, need_echo_time=False)
        nodes["dsc"], nodes["dsc_browser"] = mrml.sequence_from_volume(dsc, timing.times_s, f"{name} DSC", scene)
    lesion = volume_from_sitk(read_series(folder, "lesion"))
    nodes["lesion"] = mrml.segmentation_from_labelmap(lesion, LESION_SEGMENTS, f"{name} lesion", scene, LESION_TERMINOLOGY)
    nodes["lesion"].SetReferenceImageGeometryParameterFromVolumeNode(nodes["t1c"])
    nodes.update(_truth_nodes(folder / "truth", name, scene))
    mrml.group_in_study(scene, name, {None: list(nodes.values())})
    return nodes


def _truth_nodes(truth: Path, name: str, scene) -> dict:
    """The synthetic case's progression truth and nCBV truth (``truth/``), when the folder has them."""
    progression_file, ncbv_file = locate_series(truth, "progression"), locate_series(truth, "ncbv")
    if progression_file is None or not progression_file.is_file():
        return {}
    progression = read_volume(progression_file, "progression truth")
    nodes = {"progression_truth": mrml.segmentation_from_labelmap(
        progression, PROGRESSION_SEGMENT, f"{name} progression truth", scene, PROGRESSION_TERMINOLOGY)}
    if ncbv_file is not None and ncbv_file.is_file():
        nodes["ncbv_truth"] = mrml.node_from_volume(read_volume(ncbv_file, "nCBV truth"), f"{name} nCBV (truth)", scene)
    return nodes
