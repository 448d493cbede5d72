"""Target-volume schemes for glioblastoma: RTOG/NRG, EORTC, ESTRO-EANO 2023, AI CTV, risk-adapted boost, PTV.

Input: lesion labels in the BraTS 2024 convention (1 necrosis, 2 SNFH = non-enhancing FLAIR hyperintensity,
3 enhancing tumour, 4 resection cavity) on a voxel grid ``[k, j, i]`` with its IJK-to-RAS matrix, a brain mask,
and optionally a predicted-progression mask, organs at risk and barriers.

Definitions (margins in mm, defaults in ``Margins``):

- GTV core = enhancing tumour (3) U resection cavity (4) U necrosis (1). Necrosis is the core the enhancing rim
  encloses, part of the gross tumour in every guideline; it changes a CTV only where the core is thicker than
  the margin.
- RTOG/NRG: CTV46 = (T2/FLAIR lesion = labels 1-4) + 20 mm; CTV60 = GTV core + 20 mm.
- EORTC (seed 003): GTV core + 15 mm; the oedema is not included.
- ESTRO-EANO 2023: GTV core + 15 mm, barrier-aware: with ``geodesic`` the distance is measured through brain
  tissue around the barriers (fast marching); without it, the Euclidean margin is cut at the barriers (what
  lies behind a closed barrier is removed, see ``margins.grow_reachable_mm``).
- AI CTV (seed 003): current lesion (labels 1-4) U predicted progression, + a small margin.
- Risk-adapted boost: predicted progression + a small margin, kept inside a standard CTV (RTOG CTV46 by
  default: it holds the whole T2/FLAIR lesion, where progression is predicted) for dose escalation.
- PTV (optional) = each target + N mm, Euclidean (set-up uncertainty is geometric, not anatomical).

Every target is clipped to the brain (a PTV too, unless ``Margins.ptv_clipped_to_brain`` is off), has the
organs at risk (grown by ``Margins.oar_mm``) removed, and always keeps its own seed inside the brain: a CTV
contains its GTV (ICRU 50/62). With ``geodesic`` every CTV is barrier-aware; without it, only ESTRO-EANO is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import margins as mg
from .barriers import Barriers, fallback_barriers, given_barriers, no_barriers
from .grid import check_3d, check_grid, voxel_volume_ml

Progress = Callable[[float, str], None]

NECROSIS, SNFH, ENHANCING, CAVITY = 1, 2, 3, 4
BRATS_LABELS = {NECROSIS: "necrosis", SNFH: "SNFH (non-enhancing FLAIR hyperintensity)",
                ENHANCING: "enhancing tumour", CAVITY: "resection cavity"}
SCHEMES = ("rtog", "eortc", "estro", "ai", "boost")
NEEDS_PROGRESSION = ("ai", "boost")
BOOST_CONTAINERS = ("rtog46", "rtog60", "eortc", "estro")
# Below this fraction of the lesion inside the brain mask, the two are taken to be misaligned.
MIN_LESION_FRACTION_IN_BRAIN = 0.5


# Display colour (RGB 0-1) of each target, by its key: the module's segments, the report and the scene agree.
TARGET_COLOURS = {
    "rtog46": (0.98, 0.85, 0.35), "rtog60": (0.95, 0.55, 0.15), "eortc": (0.30, 0.60, 0.95),
    "estro": (0.25, 0.80, 0.45), "ai": (0.85, 0.35, 0.85), "boost": (0.90, 0.15, 0.20),
}
MARGIN_RANGE_MM = (0.0, 100.0)  # every margin, in mm; larger ones are implausible


@dataclass(frozen=True)
class Margins:
    """Margins in mm. ``ptv_mm`` 0 means no PTV; ``oar_mm`` is the safety margin around organs at risk."""

    rtog_mm: float = 20.0
    eortc_mm: float = 15.0
    estro_mm: float = 15.0
    ai_mm: float = 5.0
    boost_mm: float = 5.0
    ptv_mm: float = 0.0
    oar_mm: float = 0.0
    boost_within: str = "rtog46"
    ptv_clipped_to_brain: bool = True

    def validated(self) -> "Margins":
        for name, value in asdict(self).items():
            if name.endswith("_mm") and (not isinstance(value, (int, float)) or not np.isfinite(value)
                                         or value < MARGIN_RANGE_MM[0]):
                raise ValueError(f"The margin {name} must be zero or a positive number of mm (margins grow "
                                 f"the target), got {value}.")
            if name.endswith("_mm") and value > MARGIN_RANGE_MM[1]:
                raise ValueError(f"The margin {name} = {value} mm is implausibly large (over "
                                 f"{MARGIN_RANGE_MM[1]:g} mm).")
        if self.boost_within not in BOOST_CONTAINERS:
            raise ValueError(f"boost_within must be one of {', '.join(BOOST_CONTAINERS)}, got {self.boost_within!r}.")
        return self

    def with_ctv_margin(self, margin_mm: float | None) -> "Margins":
        """The same margins with every scheme's GTV-to-CTV margin set to ``margin_mm`` (None: unchanged)."""
        if margin_mm is None:
            return self
        return Margins(margin_mm, margin_mm, margin_mm, margin_mm, margin_mm, self.ptv_mm, self.oar_mm,
                       self.boost_within, self.ptv_clipped_to_brain)


@dataclass
class PlanningInputs:
    """Everything on one voxel grid ``[k, j, i]`` with its IJK-to-RAS matrix (mm)."""

    lesion_labels: np.ndarray  # BraTS labels 0-4
    brain: np.ndarray  # bool
    ijk_to_ras: np.ndarray
    progression: np.ndarray | None = None  # bool: predicted progression
    oars: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool
    barriers: np.ndarray | None = None  # bool: impassable; None = automatic fallback
    image: np.ndarray | None = None  # T1-weighted or FLAIR, for the fallback's ventricles


@dataclass
class Target:
    key: str  # file-name part: rtog46, rtog60, eortc, estro, ai, boost, ptv_<key>
    scheme: str
    name: str  # segment / structure name
    kind: str  # "CTV", "PTV" or "BOOST" (a CTV sub-volume for dose escalation)
    mask: np.ndarray
    description: str

    def volume_ml(self, ijk_to_ras: np.ndarray) -> float:
        return float(self.mask.sum()) * voxel_volume_ml(ijk_to_ras)


@dataclass
class Plan:
    targets: list[Target]
    barriers: Barriers
    notes: list[str]


def check_lesion_labels(labels: np.ndarray, what: str = "The lesion") -> np.ndarray:
    """The labels as uint8 after checking they are whole BraTS values 0-4 and not all zero."""
    labels = np.asarray(labels)
    check_3d(labels.ndim, what)
    values = np.unique(labels)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ValueError(f"{what} holds non-integer values; it must be a label image "
                         "(1 necrosis, 2 SNFH, 3 enhancing, 4 cavity).")
    unknown = sorted(int(v) for v in values if v not in (0, *BRATS_LABELS))
    if unknown:
        raise ValueError(f"{what} has label values {unknown} that are not BraTS labels "
                         "(1 necrosis, 2 SNFH, 3 enhancing, 4 resection cavity).")
    if not (labels != 0).any():
        raise ValueError(f"{what} is empty (no labelled voxel).")
    return labels.astype(np.uint8)


def check_lesion_inside_brain(lesion: np.ndarray, brain: np.ndarray, lesion_name: str = "the lesion",
                              brain_name: str = "the brain mask") -> None:
    """At least MIN_LESION_FRACTION_IN_BRAIN of a (non-empty) lesion inside the brain, else one sentence. A glioma
    lies in the brain; a lesion mostly outside it belongs to other images (another patient or session, a flipped
    axis), and every answer built on it (nCBV in the lesion, progression in the NEL, CTVs clipped to the brain)
    would be meaningless. Half, not all: a contour may reach past the brain's outline, a cavity open to the
    surface, an automatic brain mask be a little tight."""
    inside = float((lesion & brain).sum()) / float(lesion.sum())
    if inside < MIN_LESION_FRACTION_IN_BRAIN:
        shown = int(100 * inside + 1e-9)  # rounded down: 49.6% is refused, so it must not read "50%"
        raise ValueError(f"Only {shown}% of {lesion_name} lies inside {brain_name}; the lesion is outside the brain "
                         "or the two are not aligned.")


def _check_inputs(inputs: PlanningInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = check_lesion_labels(inputs.lesion_labels)
    spacing = check_grid(inputs.ijk_to_ras, "The lesion")
    brain = np.asarray(inputs.brain) != 0
    if brain.shape != labels.shape:
        raise ValueError(f"The brain mask has shape {brain.shape}, the lesion {labels.shape}: resample one onto "
                         "the other's grid first.")
    if not brain.any():
        raise ValueError("The brain mask is empty.")
    check_lesion_inside_brain(labels > 0, brain)
    for name, other in (("predicted-progression mask", inputs.progression), ("barrier mask", inputs.barriers),
                        ("image", inputs.image), *((f"organ-at-risk mask '{n}'", m) for n, m in inputs.oars.items())):
        if other is not None and np.shape(other) != labels.shape:
            raise ValueError(f"The {name} has shape {np.shape(other)}, the lesion {labels.shape}.")
    return labels, brain, spacing


def gtv_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The seeds of the schemes, from BraTS labels."""
    return {
        "lesion": labels > 0,
        "core": np.isin(labels, (NECROSIS, ENHANCING, CAVITY)),
    }


class _Grower:
    """Grows seeds by margins, one distance map per seed (reused by every margin and scheme that share it)."""

    def __init__(self, spacing: np.ndarray, brain: np.ndarray, passable: np.ndarray):
        self.spacing, self.brain, self.passable = spacing, brain, passable
        self._maps: dict[tuple[str, bool], mg.DistanceMap] = {}

    def grow(self, key: str, seed: np.ndarray, margin_mm: float, limit_mm: float, mode: str) -> np.ndarray:
        """mode: "euclidean", "geodesic" or "reachable" (Euclidean cut at barriers)."""
        geodesic = mode == "geodesic"
        cached = self._maps.get((key, geodesic))
        if cached is None or cached.limit_mm < margin_mm:
            if geodesic:
                cached = mg.geodesic_distance_map(seed, self.spacing, max(limit_mm, margin_mm), self.passable)
            else:
                cached = mg.euclidean_distance_map(seed, self.spacing, max(limit_mm, margin_mm))
            self._maps[(key, geodesic)] = cached
        grown = cached.within(margin_mm)
        if mode == "reachable":
            grown = mg.connected_to(seed, grown & (self.passable | seed), cached.box)
        return (grown & self.brain) | (seed & self.brain)


def _barriers(inputs: PlanningInputs, brain: np.ndarray, lesion: np.ndarray, needed: bool) -> Barriers:
    if inputs.barriers is not None:
        return given_barriers(inputs.barriers, brain)
    if not needed:
        return no_barriers(brain)
    image = None if inputs.image is None else np.asarray(inputs.image)
    return fallback_barriers(brain, inputs.ijk_to_ras, image, lesion)


def _oar_mask(inputs: PlanningInputs, spacing: np.ndarray, margin_mm: float) -> np.ndarray | None:
    if not inputs.oars:
        return None
    union = np.zeros(inputs.brain.shape, bool)
    for mask in inputs.oars.values():
        union |= np.asarray(mask, dtype=bool)
    return mg.grow_mm(union, spacing, margin_mm) if margin_mm > 0 else union


def plan_targets(inputs: PlanningInputs, schemes=SCHEMES, margins: Margins | None = None, geodesic: bool = False,
                 progress: Progress | None = None) -> Plan:
    """Build the targets of the chosen schemes (default margins: ``Margins()``). Raises ValueError on bad input
    (one sentence naming it)."""
    report = progress or (lambda fraction, message: None)
    schemes = _check_schemes(schemes, inputs.progression is not None)
    margins = (margins or Margins()).validated()
    labels, brain, spacing = _check_inputs(inputs)
    seeds = gtv_masks(labels)
    notes: list[str] = []
    if inputs.progression is not None:
        seeds["progression"] = np.asarray(inputs.progression, dtype=bool) & brain
        seeds["lesion+progression"] = seeds["lesion"] | seeds["progression"]
        if not seeds["progression"].any():
            notes.append("The predicted progression is empty: the boost is empty and the AI CTV is the lesion "
                         "plus its margin.")
    if not seeds["core"].any() and any(s in schemes for s in ("rtog", "eortc", "estro")):
        notes.append("The lesion has no enhancing tumour, necrosis or cavity: CTV60, EORTC and ESTRO-EANO CTVs are "
                     "empty.")
    report(0.05, "Barriers")
    barriers = _barriers(inputs, brain, seeds["lesion"], geodesic or "estro" in schemes)
    passable = brain & ~barriers.mask
    grower = _Grower(spacing, brain, passable)
    mode = "geodesic" if geodesic else "euclidean"
    limit = max(margins.rtog_mm, margins.eortc_mm, margins.estro_mm)
    oars = _oar_mask(inputs, spacing, margins.oar_mm)
    targets: list[Target] = []
    builders = {"rtog": _rtog, "eortc": _eortc, "estro": _estro, "ai": _ai, "boost": _boost}
    for index, scheme in enumerate(schemes):
        report(0.1 + 0.8 * index / len(schemes), f"Scheme {scheme}")
        targets.extend(builders[scheme](grower, seeds, margins, mode, limit, targets))
    for target in targets:
        _finish(target, seeds, oars, margins.oar_mm)
        if geodesic and target.name.endswith(")"):
            target.name = target.name[:-1] + ", geodesic)"  # Euclidean and geodesic proposals can coexist
    if margins.ptv_mm > 0:
        report(0.92, "PTVs")
        targets.extend(_ptvs(targets, spacing, brain, oars, margins))
    report(1.0, "Targets ready")
    return Plan(targets, barriers, notes)


def _check_schemes(schemes, has_progression: bool) -> tuple[str, ...]:
    if isinstance(schemes, str):
        schemes = (schemes,)
    schemes = tuple(dict.fromkeys(s.lower() for s in schemes))
    if not schemes:
        raise ValueError("Choose at least one scheme.")
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"Unknown scheme {unknown[0]!r}; the schemes are {', '.join(SCHEMES)}.")
    missing = [s for s in schemes if s in NEEDS_PROGRESSION and not has_progression]
    if missing:
        raise ValueError(f"The {' and '.join(missing)} scheme{'s need' if len(missing) > 1 else ' needs'} a "
                         "predicted-progression mask.")
    # The boost is kept inside a standard CTV, which is built first.
    return tuple(sorted(schemes, key=SCHEMES.index))


def _how(mode: str, barrier_aware: bool = False) -> str:
    if mode == "geodesic":
        return "distance measured through brain tissue around the barriers (fast marching)"
    if barrier_aware:
        return "Euclidean distance, cut where a barrier separates tissue from the GTV"
    return "Euclidean distance"


def _rtog(grower, seeds, margins, mode, limit, _done) -> list[Target]:
    m = margins.rtog_mm
    return [
        Target("rtog46", "rtog", f"CTV46 RTOG-NRG ({m:g} mm)", "CTV",
               grower.grow("lesion", seeds["lesion"], m, limit, mode),
               f"RTOG/NRG CTV46: T2/FLAIR lesion (labels 1-4) + {m:g} mm ({_how(mode)}), clipped to the brain."),
        Target("rtog60", "rtog", f"CTV60 RTOG-NRG ({m:g} mm)", "CTV",
               grower.grow("core", seeds["core"], m, limit, mode),
               f"RTOG/NRG CTV60: enhancing tumour + cavity (+ necrosis) + {m:g} mm ({_how(mode)}), clipped to "
               "the brain."),
    ]


def _eortc(grower, seeds, margins, mode, limit, _done) -> list[Target]:
    m = margins.eortc_mm
    return [Target("eortc", "eortc", f"CTV EORTC ({m:g} mm)", "CTV",
                   grower.grow("core", seeds["core"], m, limit, mode),
                   f"EORTC: residual enhancing tumour + cavity (+ necrosis) + {m:g} mm ({_how(mode)}), oedema not "
                   "included, clipped to the brain.")]


def _estro(grower, seeds, margins, mode, limit, _done) -> list[Target]:
    m = margins.estro_mm
    estro_mode = "geodesic" if mode == "geodesic" else "reachable"
    return [Target("estro", "estro", f"CTV ESTRO-EANO ({m:g} mm)", "CTV",
                   grower.grow("core", seeds["core"], m, limit, estro_mode),
                   f"ESTRO-EANO 2023: GTV = cavity + residual enhancing tumour (+ necrosis), + {m:g} mm "
                   f"({_how(estro_mode, True)}), clipped to the brain.")]


def _ai(grower, seeds, margins, mode, limit, _done) -> list[Target]:
    m = margins.ai_mm
    return [Target("ai", "ai", f"CTV AI ({m:g} mm)", "CTV",
                   grower.grow("lesion+progression", seeds["lesion+progression"], m, max(limit, m), mode),
                   f"AI CTV (seed 003): current lesion (labels 1-4) + predicted progression, + {m:g} mm "
                   f"({_how(mode)}), clipped to the brain.")]


def _boost(grower, seeds, margins, mode, limit, done: list[Target]) -> list[Target]:
    m = margins.boost_mm
    container_key = margins.boost_within
    container = next((t.mask for t in done if t.key == container_key), None)
    if container is None:
        builder = {"rtog46": _rtog, "rtog60": _rtog, "eortc": _eortc, "estro": _estro}[container_key]
        container = next(t.mask for t in builder(grower, seeds, margins, mode, limit, done) if t.key == container_key)
    grown = grower.grow("progression", seeds["progression"], m, max(limit, m), mode) & container
    return [Target("boost", "boost", f"Boost predicted progression ({m:g} mm)", "BOOST", grown,
                   f"Risk-adapted boost: predicted progression + {m:g} mm ({_how(mode)}), inside the "
                   f"{container_key} CTV, clipped to the brain; for dose escalation.")]


def _seed_of(target: Target, seeds: dict[str, np.ndarray]) -> np.ndarray:
    return {"rtog46": seeds["lesion"], "ai": seeds.get("lesion+progression"), "boost": seeds.get("progression")
            }.get(target.key, seeds["core"])


def _finish(target: Target, seeds, oars: np.ndarray | None, oar_mm: float) -> None:
    """Remove the organs at risk (with their margin), but never the target's own GTV."""
    if oars is not None:
        seed = _seed_of(target, seeds)
        if target.key == "boost":
            seed = seed & target.mask  # the boost's seed is cut to its container too
        target.mask = (target.mask & ~oars) | (seed & target.mask)
        target.description += f" Organs at risk (+ {oar_mm:g} mm) removed outside the GTV."


def _ptvs(targets: list[Target], spacing, brain, oars, margins: Margins) -> list[Target]:
    result = []
    for target in targets:
        ptv = mg.grow_mm(target.mask, spacing, margins.ptv_mm)
        clipped = "clipped to the brain" if margins.ptv_clipped_to_brain else "not clipped to the brain"
        if margins.ptv_clipped_to_brain:
            ptv &= brain
        if oars is not None:
            ptv = (ptv & ~oars) | target.mask
        name = target.name.replace("CTV", "PTV", 1) if target.name.startswith("CTV") else f"PTV {target.name}"
        result.append(Target(f"ptv_{target.key}", target.scheme, name, "PTV", ptv,
                             f"PTV = {target.key} + {margins.ptv_mm:g} mm (Euclidean), {clipped}."))
    return result
