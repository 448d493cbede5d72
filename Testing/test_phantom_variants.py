"""Phantom variants that look like the data users have: BraTS-style preprocessed, with scalp and skull, without
DSC, with a thin DSC slab."""

from __future__ import annotations

import numpy as np
import pytest

from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.phantom.synthetic import HEAD_LAYERS, PhantomConfig, generate_case

SEED = 1


def _case(**variant):
    return generate_case(PhantomConfig(seed=SEED, size="small", **variant))


@pytest.fixture(scope="module")
def stripped():
    return _case()


@pytest.fixture(scope="module")
def with_head():
    return _case(head=True)


def test_preprocessed_series_share_one_isotropic_axis_aligned_grid_and_pose():
    case = _case(preprocessed=True)
    assert case.t1c.array.shape == case.flair.array.shape
    assert np.allclose(case.t1c.ijk_to_ras, case.flair.ijk_to_ras)
    linear = case.t1c.ijk_to_ras[:3, :3]
    assert np.allclose(np.abs(linear), 2.0 * np.eye(3))  # small size: 2 mm, no tilt
    for series in ("flair", "dsc"):
        assert np.allclose(case.metadata["series"][series]["ras_t1c_from_ras_series"], np.eye(4), atol=1e-6)


def test_acquired_series_are_not_on_one_grid_or_pose(stripped):
    assert not np.allclose(stripped.metadata["series"]["flair"]["ras_t1c_from_ras_series"], np.eye(4), atol=1e-3)


def test_with_head_keeps_scalp_and_skull_around_the_same_tumour(stripped, with_head):
    assert with_head.metadata["tumour"] == stripped.metadata["tumour"]
    outside = with_head.t1c.array[with_head.truth["brain"].array == 0]
    bright_scalp = outside > 0.9 * HEAD_LAYERS["t1c"]["scalp"]
    assert bright_scalp.sum() * np.prod(with_head.t1c.spacing) > 100_000  # > 100 mL of scalp
    stripped_outside = stripped.t1c.array[stripped.truth["brain"].array == 0]
    assert (stripped_outside > 0.9 * HEAD_LAYERS["t1c"]["scalp"]).sum() < 10
    # The scanner's field of view covers the head, so the series grow.
    assert np.prod(with_head.t1c.array.shape) > 1.2 * np.prod(stripped.t1c.array.shape)


def test_a_case_without_dsc_has_no_dsc_files_or_dsc_truth(tmp_path):
    case = _case(dsc=False)
    assert case.dsc is None and case.frame_times_s is None and case.metadata["dsc"] is None
    assert sorted(case.truth) == ["brain", "progression"]
    folder = write_case(case, tmp_path / "case")
    assert sorted(path.name for path in folder.iterdir()) == ["NOTICE.txt", "flair.nii.gz", "lesion.nii.gz",
                                                               "t1c.nii.gz", "truth"]


@pytest.mark.parametrize("slices", [1, 2])
def test_a_thin_dsc_slab_goes_through_the_tumour(slices):
    case = _case(dsc_slices=slices)
    assert case.dsc.array.shape[:2] == (60, slices)
    assert (case.truth["k2"].array > 0).any(), "the slab misses the enhancing tumour"
    assert case.truth["ncbv"].array.shape == case.dsc.array.shape[1:]


@pytest.mark.parametrize("variant, words", [
    ({"dsc_slices": 0}, "dsc_slices"),
    ({"dsc_slices": 2.5}, "whole number"),
    ({"dsc": False, "dsc_slices": 2}, "without DSC"),
])
def test_impossible_variants_are_refused_in_one_sentence(variant, words):
    with pytest.raises(ValueError, match=words):
        PhantomConfig(**variant).validated()
