"""The one-page case report: ``report.png`` for the reader and ``report.json`` with every number it shows.

The page: axial and coronal montages (CE-T1 with the lesion outlines, the registered FLAIR, the nCBV overlay, the
perfusion habitats, the progression heat map with the predicted region, the CTV proposals), the verdict, nCBV
statistics per lesion part, the mean deltaR2* curves and a table of target volumes and their metrics against the
recurrence when one is given. A case without DSC has no nCBV row, table or curves: the page, like report.json, says
"perfusion skipped: no DSC series" in their place. The habitats row (Yun et al. 2023: colours and names from
``DSCPerfusionLib.habitats.labels.HABITATS``) has beside it the fraction of the contrast-enhancing and of the
non-enhancing lesion in each habitat; without habitats the row is left out and report.json says why. A run with
the invasion map (seed 004, Yan et al. 2020) has an invasion row: the probability heat map over CE-T1 with the
predicted invasion outlined, and beside it its volume, its AUC against the recurrence when one is given, and the
model's synthetic-data notice.

Display geometry: every image is resampled (linear; labels nearest neighbour) from the reference grid onto an
axis-aligned 1 mm grid around the brain, so axial and coronal panels are true planes whatever the acquisition's
tilt, shown in radiological convention (patient's right on the image's left). Overlays go through exactly the
transforms the pipeline used, so a registration error shows as a misplaced overlay.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from CTVPlannerLib.schemes import TARGET_COLOURS

from CTVPlannerLib.lesion import LESION_SEGMENTS
from DSCPerfusionLib.ftb import FTB_KEYS, lesion_ftb
from DSCPerfusionLib.habitats.labels import HABITATS, REGIONS
from DSCPerfusionLib.protocol import check_protocol, protocol_report, summary_line

if TYPE_CHECKING:
    from GliomaProgressionLib.runs.chain import CaseResults

DEMO_NOTICE = "Demo model trained on synthetic data \u2014 not for clinical use"
HABITAT_DEMO_NOTICE = "Habitat model: demo model trained on synthetic data \u2014 not for clinical use"
HABITATS_METHOD = ("Perfusion habitats (Yun et al. 2023, AJNR): each lesion voxel's DSC time-signal curve, rescaled by "
                   "the white-matter signal, encoded by an autoencoder and clustered (k-means) per region; patterns "
                   "named against reference tissues")
TARGET_NOTICE = "Target-volume proposals for review and editing by a radiation oncologist; not a treatment plan."
PROGRESSION_NAME = "Predicted progression"
INVASION_NAME = "Predicted invasion"  # the invasion map's segment (seed 004, Yan et al. 2020: p >= its threshold)
INVASION_COLOUR = (1.0, 0.25, 0.85)  # magenta: the predicted invasion's outline and segment, apart from cyan
INVASION_DEMO_NOTICE = "Invasion model: demo model trained on synthetic data \u2014 not for clinical use"
INVASION_METHOD = ("Invasion map (Yan et al. 2020, Sci Rep): local radiomics features (first order, GLCM, GLRLM) of "
                   "each channel, voxel by voxel, classified by a neural network: each peritumoral voxel's probability "
                   "of future progression")
PERFUSION_SKIPPED = "perfusion skipped: no DSC series"
INVASION_NOT_REQUESTED = "invasion map not requested"
NCBV_RANGE = (0.0, 5.0)  # ratio to NAWM: white matter 1, grey matter ~2, enhancing tumour 3-6
HEAT_MAP_LOWER = 0.05  # probabilities below this are transparent (report and scene)
DISPLAY_SPACING_MM = 1.0
SOFTWARE = ("gliomaprogression", "numpy", "scipy", "SimpleITK", "torch", "nnunetv2", "slicer-core", "matplotlib",
            "pydicom", "highdicom", "scikit-image", "scikit-fmm")


# --- numbers -----------------------------------------------------------------------------------------------


def software_versions(names=SOFTWARE) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def region_statistics(values: np.ndarray, mask: np.ndarray, voxel_ml: float) -> dict:
    inside = values[mask]
    if inside.size == 0:
        return {"voxels": 0, "volume_ml": 0.0, "mean": None, "sd": None, "median": None, "p90": None}
    return {"voxels": int(inside.size), "volume_ml": round(inside.size * voxel_ml, 3),
            "mean": round(float(inside.mean()), 3), "sd": round(float(inside.std()), 3),
            "median": round(float(np.median(inside)), 3), "p90": round(float(np.percentile(inside, 90)), 3)}


def ncbv_statistics(results: CaseResults) -> dict:
    """nCBV per lesion part and in the predicted progression (reference grid), and in the NAWM reference region
    the normalisation used (DSC grid: where it was measured; its mean is 1 by construction)."""
    prepared = results.prepared
    if prepared.perfusion is None:
        return {"skipped": PERFUSION_SKIPPED, "regions": {}}
    ncbv = sitk.GetArrayViewFromImage(prepared.channels["ncbv"])
    labels = sitk.GetArrayViewFromImage(prepared.lesion)
    progression = sitk.GetArrayViewFromImage(results.prediction.progression) > 0
    voxel_ml = float(np.prod(prepared.reference.GetSpacing())) / 1000.0
    regions = {}
    for value, (name, _) in LESION_SEGMENTS.items():
        if (labels == value).any():
            regions[name] = {"label": value, **region_statistics(ncbv, labels == value, voxel_ml)}
    regions[PROGRESSION_NAME] = {"label": None, **region_statistics(ncbv, progression, voxel_ml)}
    perfusion = prepared.perfusion
    dsc_voxel_ml = perfusion.report.get("nawm_volume_ml", 0.0) / max(int(perfusion.nawm_mask.sum()), 1)
    regions["NAWM reference (DSC grid)"] = {"label": None, **region_statistics(perfusion.ncbv, perfusion.nawm_mask,
                                                                                 dsc_voxel_ml)}
    return {"definition": "nCBV = leakage-corrected rCBV / mean rCBV of contralateral normal-appearing white "
                          "matter (unitless ratio); statistics over voxels of the 1 mm CE-T1 grid",
            "regions": regions}


def ftb_data(results: CaseResults) -> dict:
    """Fractional tumour burden per lesion part, on the grid of the nCBV table, with the run's thresholds."""
    prepared = results.prepared
    if prepared.perfusion is None:
        return {"skipped": PERFUSION_SKIPPED}
    ncbv = sitk.GetArrayViewFromImage(prepared.channels["ncbv"])
    labels = sitk.GetArrayViewFromImage(prepared.lesion)
    brain = sitk.GetArrayViewFromImage(results.brain) > 0
    names = {value: name for value, (name, _) in LESION_SEGMENTS.items()}
    return lesion_ftb(ncbv, labels, brain, names, results.settings.ftb_thresholds, "1 mm CE-T1 grid")[1]


def habitats_data(results: CaseResults) -> dict:
    """report.json's "habitats": the fraction of the contrast-enhancing (CEL) and non-enhancing lesion (NEL) in each
    habitat (DSC grid voxels, where they were computed) and the model; or why there are none."""
    from CTVPlannerLib.schemes import ENHANCING, SNFH

    habitats = results.habitats
    if habitats is None:
        return {"skipped": results.habitats_skipped or "perfusion habitats skipped"}
    dsc = results.inputs.dsc
    dsc_voxel_ml = float(np.prod(dsc.spacing)) / 1000.0
    values = {"CEL": ENHANCING, "NEL": SNFH}
    package = habitats.package
    return {"method": HABITATS_METHOD,
            "fractions": {region: {key: round(float(value), 4) for key, value in
                                   habitats.result.fractions.get(region, {}).items()} for region in REGIONS},
            "definition": "fraction of the region's voxels (DSC grid) in each habitat; each region sums to 1",
            "region_volume_ml": {region: round(float((results.dsc_lesion == values[region]).sum()) * dsc_voxel_ml, 3)
                                 for region in REGIONS},
            "legend": {h.key: {"value": h.value, "name": h.name} for h in HABITATS},
            "model": {**package.info(), "notice": HABITAT_DEMO_NOTICE if package.synthetic else None}}


def invasion_data(results: CaseResults) -> dict:
    """report.json's "invasion": the map's volumes, its measures against the recurrence and the model; or that it was
    not asked for."""
    invasion = results.invasion
    if invasion is None:
        return {"skipped": INVASION_NOT_REQUESTED}
    record, package = invasion.record, invasion.package
    return {"method": INVASION_METHOD, "name": INVASION_NAME, "channels": record["channels"],
            "threshold": record["threshold"], "region_volume_ml": record["region_volume_ml"],
            "label_volume_ml": record["label_volume_ml"], "mean_probability": round(record["mean_probability"], 4),
            "grid": record["grid"], "evaluation": record["evaluation"],
            "model": {**package.info(), "notice": INVASION_DEMO_NOTICE if package.synthetic else None}}


def protocol_data(results: CaseResults) -> dict:
    """The DSC acquisition against the 2020 consensus: the case's dsc.json (when it has one), TE, frame times and
    the frames before the bolus arrival."""
    perfusion, timing = results.prepared.perfusion, results.inputs.timing
    if perfusion is None:
        return {"skipped": PERFUSION_SKIPPED}
    from GliomaProgressionLib.case.folder import dsc_sidecar_header

    header = dsc_sidecar_header(results.inputs.folder)
    return protocol_report(check_protocol(header, timing.te_s, timing.times_s, int(perfusion.arrival_frame)))


def curve_name(key: str) -> str:
    if key.startswith("label "):
        return LESION_SEGMENTS.get(int(key.split()[1]), (key, None))[0]
    return {"brain": "Whole brain", "nawm": "NAWM reference"}.get(key, key)


def curves_data(results: CaseResults) -> dict:
    perfusion = results.prepared.perfusion
    if perfusion is None:
        return {"skipped": PERFUSION_SKIPPED, "time_s": [], "delta_r2s_per_s": {}}
    return {"time_s": [round(float(t), 3) for t in results.inputs.timing.times_s],
            "unit": "1/s", "definition": "mean leakage-corrected deltaR2*(t) per region on the DSC grid",
            "delta_r2s_per_s": {curve_name(key): [round(float(v), 4) for v in values]
                                for key, values in perfusion.curves.items()}}


def ctv_data(results: CaseResults) -> dict:
    report = results.ctv_report
    recurrence = None
    if results.recurrence is not None:
        voxel_ml = float(np.prod(results.prepared.reference.GetSpacing())) / 1000.0
        recurrence = {"source": results.inputs.sources.get("recurrence"),
                      "volume_ml": round(float(sitk.GetArrayViewFromImage(results.recurrence).sum()) * voxel_ml, 3)}
    targets = [{key: entry.get(key) for key in ("key", "scheme", "name", "kind", "volume_ml", "description",
                                                  "metrics")} for entry in report["targets"]]
    return {"targets": targets, "recurrence": recurrence, "brain_mask": BRAIN_SOURCES[brain_source(results.inputs)],
            "metric_definitions": report.get("metric_definitions"),
            "parameters": report.get("parameters"), "barriers": report.get("barriers"), "notes": report.get("notes"),
            "notice": TARGET_NOTICE}


BRAIN_SOURCES = {
    "given": "the case's brain mask",
    "dsc": "automatic: the perfusion module's brain mask carried from the DSC grid by the DSC registration",
    "t1c": "automatic: Otsu foreground of CE-T1 with holes filled (no DSC series; the head, if the skull was not "
           "stripped)",
}


def brain_source(inputs) -> str:
    """Where the brain mask of a case comes from (a key of BRAIN_SOURCES)."""
    return "given" if inputs.brain is not None else "dsc" if inputs.dsc is not None else "t1c"


def model_data(results: CaseResults) -> dict:
    model = results.model
    return {"id": model.id, "title": model.title, "sha256": model.sha256, "synthetic": model.synthetic,
            "configuration": model.configuration, "folds": model.folds, "channels": model.channel_names,
            "version": model.extra.get("version"), "notice": DEMO_NOTICE if model.synthetic else None}


# --- display grid ------------------------------------------------------------------------------------------


@dataclass
class Display:
    """Images on the axis-aligned display grid (numpy [z, y, x], LPS, 1 mm) and the slices shown."""

    images: dict[str, np.ndarray]
    targets: list[tuple[str, str, np.ndarray]]  # (key, name, mask)
    origin_lps: np.ndarray
    axial: list[int]  # z indices
    coronal: list[int]  # y indices
    demo_model: bool


def _display_grid(reference: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """An identity-direction 1 mm grid around the brain (+5 mm), covering it whatever the reference's tilt."""
    array = sitk.GetArrayViewFromImage(brain) > 0
    k, j, i = np.nonzero(array)
    corners = [brain.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])
               for x in (i.min(), i.max()) for y in (j.min(), j.max()) for z in (k.min(), k.max())]
    low, high = np.min(corners, axis=0) - 5.0, np.max(corners, axis=0) + 5.0
    size = [int(np.ceil(s)) + 1 for s in (high - low) / DISPLAY_SPACING_MM]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in low))
    grid.SetSpacing((DISPLAY_SPACING_MM,) * 3)
    return grid


def _on_display(image: sitk.Image, grid: sitk.Image, labels: bool) -> np.ndarray:
    if labels:
        return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                    sitk.sitkUInt8))
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                sitk.sitkFloat32))


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def _pick_slices(lesion_axis: np.ndarray, focus_axis: np.ndarray, count: int) -> list[int]:
    """``count`` slices spread over the lesion's extent (10th-90th percentile); the one where the focus (the
    predicted progression) is largest replaces the nearest of them, so the finding is always on the page."""
    positions = np.nonzero(lesion_axis)[0]
    if positions.size == 0:
        positions = np.arange(len(lesion_axis))
    low, high = np.percentile(positions, [10, 90])
    chosen = [int(round(v)) for v in np.linspace(low, high, count)]
    if focus_axis.any():
        best = int(np.argmax(focus_axis))
        chosen[int(np.argmin([abs(c - best) for c in chosen]))] = best
    return sorted(set(chosen))


def display_images(results: CaseResults) -> Display:
    prepared = results.prepared
    reference = prepared.reference
    grid = _display_grid(reference, results.brain)
    images = {name: _on_display(prepared.channels[name], grid, False) for name in ("t1c", "flair", "ncbv")
              if name in prepared.channels}
    images["probability"] = _on_display(results.prediction.probability, grid, False)
    for name, image in (("lesion", prepared.lesion), ("progression", results.prediction.progression),
                        ("brain", results.brain), ("nel", prepared.nel)):
        images[name] = _on_display(image, grid, True)
    if results.recurrence is not None:
        images["recurrence"] = _on_display(results.recurrence, grid, True)
    if results.habitats is not None:
        images["habitats"] = _on_display(results.habitats.reference_labels, grid, True)
    if results.invasion is not None:
        images["invasion"] = _on_display(results.invasion.probability, grid, False)
        images["invasion_label"] = _on_display(results.invasion.label, grid, True)
    targets = [(t.key, t.name, _on_display(_like(t.mask, reference), grid, True) > 0) for t in results.targets]
    lesion, focus = images["lesion"] > 0, images["progression"] > 0
    axial = _pick_slices(lesion.sum(axis=(1, 2)), focus.sum(axis=(1, 2)), 4)
    coronal = _pick_slices(lesion.sum(axis=(0, 2)), focus.sum(axis=(0, 2)), 2)
    return Display(images, targets, np.array(grid.GetOrigin()), axial, coronal, results.model.synthetic)


def slice_positions(display: Display) -> dict:
    """Where each panel is, in patient coordinates (RAS, mm): S for axial planes, A for coronal ones."""
    return {"axial_s_mm": [round(float(display.origin_lps[2] + z * DISPLAY_SPACING_MM), 1) for z in display.axial],
            "coronal_a_mm": [round(float(-(display.origin_lps[1] + y * DISPLAY_SPACING_MM)), 1)
                             for y in display.coronal],
            "convention": "radiological (patient's right on the image's left); RAS millimetres",
            "ncbv_colour_range": list(NCBV_RANGE), "probability_colour_range": [0.0, 1.0],
            "probability_shown_from": HEAT_MAP_LOWER}


def build_report(results: CaseResults) -> tuple[dict, Display]:
    """report.json's content (timings and the list of outputs are added when the run ends) and the images."""
    display = display_images(results)
    prepared = results.prepared
    verdict = dict(results.prediction.verdict)
    data = {
        "case": results.inputs.name,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "software": software_versions(),
        "model": model_data(results),
        "inputs": results.inputs.sources,
        "verdict": verdict,
        "ncbv": ncbv_statistics(results),
        "curves": curves_data(results),
        "perfusion": perfusion_data(prepared.perfusion),
        "ftb": ftb_data(results),
        "habitats": habitats_data(results),
        "invasion": invasion_data(results),
        "protocol": protocol_data(results),
        "registration": {name: {"final_mattes_mi": qc["final_mattes_mi"], "quality": qc.get("quality"),
                                "warnings": qc["warnings"]}
                         for name, qc in prepared.qc.get("registration", {}).items()},
        "warnings": list(prepared.qc.get("warnings", [])),
        "ctv": ctv_data(results),
        "dicom": results.dicom_files,
        "display": slice_positions(display),
        # the habitat and invasion models' notices: habitats.model.notice, invasion.model.notice
        "notices": [DEMO_NOTICE] if results.model.synthetic else [],
        "notes": list(results.notes),
    }
    return data, display


def perfusion_data(perfusion) -> dict:
    if perfusion is None:
        return {"skipped": PERFUSION_SKIPPED}
    return {key: perfusion.report.get(key) for key in (
        "arrival_frame", "arrival_time_s", "baseline_frames", "leakage_method", "nawm_source", "nawm_hemisphere",
        "nawm_volume_ml", "nawm_mean_rcbv", "brain_mask_source", "warnings")}


# --- the page ----------------------------------------------------------------------------------------------


PAGE_INCHES = (18.0, 14.5)
PAGE_DPI = 100  # 1800 x 1450 pixels: every text at least 10 pt = 14 px at 100 %
PAGE_ROWS = 6  # montage rows PAGE_INCHES holds; each further row (the invasion map's) makes the page taller
ROW_INCHES = 1.65  # a montage row's height on the page
GRID_TOP, GRID_BOTTOM = 0.93, 0.075  # the page's share (of its height) under the title and above the footer
ROWS = ("anatomy", "flair", "ncbv", "habitats", "probability", "invasion", "targets")
OPTIONAL_ROWS = ("ncbv", "habitats", "invasion")  # drawn when the run has them
ROW_TITLES = {"anatomy": "CE-T1\n+ lesion", "flair": "FLAIR\n(registered)", "ncbv": "nCBV",
              "habitats": "Perfusion\nhabitats", "probability": "Progression\nheat map",
              "invasion": "Invasion\nheat map", "targets": "CTV\nproposals"}
BACKGROUND = {"anatomy": "t1c", "flair": "flair", "ncbv": "t1c", "habitats": "t1c", "probability": "t1c",
              "invasion": "t1c", "targets": "t1c"}
VERDICT_COLOURS = {True: "#b2182b", False: "#2166ac"}
RECURRENCE_STYLE = ("white", "dashed")  # distinct from every lesion, prediction and target colour


def heat_map_colours():
    """Light yellow (low) to dark red (high): the most likely voxels are the most saturated on grey anatomy, and
    no probability looks like white matter or like a hole."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["YlOrRd"](np.linspace(0.15, 1.0, 256)), name="progression heat map")


def invasion_colours():
    """The invasion heat map: white-pink (low) to deep purple (high), so that it is never read as the progression
    map (yellow to red) beside it."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["RdPu"](np.linspace(0.2, 1.0, 256)), name="invasion heat map")


def habitat_colours():
    """Label value -> colour (HABITATS), value 0 unused (masked out where drawn)."""
    from matplotlib.colors import ListedColormap

    colours = [(0.0, 0.0, 0.0)] * (max(h.value for h in HABITATS) + 1)
    for habitat in HABITATS:
        colours[habitat.value] = habitat.colour
    return ListedColormap(colours, name="perfusion habitats")


def _window(image: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    values = image[brain] if brain.any() else image.ravel()
    low, high = np.percentile(values, [1, 99.5])
    return float(low), float(high if high > low else low + 1)


def _plane(volume: np.ndarray, orientation: str, index: int) -> np.ndarray:
    return volume[index] if orientation == "axial" else volume[:, index, :]


def _outline(ax, mask: np.ndarray, colour, width: float = 1.3, style: str = "solid") -> None:
    # No ``origin`` here: contour puts Z[i, j] at (x=j, y=i) as imshow does, whichever way imshow's y axis runs
    # (contour's own ``origin`` would shift or flip the outline against the image).
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width, linestyles=style)


def _draw_panel(ax, display: Display, row: str, orientation: str, index: int, windows: dict) -> object:
    """One image; returns the overlay's mappable (for the row's colour bar) or None."""
    origin = "upper" if orientation == "axial" else "lower"  # axial: anterior up; coronal: superior up
    image = lambda name: _plane(display.images[name], orientation, index)  # noqa: E731 - local shorthand
    background = BACKGROUND[row]
    ax.imshow(image(background), cmap="gray", vmin=windows[background][0], vmax=windows[background][1],
              origin=origin, interpolation="bilinear")
    lesion = image("lesion")
    mappable = None
    if row in ("anatomy", "flair"):
        for value, (_, colour) in LESION_SEGMENTS.items():
            _outline(ax, lesion == value, colour)
    elif row == "ncbv":
        overlay = np.ma.masked_where(image("brain") == 0, image("ncbv"))
        mappable = ax.imshow(overlay, cmap="turbo", vmin=NCBV_RANGE[0], vmax=NCBV_RANGE[1], alpha=0.6, origin=origin,
                             interpolation="bilinear")
        _outline(ax, lesion > 0, "white", 0.9)
    elif row == "habitats":
        labels = image("habitats")
        colours = habitat_colours()
        ax.imshow(np.ma.masked_equal(labels, 0), cmap=colours, vmin=-0.5, vmax=colours.N - 0.5, alpha=0.75,
                  origin=origin, interpolation="nearest")
        _outline(ax, lesion > 0, "white", 0.9)
    elif row == "probability":
        probability = image("probability")
        overlay = np.ma.masked_where((probability < HEAT_MAP_LOWER) | (image("brain") == 0), probability)
        mappable = ax.imshow(overlay, cmap=heat_map_colours(), vmin=0.0, vmax=1.0, alpha=0.8, origin=origin,
                             interpolation="bilinear")
        _outline(ax, image("nel") > 0, LESION_SEGMENTS[2][1], 1.0)
        _outline(ax, image("progression") > 0, "cyan", 1.6)
    elif row == "invasion":
        probability = image("invasion")
        overlay = np.ma.masked_where((probability < HEAT_MAP_LOWER) | (image("brain") == 0), probability)
        mappable = ax.imshow(overlay, cmap=invasion_colours(), vmin=0.0, vmax=1.0, alpha=0.8, origin=origin,
                             interpolation="bilinear")
        _outline(ax, lesion > 0, "white", 0.9)
        _outline(ax, image("invasion_label") > 0, INVASION_COLOUR, 1.6)
    else:
        for key, _, mask in display.targets:
            _outline(ax, _plane(mask, orientation, index), TARGET_COLOURS.get(key.replace("ptv_", ""), "w"))
    if "recurrence" in display.images and row in ("probability", "invasion", "targets"):
        _outline(ax, image("recurrence") > 0, RECURRENCE_STYLE[0], 1.6, RECURRENCE_STYLE[1])
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def _orientation_marks(ax, orientation: str) -> None:
    style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.98, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.98, "A" if orientation == "axial" else "S", ha="center", va="top", **style)


def _lines_for(row: str, display: Display) -> list[tuple[str, object, str]]:
    """(label, colour, line style) of what the row's outlines mean."""
    lines: list[tuple[str, object, str]] = []
    if row == "anatomy":
        lines = [(name, colour, "solid") for name, colour in LESION_SEGMENTS.values()]
    elif row == "ncbv":
        lines = [("lesion outline", "white", "solid")]
    elif row == "probability":
        lines = [("non-enhancing lesion", LESION_SEGMENTS[2][1], "solid"), ("p \u2265 0.5 inside it", "cyan", "solid")]
    elif row == "invasion":
        lines = [(INVASION_NAME.lower(), INVASION_COLOUR, "solid")]  # the white lesion outline: as in the nCBV row
    elif row == "targets":
        star = " *" if display.demo_model else ""
        lines = [(name + (star if key in ("ai", "boost") else ""), TARGET_COLOURS.get(key.replace("ptv_", ""), "w"),
                  "solid") for key, name, _ in display.targets]
    if "recurrence" in display.images and row in ("probability", "invasion", "targets"):
        lines.append(("recurrence (reference)", *RECURRENCE_STYLE))
    return lines


def _row_key(fig, cell, row: str, mappable, display: Display, data: dict) -> None:
    """The row's colour bar (horizontal, with units) and the legend of its outlines, right of its panels."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    key = fig.add_subplot(cell)
    key.axis("off")
    top = 0.98
    if mappable is not None:
        bar = fig.colorbar(mappable, cax=key.inset_axes([0.08, 0.84, 0.8, 0.08]), orientation="horizontal")
        bar.ax.tick_params(labelsize=10)
        bar.set_label({"ncbv": "nCBV (ratio to NAWM, unitless)", "invasion": "probability of invasion (0\u20131)"}
                      .get(row, "probability of progression (0\u20131)"), fontsize=10.5)
        top = 0.56
    if row == "flair":
        verdict = _registration_verdict("flair", data["registration"]["flair"]) if "flair" in data["registration"] \
            else "FLAIR not registered"
        key.text(0.02, 0.5, f"FLAIR registered to CE-T1\n({verdict});\nlesion outlines as above",
                 fontsize=10, va="center", transform=key.transAxes)
    if row == "habitats":
        _habitat_key(key, data["habitats"])
    if row == "invasion":
        _invasion_key(key, data["invasion"])
        top = 0.56
    lines = _lines_for(row, display)
    if lines:
        # White outlines get a dark edge in the legend, or they would vanish on the white page.
        edge = [patheffects.withStroke(linewidth=4.5, foreground="0.3")]
        handles = [Line2D([], [], color=c, lw=2.5, ls=s, label=n, path_effects=edge if c == "white" else None)
                   for n, c, s in lines]
        where = (0.55, top) if row == "invasion" else (0.0, top)  # its numbers take the left half
        key.legend(handles=handles, loc="upper left", bbox_to_anchor=where, fontsize=9.5, frameon=False,
                   handlelength=1.6, labelspacing=0.35, borderaxespad=0.0)
    if row == "probability" and display.demo_model:
        key.text(0.02, 0.0, "Demo model trained on synthetic\ndata \u2014 not for clinical use", color="#b2182b",
                 fontsize=9, fontweight="bold", transform=key.transAxes, va="bottom")


def invasion_lines(invasion: dict) -> list[str]:
    """The invasion map's numbers as the page shows them: volume, threshold and the AUC against the recurrence."""
    lines = [f"{invasion['label_volume_ml']:.1f} mL at p \u2265 {invasion['threshold']:g}"]
    evaluation = invasion.get("evaluation") or {}
    if evaluation.get("auc") is not None:
        lines.append(f"recurrence AUC {evaluation['auc']:.2f}")
    elif evaluation:
        lines.append("recurrence AUC n/a")
    return lines


def _invasion_key(ax, invasion: dict) -> None:
    ax.text(0.02, 0.56, "\n".join(invasion_lines(invasion)), fontsize=9, va="top", transform=ax.transAxes,
            linespacing=1.3)
    if invasion["model"]["synthetic"]:
        ax.text(0.02, 0.0, "Demo invasion model trained on\nsynthetic data \u2014 not for clinical use",
                color="#b2182b", fontsize=8.5, fontweight="bold", transform=ax.transAxes, va="bottom")


def _habitat_key(ax, habitats: dict) -> None:
    """The habitats row's legend and fractions in one table: each habitat's name in its colour, then the percentage
    of the contrast-enhancing and of the non-enhancing lesion it covers."""
    fractions = habitats["fractions"]
    rows = [["", h.name, *(_percent(region_share(fractions[region], h, region)) for region in REGIONS)]
            for h in HABITATS]
    header = ["", f"Habitat (% of {' / '.join(REGIONS)})", *REGIONS]
    table = ax.table(cellText=rows, colLabels=header, colWidths=[0.04, 0.75, 0.105, 0.105], loc="upper left",
                     cellLoc="center", bbox=[0.0, 0.26, 1.0, 0.74])
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        cell.PAD = 0.04
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(fontweight="bold")
        elif c == 0:  # the swatch: the overlay's own colour
            cell.set_facecolor(HABITATS[r - 1].colour)
        elif c == 1:
            cell.set_text_props(ha="left")
    if habitats["model"]["synthetic"]:
        ax.text(0.0, 0.0, "Demo habitat model trained on\nsynthetic data \u2014 not for clinical use",
                color="#b2182b", fontsize=9, fontweight="bold", transform=ax.transAxes, va="bottom")


def region_share(fractions: dict, habitat, region: str) -> float | None:
    """A habitat's fraction of a lesion region: 0 when it may occur there but was not found, None when it cannot
    occur there (perinecrotic outside the CEL, oedema outside the NEL)."""
    if habitat.key in fractions:
        return float(fractions[habitat.key])
    return 0.0 if region in habitat.regions else None


def _percent(fraction) -> str:
    return "" if fraction is None else f"{100 * float(fraction):.0f}"


def montage_rows(display: Display) -> tuple[str, ...]:
    """The montage's rows: without nCBV (no DSC series), habitats or an invasion map, their rows are left out."""
    return tuple(row for row in ROWS if row not in OPTIONAL_ROWS or row in display.images)


def _montage(fig, cells, display: Display, data: dict) -> None:
    brain = display.images["brain"] > 0
    windows = {name: _window(display.images[name], brain) for name in ("t1c", "flair")}
    panels = [("axial", z, s) for z, s in zip(display.axial, data["display"]["axial_s_mm"])] + \
             [("coronal", y, a) for y, a in zip(display.coronal, data["display"]["coronal_a_mm"])]
    for r, row in enumerate(montage_rows(display)):
        mappable = None
        for c, (orientation, index, where) in enumerate(panels):
            ax = fig.add_subplot(cells[r, c])
            mappable = _draw_panel(ax, display, row, orientation, index, windows) or mappable
            if r == 0:
                label = f"Axial S {where:+.0f} mm" if orientation == "axial" else f"Coronal A {where:+.0f} mm"
                ax.set_title(label, fontsize=10)
                _orientation_marks(ax, orientation)
            if c == 0:
                ax.set_ylabel(ROW_TITLES[row], fontsize=12, fontweight="bold")
        _row_key(fig, cells[r, len(panels)], row, mappable, display, data)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(ax, header: list[str], rows: list[list[str]], widths: list[float], font: float = 10.5,
           colours: list | None = None):
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, colWidths=widths, loc="upper left", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(font)
    table.scale(1.0, 1.45)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(fontweight="bold")
        if c == 0 and r > 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
            if colours and colours[r - 1] is not None:
                cell.set_facecolor((*colours[r - 1], 0.35))
    return table


def _wrapped(lines: list[str], width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, subsequent_indent="   ") for line in lines)


def _verdict_panel(ax, data: dict) -> None:
    ax.axis("off")
    verdict, model = data["verdict"], data["model"]
    predicted = verdict["progression_predicted"]
    headline = "PROGRESSION PREDICTED" if predicted else "NO PROGRESSION PREDICTED"
    ax.text(0.0, 1.0, headline, fontsize=21, fontweight="bold", color="white", va="top", transform=ax.transAxes,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": VERDICT_COLOURS[predicted], "edgecolor": "none"})
    lines = [
        f"Predicted region: {verdict['predicted_volume_ml']:.2f} mL ({verdict['predicted_voxels']} voxels) inside "
        f"the non-enhancing lesion of {verdict['nel_volume_ml']:.1f} mL",
        f"Highest probability in the non-enhancing lesion: {verdict['max_probability_in_nel']:.2f}",
        f"Rule: {verdict['rule']}",
        f"Model: {model['title']} ({model['id']}, sha256 {str(model['sha256'])[:12]}\u2026)",
    ]
    top = 0.78
    if model["synthetic"]:
        ax.text(0.0, top, DEMO_NOTICE, fontsize=11.5, fontweight="bold", color="#b2182b", va="top",
                transform=ax.transAxes)
        top -= 0.13
    ax.text(0.0, top, _wrapped(lines, 66), fontsize=11, va="top", transform=ax.transAxes, linespacing=1.45)


def _skipped(ax, title: str, text: str) -> None:
    """In place of a table or plot that needs perfusion: its title and why it is not there."""
    ax.axis("off")
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left")
    ax.text(0.0, 0.8, text[0].upper() + text[1:] + ".", fontsize=11.5, va="top", transform=ax.transAxes)


def _ncbv_table(ax, data: dict) -> None:
    if data["ncbv"].get("skipped"):
        _skipped(ax, "nCBV by region", data["ncbv"]["skipped"])
        return
    rows, colours = [], []
    segment_colours = {name: colour for name, colour in LESION_SEGMENTS.values()}
    ftb = data["ftb"].get("regions", {})
    for name, stats in data["ncbv"]["regions"].items():
        rows.append([name, _fmt(stats["volume_ml"], 1), _fmt(stats["mean"]), _fmt(stats["median"]),
                     _fmt(stats["p90"]), _ftb_cell(ftb.get(name))])
        colours.append(segment_colours.get(name, (0.0, 1.0, 1.0) if name == PROGRESSION_NAME else None))
    _table(ax, ["nCBV (ratio to NAWM)", "mL", "mean", "median", "90th", "FTB %"], rows,
           [0.45, 0.08, 0.1, 0.11, 0.09, 0.17], font=10, colours=colours)
    ax.set_title("nCBV and fractional tumour burden (FTB) by region", fontsize=12, fontweight="bold", loc="left")
    if data["ftb"].get("thresholds_ncbv"):
        low, high = data["ftb"]["thresholds_ncbv"]
        ax.text(0.0, -0.03, _wrapped([f"FTB %: voxels with nCBV < {low:g} / {low:g}\u2013{high:g} / > {high:g} "
                                      "(low / intermediate / high; Iv et al. 2019 thresholds, approximate on nCBV)"],
                                     82), fontsize=9.5, va="top", transform=ax.transAxes)


def _ftb_cell(fractions: dict | None) -> str:
    """low/intermediate/high percentages of a region's classed voxels, or a dash."""
    if not fractions or fractions.get("voxels", 0) == 0:
        return "\u2013"
    return "/".join(f"{100 * fractions[key]:.0f}" for key in FTB_KEYS.values())


def _curves(ax, data: dict) -> None:
    curves = data["curves"]
    if curves.get("skipped"):
        _skipped(ax, "Mean \u0394R2* curves", curves["skipped"])
        return
    colours = {name: colour for name, colour in LESION_SEGMENTS.values()}
    colours.update({"Whole brain": (0.45, 0.45, 0.45), "NAWM reference": (0.1, 0.1, 0.1)})
    for name, values in curves["delta_r2s_per_s"].items():
        ax.plot(curves["time_s"], values, label=name, color=colours.get(name), lw=2,
                ls="--" if name == "NAWM reference" else "-")
    ax.set_xlabel("time (s)", fontsize=11)
    ax.set_ylabel("mean \u0394R2* (1/s)", fontsize=11)
    ax.set_title("Mean \u0394R2* curves (leakage-corrected, DSC grid)", fontsize=12, fontweight="bold", loc="left")
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9.5, frameon=False)


def _registration_verdict(name: str, qc: dict) -> str:
    quality = qc.get("quality") or {}
    contrast = quality.get("edge_alignment_contrast")
    if contrast is None:
        return f"{name.upper()} not judged (Mattes MI {_fmt(qc['final_mattes_mi'])})"
    return f"{name.upper()} {contrast:.2f} (threshold {quality['threshold']:.2f}): {quality['verdict']}"


def _qc_text(ax, data: dict) -> None:
    ax.axis("off")
    registration = data["registration"]
    lines = ["Registration to CE-T1 (edge-alignment contrast against its calibrated threshold): "
             + ", ".join(_registration_verdict(name, qc) for name, qc in registration.items())]
    perfusion = data["perfusion"]
    if perfusion.get("skipped"):
        lines.append(perfusion["skipped"][0].upper() + perfusion["skipped"][1:])
    if perfusion.get("arrival_time_s") is not None:
        lines.append(f"Bolus arrival {perfusion['arrival_time_s']:.1f} s; leakage correction "
                     f"{perfusion.get('leakage_method')}; NAWM reference {_fmt(perfusion.get('nawm_volume_ml'), 1)} mL "
                     f"({perfusion.get('nawm_hemisphere') or perfusion.get('nawm_source')})")
    if data["protocol"].get("items"):
        lines.append(summary_line(data["protocol"]))
    warnings = data["warnings"] or ["none"]
    lines.append("Warnings: " + "; ".join(warnings))
    lines += [f"Note: {note}" for note in data.get("notes", []) if note != perfusion.get("skipped")]
    ax.text(0.0, 1.0, _wrapped(lines, 70), fontsize=10.5, va="top", transform=ax.transAxes, linespacing=1.45)


def _ctv_table(ax, data: dict) -> None:
    ctv = data["ctv"]
    with_metrics = ctv["recurrence"] is not None
    header = ["Target", "Volume (mL)"] + (["Sensitivity", "Specificity", "Dice", "HD95 (mm)", "Tversky", "PCC",
                                           "Pattern"] if with_metrics else ["How it is built"])
    rows, colours = [], []
    for target in ctv["targets"]:
        uses_model = target["scheme"] in ("ai", "boost")
        name = target["name"] + (" *" if uses_model and data["model"]["synthetic"] else "")
        row = [name, _fmt(target["volume_ml"], 1)]
        if with_metrics:
            m = target["metrics"]
            row += [_fmt(m["sensitivity"], 3), _fmt(m["specificity"], 3), _fmt(m["dice"], 3), _fmt(m["hd95_mm"], 1),
                    _fmt(m["tversky"], 3), _fmt(m["pcc"], 3), m["pattern"]]
        else:
            row.append(target["description"][:90])
        rows.append(row)
        colours.append(TARGET_COLOURS.get(target["key"].replace("ptv_", "")))
    widths = [0.27, 0.08] + ([0.09, 0.09, 0.07, 0.09, 0.08, 0.07, 0.09] if with_metrics else [0.62])
    _table(ax, header, rows, widths, colours=colours)
    title = "Target volumes"
    if with_metrics:
        title += (f" and their metrics against the recurrence ({ctv['recurrence']['volume_ml']:.1f} mL, "
                  f"from {Path(str(ctv['recurrence']['source'])).name})")
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left")


def _footer(fig, data: dict) -> None:
    notes = [TARGET_NOTICE]
    if data["model"]["synthetic"]:
        notes.insert(0, f"* Uses the predicted progression. {DEMO_NOTICE}.")
    if data["ctv"]["recurrence"] is not None:
        notes.append("Sensitivity |R\u2229T|/|R|, specificity within the brain, HD95 symmetric surface distance, "
                     "Tversky \u03b1 0.02 / \u03b2 0.98, PCC (Tran 2025); R recurrence, T target.")
    software = data["software"]
    notes.append(f"GliomaProgression {software.get('gliomaprogression')} \u00b7 nnU-Net {software.get('nnunetv2')} "
                 f"\u00b7 torch {software.get('torch')} \u00b7 SimpleITK {software.get('SimpleITK')} \u00b7 "
                 f"{data['created']}")
    fig.text(0.015, 0.008, "\n".join(notes), fontsize=10, va="bottom", linespacing=1.45)


def render_report(data: dict, display: Display, path: Path) -> Path:
    """Draw the page and write it as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    rows = len(montage_rows(display))
    extra = max(rows - PAGE_ROWS, 0)
    fig = Figure(figsize=(PAGE_INCHES[0], PAGE_INCHES[1] + extra * ROW_INCHES / (GRID_TOP - GRID_BOTTOM)), dpi=PAGE_DPI,
                 facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(0.015, 0.988, f"GliomaProgression report \u2014 {data['case']}", fontsize=20, fontweight="bold", va="top")
    habitats = "" if data["habitats"].get("skipped") else "perfusion habitats, "
    subtitle = (f"Pre-operative CE-T1, FLAIR and DSC perfusion: nCBV, {habitats}predicted progression inside the "
                "non-enhancing "
                "lesion, and target-volume proposals")
    if data["perfusion"].get("skipped"):
        subtitle = ("Pre-operative CE-T1 and FLAIR (perfusion skipped: no DSC series): predicted progression inside "
                    "the non-enhancing lesion, and target-volume proposals")
    fig.text(0.015, 0.96, subtitle, fontsize=12, va="top")
    outer = GridSpec(2, 2, figure=fig, left=0.045, right=0.985, top=GRID_TOP, bottom=GRID_BOTTOM,
                     width_ratios=[2.05, 1.0], height_ratios=[5.0 * max(rows, PAGE_ROWS) / PAGE_ROWS, 1.3], wspace=0.06, hspace=0.13)
    panels = len(display.axial) + len(display.coronal)
    montage = outer[0, 0].subgridspec(len(montage_rows(display)), panels + 1, wspace=0.03, hspace=0.05,
                                      width_ratios=[1.0] * panels + [2.15])
    _montage(fig, montage, display, data)
    # The text panel holds registration, perfusion, protocol-check and warning lines: room for about eight.
    side = outer[0, 1].subgridspec(4, 1, height_ratios=[1.35, 1.15, 1.25, 0.8], hspace=0.42)
    _verdict_panel(fig.add_subplot(side[0]), data)
    _ncbv_table(fig.add_subplot(side[1]), data)
    _curves(fig.add_subplot(side[2]), data)
    _qc_text(fig.add_subplot(side[3]), data)
    _ctv_table(fig.add_subplot(outer[1, :]), data)
    _footer(fig, data)
    fig.savefig(Path(path), format="png", dpi=PAGE_DPI)  # into the run's staging folder: no partial file stays
    return Path(path)
