"""A synthetic case written as a case folder (the layout ``gliomaprog run`` reads).

Layout::

    t1c.nii.gz  flair.nii.gz  dsc.nii.gz (4D)  dsc.json  lesion.nii.gz (BraTS 2024 labels on the CE-T1 grid)
    truth/  cbv, cbf, ncbv, k2, nawm, brain_dsc (DSC grid); brain, progression (CE-T1 grid); truth.json
            with habitats: habitats (CE-T1 grid), habitats_dsc and lesion_dsc (DSC grid), habitats.json
            (fractions per region, voxel counts, shares, family parameters; ``synthetic.generate_case``)
    (a case made without DSC has no dsc.nii.gz, dsc.json or DSC-grid truth)
    NOTICE.txt
"""

from __future__ import annotations

import os
from pathlib import Path

from GliomaProgressionLib.case.files import staged_output_folder, write_json, write_volume
from GliomaProgressionLib.phantom.synthetic import MNI_NOTICE, SYNTHETIC_NOTICE, SyntheticCase


def write_case(case: SyntheticCase, out: str | os.PathLike) -> Path:
    """Write a synthetic case folder; nothing appears at ``out`` unless every file was written."""
    with staged_output_folder(out) as staging:
        write_volume(case.t1c, staging / "t1c.nii.gz")
        write_volume(case.flair, staging / "flair.nii.gz")
        if case.dsc is not None:
            write_volume(case.dsc, staging / "dsc.nii.gz", time_spacing=case.config.tr_s)
            write_json(dsc_sidecar(case), staging / "dsc.json")
        write_volume(case.lesion, staging / "lesion.nii.gz")
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
