"""Rigid registration onto the CE-T1 reference grid recovers the phantom's known head motion."""

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaProgressionLib.case import geometry

from GliomaProgressionLib.case import registration
from GliomaProgressionLib.case.geometry import Volume


@pytest.fixture(scope="module", params=[5, pytest.param(8, marks=pytest.mark.slow)], ids=["seed5", "seed8"])
def case(request, synthetic_case):
    return synthetic_case(seed=request.param, size="small")


def _brain_points(case) -> np.ndarray:
    k, j, i = np.nonzero(case.truth["brain"].array)
    return geometry.ras_from_ijk(np.stack([i, j, k], axis=1)[::50].astype(float), case.truth["brain"].ijk_to_ras)


def _dsc_baseline(case) -> sitk.Image:
    return geometry.sitk_from_volume(Volume(case.dsc.array[2:8].mean(axis=0).astype(np.float32),
                                            case.dsc.ijk_to_ras))


@pytest.mark.parametrize("series", ["flair", "dsc"])
def test_recovers_known_misalignment(case, series):
    reference = registration.isotropic_reference(geometry.sitk_from_volume(case.t1c))
    moving = geometry.sitk_from_volume(case.flair) if series == "flair" else _dsc_baseline(case)
    found = registration.register_rigid(reference, moving, series)
    truth = np.array(case.metadata["series"][series]["ras_t1c_from_ras_series"])
    points = _brain_points(case)
    displacement, angle = registration.transform_error(found, truth, points)
    assert displacement <= 1.0 and angle <= 1.0, (displacement, angle)
    unregistered = registration.RigidRegistration(sitk.Euler3DTransform(), 0.0, 0)
    assert registration.transform_error(unregistered, truth, points)[0] > 2.0, "the case was misaligned to start"
    assert found.warnings == []


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
