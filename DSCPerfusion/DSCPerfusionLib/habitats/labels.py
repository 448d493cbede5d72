"""The perfusion-habitat vocabulary: which tissue patterns exist, their display names, colours and lesion regions.

Declared once here and imported by the phantom, the command line, the report, the scene and the module.
"""

from __future__ import annotations

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
HABITAT_BY_VALUE = {habitat.value: habitat for habitat in HABITATS}
