"""Benchmark: nCBV radiomics of one 1 mm case, per region, against plain pyradiomics in the same run (README.md).

The case is a full-size synthetic phantom (1 mm CE-T1 reference grid), prepared as a patient's would be
(``prepare_case``: FLAIR and DSC registered to CE-T1, nCBV with BSW leakage correction). For the enhancing
(label 3) and non-enhancing (label 2) regions it times, best of ``--repeats``:

- ``ours``: ``radiomics_features.region_features`` with the shipped YAML (original + 8 wavelet images, seven
  feature classes, 851 features), as ``gliomaprog radiomics extract`` and the Slicer module run it;
- ``plain``: pyradiomics' own ``RadiomicsFeatureExtractor(yaml).execute(image, mask)`` on files, the way a
  research script calls it, with the same YAML;
- ``original only``: the same YAML without the wavelet images, to show what the wavelets cost.

Run from the repository root:  .venv/bin/python benchmarks/bench_radiomics.py [--seed 2100] [--repeats 2]
Synthetic data - not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TARGET_S_PER_REGION = 60.0


def prepared_case(seed: int):
    """nCBV and lesion labels of a full-size phantom on its 1 mm CE-T1 grid, and the preparation time."""
    from GliomaProgressionLib.models import training
    from GliomaProgressionLib.case.geometry import sitk_from_volume
    from GliomaProgressionLib.phantom.synthetic import generate_case
    from GliomaProgressionLib.case.preprocess import prepare_case

    case = generate_case(training.cohort_config(seed, "full"))
    started = time.perf_counter()
    prepared = prepare_case(sitk_from_volume(case.t1c), sitk_from_volume(case.flair), sitk_from_volume(case.lesion),
                            case.dsc, case.frame_times_s, case.config.te_s)
    return prepared.channels["ncbv"], prepared.lesion, time.perf_counter() - started


def best_of(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def original_only_yaml(settings: Path, folder: Path) -> Path:
    """The shipped YAML with the wavelet image type removed (every other setting unchanged)."""
    import yaml

    config = yaml.safe_load(settings.read_text(encoding="utf-8"))
    config["imageType"] = {"Original": {}}
    path = folder / "original_only.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2100, help="phantom seed (default 2100, as bench_predict)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args(argv)

    from radiomics import featureextractor

    from GliomaProgressionLib.cohort.radiomics_features import (REGIONS, default_settings_file, expected_feature_names,
                                                         make_extractor, region_features)

    ncbv, lesion, preparation_s = prepared_case(arguments.seed)
    ncbv = sitk.Cast(ncbv, sitk.sitkFloat32)
    labels = sitk.Cast(lesion, sitk.sitkUInt8)
    print(f"nCBV radiomics benchmark, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; phantom seed {arguments.seed}, grid {list(ncbv.GetSize())} at "
          f"{ncbv.GetSpacing()[0]:.1f} mm, preparation {preparation_s:.1f} s (not timed below)", flush=True)
    extractor = make_extractor()
    names = expected_feature_names(extractor)
    results: dict = {"seed": arguments.seed, "grid": list(ncbv.GetSize()), "features_per_region": len(names),
                     "cpu_count": os.cpu_count(), "regions": {}}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        sitk.WriteImage(ncbv, str(folder / "ncbv.nii.gz"))
        plain = featureextractor.RadiomicsFeatureExtractor(str(default_settings_file()))
        original = make_extractor(original_only_yaml(default_settings_file(), folder))
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        for region, label in REGIONS.items():
            mask = sitk.Cast(labels == label, sitk.sitkUInt8)
            sitk.WriteImage(mask, str(folder / f"{region}.nii.gz"))
            ours_s, (voxels, warning, values) = best_of(
                arguments.repeats, lambda: region_features(extractor, ncbv, labels, label, names))
            plain_s, plain_values = best_of(arguments.repeats, lambda: plain.execute(
                str(folder / "ncbv.nii.gz"), str(folder / f"{region}.nii.gz"), label=1))
            original_s, _ = best_of(arguments.repeats, lambda: region_features(
                original, ncbv, labels, label, expected_feature_names(original)))
            worst = max(abs(values[n] - float(np.asarray(plain_values[n]))) / max(1e-12, abs(values[n]))
                        for n in names if np.isfinite(values[n]))
            row = {"voxels": voxels, "ml": round(voxels * float(np.prod(ncbv.GetSpacing())) / 1000, 1),
                   "warning": warning, "computed": int(sum(np.isfinite(v) for v in values.values())),
                   "ours_s": round(ours_s, 2), "plain_pyradiomics_s": round(plain_s, 2),
                   "ratio_plain_over_ours": round(plain_s / ours_s, 2), "original_only_s": round(original_s, 2),
                   "max_relative_difference_vs_plain": float(f"{worst:.2e}"),
                   "within_target": ours_s <= TARGET_S_PER_REGION}
            results["regions"][region] = row
            print(f"{region}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    agree = all(row["max_relative_difference_vs_plain"] <= 1e-9 for row in results["regions"].values())
    if not agree:
        print("Our features differ from plain pyradiomics' with the same YAML.")
    return 0 if agree and all(row["within_target"] for row in results["regions"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
