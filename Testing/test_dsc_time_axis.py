"""The DSC time axis, in seconds, whichever way the series reached Slicer.

Slicer's DICOM import of a multi-frame DSC series (MultiVolumeImporter) makes a sequence indexed by frame number
(index name and unit empty, values "0", "1", ...) and keeps the frame times, in ms, in the attribute
MultiVolume.FrameLabels; a 4D NRRD without index values loads indexed "frame"; a 4D NIfTI carries its frame
interval in the header. The sequences below are built the way MultiVolumeImporterPlugin.load builds them (same
node classes, index name, unit, values, attributes and calls), on real slicer-core nodes.
"""

import json

import nibabel
import numpy as np
import pytest

from DSCPerfusionLib.pipeline import PerfusionOptions, compute_perfusion
from DSCPerfusionLib.simulation import simulate_dsc
from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.files import write_volume
from GliomaProgressionLib.case.geometry import Volume
from test_geometry import EXPECTED_RAS, _landmark_ras, _oblique_ijk_to_ras, _volume_with_landmark

TR_MS = 1500.0
TE = 0.030


def _frame_labels(values) -> str:
    """MultiVolume.FrameLabels as the plugin writes it: str() of each float, comma-separated."""
    return ",".join(str(v) for v in values)


def _multivolume_attributes(labels: str, tag: str, units: str, frames: int, strategy: str | None) -> dict:
    """The attributes MultiVolumeImporterPlugin's examine step sets on the multivolume node."""
    attributes = {"MultiVolume.FrameLabels": labels, "MultiVolume.FrameIdentifyingDICOMTagName": tag,
                  "MultiVolume.NumberOfFrames": str(frames), "MultiVolume.FrameIdentifyingDICOMTagUnits": units,
                  "MultiVolume.FrameFileList": ",".join(f"/dicom/IM{n:04d}" for n in range(frames * 2))}
    if strategy:
        attributes["MultiVolume.ParseStrategy"] = strategy
    for name, value in (("EchoTime", "30"), ("RepetitionTime", str(TR_MS)), ("FlipAngle", "60")):
        if name != tag:  # addAcquisitionAttributes
            attributes[f"MultiVolume.DICOM.{name}"] = value
    return attributes


def _load_as_volume_sequence(scene, series: Volume, attributes: dict, name="DSC perfusion"):
    """MultiVolumeImporterPlugin.load with loadAsVolumeSequence: the same calls, frame by frame."""
    import slicer

    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    sequence.SetIndexName("")
    sequence.SetIndexUnit("")
    for attribute, value in attributes.items():  # "Transfer all attributes from multivolume node"
        sequence.SetAttribute(attribute, value)
    for frame_number, frame_array in enumerate(series.array):
        frame = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")  # what DICOMScalarVolumePlugin.load returns
        frame.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(series.ijk_to_ras))
        slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(frame_array))
        proxy = scene.AddNewNodeByClass(frame.GetClassName())
        index_value = str(frame_number)
        sequence.SetDataNodeAtValue(proxy, index_value)
        scene.RemoveNode(proxy)
        sequence.UpdateDataNodeAtValue(frame, index_value, True)
        scene.RemoveNode(frame)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(name + " browser"))
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSaveChanges(sequence, True)
    browser.SetOverwriteProxyName(sequence, True)
    return sequence


def _landmark_series(frames: int = 4) -> Volume:
    return Volume(np.stack([_volume_with_landmark().array * (t + 1) for t in range(frames)]), _oblique_ijk_to_ras())


# The three ways the plugin labels the frames of a DSC series in time (examineFilesIPPInstanceNumber,
# examineFilesIPPAcqTime, initMultiVolumes by TriggerTime / AcquisitionTime / GE DeltaStartTime).
STRATEGIES = {
    "InstanceNumber*RepetitionTime": (lambda n: _frame_labels([0] + [TR_MS * f for f in range(1, n)]), "Time", "ms",
                                      "TemporalPosition_via_InstanceNumber*RepetitionTime"),
    "AcquisitionTime+IPP": (lambda n: _frame_labels([0] + [TR_MS * f for f in range(1, n)]), "AcquisitionTime", "ms",
                            "AcquisitionTime+ImagePositionPatient"),
    "TriggerTime": (lambda n: _frame_labels([TR_MS * f for f in range(n)]), "TriggerTime", "ms", None),
    # tm2ms of 10:12:03.25 and later frames, minus the first frame's time
    "AcquisitionTime": (lambda n: _frame_labels([(36723250.0 + TR_MS * f) - 36723250.0 for f in range(n)]),
                        "AcquisitionTime", "ms", None),
    "DeltaStartTime": (lambda n: _frame_labels([TR_MS / 1000 * f for f in range(n)]), "DeltaStartTime", "sec", None),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_multivolume_importer_sequence_times_in_seconds(scene, strategy):
    labels, tag, units, parse = STRATEGIES[strategy]
    series = _landmark_series()
    sequence = _load_as_volume_sequence(scene, series, _multivolume_attributes(labels(4), tag, units, 4, parse))
    assert sequence.GetIndexName() == "" and sequence.GetIndexUnit() == ""
    assert [sequence.GetNthIndexValue(n) for n in range(4)] == ["0", "1", "2", "3"]
    back, times = mrml.volume_from_sequence(sequence)
    np.testing.assert_allclose(times, [0.0, 1.5, 3.0, 4.5])
    assert np.array_equal(back.array, series.array)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


def test_frame_numbers_only_are_refused_with_one_sentence(scene):
    # TemporalPositionIdentifier: the plugin's unit is "count", the labels are positions, not times.
    attributes = _multivolume_attributes(_frame_labels([1.0, 2.0, 3.0]), "TemporalPositionIdentifier", "count", 3,
                                         None)
    sequence = _load_as_volume_sequence(scene, _landmark_series(3), attributes, name="GE DSC")
    with pytest.raises(ValueError, match=r"^The sequence 'GE DSC' carries frame numbers only, not frame times; "
                                         r"give the repetition time \(s\) of the series\.$"):
        mrml.volume_from_sequence(sequence)
    _, times = mrml.volume_from_sequence(sequence, repetition_time_s=1.5)
    np.testing.assert_allclose(times, [0.0, 1.5, 3.0])


def test_sequence_without_labels_or_time_unit_is_refused(scene):
    sequence = _load_as_volume_sequence(scene, _landmark_series(3), {}, name="bare")
    with pytest.raises(ValueError, match="'bare' carries frame numbers only.*repetition time"):
        mrml.volume_from_sequence(sequence)
    sequence.SetIndexName("position")
    sequence.SetIndexUnit("mm")
    with pytest.raises(ValueError, match="indexed by position in 'mm', not by time"):
        mrml.volume_from_sequence(sequence)


def test_frames_that_differ_in_echo_time_are_not_a_time_series(scene):
    attributes = _multivolume_attributes(_frame_labels([10.0, 30.0, 50.0]), "EchoTime", "ms", 3, None)
    sequence = _load_as_volume_sequence(scene, _landmark_series(3), attributes, name="multi-echo")
    with pytest.raises(ValueError, match="differ in EchoTime"):
        mrml.volume_from_sequence(sequence)


def test_index_units_and_explicit_repetition_time(scene):
    sequence, _ = mrml.sequence_from_volume(_landmark_series(3), [0.0, 1.5, 3.0], "seconds", scene)
    np.testing.assert_allclose(mrml.volume_from_sequence(sequence)[1], [0.0, 1.5, 3.0])
    sequence.SetIndexUnit("ms")
    np.testing.assert_allclose(mrml.volume_from_sequence(sequence)[1], [0.0, 0.0015, 0.003])
    np.testing.assert_allclose(mrml.volume_from_sequence(sequence, repetition_time_s=2.0)[1], [0.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="positive number of seconds"):
        mrml.volume_from_sequence(sequence, repetition_time_s=0.0)


def test_frame_label_count_must_match(scene):
    attributes = _multivolume_attributes(_frame_labels([0.0, 1500.0]), "TriggerTime", "ms", 3, None)
    sequence = _load_as_volume_sequence(scene, _landmark_series(3), attributes, name="cut short")
    with pytest.raises(ValueError, match="3 frames but 2 frame times"):
        mrml.volume_from_sequence(sequence)


def test_legacy_multivolume_layout(scene):
    """The plugin's default load: one volume node, frames as voxel components, FrameLabels on the node.

    slicer-core has no vtkMRMLMultiVolumeNode (it comes with the MultiVolumeExplorer module); a vector volume
    with the same layout and attributes stands in for it.
    """
    import slicer

    series = _landmark_series()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "legacy DSC")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(series.ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.moveaxis(series.array, 0, -1)))
    for attribute, value in _multivolume_attributes(STRATEGIES["TriggerTime"][0](4), "TriggerTime", "ms", 4,
                                                    None).items():
        node.SetAttribute(attribute, value)
    back, times = mrml.volume_from_sequence(node)
    np.testing.assert_allclose(times, [0.0, 1.5, 3.0, 4.5])
    assert np.array_equal(back.array, series.array)
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS)


# --- files: 4D NRRD (Slicer's reader) and 4D NIfTI ---------------------------------------------------------


def test_4d_nrrd_without_index_values_is_indexed_frame(scene, tmp_path):
    import slicer

    path = write_volume(_landmark_series(), tmp_path / "dsc.nrrd", time_spacing=1.5)
    # What Slicer's own sequence reader makes of it: frame numbers, no unit.
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    read = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "read")
    storage.SetFileName(str(path))
    assert storage.ReadData(read)
    assert (read.GetIndexName(), read.GetIndexUnit()) == ("frame", "")
    with pytest.raises(ValueError, match="'read' carries frame numbers only"):
        mrml.volume_from_sequence(read)
    with pytest.raises(ValueError, match="'dsc' carries frame numbers only.*repetition time"):
        mrml.sequence_from_file(path, scene=scene)
    sequence, browser = mrml.sequence_from_file(path, scene=scene, repetition_time_s=1.5)
    assert (sequence.GetIndexName(), sequence.GetIndexUnit()) == ("time", "s")
    assert browser.GetMasterSequenceNode() is sequence
    back, times = mrml.volume_from_sequence(sequence)
    np.testing.assert_allclose(times, [0.0, 1.5, 3.0, 4.5])
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS, atol=1e-4)


def test_sequence_saved_by_slicer_keeps_its_times(scene, tmp_path):
    import slicer

    sequence, _ = mrml.sequence_from_volume(_landmark_series(), [0.0, 1.2, 2.4, 3.6], "saved", scene)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "saved.seq.nrrd"))
    assert storage.WriteData(sequence)
    loaded, _ = mrml.sequence_from_file(tmp_path / "saved.seq.nrrd", scene=scene)
    assert loaded.GetName() == "saved"
    back, times = mrml.volume_from_sequence(loaded)
    np.testing.assert_allclose(times, [0.0, 1.2, 2.4, 3.6])
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS, atol=1e-4)


@pytest.mark.parametrize(("unit", "pixdim", "expected"), [("sec", 1.5, 1.5), ("msec", 1500.0, 1.5),
                                                          ("usec", 1.5e6, 1.5)])
def test_4d_nifti_loads_as_a_sequence_in_seconds(scene, tmp_path, unit, pixdim, expected):
    series = _landmark_series()
    path = write_volume(series, tmp_path / "dsc.nii.gz", time_spacing=1.5)
    image = nibabel.load(path)
    header = image.header.copy()
    header.set_xyzt_units("mm", unit)
    header["pixdim"][4] = pixdim
    nibabel.save(nibabel.Nifti1Image(np.asarray(image.dataobj), None, header), tmp_path / "unit.nii.gz")
    sequence, browser = mrml.sequence_from_file(tmp_path / "unit.nii.gz", scene=scene)
    assert sequence.GetName() == "unit" and sequence.GetNumberOfDataNodes() == 4
    assert browser.GetMasterSequenceNode() is sequence
    back, times = mrml.volume_from_sequence(sequence)
    np.testing.assert_allclose(times, np.arange(4) * expected)
    assert back.array.shape == (4, 11, 9, 8)
    assert np.array_equal(back.array, series.array)
    np.testing.assert_allclose(back.ijk_to_ras, _oblique_ijk_to_ras(), atol=1e-4)  # oblique, 0.9 x 1.3 x 3.1 mm
    assert np.allclose(_landmark_ras(back), EXPECTED_RAS, atol=1e-4)


def test_nifti_written_by_the_extension_is_in_seconds(scene, tmp_path):
    path = write_volume(_landmark_series(), tmp_path / "dsc.nii.gz", time_spacing=1.5)
    assert nibabel.load(path).header.get_xyzt_units() == ("mm", "sec")
    _, times = mrml.volume_from_sequence(mrml.sequence_from_file(path, "DSC", scene)[0])
    np.testing.assert_allclose(times, [0.0, 1.5, 3.0, 4.5])


def test_nifti_without_time_unit_needs_the_repetition_time(scene, tmp_path):
    path = write_volume(_landmark_series(), tmp_path / "dsc.nii.gz", time_spacing=1.5)
    image = nibabel.load(path)
    header = image.header.copy()
    header.set_xyzt_units("mm", "unknown")
    nibabel.save(nibabel.Nifti1Image(np.asarray(image.dataobj), None, header), tmp_path / "nounit.nii")
    with pytest.raises(ValueError, match=r"no frame interval in a time unit .*give the repetition time \(s\)\.$"):
        mrml.sequence_from_file(tmp_path / "nounit.nii", scene=scene)
    sequence, _ = mrml.sequence_from_file(tmp_path / "nounit.nii", scene=scene, repetition_time_s=1.2)
    np.testing.assert_allclose(mrml.volume_from_sequence(sequence)[1], [0.0, 1.2, 2.4, 3.6])


def test_3d_file_or_other_format_is_refused(scene, tmp_path):
    path = write_volume(_volume_with_landmark(), tmp_path / "t1.nii.gz")
    with pytest.raises(ValueError, match="3D image; a 4D series"):
        mrml.sequence_from_file(path, scene=scene)
    with pytest.raises(ValueError, match="neither NIfTI .* nor NRRD"):
        mrml.sequence_from_file(tmp_path / "dsc.mha", scene=scene)


# --- the library guard ---------------------------------------------------------------------------------------


def _dsc_case(frames: int = 60, tr_s: float = 1.5):
    """A small leaky-tumour DSC series (the pipeline tests' phantom, reduced): tissue, times and the signal."""
    shape = (4, 24, 24)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    brain = ((k - 1.5) / 2.5) ** 2 + ((j - 11.5) / 11.0) ** 2 + ((i - 11.5) / 11.0) ** 2 <= 1.0
    tumour = brain & ((j - 12) ** 2 + (i - 6) ** 2 <= 9)
    cbv = np.where(tumour, 7.0, np.where((i + j) % 3 == 0, 4.0, 2.0)) * brain
    cbf = np.where(tumour, 85.0, 40.0) * brain
    k2 = np.where(tumour, 0.015, 0.0)
    times = np.arange(frames) * tr_s
    sim = simulate_dsc(times, cbv, cbf, k2, np.where(brain, 1000.0, 0.0), TE, brain_mask=brain)
    signal = np.clip(np.rint(sim.signal), 0, 32767).astype(np.int16)
    return signal, times, tumour


def test_frame_times_in_milliseconds_are_refused_by_the_library():
    signal, times, _ = _dsc_case()
    with pytest.raises(ValueError, match=r"^The frame times \(times_s\) look like milliseconds \(median frame "
                                         r"interval 1500\); give the frame times in seconds"):
        compute_perfusion(signal, times * 1000, PerfusionOptions(te_s=TE))
    with pytest.raises(ValueError, match="median frame interval of 12 s, outside the 0.2-5 s"):
        compute_perfusion(signal, times * 8, PerfusionOptions(te_s=TE))


# --- the numbers: K2 and rCBV from a DICOM-loaded sequence ------------------------------------------------


def test_k2_and_rcbv_from_a_multivolume_sequence_match_the_series_in_seconds(scene):
    signal, times, tumour = _dsc_case()
    ijk_to_ras = np.diag([2.0, 2.0, 5.0, 1.0])
    reference = compute_perfusion(signal, times, PerfusionOptions(te_s=TE), ijk_to_ras=ijk_to_ras)

    labels, tag, units, parse = STRATEGIES["InstanceNumber*RepetitionTime"]
    sequence = _load_as_volume_sequence(scene, Volume(signal, ijk_to_ras),
                                        _multivolume_attributes(labels(len(times)), tag, units, len(times), parse))
    series, loaded_times = mrml.volume_from_sequence(sequence)
    np.testing.assert_allclose(loaded_times, times)
    loaded = compute_perfusion(series.array, loaded_times, PerfusionOptions(te_s=TE), ijk_to_ras=series.ijk_to_ras)
    np.testing.assert_allclose(loaded.k2, reference.k2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loaded.rcbv, reference.rcbv, rtol=1e-6, atol=1e-9)
    assert loaded.baseline == reference.baseline

    # What the module computed before: index values "0", "1", ... read as seconds (1 s per frame, not 1.5 s).
    frame_numbers = np.array([float(sequence.GetNthIndexValue(n)) for n in range(len(times))])
    before = compute_perfusion(series.array, frame_numbers, PerfusionOptions(te_s=TE), ijk_to_ras=series.ijk_to_ras)
    k2_ratio = np.median(before.k2[tumour]) / np.median(reference.k2[tumour])
    rcbv_ratio = np.median(before.rcbv[tumour]) / np.median(reference.rcbv[tumour])
    print(f"\ntumour median K2 (1/s): seconds {np.median(reference.k2[tumour]):.5f}, "
          f"MultiVolume sequence {np.median(loaded.k2[tumour]):.5f}, frame numbers as s "
          f"{np.median(before.k2[tumour]):.5f} (x{k2_ratio:.3f})")
    print(f"tumour median rCBV: seconds {np.median(reference.rcbv[tumour]):.4f}, "
          f"MultiVolume sequence {np.median(loaded.rcbv[tumour]):.4f}, frame numbers as s "
          f"{np.median(before.rcbv[tumour]):.4f} (x{rcbv_ratio:.3f})")
    assert k2_ratio == pytest.approx(1.5, rel=0.05)  # K2 is per second: 1 s frames inflate it by TR / 1 s
    assert rcbv_ratio == pytest.approx(1 / 1.5, rel=0.05)  # the area under deltaR2* shrinks by 1 s / TR


# --- the DSC sidecar: one reader (case.timing.read_timing) -------------------------------------------------


def _sidecar(tmp_path, **fields):
    path = tmp_path / "dsc.json"
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def test_sidecar_frame_times_win_unless_a_repetition_time_is_given(tmp_path):
    from GliomaProgressionLib.case.timing import read_timing

    sidecar = _sidecar(tmp_path, EchoTime=0.03, RepetitionTime=1.5, FrameTimes=[0.0, 1.4, 2.9])
    np.testing.assert_allclose(read_timing(3, sidecar).times_s, [0.0, 1.4, 2.9])
    np.testing.assert_allclose(read_timing(3, sidecar, tr_s=2.0).times_s, [0.0, 2.0, 4.0])
    assert read_timing(3, sidecar, te_s=0.02).te_s == 0.02
    assert read_timing(3, None, tr_s=1.5, te_s=0.03).tr_s == 1.5


def test_frame_times_alone_need_no_echo_time(tmp_path):
    from GliomaProgressionLib.case.timing import read_timing

    sidecar = _sidecar(tmp_path, RepetitionTime=1.5)
    timing = read_timing(4, sidecar, need_echo_time=False)
    np.testing.assert_allclose(timing.times_s, [0.0, 1.5, 3.0, 4.5])
    assert timing.te_s is None
    with pytest.raises(ValueError, match="echo time is missing"):
        read_timing(4, sidecar)


@pytest.mark.parametrize("fields, message", [
    (dict(RepetitionTime=1.5), "echo time is missing: it is neither in the DSC sidecar"),
    (dict(EchoTime=0.03), "repetition time is missing: it is neither in the DSC sidecar"),
    (dict(EchoTime=30, RepetitionTime=1.5), "looks like milliseconds"),
    (dict(EchoTime=0.03, RepetitionTime=1500), "looks like milliseconds"),
    (dict(EchoTime=0.03, FrameTimes=[0.0, 1.5]), "lists 2 frame times for a series of 3 frames"),
])
def test_sidecar_problems_are_one_sentence_about_the_data(tmp_path, fields, message):
    from GliomaProgressionLib.case.timing import read_timing

    with pytest.raises(ValueError, match=message) as error:
        read_timing(3, _sidecar(tmp_path, **fields))
    assert "--" not in str(error.value), "a library message names no command-line flag"


def test_a_sidecar_that_is_not_json_is_refused(tmp_path):
    from GliomaProgressionLib.case.timing import read_timing

    (tmp_path / "dsc.json").write_text("EchoTime: 0.03", encoding="utf-8")
    with pytest.raises(ValueError, match="could not be read as JSON"):
        read_timing(3, tmp_path / "dsc.json")
