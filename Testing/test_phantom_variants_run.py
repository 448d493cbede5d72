"""The phantom variants through ``gliomaprog run``: one case that combines what real data brings and the
phantom's default never does (BraTS-style preprocessing onto one grid and pose, scalp and skull kept, a DSC slab
of two slices). ``--no-dsc`` runs end to end in ``test_no_dsc_and_brats.py``. One run, so that the suite keeps
its time budget; the four checks below read it.

The case is cut to a slab around its lesion (every series on its own grid; the two-slice DSC slab lies inside it
and is kept whole). What the checks prove is unchanged by the cut: scalp and skull still ring the brain in every
slice the FLAIR is registered on, so its brain masks are still found in a head (the metric counts inside them
and the moving image is cut to their box anyway; the vertex and the neck never counted); the FLAIR still shares
the CE-T1's grid and pose, so identity is still the right answer for the verdict to judge; the DSC series still
has its two slices, which is what makes the chain place it by the scanner; and its white matter and enhancing
tumour are all inside the slab."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from CTVPlannerLib.lesion import LESION_SEGMENTS

from GliomaProgressionLib.case.files import read_volume
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.phantom.folder import write_case
from helpers import crop_case_to_lesion

ENHANCING = next(value for value, (name, _) in LESION_SEGMENTS.items() if name == "Enhancing tumour")
VARIANT = {"seed": 1, "size": "small", "preprocessed": True, "head": True, "dsc_slices": 2}


@pytest.fixture(scope="module")
def run(synthetic_case, fresh_model_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variant")
    case = write_case(synthetic_case(**VARIANT), folder / "case")
    crop_case_to_lesion(case)
    dsc = nib.load(case / "dsc.nii.gz")
    assert dsc.shape[2] == VARIANT["dsc_slices"], "the DSC slab must lie wholly inside the cut"
    out = folder / "out"
    # One CTV scheme: no check here reads the targets (test_run_case checks all six), and each costs the export,
    # report and scene time.
    code = cli.main(["run", str(case), "--out", str(out), "--model", "multiparametric", "--schemes", "eortc",
                     "--quiet"])
    return {"code": code, "out": out, "report": json.loads((out / "report.json").read_text())}


@pytest.mark.slow
def test_the_variant_case_runs_end_to_end(run):
    assert run["code"] == 0
    assert (run["out"] / "scene.mrb").is_file() and (run["out"] / "report.png").is_file()
    assert run["report"]["verdict"]["nel_volume_ml"] > 0


@pytest.mark.slow
def test_a_pre_registered_flair_with_head_stays_put_and_is_judged_right(run):
    prediction = json.loads((run["out"] / "prediction" / "prediction.json").read_text())
    flair = prediction["registration"]["flair"]
    moved = np.asarray(flair["ras_reference_from_moving"]) - np.eye(4)
    assert np.abs(moved[:3, 3]).max() <= 0.3  # mm
    assert np.degrees(np.abs(moved[:3, :3]).max()) <= 0.3  # small-angle: the matrix entries are the angles
    assert flair["quality"]["verdict"] == "right"
    assert run["report"]["registration"]["flair"]["quality"]["verdict"] == "right"


@pytest.mark.slow
def test_a_two_slice_dsc_slab_is_placed_by_the_scanner_and_said_so(run):
    warnings = " ".join(run["report"]["registration"]["dsc"]["warnings"])
    assert "2 slices" in warnings and "scanner" in warnings


@pytest.mark.slow
def test_the_two_slice_slab_still_finds_reference_white_matter_and_a_raised_tumour_ncbv(run):
    perfusion = run["report"]["perfusion"]
    assert perfusion["nawm_volume_ml"] > 0
    ncbv = read_volume(run["out"] / "registered" / "ncbv.nii.gz").array
    lesion = read_volume(run["out"] / "registered" / "lesion.nii.gz").array
    measured = np.isfinite(ncbv) & (ncbv != 0)  # the slab: two slices of the 1 mm grid's many
    enhancing = ncbv[measured & (lesion == ENHANCING)]
    assert enhancing.size > 0 and enhancing.mean() > 1.5, enhancing.mean()
