"""Benchmark: every local feature map the invasion map needs for one full-size case (issue 15: <= 5 min on 2 cores).

A full-size phantom case folder (seed 0, clinical grids, DSC and diffusion maps) is read and prepared as
``gliomaprog invasion`` prepares it at 1 mm (``runs.invasion.prepare_invasion_case``: registration, nCBV, ADC/FA/MD
registered, p and q derived; timed apart), then ``invasion.pipeline.region_features`` computes all 23 features of
the seven maps of seed 004 (t1c, flair, ncbv, adc, fa, p, q) over the case's own peritumoral region (the NEL plus
20 mm around the tumour core, inside the brain), one map after another in this process, as the product runs it.
Wall and CPU time of that step are printed with the region's size; the exit code is 1 above 300 s of wall time.

Run from the repository root (on an otherwise idle machine):  .venv/bin/python benchmarks/bench_invasion_case.py
Synthetic data - not for clinical use.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHANNELS = ("t1c", "flair", "ncbv", "adc", "fa", "p", "q")  # Yan et al. 2020's seven maps
TARGET_S = 300.0


def main() -> int:
    import SimpleITK as sitk

    from GliomaProgressionLib.case.brain_region import brain_region
    from GliomaProgressionLib.invasion.features import FEATURES
    from GliomaProgressionLib.invasion.pipeline import region_features
    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case
    from GliomaProgressionLib.runs.invasion import prepare_invasion_case

    with tempfile.TemporaryDirectory() as work:
        folder = write_case(generate_case(PhantomConfig(seed=0, size="full", diffusion=True)), Path(work) / "case")
        started = time.perf_counter()
        _, prepared = prepare_invasion_case(folder, CHANNELS, 1.0)
        preparation_s = time.perf_counter() - started
    arrays = {name: sitk.GetArrayFromImage(prepared.channels[name]) for name in CHANNELS}
    lesion = sitk.GetArrayFromImage(prepared.lesion)
    brain = sitk.GetArrayViewFromImage(brain_region(prepared.reference).mask) > 0
    spacing = tuple(float(s) for s in prepared.reference.GetSpacing()[::-1])
    wall, cpu = time.perf_counter(), time.process_time()
    region, matrix = region_features(arrays, lesion, spacing, CHANNELS, FEATURES, radius=2, bin_count=16, brain=brain)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
              "load_average_1min": round(os.getloadavg()[0], 2), "grid": list(lesion.shape[::-1]),
              "region_voxels": int(region.sum()), "channels": list(CHANNELS), "features_per_map": len(FEATURES),
              "feature_matrix": list(matrix.shape), "preparation_s": round(preparation_s, 1),
              "feature_maps_wall_s": round(wall, 1), "feature_maps_cpu_s": round(cpu, 1), "target_s": TARGET_S,
              "per_map_wall_s": round(wall / len(CHANNELS), 1), "finite": bool(np.isfinite(matrix).all())}
    print(json.dumps(result, indent=2))
    return 0 if wall <= TARGET_S and result["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
