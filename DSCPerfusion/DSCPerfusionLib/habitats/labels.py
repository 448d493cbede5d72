"""The perfusion-habitat vocabulary: which tissue patterns exist, their display names, colours and lesion regions.

Declared once here and imported by the phantom, the command line, the report, the scene and the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The lesion regions habitats are found in: contrast-enhancing (CEL) and non-enhancing FLAIR lesion (NEL).
REGIONS = ("CEL", "NEL")


@dataclass(frozen=True)
class Habitat:
    key: str  # used in JSON, CSV columns and file names
    value: int  # label value in the habitat label maps (0 = no habitat)
    name: str  # display name (segment names, report, tables)
    colour: tuple[float, float, float]  # RGB 0..1
    regions: tuple[str, ...]  # lesion regions the pattern may be found in


HABITATS = (
    Habitat("high_angiogenic", 1, "High angiogenic tumour", (0.89, 0.10, 0.11), ("CEL", "NEL")),
    Habitat("low_angiogenic", 2, "Low angiogenic / cellular tumour", (1.00, 0.50, 0.00), ("CEL", "NEL")),
    Habitat("perinecrotic", 3, "Perinecrotic", (0.60, 0.31, 0.64), ("CEL",)),
    Habitat("infiltrated_oedema", 4, "Infiltrated oedema", (0.30, 0.69, 0.29), ("NEL",)),
    Habitat("vasogenic_oedema", 5, "Vasogenic oedema", (0.22, 0.49, 0.72), ("NEL",)),
)
HABITAT_BY_KEY = {habitat.key: habitat for habitat in HABITATS}
# The reference tissues each pattern is compared with (Yun et al. 2023), key -> display name.
REFERENCE_TISSUES = {"artery": "Artery", "grey_matter": "Grey matter", "white_matter": "White matter", "csf": "CSF"}
HABITAT_BY_VALUE = {habitat.value: habitat for habitat in HABITATS}


# --- labelling rules ---------------------------------------------------------------------------------------

LABEL_RULES_DOC = """
How a perfusion pattern is named (Yun et al. 2023: each pattern compared with the artery, grey matter (GM),
white matter (WM) and CSF of the same brain). b, d, v, r are the pattern's baseline, drop, drop speed and
recovery (``curves.curve_parameters`` of its mean normalised curve); GM.d is grey matter's drop, and so on.
The rows are tried in order and the first that holds names the pattern:

| # | habitat            | region   | rule                                                                      |
|---|--------------------|----------|---------------------------------------------------------------------------|
| 1 | high_angiogenic    | CEL, NEL | d >= GM.d and v >= GM.v (as much blood, as fast, as cortex at least)      |
| 2 | perinecrotic       | CEL      | b > GM.b and r < WM.r (bright baseline, poorer recovery than white matter)|
| 3 | low_angiogenic     | CEL      | any other CEL pattern (enhancing, yet less blood than cortex)             |
| 4 | low_angiogenic     | NEL      | b <= GM.b, and ADC ratio < ADC_CELLULAR_RATIO when ADC is given (no        |
|   |                    |          | oedema-bright baseline, dense cells)                                      |
| 5 | vasogenic_oedema   | NEL      | d < WM.d or b >= (GM.b + CSF.b) / 2 (least blood, or the brightest, most  |
|   |                    |          | watery baseline: nearer CSF than cortex)                                   |
| 6 | infiltrated_oedema | NEL      | any other NEL pattern: baseline between WM's and CSF's, drop between WM's |
|   |                    |          | and GM's                                                                  |

A parameter that is not finite (no drop: drop speed and recovery are NaN) makes its comparison false. The ADC
ratio is the pattern's mean ADC over the mean ADC of the white-matter reference; 1.4 separates dense tumour
(about 1.0-1.3 x NAWM) from oedema (about 1.5-2.5 x NAWM). The artery's curve is shown beside the patterns
but no rule needs it (a series may have no arterial voxel a machine can be sure of).
"""
__doc__ = (__doc__ or "") + LABEL_RULES_DOC

ADC_CELLULAR_RATIO = 1.4
PARAMETER_KEYS = ("baseline", "drop", "drop_speed", "recovery")
RULE_REFERENCES = tuple(name for name in REFERENCE_TISSUES if name != "artery")  # the rules need no artery


def habitats_of_region(region: str) -> tuple[str, ...]:
    """Keys of the habitats a region may hold, in HABITATS order."""
    if region not in REGIONS:
        raise ValueError(f"The lesion region must be one of {', '.join(REGIONS)}, got {region!r}.")
    return tuple(habitat.key for habitat in HABITATS if region in habitat.regions)


def _checked_references(references: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    checked = {}
    for name in RULE_REFERENCES:
        values = references.get(name) if isinstance(references, dict) else None
        if not isinstance(values, dict) or any(key not in values for key in PARAMETER_KEYS):
            raise ValueError(f"The reference parameters lack the {name.replace('_', ' ')} "
                             f"({', '.join(PARAMETER_KEYS)}).")
        checked[name] = {key: float(values[key]) for key in PARAMETER_KEYS}
        if not all(math.isfinite(checked[name][key]) for key in ("baseline", "drop")):
            raise ValueError(f"The {name.replace('_', ' ')} reference has no finite baseline and drop.")
    return checked


def label_pattern(
    parameters: dict[str, float],
    references: dict[str, dict[str, float]],
    region: str,
    adc_ratio: float | None = None,
) -> str:
    """The habitat key of a pattern from its curve parameters and the references' (rules: ``LABEL_RULES_DOC``)."""
    habitats_of_region(region)
    if not isinstance(parameters, dict) or any(key not in parameters for key in PARAMETER_KEYS):
        raise ValueError(f"The pattern's parameters must give {', '.join(PARAMETER_KEYS)}.")
    b, d, v, r = (_number(parameters[key]) for key in PARAMETER_KEYS)
    ref = _checked_references(references)
    grey, white, csf = ref["grey_matter"], ref["white_matter"], ref["csf"]
    if d >= grey["drop"] and v >= grey["drop_speed"]:
        return "high_angiogenic"
    if region == "CEL":
        return "perinecrotic" if b > grey["baseline"] and r < white["recovery"] else "low_angiogenic"
    adc = None if adc_ratio is None else _number(adc_ratio)
    cellular = adc is None or not math.isfinite(adc) or adc < ADC_CELLULAR_RATIO
    if b <= grey["baseline"] and cellular:
        return "low_angiogenic"
    if d < white["drop"] or b >= (grey["baseline"] + csf["baseline"]) / 2.0:
        return "vasogenic_oedema"
    return "infiltrated_oedema"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"A curve parameter must be a number, got {value!r}.") from None
