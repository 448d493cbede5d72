"""Background prediction with the shipped demo models: result, bad input, cancel, crash, timeout, device."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import crop_case_to_lesion

from GliomaProgressionLib.models import inference

from GliomaProgressionLib.models import packages as models

from GliomaProgressionLib.models import worker as predict_worker

from GliomaProgressionLib.models import training

HELD_OUT_POSITIVE = 2001  # a held-out seed (training uses 1000-1047)


@pytest.fixture(scope="module")
def case():
    return training.make_case(HELD_OUT_POSITIVE, size="small", spacing_mm=2.0)


@pytest.fixture(scope="module")
def cache(fresh_model_cache):
    return fresh_model_cache


@pytest.fixture(scope="module")
def multiparametric(cache):
    return models.resolve_model("multiparametric")


@pytest.fixture(scope="module")
def conventional(cache):
    return models.resolve_model("conventional")


def _channels(case, names=("t1c", "flair", "ncbv")):
    return [case.channels[name] for name in names]


def _session_members(session_id: int) -> list[int]:
    """Running processes whose session is ``session_id`` (the worker and anything it started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.slow
def test_multiparametric_prediction_finds_the_progression(case, multiparametric, tmp_path):
    progress, info = [], {}
    probability = inference.run_prediction(_channels(case), multiparametric, device="auto",
                                           progress=lambda f, m: progress.append((f, m)), info=info,
                                           work_dir=tmp_path)
    assert probability.GetPixelID() == sitk.sitkFloat32
    assert probability.GetSize() == case.channels["t1c"].GetSize()
    assert probability.GetOrigin() == case.channels["t1c"].GetOrigin()
    p = sitk.GetArrayFromImage(probability)
    assert 0.0 <= p.min() and p.max() <= 1.0
    nel = sitk.GetArrayFromImage(case.nel) > 0
    truth = sitk.GetArrayFromImage(case.label) > 0
    predicted = (p >= 0.5) & nel
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert predicted.sum() >= 1, "patient verdict: progression expected"
    assert dice > 0.6, f"Dice {dice:.2f}"
    assert info["device"] == "cpu" and info["mirroring"] is False  # CPU: no test-time mirroring by default
    assert any("Sliding window" in message for _, message in progress) and progress[-1][0] == 1.0
    assert list(tmp_path.iterdir()) == []


def test_wrong_channel_count_or_order_is_refused(case, conventional, multiparametric, tmp_path):
    with pytest.raises(ValueError, match="needs 2 channels"):
        inference.run_prediction(_channels(case), conventional, work_dir=tmp_path)
    with pytest.raises(ValueError, match="needs 3 channels"):
        inference.run_prediction(_channels(case, ("t1c", "flair")), multiparametric, work_dir=tmp_path)
    with pytest.raises(ValueError, match="wrong order"):
        inference.run_prediction(_channels(case, ("flair", "t1c")), conventional, channel_names=["flair", "t1c"],
                                 work_dir=tmp_path)
    with pytest.raises(ValueError, match="missing: ncbv"):
        inference.run_prediction({"t1c": case.channels["t1c"], "flair": case.channels["flair"]}, multiparametric,
                                 work_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_channels_off_grid_or_4d_are_refused(case, conventional, tmp_path):
    shifted = sitk.Image(case.channels["flair"])
    shifted.SetOrigin([o + 5.0 for o in shifted.GetOrigin()])
    with pytest.raises(ValueError, match="not on the grid"):
        inference.run_prediction([case.channels["t1c"], shifted], conventional, work_dir=tmp_path)
    four_d = sitk.JoinSeries([case.channels["flair"], case.channels["flair"]])
    with pytest.raises(ValueError, match="3D"):
        inference.run_prediction([case.channels["t1c"], four_d], conventional, work_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cancel_mid_way_kills_the_tree_and_leaves_nothing(case, multiparametric, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    running = inference.start_prediction(_channels(case), multiparametric, out / "prob.nii.gz", device="cpu",
                                         work_dir=work)
    session = running._process.pid
    deadline = time.monotonic() + 120
    while "Sliding window" not in running.progress.message and time.monotonic() < deadline:
        assert running.poll() is None, "\n".join(running.lines[-20:])
        time.sleep(0.02)
    assert "Sliding window" in running.progress.message
    running.cancel()
    assert running.cancelled
    deadline = time.monotonic() + 10
    while _session_members(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session_members(session) == [], "a process of the prediction survived the cancel"
    assert list(work.iterdir()) == [] and list(out.iterdir()) == []
    assert running.poll() is not None


@pytest.mark.slow
def test_start_prediction_places_the_output_only_when_done(case, conventional, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "prob.nii.gz"
    running = inference.start_prediction(_channels(case, ("t1c", "flair")), conventional, target, device="cpu",
                                         work_dir=work)
    assert not target.exists()
    assert running.wait(timeout=300) == 0, running.error_tail()
    assert target.is_file() and running.result["device"] == "cpu"
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["prob.nii.gz", "work"]


@pytest.mark.slow
def test_crashing_worker_reports_its_error_within_seconds(case, multiparametric, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(multiparametric.folder, broken)
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    package = models.package_from_folder(broken, check=False)  # as if the file broke after installation
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        inference.run_prediction(_channels(case), package, device="cpu", work_dir=work)
    assert time.monotonic() - started < 60
    text = str(error.value)
    assert "prediction failed" in text and "checkpoint" in text and "Traceback" in text
    assert list(work.iterdir()) == []


def test_timeout_stops_the_prediction(case, multiparametric, tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 1 s"):
        inference.run_prediction(_channels(case), multiparametric, device="cpu", timeout_s=1, work_dir=tmp_path)
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_device_choice_and_cuda_fallback_rules(monkeypatch):
    import torch

    assert predict_worker.choose_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert predict_worker.choose_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            predict_worker.choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (512 * 1024 ** 2, 8 * 1024 ** 3))
    assert predict_worker.choose_device("auto") == "cpu"  # too little free memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (6 * 1024 ** 3, 8 * 1024 ** 3))
    assert predict_worker.choose_device("auto") == "cuda"
    assert predict_worker._is_cuda_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not predict_worker._is_cuda_failure(ValueError("The model needs 3 channels"))
    command = inference.worker_command(Path("in"), models.ModelPackage(
        "m", "m", Path("f"), [], "3d_fullres", [0], "", True, "", None), Path("o"), "cpu", None)
    assert "--tta" not in command and "--no-tta" not in command  # the worker decides: off on CPU, on on GPU
    with pytest.raises(ValueError, match="device"):
        inference.start_prediction([], None, "x.nii.gz", device="gpu")


def test_verdict_counts_only_the_nel_above_the_threshold():
    """The one place the heat map becomes a segment and a verdict: runs.predict (the GUI and the CLI read it)."""
    from GliomaProgressionLib.runs.predict import PredictionSettings, patient_verdict, predicted_progression

    probability = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    probability.SetSpacing([2.0, 2.0, 2.0])
    nel = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    nel.CopyInformation(probability)
    nel[2, 2, 2] = 1
    nel[3, 2, 2] = 1
    probability[2, 2, 2] = 0.7
    probability[3, 2, 2] = 0.4
    probability[8, 8, 8] = 0.9  # outside the NEL: not progression

    def verdict(**settings):
        settings = PredictionSettings(**settings)
        label = predicted_progression(probability, nel, settings.threshold)
        return label, patient_verdict(label, probability, nel, settings)

    label, result = verdict()
    assert result["progression_predicted"] and result["predicted_voxels"] == 1
    assert result["predicted_volume_ml"] == 0.008 and result["max_probability_in_nel"] == 0.7
    assert sitk.GetArrayFromImage(label).sum() == 1 and label.GetSpacing() == (2.0, 2.0, 2.0)
    assert not verdict(min_voxels=2)[1]["progression_predicted"]
    _, result = verdict(threshold=0.3, min_ml=0.01)
    assert result["predicted_voxels"] == 2 and result["progression_predicted"]
    assert not verdict(threshold=0.3, min_ml=0.02)[1]["progression_predicted"]


def test_an_empty_nel_is_refused_before_the_model_runs(conventional):
    from GliomaProgressionLib.case.preprocess import PreparedCase
    from GliomaProgressionLib.runs.predict import predict_prepared

    image = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    empty = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    prepared = PreparedCase(image, {"t1c": image, "flair": image}, empty, empty, {}, None)
    with pytest.raises(ValueError, match="nothing to predict"):
        predict_prepared(prepared, conventional)


# --- the Slicer module's prediction job: one process, channels written once ---------------------------------------


def _job(folder, out, **settings):
    from GliomaProgressionLib.runs.predict import PredictionJob, PredictionSettings

    return PredictionJob(folder / "t1c.nii.gz", folder / "flair.nii.gz", folder / "lesion.nii.gz", "multiparametric",
                         out, dsc=folder / "dsc.nii.gz", dsc_json=folder / "dsc.json",
                         settings=PredictionSettings(**{"device": "cpu", **settings}))


def test_the_job_command_round_trips_through_the_job_parser(tmp_path):
    from GliomaProgressionLib.models.process import python_executable
    from GliomaProgressionLib.runs.predict import PredictionJob

    job = _job(tmp_path, tmp_path / "out", threshold=0.37, min_voxels=3, min_ml=0.25, tta=False)
    command = job.command()
    assert command[:3] == [python_executable(), "-m", "GliomaProgressionLib.runs.predict"]
    assert PredictionJob.from_arg_list(command[3:]) == job
    trusted = PredictionJob(str(job.t1c), str(job.flair), str(job.lesion), "-a package.zip", str(job.out),
                            trust_model=True)  # a value that starts with "-" is not read as a flag
    assert PredictionJob.from_arg_list(trusted.as_arg_list()) == trusted
    with pytest.raises(ValueError, match="arguments are wrong: .*--model"):
        PredictionJob.from_arg_list(["--t1c", "a", "--flair", "b", "--lesion", "c", "--out", "d"])


def test_the_job_process_fails_in_one_line(tmp_path, capsys):
    from GliomaProgressionLib.runs import predict

    assert predict.main(["--device", "gpu"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ERROR: The prediction job's arguments are wrong")
    job = _job(tmp_path, tmp_path / "out")  # no such files
    assert predict.main(job.as_arg_list()) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ERROR: ") and "Traceback" not in out[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def slab_case_folder(small_case_folder, tmp_path_factory):
    """The small case folder cut to the slices within 15 mm of its lesion, every series by its own grid: what the
    job test checks (files written, processes, progress, results) does not depend on the head's extent, and half
    the slices halve the registrations and the sliding window."""
    folder = shutil.copytree(small_case_folder, tmp_path_factory.mktemp("slab") / "case",
                             ignore=shutil.ignore_patterns("truth"))
    crop_case_to_lesion(folder, slab_mm=0.0, margin_mm=15.0)
    return folder


@pytest.mark.slow
def test_the_job_writes_each_channel_once_starts_no_process_and_leaves_what_the_module_reads(
        slab_case_folder, multiparametric, tmp_path, monkeypatch, capsys):
    """The job process's main, run here from the job's argument list: every image it writes is counted, starting
    a process fails (no second hop), and its progress lines and results are what the panel reads."""
    from GliomaProgressionLib.runs.predict import main as job_main

    import subprocess

    for name in ("CUDA_VISIBLE_DEVICES", "nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_compile", "nnUNet_raw",
                 "nnUNet_preprocessed", "nnUNet_results"):  # the job sets these for its process: as they were after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if os.environ[name] == "":
            monkeypatch.delenv(name)
    written = []
    execute = sitk.ImageFileWriter.Execute

    def counting(writer, *arguments):
        written.append(Path(arguments[1] if len(arguments) > 1 else writer.GetFileName()).name)
        return execute(writer, *arguments)

    def no_process(*arguments, **options):
        raise AssertionError("the prediction job started a process")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", counting)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    assert job_main(_job(slab_case_folder, tmp_path / "results").as_arg_list()) == 0, capsys.readouterr().out
    channels = [name for name in written if name.startswith((".case_", "case_"))]
    assert len(channels) == 3 and len(set(channels)) == 3, written
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert any("Registering DSC" in line for line in progress) and any("Sliding window" in line for line in progress)
    assert progress[-1].startswith("[100%] Prediction written")
    results = tmp_path / "results"
    assert sorted(p.name for p in (results / "inputs").iterdir()) == [
        "case_0000.nii.gz", "case_0001.nii.gz", "case_0002.nii.gz", "nel.nii.gz"]
    assert (results / "progression_prob.nii.gz").is_file() and (results / "progression.nii.gz").is_file()
    prediction = json.loads((results / "prediction.json").read_text())
    assert prediction["settings"]["device"] == "cpu" and "progression_predicted" in prediction["verdict"]


def test_a_prediction_leaves_no_progress_hook_behind():
    """nnU-Net's progress bar is replaced for one call only: a later prediction must not report to a caller that
    has gone (in the suite, a test's closed output stream raised "I/O operation on closed file")."""
    from nnunetv2.inference import predict_from_raw_data

    from GliomaProgressionLib.models import worker

    original = predict_from_raw_data.tqdm

    class Stop(Exception):
        pass

    class Predictor:  # stands in for nnU-Net's predictor up to the sliding window, which fails here on purpose
        plans_manager = dataset_json = configuration_manager = None

        def predict_logits_from_preprocessed_data(self, data):
            assert predict_from_raw_data.tqdm is not original  # the caller's bar during the call
            raise Stop

    class Adapter:
        def __init__(self, *args, **kwargs):
            pass

        def __next__(self):
            import numpy as np

            return {"data": np.zeros((1, 2, 2, 2), np.float32)}

    import SimpleITK as sitk
    from unittest import mock

    with mock.patch("nnunetv2.inference.data_iterators.PreprocessAdapterFromNpy", Adapter), pytest.raises(Stop):
        worker.predict_probability(Predictor(), [sitk.Image(2, 2, 2, sitk.sitkFloat32)], progress=lambda f, m: None)
    assert predict_from_raw_data.tqdm is original
