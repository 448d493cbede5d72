"""Benchmark: one full-size case end to end with each demo model, and the same model through plain nnU-Net.

    .venv/bin/python benchmarks/bench_predict.py [--seed 2100] [--models conventional multiparametric]
        [--no-plain] [--json results.json]

For one synthetic full-size case (1 mm CE-T1 grid) it times
  1. preparation: registration of FLAIR and DSC to CE-T1, nCBV from the DSC series (``prepare_case``);
  2. for each demo model, ``inference.run_prediction`` (background worker: start-up, safe loading, preprocessing,
     sliding window without mirroring on the CPU, resampling back), then the export (probability map,
     "predicted progression" label = p >= 0.5 inside the NEL, JSON verdict);
  3. in the same run, the same model folder through ``nnUNetv2_predict_from_modelfolder`` with its default
     settings (test-time mirroring on, 3 preprocessing and 3 export workers, ``-device cpu`` since there is no GPU).
and prints each time and the ratio plain nnU-Net / ours. Synthetic data — not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=2100, help="phantom seed (held out from the demo training)")
    parser.add_argument("--models", nargs="+", default=["conventional", "multiparametric"])
    parser.add_argument("--no-plain", action="store_true", help="skip the plain nnUNetv2_predict comparison")
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args(argv)

    from GliomaProgressionLib.models import inference

    from GliomaProgressionLib.models import packages as models

    from GliomaProgressionLib.models import training
    from GliomaProgressionLib.case.files import write_image, write_json
    from GliomaProgressionLib.case.geometry import sitk_from_volume
    from GliomaProgressionLib.phantom.synthetic import generate_case
    from GliomaProgressionLib.case.preprocess import prepare_case
    from GliomaProgressionLib.case.registration import resample_onto

    results: dict = {"seed": arguments.seed, "cpu_count": os.cpu_count(), "models": {}}
    started = time.monotonic()
    case = generate_case(training.cohort_config(arguments.seed, "full"))
    results["phantom_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    prepared = prepare_case(sitk_from_volume(case.t1c), sitk_from_volume(case.flair), sitk_from_volume(case.lesion),
                            case.dsc, case.frame_times_s, case.config.te_s)
    results["preparation_s"] = round(time.monotonic() - started, 2)
    results["grid"] = list(prepared.reference.GetSize())
    truth = sitk.GetArrayFromImage(resample_onto(prepared.reference, sitk_from_volume(case.truth["progression"]),
                                                 None, labels=True)) > 0
    nel = sitk.GetArrayFromImage(prepared.nel) > 0
    print(f"case seed {arguments.seed}: grid {results['grid']}, phantom {results['phantom_s']} s, "
          f"registration + nCBV {results['preparation_s']} s", flush=True)

    for model_id in arguments.models:
        package = models.resolve_model(model_id)
        channels = prepared.channel_list(package.channel_names)
        row: dict = {}
        info: dict = {}
        started = time.monotonic()
        probability = inference.run_prediction(channels, package, device="cpu", info=info)
        row["prediction_s"] = round(time.monotonic() - started, 2)
        row["worker_s"] = info.get("seconds")
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            p = sitk.GetArrayFromImage(probability)
            predicted = (p >= 0.5) & nel
            label = sitk.GetImageFromArray(predicted.astype(np.uint8))
            label.CopyInformation(probability)
            write_image(probability, Path(out) / "progression_prob.nii.gz")
            write_image(label, Path(out) / "progression.nii.gz")
            write_json({"progression": bool(predicted.any()), "voxels": int(predicted.sum())},
                       Path(out) / "prediction.json")
        row["export_s"] = round(time.monotonic() - started, 2)
        row["end_to_end_s"] = round(results["preparation_s"] + row["prediction_s"] + row["export_s"], 2)
        row["verdict"] = bool(predicted.any())
        row["dice_in_nel"] = round(float(2 * (predicted & truth).sum() / max(1, predicted.sum() + truth.sum())), 3)
        if not arguments.no_plain:
            row.update(plain_nnunet(channels, package))
            row["ratio_plain_over_ours"] = round(row["plain_nnunet_s"] / row["prediction_s"], 2)
        results["models"][model_id] = row
        print(f"{model_id}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2))
    return 0


def plain_nnunet(channels, package) -> dict:
    """The same model folder through nnU-Net's own command with its default settings (CPU)."""
    executable = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")
    with tempfile.TemporaryDirectory() as folder:
        inputs, outputs = Path(folder) / "in", Path(folder) / "out"
        inputs.mkdir()
        for index, image in enumerate(channels):
            sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(inputs / f"case_{index:04d}.nii.gz"), True)
        env = {**os.environ, "nnUNet_raw": folder, "nnUNet_preprocessed": folder, "nnUNet_results": folder}
        started = time.monotonic()
        result = subprocess.run([str(executable), "-i", str(inputs), "-o", str(outputs), "-m", str(package.folder),
                                 "-f", *[str(f) for f in package.folds], "-device", "cpu"],
                                capture_output=True, text=True, env=env)
        seconds = round(time.monotonic() - started, 2)
        if result.returncode != 0:
            return {"plain_nnunet_s": None, "plain_nnunet_error": (result.stdout + result.stderr)[-800:]}
        written = sorted(p.name for p in outputs.glob("*.nii.gz"))
        shutil.rmtree(outputs, ignore_errors=True)
    return {"plain_nnunet_s": seconds, "plain_nnunet_outputs": written}


if __name__ == "__main__":  # nnU-Net's pools use spawn
    sys.exit(main())
