"""Perfusion habitats in ``gliomaprog run`` (issue 14, Yun et al. 2023): the habitats/ folder recorded with its
checksums in report.json, the fractions per lesion region, the map on the CE-T1 grid on the lesion, the
"Perfusion habitats" segmentation and table in scene.mrb; and the sentence a run without habitats records.

One run of a small phantom with habitat truth through the chain (the only run of this file: the tests that read it
are marked slow), with two stand-ins: nnU-Net's probability is a map of zeros and the RTSTRUCT/SEG export writes
nothing. The habitats depend on neither, ``test_run_case.py`` runs both end to end, and the suite's time budget has
no room for them twice. The phantom is ``test_habitats_run.py``'s (made once per test process). The reasons for
skipping are checked on the chain's decision itself, without a run.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from CTVPlannerLib.schemes import ENHANCING, SNFH
from DSCPerfusionLib.habitats.labels import HABITAT_BY_VALUE, HABITATS, REGIONS

from GliomaProgressionLib import mrml
from GliomaProgressionLib.case.files import read_volume
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.models import inference
from GliomaProgressionLib.phantom.folder import write_case
from GliomaProgressionLib.report.figure import habitats_data
from GliomaProgressionLib.runs import chain
from GliomaProgressionLib.runs.habitats import HABITATS_FILE, HABITATS_FOLDER, HABITATS_JSON


def _no_progression(channels, model, **_):
    """nnU-Net's stand-in: probability 0 everywhere on the channels' grid."""
    zeros = sitk.Image(channels[0].GetSize(), sitk.sitkFloat32)
    zeros.CopyInformation(channels[0])
    return zeros


@pytest.fixture(scope="module")
def run(synthetic_case, fresh_model_cache, tmp_path_factory):
    """``gliomaprog run`` on the small phantom with habitat truth (CEL and NEL tissues with distinct curves)."""
    folder = tmp_path_factory.mktemp("habitats-run")
    case = write_case(synthetic_case(seed=3, size="small", habitats=True), folder / "case")
    out = folder / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "run_prediction", _no_progression)
        patch.setattr(chain, "export_dicom_structures", lambda folder, results: {})
        # One scheme: fewer structures to export; the habitats do not depend on the CTVs.
        code = cli.main(["run", str(case), "--out", str(out), "--schemes", "rtog", "--quiet"])
    return {"code": code, "out": out, "report": json.loads((out / "report.json").read_text())}


@pytest.mark.slow
def test_the_habitats_folder_is_written_and_checksummed_in_report_json(run):
    assert run["code"] == 0
    report, out = run["report"], run["out"]
    assert "skipped" not in report["habitats"]
    written = sorted(p.relative_to(out).as_posix() for p in (out / HABITATS_FOLDER).iterdir())
    assert f"{HABITATS_FOLDER}/{HABITATS_FILE}" in written and f"{HABITATS_FOLDER}/{HABITATS_JSON}" in written
    for name in written:
        assert report["output_files"][name]["sha256"] == chain._file_record(out / name)["sha256"], name
    assert chain.is_complete(out)
    assert str(out.parent) not in (out / HABITATS_FOLDER / HABITATS_JSON).read_text(), "no machine path"
    model = report["habitats"]["model"]
    assert model["id"] == "habitats-demo" and model["synthetic"] is True and len(model["sha256"]) == 64
    assert "synthetic" in model["notice"]


@pytest.mark.slow
def test_the_fractions_of_each_region_sum_to_one_and_match_habitats_json(run):
    fractions = run["report"]["habitats"]["fractions"]
    assert set(fractions) == set(REGIONS)
    for region in REGIONS:
        assert sum(fractions[region].values()) == pytest.approx(1.0, abs=1e-3), region
        assert all(value >= 0 for value in fractions[region].values())
    written = json.loads((run["out"] / HABITATS_FOLDER / HABITATS_JSON).read_text())["fractions"]
    for region in REGIONS:
        for key, value in fractions[region].items():
            assert written[region][key] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_the_ce_t1_grid_map_lies_on_the_lesion_within_one_dsc_voxel(run):
    """Nearest neighbour both ways through one registration: a labelled CE-T1-grid voxel is within half a DSC voxel
    (and half a 1 mm voxel) of a CEL or NEL voxel; a misplaced map (flipped, shifted, wrong transform) is not."""
    out = run["out"]
    habitats = read_volume(out / HABITATS_FOLDER / HABITATS_FILE)
    lesion = read_volume(out / "registered" / "lesion.nii.gz")
    assert habitats.array.shape == lesion.array.shape
    assert np.allclose(habitats.ijk_to_ras, lesion.ijk_to_ras, atol=1e-4)
    labelled = habitats.array > 0
    assert labelled.sum() > 100
    assert set(np.unique(habitats.array[labelled])) <= set(HABITAT_BY_VALUE)
    inside = (lesion.array == ENHANCING) | (lesion.array == SNFH)
    dsc_spacing = read_volume(out / HABITATS_FOLDER / "habitats_dsc.nii.gz").spacing
    bound = 0.5 * np.linalg.norm(dsc_spacing) + 0.5 * np.linalg.norm(lesion.spacing) + 1e-3
    box = _box(labelled | inside, margin=int(np.ceil(bound / lesion.spacing.min())) + 1)
    distance = distance_transform_edt(~inside[box], sampling=lesion.spacing[::-1])
    assert distance[labelled[box]].max() <= bound
    assert (labelled & inside).sum() / labelled.sum() >= 0.75  # the rest: DSC voxels across the lesion's border
    assert (labelled & inside).sum() / inside.sum() >= 0.8


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels: distances near the lesion without the whole grid."""
    found = np.argwhere(mask)
    low, high = np.maximum(found.min(axis=0) - margin, 0), found.max(axis=0) + margin + 1
    return tuple(slice(a, b) for a, b in zip(low, high))


@pytest.mark.slow
def test_the_scene_holds_the_habitat_segmentation_and_fraction_table(run, tmp_path):
    scene = mrml.read_scene_bundle(run["out"] / "scene.mrb", tmp_path / "cache")
    node = scene.GetFirstNodeByName("Perfusion habitats")
    assert node is not None and node.IsA("vtkMRMLSegmentationNode")
    segmentation = node.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    present = {HABITAT_BY_VALUE[int(v)].name for v in np.unique(read_volume(
        run["out"] / HABITATS_FOLDER / HABITATS_FILE).array) if v}
    assert names == present and len(names) >= 2
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        expected = next(h.colour for h in HABITATS if h.name == segment.GetName())
        assert np.allclose(segment.GetColor(), expected, atol=1e-3)
    table = scene.GetFirstNodeByName("Perfusion habitat fractions")
    assert table is not None and table.GetNumberOfRows() == len(HABITATS)


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
    monkeypatch.setattr(chain, "run_case", lambda case, out, settings, progress: seen.append(settings) or {})
    monkeypatch.setattr(chain, "summary_line", lambda data, out: "")
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--no-habitats", "--habitat-model",
                     "site.zip", "--quiet"]) == 0
    assert (seen[0].habitats, seen[0].habitat_model) == (True, "habitats-demo")
    assert (seen[1].habitats, seen[1].habitat_model) == (False, "site.zip")
