"""Hostile and broken model packages (issue 18, item 2 and two cases of item 11): plans that inherit in a cycle or
from a configuration that is not there, plans and dataset.json of the wrong shape, archives that try to write
elsewhere or claim too much, and a model cache that cannot be written. Each must end in one sentence naming the
package and what is wrong (exit 2 from the command line), with nothing left in the model cache.

Every package is the shipped conventional demo package, re-zipped with one thing changed: no nnU-Net runs. The
command line runs in this process (``_cli``) except where the old code looped forever: there a child process with
a timeout.
"""

import errno
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from helpers import assert_one_line_error, crop_case_to_lesion, gliomaprog

from GliomaProgressionLib.models import packages

SHIPPED = packages.resources_folder() / "models" / "conventional.zip"
CONFIGURATION = "3d_fullres"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GLIOMAPROG_MODELS_DIR", str(folder))
    return folder


def _cli(capsys, *arguments) -> subprocess.CompletedProcess:
    """``gliomaprog ARGUMENTS`` run by its ``main`` in this process, in the shape ``assert_one_line_error`` reads."""
    from GliomaProgressionLib.cli.main import main

    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, code, captured.out, captured.err)


def _shipped_document(name: str):
    with zipfile.ZipFile(SHIPPED) as archive:
        return json.loads(archive.read(name))


def _package(tmp_path, name="broken", replace: dict | None = None, extra: dict | None = None) -> Path:
    """The shipped conventional package zipped anew as ``name.zip``: members in ``replace`` get new contents (JSON
    for anything but bytes), ``extra`` members are added."""
    target = tmp_path / f"{name}.zip"
    replace = replace or {}
    with zipfile.ZipFile(SHIPPED) as source, zipfile.ZipFile(target, "w") as archive:
        for member in source.infolist():
            data = replace.get(member.filename, source.read(member))
            archive.writestr(member.filename, data if isinstance(data, bytes) else json.dumps(data))
        for member, data in (extra or {}).items():
            archive.writestr(member, data if isinstance(data, bytes) else json.dumps(data))
    return target


def _nothing_installed(cache: Path) -> bool:
    return not cache.exists() or not any(cache.iterdir())


def _refused(package: Path, *fragments: str) -> str:
    """Installing ``package`` fails with one sentence naming it and holding every fragment; the message."""
    with pytest.raises(ValueError) as error:
        packages.install_package(package)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    assert package.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- plans that inherit in a cycle: the old code looped forever (item 2) -----------------------------------------


def _cyclic_plans(length: int) -> dict:
    """The shipped plans with 3d_fullres inheriting from itself (length 1) or through another configuration."""
    plans = _shipped_document("plans.json")
    configurations = plans["configurations"]
    if length == 1:
        configurations[CONFIGURATION]["inherits_from"] = CONFIGURATION
    else:
        configurations["3d_lowres"] = {"inherits_from": CONFIGURATION, "batch_size": 4}
        configurations[CONFIGURATION]["inherits_from"] = "3d_lowres"
    return plans


@pytest.mark.parametrize("length", [1, 2], ids=["a-a", "a-b-a"])
def test_install_refuses_cyclic_plans_without_looping(tmp_path, length):
    cache = tmp_path / "cache"
    package = _package(tmp_path, f"cycle{length}", {"plans.json": _cyclic_plans(length)})
    environment = {**os.environ, "GLIOMAPROG_MODELS_DIR": str(cache)}
    result = gliomaprog("models", "install", package, timeout=30, env=environment)
    assert_one_line_error(result, package.name, "cycle", "'3d_fullres'")
    assert _nothing_installed(cache)


def test_predict_refuses_cyclic_plans_without_looping(tmp_path):
    cache = tmp_path / "cache"
    package = _package(tmp_path, "cycle", {"plans.json": _cyclic_plans(2)})
    environment = {**os.environ, "GLIOMAPROG_MODELS_DIR": str(cache)}
    missing = tmp_path / "no-such-image.nii.gz"  # the model is checked before any image is read
    result = gliomaprog("predict", "--t1c", missing, "--flair", missing, "--lesion", missing, "--model", package,
                        "--out", tmp_path / "predicted", "--quiet", timeout=30, env=environment)
    assert_one_line_error(result, package.name, "cycle")
    assert _nothing_installed(cache) and not (tmp_path / "predicted").exists()


def test_run_refuses_cyclic_plans_of_a_real_case(tmp_path, small_case_folder):
    cache = tmp_path / "cache"
    package = _package(tmp_path, "cycle", {"plans.json": _cyclic_plans(1)})
    environment = {**os.environ, "GLIOMAPROG_MODELS_DIR": str(cache)}
    case = shutil.copytree(small_case_folder, tmp_path / "case", ignore=shutil.ignore_patterns("truth"))
    crop_case_to_lesion(case)  # the lesion and its surroundings are what the run reads before the model
    result = gliomaprog("run", case, "--model", package, "--out", tmp_path / "run", "--quiet",
                        "--no-habitats", timeout=60, env=environment)  # refused at prediction: habitats are not it
    assert_one_line_error(result, package.name, "cycle", after_progress=True)
    assert _nothing_installed(cache) and not (tmp_path / "run").exists()


# --- plans of the wrong shape (item 2) ---------------------------------------------------------------------------


def _changed_plans(change) -> dict:
    plans = _shipped_document("plans.json")
    return change(plans) or plans


def _configuration(plans) -> dict:
    return plans["configurations"][CONFIGURATION]


def _architecture(plans) -> dict:
    return _configuration(plans)["architecture"]


def _set(where, key, value):
    """A change for ``_changed_plans``: ``where(plans)[key] = value``."""
    def change(plans):
        where(plans)[key] = value
    return change


def _delete(where, key):
    def change(plans):
        del where(plans)[key]
    return change


BROKEN_PLANS = {  # id: (change of the shipped plans, what the message must hold)
    "plans-a-list": (lambda plans: [plans], "a list"),
    "configurations-a-list": (lambda plans: {**plans, "configurations": [CONFIGURATION]}, "configurations"),
    "no-configurations": (lambda plans: {**plans, "configurations": {}}, "no configuration"),
    "configuration-text": (_set(lambda p: p["configurations"], CONFIGURATION, "fast"), "'3d_fullres'"),
    "parent-missing": (_set(_configuration, "inherits_from", "3d_nowhere"), "'3d_nowhere'"),
    "parent-a-number": (_set(_configuration, "inherits_from", 5), "inherits_from"),
    "architecture-text": (_set(_configuration, "architecture", "PlainConvUNet"), "architecture"),
    "arch-kwargs-missing": (_delete(_architecture, "arch_kwargs"), "arch_kwargs"),
    "arch-kwargs-a-list": (_set(_architecture, "arch_kwargs", [1, 2]), "arch_kwargs"),
    "network-class-a-number": (_set(_architecture, "network_class_name", 7), "network class"),
    "imports-text": (_set(_architecture, "_kw_requires_import", "conv_op"), "_kw_requires_import"),
    "patch-size-text": (_set(_configuration, "patch_size", "48x48x48"), "patch_size"),
    "patch-size-4d": (_set(_configuration, "patch_size", [48, 48, 48, 48]), "patch_size"),
    "patch-size-negative": (_set(_configuration, "patch_size", [48, -48, 48]), "patch_size"),
    "spacing-2d": (_set(_configuration, "spacing", [2.0, 2.0]), "spacing"),
    "spacing-zero": (_set(_configuration, "spacing", [2.0, 0, 2.0]), "spacing"),
    "normalisation-one-of-two": (_set(_configuration, "normalization_schemes", ["ZScoreNormalization"]),
                                 "normalization_schemes"),
    "normalisation-unknown": (_set(_configuration, "normalization_schemes", ["os.system", "ZScoreNormalization"]),
                              "'os.system'"),
    "normalisation-a-list": (_set(_configuration, "normalization_schemes", [["ZScoreNormalization"], {}]),
                             "normalisation"),
    "preprocessor-a-list": (_set(_configuration, "preprocessor_name", ["DefaultPreprocessor"]), "preprocessor"),
    "reader-an-object": (_set(lambda p: p, "image_reader_writer", {"SimpleITKIO": 1}), "image reader"),
    "mask-for-norm-text": (_set(_configuration, "use_mask_for_norm", "no"), "use_mask_for_norm"),
    "resampling-unknown": (_set(_configuration, "resampling_fn_data", "os.system"), "resampling_fn_data"),
    "resampling-kwargs-list": (_set(_configuration, "resampling_fn_seg_kwargs", [1]), "resampling_fn_seg_kwargs"),
    "transpose-not-a-permutation": (_set(lambda p: p, "transpose_forward", [0, 0, 1]), "transpose_forward"),
    "intensities-missing-channel": (_delete(lambda p: p["foreground_intensity_properties_per_channel"], "1"),
                                    "foreground_intensity_properties_per_channel"),
    "label-manager-unknown": (_set(lambda p: p, "label_manager", "EvilManager"), "label_manager"),
    "label-manager-a-list": (_set(lambda p: p, "label_manager", ["LabelManager"]), "label_manager"),
    "resampling-an-object": (_set(_configuration, "resampling_fn_probabilities", {"name": "x"}),
                             "resampling_fn_probabilities"),
    "stages-huge": (_set(lambda p: _architecture(p)["arch_kwargs"], "n_stages", 10 ** 6), "n_stages"),
    "kernel-sizes-text": (_set(lambda p: _architecture(p)["arch_kwargs"], "kernel_sizes", "3"), "network"),
    "checkpoint-does-not-fit": (_set(lambda p: _architecture(p)["arch_kwargs"], "features_per_stage",
                                     [8, 16, 32, 32]), "does not fit"),
}


@pytest.mark.parametrize("case", BROKEN_PLANS, ids=list(BROKEN_PLANS))
def test_install_refuses_plans_of_the_wrong_shape(cache, tmp_path, case):
    change, fragment = BROKEN_PLANS[case]
    package = _package(tmp_path, case, {"plans.json": _changed_plans(change)})
    _refused(package, fragment)
    assert _nothing_installed(cache)


@pytest.mark.parametrize("content, fragment", [(b"\xff\xfe{}", "UTF-8"), (b'{"configurations": ', "JSON"),
                                               (b"[" * 100000, "JSON")], ids=["not-utf8", "cut-short", "deep"])
def test_install_refuses_unreadable_plans(cache, tmp_path, content, fragment):
    package = _package(tmp_path, "unreadable", {"plans.json": content})
    _refused(package, "plans.json", fragment)
    assert _nothing_installed(cache)


def test_command_line_names_package_and_problem_of_broken_plans(cache, tmp_path, capsys):
    for name, plans, fragment in [("listed", [_shipped_document("plans.json")], "a list"),
                                  ("orphan", _changed_plans(_set(_configuration, "inherits_from", "3d_nowhere")),
                                   "'3d_nowhere'")]:
        package = _package(tmp_path, name, {"plans.json": plans})
        assert_one_line_error(_cli(capsys, "models", "install", package), package.name, "plans.json", fragment)
    assert _nothing_installed(cache)


def test_folder_package_with_cyclic_plans_is_refused_in_place(tmp_path):
    folder = tmp_path / "folder"
    with zipfile.ZipFile(_package(tmp_path, "cycle", {"plans.json": _cyclic_plans(2)})) as archive:
        archive.extractall(folder)
    environment = {**os.environ, "GLIOMAPROG_MODELS_DIR": str(tmp_path / "cache")}
    result = gliomaprog("models", "install", folder, timeout=30, env=environment)
    assert_one_line_error(result, str(folder), "cycle")


# --- dataset.json and gliomaprog.json of the wrong shape (item 2, item 11) -----------------------------------------


def _changed_dataset(**fields) -> dict:
    dataset = _shipped_document("dataset.json")
    dataset.update(fields)
    return {key: value for key, value in dataset.items() if value is not None}


BROKEN_DATASETS = {  # id: (dataset.json, what the message must hold)
    "channel-key-text": (_changed_dataset(channel_names={"t1": "CE-T1", "flair": "FLAIR"}), "'t1'"),
    "channel-keys-gap": (_changed_dataset(channel_names={"0": "CE-T1", "2": "FLAIR"}), "channel_names"),
    "channel-key-superscript": (_changed_dataset(channel_names={"0": "CE-T1", "\u00b9": "FLAIR"}), "channel"),
    "channel-names-list": (_changed_dataset(channel_names=["CE-T1", "FLAIR"]), "channel_names"),
    "channel-name-number": (_changed_dataset(channel_names={"0": "CE-T1", "1": 5}), "channel_names"),
    "no-channel-names": (_changed_dataset(channel_names=None), "channel_names"),
    "label-value-text": (_changed_dataset(labels={"background": 0, "progression": "one"}), "labels"),
    "label-no-background": (_changed_dataset(labels={"progression": 1}), "background"),
    "label-regions": (_changed_dataset(labels={"background": 0, "progression": [1]}), "labels"),
    "labels-a-list": (_changed_dataset(labels=["background", "progression"]), "labels"),
    "dataset-a-list": ([1, 2], "a list"),
}


@pytest.mark.parametrize("case", BROKEN_DATASETS, ids=list(BROKEN_DATASETS))
def test_install_refuses_dataset_json_of_the_wrong_shape(cache, tmp_path, case):
    dataset, fragment = BROKEN_DATASETS[case]
    package = _package(tmp_path, case, {"dataset.json": dataset})
    _refused(package, "dataset.json", fragment)
    assert _nothing_installed(cache)


def test_command_line_names_a_channel_key_that_is_not_a_number(cache, tmp_path, capsys):
    package = _package(tmp_path, "keys", {"dataset.json": BROKEN_DATASETS["channel-key-text"][0]})
    result = _cli(capsys, "models", "install", package)
    assert_one_line_error(result, package.name, "dataset.json", "'t1'")
    assert "invalid literal" not in result.stderr
    assert _nothing_installed(cache)


@pytest.mark.parametrize("meta, fragment", [([1], "a list"), ({"folds": "0"}, "folds"),
                                            ({"folds": [0, 7]}, "fold"),
                                            ({"channels": [{"nom": "t1c"}, {"nom": "flair"}]}, "channels"),
                                            ({"configuration": ["3d_fullres"]}, "configuration")],
                         ids=["a-list", "folds-text", "fold-missing", "channel-without-name", "configuration-list"])
def test_install_refuses_gliomaprog_json_of_the_wrong_shape(cache, tmp_path, meta, fragment):
    package = _package(tmp_path, "meta", extra={"gliomaprog.json": meta})
    _refused(package, fragment)
    assert _nothing_installed(cache)


def _saved(checkpoint) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("checkpoint, fragment", [(b"not a checkpoint", "damaged"),
                                                  ({"network_weights": 5}, "no network_weights")],
                         ids=["garbage", "weights-not-a-dict"])
def test_install_names_the_package_of_a_broken_checkpoint(cache, tmp_path, checkpoint, fragment):
    content = checkpoint if isinstance(checkpoint, bytes) else _saved(checkpoint)
    package = _package(tmp_path, "checkpoint", {"fold_0/checkpoint_final.pth": content})
    message = _refused(package, "fold_0/checkpoint_final.pth", fragment)
    assert ".partial-" not in message  # the package, not the staging folder it was unpacked into
    assert _nothing_installed(cache)


# --- archives (item 2) ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's own warning while the test writes the archive
def test_archive_with_a_member_twice_is_refused(cache, tmp_path):
    second = _changed_dataset(channel_names={"0": "CE-T1", "1": "FLAIR", "2": "nCBV"})  # which one would count?
    package = _package(tmp_path, "twice", extra={"dataset.json": second})
    _refused(package, "'dataset.json'", "twice")
    assert _nothing_installed(cache)


def test_archive_with_an_encrypted_member_is_refused(cache, tmp_path):
    package = _package(tmp_path, "locked")
    data = bytearray(package.read_bytes())
    # MODEL_CARD.txt's entry in the central directory (at the end: the checkpoint is itself a zip), flag bits at 8
    entry = data.rfind(b"PK\x01\x02", 0, data.rfind(b"MODEL_CARD.txt"))
    data[entry + 8] |= 0x1  # "encrypted": zipfile writes no encrypted archives, so the bit is set by hand
    package.write_bytes(bytes(data))
    _refused(package, "encrypted", "'MODEL_CARD.txt'")
    assert _nothing_installed(cache)


@pytest.mark.parametrize("member", ["../evil.txt", "fold_0/../../evil.txt", "/evil.txt"])
def test_command_line_refuses_an_archive_that_writes_elsewhere(cache, tmp_path, capsys, member):
    package = _package(tmp_path, "escape", extra={member: b"pwned"})
    assert_one_line_error(_cli(capsys, "models", "install", package), package.name, repr(member))
    assert _nothing_installed(cache) and not (tmp_path / "evil.txt").exists()


def test_archive_with_a_symbolic_link_is_refused(cache, tmp_path):
    package = _package(tmp_path, "link")
    with zipfile.ZipFile(package, "a") as archive:
        link = zipfile.ZipInfo("fold_0/checkpoint_best.pth")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    _refused(package, "symbolic link")
    assert _nothing_installed(cache)


def test_archive_that_claims_too_much_is_refused(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "MAX_UNCOMPRESSED_BYTES", 100_000)  # the shipped package unpacks to 0.7 MB
    _refused(_package(tmp_path, "huge"), "refusing to unpack")
    assert _nothing_installed(cache)


def test_not_a_zip_is_refused(cache, tmp_path, capsys):
    package = tmp_path / "model.zip"
    package.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(_cli(capsys, "models", "install", package), package.name, "not a valid zip")
    assert _nothing_installed(cache)


# --- the model cache: full, not writable, interrupted installs (item 2, item 11) -------------------------------


def test_full_disk_during_install_says_so(cache, tmp_path, monkeypatch):
    def no_space(source, sink, *args, **kwargs):
        sink.write(source.read(10))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", no_space)
    package = _package(tmp_path, "valid")
    message = _refused(package, str(cache), "full")
    assert "damaged" not in message
    assert _nothing_installed(cache)


def test_too_little_free_space_is_found_before_unpacking(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
    _refused(_package(tmp_path, "valid"), str(cache), "free")
    assert _nothing_installed(cache)


def test_command_line_says_the_cache_is_not_writable(tmp_path, capsys, monkeypatch):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    cache = in_the_way / "models"
    monkeypatch.setenv("GLIOMAPROG_MODELS_DIR", str(cache))
    package = _package(tmp_path, "valid")
    result = _cli(capsys, "models", "install", package)
    assert_one_line_error(result, package.name, str(cache), "not writable")
    assert in_the_way.read_text() == "not a folder"


def test_interrupted_install_leaves_nothing(cache, tmp_path, monkeypatch):
    def interrupted(source, sink, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packages.install_package(_package(tmp_path, "valid"))
    assert _nothing_installed(cache)


def test_staging_folder_of_a_killed_install_is_swept(cache, tmp_path):
    package = _package(tmp_path, "valid")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    stale = cache / f".valid.partial-{dead.pid}-abcd1234"
    (stale / "fold_0").mkdir(parents=True)
    (stale / "plans.json").write_text("{}")
    installed = packages.install_package(package)
    assert not stale.exists()
    assert [path.name for path in cache.iterdir()] == [installed.folder.name]


def test_valid_package_still_installs_and_is_reused(cache, tmp_path):
    package = _package(tmp_path, "valid")
    installed = packages.install_package(package)
    assert installed.channel_names == ["t1c", "flair"] and installed.folds == [0]
    assert packages.install_package(package).folder == installed.folder
    assert len(list(cache.iterdir())) == 1
