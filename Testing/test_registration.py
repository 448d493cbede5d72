"""Rigid registration onto the CE-T1 reference grid: recovers the phantom's known head motion, leaves aligned
series where they are, and says when it is wrong (issue 12)."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.case import geometry

from GliomaProgressionLib.case import registration
from GliomaProgressionLib.case.geometry import Volume
from GliomaProgressionLib.case.registration_quality import alignment_contrast


@pytest.fixture(scope="module", params=[5, pytest.param(8, marks=pytest.mark.slow)], ids=["seed5", "seed8"])
def case(request, synthetic_case):
    return synthetic_case(seed=request.param, size="small")


def _brain_points(case) -> np.ndarray:
    k, j, i = np.nonzero(case.truth["brain"].array)
    return geometry.ras_from_ijk(np.stack([i, j, k], axis=1)[::50].astype(float), case.truth["brain"].ijk_to_ras)


def _dsc_baseline(case) -> sitk.Image:
    return geometry.sitk_from_volume(Volume(case.dsc.array[2:8].mean(axis=0).astype(np.float32),
                                            case.dsc.ijk_to_ras))


@pytest.fixture(scope="module")
def flair_registration(case):
    """The case's FLAIR registered once: the recovery and the summary tests judge the same result."""
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    return registration.register_rigid(reference, geometry.sitk_from_volume(case.flair), "FLAIR")


@pytest.mark.parametrize("series", ["flair", "dsc"])
def test_recovers_known_misalignment(case, series, request):
    if series == "flair":
        found = request.getfixturevalue("flair_registration")
    else:
        reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
        found = registration.register_rigid(reference, _dsc_baseline(case), series)
    truth = np.array(case.metadata["series"][series]["ras_t1c_from_ras_series"])
    points = _brain_points(case)
    displacement, angle = registration.transform_error(found, truth, points)
    assert displacement <= 1.0 and angle <= 1.0, (displacement, angle)
    unregistered = registration.RigidRegistration(sitk.Euler3DTransform(), 0.0, 0)
    assert registration.transform_error(unregistered, truth, points)[0] > 2.0, "the case was misaligned to start"
    assert found.warnings == []
    assert found.quality["verdict"] == "right"


def test_isotropic_reference_keeps_the_field_of_view(case):
    t1c = geometry.sitk_from_volume(case.t1c)
    reference = registration.isotropic_reference(t1c)
    assert reference.GetSpacing() == (1.0, 1.0, 1.0)
    assert reference.GetDirection() == pytest.approx(t1c.GetDirection())
    extent = np.array(t1c.GetSize()) * np.array(t1c.GetSpacing())
    assert np.allclose(np.array(reference.GetSize()), extent, atol=1.0)
    # the first voxel's corner stays put
    corner = lambda image: np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))  # noqa
    assert np.allclose(corner(reference), corner(t1c), atol=1e-6)


def test_series_that_do_not_overlap_are_refused(case):
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    far = geometry.sitk_from_volume(case.flair)
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 1000.0))
    with pytest.raises(ValueError, match="does not overlap"):
        registration.register_rigid(reference, far, "FLAIR")


def test_resampled_labels_stay_labels(case):
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    labels = registration.resample_onto(reference, geometry.sitk_from_volume(case.lesion), None, labels=True)
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2, 3}


# --- issue 12: never worse than doing nothing, and a quality measure that is not the optimised metric --------

CALIBRATION = Path(__file__).resolve().parents[1] / "docs" / "registration_quality_calibration.json"


def _zeroed(volume: Volume, brain: np.ndarray) -> sitk.Image:
    """A series skull-stripped as BraTS ships it: exactly zero outside the brain."""
    return geometry.sitk_from_volume(Volume(np.asarray(volume.array, np.float32) * (brain > 0), volume.ijk_to_ras))


def _motion(degrees: float, mm: float, centre: np.ndarray) -> np.ndarray:
    """A 4x4 RAS rotation about an oblique axis through ``centre`` followed by an oblique translation."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(sitk.VersorTransform(tuple(axis), float(np.radians(degrees))).GetMatrix()).reshape(3, 3)
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + mm * np.array([0.6, -0.64, 0.48])
    return matrix


# The cases below are made without DSC (dsc=False): their CE-T1, FLAIR and truth are the same bit for bit, and
# the DSC series, unused here, is most of a case's making time.


def _error(found, truth, case):
    return registration.transform_error(found, truth, _brain_points(case))


@pytest.mark.slow
def test_preprocessed_skull_stripped_series_stay_put(synthetic_case):
    """The real-data failure: an already aligned, skull-stripped FLAIR (exact-zero background, one grid) must
    not be moved, and must not be called poor."""
    case = synthetic_case(seed=4, size="small", preprocessed=True, dsc=False)
    brain = case.truth["brain"].array
    reference = registration.isotropic_reference(_zeroed(case.t1c, brain))
    found = registration.register_rigid(reference, _zeroed(case.flair, brain), "FLAIR")
    displacement, angle = _error(found, np.eye(4), case)
    assert displacement <= 0.3 and angle <= 0.3, (displacement, angle)
    assert found.warnings == []
    assert found.quality["brain_region"] == {"series": "skull-stripped", "reference": "skull-stripped"}


@pytest.mark.slow
def test_known_motion_recovered_with_head(synthetic_case):
    case = synthetic_case(seed=6, size="small", head=True, dsc=False)
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    found = registration.register_rigid(reference, geometry.sitk_from_volume(case.flair), "FLAIR")
    displacement, angle = _error(found, np.array(case.metadata["series"]["flair"]["ras_t1c_from_ras_series"]), case)
    assert displacement <= 1.0 and angle <= 1.0, (displacement, angle)
    assert found.warnings == []


def test_deliberate_misalignments_are_flagged(synthetic_case):
    """Poses 10 mm / 10 degrees and 5 mm off the truth score below the calibrated threshold."""
    case = synthetic_case(seed=5, size="small")
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    flair = geometry.sitk_from_volume(case.flair)
    truth = np.array(case.metadata["series"]["flair"]["ras_t1c_from_ras_series"])
    scene = registration.alignment_scene(reference, flair)
    centre = _brain_points(case).mean(axis=0)
    right = alignment_contrast(scene, registration.transform_from_ras_matrix(truth))[1]
    assert right >= registration.CONTRAST_THRESHOLD
    for degrees, mm in ((10.0, 10.0), (0.0, 5.0), (5.0, 0.0)):
        wrong = registration.transform_from_ras_matrix(_motion(degrees, mm, centre) @ truth)
        assert alignment_contrast(scene, wrong)[1] < registration.CONTRAST_THRESHOLD, (degrees, mm)


def test_identity_is_kept_when_no_optimised_pose_aligns_better():
    """Never worse than doing nothing: a pose with better MI but worse edge alignment loses to identity."""
    identity = registration.Candidate("identity", sitk.Euler3DTransform(), mattes_mi=-0.088, edge_alignment=0.30)
    misled = registration.Candidate("from identity", sitk.Euler3DTransform(), mattes_mi=-0.125, edge_alignment=0.22)
    assert registration._best([identity, misled]).name == "identity"
    close = registration.Candidate("from centres of mass", sitk.Euler3DTransform(), mattes_mi=-0.2,
                                   edge_alignment=0.30 - registration.ALIGNMENT_TIE / 2)
    assert registration._best([identity, misled, close]).name == "from centres of mass", "MI breaks ties"


def test_summary_reports_the_measure_its_threshold_and_source(flair_registration):
    summary = flair_registration.summary()
    assert summary["final_mattes_mi"] < -0.2  # the key the report and cohort export read
    quality = summary["quality"]
    assert quality["threshold"] == registration.CONTRAST_THRESHOLD
    assert "calibrate_registration_quality.py" in quality["threshold_source"]
    assert quality["edge_alignment_contrast"] >= quality["threshold"] and quality["verdict"] == "right"
    assert set(quality["candidates"]) >= {"identity", "from identity"}
    json.dumps(summary)  # goes to prediction.json as it is


def test_calibration_separates_right_from_wrong():
    """The calibration (benchmarks/calibrate_registration_quality.py, written to docs/): over at least 20 right
    registrations and 20 wrong poses, no false alarm and no miss at the threshold the code uses."""
    summary = json.loads(CALIBRATION.read_text())["summary"]
    assert summary["threshold"] == registration.CONTRAST_THRESHOLD
    assert summary["right"]["count"] >= 20 and summary["wrong"]["count"] >= 20
    assert summary["false_alarms"] == 0 and summary["misses"] == 0 and summary["separated"]


@pytest.mark.slow
# With head: the harder of the two (the small-size tests cover the skull-stripped case).
@pytest.mark.parametrize("variant", [{"head": True}])
def test_full_size_10mm_10deg_recovered_or_flagged(synthetic_case, variant):
    case = synthetic_case(seed=0, size="full", dsc=False, **variant)
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    motion = _motion(10.0, 10.0, _brain_points(case).mean(axis=0))
    moved = registration.moved_series(geometry.sitk_from_volume(case.flair), motion)
    truth = np.array(case.metadata["series"]["flair"]["ras_t1c_from_ras_series"]) @ np.linalg.inv(motion)
    found = registration.register_rigid(reference, moved, "FLAIR")
    displacement, angle = _error(found, truth, case)
    assert (displacement <= 1.0 and angle <= 1.0) or found.warnings, (displacement, angle)
