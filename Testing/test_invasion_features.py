"""invasion.features: the local radiomics feature maps agree with pyradiomics' voxel-based extraction with the
settings the module documents (every feature, two radii and bin counts, cubes cut by the image's edge, a flat
cube), are NaN outside the mask, do not depend on the chunking, report progress, stop on cancel and refuse bad
input in one sentence."""

import logging
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from GliomaProgressionLib.invasion import features
from GliomaProgressionLib.invasion.features import FEATURES, FeatureMapsCancelled, local_feature_maps

SHAPE = (12, 13, 11)  # k, j, i
FLAT_CENTRE = (6, 6, 5)


def _textured_volume(seed=3):
    """Smooth random texture plus noise, a flat 5^3 patch, and ~40 scattered mask voxels including two image
    corners (their cubes are cut by the image's edge) and the flat patch's centre."""
    rng = np.random.default_rng(seed)
    image = 100 + 50 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0) + 5 * rng.normal(size=SHAPE)
    k, j, i = FLAT_CENTRE
    image[k - 2:k + 3, j - 2:j + 3, i - 2:i + 3] = 97.5
    mask = np.zeros(SHAPE, bool)
    mask.flat[rng.choice(mask.size, 40, replace=False)] = True
    mask[0, 0, 0] = mask[-1, -1, -1] = mask[FLAT_CENTRE] = True
    return image, mask


def _pyradiomics_maps(image, mask, radius, bin_count):
    """pyradiomics 3.0.1 voxel-based maps with the settings features.py documents, on the image it discretises
    (clipped to the mask's robust range), as arrays of the full shape."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    low, high = np.percentile(image[mask], features.ROBUST_PERCENTILES)
    extractor = featureextractor.RadiomicsFeatureExtractor(binCount=bin_count, kernelRadius=radius,
                                                           maskedKernel=False, voxelBased=True)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(firstorder=list(features.FIRSTORDER), glcm=list(features.GLCM),
                                   glrlm=list(features.GLRLM))
    result = extractor.execute(sitk.GetImageFromArray(np.clip(image, low, high)),
                               sitk.GetImageFromArray(mask.astype(np.uint8)), voxelBased=True)
    maps = {}
    for name in FEATURES:
        cropped = result[f"original_{name}"]  # pyradiomics returns the mask's bounding box padded by the radius
        k, j, i = np.round(cropped.GetOrigin()[::-1]).astype(int)  # spacing 1, origin 0: origin = index
        array = sitk.GetArrayFromImage(cropped)
        maps[name] = np.full(SHAPE, np.nan)
        maps[name][k:k + array.shape[0], j:j + array.shape[1], i:i + array.shape[2]] = array
    return maps


@pytest.mark.parametrize("radius, bin_count", [(1, 8), (2, 16)])
def test_every_feature_agrees_with_pyradiomics_voxel_based(radius, bin_count):
    image, mask = _textured_volume()
    ours = local_feature_maps(image, mask, (1.0, 1.0, 1.0), radius=radius, bin_count=bin_count)
    theirs = _pyradiomics_maps(image, mask, radius, bin_count)
    assert list(ours) == list(FEATURES)
    for name in FEATURES:
        np.testing.assert_allclose(ours[name][mask], theirs[name][mask], rtol=1e-5, atol=1e-6, err_msg=name)
    assert ours["glcm_Correlation"][FLAT_CENTRE] == 1.0  # pyradiomics' rule for one gray level
    assert ours["firstorder_Variance"][FLAT_CENTRE] == 0.0


def test_maps_are_float32_of_the_image_shape_and_nan_outside_the_mask():
    image, mask = _textured_volume()
    maps = local_feature_maps(image.astype(np.float32), mask.astype(np.uint8), (1, 1, 1),
                              features=["glrlm_RunPercentage", "firstorder_Mean"])
    assert list(maps) == ["glrlm_RunPercentage", "firstorder_Mean"]
    for feature_map in maps.values():
        assert feature_map.shape == SHAPE and feature_map.dtype == np.float32
        assert np.all(np.isnan(feature_map[~mask]))
        assert np.all(np.isfinite(feature_map[mask]))


def test_chunking_and_feature_subsets_do_not_change_the_values(monkeypatch):
    image, mask = _textured_volume(seed=5)
    whole = local_feature_maps(image, mask, (1, 1, 1))
    monkeypatch.setattr(features, "CHUNK_VOXELS", 7)
    fractions = []
    chunked = local_feature_maps(image, mask, (1, 1, 1), features=["glcm_JointEntropy", "glrlm_RunEntropy"],
                                 progress=lambda fraction, message: fractions.append(fraction))
    for name, feature_map in chunked.items():
        np.testing.assert_array_equal(feature_map, whole[name])
    assert len(fractions) == -(-int(mask.sum()) // 7) and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancel_stops_the_computation_between_chunks(monkeypatch):
    image, mask = _textured_volume()
    monkeypatch.setattr(features, "CHUNK_VOXELS", 10)
    cancel = threading.Event()
    fractions = []

    def progress(fraction, message):
        fractions.append(fraction)
        cancel.set()

    with pytest.raises(FeatureMapsCancelled):
        local_feature_maps(image, mask, (1, 1, 1), progress=progress, cancel=cancel)
    assert len(fractions) == 1  # the first chunk finished, the second never started
    with pytest.raises(FeatureMapsCancelled):
        local_feature_maps(image, mask, (1, 1, 1), cancel=lambda: True)  # a callable works too


def _bad(image, mask, **changes):
    arguments = dict(image=image, mask=mask, spacing_mm=(1.0, 1.0, 1.0))
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize("change, fragment", [
    (lambda image, mask: _bad(image, mask[:-1]), "shape"),
    (lambda image, mask: _bad(image, np.zeros_like(mask)), "mask is empty"),
    (lambda image, mask: _bad(np.where(mask, np.nan, image), mask), "NaN"),
    (lambda image, mask: _bad(image, mask, radius=0), "radius"),
    (lambda image, mask: _bad(image, mask, features=["glcm_Contrast", "glszm_ZoneEntropy"]), "glszm_ZoneEntropy"),
    (lambda image, mask: _bad(image, mask, features=[]), "No feature"),
    (lambda image, mask: _bad(image, mask, bin_count=1), "bin count"),
    (lambda image, mask: _bad(image, mask, spacing_mm=(1.0, 1.0, 3.0)), "isotropic"),
    (lambda image, mask: _bad(image, mask, spacing_mm=(1.0, 1.0)), "spacing"),
    (lambda image, mask: _bad(image[0], mask[0]), "3D"),
])
def test_bad_input_is_refused_in_one_sentence(change, fragment):
    image, mask = _textured_volume()
    with pytest.raises(ValueError) as refusal:
        local_feature_maps(**change(image, mask))
    message = str(refusal.value)
    assert fragment in message
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0
