"""Benchmark: local radiomics feature maps of one full-size case's peritumoral region, against pyradiomics'
voxel-based extraction in the same run (README.md).

The case is a full-size synthetic phantom in its BraTS-style variant (``PhantomConfig(preprocessed=True)``: CE-T1
and FLAIR already on one 1 mm isotropic grid, the reference grid). The peritumoral region is what the invasion map
classifies (seed 004, Yan et al. 2020): the non-enhancing lesion (BraTS label 2) grown by ``--margin-mm`` (10 mm),
without the enhancing tumour and necrosis, inside the brain. On the FLAIR image it times:

- ``ours``: ``invasion.features.local_feature_maps`` with every feature of ``FEATURES`` (23), radius 2, 16 bins,
  over the whole region (best of ``--repeats``; wall clock and process CPU time);
- ``pyradiomics``: ``RadiomicsFeatureExtractor(voxelBased=True)`` with the same settings (binCount 16,
  kernelRadius 2, maskedKernel False, the image clipped to the region's robust range as features.py does) on two
  random subsamples of the region's voxels (``--subsample``, and a fifth of it). Over the whole region it would
  take the better part of an hour (and, in one batch, ~11 GB for its GLCMs alone: voxels x 16 x 16 x 13 doubles),
  so its time is **extrapolated**: a straight line through the two subsamples' times (a fixed part, the whole-box
  discretisation, plus a part per voxel) to the region's voxel count.

Both sets of values are compared on the larger subsample (largest relative difference per feature).

Run from the repository root:  .venv/bin/python benchmarks/bench_invasion_features.py [--seed 2100]
Synthetic data - not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

TARGET_S_PER_MAP = 40.0  # issue 15: seven maps of one case in <= 5 min on 2 cores


def peritumoral_case(seed: int, margin_mm: float):
    """FLAIR on the 1 mm grid, the peritumoral mask (NEL grown by ``margin_mm``) and the grid's spacing (k, j, i)."""
    from scipy import ndimage

    from CTVPlannerLib.lesion import LESION_SEGMENTS
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    case = generate_case(PhantomConfig(seed=seed, size="full", preprocessed=True, dsc=False, diffusion=False))
    spacing = tuple(float(s) for s in case.flair.spacing[::-1])
    labels = case.lesion.array
    nel = labels == 2
    assert LESION_SEGMENTS[2][0].startswith("Non-enhancing")
    near = ndimage.distance_transform_edt(~nel, sampling=spacing) <= margin_mm
    mask = near & (case.truth["brain"].array > 0) & ~np.isin(labels, (1, 3, 4))
    return case.flair.array.astype(np.float32), mask, spacing


def timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def pyradiomics_maps(image, mask, radius: int, bin_count: int, voxels: np.ndarray):
    """pyradiomics' voxel-based maps at ``voxels`` (k, j, i rows) with the settings features.py documents."""
    import SimpleITK as sitk
    from radiomics import featureextractor

    from GliomaProgressionLib.invasion import features

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    low, high = np.percentile(image[mask].astype(np.float64), features.ROBUST_PERCENTILES)
    subsample = np.zeros(mask.shape, np.uint8)
    subsample[tuple(voxels.T)] = 1
    extractor = featureextractor.RadiomicsFeatureExtractor(binCount=bin_count, kernelRadius=radius,
                                                           maskedKernel=False, voxelBased=True)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(firstorder=list(features.FIRSTORDER), glcm=list(features.GLCM),
                                   glrlm=list(features.GLRLM))
    # the whole region's bounding box, as features.py discretises it (pyradiomics crops to its own mask's box)
    corners = np.argwhere(mask)
    box = tuple(slice(max(a - radius, 0), min(b + radius + 1, n))
                for a, b, n in zip(corners.min(0), corners.max(0), mask.shape))
    clipped = np.clip(image[box].astype(np.float64), low, high)
    result = extractor.execute(sitk.GetImageFromArray(clipped), sitk.GetImageFromArray(subsample[box]),
                               voxelBased=True)
    values = {}
    for name in features.FEATURES:
        cropped = result[f"original_{name}"]
        origin = np.round(cropped.GetOrigin()[::-1]).astype(int)
        array = sitk.GetArrayFromImage(cropped)
        inside = voxels - np.array([s.start for s in box]) - origin
        values[name] = array[tuple(inside.T)]
    return values


def subsamples(image, mask, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random voxels of the region and a fifth of them (k, j, i rows), both holding a voxel at each end
    of the robust range: pyradiomics takes its bin edges from the extremes of the box it crops around them."""
    from GliomaProgressionLib.invasion import features

    region = np.argwhere(mask)
    values = image[mask].astype(np.float64)
    low, high = np.percentile(values, features.ROBUST_PERCENTILES)
    extremes = [int(np.argmax(values <= low)), int(np.argmax(values >= high))]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.setdiff1d(np.arange(len(region)), extremes), count - 2, replace=False)
    large = np.concatenate([extremes, chosen])
    small = np.concatenate([extremes, chosen[: count // 5 - 2]])
    return region[np.sort(large)], region[np.sort(small)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2100, help="phantom seed (default 2100, as bench_radiomics)")
    parser.add_argument("--margin-mm", type=float, default=10.0)
    parser.add_argument("--subsample", type=int, default=1500, help="voxels pyradiomics computes (and a fifth)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args(argv)

    from GliomaProgressionLib.invasion.features import FEATURES, local_feature_maps

    radius, bin_count = 2, 16
    image, mask, spacing = peritumoral_case(arguments.seed, arguments.margin_mm)
    voxels = int(mask.sum())
    print(f"Invasion feature maps benchmark, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; phantom seed {arguments.seed}, FLAIR "
          f"grid {list(image.shape)} at {spacing[0]:.1f} mm, peritumoral region {voxels} voxels "
          f"(NEL + {arguments.margin_mm:g} mm), {len(FEATURES)} features, radius {radius}, {bin_count} bins",
          flush=True)

    runs = [timed(lambda: local_feature_maps(image, mask, spacing, radius, bin_count))
            for _ in range(arguments.repeats)]
    ours_wall, ours_cpu, maps = min(runs, key=lambda run: run[0])
    print(f"ours: {ours_wall:.1f} s wall, {ours_cpu:.1f} s CPU for the whole region "
          f"({ours_wall / voxels * 1e5:.1f} s wall per 10^5 voxels)", flush=True)

    large, small = subsamples(image, mask, arguments.subsample, arguments.seed)
    small_wall, small_cpu, _ = timed(lambda: pyradiomics_maps(image, mask, radius, bin_count, small))
    large_wall, large_cpu, theirs = timed(lambda: pyradiomics_maps(image, mask, radius, bin_count, large))
    per_voxel = (large_wall - small_wall) / (len(large) - len(small))
    fixed = max(small_wall - per_voxel * len(small), 0.0)
    extrapolated = fixed + per_voxel * voxels
    cpu_per_voxel = (large_cpu - small_cpu) / (len(large) - len(small))
    extrapolated_cpu = max(small_cpu - cpu_per_voxel * len(small), 0.0) + cpu_per_voxel * voxels
    print(f"pyradiomics voxel-based: {small_wall:.1f} s for {len(small)} voxels, {large_wall:.1f} s for "
          f"{len(large)}: {per_voxel * 1000:.1f} ms per voxel + {fixed:.1f} s, extrapolated to the region "
          f"{extrapolated:.0f} s wall ({extrapolated / 3600:.2f} h), {extrapolated_cpu:.0f} s CPU", flush=True)

    differences = {}
    for name in FEATURES:
        ours = maps[name][tuple(large.T)].astype(np.float64)
        differences[name] = float(np.max(np.abs(ours - theirs[name]) / np.maximum(np.abs(theirs[name]), 1e-6)))
    worst = max(differences, key=differences.get)
    print(f"largest relative difference from pyradiomics on {len(large)} voxels: {differences[worst]:.1e} "
          f"({worst})", flush=True)
    ratio, ratio_cpu = extrapolated / ours_wall, extrapolated_cpu / ours_cpu
    print(f"speed-up: {ratio:.0f}x wall, {ratio_cpu:.0f}x CPU; seven maps at this speed: "
          f"{7 * ours_wall / 60:.1f} min on one core (target <= 5 min on 2 cores, {TARGET_S_PER_MAP:g} s per map)")

    results = {"seed": arguments.seed, "grid": list(image.shape), "region_voxels": voxels,
               "features": len(FEATURES), "radius": radius, "bin_count": bin_count, "cpu_count": os.cpu_count(),
               "ours_wall_s": round(ours_wall, 2), "ours_cpu_s": round(ours_cpu, 2),
               "pyradiomics_subsamples": [len(small), len(large)],
               "pyradiomics_subsample_wall_s": [round(small_wall, 2), round(large_wall, 2)],
               "pyradiomics_extrapolated_wall_s": round(extrapolated, 1),
               "pyradiomics_extrapolated_cpu_s": round(extrapolated_cpu, 1),
               "ratio_wall": round(ratio, 1), "ratio_cpu": round(ratio_cpu, 1),
               "max_relative_difference": {name: float(f"{value:.2e}") for name, value in differences.items()}}
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    agree = differences[worst] <= 1e-4
    if not agree:
        print("Our maps differ from pyradiomics' voxel-based extraction beyond 1e-4.")
    return 0 if agree and ours_wall <= TARGET_S_PER_MAP else 1


if __name__ == "__main__":
    raise SystemExit(main())
