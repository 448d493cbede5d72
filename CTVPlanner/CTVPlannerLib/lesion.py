"""The lesion's parts, as BraTS 2024 labels: their names, colours and terminology, and the rules that recognise
a segment's part from its name. Used by every module and the report."""

from __future__ import annotations

from CTVPlannerLib import terminology

LESION_SEGMENTS = {
    1: ("Necrosis", (0.85, 0.80, 0.30)),
    2: ("Non-enhancing lesion (SNFH)", (0.35, 0.75, 0.35)),
    3: ("Enhancing tumour", (0.90, 0.20, 0.20)),
    4: ("Resection cavity", (0.30, 0.50, 0.90)),
}
# Terminology entries of the segments above, by label value (declared in CTVPlannerLib.terminology).
LESION_TERMINOLOGY = {value: terminology.lesion_entry(value) for value in LESION_SEGMENTS}


# Segment names (lower case, by substring) -> BraTS 2024 label value. The first match wins, so the more
# specific phrases come first ("non-enhancing lesion" before "enhancing").
_SEGMENT_NAME_RULES = (
    (("necro", "netc", "ncr", "non-enhancing tumor core", "non-enhancing tumour core"), 1),
    (("snfh", "non-enhancing lesion", "oedema", "edema", "flair", "t2"), 2),
    (("cavity", "resection", "rc"), 4),
    (("enhancing", "et"), 3),
)


def brats_value_for_segment(name: str) -> int:
    lowered = name.strip().lower()
    for keys, value in _SEGMENT_NAME_RULES:
        if any(lowered == key or (len(key) > 3 and key in lowered) for key in keys):
            return value
    raise ValueError(f"The segment '{name}' is not a known lesion part; name segments Necrosis, "
                     "Non-enhancing lesion (SNFH), Enhancing tumour or Resection cavity.")
