"""Hostile and broken images (issue 18, items 4, 5 and 8): every image is checked where it is read
(``case.files.read_image``), so that no command gets a changed answer or library noise.

- NaN or infinity inside an image: the NIfTI library inside ITK reads them as 0 without a word, so the answer
  changed and the run ended with exit 0. Policy: refused, in one sentence naming the file and the count.
- An image with no signal (every voxel the same: all zero, saturated) ended in raw ITK text from registration;
  it is refused where the case is read, naming the series.
- Broken geometry (zero, negative or undefined voxel size, axes not at right angles, a 2-D image, an empty DICOM
  folder) and a failed write: one sentence each, and nothing from ITK, GDCM or the NIfTI library on stderr.

Most tests call the reader on tiny images; a few run the command line (in this process, ``_cli``, with ``capfd``
so that what C++ prints on the process's stderr is seen too).
"""

import shutil
import subprocess
import sys
import textwrap

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import assert_one_line_error

from GliomaProgressionLib.case import files
from GliomaProgressionLib.case.files import read_3d_volume, read_image, read_volume

SHAPE = (6, 7, 8)  # k, j, i
BLOCK = (slice(1, 3), slice(2, 4), slice(3, 5))  # 8 voxels


def _cli(capfd, *arguments) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` run by its ``main`` in this process; stderr as the file descriptor saw it."""
    from GliomaProgressionLib.cli.main import main

    code = main([str(argument) for argument in arguments])
    captured = capfd.readouterr()
    return subprocess.CompletedProcess(arguments, code, captured.out, captured.err)


def _signal(shape=SHAPE, dtype=np.float32) -> np.ndarray:
    return (100 + 50 * np.random.default_rng(18).random(shape)).astype(dtype)


def _write_sitk(array: np.ndarray, path, spacing=(2.0, 2.0, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    sitk.WriteImage(image, str(path), str(path).endswith(".gz"))
    return path


def _write_nifti_header(array: np.ndarray, path, pixdim, affine=None):
    """A NIfTI file whose header says exactly ``pixdim`` (nibabel would otherwise correct it on writing)."""
    image = nibabel.Nifti1Image(array, affine)
    image.header["pixdim"][1:1 + len(pixdim)] = pixdim
    if affine is None:
        image.header["qform_code"] = image.header["sform_code"] = 0  # the voxel size is pixdim, nothing else
    image.to_filename(str(path))
    return path


def _write_metaimage(array: np.ndarray, path, spacing: str, matrix: str = "1 0 0 0 1 0 0 0 1"):
    header = (f"ObjectType = Image\nNDims = 3\nTransformMatrix = {matrix}\nOffset = 0 0 0\n"
              f"ElementSpacing = {spacing}\nDimSize = {array.shape[2]} {array.shape[1]} {array.shape[0]}\n"
              "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + array.astype("<f4").tobytes())
    return path


def _write_nrrd(array: np.ndarray, path, directions: str):
    header = (f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}\nspace directions: {directions}\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + array.astype("<f4").tobytes())
    return path


def _write_2d_slice(path):
    """One slice saved with its volume's header: ITK warns "unexpected scales in sform" twice, then reads it."""
    affine = np.diag([2.0, 2.0, 2.4, 1.0])
    volume = nibabel.Nifti1Image(_signal(), affine)
    nibabel.save(nibabel.Nifti1Image(_signal((7, 8)), affine, volume.header.copy()), str(path))
    return path


def _one_sentence(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- item 5: NaN and infinity are refused on read, with the count ------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["NaN", "Inf", "-Inf"])
def test_a_non_finite_block_is_refused_naming_the_file_and_the_count(tmp_path, suffix, bad):
    """ITK's NIfTI reader turns them into 0 (the answer changed silently); NRRD and MetaImage keep them."""
    array = _signal()
    array[BLOCK] = bad
    path = _write_sitk(array, tmp_path / f"t1c{suffix}")
    with pytest.raises(ValueError) as error:
        read_image(path, "CE-T1")
    _one_sentence(error, "CE-T1", str(path), "8 of 336 voxels", "NaN or infinite")


def test_an_all_nan_image_is_refused(tmp_path):
    path = _write_sitk(np.full(SHAPE, np.nan, np.float32), tmp_path / "flair.nii.gz")
    with pytest.raises(ValueError) as error:
        read_image(path, "FLAIR")
    _one_sentence(error, str(path), "336 of 336 voxels")


def test_non_finite_values_in_float64_are_refused(tmp_path):
    array = _signal(dtype=np.float64)
    array[0, 0, 0] = np.nan
    path = tmp_path / "dsc.nii.gz"
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(path))
    with pytest.raises(ValueError) as error:
        read_image(path, "DSC series")
    _one_sentence(error, str(path), "1 of 336 voxels")


def test_the_count_is_right_when_the_data_spans_many_read_chunks(tmp_path, monkeypatch):
    """The NIfTI data are scanned in chunks while their length is checked; a chunk may split a voxel."""
    monkeypatch.setattr(files, "SCAN_CHUNK_BYTES", 1001)  # not a multiple of 4 or 8
    array = _signal((20, 21, 22))
    array[-1, -1, -1] = array[0, 0, 0] = array[10, 3, 7] = np.nan
    path = _write_sitk(array, tmp_path / "t1c.nii.gz")
    with pytest.raises(ValueError) as error:
        read_image(path, "CE-T1")
    _one_sentence(error, "3 of 9240 voxels")


def test_a_nan_in_the_lesion_is_refused(tmp_path):
    labels = np.zeros(SHAPE, np.float32)
    labels[BLOCK] = 2
    labels[0, 0, 0] = np.nan
    path = _write_sitk(labels, tmp_path / "lesion.nii.gz")
    with pytest.raises(ValueError) as error:
        read_3d_volume(path, "lesion")
    _one_sentence(error, "lesion", str(path), "1 of 336 voxels")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_finite_images_read_as_before(tmp_path, dtype):
    array = _signal(dtype=dtype)
    path = _write_sitk(array, tmp_path / "t1c.nii.gz")
    np.testing.assert_array_equal(read_volume(path, "CE-T1").array, array)


def test_metrics_refuses_a_nan_target(tmp_path, capfd):
    mask = np.zeros(SHAPE, np.float32)
    mask[BLOCK] = 1
    brain = _write_sitk(np.ones(SHAPE, np.uint8), tmp_path / "brain.nii.gz")
    recurrence = _write_sitk(mask.astype(np.uint8), tmp_path / "recurrence.nii.gz")
    mask[0, 0, 0] = np.nan
    target = _write_sitk(mask, tmp_path / "target.nii.gz")
    result = _cli(capfd, "metrics", "--target", target, "--recurrence", recurrence, "--brain", brain)
    assert_one_line_error(result, str(target), "1 of 336 voxels")


def test_cohort_evaluate_refuses_nan_predictions(tmp_path, capfd):
    truth, predictions = tmp_path / "truth", tmp_path / "predictions"
    truth.mkdir(), predictions.mkdir()
    mask = np.zeros(SHAPE, np.float32)
    mask[BLOCK] = 1
    _write_sitk(mask.astype(np.uint8), truth / "case1.nii.gz")
    mask[BLOCK] = np.nan
    _write_sitk(mask, predictions / "case1.nii.gz")
    result = _cli(capfd, "cohort", "evaluate", "--predictions", predictions, "--truth", truth, "--out",
                  tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(predictions / "case1.nii.gz"), "8 of 336 voxels")
    assert not (tmp_path / "out").exists()


def test_perfusion_refuses_an_infinite_block_in_the_dsc_series(tmp_path, capfd):
    array = _signal((12, 3, 6, 6))
    array[5:8, 1, 2:4, 2:4] = np.inf  # 12 voxels
    path = _write_sitk(array, tmp_path / "dsc.nii.gz", spacing=(2.0, 2.0, 4.0, 1.5))
    result = _cli(capfd, "perfusion", "--dsc", path, "--tr", "1.5", "--te", "0.03", "--out", tmp_path / "out",
                  "--quiet")
    assert_one_line_error(result, str(path), "12 of 1296 voxels")
    assert not (tmp_path / "out").exists()


def _case_copy(small_case_folder, tmp_path):
    return shutil.copytree(small_case_folder, tmp_path / "case")


def _replace_series(case, name: str, change, suffix: str = ".nii.gz"):
    """The series ``name`` of a case folder, changed by ``change(array)`` and written as ``name + suffix``."""
    image = sitk.ReadImage(str(case / f"{name}.nii.gz"))
    array = change(sitk.GetArrayFromImage(image).astype(np.float32))
    changed = sitk.GetImageFromArray(array, isVector=False)
    changed.CopyInformation(image)
    (case / f"{name}.nii.gz").unlink()
    sitk.WriteImage(changed, str(case / f"{name}{suffix}"), True)
    return case / f"{name}{suffix}"


def _with_block(value):
    def change(array):
        centre = tuple(n // 2 for n in array.shape[-3:])
        array[(...,) + tuple(slice(c - 2, c + 2) for c in centre)] = value
        return array
    return change


def test_run_refuses_a_nan_block_in_ce_t1_before_any_work(small_case_folder, tmp_path, capfd):
    """It used to run to the end (exit 0) with predicted progression changed from 9.1 to 3.4 mL."""
    case = _case_copy(small_case_folder, tmp_path)
    t1c = _replace_series(case, "t1c", _with_block(np.nan))
    result = _cli(capfd, "run", case, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(t1c), "64 of", "NaN or infinite")
    assert not (tmp_path / "out").exists()


# --- item 4: images without signal are refused where the case is read ----------------------------------------

NO_SIGNAL = {
    "CE-T1 all zero": ("t1c", ".nii.gz", lambda a: a * 0, ("CE-T1", "holds no signal", "every voxel is 0")),
    "CE-T1 saturated, NRRD": ("t1c", ".nrrd", lambda a: a * 0 + 4095, ("CE-T1", "every voxel is 4095")),
    "FLAIR all zero, NRRD": ("flair", ".nrrd", lambda a: a * 0, ("FLAIR", "every voxel is 0")),
    "FLAIR saturated": ("flair", ".nii.gz", lambda a: a * 0 + 32767, ("FLAIR", "every voxel is 32767")),
    "DSC all zero": ("dsc", ".nii.gz", lambda a: a * 0, ("DSC series", "every voxel is 0")),
    "DSC saturated, NRRD": ("dsc", ".nrrd", lambda a: a * 0 + 1000, ("DSC series", "every voxel is 1000")),
    "CE-T1 all NaN": ("t1c", ".nii.gz", lambda a: a * np.nan, ("CE-T1", "NaN or infinite")),
    "DSC all NaN, NRRD": ("dsc", ".nrrd", lambda a: a * np.nan, ("DSC series", "NaN or infinite")),
    "lesion all NaN": ("lesion", ".nii.gz", lambda a: a * np.nan, ("lesion", "NaN or infinite")),
    "lesion all zero": ("lesion", ".nii.gz", lambda a: a * 0, ("lesion", "is empty")),
    "brain mask all zero": ("brain", ".nii.gz", lambda a: a * 0, ("brain mask", "is empty")),
}


@pytest.mark.parametrize("name, suffix, change, fragments", NO_SIGNAL.values(), ids=NO_SIGNAL.keys())
def test_an_image_without_signal_is_refused_naming_the_series(small_case_folder, tmp_path, name, suffix, change,
                                                              fragments):
    from GliomaProgressionLib.case.folder import read_case

    case = _case_copy(small_case_folder, tmp_path)
    if name == "brain":
        shutil.copy(case / "truth" / "brain.nii.gz", case / "brain.nii.gz")
    path = _replace_series(case, name, change, suffix)
    with pytest.raises(ValueError) as error:
        read_case(case)
    _one_sentence(error, str(path), *fragments)


def test_run_refuses_an_all_zero_ce_t1_in_one_line(small_case_folder, tmp_path, capfd):
    """It ended with exit 1 and ITK's 'Total Mass of the image was zero' from the registration."""
    case = _case_copy(small_case_folder, tmp_path)
    t1c = _replace_series(case, "t1c", lambda a: a * 0)
    result = _cli(capfd, "run", case, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(t1c), "holds no signal (every voxel is 0)")


def test_preparing_a_case_refuses_an_image_without_signal():
    """``predict`` and the panel's job reach the preparation without the case reader: it checks too."""
    from GliomaProgressionLib.case.preprocess import prepare_case

    t1c = _write_volume_image(_signal((20, 20, 20)))
    flair = _write_volume_image(np.zeros((20, 20, 20), np.float32))
    lesion = _write_volume_image(np.full((20, 20, 20), 2, np.uint8))
    with pytest.raises(ValueError) as error:
        prepare_case(t1c, flair, lesion)
    _one_sentence(error, "The FLAIR", "holds no signal (every voxel is 0)")


def _write_volume_image(array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def test_a_registration_that_itk_cannot_do_is_one_sentence(monkeypatch):
    """Any ITK failure inside the registration (here made to happen) reaches the user as one sentence."""
    from GliomaProgressionLib.case import registration

    def itk_fails(*arguments):
        raise RuntimeError("Exception thrown in SimpleITK CenteredTransformInitializer: /build/itkImageMoments"
                           "Calculator.hxx:123:\nITK ERROR: ImageMomentsCalculator(0x55bb1e82e4f0): Compute(): Total "
                           "Mass of the image was zero.")

    monkeypatch.setattr(registration, "_registered", itk_fails)
    image = _write_volume_image(_signal((24, 24, 24)))
    with pytest.raises(ValueError) as error:
        registration.register_rigid(image, image, "FLAIR")
    message = _one_sentence(error, "The FLAIR could not be registered", "Total Mass of the image was zero")
    assert "0x55bb" not in message and "hxx" not in message


# --- item 8: geometry checked on read, each with its own sentence, and no library noise -----------------------

BROKEN_GEOMETRY = {
    "NIfTI zero voxel size": (lambda p: _write_nifti_header(_signal(), p / "t1c.nii.gz", [2.0, 0.0, 2.0]),
                              ("voxel size", "0")),
    "NIfTI negative voxel size": (lambda p: _write_nifti_header(_signal(), p / "t1c.nii.gz", [-2.0, 2.0, 2.0]),
                                  ("voxel size", "-2")),
    "NIfTI NaN voxel size": (lambda p: _write_nifti_header(_signal(), p / "t1c.nii", [2.0, np.nan, 2.0]),
                             ("voxel size", "nan")),
    "NIfTI sheared": (lambda p: nibabel.save(nibabel.Nifti1Image(_signal(), np.array(
        [[2, 1.5, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])), str(p / "t1c.nii.gz")) or p / "t1c.nii.gz",
        ("axes are not at right angles",)),
    "MetaImage zero spacing": (lambda p: _write_metaimage(_signal(), p / "t1c.mha", "2 0 2"), ("voxel size", "0")),
    "MetaImage negative spacing": (lambda p: _write_metaimage(_signal(), p / "t1c.mha", "-2 2 2"),
                                   ("voxel size", "-2")),
    "MetaImage sheared": (lambda p: _write_metaimage(_signal(), p / "t1c.mha", "2 2 2", "1 0 0 0.8 1 0 0 0 1"),
                          ("axes are not at right angles",)),
    "NRRD zero axis": (lambda p: _write_nrrd(_signal(), p / "t1c.nrrd", "(2,0,0) (0,0,0) (0,0,2)"),
                       ("voxel size", "0")),
    "NRRD sheared": (lambda p: _write_nrrd(_signal(), p / "t1c.nrrd", "(2,0,0) (1,2,0) (0,0,2)"),
                     ("axes are not at right angles",)),
}


@pytest.mark.parametrize("write, fragments", BROKEN_GEOMETRY.values(), ids=BROKEN_GEOMETRY.keys())
def test_broken_geometry_is_one_sentence_and_no_noise(tmp_path, capfd, write, fragments):
    """Before: ITK text, NIfTI warnings on stderr, or silently a voxel size of 1 mm (zero or negative became 1 or
    flipped the axis), later reported as 'does not overlap' or 'no non-enhancing part'."""
    path = write(tmp_path)
    capfd.readouterr()
    with pytest.raises(ValueError) as error:
        read_image(path, "CE-T1")
    _one_sentence(error, "CE-T1", str(path), *fragments)
    assert capfd.readouterr().err == ""


def test_a_2d_image_is_refused_without_noise(tmp_path, capfd):
    path = _write_2d_slice(tmp_path / "t1c.nii.gz")
    capfd.readouterr()
    with pytest.raises(ValueError) as error:
        files.read_3d_image(path, "CE-T1")
    _one_sentence(error, str(path), "must be a 3D image, it is 2D")
    assert capfd.readouterr().err == ""


def test_run_with_a_2d_ce_t1_is_one_line(small_case_folder, tmp_path, capfd):
    case = _case_copy(small_case_folder, tmp_path)
    (case / "t1c.nii.gz").unlink()
    _write_2d_slice(case / "t1c.nii.gz")
    result = _cli(capfd, "run", case, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(case / "t1c.nii.gz"), "must be a 3D image, it is 2D")


def test_run_with_a_zero_voxel_size_names_it(small_case_folder, tmp_path, capfd):
    """Zero spacing was read as 1 mm and reported as 'no non-enhancing part' (the lesion no longer fitted)."""
    case = _case_copy(small_case_folder, tmp_path)
    labels = np.asarray(nibabel.load(str(case / "lesion.nii.gz")).dataobj)
    (case / "lesion.nii.gz").unlink()
    _write_nifti_header(labels, case / "lesion.nii.gz", [2.0, 2.0, 0.0])
    result = _cli(capfd, "run", case, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, str(case / "lesion.nii.gz"), "voxel size")


@pytest.mark.parametrize("content", [None, b"not a DICOM file", bytes(range(256)) * 4], ids=["empty", "text", "junk"])
def test_a_dicom_folder_without_a_series_is_one_sentence_without_noise(tmp_path, capfd, content):
    from GliomaProgressionLib.case.folder import read_dicom_volume

    folder = tmp_path / "t1c"
    folder.mkdir()
    if content is not None:
        (folder / "IM0001.dcm").write_bytes(content)
    capfd.readouterr()
    with pytest.raises(ValueError) as error:
        read_dicom_volume(folder, "CE-T1")
    _one_sentence(error, str(folder), "holds no DICOM image series")
    assert capfd.readouterr().err == ""


WRITE_WITH_A_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np, SimpleITK as sitk
    from GliomaProgressionLib.case.files import write_image

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    image = sitk.GetImageFromArray(np.random.default_rng(1).random((40, 40, 40)).astype(np.float32))
    try:
        write_image(image, sys.argv[1])
    except ValueError as error:
        print(error)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
@pytest.mark.parametrize("name", ["ncbv.nii.gz", "ncbv.nii", "ncbv.nrrd"])
def test_a_write_that_fails_half_way_is_one_sentence_and_leaves_nothing(tmp_path, name):
    """The NIfTI writer only printed '** ERROR: NWAD: wrote only 0 of 256000 bytes' and returned: a truncated
    file was renamed into place as if complete."""
    result = subprocess.run([sys.executable, "-c", WRITE_WITH_A_FULL_DISK, str(tmp_path / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert str(tmp_path / name) in result.stdout and "could not be written" in result.stdout, result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
