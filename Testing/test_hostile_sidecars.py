"""Hostile and broken inputs (issue 18, items 1, 3 and 11): DSC sidecars of the wrong shape, feature and label
tables that are not tables, links whose target is gone. Each must end in one sentence naming the file and what is
wrong (exit 2 from the command line), before any long work and with nothing written.

The command line runs in this process (``helpers.gliomaprog_here``): a child process would cost seconds of imports
per input, and ``main`` is what the console script calls. One child-process run checks that the two agree.
"""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, gliomaprog, gliomaprog_here

from GliomaProgressionLib.case.files import read_json_object, write_volume
from GliomaProgressionLib.case.geometry import Volume

FRAMES = 12
GOOD_TIMES = [1.5 * frame for frame in range(FRAMES)]


def _one_sentence_naming(error: pytest.ExceptionInfo, path, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message.strip(), message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def tiny_dsc(tmp_path):
    """A 12-frame DSC series of 6 x 6 x 3 voxels: enough to be read, far too small to compute on."""
    rng = np.random.default_rng(18)
    array = (100 + rng.random((FRAMES, 3, 6, 6)) * 10).astype(np.float32)
    return write_volume(Volume(array, np.diag([2.0, 2.0, 4.0, 1.0])), tmp_path / "dsc.nii.gz", time_spacing=1.5)


def _write_sidecar(tmp_path, content, name="dsc.json"):
    """``content``: bytes or text as they are, anything else as JSON."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --- the DSC sidecar (item 1, item 11) ---------------------------------------------------------------------

WRONG_SIDECARS = {
    "echo time in a list": ({"EchoTime": [0.03], "RepetitionTime": 1.5}, ("EchoTime", "a list", "one number")),
    "echo time as a word": ({"EchoTime": "thirty", "RepetitionTime": 1.5}, ("EchoTime", '"thirty"', "text")),
    "echo time as a bool": ({"EchoTime": True, "RepetitionTime": 1.5}, ("EchoTime", "true/false")),
    "echo time as an object": ({"EchoTime": {"s": 0.03}, "RepetitionTime": 1.5}, ("EchoTime", "an object")),
    "echo time negative": ({"EchoTime": -0.03, "RepetitionTime": 1.5}, ("EchoTime", "must be positive")),
    "echo time NaN": ('{"EchoTime": NaN, "RepetitionTime": 1.5}', ("EchoTime", "finite")),
    "echo time infinite": ('{"EchoTime": 1e999, "RepetitionTime": 1.5}', ("EchoTime", "finite")),
    "repetition time as text": ({"EchoTime": 0.03, "RepetitionTime": "1.5"}, ("RepetitionTime", "text")),
    "repetition time negative": ({"EchoTime": 0.03, "RepetitionTime": -1.5}, ("RepetitionTime", "must be positive")),
    "frame times one number": ({"EchoTime": 0.03, "FrameTimes": 1.5}, ("FrameTimes", "a number", "a list")),
    "frame times with a word": ({"EchoTime": 0.03, "FrameTimes": [0, "a"] + GOOD_TIMES[2:]},
                                ("FrameTimes", "position 1")),
    "frame times with NaN": ('{"EchoTime": 0.03, "FrameTimes": [0, NaN, 3]}', ("FrameTimes", "position 1")),
    "frame times negative": ({"EchoTime": 0.03, "FrameTimes": [-1.5] + GOOD_TIMES[1:]}, ("negative frame time",)),
    "frame times equal": ({"EchoTime": 0.03, "FrameTimes": GOOD_TIMES[:5] + [GOOD_TIMES[4]] + GOOD_TIMES[6:]},
                          ("FrameTimes", "do not increase", "position 5")),
    "frame times falling": ({"EchoTime": 0.03, "FrameTimes": GOOD_TIMES[::-1]}, ("do not increase",)),
    "frame times in ms": ({"EchoTime": 0.03, "FrameTimes": [1000 * t for t in GOOD_TIMES]}, ("milliseconds",)),
    "a list at top level": ([0.03, 1.5], ("not a JSON object", "a list")),
    "not JSON": ('{"EchoTime": 0.03,', ("could not be read as JSON", "line 1")),
    "empty file": ("", ("could not be read as JSON",)),
    "nested without end": ("[" * 100_000, ("could not be read as JSON",)),
    "not UTF-8": (b'{"EchoTime": 0.03, "Manufacturer": "Sch\xf6n"}', ("not UTF-8", "0xf6")),
}


@pytest.mark.parametrize("content, fragments", WRONG_SIDECARS.values(), ids=WRONG_SIDECARS.keys())
def test_a_wrong_sidecar_is_one_sentence_naming_the_file(tmp_path, content, fragments):
    from GliomaProgressionLib.case.timing import read_timing

    sidecar = _write_sidecar(tmp_path, content)
    with pytest.raises(ValueError) as error:
        read_timing(FRAMES, sidecar)
    _one_sentence_naming(error, sidecar, *fragments)


def test_every_field_is_checked_even_when_a_given_value_wins(tmp_path):
    """A given TR wins over FrameTimes, but a sidecar with equal FrameTimes is still a wrong file."""
    from GliomaProgressionLib.case.timing import read_timing

    sidecar = _write_sidecar(tmp_path, {"EchoTime": 0.03, "FrameTimes": [0.0] * FRAMES})
    with pytest.raises(ValueError) as error:
        read_timing(FRAMES, sidecar, tr_s=1.5)
    _one_sentence_naming(error, sidecar, "do not increase")


@pytest.mark.parametrize("given", [dict(te_s=float("nan")), dict(tr_s=float("nan")), dict(tr_s=float("inf"))])
def test_given_timing_that_is_not_a_number_is_refused(given):
    """TR and TE from DICOM headers or a panel arrive as floats: NaN passed every comparison before."""
    from GliomaProgressionLib.case.timing import read_timing

    with pytest.raises(ValueError, match="finite number of seconds"):
        read_timing(FRAMES, None, **{"tr_s": 1.5, "te_s": 0.03, **given})


def test_a_good_sidecar_still_reads(tmp_path):
    from GliomaProgressionLib.case.timing import read_timing

    sidecar = _write_sidecar(tmp_path, {"EchoTime": 0.03, "RepetitionTime": 1.5, "FrameTimes": GOOD_TIMES,
                                        "Manufacturer": "Siemens", "EchoTime2": None})
    timing = read_timing(FRAMES, sidecar)
    np.testing.assert_allclose(timing.times_s, GOOD_TIMES)
    assert (timing.te_s, timing.tr_s) == (0.03, 1.5)


def test_equal_frame_times_are_refused_when_the_case_folder_is_read(tmp_path, tiny_dsc):
    """Before this, equal FrameTimes passed the reader and failed in the perfusion fit, after registration."""
    from GliomaProgressionLib.case.folder import read_dsc_series

    sidecar = _write_sidecar(tmp_path, {"EchoTime": 0.03, "FrameTimes": GOOD_TIMES[:3] + GOOD_TIMES[2:-1]})
    with pytest.raises(ValueError) as error:
        read_dsc_series(tmp_path)
    _one_sentence_naming(error, sidecar, "do not increase", "position 3")


@pytest.mark.parametrize("content, fragments", [
    WRONG_SIDECARS["echo time in a list"], WRONG_SIDECARS["echo time as a word"],
    WRONG_SIDECARS["frame times one number"], WRONG_SIDECARS["frame times equal"], WRONG_SIDECARS["not UTF-8"],
    WRONG_SIDECARS["a list at top level"]], ids=["list", "word", "one number", "equal", "not UTF-8", "top list"])
def test_perfusion_refuses_a_wrong_sidecar_in_one_line(tmp_path, capsys, tiny_dsc, content, fragments):
    sidecar = _write_sidecar(tmp_path, content, "sidecar.json")
    out = tmp_path / "out"
    result = gliomaprog_here(capsys, "perfusion", "--dsc", tiny_dsc, "--dsc-json", sidecar, "--out", out, "--quiet")
    assert_one_line_error(result, str(sidecar), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_the_console_script_gives_the_same_line(tmp_path, tiny_dsc):
    sidecar = _write_sidecar(tmp_path, WRONG_SIDECARS["echo time in a list"][0])
    result = gliomaprog("perfusion", "--dsc", tiny_dsc, "--dsc-json", sidecar, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(sidecar), "EchoTime", "a list")
    assert not (tmp_path / "out").exists()


# --- the one JSON reader ------------------------------------------------------------------------------------


def test_read_json_object_names_the_file_for_every_problem(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "gone.json")
    problems = {tmp_path / "absent.json": "does not exist", tmp_path: "is a folder",
                link: "is a broken link", _write_sidecar(tmp_path, "7", "seven.json"): "(it holds a number)"}
    for path, fragment in problems.items():
        with pytest.raises(ValueError) as error:
            read_json_object(path, "model plans")
        _one_sentence_naming(error, path, "The model plans", fragment)


def test_read_json_object_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"EchoTime": 0.03}).encode())
    assert read_json_object(path, "DSC sidecar") == {"EchoTime": 0.03}


# --- links whose target is gone (item 11) -------------------------------------------------------------------


def _dangling(folder, name):
    (folder / name).symlink_to(folder / "moved-away" / name)
    return folder / name


@pytest.mark.parametrize("name, what", [("t1c.nii.gz", "CE-T1"), ("BraTS-GLI-00001-000-t1c.nii.gz", "CE-T1"),
                                        ("t1c", "CE-T1")])
def test_a_broken_link_is_reported_as_one_not_as_a_missing_series(tmp_path, name, what):
    from GliomaProgressionLib.case.folder import read_case

    link = _dangling(tmp_path, name)
    with pytest.raises(ValueError) as error:
        read_case(tmp_path)
    _one_sentence_naming(error, link, what, "broken link", "moved-away")
    assert "has no" not in str(error.value)


def test_a_broken_dsc_link_does_not_silently_drop_perfusion(tmp_path):
    """``run`` asks ``has_series`` whether to read DSC: a dead link answered "no DSC", and the run went on."""
    from GliomaProgressionLib.case.folder import has_series

    link = _dangling(tmp_path, "dsc.nii.gz")
    with pytest.raises(ValueError) as error:
        has_series(tmp_path, "dsc")
    _one_sentence_naming(error, link, "DSC series", "broken link")


def test_a_broken_sidecar_link_is_not_a_missing_sidecar(tmp_path, tiny_dsc):
    from GliomaProgressionLib.case.folder import read_dsc_series

    link = _dangling(tmp_path, "dsc.json")
    with pytest.raises(ValueError) as error:
        read_dsc_series(tmp_path)
    _one_sentence_naming(error, link, "DSC sidecar", "broken link")


def test_run_refuses_a_broken_link_in_one_line(tmp_path, capsys):
    case = tmp_path / "case"
    case.mkdir()
    link = _dangling(case, "t1c.nii.gz")
    result = gliomaprog_here(capsys, "run", case, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(link), "broken link")
    assert not (tmp_path / "out").exists()


def test_perfusion_refuses_a_broken_sidecar_link(tmp_path, capsys, tiny_dsc):
    link = _dangling(tmp_path, "sidecar.json")
    result = gliomaprog_here(capsys, "perfusion", "--dsc", tiny_dsc, "--dsc-json", link, "--out", tmp_path / "out",
                             "--quiet")
    assert_one_line_error(result, str(link), "broken link")


# --- feature and label tables for ``radiomics model`` (item 3) ----------------------------------------------

HEADER = "case,enhancing_warning,enhancing_F1,enhancing_F2,seconds"
GOOD_ROWS = ["c1,,1.0,5.0,1.2", "c2,,2.0,nan,1.1", "c3,,3.5,7.0,1.3", "c4,too small,,8.0,1.0"]


def _table(tmp_path, lines, name="features.csv"):
    path = tmp_path / name
    path.write_bytes(lines if isinstance(lines, bytes) else "\n".join(lines).encode() + b"\n")
    return path


def _labels(tmp_path):
    return _table(tmp_path, ["case,label", "c1,local", "c2,distant", "c3,0", "c4,1"], "labels.csv")


BAD_FEATURES = {
    "long row first": ([HEADER, "c1,,1.0,5.0,1.2,99", *GOOD_ROWS[1:]], ("6 cells on line 2", "header has 5")),
    "short row": ([HEADER, *GOOD_ROWS[:2], "c3,,3.5", GOOD_ROWS[3]], ("3 cells on line 4",)),
    "word in a number column": ([HEADER, *GOOD_ROWS[:2], "c3,,abc,7.0,1.3", GOOD_ROWS[3]],
                                ("case c3", "enhancing_F1", "'abc'", "not a finite number")),
    "infinity": ([HEADER, *GOOD_ROWS[:2], "c3,,inf,7.0,1.3", GOOD_ROWS[3]], ("case c3", "'inf'")),
    "empty file": (b"", ("is empty",)),
    "header only": ([HEADER], ("no rows",)),
    "no case column": (["id;enhancing_F1", "c1;1.0"], ("no 'case' column", "id;enhancing_F1")),
    "a column twice": (["case,enhancing_F1,enhancing_F1", "c1,1,2", "c2,3,4"], ("repeats the column",)),
    "not UTF-8": (f"{HEADER}\nc1,,1.0,5.0,1.2\nc\xe92,,2.0,6.0,1.1\n".encode("latin-1"), ("not UTF-8", "0xe9")),
}


@pytest.mark.parametrize("lines, fragments", BAD_FEATURES.values(), ids=BAD_FEATURES.keys())
def test_a_bad_features_table_is_one_sentence_naming_the_file(tmp_path, lines, fragments):
    from GliomaProgressionLib.cohort.radiomics_model import read_features

    path = _table(tmp_path, lines)
    with pytest.raises(ValueError) as error:
        read_features(path)
    _one_sentence_naming(error, path, *fragments)


@pytest.mark.parametrize("lines, fragments", [
    (["case,outcome", "c1,local"], ("no 'label' column",)),
    (["case,label", "c1,local,extra", "c2,distant"], ("3 cells on line 2",)),
    ("case,label\nc1,lokal\xe9\n".encode("latin-1"), ("not UTF-8",))], ids=["no label", "ragged", "not UTF-8"])
def test_a_bad_labels_table_is_one_sentence_naming_the_file(tmp_path, lines, fragments):
    from GliomaProgressionLib.cohort.radiomics_model import read_labels

    path = _table(tmp_path, lines, "labels.csv")
    with pytest.raises(ValueError) as error:
        read_labels(path)
    _one_sentence_naming(error, path, *fragments)


def test_a_good_table_keeps_its_numbers_and_its_missing_values(tmp_path):
    """Empty and 'nan' cells are missing values (pyradiomics refused the region), text-only columns are dropped;
    an Excel byte-order mark before 'case' is no reason to refuse the file."""
    from GliomaProgressionLib.cohort.radiomics_model import read_features

    path = _table(tmp_path, b"\xef\xbb\xbf" + "\n".join([HEADER + ",site", *(r + ",Oslo" for r in GOOD_ROWS)]).encode())
    cases, names, matrix = read_features(path)
    assert cases == ["c1", "c2", "c3", "c4"] and names == ["enhancing_F1", "enhancing_F2"]
    np.testing.assert_array_equal(np.isnan(matrix), [[False, False], [False, True], [False, False], [True, False]])


@pytest.mark.parametrize("problem", ["long row first", "word in a number column", "not UTF-8"])
def test_radiomics_model_refuses_a_bad_table_in_one_line(tmp_path, capsys, problem):
    lines, fragments = BAD_FEATURES[problem]
    features, out = _table(tmp_path, lines), tmp_path / "model"
    result = gliomaprog_here(capsys, "radiomics", "model", "--features", features, "--labels", _labels(tmp_path),
                             "--out", out)
    assert_one_line_error(result, str(features), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".model.partial-*"))
