"""``gliomaprog run --invasion``: the invasion map (seed 004, Yan et al. 2020) as a step of the whole chain.

One run of the shared small case (its phantom truth as the recurrence; without its DSC series, so with the
conventional model, and one CTV scheme: the cheapest whole run) with a tiny invasion model made here: one channel
(ADC), two first-order features, trained on made-up feature rows in which progression has the lower mean ADC, as
in the phantom and in the paper. Its feature maps take a second or two; the test checks the plumbing: the files
under invasion/, report.json's entry and checksums, the report's invasion row, the scene's heat map and "Predicted
invasion" segment, and the refusal of a case without the model's channel. The nnU-Net worker (half the run's time,
tested in test_run_case and test_models) returns a flat probability here: the invasion map does not use it. The
case is cut to a slab around its lesion (ADC and recurrence alike): the invasion region lies around the lesion.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import assert_one_line_error, crop_case_to_lesion, gliomaprog_here
from GliomaProgressionLib import mrml
from GliomaProgressionLib.invasion.classifier import train_classifier
from GliomaProgressionLib.models.invasion_packages import package_invasion_model
from GliomaProgressionLib.report import figure
from GliomaProgressionLib.runs import chain, stages
from GliomaProgressionLib.runs.invasion import INVASION_JSON, LABEL_FILE, OUTPUT_FILES, PROBABILITY_FILE

TINY_ID = "tiny-invasion"
FEATURES = ("firstorder_Mean", "firstorder_Variance")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A package whose classifier calls low mean ADC progression (2 mm grid, radius 1)."""
    rng = np.random.default_rng(0)
    patients = []
    for _ in range(3):
        labels = np.repeat([1, 0], 60)
        mean = np.where(labels == 1, rng.normal(620.0, 40.0, labels.size), rng.normal(820.0, 40.0, labels.size))
        patients.append((np.stack([mean, rng.normal(900.0, 200.0, labels.size)], axis=1), labels))
    model = train_classifier(patients, channels=("adc",), features=FEATURES, radius=1, bin_count=8, spacing_mm=2.0,
                             hidden_layers=(4,), max_iter=200, seed=0)
    out = tmp_path_factory.mktemp("tiny-invasion") / "tiny_invasion.zip"
    package_invasion_model(model, out, {"id": TINY_ID, "title": "Tiny test invasion model", "synthetic": True})
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory, synthetic_case) -> Path:
    from GliomaProgressionLib.phantom.folder import write_case

    from conftest import SMALL_CASE

    # Made without DSC (a third of the phantom's making): the run takes the conventional model and no perfusion.
    written = write_case(synthetic_case(**SMALL_CASE, diffusion=True, dsc=False),
                         tmp_path_factory.mktemp("written") / "case")
    target = tmp_path_factory.mktemp("invasion-run") / "case"
    shutil.copytree(written, target, ignore=shutil.ignore_patterns("truth"))
    shutil.copy(written / "truth" / "progression.nii.gz", target / "recurrence.nii.gz")
    crop_case_to_lesion(target)
    return target


def flat_probability(channels, model, **options):
    """In place of the nnU-Net worker: probability 0.1 everywhere on the channels' grid."""
    image = sitk.Image(channels[0].GetSize(), sitk.sitkFloat32) + 0.1
    image.CopyInformation(channels[0])
    return image


@pytest.fixture(scope="module")
def run(case, tiny_model, tmp_path_factory):
    """The run, in this process, with the report's rows recorded as the page is drawn."""
    from GliomaProgressionLib.models import inference

    drawn = {}
    original = figure.render_report

    def recording(data, display, path):
        drawn["rows"] = figure.montage_rows(display)
        drawn["invasion_image"] = display.images.get("invasion")
        return original(data, display, path)

    out = tmp_path_factory.mktemp("invasion-out") / "out"
    settings = chain.RunSettings(model="conventional", schemes=("estro",), invasion=str(tiny_model))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figure, "render_report", recording)
        patch.setattr(inference, "run_prediction", flat_probability)
        data = stages.run_case(case, out, settings, chain.StageProgress("case", quiet=True))
    return {"out": out, "data": data, "drawn": drawn,
            "report": json.loads((out / chain.REPORT_JSON).read_text(encoding="utf-8"))}


@pytest.mark.slow
def test_the_invasion_files_are_written_on_the_reference_grid_and_checksummed(run):
    out, report = run["out"], run["report"]
    folder = out / chain.INVASION_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        key = f"{chain.INVASION_FOLDER}/{name}"
        assert report["output_files"][key]["sha256"] == chain._file_record(out / key)["sha256"], key
    assert chain.is_complete(out)
    reference = sitk.ReadImage(str(out / "registered" / "t1c.nii.gz"))
    probability = sitk.ReadImage(str(folder / PROBABILITY_FILE))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / LABEL_FILE))) > 0
    assert probability.GetSize() == reference.GetSize()
    assert np.allclose(probability.GetSpacing(), reference.GetSpacing())
    values = sitk.GetArrayFromImage(probability)
    assert 0.0 <= values.min() and values.max() <= 1.0 and (values > 0).sum() > 1000
    assert label.any() and (values[label] > 0).all()  # the label lies where the map is
    record = json.loads((folder / INVASION_JSON).read_text(encoding="utf-8"))
    assert record["channels"] == ["adc"] and record["model"]["id"] == TINY_ID
    assert str(out.parent) not in (folder / INVASION_JSON).read_text(encoding="utf-8"), "no machine path"


@pytest.mark.slow
def test_report_json_records_the_map_and_its_measures_against_the_recurrence(run):
    report = run["report"]
    invasion = report["invasion"]
    assert "skipped" not in invasion and invasion["name"] == figure.INVASION_NAME
    assert invasion["model"]["synthetic"] and "not for clinical use" in invasion["model"]["notice"]
    assert 0 < invasion["label_volume_ml"] < invasion["region_volume_ml"]
    evaluation = invasion["evaluation"]
    assert evaluation["truth"] == "recurrence"
    assert evaluation["progression_voxels"] > 0 and evaluation["non_progression_voxels"] > 0
    assert 0.0 <= evaluation["auc"] <= 1.0
    assert set(invasion["maps"]) == {f"{chain.INVASION_FOLDER}/{name}" for name in OUTPUT_FILES}
    assert report["timings_s"]["invasion"] > 0


@pytest.mark.slow
def test_the_report_draws_the_invasion_row(run):
    rows = run["drawn"]["rows"]
    assert "invasion" in rows and rows.index("invasion") == rows.index("probability") + 1
    assert (run["drawn"]["invasion_image"] > figure.HEAT_MAP_LOWER).any()
    page = sitk.GetArrayFromImage(sitk.ReadImage(str(run["out"] / "report.png")))[..., :3].astype(int)
    outline = np.round(255 * np.array(figure.INVASION_COLOUR)).astype(int)
    # The predicted invasion's outline and legend (a page without the map has none of this colour).
    assert (np.abs(page - outline).max(axis=-1) <= 8).sum() > 200


@pytest.mark.slow
def test_the_scene_holds_the_invasion_heat_map_and_segment(run, tmp_path):
    scene = mrml.read_scene_bundle(run["out"] / "scene.mrb", tmp_path / "cache")
    heat_map = scene.GetFirstNodeByName("Invasion probability")
    assert heat_map is not None and heat_map.GetDisplayNode().GetColorNode().GetName() == "Invasion heat map"
    node = scene.GetFirstNodeByName(figure.INVASION_NAME)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [figure.INVASION_NAME]
    assert np.allclose(segmentation.GetNthSegment(0).GetColor(), figure.INVASION_COLOUR, atol=1e-3)


def test_a_case_without_the_models_channel_is_refused_before_the_work(case, tiny_model, tmp_path, capsys):
    without_adc = tmp_path / "no_adc"
    shutil.copytree(case, without_adc)
    (without_adc / "adc.nii.gz").unlink()
    out = tmp_path / "out"
    # In this process: a child's start-up would cost more than the refusal.
    result = gliomaprog_here(capsys, "run", without_adc, "--out", out, "--model", "conventional", "--invasion",
                             tiny_model, "--quiet")
    assert_one_line_error(result, "no_adc", "ADC", TINY_ID)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_cancel_inside_a_channels_feature_maps_ends_as_invasion_cancelled(monkeypatch):
    """The pipeline checks between channels, the feature maps between chunks: both end as InvasionCancelled."""
    from GliomaProgressionLib.invasion import features, pipeline

    monkeypatch.setattr(features, "CHUNK_VOXELS", 50)
    lesion = np.zeros((24, 24, 24), np.int16)
    lesion[9:15, 9:15, 9:15] = 2  # NEL
    lesion[11:13, 11:13, 11:13] = 3  # enhancing core
    adc = np.random.default_rng(0).normal(800.0, 50.0, lesion.shape).astype(np.float32)
    checks = []

    def cancel():  # the pipeline's own check first (not yet), then the feature maps' (now)
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(pipeline.InvasionCancelled):
        pipeline.region_features({"adc": adc}, lesion, (2.0, 2.0, 2.0), ("adc",), FEATURES, 1, 8, cancel=cancel)
    assert len(checks) == 2
