"""Model packages: registry, sha256, archive safety and safe (weights-only) loading of the shipped demo models."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from GliomaProgressionLib.models import packages as models
from GliomaProgressionLib.models.worker import UnsafeModelError

DEMO_IDS = ("conventional", "multiparametric")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GLIOMAPROG_MODELS_DIR", str(folder))
    return folder


def _entry(model_id):
    return next(e for e in models.available_models() if e["id"] == model_id)


def _copy_of_demo_folder(cache, tmp_path, model_id="multiparametric") -> Path:
    package = models.resolve_model(model_id)
    target = tmp_path / f"{model_id}_copy"
    shutil.copytree(package.folder, target, ignore=shutil.ignore_patterns(models.MANIFEST))
    return target


def _zip_folder(folder: Path, target: Path, extra: dict | None = None) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(folder)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return target


def test_registry_describes_both_demo_models():
    entries = {e["id"]: e for e in models.available_models()}
    assert set(DEMO_IDS) <= set(entries)
    assert [c["name"] for c in entries["conventional"]["channels"]] == ["t1c", "flair"]
    assert [c["name"] for c in entries["multiparametric"]["channels"]] == ["t1c", "flair", "ncbv"]
    for model_id in DEMO_IDS:
        entry = entries[model_id]
        for key in ("title", "description", "intended_use", "channels", "configuration", "folds", "file", "sha256",
                    "licence", "label"):
            assert entry.get(key) not in (None, "", []), f"{model_id} has no {key}"
        assert "trained on synthetic data — not for clinical use" in entry["description"].lower()
        assert "not for clinical use" in entry["intended_use"].lower()
        assert entry["licence"] == "Apache-2.0" and entry["synthetic"] is True
        assert all(c["modality"] and c["preprocessing"] for c in entry["channels"])
        path = models.resources_folder() / entry["file"]
        assert path.stat().st_size <= 20 * 1024 ** 2
        assert models.sha256_file(path) == entry["sha256"]


def test_shipped_model_installs_once_and_verifies(cache):
    package = models.resolve_model("multiparametric")
    assert package.folder.is_relative_to(cache)
    assert (package.folder / "plans.json").is_file() and package.folds == [0]
    assert package.channel_names == ["t1c", "flair", "ncbv"] and package.synthetic and not package.trusted
    assert package.sha256 == _entry("multiparametric")["sha256"]
    stamp = (package.folder / "plans.json").stat().st_mtime_ns
    again = models.resolve_model("multiparametric")
    assert again.folder == package.folder and (again.folder / "plans.json").stat().st_mtime_ns == stamp
    report = models.verify_model("multiparametric")
    assert report["ok"] and report["loads_weights_only"] and report["sha256_matches_registry"]


def test_tampered_zip_is_refused_and_nothing_installed(cache, tmp_path):
    entry = _entry("conventional")
    tampered = tmp_path / "conventional.zip"
    data = bytearray((models.resources_folder() / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tampered"):
        models.install_package(tampered, expected_sha256=entry["sha256"])
    assert not cache.exists() or not any(cache.iterdir())


def test_modified_installed_copy_is_detected(cache):
    package = models.resolve_model("conventional")
    with open(package.folder / "plans.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ValueError, match="modified"):
        models.verify_model("conventional")


@pytest.mark.parametrize("bad_name, message", [("../evil.txt", "leaves its folder"),
                                               ("model/../../evil.txt", "leaves its folder"),
                                               ("ABSOLUTE", "absolute")])
def test_zip_with_escaping_paths_is_refused(cache, tmp_path, bad_name, message):
    outside = tmp_path / "outside" / "evil.txt"  # an absolute member name, chosen at run time
    bad_name = str(outside) if bad_name == "ABSOLUTE" else bad_name
    folder = _copy_of_demo_folder(cache, tmp_path)
    archive = _zip_folder(folder, tmp_path / "bad.zip", {bad_name: "pwned"})
    shutil.rmtree(cache)
    with pytest.raises(ValueError, match=message):
        models.install_package(archive)
    assert not (tmp_path / "evil.txt").exists() and not outside.exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_zip_with_symlink_is_refused(cache, tmp_path):
    folder = _copy_of_demo_folder(cache, tmp_path)
    archive = _zip_folder(folder, tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "a") as handle:
        info = zipfile.ZipInfo("fold_0/link")
        info.external_attr = 0o120777 << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        models.install_package(archive)


def test_malicious_checkpoint_is_refused_and_runs_nothing(cache, tmp_path):
    import torch

    folder = _copy_of_demo_folder(cache, tmp_path)
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    original = torch.load(checkpoint, weights_only=True)
    torch.save({**original, "logging": Payload()}, checkpoint)
    with pytest.raises(UnsafeModelError, match="trust"):
        models.install_package(folder)
    archive = _zip_folder(folder, tmp_path / "evil.zip")
    shutil.rmtree(cache, ignore_errors=True)
    with pytest.raises(ValueError, match="trust"):
        models.resolve_model(str(archive))
    assert not marker.exists(), "code from the checkpoint ran"
    assert not cache.exists() or not any(cache.iterdir())


def test_disallowed_network_class_is_refused(cache, tmp_path):
    folder = _copy_of_demo_folder(cache, tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UnsafeModelError, match="not one of the allowed"):
        models.install_package(folder)
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "subprocess.Popen"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UnsafeModelError, match="layer class"):
        models.install_package(folder)


def test_user_folder_and_zip_resolve(cache, tmp_path):
    folder = _copy_of_demo_folder(cache, tmp_path, "conventional")
    package = models.resolve_model(str(folder))
    assert package.folder == folder and package.channel_names == ["t1c", "flair"]
    assert [c["modality"] for c in package.channels] == ["CE-T1", "FLAIR"]
    nested = tmp_path / "nested"
    shutil.copytree(folder, nested / "Dataset801_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    zipped = models.resolve_model(str(_zip_folder(nested, tmp_path / "user.zip")))
    assert zipped.configuration == "3d_fullres" and zipped.folder.is_relative_to(cache)


def test_unknown_model_and_missing_files(cache, tmp_path):
    with pytest.raises(ValueError, match="Unknown model"):
        models.resolve_model("no-such-model")
    folder = _copy_of_demo_folder(cache, tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ValueError, match="checkpoint_final"):
        models.verify_model(str(folder))


@pytest.mark.slow
def test_network_is_built_without_timm_or_torchvision_and_matches_nnunet(cache):
    """Our allow-listed build + weights-only load gives the very network nnU-Net's own loader gives."""
    package = models.resolve_model("multiparametric")
    script = f"""
import sys, json, torch
from GliomaProgressionLib.models.worker import load_predictor
predictor = load_predictor({str(package.folder)!r}, device="cpu", tta=False)
assert not [m for m in sys.modules if m.startswith(("timm", "torchvision"))], "timm/torchvision imported"
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
cm = predictor.configuration_manager
reference = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                   cm.network_arch_init_kwargs_req_import, 3, 2, deep_supervision=False)
checkpoint = torch.load({str(package.folder / 'fold_0' / 'checkpoint_final.pth')!r}, weights_only=False)
reference.load_state_dict(checkpoint["network_weights"])
ours = predictor.network
ours.load_state_dict(predictor.list_of_parameters[0])
ours.eval(); reference.eval()
x = torch.randn(1, 3, 48, 48, 48)
with torch.no_grad():
    print("MAXDIFF", float((ours(x) - reference(x)).abs().max()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    difference = float(next(l for l in result.stdout.splitlines() if l.startswith("MAXDIFF")).split()[1])
    assert difference == 0.0


def test_trusted_package_loads_only_when_asked(cache, tmp_path):
    """A checkpoint with an object weights-only loading refuses (here a harmless datetime) needs trust=True."""
    import datetime

    import torch

    from GliomaProgressionLib.models import inference

    folder = _copy_of_demo_folder(cache, tmp_path, "conventional")
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({**torch.load(checkpoint, weights_only=True), "saved": datetime.datetime(2025, 1, 1)}, checkpoint)
    archive = _zip_folder(folder, tmp_path / "user.zip")
    with pytest.raises(UnsafeModelError, match="trust"):
        models.install_package(archive)
    package = models.install_package(archive, trust=True)
    assert package.trusted
    assert "--trust" in inference.worker_command(Path("in"), package, Path("out.nii.gz"))
    with pytest.raises(UnsafeModelError):  # the trusted install is not reused without trust
        models.resolve_model(str(archive))


def test_models_list_names_the_progression_habitat_and_invasion_models(capsys):
    from GliomaProgressionLib.cli import main as cli

    assert cli.main(["models", "list"]) == 0
    ids = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["conventional", "multiparametric", "habitats-demo", "invasion-demo"]
