"""Each choice list and colour table is declared once, where it belongs, and imported everywhere else: a stray
copy of the leakage methods, the CTV scheme names, the target colours, or the lesion segments (names, colours,
segment-name words) in any other source file fails here."""

import re
from pathlib import Path

import pytest

from CTVPlannerLib.lesion import LESION_SEGMENTS, SEGMENT_NAME_WORDS
from CTVPlannerLib.schemes import SCHEMES, TARGET_COLOURS
from DSCPerfusionLib.deconvolution import METHODS
from DSCPerfusionLib.leakage import LEAKAGE_METHODS
from DSCPerfusionLib.signal import DISCRETISATIONS

REPO = Path(__file__).resolve().parent.parent
SOURCES = [path for folder in ("DSCPerfusion", "GliomaProgression", "CTVPlanner")
           for path in (REPO / folder).rglob("*.py")]
LESION_MODULE = REPO / "CTVPlanner" / "CTVPlannerLib" / "lesion.py"
SCHEMES_MODULE = REPO / "CTVPlanner" / "CTVPlannerLib" / "schemes.py"


def _strays(owner: Path, holds_a_copy) -> list[str]:
    return [str(path.relative_to(REPO)) for path in SOURCES
            if path != owner and holds_a_copy(path.read_text(encoding="utf-8"))]


def _literal_tuples(text):
    """The string tuples and lists written as literals, each as a set of its strings."""
    for match in re.finditer(r"[(\[]\s*((?:\"[^\"]+\"\s*,\s*)+\"[^\"]+\"\s*,?)\s*[)\]]", text):
        yield set(re.findall(r"\"([^\"]+)\"", match.group(1)))


def test_sources_were_found():
    assert len(SOURCES) > 30


def test_the_leakage_methods_are_written_only_in_the_leakage_module():
    owner = REPO / "DSCPerfusion" / "DSCPerfusionLib" / "leakage.py"
    strays = [str(path.relative_to(REPO)) for path in SOURCES if path != owner
              and any(set(LEAKAGE_METHODS) <= words for words in _literal_tuples(path.read_text(encoding="utf-8")))]
    assert strays == []


def test_the_target_colours_are_written_only_in_the_schemes_module():
    owner = REPO / "CTVPlanner" / "CTVPlannerLib" / "schemes.py"
    rgb = re.escape(str(TARGET_COLOURS["rtog46"]))
    strays = [str(path.relative_to(REPO)) for path in SOURCES
              if path != owner and re.search(rgb, path.read_text(encoding="utf-8"))]
    assert strays == []


def test_the_scheme_names_are_written_only_in_the_schemes_module():
    # As a literal list, or spelled out in prose such as a help text ("rtog, eortc, estro, ai, boost").
    prose = re.compile(r"\W+".join(re.escape(name) for name in SCHEMES))
    assert _strays(SCHEMES_MODULE, lambda text: prose.search(text) is not None
                   or any(set(SCHEMES) <= words for words in _literal_tuples(text))) == []


def test_the_lesion_segments_are_written_only_in_the_lesion_module():
    # A segment name paired with a colour is a copy of the table; so is any of the table's colours.
    pairs = [re.compile(re.escape(f'"{name}"') + r"\s*,\s*\(") for name, _ in LESION_SEGMENTS.values()]
    colours = [re.escape(str(colour)) for _, colour in LESION_SEGMENTS.values()]
    assert _strays(LESION_MODULE, lambda text: any(p.search(text) for p in pairs)
                   or any(re.search(c, text) for c in colours)) == []


def test_the_segment_name_words_are_written_only_in_the_lesion_module():
    # Three or more words of one class in one literal list is a second segment-name rule.
    def holds_a_rule(text):
        return any(len(words & set(keywords)) >= 3 for words in _literal_tuples(text)
                   for _, keywords in SEGMENT_NAME_WORDS)

    assert _strays(LESION_MODULE, holds_a_rule) == []


@pytest.mark.parametrize("stray, check", [
    ('help="rtog, eortc, estro, ai, boost or all"', "scheme"),
    ('SEGMENTS = {1: ("Necrosis", (1, 1, 0))}', "lesion"),
    ('CLASSES = ((2, ("snfh", "oedema", "edema")),)', "words"),
])
def test_the_checks_see_a_stray_copy(tmp_path, monkeypatch, stray, check):
    stray_file = tmp_path / "stray.py"
    stray_file.write_text(stray + "\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "SOURCES", [stray_file])
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    test = {"scheme": test_the_scheme_names_are_written_only_in_the_schemes_module,
            "lesion": test_the_lesion_segments_are_written_only_in_the_lesion_module,
            "words": test_the_segment_name_words_are_written_only_in_the_lesion_module}[check]
    with pytest.raises(AssertionError):
        test()


@pytest.mark.parametrize(("owner", "words"), [
    (REPO / "DSCPerfusion" / "DSCPerfusionLib" / "deconvolution.py", set(METHODS)),
    (REPO / "DSCPerfusion" / "DSCPerfusionLib" / "signal.py", set(DISCRETISATIONS)),
])
def test_the_cbf_estimators_and_discretisations_are_written_once(owner, words):
    strays = _strays(owner, lambda text: any(words <= found for found in _literal_tuples(text)))
    assert strays == []
    assert any(words <= found for found in _literal_tuples(owner.read_text(encoding="utf-8")))
