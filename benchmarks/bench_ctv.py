"""Benchmark: all five CTV schemes on a 1 mm brain (197 x 233 x 189), Euclidean and geodesic (see README.md).

The case is the synthetic phantom's anatomy and tumour on the MNI152 2009 template grid itself (1 mm isotropic,
197 x 233 x 189 voxels): brain mask, BraTS lesion labels, the future-progression truth as the predicted
progression, and the template T1 as the image the automatic barriers take the ventricles from. Times
``CTVPlannerLib.schemes.plan_targets`` for the schemes rtog (CTV46 and CTV60), eortc, estro, ai and boost,
with automatic barriers (falx + corpus-callosum passage + ventricles), no PTV: once with Euclidean margins
(ESTRO-EANO cut at the barriers) and once with every margin geodesic (fast marching). Best of ``--repeats``.

Run from the repository root:  .venv/bin/python benchmarks/bench_ctv.py [--repeats 3] [--seed 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np

from CTVPlannerLib.grid import voxel_volume_ml
from CTVPlannerLib.schemes import SCHEMES, PlanningInputs, plan_targets

TARGETS_S = {"euclidean": 2.0, "geodesic": 20.0}


def mni_case(seed: int) -> tuple[PlanningInputs, dict]:
    """The phantom's tumour grown on the 1 mm MNI grid (the phantom's own building blocks, before acquisition)."""
    # Private helpers of the phantom: the benchmark needs the 1 mm template grid, which the acquired series
    # (0.94 x 0.94 x 1.2 mm, tilted) do not have.
    from GliomaProgressionLib.case.geometry import ijk_to_ras_from_sitk
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, _anatomy, _grow_tumour, _load_template

    template = _load_template("full")
    anatomy = _anatomy(template)
    tumour = _grow_tumour(anatomy, np.random.default_rng(seed), PhantomConfig(seed=seed))
    inputs = PlanningInputs(lesion_labels=tumour.labels, brain=anatomy.brain, ijk_to_ras=ijk_to_ras_from_sitk(
        template["t1"]), progression=tumour.progression, image=anatomy.t1)
    return inputs, tumour.parameters


def best_time(inputs: PlanningInputs, geodesic: bool, repeats: int):
    times, plan = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = plan_targets(inputs, SCHEMES, geodesic=geodesic)
        times.append(time.perf_counter() - start)
    return min(times), plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    inputs, tumour = mni_case(args.seed)
    print(f"CTV schemes benchmark, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, numpy {np.__version__}")
    print(f"grid {inputs.brain.shape[::-1]} (i, j, k) at 1 mm; brain {inputs.brain.sum() / 1000:.0f} mL; lesion "
          f"{(inputs.lesion_labels > 0).sum() / 1000:.1f} mL; progression {inputs.progression.sum() / 1000:.1f} mL; "
          f"tumour {tumour['hemisphere']}, centre {tumour['centre_ras_mm']} mm RAS")
    volumes = {}
    for mode in ("euclidean", "geodesic"):
        seconds, plan = best_time(inputs, mode == "geodesic", args.repeats)
        volumes[mode] = {t.key: t.volume_ml(inputs.ijk_to_ras) for t in plan.targets}
        verdict = "OK" if seconds <= TARGETS_S[mode] else "OVER TARGET"
        print(f"{mode:9s}: {seconds:6.2f} s for {len(plan.targets)} targets (5 schemes), target <= "
              f"{TARGETS_S[mode]:g} s: {verdict}")
    print("target volumes (mL):  " + "  ".join(f"{key} {volumes['euclidean'][key]:.0f}/{volumes['geodesic'][key]:.0f}"
                                             for key in volumes["euclidean"]) + "  (Euclidean/geodesic)")
    print(f"voxel volume {voxel_volume_ml(inputs.ijk_to_ras) * 1000:.2f} mm^3")


if __name__ == "__main__":
    main()
