"""A case folder on disk (the layout every command reads and writes) and its Slicer scene.

Layout::

    t1c.nii.gz  flair.nii.gz  dsc.nii.gz (4D)  dsc.json  lesion.nii.gz (BraTS 2024 labels on the CE-T1 grid)
    truth/  (synthetic cases only) cbv, cbf, ncbv, k2, nawm, brain_dsc (DSC grid); brain, progression
            (CE-T1 grid); truth.json
    NOTICE.txt (synthetic cases only)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from CTVPlannerLib import terminology

from .files import read_volume, staged_output_folder, write_json, write_volume
from .phantom import MNI_NOTICE, SYNTHETIC_NOTICE, SyntheticCase

SEGMENTS = {
    1: ("Necrosis", (0.85, 0.80, 0.30)),
    2: ("Non-enhancing lesion (SNFH)", (0.35, 0.75, 0.35)),
    3: ("Enhancing tumour", (0.90, 0.20, 0.20)),
    4: ("Resection cavity", (0.30, 0.50, 0.90)),
}
PROGRESSION_SEGMENT = {1: ("Future progression (truth)", (0.85, 0.25, 0.85))}
# Terminology entries of the segments above, by label value (declared in CTVPlannerLib.terminology).
SEGMENT_TERMINOLOGY = {value: terminology.lesion_entry(value) for value in SEGMENTS}
PROGRESSION_TERMINOLOGY = {1: terminology.entry("neoplasm")}


def write_case(case: SyntheticCase, out: str | os.PathLike) -> Path:
    """Write a synthetic case folder; nothing appears at ``out`` unless every file was written."""
    with staged_output_folder(out) as staging:
        write_volume(case.t1c, staging / "t1c.nii.gz")
        write_volume(case.flair, staging / "flair.nii.gz")
        write_volume(case.dsc, staging / "dsc.nii.gz", time_spacing=case.config.tr_s)
        write_json(dsc_sidecar(case), staging / "dsc.json")
        write_volume(case.lesion, staging / "lesion.nii.gz")
        truth = staging / "truth"
        truth.mkdir()
        for name, volume in case.truth.items():
            write_volume(volume, truth / f"{name}.nii.gz")
        write_json(case.metadata, truth / "truth.json")
        (staging / "NOTICE.txt").write_text(f"{SYNTHETIC_NOTICE}\n\n{MNI_NOTICE}\n", encoding="utf-8")
    return Path(out)


def dsc_sidecar(case: SyntheticCase) -> dict:
    """BIDS-style sidecar of the DSC series (seconds, as BIDS)."""
    return {
        "RepetitionTime": case.config.tr_s,
        "EchoTime": case.config.te_s,
        "FrameTimes": [round(float(t), 6) for t in case.frame_times_s],
        "ContrastBolusIngredient": "GADOLINIUM",
        "Description": SYNTHETIC_NOTICE,
    }


def read_frame_times(sidecar: str | os.PathLike, frames: int) -> np.ndarray:
    """Frame times (s) from a DSC sidecar: ``FrameTimes`` if present, else frame index x ``RepetitionTime``."""
    try:
        data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"The DSC sidecar {sidecar} could not be read as JSON ({error}).") from None
    if "FrameTimes" in data:
        times = np.asarray(data["FrameTimes"], dtype=float)
        if len(times) != frames:
            raise ValueError(f"The DSC sidecar {sidecar} lists {len(times)} frame times for {frames} frames.")
        return times
    if "RepetitionTime" not in data:
        raise ValueError(f"The DSC sidecar {sidecar} has neither FrameTimes nor RepetitionTime.")
    return np.arange(frames) * float(data["RepetitionTime"])


def load_case_into_scene(folder: str | os.PathLike, scene=None, name: str | None = None) -> dict:
    """Load a case folder into a scene: volumes, the DSC series as a sequence, the lesion segmentation (and the
    progression truth when present), grouped under one study in the subject hierarchy. Returns the nodes."""
    from . import mrml

    folder = Path(folder)
    scene = scene or mrml.current_scene()
    name = name or folder.name
    nodes = {
        "t1c": mrml.node_from_volume(read_volume(folder / "t1c.nii.gz", "CE-T1"), f"{name} CE-T1", scene),
        "flair": mrml.node_from_volume(read_volume(folder / "flair.nii.gz", "FLAIR"), f"{name} FLAIR", scene),
    }
    dsc = read_volume(folder / "dsc.nii.gz", "DSC")
    if dsc.array.ndim != 4:
        raise ValueError(f"The DSC file {folder / 'dsc.nii.gz'} is not a 4D series.")
    times = read_frame_times(folder / "dsc.json", dsc.array.shape[0])
    nodes["dsc"], nodes["dsc_browser"] = mrml.sequence_from_volume(dsc, times, f"{name} DSC", scene)
    lesion = read_volume(folder / "lesion.nii.gz", "lesion")
    nodes["lesion"] = mrml.segmentation_from_labelmap(lesion, SEGMENTS, f"{name} lesion", scene, SEGMENT_TERMINOLOGY)
    nodes["lesion"].SetReferenceImageGeometryParameterFromVolumeNode(nodes["t1c"])
    truth = folder / "truth"
    if (truth / "progression.nii.gz").exists():
        progression = read_volume(truth / "progression.nii.gz", "progression truth")
        nodes["progression_truth"] = mrml.segmentation_from_labelmap(
            progression, PROGRESSION_SEGMENT, f"{name} progression truth", scene, PROGRESSION_TERMINOLOGY)
        nodes["ncbv_truth"] = mrml.node_from_volume(read_volume(truth / "ncbv.nii.gz", "nCBV truth"),
                                                    f"{name} nCBV (truth)", scene)
    mrml.group_in_study(scene, name, {None: list(nodes.values())})
    return nodes


# Segment names (lower case, by substring) -> BraTS 2024 label value. The first match wins, so the more
# specific phrases come first ("non-enhancing lesion" before "enhancing").
_SEGMENT_NAME_RULES = (
    (("necro", "netc", "ncr", "non-enhancing tumor core", "non-enhancing tumour core"), 1),
    (("snfh", "non-enhancing lesion", "oedema", "edema", "flair", "t2"), 2),
    (("cavity", "resection", "rc"), 4),
    (("enhancing", "et"), 3),
)


def brats_value_for_segment(name: str) -> int:
    lowered = name.strip().lower()
    for keys, value in _SEGMENT_NAME_RULES:
        if any(lowered == key or (len(key) > 3 and key in lowered) for key in keys):
            return value
    raise ValueError(f"The segment '{name}' is not a known lesion part; name segments Necrosis, "
                     "Non-enhancing lesion (SNFH), Enhancing tumour or Resection cavity.")


def brats_labels_from_segmentation(segmentation, reference_node):
    """A lesion segmentation (segments named by lesion part) as BraTS 2024 labels on a reference grid."""
    from . import mrml

    names = mrml.segment_names(segmentation)
    if not names:
        raise ValueError(f"The lesion segmentation '{segmentation.GetName()}' has no segments.")
    labels = mrml.labelmap_from_segmentation(segmentation, reference_node,
                                             {name: brats_value_for_segment(name) for name in names})
    if not labels.array.any():
        grid = reference_node.GetName() if hasattr(reference_node, "GetName") else "the reference grid"
        raise ValueError(f"The lesion segmentation '{segmentation.GetName()}' does not overlap '{grid}'.")
    return labels
