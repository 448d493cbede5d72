"""``gliomaprog ctv`` and ``gliomaprog metrics``: outputs on the phantom, one-line errors with exit code 2, nothing
half-written."""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, gliomaprog_in_process

from GliomaProgressionLib.case.files import read_volume, write_volume
from GliomaProgressionLib.case.geometry import Volume


@pytest.fixture(scope="module")
def phantom_case(small_case_folder):
    return small_case_folder


@pytest.fixture(scope="module")
def ctv_run(phantom_case, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctv-out") / "ctv"
    truth = phantom_case / "truth"
    result = gliomaprog_in_process("ctv", "--lesion", phantom_case / "lesion.nii.gz", "--brain", truth / "brain.nii.gz",
                        "--progression", truth / "progression.nii.gz", "--recurrence", truth / "progression.nii.gz",
                        "--image", phantom_case / "t1c.nii.gz", "--ptv-mm", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_ctv_writes_one_mask_per_target_and_the_report(phantom_case, ctv_run):
    out, result = ctv_run
    keys = ["rtog46", "rtog60", "eortc", "estro", "ai", "boost"]
    expected = {f"ctv_{k}.nii.gz" for k in keys} | {f"ptv_{k}.nii.gz" for k in keys} | {"barriers.nii.gz", "ctv.json"}
    assert {p.name for p in out.iterdir()} == expected
    lesion = read_volume(phantom_case / "lesion.nii.gz")
    report = json.loads((out / "ctv.json").read_text())
    voxel_ml = abs(np.linalg.det(lesion.ijk_to_ras[:3, :3])) / 1000
    for target in report["targets"]:
        mask = read_volume(out / target["file"])
        assert mask.array.shape == lesion.array.shape
        assert np.allclose(mask.ijk_to_ras, lesion.ijk_to_ras, atol=1e-4)
        assert target["volume_ml"] == pytest.approx((mask.array > 0).sum() * voxel_ml, abs=1e-3)
        assert set(target["metrics"]) >= {"sensitivity", "specificity", "dice", "hd95_mm", "tversky", "pcc",
                                          "pattern"}
        assert target["file"] in result.stdout
    by_key = {t["key"]: t for t in report["targets"]}
    assert by_key["ai"]["metrics"]["sensitivity"] == 1.0
    assert by_key["rtog46"]["volume_ml"] > by_key["rtog60"]["volume_ml"] > by_key["eortc"]["volume_ml"]
    assert report["parameters"]["margins"]["rtog_mm"] == 20.0 and report["barriers"]["source"] == "fallback"
    assert "%]" in result.stderr, "progress on stderr"


@pytest.mark.slow
def test_metrics_command_prints_the_same_metrics_as_json(phantom_case, ctv_run):
    out, _ = ctv_run
    truth = phantom_case / "truth"
    result = gliomaprog_in_process("metrics", "--target", out / "ctv_eortc.nii.gz", "--recurrence",
                        truth / "progression.nii.gz", "--brain", truth / "brain.nii.gz")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    report = json.loads((out / "ctv.json").read_text())
    stored = next(t for t in report["targets"] if t["key"] == "eortc")["metrics"]
    for key, value in stored.items():
        assert printed[key] == pytest.approx(value) if isinstance(value, float) else printed[key] == value, key


# --- small synthetic inputs for the options and the bad-input cases ---------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2 mm oblique grid: lesion (3 in 2), brain box, and variants of them on other grids."""
    folder = tmp_path_factory.mktemp("ctv-small")
    angle = np.deg2rad(8)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0],
                                   [-np.sin(angle), 0, np.cos(angle)]]) @ np.diag([2.0, 2.0, 2.5])
    shape = (30, 40, 40)
    k, j, i = np.indices(shape)
    r = np.sqrt(((k - 15) * 2.5) ** 2 + ((j - 20) * 2) ** 2 + ((i - 20) * 2) ** 2)
    labels = np.where(r <= 12, 2, 0).astype(np.uint8)
    labels[r <= 6] = 3
    brain = np.zeros(shape, np.uint8)
    brain[2:-2, 2:-2, 2:-2] = 1
    outside = np.zeros(shape, np.uint8)
    outside[:, :, :5] = 1
    shifted = ijk_to_ras.copy()
    shifted[:3, 3] -= ijk_to_ras[:3, :3] @ [1, 1, 1]  # one voxel further out on each side
    files = {
        "lesion": Volume(labels, ijk_to_ras), "brain": Volume(brain, ijk_to_ras),
        "brain_other_grid": Volume(np.pad(brain, 1), shifted), "empty": Volume(np.zeros(shape, np.uint8), ijk_to_ras),
        "outside": Volume(outside, ijk_to_ras), "labels5": Volume(np.where(labels == 2, 5, labels), ijk_to_ras),
        "recurrence_other_grid": Volume(np.pad(labels == 2, 1).astype(np.uint8), shifted),
    }
    for name, volume in files.items():
        write_volume(volume, folder / f"{name}.nii.gz")
    return folder


def _ctv(small, out, *extra, lesion="lesion", brain="brain"):
    return gliomaprog_in_process("ctv", "--lesion", small / f"{lesion}.nii.gz", "--brain", small / f"{brain}.nii.gz",
                      "--out", out, "--quiet", *extra)


def test_geodesic_option_and_scheme_list(small, tmp_path):
    result = _ctv(small, tmp_path / "g", "--scheme", "eortc,estro", "--geodesic", "--margin-mm", 10)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "g" / "ctv.json").read_text())
    assert [t["key"] for t in report["targets"]] == ["eortc", "estro"]
    assert report["parameters"]["geodesic"] and all("geodesic" in t["name"] for t in report["targets"])
    assert report["parameters"]["margins"]["eortc_mm"] == 10.0


@pytest.mark.slow
def test_other_grids_are_refused_unless_resampling_is_asked_for(small, tmp_path):
    refused = _ctv(small, tmp_path / "a", brain="brain_other_grid")
    assert_one_line_error(refused, "brain mask", "--resample")
    assert not (tmp_path / "a").exists()
    resampled = _ctv(small, tmp_path / "b", "--resample", "--scheme", "rtog", brain="brain_other_grid")
    assert resampled.returncode == 0, resampled.stderr
    recurrence = _ctv(small, tmp_path / "c", "--recurrence", small / "recurrence_other_grid.nii.gz")
    assert_one_line_error(recurrence, "recurrence", "--resample")


@pytest.mark.parametrize("arguments, fragments", [
    (dict(lesion="empty"), ["lesion", "empty"]),
    (dict(brain="outside"), ["inside the brain mask"]),
    (dict(lesion="labels5"), ["label values [5]", "BraTS"]),
    (dict(extra=("--margin-mm", "-5")), ["--margin-mm", "zero or positive"]),
    (dict(extra=("--scheme", "ai")), ["needs a predicted-progression"]),
    (dict(extra=("--scheme", "rtg")), ["Unknown scheme"]),
    (dict(extra=("--ptv-mm", "0")), ["--ptv-mm"]),
])
@pytest.mark.slow
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(small, tmp_path, arguments, fragments):
    out = tmp_path / "out"
    result = _ctv(small, out, *arguments.get("extra", ()), lesion=arguments.get("lesion", "lesion"),
                  brain=arguments.get("brain", "brain"))
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == [], "nothing written, no partial folder"


def test_an_existing_output_folder_is_never_overwritten(small, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_line_error(_ctv(small, tmp_path / "out"), "already exists")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_metrics_refuses_a_recurrence_on_another_grid(small):
    result = gliomaprog_in_process("metrics", "--target", small / "lesion.nii.gz", "--recurrence",
                        small / "recurrence_other_grid.nii.gz", "--brain", small / "brain.nii.gz")
    assert_one_line_error(result, "recurrence", "--resample")


@pytest.mark.parametrize("spelling", [
    ["--schemes", "eortc", "estro"], ["--schemes", "eortc,estro"], ["--schemes", "eortc", "--schemes", "estro"],
    ["--scheme", "eortc", "--scheme", "estro"], ["--scheme", "eortc,estro"],  # the older spelling still works
])
def test_ctv_and_run_take_the_schemes_the_same_way(spelling):
    from GliomaProgressionLib.cli.main import _build_parser
    from GliomaProgressionLib.cli.options import name_list

    parser = _build_parser()
    ctv = parser.parse_args(["ctv", "--lesion", "l", "--brain", "b", "--out", "o", *spelling])
    assert name_list(ctv.schemes) == ("eortc", "estro")
    if spelling[0] == "--schemes":
        run = parser.parse_args(["run", "case", "--out", "o", *spelling])
        assert name_list(run.schemes) == ("eortc", "estro")


@pytest.mark.slow
def test_the_schemes_help_lists_the_planners_schemes():
    from CTVPlannerLib.schemes import SCHEMES

    for command in ("ctv", "run"):
        result = gliomaprog_in_process(command, "--help")
        assert ", ".join(SCHEMES) in " ".join(result.stdout.split()), command
