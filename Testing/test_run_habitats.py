"""Perfusion habitats in ``gliomaprog run`` (issue 14, Yun et al. 2023): the sentence a run without habitats records,
and the command line's habitat options, checked on the chain's decisions without a run. What a run writes (the
habitats/ folder and its checksums, the fractions, the map on the CE-T1 grid, the scene's segmentation) is checked
on ``test_run_case.py``'s batch run, which computes the habitats of its good case: the suite has no room for a
second end-to-end run.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from CTVPlannerLib.schemes import ENHANCING, SNFH

from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.report.figure import habitats_data
from GliomaProgressionLib.runs import chain, stages


def _case(dsc: bool = True, lesion_values=(ENHANCING, SNFH)):
    """What the habitat step reads of a run: its perfusion (or None) and the lesion on the DSC grid."""
    labels = np.zeros((4, 5, 5), np.uint8)
    for index, value in enumerate(lesion_values):
        labels[1 + index, 2, 2] = value
    return SimpleNamespace(perfusion=object() if dsc else None), labels if dsc else None


def test_a_run_without_dsc_records_in_one_sentence_why_it_has_no_habitats():
    prepared, dsc_lesion = _case(dsc=False)
    settings = chain.RunSettings()
    habitats, reason = chain.case_habitats(settings, None, prepared, dsc_lesion, None, lambda *_: None)
    assert habitats is None and reason == "perfusion habitats skipped: no DSC series"
    results = SimpleNamespace(habitats=habitats, habitats_skipped=reason)
    assert habitats_data(results) == {"skipped": reason}  # report.json's "habitats"


def test_each_reason_for_no_habitats_is_one_sentence_naming_what_is_missing():
    settings = chain.RunSettings()
    assert chain.habitat_skip_reason(settings, *_case()) is None
    assert chain.habitat_skip_reason(chain.RunSettings(habitats=False), *_case()) == chain.HABITATS_NOT_REQUESTED
    no_nel = chain.habitat_skip_reason(settings, *_case(lesion_values=(ENHANCING,)))
    no_cel = chain.habitat_skip_reason(settings, *_case(lesion_values=(SNFH,)))
    assert "(the NEL)" in no_nel and "(the CEL)" not in no_nel
    assert "(the CEL)" in no_cel and "(the NEL)" not in no_cel
    for reason in (no_nel, no_cel):
        assert reason.startswith("perfusion habitats skipped: the lesion has no ") and "." not in reason


def test_the_command_line_turns_habitats_off_and_names_the_habitat_model(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(stages, "run_case", lambda case, out, settings, progress: seen.append(settings) or {})
    monkeypatch.setattr(stages, "summary_line", lambda data, out: "")
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--no-habitats", "--habitat-model",
                     "site.zip", "--quiet"]) == 0
    assert (seen[0].habitats, seen[0].habitat_model) == (True, "habitats-demo")
    assert (seen[1].habitats, seen[1].habitat_model) == (False, "site.zip")
