"""The Glioma Progression module's invasion-map job (runs.invasion_job): its parameter object writes and reads back
its own command line, bad arguments and a missing case are one sentence, and the started process reports them as
the panel reads them (last line ERROR: ..., exit code 2, nothing written). The map itself on a case is
test_invasion_cli.py's; the job run from the panel is Testing/slicer_app/test_invasion_panel.py's."""

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from GliomaProgressionLib.models.invasion_packages import DEFAULT_INVASION_MODEL
from GliomaProgressionLib.runs.invasion_job import JOB_MODULE, InvasionJob, main


def test_the_job_reads_back_its_own_arguments_even_values_that_look_like_flags(tmp_path):
    job = InvasionJob(tmp_path / "-case", str(tmp_path / "out dir"), "--model.zip")
    arguments = job.as_arg_list()
    assert arguments == [f"--case={tmp_path / '-case'}", f"--out={tmp_path / 'out dir'}", "--model=--model.zip"]
    assert InvasionJob.from_arg_list(arguments) == job
    assert job.out == tmp_path / "out dir" and isinstance(job.out, Path), "text paths become Paths"
    default = InvasionJob.from_arg_list([f"--case={tmp_path}", f"--out={tmp_path / 'o'}"])
    assert default.model == DEFAULT_INVASION_MODEL
    command = job.command()
    assert command[1:3] == ["-m", JOB_MODULE] and command[3:] == arguments


@pytest.mark.parametrize("arguments, words", [
    (["--case=a"], "the following arguments are required: --out"),
    (["--case=a", "--out=b", "--threshold=0.4"], "unrecognized arguments: --threshold=0.4"),
])
def test_wrong_arguments_are_one_sentence(arguments, words):
    with pytest.raises(ValueError) as refused:
        InvasionJob.from_arg_list(arguments)
    message = str(refused.value)
    assert message.startswith("The invasion job's arguments are wrong:") and words in message
    assert message.endswith(".") and "\n" not in message and "usage" not in message


def test_a_missing_case_ends_the_job_with_one_error_line_and_nothing_written(tmp_path):
    out = tmp_path / "results"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(InvasionJob(tmp_path / "no-such-case", out).as_arg_list())
    assert code == 2
    assert printed.getvalue().strip().splitlines()[-1] == f"ERROR: The case folder {tmp_path / 'no-such-case'} does " \
                                                          "not exist."
    assert not out.exists()


def test_the_started_process_says_why_it_failed(tmp_path):
    (tmp_path / "case").mkdir()  # a case folder without a CE-T1
    out = tmp_path / "results"
    runner = InvasionJob(tmp_path / "case", out, tmp_path / "no-model.zip").start()
    assert runner.wait() == 2
    assert "Unknown invasion model" in runner.error_message() and "no-model.zip" in runner.error_message()
    assert not out.exists()
