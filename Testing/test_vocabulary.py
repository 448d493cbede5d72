"""Each choice list and colour table is declared once, where it belongs, and imported everywhere else: a stray
copy of the leakage methods or of the target colours in any other source file fails here."""

import re
from pathlib import Path

from CTVPlannerLib.schemes import TARGET_COLOURS
from DSCPerfusionLib.leakage import LEAKAGE_METHODS

REPO = Path(__file__).resolve().parent.parent
SOURCES = [path for folder in ("DSCPerfusion", "GliomaProgression", "CTVPlanner")
           for path in (REPO / folder).rglob("*.py")]


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
