"""``gliomaprog cohort export``: phantom case folders -> a valid nnU-Net v2 raw dataset with QC and split."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_writing import write_dicom_dsc, write_dicom_series
from helpers import crop_case_to_lesion
from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.cohort import export as cohort_export
from GliomaProgressionLib.cohort.replicate import write_phantom_case

POSITIVE, NEGATIVE = 3000, 3003  # cohort_config: seed % 4 == 3 is a case without progression


def _slab(case, folder):
    """The phantom case folder cut to the slices within 15 mm of its lesion, each series by its own grid: what
    these tests check (layout, labels, QC, the DICOM twin) does not need the whole head, and half the slices
    halve the DICOM files and the registrations."""
    crop_case_to_lesion(shutil.copytree(case, folder), slab_mm=0.0, margin_mm=15.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two good cases, a case without DSC and a case with a truncated CE-T1, with indices for a temporal split."""
    folder = tmp_path_factory.mktemp("cohort")
    whole = tmp_path_factory.mktemp("whole")
    for seed, index in ((POSITIVE, 0), (NEGATIVE, 4)):
        write_phantom_case((seed, index, str(whole)))
        _slab(whole / f"case_{seed:04d}", folder / f"case_{seed:04d}")
    no_dsc = shutil.copytree(folder / f"case_{POSITIVE:04d}", folder / "case_nodsc")
    (no_dsc / "dsc.nii.gz").unlink()
    (no_dsc / "case.json").write_text(json.dumps({"index": 1}))
    broken = shutil.copytree(folder / f"case_{POSITIVE:04d}", folder / "case_broken")
    data = (broken / "t1c.nii.gz").read_bytes()
    (broken / "t1c.nii.gz").write_bytes(data[: len(data) // 3])
    (broken / "case.json").write_text(json.dumps({"index": 2}))
    return folder


@pytest.fixture(scope="module")
def exported(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "Dataset901_Test"
    code = cli.main(["cohort", "export", str(cohort), "--out", str(out), "--dataset-id", "901", "--channels",
                     "multiparametric", "--split", "temporal", "--test-fraction", "0.25", "--spacing-mm", "2",
                     "--quiet"])
    assert code == 0
    return out


@pytest.mark.slow
def test_dataset_layout_and_json(exported):
    dataset = json.loads((exported / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CE-T1", "1": "FLAIR", "2": "nCBV"}
    assert dataset["labels"] == {"background": 0, "progression": 1}
    assert dataset["numTraining"] == 1 and dataset["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (exported / "imagesTr").iterdir()) == [
        f"case_{POSITIVE:04d}_{i:04d}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (exported / "imagesTs").iterdir()) == [
        f"case_{NEGATIVE:04d}_{i:04d}.nii.gz" for i in range(3)]
    assert [p.name for p in (exported / "labelsTs").iterdir()] == [f"case_{NEGATIVE:04d}.nii.gz"]
    image = sitk.ReadImage(str(exported / "imagesTr" / f"case_{POSITIVE:04d}_0002.nii.gz"))
    assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))


@pytest.mark.slow
def test_labels_positive_inside_nel_and_negative_empty(exported):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "labelsTr" / f"case_{POSITIVE:04d}.nii.gz")))
    nel = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "nelTr" / f"case_{POSITIVE:04d}.nii.gz")))
    assert label.sum() > 50 and not (label.astype(bool) & ~nel.astype(bool)).any()
    negative = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "labelsTs" / f"case_{NEGATIVE:04d}.nii.gz")))
    assert negative.sum() == 0


@pytest.mark.slow
def test_failed_cases_are_in_qc_and_split_but_not_in_the_dataset(exported):
    with open(exported / "qc.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {f"case_{POSITIVE:04d}", f"case_{NEGATIVE:04d}", "case_nodsc", "case_broken"}
    assert rows["case_nodsc"]["status"] == "failed" and "has no DSC series" in rows["case_nodsc"]["error"]
    assert rows["case_broken"]["status"] == "failed" and rows["case_broken"]["error"]
    good = rows[f"case_{POSITIVE:04d}"]
    assert good["status"] == "ok" and good["positive"] == "1" and int(good["nawm_voxels"]) > 100
    assert float(good["flair_mattes_mi"]) < -0.2 and float(good["dsc_mattes_mi"]) < -0.2
    split = json.loads((exported / "split.json").read_text())
    assert split["train"] == [f"case_{POSITIVE:04d}"] and split["test"] == [f"case_{NEGATIVE:04d}"]
    assert sorted(split["failed"]) == ["case_broken", "case_nodsc"]
    written = [path.name for path in exported.glob("*/*.nii.gz")]
    assert written and not [name for name in written if name.startswith(("case_nodsc", "case_broken"))]


@pytest.mark.slow
def test_nnunet_verifies_the_dataset(exported, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    copy = shutil.copytree(exported, tmp_path / exported.name)
    verify_dataset_integrity(str(copy), num_processes=1)  # raises on any inconsistency
    (copy / "labelsTr" / f"case_{POSITIVE:04d}.nii.gz").unlink()
    with pytest.raises(AssertionError, match=f"label file in labelsTr.*case_{POSITIVE:04d}"):
        verify_dataset_integrity(str(copy), num_processes=1)


def test_temporal_split_without_dates_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "cohort" / "case_a"
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(folder / "t1c.nii.gz"))
    out = tmp_path / "out"
    code = cli.main(["cohort", "export", str(tmp_path / "cohort"), "--out", str(out), "--dataset-id", "5",
                     "--channels", "conventional", "--split", "temporal", "--test-fraction", "0.5"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "date" in error
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_split_rules():
    names = ["a", "b", "c", "d"]
    orders = {"a": "date:2021-05-01", "b": "date:2019-01-01", "c": "date:2022-01-01", "d": "date:2020-01-01"}
    assert cohort_export.split_cases(names, orders, "temporal", 0.5, 0) == {
        "a": "test", "b": "train", "c": "test", "d": "train"}
    first = cohort_export.split_cases(names, {}, "random", 0.25, 7)
    assert first == cohort_export.split_cases(names, {}, "random", 0.25, 7)
    assert sorted(first.values()) == ["test", "train", "train", "train"]
    with pytest.raises(ValueError):
        cohort_export.split_cases(names, {}, "random", 1.0, 0)
    assert np.all([value == "train" for value in cohort_export.split_cases(names, {}, "random", 0.0, 0).values()])
    with pytest.raises(ValueError, match="leaves no training case"):
        cohort_export.split_cases(names, {}, "random", 0.9, 0)  # 3.6 of 4 rounds to 4
    with pytest.raises(ValueError, match="one kind of order"):
        cohort_export.split_cases(names, {**orders, "d": "index:000000000001"}, "temporal", 0.5, 0)


@pytest.mark.parametrize("content, expected", [
    ('{"date": "2021-03-04"}', "date:2021-03-04"), ('{"date": "2021-03-04T10:00:00"}', "date:2021-03-04"),
    ('{"index": 7}', "index:000000000007"), ('{"seed": 1}', None), ('{"index": null}', None)])
def test_case_order_reads_dates_and_indices(tmp_path, content, expected):
    (tmp_path / "case.json").write_text(content)
    assert cohort_export.case_order(tmp_path) == expected


@pytest.mark.parametrize("content, fragment", [
    ('{"date": "04/03/2021"}', "ISO date"), ('{"index": "7"}', "whole number"), ('{"index": -1}', "whole number"),
    ('{"index": true}', "whole number"), ('[1, 2]', "JSON object"), ('{"index": ', "not valid JSON")])
def test_case_order_refuses_what_it_cannot_sort_in_one_sentence(tmp_path, content, fragment):
    (tmp_path / "case.json").write_text(content)
    with pytest.raises(ValueError, match=fragment) as error:
        cohort_export.case_order(tmp_path)
    assert str(tmp_path / "case.json") in str(error.value) and len(str(error.value).splitlines()) == 1


@pytest.mark.slow
def test_dicom_case_exports_the_same_dataset_as_its_nifti_twin(cohort, exported, tmp_path):
    """CE-T1, FLAIR and DSC as DICOM folders (TR and TE from the headers, no dsc.json) give the same channels as
    the NIfTI case they were written from (exported by the module's fixture with the same settings)."""
    source = cohort / f"case_{POSITIVE:04d}"
    dicom = tmp_path / "cohort" / "dicom"
    dicom.mkdir(parents=True)
    for name in ("lesion", "progression"):
        shutil.copy(source / f"{name}.nii.gz", dicom / f"{name}.nii.gz")
    for index, name in enumerate(("t1c", "flair")):
        write_dicom_series(sitk.ReadImage(str(source / f"{name}.nii.gz")), dicom / name,
                           series_uid=f"1.2.826.0.1.3680043.8.498.7{index}")
    write_dicom_dsc(sitk.ReadImage(str(source / "dsc.nii.gz")), dicom / "dsc", tr_ms=1500, te_ms=30)
    out = tmp_path / "Dataset903_Dicom"
    cohort_export.export_cohort(dicom.parent, out, 903, "multiparametric", spacing_mm=2.0)
    with open(out / "qc.csv", newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok"]
    for channel in range(3):
        nifti = sitk.ReadImage(str(exported / "imagesTr" / f"case_{POSITIVE:04d}_{channel:04d}.nii.gz"))
        dicom_image = sitk.ReadImage(str(out / "imagesTr" / f"dicom_{channel:04d}.nii.gz"))
        assert dicom_image.GetOrigin() == pytest.approx(nifti.GetOrigin(), abs=1e-3)
        assert dicom_image.GetDirection() == pytest.approx(nifti.GetDirection(), abs=1e-5)
        reference = sitk.GetArrayFromImage(nifti).astype(float)
        difference = np.abs(sitk.GetArrayFromImage(dicom_image) - reference) / np.abs(reference).max()
        if channel == 0:  # CE-T1 is only resampled: the same voxels
            assert (difference > 1e-3).sum() <= 1e-4 * difference.size
        else:
            # DICOM stores positions to 1e-6 mm; FLAIR and the DSC are registered, and the optimiser's path ends
            # within hundredths of a mm of the NIfTI twin's pose: the same image but for interpolation at edges.
            assert difference.mean() < 2e-4 and np.percentile(difference, 99.9) < 5e-3
            assert np.corrcoef(reference.ravel(), sitk.GetArrayFromImage(dicom_image).ravel())[0, 1] > 0.9999
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in
              (exported / "labelsTr" / f"case_{POSITIVE:04d}.nii.gz", out / "labelsTr" / "dicom.nii.gz")]
    # The label is kept inside the brain carried from the DSC grid by its registration: a voxel or two at its edge.
    assert labels[0].sum() > 50 and np.sum(labels[0] != labels[1]) <= 0.005 * labels[0].sum()


@pytest.mark.slow
def test_conventional_export_neither_needs_nor_reads_the_dsc(cohort, tmp_path):
    # A case with its DSC, the same case without and the broken one: the negative case would only repeat the first.
    subset = tmp_path / "cohort"
    for name in (f"case_{POSITIVE:04d}", "case_nodsc", "case_broken"):
        shutil.copytree(cohort / name, subset / name, copy_function=os.link)
    out = tmp_path / "Dataset905_Conventional"
    summary = cohort_export.export_cohort(subset, out, 905, "conventional", spacing_mm=2.0)
    with open(out / "qc.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {f"case_{POSITIVE:04d}", "case_nodsc", "case_broken"}
    assert rows["case_nodsc"]["status"] == "ok" and summary["failed"] == ["case_broken"]
    assert rows[f"case_{POSITIVE:04d}"]["status"] == "ok"
    assert all(row["dsc_mattes_mi"] == "" and row["nawm_voxels"] == "" for row in rows.values())
    assert sorted(p.name for p in (out / "imagesTr").glob("case_nodsc_*")) == ["case_nodsc_0000.nii.gz",
                                                                               "case_nodsc_0001.nii.gz"]
