"""The lesion's parts, as BraTS 2024 labels: their names, colours and terminology, and the rules that recognise
a segment's part from its name. Used by every module and the report."""

from __future__ import annotations

import re

from CTVPlannerLib import terminology

LESION_SEGMENTS = {
    1: ("Necrosis", (0.85, 0.80, 0.30)),
    2: ("Non-enhancing lesion (SNFH)", (0.35, 0.75, 0.35)),
    3: ("Enhancing tumour", (0.90, 0.20, 0.20)),
    4: ("Resection cavity", (0.30, 0.50, 0.90)),
}
# Terminology entries of the segments above, by label value (declared in CTVPlannerLib.terminology).
LESION_TERMINOLOGY = {value: terminology.lesion_entry(value) for value in LESION_SEGMENTS}


# The one rule that tells a segment's lesion part from its name, used by the CTV Planner module and by the Glioma
# Progression module (mrml.brats_labels_from_segmentation). Names are compared word by word, lower case (any
# non-alphanumeric character separates words; "non-enhancing", "non enhancing" and "nonenhancing" are one
# word). Classes are tried in this order, so a name with words of two classes gets the first: "non-enhancing
# tumour core" (BraTS label 1) has "core" before it could count as non-enhancing (2).
SEGMENT_NAME_WORDS = (
    (4, ("cavity", "resection", "rc")),
    (1, ("necrosis", "necrotic", "necrose", "necro", "necr", "ncr", "netc", "net", "core")),
    (2, ("snfh", "nonenhancing", "oedema", "edema", "ed", "nel", "flair", "t2")),
    (3, ("enhancing", "enhancement", "enhanced", "cel", "et", "active")),
)
# "1" .. "4", or "label 1", "label_1", "label-1", "label1": a BraTS value given directly.
_LABEL_NUMBER = re.compile(r"(?:label[ _-]?)?([1-4])")


def _name_words(name: str) -> set[str]:
    lowered = re.sub(r"\bnon[\s_-]*enhancing\b", "nonenhancing", name.strip().lower())
    return set(re.split(r"[^a-z0-9]+", lowered)) - {""}


def brats_class(name: str) -> int | None:
    """The BraTS 2024 label (1 necrosis, 2 SNFH, 3 enhancing, 4 cavity) a segment name stands for, or None."""
    number = _LABEL_NUMBER.fullmatch(name.strip().lower())
    if number:
        return int(number.group(1))
    words = _name_words(name)
    for value, keywords in SEGMENT_NAME_WORDS:
        if words.intersection(keywords):
            return value
    return None


def brats_value_for_segment(name: str) -> int:
    """``brats_class`` for a segment that must be a lesion part: ValueError (one sentence) when it is none."""
    value = brats_class(name)
    if value is None:
        raise ValueError(f"The segment '{name}' is not a known lesion part; name segments Necrosis, "
                         "Non-enhancing lesion (SNFH), Enhancing tumour or Resection cavity (or 1-4).")
    return value
