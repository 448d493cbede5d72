"""DSC series of one, two or three slices (issue 12): brain mask, NAWM in the end slices, nCBV in the lesion.

Before, the brain-mask opening and the 5 mm NAWM depth treated beyond the first and last slice as background:
a 1- or 2-slice series had an empty brain mask, and with slices of 5 mm or less the end slices never held NAWM.
Now the image continues past its end slices as they are (``brainmask.extend_slices``).

Measured on the slabs these tests use when they were written (small phantom, automatic brain mask and NAWM,
no lesion labels):
* brain-mask Dice against the truth: 0.994-0.996 for 1, 2 and 3 slices (phantom slabs and slabs cut from the
  whole-head series); the 3-slice Dice was 0.975 before (the end slices were over-eroded);
* nCBV in the enhancing rim against the truth: seed 0 +3.8 to +7.9 %, seed 3 -0.4 to +1.0 %; the whole-head
  series gives +0.6 % / +1.5 % on the same voxels. A slab's NAWM is a local sample of white matter, purer than
  the partial-volumed truth NAWM (seed 0: truth CBV 2.04 in the chosen NAWM vs 2.07-2.11 in the truth NAWM),
  which accounts for most of seed 0's excess;
* the many-slice phantom (6 mm slices, the head inside the slab) gives bit-identical maps; a 5 mm-slice series
  whose brain reaches the end slices (test_dsc_pipeline's) gains NAWM there (163 -> 175 voxels) and its nCBV
  moves by at most 0.08 %.
"""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from DSCPerfusionLib.brainmask import open_within_slab
from DSCPerfusionLib.pipeline import PerfusionOptions, compute_perfusion
from helpers import assert_one_line_error, gliomaprog_in_process

SLAB_SLICES = (1, 2, 3)
MIN_DICE = 0.99
NCBV_TOLERANCE = 0.10  # measured worst +7.9 % (seed 0, 2- and 3-slice cuts)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _slab(case, slices: slice | None = None, slice_mm: float | None = None) -> dict:
    """The DSC series (optionally cut to ``slices``), its IJK-to-RAS matrix and its truth maps.

    ``slice_mm`` re-declares the slice spacing: the phantom's 6 mm slices are deeper than the 5 mm NAWM depth,
    so only thinner slices test that depth across slices."""
    signal, matrix = case.dsc.array, case.dsc.ijk_to_ras.copy()
    truth = {name: volume.array for name, volume in case.truth.items() if volume.array.shape == signal.shape[1:]}
    if slices is not None:
        signal, truth = signal[:, slices], {name: array[slices] for name, array in truth.items()}
        matrix[:3, 3] += matrix[:3, 2] * slices.start
    if slice_mm is not None:
        matrix[:3, 2] *= slice_mm / np.linalg.norm(matrix[:3, 2])
    return {"signal": signal, "matrix": matrix, "truth": truth,
            "enhancing": truth["k2"] > 0.5 * case.truth["k2"].array.max()}


def _tumour_slices(case, count: int) -> slice:
    """``count`` slices through the middle of the leaking rim of a whole-head case."""
    centre = int(round(np.argwhere(case.truth["k2"].array > 0)[:, 0].mean()))
    first = centre - (count - 1) // 2
    return slice(first, first + count)


def _perfusion(case, slab: dict, leakage: str | None = None, **masks):
    options = PerfusionOptions(te_s=case.config.te_s, **({} if leakage is None else {"leakage": leakage}))
    return compute_perfusion(slab["signal"], case.frame_times_s, options, ijk_to_ras=slab["matrix"], **masks)


def _check_slab(case, slab: dict) -> None:
    result = _perfusion(case, slab)
    truth, enhancing = slab["truth"], slab["enhancing"]
    assert _dice(result.brain_mask, truth["brain_dsc"] > 0) > MIN_DICE
    per_slice = result.nawm_mask.sum(axis=(1, 2))
    assert per_slice[0] > 0 and per_slice[-1] > 0, per_slice  # the end slices hold reference white matter
    assert enhancing.sum() >= 20
    assert result.ncbv[enhancing].mean() == pytest.approx(truth["ncbv"][enhancing].mean(), rel=NCBV_TOLERANCE)


@pytest.mark.parametrize("count", SLAB_SLICES)
def test_phantom_slab_gives_brain_nawm_and_lesion_ncbv(synthetic_case, count):
    case = synthetic_case(seed=0, size="small", dsc_slices=count)
    assert case.dsc.array.shape[1] == count
    _check_slab(case, _slab(case))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("count", SLAB_SLICES)
def test_slab_cut_from_a_whole_head_series_gives_brain_nawm_and_lesion_ncbv(synthetic_case, seed, count):
    case = synthetic_case(seed=seed, size="small")
    _check_slab(case, _slab(case, _tumour_slices(case, count)))


@pytest.mark.parametrize("count", SLAB_SLICES)
def test_with_a_brain_mask_given_nawm_is_found_in_the_end_slices_of_thin_slices(synthetic_case, count):
    # The failure reported with a mask given: 4 mm slices, so the 5 mm depth reaches the neighbouring slice.
    case = synthetic_case(seed=3, size="small")
    slab = _slab(case, _tumour_slices(case, count), slice_mm=4.0)
    result = _perfusion(case, slab, brain_mask=slab["truth"]["brain_dsc"])
    per_slice = result.nawm_mask.sum(axis=(1, 2))
    assert per_slice[0] > 0 and per_slice[-1] > 0, per_slice
    assert (result.nawm_mask & (slab["truth"]["nawm"] > 0)).sum() / result.nawm_mask.sum() > 0.75


def test_the_opening_of_one_slice_is_its_2d_opening():
    mask = ndimage.gaussian_filter(np.random.default_rng(2).random((1, 30, 30)), 1.5) > 0.5
    cross = ndimage.generate_binary_structure(3, 1)
    expected = ndimage.binary_opening(mask[0], structure=ndimage.generate_binary_structure(2, 1))
    np.testing.assert_array_equal(open_within_slab(mask, cross)[0], expected)


def test_many_slice_phantom_maps_are_unchanged(synthetic_case):
    # Values computed with the library before the thin-slab change (commit 4dfd582): on this whole-head series
    # the brain does not reach the end slices and the 6 mm slices are deeper than the NAWM depth, so nothing moves.
    case = synthetic_case(seed=3, size="small")
    slab = _slab(case)
    result = _perfusion(case, slab, leakage="bsw")  # the leakage correction the values were recorded with
    assert int(result.brain_mask.sum()) == 25447
    assert int(result.nawm_mask.sum()) == 1638
    assert result.report["nawm_mean_rcbv"] == pytest.approx(127.92198181152344, rel=1e-6)
    assert float(result.ncbv[slab["enhancing"]].mean()) == pytest.approx(2.599832057952881, rel=1e-6)
    assert float(result.ncbv.astype(np.float64).sum()) == pytest.approx(33825.30024937866, rel=1e-6)


def test_cli_phantom_writes_a_two_slice_dsc_series(tmp_path):
    out = tmp_path / "case"
    result = gliomaprog_in_process("phantom", "--size", "small", "--dsc-slices", "2", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    series = nib.load(out / "dsc.nii.gz")
    assert series.ndim == 4 and series.shape[2] == 2  # (x, y, z, time)


def test_cli_phantom_refuses_dsc_slices_without_dsc(tmp_path):
    result = gliomaprog_in_process("phantom", "--size", "small", "--no-dsc", "--dsc-slices", "2", "--out", tmp_path / "case")
    assert_one_line_error(result, "--dsc-slices", "--no-dsc")
    assert not (tmp_path / "case").exists()
