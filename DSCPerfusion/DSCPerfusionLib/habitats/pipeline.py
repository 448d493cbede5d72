"""Perfusion habitats of one case with a trained model, and the training of that model on a cohort.

One case (``compute_habitats``), all on the DSC grid (K, J, I):

1. CEL and NEL masks checked (NEL voxels that are also CEL count as CEL); each needs ``MIN_REGION_VOXELS``.
2. Reference tissues (``references.find_reference_tissues``; the brain mask is found if not given) and the
   bolus arrival, detected once on the white-matter curve and used for every curve.
3. Every CEL and NEL curve normalised (``curves.normalised_curves``), encoded by the model's autoencoder and
   given the nearest k-means centre of its region: the patterns, numbered 1.. over the CEL's then the NEL's.
4. Each pattern named by ``labels.label_pattern`` from the parameters of its mean curve in THIS brain against
   THIS brain's references (and its mean ADC ratio to the white-matter reference when ADC is given), which is
   what Yun et al. do: the same cluster of curve shapes can be oedema-bright in one brain and not in another,
   and a model's clusters are shapes, not names. The name the pattern got at training (from the cohort's
   mean) is kept beside it ("model_habitat") and a warning lists the patterns whose name changed. A pattern
   with fewer than ``MIN_PATTERN_VOXELS`` voxels in this brain keeps its training name (its mean is noise).
   ``relabel=False`` uses the training names throughout.
5. Fractions of each region's voxels per habitat (every habitat allowed in the region, zeros included).

Training (``train_habitat_model``): the same steps 1-3 on each case (at most ``max_curves_per_region``
curves per region and case, a seeded random subset, so that a large lesion does not outweigh the others),
one autoencoder on all curves, k-means per region with k chosen by silhouette (``clustering``) but never below
the number of habitats the region may hold (3 in the CEL, 4 in the NEL; ``region_k_range``), each cluster
named by ``label_pattern`` from the parameters of its mean curve (over all cases) against the mean of the
cases' reference parameters.

Why k is not allowed below the region's habitat count: on partial-volumed curves the silhouette favours the
fewest clusters, and a small family (the phantom's infiltrated oedema, a tenth of the NEL) merged into its
neighbour at k = 2 with a silhouette only 0.007 above k = 3. The rules name clusters, so splitting a family costs
nothing (both halves get its name) while merging two loses one of them; Yun et al. found 4 patterns per region.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .clustering import DEFAULT_K_RANGE, assign, checked_k_range, fit_kmeans
from .curves import (
    PARAMETER_NAMES,
    arrival_frame_of,
    checked_mask,
    checked_series,
    curve_times,
    mean_curve_parameters,
    normalised_curves,
    voxel_curves,
)
from .labels import HABITAT_BY_KEY, REGIONS, habitats_of_region, label_pattern
from .model import SYNTHETIC_NOTICE, HabitatModel, curve_settings
from .references import automatic_brain_mask, find_reference_tissues, reference_curves, reference_parameters

MIN_REGION_VOXELS = 20
MIN_PATTERN_VOXELS = 10
DEFAULT_EPOCHS = 30
DEFAULT_MAX_CURVES_PER_REGION = 2000
Progress = Callable[[float, str], None]


@dataclass
class HabitatTrainingCase:
    """One case of a training cohort: DSC signal (T, K, J, I), frame times (s) and masks on the DSC grid."""

    signal: np.ndarray
    times_s: np.ndarray
    cel_mask: np.ndarray
    nel_mask: np.ndarray
    brain_mask: np.ndarray | None = None
    nawm_mask: np.ndarray | None = None
    adc: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] | None = None  # voxel size per array axis (k, j, i)
    ijk_to_ras: np.ndarray | None = None  # 4x4; gives the automatic NAWM its hemispheres


@dataclass
class HabitatResult:
    """Habitats of one case (``compute_habitats``); maps on the DSC grid."""

    labels: np.ndarray  # (K,J,I) uint8: HABITATS value, 0 outside CEL and NEL
    patterns: np.ndarray  # (K,J,I) int16: 1-based pattern, CEL patterns first, 0 outside
    fractions: dict[str, dict[str, float]]  # region -> habitat key -> fraction of the region's voxels
    pattern_table: list[dict]
    pattern_curves: dict[str, list[float]]  # "CEL 1" -> mean normalised curve
    reference_curves: dict[str, list[float]]  # artery (if found), grey_matter, white_matter, csf
    times_s: list[float]
    report: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class _PreparedCase:
    masks: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]  # region -> (N, CURVE_POINTS) float32
    adc_ratio: dict[str, np.ndarray | None]  # region -> (N,) ADC / white-matter ADC
    reference_masks: dict[str, np.ndarray]
    reference_curves: dict[str, np.ndarray]
    reference_parameters: dict[str, dict[str, float]]
    warnings: list[str]


def _region_masks(cel_mask, nel_mask, shape) -> dict[str, np.ndarray]:
    cel = checked_mask(cel_mask, shape, "contrast-enhancing lesion (CEL)")
    nel = checked_mask(nel_mask, shape, "non-enhancing lesion (NEL)") & ~cel
    masks = {"CEL": cel, "NEL": nel}
    for region, mask in masks.items():
        count = int(mask.sum())
        if count == 0:
            raise ValueError(f"The {region} mask has no voxel on the DSC grid, so its habitats cannot be found.")
        if count < MIN_REGION_VOXELS:
            raise ValueError(f"The {region} has {count} voxels on the DSC grid; habitats need at least "
                             f"{MIN_REGION_VOXELS}.")
    return masks


def prepare_case(signal, times_s, cel_mask, nel_mask, *, brain_mask=None, nawm_mask=None, adc=None,
                 spacing_mm=None, ijk_to_ras=None) -> _PreparedCase:
    """Steps 1-2 and the normalised curves of step 3 of the module docstring, for one case."""
    series, times = checked_series(signal, times_s)
    shape = series.shape[1:]
    masks = _region_masks(cel_mask, nel_mask, shape)
    lesion = masks["CEL"] | masks["NEL"]
    brain = automatic_brain_mask(series) if brain_mask is None else checked_mask(brain_mask, shape, "brain")
    brain = brain | lesion
    references = find_reference_tissues(series, times, brain, nawm_mask=nawm_mask, lesion_mask=lesion,
                                        spacing_mm=spacing_mm, ijk_to_ras=ijk_to_ras, require_artery=False)
    warnings = [] if references["artery"].any() else [
        "No arterial voxels were found in the DSC series: the artery reference curve is left out."]
    arrival = arrival_frame_of(voxel_curves(series, references["white_matter"], "white matter").mean(axis=1))
    curves = {region: normalised_curves(series, times, mask, references["white_matter"], arrival)[0]
              for region, mask in masks.items()}
    ref_curves, axis = reference_curves(series, times, references, arrival)
    adc_ratio = _adc_ratios(adc, masks, references["white_matter"], shape)
    return _PreparedCase(masks, curves, adc_ratio, references, ref_curves,
                         reference_parameters(ref_curves, axis), warnings)


def _adc_ratios(adc, masks, white, shape) -> dict[str, np.ndarray | None]:
    if adc is None:
        return {region: None for region in masks}
    values = np.asarray(adc, dtype=np.float64)
    if values.shape != tuple(shape):
        raise ValueError(f"The ADC map has shape {values.shape} but the DSC series' spatial shape is {tuple(shape)}.")
    white_adc = values[white]
    white_adc = white_adc[np.isfinite(white_adc)]
    if white_adc.size == 0 or not white_adc.mean() > 0:
        raise ValueError("The ADC map has no positive value in the white-matter reference.")
    return {region: values[mask] / white_adc.mean() for region, mask in masks.items()}


def _pattern_summary(curves: np.ndarray, adc_ratio: np.ndarray | None,
                     members: np.ndarray) -> tuple[dict, float | None]:
    """Parameters of the mean curve of ``members`` (bool) and their mean ADC ratio (None without ADC)."""
    if not members.any():
        return {name: float("nan") for name in PARAMETER_NAMES}, None
    parameters = mean_curve_parameters(curves[members], curve_times())
    adc = None
    if adc_ratio is not None:
        finite = adc_ratio[members][np.isfinite(adc_ratio[members])]
        adc = float(finite.mean()) if finite.size else None
    return parameters, adc


def _json_number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _region_patterns(case: _PreparedCase, region: str, cluster: np.ndarray, model_labels: list[str], offset: int,
                     relabel: bool) -> tuple[list[dict], dict[str, list[float]]]:
    """The pattern-table rows of one region (named as in step 4 of the module docstring) and their mean curves."""
    curves, rows, mean_curves = case.curves[region], [], {}
    for index, model_label in enumerate(model_labels):
        members = cluster == index
        parameters, adc_ratio = _pattern_summary(curves, case.adc_ratio[region], members)
        habitat = model_label
        if relabel and members.sum() >= MIN_PATTERN_VOXELS:
            habitat = label_pattern(parameters, case.reference_parameters, region, adc_ratio)
        number = offset + index + 1
        rows.append({"region": region, "pattern": number, "habitat": habitat, "model_habitat": model_label,
                     "name": HABITAT_BY_KEY[habitat].name, "voxels": int(members.sum()),
                     "fraction": round(float(members.mean()), 6), "adc_ratio": _json_number(adc_ratio),
                     **{name: _json_number(parameters[name]) for name in PARAMETER_NAMES}})
        if members.any():
            mean_curves[f"{region} {number}"] = curves[members].mean(axis=0).round(6).tolist()
    return rows, mean_curves


def compute_habitats(
    signal: np.ndarray,
    times_s: np.ndarray,
    cel_mask: np.ndarray,
    nel_mask: np.ndarray,
    model: HabitatModel,
    *,
    brain_mask: np.ndarray | None = None,
    nawm_mask: np.ndarray | None = None,
    adc: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    ijk_to_ras: np.ndarray | None = None,
    relabel: bool = True,
    progress: Progress | None = None,
) -> HabitatResult:
    """Habitat and pattern maps, fractions, pattern table and curves of one case (module docstring).

    ``signal``: raw DSC magnitude (T, K, J, I); ``times_s``: (T,) s; masks and ``adc`` on the DSC grid;
    ``spacing_mm``: voxel size per array axis (k, j, i). ValueError (one sentence) on bad input.
    """
    from .autoencoder import encode

    started = time.perf_counter()
    if not isinstance(model, HabitatModel):
        raise ValueError(f"model must be a HabitatModel (habitats.model.load_model), got {type(model).__name__}.")
    _report(progress, 0.0, "Finding the reference tissues")
    case = prepare_case(signal, times_s, cel_mask, nel_mask, brain_mask=brain_mask, nawm_mask=nawm_mask, adc=adc,
                        spacing_mm=spacing_mm, ijk_to_ras=ijk_to_ras)
    _report(progress, 0.6, "Encoding the lesion curves")
    shape = case.masks["CEL"].shape
    latent = encode(np.concatenate([case.curves[region] for region in REGIONS]), model.encoder)
    labels_map, patterns_map = np.zeros(shape, np.uint8), np.zeros(shape, np.int16)
    table, pattern_curves, fractions, warnings = [], {}, {}, list(case.warnings)
    start, offset = 0, 0
    for region in REGIONS:
        count = case.curves[region].shape[0]
        cluster = assign(latent[start:start + count], model.centres[region])
        rows, curves = _region_patterns(case, region, cluster, model.labels[region], offset, relabel)
        voxel_labels = np.zeros(count, np.uint8)
        for index, row in enumerate(rows):
            voxel_labels[cluster == index] = HABITAT_BY_KEY[row["habitat"]].value
        changed = [f"{region} {row['pattern']}" for row in rows if row["habitat"] != row["model_habitat"]]
        if changed:
            warnings.append(f"Named differently from training against this brain's references: {', '.join(changed)}.")
        voxels = np.flatnonzero(case.masks[region].ravel())
        labels_map.ravel()[voxels] = voxel_labels
        patterns_map.ravel()[voxels] = cluster + offset + 1
        fractions[region] = {key: round(float(np.mean(voxel_labels == HABITAT_BY_KEY[key].value)), 6)
                             for key in habitats_of_region(region)}
        table += rows
        pattern_curves.update(curves)
        start, offset = start + count, offset + len(rows)
    reference = {name: curve.round(6).tolist() for name, curve in case.reference_curves.items()}
    times = curve_times().tolist()
    report = {
        "method": "Yun et al. 2023 (AJNR): autoencoder + k-means on white-matter-normalised DSC curves, patterns "
                  "named against this brain's reference tissues",
        "synthetic_model": bool(model.synthetic), "model_notice": model.notice, "relabelled": bool(relabel),
        "regions": {region: {"voxels": int(case.masks[region].sum())} for region in REGIONS},
        "fractions": fractions, "patterns": table, "pattern_curves": pattern_curves,
        "reference_curves": reference,
        "reference_parameters": {name: {k: _json_number(v) for k, v in values.items()}
                                 for name, values in case.reference_parameters.items()},
        "reference_voxels": {name: int(mask.sum()) for name, mask in case.reference_masks.items()},
        "times_s": times, "warnings": warnings, "seconds": round(time.perf_counter() - started, 3),
    }
    _report(progress, 1.0, "Habitats ready")
    return HabitatResult(labels_map, patterns_map, fractions, table, pattern_curves, reference, times, report,
                         warnings)


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def region_k_range(k_range, region: str) -> tuple[int, int]:
    """``k_range`` raised so that a region is searched for at least as many patterns as it has habitats."""
    low, high = checked_k_range(k_range)
    least = len(habitats_of_region(region))
    return max(low, least), max(high, least)


def _mean_reference_parameters(cases: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    names = [name for name in cases[0] if all(name in case for case in cases)]
    return {name: {key: float(np.nanmean([case[name][key] for case in cases])) for key in PARAMETER_NAMES}
            for name in names}


def _collect_curves(cases, rng: np.random.Generator, max_curves: int, progress: Progress | None,
                    should_stop: Callable[[], bool] | None):
    """Each case's curves (a seeded subset of at most ``max_curves`` per region), ADC ratios and reference
    parameters, pooled per region: (curves, adc ratios (NaN without ADC), [reference parameters per case])."""
    from .autoencoder import TrainingCancelled

    total = len(cases) if hasattr(cases, "__len__") else None
    curves = {region: [] for region in REGIONS}
    adc = {region: [] for region in REGIONS}
    references = []
    for number, case in enumerate(cases, start=1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled("Training of the habitat model was cancelled.")
        if not isinstance(case, HabitatTrainingCase):
            raise ValueError(f"Each training case must be a HabitatTrainingCase, got {type(case).__name__}.")
        try:
            prepared = prepare_case(case.signal, case.times_s, case.cel_mask, case.nel_mask,
                                    brain_mask=case.brain_mask, nawm_mask=case.nawm_mask, adc=case.adc,
                                    spacing_mm=case.spacing_mm, ijk_to_ras=case.ijk_to_ras)
        except ValueError as error:
            raise ValueError(f"Training case {number}: {error}") from None
        for region in REGIONS:
            chosen = rng.permutation(prepared.curves[region].shape[0])[:max_curves]
            curves[region].append(prepared.curves[region][chosen])
            ratio = prepared.adc_ratio[region]
            adc[region].append(np.full(chosen.size, np.nan) if ratio is None else ratio[chosen])
        references.append(prepared.reference_parameters)
        _report(progress, 0.3 * (number / total if total else 1.0 - 0.9 ** number), f"Curves of training case {number}")
    if not references:
        raise ValueError("The training cohort has no case.")
    pooled = {region: np.concatenate(curves[region]) for region in REGIONS}
    return pooled, {region: np.concatenate(adc[region]) for region in REGIONS}, references


def _named_clusters(region: str, latent: np.ndarray, curves: np.ndarray, adc: np.ndarray,
                    references: dict[str, dict[str, float]], k_range, seed: int):
    """k-means of one region's latent features and the habitat of each cluster: (centres, labels, metadata)."""
    centres, k, scores = fit_kmeans(latent, region_k_range(k_range, region), seed)
    cluster = assign(latent, centres)
    ratio = adc if np.isfinite(adc).any() else None
    labels, clusters = [], []
    for index in range(k):
        members = cluster == index
        parameters, adc_ratio = _pattern_summary(curves, ratio, members)
        habitat = label_pattern(parameters, references, region, adc_ratio) if members.any() \
            else habitats_of_region(region)[0]
        labels.append(habitat)
        clusters.append({"habitat": habitat, "curves": int(members.sum()), "adc_ratio": _json_number(adc_ratio),
                         **{name: _json_number(parameters[name]) for name in PARAMETER_NAMES}})
    metadata = {"k": k, "silhouettes": {str(key): round(value, 4) for key, value in scores.items()},
                "curves": int(curves.shape[0]), "clusters": clusters}
    return centres, labels, metadata


def train_habitat_model(
    cases: Iterable[HabitatTrainingCase],
    *,
    k_range=DEFAULT_K_RANGE,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    max_curves_per_region: int = DEFAULT_MAX_CURVES_PER_REGION,
    synthetic: bool = False,
    notice: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HabitatModel:
    """One autoencoder and per-region k-means on a cohort's curves, each cluster named (module docstring).

    ``cases`` may be a generator (one case in memory at a time). ``synthetic`` True marks a model trained on
    phantoms (its notice then says so). ``should_stop()`` True ends training with ``autoencoder.TrainingCancelled``.
    A case that cannot be used ends training with a ValueError naming its number.
    """
    from .autoencoder import encode, reconstruct, train_autoencoder

    checked_k_range(k_range)
    rng = np.random.default_rng(seed)
    pooled, pooled_adc, references = _collect_curves(cases, rng, int(max_curves_per_region), progress, should_stop)
    everything = np.concatenate([pooled[region] for region in REGIONS])
    weights = train_autoencoder(everything, epochs=epochs, seed=seed, should_stop=should_stop,
                                progress=lambda fraction, message: _report(progress, 0.3 + 0.6 * fraction, message))
    sample = everything[rng.permutation(everything.shape[0])[:5000]]
    mse = float(np.mean((reconstruct(sample, weights) - sample) ** 2))
    mean_references = _mean_reference_parameters(references)
    centres, labels, regions = {}, {}, {}
    for region in REGIONS:
        _report(progress, 0.9, f"k-means of the {region} patterns")
        centres[region], labels[region], regions[region] = _named_clusters(
            region, encode(pooled[region], weights), pooled[region], pooled_adc[region], mean_references, k_range,
            seed)
    training = {"cases": len(references), "epochs": int(epochs), "seed": int(seed),
                "k_range": list(checked_k_range(k_range)), "max_curves_per_region": int(max_curves_per_region),
                "reconstruction_mse": round(mse, 7),
                "reference_parameters": {name: {key: _json_number(value) for key, value in values.items()}
                                         for name, values in mean_references.items()},
                "regions": regions}
    text = notice if notice is not None else (SYNTHETIC_NOTICE if synthetic else "")
    _report(progress, 1.0, "Habitat model trained")
    return HabitatModel(weights, centres, labels, curve_settings(), training, bool(synthetic), text)
