"""The one segment-name rule (CTVPlannerLib.lesion.brats_class), which both modules use to read a lesion."""

import pytest

from CTVPlannerLib.lesion import LESION_SEGMENTS, brats_class, brats_value_for_segment

NAMES = [
    # necrosis / non-enhancing tumour core: BraTS 1
    ("Necrosis", 1), ("Necrotic core", 1), ("necrotic_core", 1), ("NCR", 1), ("NETC", 1), ("NET", 1),
    ("Non-enhancing tumor core", 1), ("non enhancing tumour core", 1), ("Tumour core", 1),
    # surrounding non-enhancing FLAIR hyperintensity: BraTS 2
    ("SNFH", 2), ("Oedema", 2), ("Peritumoral edema", 2), ("ED", 2), ("NEL", 2), ("FLAIR", 2), ("T2-FLAIR", 2),
    ("Non-enhancing lesion", 2), ("Non enhancing lesion", 2), ("nonenhancing", 2), ("Non-enhancing lesion (SNFH)", 2),
    # enhancing tumour: BraTS 3
    ("Enhancing tumour", 3), ("GD-enhancing tumor", 3), ("ET", 3), ("CEL", 3), ("Enhancement", 3), ("active", 3),
    # resection cavity: BraTS 4
    ("Resection cavity", 4), ("cavity", 4), ("RC", 4), ("resection", 4),
    # the value itself
    ("1", 1), ("2", 2), ("3", 3), ("4", 4), ("label_1", 1), ("Label 2", 2), ("label-3", 3), ("label4", 4),
    # not a lesion part
    ("Brain", None), ("Segment_1", None), ("5", None), ("label_0", None), ("", None), ("Tumour", None),
    ("Retention", None), ("Recurrence", None),
]


@pytest.mark.parametrize("name, value", NAMES)
def test_segment_names_map_to_one_brats_value(name, value):
    assert brats_class(name) == value
    if value is None:
        with pytest.raises(ValueError, match="not a known lesion part"):
            brats_value_for_segment(name)
    else:
        assert brats_value_for_segment(name) == value


def test_the_extensions_own_segment_names_read_back_as_their_values():
    for value, (name, _colour) in LESION_SEGMENTS.items():
        assert brats_class(name) == value
