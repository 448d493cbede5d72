"""Hostile runs (issue 18 items 6, 7, 9, 10): a lesion that is no lesion of this brain, SIGTERM in the middle of a
run, and a batch output folder that a killed or damaged run left behind.

- ``predict`` checks the lesion as ``run`` does, in the same sentences, before any registration;
- a lesion mostly outside the brain is refused (``run`` used to merge it into its brain mask and plan 2 mL CTVs);
- SIGTERM (a scheduler, a GUI) ends ``predict`` and ``run`` as Ctrl+C does: one line, exit 143, no worker, no
  temporary or staging folder left;
- ``run --batch`` resumes by content (sizes and SHA-256 recorded in report.json), redoes an incomplete case
  without mixing old and new files, and sweeps what runs that provably ended left behind.

The outputs of the resume tests are fakes written through the real staging and report.json code: re-running the
chain would take a minute per case.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import GLIOMAPROG, assert_one_line_error
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.models import process
from GliomaProgressionLib.runs import batch, chain

ON_LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


# --- items 6 and 7: the lesion, checked by predict as by run, before any registration -----------------------------


def _rewrite_lesion(case: Path, change) -> Path:
    path = case / "lesion.nii.gz"
    lesion = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(lesion))
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(lesion)
    sitk.WriteImage(image, str(path), True)
    return path


def _corner_block(shape, voxels: int) -> np.ndarray:
    """A cube of about ``voxels`` SNFH voxels in the image's first corner: air, far from the brain."""
    side = max(2, round(voxels ** (1 / 3)))
    block = np.zeros(shape, np.uint8)
    block[:side, :side, :side] = 2
    return block


def _float_labels(labels):
    return labels.astype(np.float32) * np.float32(0.5)  # 0.5, 1, 1.5: an interpolated label map


def _label_seven(labels):
    labels = labels.copy()
    labels[labels == 1] = 7
    return labels


def _entirely_outside(labels):
    return _corner_block(labels.shape, int((labels > 0).sum()))


def _mostly_outside(labels):
    """The real lesion, plus twice its size in air: a third of it inside the brain."""
    return np.maximum(labels, _corner_block(labels.shape, 2 * int((labels > 0).sum())))


BAD_LESIONS = {  # name -> (change, what the one sentence must say)
    "float labels": (_float_labels, "holds non-integer values"),
    "unknown label 7": (_label_seven, "label values [7] that are not BraTS labels"),
    "entirely outside the brain": (_entirely_outside, "% of the lesion"),
    "mostly outside the brain": (_mostly_outside, "% of the lesion"),
}


@pytest.fixture(scope="module", params=sorted(BAD_LESIONS))
def bad_lesion_case(request, small_case_folder, tmp_path_factory):
    change, fragment = BAD_LESIONS[request.param]
    case = tmp_path_factory.mktemp("bad-lesion") / "case"
    shutil.copytree(small_case_folder, case, ignore=shutil.ignore_patterns("truth"))
    return case, _rewrite_lesion(case, change), fragment


def _command(arguments: list, capsys) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` in this process (the refusals come before any child process: no interpreter start
    for each), as the child-process helper returns it."""
    code = cli.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, code, captured.out, captured.err)


def test_predict_and_run_refuse_a_bad_lesion_in_the_same_sentence_before_registration(bad_lesion_case, tmp_path,
                                                                                       capsys):
    case, lesion, fragment = bad_lesion_case
    predicted = _command(["predict", "--t1c", case / "t1c.nii.gz", "--flair", case / "flair.nii.gz", "--lesion",
                          lesion, "--model", "conventional", "--out", tmp_path / "predicted"], capsys)
    assert_one_line_error(predicted, str(lesion), fragment)  # one line: no progress line, so no registration
    ran = _command(["run", case, "--model", "conventional", "--out", tmp_path / "ran"], capsys)
    *stages, error = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and all(chain.STAGES["read"] in line for line in stages), ran.stderr
    assert error == predicted.stderr.strip().replace("gliomaprog predict:", "gliomaprog run:", 1)
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder


def test_the_lesion_rule_refuses_less_than_half_inside_the_brain():
    from GliomaProgressionLib.runs.predict import check_lesion_in_brain

    lesion = sitk.Image(20, 10, 10, sitk.sitkUInt8)
    lesion[0:10, 0:10, 0:10] = 2  # 1000 voxels at i < 10
    for inside_columns, refused in ((4, True), (6, False)):  # 40% and 60% of the lesion inside
        brain = sitk.Image(20, 10, 10, sitk.sitkUInt8)
        brain[10 - inside_columns:20, 0:10, 0:10] = 1
        if refused:
            with pytest.raises(ValueError, match=r"^Only 40% of the lesion L lies inside the brain mask B; "):
                check_lesion_in_brain(lesion, lesion, "L", brain, "B")
        else:
            check_lesion_in_brain(lesion, lesion, "L", brain, "B")


# --- item 9: SIGTERM is a cancel -------------------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


def _processes_with(entry: bytes) -> dict[int, int | None]:
    """Every live process whose environment holds ``entry`` (the test's own TMPDIR): the command and whatever
    it started, even after their parent has gone."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        if entry in environment and state[state.rindex(b")") + 2:][:1] not in b"ZX":
            found[int(name)] = _process_start(int(name))
    return found


def _alive(processes: dict[int, int | None]) -> list[int]:
    return [pid for pid, start in processes.items() if start is not None and _process_start(pid) == start]


def _terminate_when(arguments: list, trigger: str, tmp_path: Path) -> dict:
    """Start ``gliomaprog ARGUMENTS`` with TMPDIR in the test's folder, send SIGTERM once a progress line holds
    ``trigger``, and report what followed: exit code, stderr, seconds to the exit, processes of the run alive
    after it (and how long the last of them lasted)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    entry = f"TMPDIR={temporary}".encode()
    child = subprocess.Popen([*GLIOMAPROG, *map(str, arguments)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "TMPDIR": str(temporary)})
    watchdog = threading.Timer(240, child.kill)
    watchdog.start()
    lines = []
    try:
        for line in child.stderr:
            lines.append(line)
            if trigger in line:
                break
        else:
            pytest.fail("the command ended before the trigger line:\n" + "".join(lines))
        members = _processes_with(entry)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        rest = child.stderr.read()
        code = child.wait()
        exited = time.monotonic() - sent
        while _alive(members) and time.monotonic() - sent < 10:
            time.sleep(0.02)
        gone = time.monotonic() - sent
    finally:
        watchdog.cancel()
    return {"code": code, "stderr": "".join(lines) + rest, "exit_s": exited, "members": members, "gone_s": gone,
            "left": _processes_with(entry), "temporary": temporary}


def _assert_cancelled(outcome: dict, command: str, out: Path) -> None:
    assert outcome["code"] == 128 + signal.SIGTERM, outcome["stderr"]
    assert "Traceback" not in outcome["stderr"], outcome["stderr"]
    assert outcome["stderr"].strip().splitlines()[-1] == f"gliomaprog {command}: cancelled; nothing was written."
    assert outcome["left"] == {}, "a process of the run outlived it"
    assert outcome["gone_s"] < 3.0, outcome
    leftovers = [p.name for p in outcome["temporary"].iterdir() if not p.name.startswith("torchinductor_")]
    assert leftovers == [], "temporary files left behind"
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def _central_half(case: Path, target: Path) -> Path:
    """CE-T1, FLAIR and lesion cut to the middle half of each axis (the lesion stays inside): registration and the
    channels take a few times less, and the model's worker starts sooner."""
    target.mkdir()
    for name in ("t1c", "flair", "lesion"):
        image = sitk.ReadImage(str(case / f"{name}.nii.gz"))
        low, high = [n // 4 for n in image.GetSize()], [n - n // 4 for n in image.GetSize()]
        sitk.WriteImage(image[low[0]:high[0], low[1]:high[1], low[2]:high[2]], str(target / f"{name}.nii.gz"))
    return target


@pytest.mark.skipif(not ON_LINUX, reason="finds the run's processes in /proc")
def test_sigterm_while_the_model_runs_cancels_predict(small_case_folder, tmp_path):
    case, out = _central_half(small_case_folder, tmp_path / "case"), tmp_path / "out"
    outcome = _terminate_when(["predict", "--t1c", case / "t1c.nii.gz", "--flair", case / "flair.nii.gz",
                               "--lesion", case / "lesion.nii.gz", "--model", "conventional", "--out", out],
                              "Loading the model", tmp_path)
    assert len(outcome["members"]) >= 2, "the worker had started"  # the command and its worker (at least)
    _assert_cancelled(outcome, "predict", out)
    print(f"SIGTERM -> exit {outcome['exit_s']:.2f} s, last process gone {outcome['gone_s']:.2f} s")


@pytest.mark.skipif(not ON_LINUX, reason="finds the run's processes in /proc")
def test_sigterm_early_in_a_run_cancels_it(small_case_folder, tmp_path):
    out = tmp_path / "out"
    outcome = _terminate_when(["run", small_case_folder, "--model", "conventional", "--out", out],
                              chain.STAGES["read"], tmp_path)
    _assert_cancelled(outcome, "run", out)


@pytest.mark.parametrize("number", process.TERMINATING_SIGNALS)
def test_sigterm_and_sighup_cancel_the_panels_job_process(small_case_folder, tmp_path, number):
    """The Glioma Progression panel's Cancel sends SIGTERM to its job process (``python -m runs.predict``): the job
    ends with its one ERROR line and exit 143, and leaves neither its output nor a staging folder. A hang-up
    (Slicer's terminal closed) does the same, with exit 129."""
    from GliomaProgressionLib.runs.predict import PredictionJob, PredictionSettings

    case, out = _central_half(small_case_folder, tmp_path / "case"), tmp_path / "out"
    job = PredictionJob(case / "t1c.nii.gz", case / "flair.nii.gz", case / "lesion.nii.gz", "conventional", out,
                        settings=PredictionSettings(device="cpu"))
    child = subprocess.Popen(job.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(number, signal.SIG_DFL))  # not ignored, as under nohup
    watchdog = threading.Timer(240, child.kill)
    watchdog.start()
    try:
        first = child.stdout.readline()
        assert first.startswith("["), first  # a progress line: the job is at work
        child.send_signal(number)
        rest = child.stdout.read()
        code = child.wait()
    finally:
        watchdog.cancel()
    assert code == 128 + number, first + rest
    assert (first + rest).strip().splitlines()[-1] == "ERROR: cancelled; nothing was written."
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.mark.parametrize("number", process.TERMINATING_SIGNALS)
def test_sigterm_and_sighup_raise_a_cancel_only_while_asked_and_only_once(number):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    previous = signal.signal(number, signal.SIG_DFL)  # SIGHUP is ignored under nohup, as CI may run
    cleaned = False
    try:
        with pytest.raises(process.TerminationRequested) as raised:
            with process.termination_as_interrupt():
                try:
                    os.kill(os.getpid(), number)
                    time.sleep(1)
                finally:  # the cleanup: a second signal must not interrupt it
                    os.kill(os.getpid(), number)
                    time.sleep(0.05)
                    cleaned = True
        assert signal.getsignal(number) == signal.SIG_DFL
    finally:
        signal.signal(number, previous)
    assert cleaned and raised.value.exit_code == 128 + number and isinstance(raised.value, KeyboardInterrupt)


def test_a_hang_up_ignored_on_purpose_stays_ignored():
    """Under ``nohup`` SIGHUP is ignored: the run must go on when the terminal closes."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with process.termination_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, previous)


# --- item 10: resume by content ---------------------------------------------------------------------------------


def _fake_run_case(case, out, settings=None, progress=None):
    """What run_case leaves, in small: a staged folder with a few outputs and the real report.json."""
    from GliomaProgressionLib.case.files import staged_output_folder

    data = {"case": Path(case).name, "verdict": {"progression_predicted": True, "predicted_volume_ml": 1.5}}
    with staged_output_folder(out) as staging:
        chain.mark_owner(staging)
        (staging / "registered").mkdir()
        (staging / "registered" / "ncbv.nii.gz").write_bytes(os.urandom(4096))
        (staging / "scene.mrb").write_bytes(os.urandom(2048))
        (staging / "made_by").write_text(f"run {os.getpid()} {time.monotonic_ns()}")
        chain.finish_output_folder(staging, data)
    return data


@pytest.fixture
def batch_folders(tmp_path, monkeypatch):
    """A folder of two cases and a batch output where both are complete; ``run_case`` faked."""
    monkeypatch.setattr(batch, "run_case", _fake_run_case)
    cases, out = tmp_path / "cases", tmp_path / "out"
    for name in ("a", "b"):
        (cases / name).mkdir(parents=True)
    batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    assert chain.is_complete(out / "a") and chain.is_complete(out / "b")
    return cases, out


def _statuses(rows) -> dict[str, str]:
    return {row["case"]: row["status"] for row in rows}


def test_resume_skips_a_complete_case_and_redoes_a_truncated_one(batch_folders):
    cases, out = batch_folders
    ncbv = out / "a" / "registered" / "ncbv.nii.gz"
    ncbv.write_bytes(ncbv.read_bytes()[:1000])  # a copy cut short
    assert not chain.is_complete(out / "a")
    before = (out / "b" / "made_by").read_text()
    rows = batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    assert _statuses(rows) == {"a": "complete", "b": "skipped"}
    assert chain.is_complete(out / "a") and (out / "b" / "made_by").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", chain.BATCH_CSV]  # nothing set aside is left


def test_resume_detects_a_file_changed_in_place(batch_folders):
    _, out = batch_folders
    scene = out / "b" / "scene.mrb"
    data = bytearray(scene.read_bytes())
    data[100] ^= 0xFF  # same size, other content
    scene.write_bytes(bytes(data))
    assert not chain.is_complete(out / "b")


def test_resume_redoes_a_case_with_a_missing_file_without_mixing_old_and_new(batch_folders):
    cases, out = batch_folders
    (out / "a" / "scene.mrb").unlink()
    (out / "a" / "left_by_the_old_run.txt").write_text("old")
    rows = batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    assert _statuses(rows)["a"] == "complete", rows
    assert chain.is_complete(out / "a")
    assert not (out / "a" / "left_by_the_old_run.txt").exists()


def test_a_failed_redo_puts_the_old_output_back(batch_folders, monkeypatch):
    cases, out = batch_folders
    (out / "a" / "scene.mrb").unlink()
    kept = sorted(p.relative_to(out / "a") for p in (out / "a").rglob("*"))

    def failing(case, target, settings=None, progress=None):
        raise ValueError("The CE-T1 file is damaged.")

    monkeypatch.setattr(batch, "run_case", failing)
    rows = batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    assert _statuses(rows)["a"] == "failed"
    assert sorted(p.relative_to(out / "a") for p in (out / "a").rglob("*")) == kept
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", chain.BATCH_CSV]


def test_a_folder_that_is_no_result_is_left_alone(batch_folders):
    cases, out = batch_folders
    shutil.rmtree(out / "a")
    (out / "a").mkdir()
    (out / "a" / "notes.txt").write_text("mine")
    rows = batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    row = next(row for row in rows if row["case"] == "a")
    assert row["status"] == "failed" and str(out / "a") in row["message"] and "report.json" in row["message"]
    assert (out / "a" / "notes.txt").read_text() == "mine"


def _ended_owner() -> str:
    """The owner token of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return process.owner_token().replace(f"-{os.getpid()}-", f"-{int(child.stdout)}-", 1)


def _reused_owner() -> str:
    """This process's id with another start time: the id of an ended process that someone else now has."""
    host, pid, start = process.owner_token().split("-")
    return f"{host}-{pid}-{int(start) + 1 if start.isdigit() else 1}"


def _partial(out: Path, name: str, owner: str | None) -> Path:
    folder = out / f".{name}.partial-{abs(hash(owner)) % 10**8}"
    (folder / "registered").mkdir(parents=True)
    (folder / "registered" / "t1c.nii.gz").write_bytes(b"x" * 1000)
    if owner is not None:
        (folder / chain.OWNER_MARKER).write_text(owner)
    return folder


def test_resume_sweeps_staging_folders_of_ended_runs_only(batch_folders):
    cases, out = batch_folders
    ended, reused = _partial(out, "a", _ended_owner()), _partial(out, "b", _reused_owner())
    running, unmarked = _partial(out, "a", process.owner_token()), _partial(out, "b", None)
    elsewhere = _partial(out, "a", "0000zzzz-1-1")  # another machine's (or unreadable): cannot be proved stale
    set_aside = out / f".b.replaced-{_ended_owner()}"
    set_aside.mkdir()
    batch.run_batch(cases, out, chain.RunSettings(), quiet=True)
    assert not ended.exists() and not reused.exists() and not set_aside.exists()
    assert running.exists() and unmarked.exists() and elsewhere.exists()


def test_temporary_folders_of_ended_runs_are_swept(tmp_path):
    ended = tmp_path / f"{process.JOB_FOLDER_PREFIX}{_ended_owner()}-abc"
    running = tmp_path / f"{process.JOB_FOLDER_PREFIX}{process.owner_token()}-abc"
    foreign = tmp_path / f"{process.JOB_FOLDER_PREFIX}something-else"
    for folder in (ended, running, foreign):
        (folder / "gliomaprog-predict-x").mkdir(parents=True)
    process.sweep_stale_temporary_folders(tmp_path)
    assert not ended.exists() and running.exists() and foreign.exists()


def test_a_temporary_folder_goes_on_every_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with process.owned_temporary_folder() as folder:
            assert folder.parent == tmp_path and process.owner_token() in folder.name
            (folder / "channel.nii.gz").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
