"""The extension's MRML glue: volume node <-> array, labelmap <-> segmentation, 4D array <-> sequence, scenes.

The one file of the Lib packages that talks to Slicer. It imports ``slicer`` inside its functions and works
both in the Slicer application and with the ``slicer-core`` package (real MRML, no application): where the
application provides module logics (``slicer.modules.<name>.logic()``), they are used; headless, the same
logic classes are created once per scene and attached to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from GliomaProgressionLib.case.geometry import Volume, check_3d

# MRML written by slicer-core 5.13 is stamped with the oldest Slicer release the extension supports: the
# application reads the version to decide which compatibility fixes a scene needs, and warns when it is absent.
# Format as vtkMRMLScene writes and parses it ("<application> <major>.<minor>.<patch> <revision>", the revision a
# bare number): Slicer 5.12.3 is revision 34627 (commit count of its release commit + Slicer's revision offset).
SCENE_SLICER_VERSION = "Slicer 5.12.3 34627"

# Node attribute ("true") of volumes registered to the CE-T1 the lesion is drawn on, such as the nCBV map the
# progression model saw; CBV radiomics asks before it uses any other nCBV map.
ALIGNED_WITH_CE_T1 = "GliomaProgression.alignedWithCET1"

_headless_logics: dict[int, dict] = {}


def _slicer():
    import slicer

    return slicer


def _application_running() -> bool:
    return hasattr(_slicer(), "app") and hasattr(_slicer(), "modules")


def current_scene():
    """The scene the module logics work on: ``slicer.mrmlScene`` (created headless if there is none)."""
    slicer = _slicer()
    if getattr(slicer, "mrmlScene", None) is None:
        slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer.mrmlScene


def module_logic(name: str, scene=None):
    """A core module logic ('segmentations', 'sequences', 'volumes', 'colors') attached to ``scene``."""
    slicer = _slicer()
    scene = scene or current_scene()
    if _application_running() and scene is slicer.mrmlScene:
        return getattr(slicer.modules, name).logic()
    logics = _headless_logics.get(id(scene))
    if logics is None or logics["scene"] is not scene:
        logics = {"scene": scene, **_create_headless_logics(scene)}
        _headless_logics[id(scene)] = logics
    return logics[name]


def _create_headless_logics(scene) -> dict:
    import vtk

    slicer = _slicer()
    # slicer-core ships no colour files; the colour logic's warning about that is noise here.
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    try:
        return _attach_logics(scene)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)


def _attach_logics(scene) -> dict:
    slicer = _slicer()
    application = slicer.vtkSlicerApplicationLogic()
    # The colour logic looks for colour files under the application's home; slicer-core ships none.
    application.SetHomeDirectory(str(Path(slicer.__file__).parent))
    application.SetShareDirectory(".")
    application.SetMRMLScene(scene)
    logics = {"application": application}
    for name, cls in (("colors", slicer.vtkSlicerColorLogic), ("volumes", slicer.vtkSlicerVolumesLogic),
                      ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("sequences", slicer.vtkSlicerSequencesLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        logics[name] = logic
    return logics


def new_scene():
    """A fresh scene with the core logics attached (headless), made the current scene."""
    slicer = _slicer()
    slicer.mrmlScene = slicer.vtkMRMLScene()
    module_logic("colors", slicer.mrmlScene)
    return slicer.mrmlScene


# --- volumes ----------------------------------------------------------------------------------------------


def _ijk_to_ras_of(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node) -> Volume:
    """A copy of a scalar (or labelmap) volume node's voxels ``[k, j, i]`` and its IJK-to-RAS matrix.

    A volume under a transform is refused: its voxels would not be where its matrix says.
    """
    slicer = _slicer()
    if node is None or node.GetImageData() is None:
        raise ValueError("The volume node has no image data.")
    if node.GetParentTransformNode() is not None:
        raise ValueError(f"The volume '{node.GetName()}' is under a transform; harden the transform first.")
    return Volume(np.array(slicer.util.arrayFromVolume(node)), _ijk_to_ras_of(node))


def node_from_volume(volume: Volume, name: str, scene=None, node_class: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in ``scene`` with the voxels and geometry of ``volume`` (3D only)."""
    slicer = _slicer()
    scene = scene or current_scene()
    check_3d(volume, f"The volume '{name}'")  # a 4D series becomes a sequence (sequence_from_volume)
    node = scene.AddNewNodeByClass(node_class, name)
    update_node_from_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def update_node_from_volume(node, volume: Volume) -> None:
    slicer = _slicer()
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(volume.ijk_to_ras, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))


# --- segmentations ----------------------------------------------------------------------------------------


def segmentation_from_labelmap(labelmap: Volume, segments: dict[int, tuple[str, tuple[float, float, float]]],
                               name: str, scene=None, terminology: dict[int, str] | None = None):
    """A segmentation node with one segment per label value present in ``labelmap``.

    ``segments`` maps label value -> (segment name, RGB colour 0..1); values absent from the labelmap give
    no segment, values not in ``segments`` are refused. ``terminology`` maps label value -> the segment's
    terminology entry (built by ``CTVPlannerLib.terminology``); a value without one keeps Slicer's default.
    """
    scene = scene or current_scene()
    values = [int(v) for v in np.unique(labelmap.array) if v != 0]
    unknown = sorted(set(values) - set(segments))
    if unknown:
        raise ValueError(f"The labelmap for '{name}' has label values {unknown} with no segment name.")
    temporary = node_from_volume(Volume(labelmap.array.astype(np.int16), labelmap.ijk_to_ras),
                                 f"{name} labelmap", scene, "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    try:
        if not module_logic("segmentations", scene).ImportLabelmapToSegmentationNode(temporary, segmentation):
            raise ValueError(f"The labelmap for '{name}' could not be imported as a segmentation.")
    finally:
        display = temporary.GetDisplayNode()
        scene.RemoveNode(temporary)
        if display is not None:  # removing a volume leaves its display node in the scene
            scene.RemoveNode(display)
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segment = segmentation.GetSegmentation().GetNthSegment(index)
        label_name, colour = segments[segment.GetLabelValue()]
        segment.SetName(label_name)
        segment.SetColor(*colour)
        if terminology and segment.GetLabelValue() in terminology:
            segment.SetTerminology(terminology[segment.GetLabelValue()])
    return segmentation


def load_extension_terminology(path: str | os.PathLike, logic=None) -> bool:
    """Load a terminology list the extension ships (Slicer's JSON schema for terminology contexts) into the
    Terminologies module, so Slicer knows the codes of the extension's segments and offers them in its selector.

    Uses ``logic`` (a ``vtkSlicerTerminologiesModuleLogic``) when given, else the application's Terminologies
    module logic. Headless, with no application and no ``logic``, it does nothing and returns False. Returns True
    once loaded; a missing file or one the logic refuses raises ValueError.
    """
    slicer = _slicer()
    if logic is None:
        module = getattr(slicer.modules, "terminologies", None) if _application_running() else None
        if module is None:
            return False
        logic = module.logic()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"The terminology file {path} does not exist.")
    if not logic.LoadTerminologyFromFile(str(path)):  # the loaded context's name; empty on failure
        raise ValueError(f"Slicer's Terminologies module could not load {path}.")
    return True


def labelmap_from_segmentation(segmentation, reference, segment_values: dict[str, int] | None = None) -> Volume:
    """The segments of a segmentation as one labelmap on a reference grid (a volume node, or a ``Volume``
    whose spatial grid is used).

    ``segment_values`` maps segment name -> label value; by default each segment keeps its label value.
    Segments later in the segmentation win where segments overlap.
    """
    if reference is None:
        raise ValueError("A reference volume is needed to turn the segmentation into a labelmap.")
    scene = segmentation.GetScene()
    if isinstance(reference, Volume):
        shape = reference.array.shape[-3:]
        node = node_from_volume(Volume(np.zeros(shape, np.uint8), reference.ijk_to_ras), "grid", scene)
        try:
            return labelmap_from_segmentation(segmentation, node, segment_values)
        finally:
            scene.RemoveNode(node)
    import vtk

    slicer = _slicer()
    grid = volume_from_node(reference)
    result = np.zeros(grid.array.shape, np.uint8)
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(index)
        segment = segments.GetSegment(segment_id)
        value = segment_values.get(segment.GetName()) if segment_values else segment.GetLabelValue()
        if not value:
            continue
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            module_logic("segmentations", scene).ExportSegmentsToLabelmapNode(segmentation, ids, exported,
                                                                               reference)
            result[slicer.util.arrayFromVolume(exported) > 0] = value
        finally:
            scene.RemoveNode(exported)
    return Volume(result, grid.ijk_to_ras)


def segment_names(segmentation) -> list[str]:
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]



def lesion_part_masks(segmentation, reference, parts=(2, 3)) -> dict[int, np.ndarray]:
    """The lesion parts ``parts`` (BraTS values: 1 necrosis, 2 SNFH / non-enhancing, 3 enhancing, 4 cavity) of a
    lesion segmentation as boolean masks on a reference grid (a volume node or a ``Volume``).

    Each segment's part comes from its name by the one segment-name rule (``CTVPlannerLib.lesion.brats_class``);
    segments that name no lesion part (a progression prediction, a note) are left out. Where parts overlap the
    higher value wins (enhancing over non-enhancing), as in the BraTS label maps. A part with no segment gives an
    all-False mask.
    """
    from CTVPlannerLib.lesion import brats_class

    by_part: dict[int, list[str]] = {}
    for name in segment_names(segmentation):
        by_part.setdefault(brats_class(name), []).append(name)
    masks, taken = {}, None
    for part in sorted(parts, reverse=True):
        names = by_part.get(part, [])
        if taken is None:
            shape = (reference.array.shape[-3:] if isinstance(reference, Volume)
                     else volume_from_node(reference).array.shape)
            taken = np.zeros(shape, bool)
        if not names:  # an empty mapping would mean "every segment by its label value"
            masks[part] = np.zeros(taken.shape, bool)
            continue
        mask = labelmap_from_segmentation(segmentation, reference, {name: 1 for name in names}).array > 0
        masks[part] = mask & ~taken
        taken |= mask
    return masks


# --- results the user may edit ----------------------------------------------------------------------------------

# Attribute of a segmentation a module made: a digest of its segments as made and the voxel grid it was made on.
# A later Apply replaces an untouched result silently; one the user edited (painted, renamed, added or removed a
# segment) or one not made by a module is replaced only after asking.
RESULT_FINGERPRINT = "GliomaProgression.resultFingerprint"


def _segments_digest(segmentation, grid: Volume) -> str:
    names = segment_names(segmentation)
    labels = labelmap_from_segmentation(segmentation, grid, {name: index + 1 for index, name in enumerate(names)})
    digest = hashlib.sha256("\n".join(names).encode("utf-8"))
    digest.update(np.ascontiguousarray(labels.array, np.uint8).tobytes())
    return digest.hexdigest()


def stamp_result(segmentation, grid: Volume) -> None:
    """Record ``segmentation`` as made now on ``grid`` (what ``result_was_edited`` compares with)."""
    record = {"sha256": _segments_digest(segmentation, grid), "shape": [int(n) for n in grid.array.shape[-3:]],
              "ijk_to_ras": np.asarray(grid.ijk_to_ras, float).tolist()}
    segmentation.SetAttribute(RESULT_FINGERPRINT, json.dumps(record))


def result_was_edited(segmentation) -> bool:
    """Whether replacing ``segmentation``'s segments would lose work: True when it changed since
    ``stamp_result`` or holds segments no module stamped; False for an untouched result or an empty node."""
    text = segmentation.GetAttribute(RESULT_FINGERPRINT)
    if not text:
        return segmentation.GetSegmentation().GetNumberOfSegments() > 0
    try:
        record = json.loads(text)
        grid = Volume(np.zeros(record["shape"], np.uint8), np.array(record["ijk_to_ras"], float))
        return _segments_digest(segmentation, grid) != record["sha256"]
    except (ValueError, KeyError, TypeError):
        return True  # an attribute nobody here wrote


def replace_segments(node, made):
    """Move the segments of the segmentation ``made`` into ``node`` (its own segments removed) and remove
    ``made`` from the scene; returns ``node``. Keeps the node the user chose as an output."""
    node.GetSegmentation().RemoveAllSegments()
    for index in range(made.GetSegmentation().GetNumberOfSegments()):
        segment_id = made.GetSegmentation().GetNthSegmentID(index)
        node.GetSegmentation().CopySegmentFromSegmentation(made.GetSegmentation(), segment_id)
    display = made.GetDisplayNode()
    scene = made.GetScene()
    scene.RemoveNode(made)
    if display is not None and display.GetScene() is not None:
        scene.RemoveNode(display)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --- sequences --------------------------------------------------------------------------------------------


def sequence_from_volume(volume: Volume, times_s, name: str, scene=None):
    """A sequence node (index: time in s) of a 4D volume ``[t, k, j, i]``, with a browser to play it.

    Returns (sequence node, browser node); the browser's proxy volume is what views show.
    """
    slicer = _slicer()
    scene = scene or current_scene()
    frames = np.asarray(volume.array)
    times_s = np.asarray(times_s, dtype=float)
    if frames.ndim != 4 or len(times_s) != frames.shape[0]:
        raise ValueError(f"The sequence '{name}' needs a 4D array with one time per frame.")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    sequence.SetIndexType(sequence.NumericIndex)
    frame_node = slicer.vtkMRMLScalarVolumeNode()
    for frame, time in zip(frames, times_s):
        update_node_from_volume(frame_node, Volume(frame, volume.ijk_to_ras))
        sequence.SetDataNodeAtValue(frame_node, f"{time:g}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.AddSynchronizedSequenceNode(sequence)
    module_logic("sequences", scene).UpdateProxyNodesFromSequences(browser)
    return sequence, browser


# Sequence index units that are time. Slicer's own sequences (and sequence_from_volume) are indexed "time" in "s".
_SECONDS = {"s", "sec", "secs", "second", "seconds"}
_MILLISECONDS = {"ms", "msec", "msecs", "millisecond", "milliseconds"}
# What MultiVolumeImporter (Slicer's DICOM import of a multi-frame series) stores on the multivolume node and, when it
# loads the series as a sequence, copies onto the sequence node, whose index is then the frame number ("0", "1",
# ...) with an empty name and unit: the frame times as comma-separated numbers, the DICOM tag they came from, and
# its unit (ms for every time tag but GE's DeltaStartTime, in sec; "count" for TemporalPositionIdentifier).
FRAME_LABELS = "MultiVolume.FrameLabels"
FRAME_LABEL_UNITS = "MultiVolume.FrameIdentifyingDICOMTagUnits"
FRAME_LABEL_TAG = "MultiVolume.FrameIdentifyingDICOMTagName"
# Frame tags whose values are an acquisition parameter that varies between frames, not the time of the frame.
_NOT_TIME_TAGS = {"EchoTime", "RepetitionTime", "FlipAngle"}


def volume_from_sequence(sequence, repetition_time_s: float | None = None) -> tuple[Volume, np.ndarray]:
    """The frames of a volume sequence as ``[t, k, j, i]`` and their times in seconds.

    The times come from, in this order:

    1. ``repetition_time_s`` (seconds), when given: frame n is at n x TR, whatever the sequence says;
    2. the sequence index, when its unit is a time unit (s, sec: as they are; ms: / 1000);
    3. ``MultiVolume.FrameLabels``, which Slicer's DICOM import (MultiVolumeImporter) puts on the sequence node
       (or on a legacy multivolume node), in the unit of ``MultiVolume.FrameIdentifyingDICOMTagUnits`` (ms
       when absent), converted to seconds.

    A sequence that carries frame numbers only (index "frame" or an empty unit and no frame labels, as a DICOM
    series ordered by temporal position or a 4D NRRD without index values loads) raises ValueError asking for
    the repetition time. ``sequence`` may also be a legacy ``vtkMRMLMultiVolumeNode`` (frames as the voxel
    components). Frames must share one voxel grid.
    """
    name = sequence.GetName()
    if hasattr(sequence, "GetNumberOfDataNodes"):
        count = sequence.GetNumberOfDataNodes()
        if count == 0:
            raise ValueError(f"The sequence '{name}' is empty.")
        volumes = [volume_from_node(sequence.GetNthDataNode(n)) for n in range(count)]
        if any(v.array.shape != volumes[0].array.shape or not np.allclose(v.ijk_to_ras, volumes[0].ijk_to_ras)
               for v in volumes):
            raise ValueError(f"The frames of '{name}' do not share one voxel grid.")
        series = Volume(np.stack([v.array for v in volumes]), volumes[0].ijk_to_ras)
    else:
        multivolume = volume_from_node(sequence)
        if multivolume.array.ndim != 4 or sequence.GetAttribute(FRAME_LABELS) is None:
            raise ValueError(f"The node '{name}' is neither a volume sequence nor a multivolume.")
        series = Volume(np.ascontiguousarray(np.moveaxis(multivolume.array, -1, 0)), multivolume.ijk_to_ras)
    return series, _frame_times_s(sequence, series.array.shape[0], repetition_time_s)


def _frame_times_s(sequence, count: int, repetition_time_s: float | None) -> np.ndarray:
    name = sequence.GetName()
    if repetition_time_s is not None:
        return _frame_times_from_tr(repetition_time_s, count, name)
    is_sequence = hasattr(sequence, "GetNumberOfDataNodes")
    unit = sequence.GetIndexUnit().strip().lower() if is_sequence else ""
    if unit in _SECONDS or unit in _MILLISECONDS:
        try:
            values = np.array([float(sequence.GetNthIndexValue(n)) for n in range(count)])
        except ValueError:
            raise ValueError(f"The sequence '{name}' has non-numeric index values.") from None
        return values / 1000.0 if unit in _MILLISECONDS else values
    labelled = sequence
    if is_sequence and sequence.GetAttribute(FRAME_LABELS) is None and count and \
            sequence.GetNthDataNode(0).GetAttribute(FRAME_LABELS) is not None:
        labelled = sequence.GetNthDataNode(0)
    labels = labelled.GetAttribute(FRAME_LABELS)
    frame_numbers_only = (f"The sequence '{name}' carries frame numbers only, not frame times; give the repetition "
                          "time (s) of the series.")
    if labels is None:
        if unit:
            raise ValueError(f"The sequence '{name}' is indexed by {sequence.GetIndexName() or 'value'} in "
                             f"'{sequence.GetIndexUnit()}', not by time; give the repetition time (s) of the series.")
        raise ValueError(frame_numbers_only)
    return _times_from_frame_labels(sequence, labelled, labels, count, frame_numbers_only)


def _times_from_frame_labels(sequence, labelled, labels: str, count: int, frame_numbers_only: str) -> np.ndarray:
    name = sequence.GetName()
    tag = (labelled.GetAttribute(FRAME_LABEL_TAG) or "").strip()
    unit = (labelled.GetAttribute(FRAME_LABEL_UNITS) or "ms").strip().lower()
    if unit == "count":  # TemporalPositionIdentifier: the frame's position, not its time
        raise ValueError(frame_numbers_only)
    if tag in _NOT_TIME_TAGS or not (unit in _SECONDS or unit in _MILLISECONDS):
        raise ValueError(f"The frames of '{name}' differ in {tag or 'a value'} ({unit}), not in time; load the DSC "
                         "series ordered by acquisition time or give its repetition time (s).")
    try:
        values = np.array([float(v) for v in labels.split(",")])
    except ValueError:
        raise ValueError(f"The frame times of '{name}' ({FRAME_LABELS}) are not numbers.") from None
    if values.size != count:
        raise ValueError(f"The sequence '{name}' has {count} frames but {values.size} frame times in {FRAME_LABELS}.")
    if hasattr(sequence, "GetNthIndexValue"):
        # MultiVolumeImporter indexes frame n by the value "n"; follow the index in case the order differs.
        try:
            order = [int(float(sequence.GetNthIndexValue(n))) for n in range(count)]
        except ValueError:
            order = list(range(count))
        if sorted(order) == list(range(count)):
            values = values[order]
    return values / 1000.0 if unit in _MILLISECONDS else values


# NIfTI xyzt_units time codes (bits 3-5) and their size in seconds.
_NIFTI_TIME_UNITS_S = {8: 1.0, 16: 1e-3, 24: 1e-6}


def sequence_from_file(path: str | os.PathLike, name: str | None = None, scene=None,
                       repetition_time_s: float | None = None):
    """Load a 4D DSC file as a sequence node indexed by time in seconds, with a browser to play it.

    Slicer's own sequence reader takes only NRRD (.seq.nrrd, .nrrd, .nhdr); this also loads a 4D NIfTI
    (.nii, .nii.gz).

    - NIfTI: voxels and geometry through SimpleITK (``files.read_image``, which refuses a truncated file); the
      frame interval is ``pixdim[4]`` in the time unit of ``xyzt_units`` (s, ms or us, converted to s), so
      frame n is at n x interval. A header with an unknown time unit or no interval is refused (ValueError,
      one sentence) unless ``repetition_time_s`` is given.
    - NRRD: read by Slicer's ``vtkMRMLVolumeSequenceStorageNode``; the times then come as in
      ``volume_from_sequence`` (a sequence saved by Slicer keeps its time index; a 4D NRRD without index
      values is indexed by frame number and needs ``repetition_time_s``).

    ``repetition_time_s`` (seconds), when given, overrides the file: frame n is at n x TR. ``name`` defaults to
    the file name without its extension. Returns (sequence node, browser node), as ``sequence_from_volume``.
    """
    path = Path(path)
    lower = path.name.lower()
    stem = path.name
    for suffix in (".nii.gz", ".nii", ".seq.nrrd", ".nrrd", ".nhdr"):
        if lower.endswith(suffix):
            stem = path.name[: -len(suffix)]
            break
    name = name or stem
    if lower.endswith((".nii", ".nii.gz")):
        series, times = _series_from_nifti(path, name, repetition_time_s)
    elif lower.endswith((".nrrd", ".nhdr")):
        series, times = _series_from_nrrd(path, name, repetition_time_s)
    else:
        raise ValueError(f"The DSC file {path} is neither NIfTI (.nii, .nii.gz) nor NRRD (.nrrd, .nhdr).")
    return sequence_from_volume(series, times, name, scene)


def _series_from_nifti(path: Path, name: str, repetition_time_s: float | None) -> tuple[Volume, np.ndarray]:
    import nibabel

    from GliomaProgressionLib.case.files import read_image
    from GliomaProgressionLib.case.geometry import volume_from_sitk

    image = read_image(path, "DSC series")
    if image.GetDimension() != 4:
        raise ValueError(f"The DSC file {path} is a {image.GetDimension()}D image; a 4D series (x, y, z, time) "
                         "is needed.")
    series = volume_from_sitk(image)
    frames = series.array.shape[0]
    if repetition_time_s is not None:
        return series, _frame_times_from_tr(repetition_time_s, frames, name)
    header = nibabel.load(str(path)).header
    scale = _NIFTI_TIME_UNITS_S.get(int(header["xyzt_units"]) & 0x38)
    interval = float(header["pixdim"][4])
    if scale is None or not np.isfinite(interval) or interval <= 0:
        raise ValueError(f"The NIfTI header of {path} gives no frame interval in a time unit (pixdim[4] = "
                         f"{interval:g}, time unit {header.get_xyzt_units()[1]}); give the repetition time (s).")
    return series, np.arange(frames) * interval * scale


def _series_from_nrrd(path: Path, name: str, repetition_time_s: float | None) -> tuple[Volume, np.ndarray]:
    slicer = _slicer()
    if not path.is_file():
        raise ValueError(f"The DSC file {path} does not exist.")
    scratch = slicer.vtkMRMLScene()  # read beside the user's scene: only the converted sequence joins it
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scratch.AddNode(storage)
    sequence = scratch.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    storage.SetFileName(str(path))
    if not storage.ReadData(sequence) or sequence.GetNumberOfDataNodes() == 0:
        raise ValueError(f"The DSC file {path} could not be read as a 4D NRRD series.")
    if sequence.GetNumberOfDataNodes() < 2:
        raise ValueError(f"The DSC file {path} holds one frame; a 4D series (x, y, z, time) is needed.")
    return volume_from_sequence(sequence, repetition_time_s)


def _frame_times_from_tr(repetition_time_s: float, frames: int, name: str) -> np.ndarray:
    tr = float(repetition_time_s)
    if not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"The repetition time of '{name}' must be a positive number of seconds, got "
                         f"{repetition_time_s!r}.")
    return np.arange(frames) * tr


def group_in_study(scene, subject: str, folders: dict, study: str = "Pre-operative MRI") -> None:
    """A subject item with one study: ``folders`` maps a folder name (``None``: directly in the study) to the nodes
    it holds (``None`` entries skipped)."""
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    study_item = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), subject), study)
    for folder_name, nodes in folders.items():
        parent = study_item if folder_name is None else hierarchy.CreateFolderItem(study_item, folder_name)
        for node in (node for node in nodes if node is not None):
            item = hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.SetItemParent(item, parent)
            else:  # headless (slicer-core): no subject hierarchy logic has given the node an item yet
                hierarchy.CreateItem(parent, node)


def linear_transform_node(matrix: np.ndarray, name: str, scene=None):
    """A linear transform node whose transform-to-parent is the 4x4 RAS matrix ``matrix``."""
    slicer = _slicer()
    scene = scene or current_scene()
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(matrix, float)))
    return node


def set_up_views(scene, background, foregrounds: dict, centre_ras, plot_chart=None, table=None,
                 opacity: float = 0.6, field_of_view_mm: float = 200.0) -> None:
    """Four-up + plot + table layout saved in the scene: each slice view (``Red``, ``Green``, ...) shows
    ``background`` under its foreground volume, centred on ``centre_ras``; the plot and table views show
    ``plot_chart`` and ``table``."""
    slicer = _slicer()
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout = layout_logic.GetLayoutNode()
    layout.SetViewArrangement(layout.SlicerLayoutFourUpPlotTableView)
    for view, volume in foregrounds.items():
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLScene(scene)
        slice_logic.SetSliceNode(scene.GetSingletonNode(view, "vtkMRMLSliceNode"))
        composite = slice_logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(volume.GetID())
        composite.SetForegroundOpacity(opacity)
        slice_node = slice_logic.GetSliceNode()
        slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm, slice_node.GetFieldOfView()[2])
        slice_node.JumpSliceByCentering(*centre_ras)
    if plot_chart is not None:
        scene.GetSingletonNode("PlotView1", "vtkMRMLPlotViewNode").SetPlotChartNodeID(plot_chart.GetID())
    if table is not None:
        scene.GetSingletonNode("TableView1", "vtkMRMLTableViewNode").SetTableNodeID(table.GetID())


def place_beside(nodes, reference_node) -> None:
    """Put nodes in the subject hierarchy folder (study) of ``reference_node``: results sit with their input."""
    slicer = _slicer()
    scene = reference_node.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else 0
    if not parent:
        return
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:  # headless (slicer-core): no subject hierarchy logic has given the node an item yet
            hierarchy.CreateItem(parent, node)


# --- tables and plots -----------------------------------------------------------------------------------


def table_from_columns(columns: dict[str, list], name: str, scene=None, units: dict[str, str] | None = None):
    """A table node with one column per entry: numbers become double columns, anything else strings."""
    import vtk

    scene = scene or current_scene()
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"The columns of table '{name}' have different lengths.")
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for column, values in columns.items():
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in values)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        for value in values:
            array.InsertNextValue(float(value) if numeric else str(value))
        table.AddColumn(array)
        if units and column in units:
            node.SetColumnUnitLabel(column, units[column])
    node.Modified()
    return node


def plot_curves(x: np.ndarray, curves: dict[str, np.ndarray], name: str, x_title: str, y_title: str,
                scene=None, colours: dict[str, tuple] | None = None):
    """A plot chart of curves sharing one x axis (a table node holds the values). Returns the chart node."""
    scene = scene or current_scene()
    table = table_from_columns({x_title: list(np.asarray(x, float)),
                                **{key: list(np.asarray(value, float)) for key, value in curves.items()}},
                               f"{name} table", scene)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    chart.SetTitle(name)
    for key in curves:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", key)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_title)
        series.SetYColumnName(key)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        if colours and key in colours:
            series.SetColor(*colours[key])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart



def dash_plot_series(chart, names) -> None:
    """Draw the series of ``chart`` named in ``names`` as dashed lines (reference curves beside measured ones)."""
    slicer = _slicer()
    names = set(names)
    for index in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(index)
        if series is not None and series.GetName() in names:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)


# --- scene bundles ----------------------------------------------------------------------------------------


def write_scene_bundle(path: str | os.PathLike, scene=None) -> Path:
    """Write ``scene`` as a Slicer data bundle (.mrb), atomically (temporary file, then rename)."""
    scene = scene or current_scene()
    path = Path(path).absolute()  # MRML's bundle writer refuses relative folders
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"The scene file {path} must end in .mrb.")
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.SetVersion(SCENE_SLICER_VERSION)
    for node in _storable_nodes(scene):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
    # The bundle's inner folder is named after the file, so the temporary file keeps the final name, in a
    # hidden folder beside the destination.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.partial-", dir=path.parent))
    try:
        if not scene.WriteToMRB(str(staging / path.name)):
            raise ValueError(f"The scene could not be written to {path}.")
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _storable_nodes(scene):
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def read_scene_bundle(path: str | os.PathLike, cache_folder: str | os.PathLike | None = None):
    """Read a .mrb into a new scene (headless); returns the scene. Used to check what was written."""
    slicer = _slicer()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"The scene file {path} does not exist.")
    scene = slicer.vtkMRMLScene()
    module_logic("colors", scene)
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.AddDataIOToScene()
    cache = Path(cache_folder or tempfile.mkdtemp(prefix="gliomaprog-mrb-"))
    scene.GetCacheManager().SetRemoteCacheDirectory(str(cache))
    scene._gliomaprog_remote_io = remote_io  # keep the IO logic alive as long as the scene
    if not scene.ReadFromMRB(str(path)):
        raise ValueError(f"The scene file {path} could not be read.")
    return scene


# --- module widgets: parameter node lifecycle -----------------------------------------------------------------


class ParameterNodeLifecycle:
    """The scripted-module template's widget lifecycle, written once for the three module widgets.

    The widget class also inherits ``slicer.util.VTKObservationMixin`` (so every observer is removed in
    ``cleanup``), sets ``self.logic`` and ``self.ui``, calls ``observeScene()`` at the end of ``setup`` and
    implements ``updateGui()``; a widget with background work overrides ``cancelJobs()``. As in the template, the
    GUI is bound to the parameter node (``connectGui``) while the module is shown, unbound on ``exit`` (the node is
    kept: a job that ends later still reads it), and released when the scene closes, after the jobs are
    cancelled (their results would land in the next scene). A Close Scene or a reload leaves no callback behind.
    """

    _parameterNode = None
    _parameterNodeGuiTag = None

    def observeScene(self):
        slicer = _slicer()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cancelJobs(self):
        """Stop the widget's background work (none by default)."""

    def cleanup(self):
        self.cancelJobs()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._unbindGui()

    def onSceneStartClose(self, caller, event):
        self.cancelJobs()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        self._unbindGui()
        self._parameterNode = parameterNode
        if parameterNode is not None:
            import vtk

            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self.updateGui()

    def _unbindGui(self):
        import vtk

        if self._parameterNode is None:
            return
        if self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller=None, event=None):
        self.updateGui()


# --- module widgets: background jobs and Python packages ------------------------------------------------------


class BackgroundJob:
    """A running process (``process.BackgroundProcess``) followed from a module panel: a Qt timer polls it (the
    application never waits), reports new output lines and progress, and calls ``onFinished(job)`` once, when it
    ends or is cancelled. ``installing``: a pip job (progress read from pip's output)."""

    POLL_MS = 250

    def __init__(self, kind, runner, folder, onProgress=None, onLines=None, onFinished=None, installing=False):
        import qt

        self.kind, self.runner, self.folder, self.installing = kind, runner, folder, installing
        self.code, self.cancelled, self._shownLines = None, False, 0
        self._onProgress, self._onLines, self._onFinished = onProgress, onLines, onFinished
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self.poll)
        self._timer.start()

    @property
    def running(self):
        return self.code is None

    def poll(self):
        code = self.runner.poll()
        if self._onLines and len(self.runner.lines) > self._shownLines:
            self._onLines(self.runner.lines[self._shownLines:])
        self._shownLines = len(self.runner.lines)
        if self._onProgress:
            self._onProgress(*self._progress())
        if code is not None and self.code is None:
            self._end(code)

    def _progress(self):
        if self.installing:
            from GliomaProgressionLib.dependencies import pip_progress

            progress = pip_progress(self.runner.lines)
        else:
            progress = self.runner.progress
        return progress.fraction, progress.message

    def cancel(self):
        """End the process and everything it started; the job folder is removed."""
        if self.code is None:
            self.cancelled = True
            self.runner.cancel()
            shutil.rmtree(self.folder, ignore_errors=True)
            self._end(-1)

    def _end(self, code):
        self._timer.stop()
        self.code = code
        if self._onFinished:
            self._onFinished(self)


def missing_packages(names, requirements_file=None) -> list:
    """Of the extension's requirements (``names``: PyPI names, or torch / radiomics), those not installed in this
    Slicer (``dependencies.MissingRequirement``). Empty outside the application: there the command line's
    environment provides them."""
    from GliomaProgressionLib import dependencies

    if not _application_running():
        return []
    return dependencies.missing_requirements(requirements_file or dependencies.REQUIREMENTS_FILE, only=names)


def offer_packages(missing, requester: str) -> bool:
    """Ask once whether to install ``missing``; False if the user declines. pyradiomics needs the SlicerRadiomics
    extension (one sentence, ValueError); torch comes from the PyTorch extension when it is installed (as
    SlicerNNUnet gets it), else ``start_package_install`` takes the CPU build from PyTorch's index."""
    from GliomaProgressionLib import dependencies

    slicer = _slicer()
    listed = "\n".join(f"- {m}" for m in missing)
    if not slicer.util.confirmOkCancelDisplay(
            f"This needs Python packages that are not installed:\n{listed}\n\nInstall them now? Slicer's own "
            "packages are kept at their versions.", windowTitle=f"{requester}: Python packages"):
        return False
    if any(m.provider == dependencies.RADIOMICS_EXTENSION for m in missing):
        raise ValueError("pyradiomics comes from the SlicerRadiomics extension: install it with the Extensions "
                         "Manager, restart Slicer and press the button again.")
    return True


def packages_left_after_extensions(missing) -> list:
    """Install torch with the PyTorch extension if it is there (it blocks, with its own dialog); returns what pip
    still has to install."""
    from GliomaProgressionLib import dependencies

    if not any(m.provider == dependencies.PYTORCH_EXTENSION for m in missing):
        return missing
    try:
        import PyTorchUtils
    except ImportError:
        return missing  # start_package_install installs the CPU build
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=dependencies.TORCH_VERSION)
    if torch is None:
        raise ValueError("The PyTorch extension could not install PyTorch: see the Python console for its reason.")
    return [m for m in missing if m.provider != dependencies.PYTORCH_EXTENSION]


class PackageInstalling:
    """For a module widget whose actions need Python packages: ``ensurePackages(names)`` is True when they are
    there; else it asks once, installs them in the background (progress in ``self.ui.statusLabel``, the widget's
    ``updateGui`` sees ``installing``) and returns False: the user presses the button again when it is done."""

    _installJob = None
    requester = "GliomaProgression"

    @property
    def installing(self):
        return self._installJob is not None

    def ensurePackages(self, names):
        if self._installJob is not None:
            return False
        missing = missing_packages(names, self.logic.requirementsFile)
        if not missing:
            return True
        if not offer_packages(missing, self.requester):
            return False
        missing = packages_left_after_extensions(missing)
        if not missing:
            return True
        runner, folder = start_package_install(missing)
        self._installJob = BackgroundJob("install", runner, folder, installing=True,
                                         onProgress=self._showInstallProgress, onFinished=self._onInstallFinished)
        self.updateGui()
        return False

    def cancelJobs(self):
        if self._installJob is not None:
            self._installJob.cancel()

    def _showInstallProgress(self, fraction, message):
        self.ui.statusLabel.text = message

    def _onInstallFinished(self, job):
        self._installJob = None
        self.ui.statusLabel.text = package_install_outcome(job)
        self.updateGui()


def start_package_install(missing):
    """pip in a background process, Slicer's packages (and torch) pinned at their installed versions; torch
    without the PyTorch extension is the CPU build from PyTorch's own index, as a step of its own (pip takes one
    index). Returns (process, folder); follow it with ``BackgroundJob(..., installing=True)``."""
    from GliomaProgressionLib import dependencies
    from GliomaProgressionLib.models import process

    folder = tempfile.mkdtemp(prefix="GliomaProgression-packages-")
    constraints = dependencies.write_constraints(os.path.join(folder, "constraints.txt"))
    with open(os.path.join(folder, "before.json"), "w", encoding="utf-8") as before:
        import json

        json.dump(dependencies.installed_versions(), before)
    if any(m.provider == dependencies.PYTORCH_EXTENSION for m in missing):
        command = dependencies.cpu_torch_command(constraints)
    else:
        command = dependencies.pip_install_command(dependencies.pip_requirements(missing), constraints)
    return process.BackgroundProcess(command).start(), folder


def package_install_outcome(job) -> str:
    """One line for the user after a pip job; its folder is removed."""
    import importlib
    import json

    from GliomaProgressionLib import dependencies

    try:
        with open(os.path.join(job.folder, "before.json"), encoding="utf-8") as before:
            versions = json.load(before)
    except OSError:
        versions = {}
    shutil.rmtree(job.folder, ignore_errors=True)
    if job.code != 0:
        return f"Installing the Python packages failed: {dependencies.pip_error(job.runner.lines)}"
    importlib.invalidate_caches()
    restart = dependencies.restart_needed(versions, dependencies.installed_versions())
    if restart:
        return f"Installed; restart Slicer to use the new {', '.join(restart)}."
    return "Installed the Python packages; press the button again to start."


def brats_labels_from_segmentation(segmentation, reference_node):
    """A lesion segmentation (segments named by lesion part) as BraTS 2024 labels on a reference grid."""
    from CTVPlannerLib.lesion import brats_value_for_segment

    names = segment_names(segmentation)
    if not names:
        raise ValueError(f"The lesion segmentation '{segmentation.GetName()}' has no segments.")
    labels = labelmap_from_segmentation(segmentation, reference_node,
                                             {name: brats_value_for_segment(name) for name in names})
    if not labels.array.any():
        grid = reference_node.GetName() if hasattr(reference_node, "GetName") else "the reference grid"
        raise ValueError(f"The lesion segmentation '{segmentation.GetName()}' does not overlap '{grid}'.")
    return labels
