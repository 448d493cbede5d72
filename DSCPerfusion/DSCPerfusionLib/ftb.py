"""Fractional tumour burden (FTB): each lesion voxel classed by its blood volume as low, intermediate or high.

FTB maps were introduced to read a treated glioma's enhancing lesion as a mixture rather than one mean value
(Hu et al. 2012, Neuro-Oncology 14:919; Iv et al. 2019, AJNR 40:1649, against histology): voxels of high rCBV
stand for tumour, voxels of low rCBV for treatment effect, and the fraction of each is reported per lesion.

Rule (Iv et al. 2019): low nCBV < low threshold; intermediate low <= nCBV <= high; high nCBV > high threshold.
Defaults 1.0 and 1.75, the published values. How they map onto this project's nCBV, honestly:

- Iv et al.'s abstract calls them "normalized relative CBV thresholds"; much of the FTB literature (and the
  IB Neuro software it used) works on *standardised* rCBV (sRCBV, Bedekar et al. 2010, MRM 64:907): the
  whole-brain rCBV histogram mapped onto a standard scale by landmarks. A 2020 AJNR study compared sRCBV with rCBV normalised
  to reference tissue against image-localised biopsies ("Performance of standardized relative CBV for
  quantifying regional histologic tumor burden..."): the two are different scales. We could not read the full
  texts here, so which scale the 1.0 / 1.75 were calibrated on is not certain.
- nCBV here is rCBV divided by the mean rCBV of contralateral normal-appearing white matter (NAWM = 1). No
  exact conversion from sRCBV exists (it depends on each brain's histogram). Applying 1.0 and 1.75 to nCBV
  assumes NAWM sits near 1 on both scales; that makes "low" mean "below white matter" and "high" mean
  "above 1.75 x white matter" (grey matter is ~2 x white matter, so cortex-like blood volume counts as high).
  Treat the classes as an approximation and give thresholds calibrated at your site where you have them.

The published FTB is over the contrast-enhancing lesion; the fractions are given for every lesion region the
caller names, so that row can be read on its own. Voxels whose nCBV is not finite are left unclassed (0).
Pure numpy; region names come from the caller (the lesion vocabulary lives in CTVPlannerLib.lesion).
"""

from __future__ import annotations

import math

import numpy as np

# Label value -> (display name, RGB colour 0..1): blue, yellow and red as in the published FTB maps.
FTB_CLASSES = {
    1: ("Low rCBV", (0.20, 0.45, 1.00)),
    2: ("Intermediate rCBV", (1.00, 0.85, 0.10)),
    3: ("High rCBV", (0.85, 0.05, 0.05)),
}
# Label value -> the key of its fraction in perfusion.json and report.json.
FTB_KEYS = {1: "low", 2: "intermediate", 3: "high"}
FTB_THRESHOLDS = (1.0, 1.75)  # nCBV (ratio to NAWM); the published values, see the module docstring
FTB_THRESHOLD_RANGE = (0.0, 10.0)  # what a user may set (nCBV above 10 is vessel, not tissue)
WHOLE_LESION = "Whole lesion"
FTB_DEFINITION = ("Each lesion voxel inside the brain mask classed by nCBV (ratio to contralateral NAWM): low < "
                  "{low:g} <= intermediate <= {high:g} < high (Iv et al. 2019 AJNR 40:1649; Hu et al. 2012 "
                  "Neuro-Oncology 14:919). The published thresholds are for standardised or normalised rCBV of "
                  "another pipeline; here they are applied to nCBV as an approximation. Published FTB is over the "
                  "enhancing lesion.")


def checked_thresholds(thresholds) -> tuple[float, float]:
    """(low, high) as floats, finite, inside FTB_THRESHOLD_RANGE and low < high; ValueError (one sentence) else."""
    try:
        low, high = (float(value) for value in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"The FTB thresholds must be two numbers (low, high), got {thresholds!r}.") from None
    bottom, top = FTB_THRESHOLD_RANGE
    if not all(math.isfinite(v) and bottom <= v <= top for v in (low, high)):
        raise ValueError(f"The FTB thresholds must lie between {bottom:g} and {top:g} (nCBV), got {low:g} and "
                         f"{high:g}.")
    if not low < high:
        raise ValueError(f"The low FTB threshold ({low:g}) must be below the high one ({high:g}).")
    return low, high


def classify(ncbv: np.ndarray, region: np.ndarray, thresholds=FTB_THRESHOLDS) -> np.ndarray:
    """FTB labels (uint8, shape of ``ncbv``): 1 low, 2 intermediate, 3 high inside ``region``; 0 elsewhere and
    where nCBV is not finite."""
    low, high = checked_thresholds(thresholds)
    values = np.asarray(ncbv, dtype=np.float64)
    inside = np.asarray(region, dtype=bool)
    if inside.shape != values.shape:
        raise ValueError(f"The FTB region has shape {inside.shape} but the nCBV map is {values.shape}.")
    labels = np.zeros(values.shape, np.uint8)
    classed = inside & np.isfinite(values)
    labels[classed] = 2
    labels[classed & (values < low)] = 1
    labels[classed & (values > high)] = 3
    return labels


def fractions(labels: np.ndarray, region: np.ndarray) -> dict:
    """Classed voxels of ``region`` and the fraction (0..1) of them in each class; fractions None when none."""
    inside = np.asarray(labels)[np.asarray(region, dtype=bool)]
    classed = inside[inside > 0]
    result = {"voxels": int(classed.size), "unclassed_voxels": int(inside.size - classed.size)}
    for value, key in FTB_KEYS.items():
        result[key] = round(float(np.mean(classed == value)), 4) if classed.size else None
    return result


def fractions_by_region(labels: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, dict]:
    """``fractions`` per named region (regions without any voxel are left out)."""
    return {name: fractions(labels, mask) for name, mask in regions.items() if np.asarray(mask).any()}


def summary(labels: np.ndarray, regions: dict[str, np.ndarray], thresholds, grid: str) -> dict:
    """What perfusion.json and report.json say about FTB: definition, thresholds, classes and the fractions."""
    low, high = checked_thresholds(thresholds)
    return {"definition": FTB_DEFINITION.format(low=low, high=high), "grid": grid,
            "thresholds_ncbv": [low, high],
            "classes": {FTB_KEYS[value]: {"label": value, "name": name} for value, (name, _) in FTB_CLASSES.items()},
            "regions": fractions_by_region(labels, regions)}


def lesion_ftb(ncbv: np.ndarray, labels: np.ndarray, inside: np.ndarray, part_names: dict[int, str],
               thresholds, grid: str) -> tuple[np.ndarray, dict]:
    """FTB of a lesion given as integer labels: the class map (lesion voxels within ``inside``, e.g. the brain
    mask) and its ``summary`` per part (named by ``part_names``, else "label <v>") and over the whole lesion."""
    labels = np.asarray(labels)
    lesion = labels > 0
    classes = classify(ncbv, lesion & np.asarray(inside, dtype=bool), thresholds)
    regions = {part_names.get(int(value), f"label {int(value)}"): labels == value
               for value in np.unique(labels[lesion])}
    regions[WHOLE_LESION] = lesion
    return classes, summary(classes, regions, thresholds, grid)
