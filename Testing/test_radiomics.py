"""``gliomaprog radiomics``: pyradiomics nCBV features per region on a small synthetic case (feature count from the
shipped YAML, determinism, a tiny region, a constant map, the ``gliomaprog run`` layout, one-line errors)."""

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from GliomaProgressionLib.cohort.radiomics_features import (default_settings_file, expected_feature_names, extract_cohort,
                                                     make_extractor)
from helpers import assert_one_line_error, gliomaprog_in_process

SHAPE = (20, 24, 24)  # k, j, i: small so that the wavelet extraction takes about a second per region


def _image(array, dtype):
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((-12.0, -12.0, -10.0))
    return image


def _write_case(folder, enhancing_voxels=None, constant=False, seed=0):
    """A sphere of enhancing tumour (label 3) inside a shell of non-enhancing lesion (label 2); nCBV raised in the
    enhancing part, with noise so that texture features have something to measure."""
    folder.mkdir(parents=True)
    k, j, i = np.indices(SHAPE)
    radius = np.sqrt((k - 10) ** 2 + (j - 12) ** 2 + (i - 12) ** 2)
    labels = np.zeros(SHAPE, np.uint8)
    labels[radius < 8] = 2
    labels[radius < 4] = 3
    if enhancing_voxels is not None:  # replace the enhancing sphere by a few voxels in a row
        labels[labels == 3] = 2
        labels[10, 12, 12:12 + enhancing_voxels] = 3
    rng = np.random.default_rng(seed)
    ncbv = np.full(SHAPE, 2.0) if constant else 1.0 + 0.3 * rng.standard_normal(SHAPE) + 2.0 * (labels == 3)
    sitk.WriteImage(_image(ncbv, np.float32), str(folder / "ncbv.nii.gz"))
    sitk.WriteImage(_image(labels, np.uint8), str(folder / "lesion.nii.gz"))
    return folder


def _read(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _features(row, region):
    skip = (f"{region}_voxels", f"{region}_warning")
    return {k: v for k, v in row.items() if k.startswith(f"{region}_") and k not in skip}


def _count_from_yaml():
    """The number of features per region the shipped YAML asks for, counted from the YAML and pyradiomics' class
    lists alone: shape once, every other class once per image (original + 8 wavelet bands)."""
    from radiomics import getFeatureClasses

    config = yaml.safe_load(default_settings_file().read_text())
    images = sum({"Original": 1, "Wavelet": 8}[name] for name in config["imageType"])
    classes = getFeatureClasses()
    per_class = {name: sum(not deprecated for deprecated in classes[name].getFeatureNames().values())
                 for name in config["featureClass"]}
    return per_class.pop("shape", 0) + images * sum(per_class.values())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("radiomics")
    _write_case(root / "cases" / "a", seed=1)
    _write_case(root / "cases" / "tiny", enhancing_voxels=3, seed=2)
    out = root / "features.csv"
    rows = extract_cohort([root / "cases" / "a", root / "cases" / "tiny"], out)
    return root, out, rows


def test_the_shipped_yaml_gives_the_seed_classes_and_851_features_per_region():
    config = yaml.safe_load(default_settings_file().read_text())
    assert set(config["featureClass"]) == {"shape", "firstorder", "glcm", "glszm", "glrlm", "ngtdm", "gldm"}
    assert set(config["imageType"]) == {"Original", "Wavelet"}
    assert config["setting"]["binWidth"] == 0.1
    assert _count_from_yaml() == 851 == len(expected_feature_names(make_extractor()))


def test_feature_count_per_region_matches_the_yaml_and_every_value_is_computed(cohort):
    _, out, _ = cohort
    row = _read(out)[0]
    for region in ("enhancing", "nonenhancing"):
        features = _features(row, region)
        assert len(features) == _count_from_yaml()
        assert row[f"{region}_warning"] == ""
        assert all(math.isfinite(float(value)) for value in features.values()), region
    k, j, i = np.indices(SHAPE)
    assert int(row["enhancing_voxels"]) == int(np.sum((k - 10) ** 2 + (j - 12) ** 2 + (i - 12) ** 2 < 16))


def test_features_describe_the_map(cohort):
    row = _read(cohort[1])[0]
    # The enhancing region's nCBV was raised by 2: its mean is about 3, the non-enhancing one's about 1.
    assert float(row["enhancing_original_firstorder_Mean"]) == pytest.approx(3.0, abs=0.15)
    assert float(row["nonenhancing_original_firstorder_Mean"]) == pytest.approx(1.0, abs=0.1)
    assert float(row["enhancing_original_shape_VoxelVolume"]) == float(row["enhancing_voxels"])  # 1 mm voxels


def test_extraction_is_deterministic(cohort, tmp_path):
    root, out, _ = cohort
    again = tmp_path / "again.csv"
    extract_cohort([root / "cases" / "a", root / "cases" / "tiny"], again)
    first, second = _read(out), _read(again)
    for a, b in zip(first, second):
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_a_tiny_region_gets_nan_features_and_a_warning_not_a_crash(cohort):
    row = _read(cohort[1])[1]
    assert row["case"] == "tiny" and row["enhancing_voxels"] == "3"
    assert "fewer than 8" in row["enhancing_warning"]
    assert all(value == "nan" for value in _features(row, "enhancing").values())
    assert row["nonenhancing_warning"] == ""
    assert math.isfinite(float(row["nonenhancing_original_firstorder_Mean"]))


def test_a_constant_map_is_handled(tmp_path):
    _write_case(tmp_path / "flat", constant=True)
    rows = extract_cohort([tmp_path / "flat"], tmp_path / "flat.csv")
    assert rows[0]["enhancing_original_firstorder_Mean"] == pytest.approx(2.0)
    assert rows[0]["enhancing_original_firstorder_Variance"] == pytest.approx(0.0)
    assert rows[0]["enhancing_warning"] == ""


@pytest.mark.slow
def test_cli_reads_a_cohort_in_the_run_layout(tmp_path):
    """``gliomaprog run`` writes ncbv and lesion into OUT/registered/: a cohort of run outputs is accepted."""
    case = tmp_path / "cohort" / "patient7"
    _write_case(case / "registered", seed=3)
    out = tmp_path / "cohort.csv"
    result = gliomaprog_in_process("radiomics", "extract", "--cohort", tmp_path / "cohort", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    rows = _read(out)
    assert [row["case"] for row in rows] == ["patient7"] and float(rows[0]["seconds"]) > 0
    assert "1 case(s)" in result.stdout


@pytest.mark.parametrize("problem, fragment", [("missing", "holds no ncbv and lesion"),
                                               ("grid", "not on the same grid"), ("exists", "already exists")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, problem, fragment):
    case = _write_case(tmp_path / "case")
    out = tmp_path / "out.csv"
    if problem == "missing":
        (case / "ncbv.nii.gz").unlink()
    elif problem == "grid":
        image = sitk.ReadImage(str(case / "ncbv.nii.gz"))
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(case / "ncbv.nii.gz"))
    else:
        out.write_text("keep me")
    result = gliomaprog_in_process("radiomics", "extract", "--case-dir", case, "--out", out, "--quiet")
    assert_one_line_error(result, fragment)
    assert (out.read_text() == "keep me") if problem == "exists" else not out.exists()
    assert not list(tmp_path.glob(".out.csv*"))
