"""A synthetic case written as a case folder (the layout ``gliomaprog run`` reads).

Layout::

    t1c.nii.gz  flair.nii.gz  dsc.nii.gz (4D)  dsc.json  lesion.nii.gz (BraTS 2024 labels on the CE-T1 grid)
    adc.nii.gz  md.nii.gz  fa.nii.gz (diffusion grid; ADC and MD in 10^-6 mm^2/s, FA 0-1)
        or, with ``dwi=True``: adc.nii.gz  dwi.nii.gz (4D)  dwi.bval  dwi.bvec (FSL format): the raw DTI series
        in place of the MD and FA maps, which a reader fits from it
    truth/  cbv, cbf, ncbv, k2, nawm, brain_dsc (DSC grid); brain, progression (CE-T1 grid); truth.json
            md, fa (noise-free), dwi_b0, brain_diffusion (diffusion grid; truth.json "diffusion": its geometry)
            with habitats: habitats (CE-T1 grid), habitats_dsc and lesion_dsc (DSC grid), habitats.json
            (fractions per region, voxel counts, shares, family parameters; ``synthetic.generate_case``)
    (a case made without DSC has no dsc.nii.gz, dsc.json or DSC-grid truth; one made without diffusion no diffusion
    maps, DTI series or diffusion-grid truth)
    NOTICE.txt
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from GliomaProgressionLib.case.channels import DIFFUSION_FILES, DTI_SERIES
from GliomaProgressionLib.case.files import staged_output_folder, write_json, write_text, write_volume
from GliomaProgressionLib.phantom.synthetic import (MNI_NOTICE, SYNTHETIC_NOTICE, SyntheticCase,
                                                     diffusion_weighted_series)


def write_case(case: SyntheticCase, out: str | os.PathLike, dwi: bool = False) -> Path:
    """Write a synthetic case folder; nothing appears at ``out`` unless every file was written.

    ``dwi``: the raw DTI series (``dwi.nii.gz``, ``dwi.bval``, ``dwi.bvec``) in place of the MD and FA maps, to
    test a reader's tensor fit; the ADC map stays (a scanner's trace ADC comes from a DWI series of its own).
    """
    if dwi and case.diffusion is None:
        raise ValueError("The synthetic case was made without diffusion; a DTI series is made from its MD and FA.")
    with staged_output_folder(out) as staging:
        write_volume(case.t1c, staging / "t1c.nii.gz")
        write_volume(case.flair, staging / "flair.nii.gz")
        if case.dsc is not None:
            write_volume(case.dsc, staging / "dsc.nii.gz", time_spacing=case.config.tr_s)
            write_json(dsc_sidecar(case), staging / "dsc.json")
        write_volume(case.lesion, staging / "lesion.nii.gz")
        if case.diffusion is not None:
            write_diffusion(case, staging, dwi)
        truth = staging / "truth"
        truth.mkdir()
        for name, volume in case.truth.items():
            write_volume(volume, truth / f"{name}.nii.gz")
        write_json(case.metadata, truth / "truth.json")
        if case.habitats is not None:
            write_json(case.habitats, truth / "habitats.json")
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


def write_diffusion(case: SyntheticCase, folder: Path, dwi: bool = False) -> None:
    """adc, md and fa maps into ``folder``; with ``dwi``, the ADC map and the raw DTI series with its FSL gradient
    files (b-values in one row; b-vectors as three rows x, y, z, one column per volume)."""
    if not dwi:
        for name in DIFFUSION_FILES:
            write_volume(case.diffusion[name], folder / f"{name}.nii.gz")
        return
    write_volume(case.diffusion["adc"], folder / "adc.nii.gz")
    series, bvals, bvecs = diffusion_weighted_series(case)
    write_volume(series, folder / f"{DTI_SERIES}.nii.gz")
    write_text(" ".join(f"{b:g}" for b in bvals) + "\n", folder / f"{DTI_SERIES}.bval")
    write_text("".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in np.asarray(bvecs).T),
               folder / f"{DTI_SERIES}.bvec")
