"""Calibrate the registration quality measure (edge-alignment contrast) on right and wrong registrations.

    .venv/bin/python benchmarks/calibrate_registration_quality.py            # small phantoms, ~8 min on 2 shared cores
    .venv/bin/python benchmarks/calibrate_registration_quality.py --seeds 0 1 --out build/calibration

Inputs, for each seed, of four kinds (FLAIR and the DSC baseline image each registered to the 1 mm CE-T1):
  skull-stripped  the phantom as it comes (brain only, noisy background, every series in its own pose)
  with-head       scalp and skull kept
  preprocessed    BraTS style: CE-T1 and FLAIR on one grid, one pose
  brats-zeroed    preprocessed with the background set exactly to zero outside the brain, as BraTS ships it
and hard versions of the FLAIR: moved by 10 mm and 10 degrees in its header, and the same with its intensities
bent (a smooth 0.6-1.4 bias field and a square root), which weakens mutual information.

Right: what ``register_rigid`` found, when it is within 1 mm and 1 degree of the truth. Wrong: the true pose
moved by 5 mm, by 5 degrees, and by 10 mm and 10 degrees (random directions, seeded), and any registration
that ended 5 mm or 5 degrees off. The threshold is midway between the lowest right contrast and the highest
wrong one. Writes ``registration_quality_calibration.json`` and prints a summary; the numbers are quoted in
docs/registration-quality.md and the threshold in ``case/registration_quality.CONTRAST_THRESHOLD``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from GliomaProgressionLib.case import geometry, registration
from GliomaProgressionLib.case.geometry import Volume
from GliomaProgressionLib.case.registration_quality import alignment_contrast
from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

VARIANTS = {"skull-stripped": {}, "with-head": {"head": True}, "preprocessed": {"preprocessed": True},
            "brats-zeroed": {"preprocessed": True}}
RIGHT_MM_DEG = 1.0
WRONG_MM_DEG = 5.0
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs"


def rigid_motion(rotation_deg: float, translation_mm: float, centre: np.ndarray, rng) -> np.ndarray:
    """A 4x4 RAS motion: a rotation about a random axis through ``centre`` and a translation in a random direction."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    rotation = sitk.VersorTransform(tuple(axis), float(np.radians(rotation_deg)))
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(rotation.GetMatrix()).reshape(3, 3)
    direction = rng.standard_normal(3)
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + translation_mm * direction / np.linalg.norm(direction)
    return matrix


def brain_points(case) -> np.ndarray:
    k, j, i = np.nonzero(case.truth["brain"].array)
    return geometry.ras_from_ijk(np.stack([i, j, k], axis=1)[::50].astype(float), case.truth["brain"].ijk_to_ras)


def series_images(case, zeroed: bool) -> dict[str, sitk.Image]:
    flair = np.asarray(case.flair.array, np.float32)
    dsc = np.asarray(case.dsc.array[1:8], np.float32).mean(axis=0)
    if zeroed:  # BraTS: exactly zero outside the brain (FLAIR shares the CE-T1 grid in this variant)
        flair = flair * (case.truth["brain"].array > 0)
        dsc = dsc * (case.truth["brain_dsc"].array > 0)
    return {"flair": geometry.sitk_from_volume(Volume(flair, case.flair.ijk_to_ras)),
            "dsc": geometry.sitk_from_volume(Volume(dsc, case.dsc.ijk_to_ras))}


def reference_image(case, zeroed: bool) -> sitk.Image:
    t1c = np.asarray(case.t1c.array, np.float32)
    if zeroed:
        t1c = t1c * (case.truth["brain"].array > 0)
    return registration.isotropic_reference(geometry.sitk_from_volume(Volume(t1c, case.t1c.ijk_to_ras)))


def bent(image: sitk.Image, rng) -> sitk.Image:
    """Intensities bent: a smooth multiplicative field from 0.6 to 1.4 across the image, then a square root."""
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    axis = rng.integers(0, 3)
    ramp = np.linspace(0.6, 1.4, values.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
    result = sitk.GetImageFromArray(np.sqrt(np.maximum(values * ramp, 0)) * 30.0)
    result.CopyInformation(image)
    return result


def record(rows, variant, seed, series, kind, error, contrast, seconds=None):
    rows.append({"variant": variant, "seed": seed, "series": series, "kind": kind,
                 "error_mm": round(error[0], 3), "error_deg": round(error[1], 3),
                 "contrast": None if not np.isfinite(contrast) else round(float(contrast), 4),
                 "seconds": None if seconds is None else round(seconds, 2)})
    print(f"{variant:15s} seed {seed} {series:6s} {kind:28s} {error[0]:6.2f} mm {error[1]:6.2f} deg  "
          f"contrast {contrast:7.3f}" + ("" if seconds is None else f"  {seconds:5.1f} s"), flush=True)


def registered(rows, variant, seed, series, kind, reference, moving, truth, points):
    started = time.monotonic()
    found = registration.register_rigid(reference, moving, series)
    seconds = time.monotonic() - started
    error = registration.transform_error(found, truth, points)
    record(rows, variant, seed, series, kind, error, found.quality["edge_alignment_contrast"] or np.nan, seconds)


def deliberate(rows, variant, seed, series, reference, moving, truth, points, centre, rng):
    scene = registration.alignment_scene(reference, moving)
    for name, (degrees, mm) in {"moved 5 mm": (0.0, 5.0), "moved 5 deg": (5.0, 0.0),
                                "moved 10 mm 10 deg": (10.0, 10.0)}.items():
        wrong = rigid_motion(degrees, mm, centre, rng) @ truth
        pose = registration.RigidRegistration(registration.transform_from_ras_matrix(wrong), 0.0, 0)
        error = registration.transform_error(pose, truth, points)
        record(rows, variant, seed, series, name, error, alignment_contrast(scene, pose.transform)[1])


def calibrate_case(rows, variant, seed, size):
    rng = np.random.default_rng(1000 + seed)
    case = generate_case(PhantomConfig(seed=seed, size=size, **VARIANTS[variant]))
    zeroed = variant == "brats-zeroed"
    reference = reference_image(case, zeroed)
    points = brain_points(case)
    centre = points.mean(axis=0)
    for series, moving in series_images(case, zeroed).items():
        truth = np.array(case.metadata["series"][series]["ras_t1c_from_ras_series"])
        registered(rows, variant, seed, series, "registered", reference, moving, truth, points)
        deliberate(rows, variant, seed, series, reference, moving, truth, points, centre, rng)
        if series == "flair":
            motion = rigid_motion(10.0, 10.0, centre, rng)
            shifted_truth = truth @ np.linalg.inv(motion)
            registered(rows, variant, seed, series, "registered from 10 mm 10 deg", reference,
                       registration.moved_series(moving, motion), shifted_truth, points)
            registered(rows, variant, seed, series, "registered, bent, 10 mm 10 deg", reference,
                       registration.moved_series(bent(moving, rng), motion), shifted_truth, points)


def summary(rows) -> dict:
    def label(row):
        worst = max(row["error_mm"], row["error_deg"])
        return "right" if worst <= RIGHT_MM_DEG else "wrong" if max(row["error_mm"], row["error_deg"]) >= WRONG_MM_DEG \
            else "between"

    right = [r["contrast"] if r["contrast"] is not None else -1.0 for r in rows if label(r) == "right"]
    wrong = [r["contrast"] if r["contrast"] is not None else -1.0 for r in rows if label(r) == "wrong"]
    lowest_right, highest_wrong = min(right), max(wrong)
    threshold = round((lowest_right + highest_wrong) / 2, 3)
    registrations = [r for r in rows if r["kind"].startswith("registered")]
    return {
        "measure": "edge-alignment contrast: normalised-gradient-field alignment at the pose over its mean at poses "
                   "moved 6 mm along each axis, minus 1 (brain region, 2 mm grid)",
        "right": {"count": len(right), "lowest": lowest_right, "median": float(np.median(right))},
        "wrong": {"count": len(wrong), "highest": highest_wrong, "median": float(np.median(wrong))},
        "separated": lowest_right > highest_wrong,
        "margin": round(lowest_right - highest_wrong, 4),
        "threshold": threshold,
        "false_alarms": sum(value < threshold for value in right),
        "misses": sum(value >= threshold for value in wrong),
        "registrations_within_1mm_1deg": sum(label(r) == "right" for r in registrations),
        "registrations": len(registrations),
        "seconds_per_registration_median": float(np.median([r["seconds"] for r in registrations])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", default="small")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for registration_quality_calibration.json")
    arguments = parser.parse_args()
    rows: list[dict] = []
    for seed in arguments.seeds:
        for variant in VARIANTS:
            calibrate_case(rows, variant, seed, arguments.size)
    result = {"size": arguments.size, "seeds": arguments.seeds, "summary": summary(rows), "rows": rows}
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "registration_quality_calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
