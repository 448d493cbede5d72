"""The demo-model recipe: cohort design, the small plan, and what the shipped packages contain."""

import json
import zipfile

import pytest

from GliomaProgressionLib.models import packages as models

from GliomaProgressionLib.models import worker as predict_worker

from GliomaProgressionLib.models import training
from GliomaProgressionLib.phantom.synthetic import PhantomConfig


def test_cohort_shows_progression_in_ncbv_more_than_in_flair():
    assert not set(training.TRAINING_SEEDS) & (set(training.HELD_OUT_SEEDS) | set(training.FULL_SIZE_SEEDS))
    positives = [training.cohort_config(seed) for seed in training.TRAINING_SEEDS if training.is_positive(seed)]
    negatives = [training.cohort_config(seed) for seed in training.TRAINING_SEEDS if not training.is_positive(seed)]
    assert len(negatives) == len(training.TRAINING_SEEDS) // training.NEGATIVE_EVERY
    assert all(1.6 <= c.progression_cbv_ratio <= 1.8 and 1.0 <= c.progression_flair_ratio <= 1.02 for c in positives)
    base = PhantomConfig()
    for config in negatives:  # the infiltrated part looks like the rest of the oedema: nothing to find
        assert config.progression_cbv_ratio * base.cbv.white == pytest.approx(base.cbv.oedema)
        assert config.progression_flair_ratio == 1.0
    assert training.cohort_config(1001) == training.cohort_config(1001)  # reproducible


@pytest.mark.slow
def test_negative_case_has_an_empty_label_and_positive_case_a_label_inside_the_nel():
    import SimpleITK as sitk

    negative = training.make_case(2003)
    assert not negative.positive and sitk.GetArrayViewFromImage(negative.label).sum() == 0
    positive = training.make_case(2001)
    label = sitk.GetArrayFromImage(positive.label) > 0
    nel = sitk.GetArrayFromImage(positive.nel) > 0
    assert label.sum() > 100 and not (label & ~nel).any()
    assert positive.channels["t1c"].GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    ncbv = sitk.GetArrayFromImage(positive.channels["ncbv"])
    flair = sitk.GetArrayFromImage(positive.channels["flair"])
    rest = nel & ~label
    assert ncbv[label].mean() / ncbv[rest].mean() > 1.3  # a clear nCBV difference ...
    assert flair[label].mean() / flair[rest].mean() < 1.1  # ... and a faint FLAIR one


def test_custom_plan_is_small_and_built_from_allowed_classes():
    planned = {"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6,
                        "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "spacing": [1.0, 1.0, 1.0], "patch_size": [128, 160, 112], "batch_size": 2}
    configuration = training.custom_configuration(planned)
    assert configuration["spacing"] == [2.0, 2.0, 2.0]
    stages = configuration["architecture"]["arch_kwargs"]["n_stages"]
    assert all(size % 2 ** (stages - 1) == 0 for size in configuration["patch_size"])
    entry = predict_worker.check_plans({"configurations": {"3d_fullres": configuration}}, "3d_fullres")
    network = predict_worker.build_network(entry, 3, 2)
    parameters = sum(p.numel() for p in network.parameters())
    assert parameters < 500_000


@pytest.mark.parametrize("model_id", ["conventional", "multiparametric"])
def test_shipped_package_contents(model_id):
    entry = next(e for e in models.available_models() if e["id"] == model_id)
    path = models.resources_folder() / entry["file"]
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert names == ["MODEL_CARD.txt", "dataset.json", "fold_0/checkpoint_final.pth", "plans.json"]
        assert "not for clinical use" in archive.read("MODEL_CARD.txt").decode().lower()
        dataset = json.loads(archive.read("dataset.json"))
        plans = json.loads(archive.read("plans.json"))
    assert [dataset["channel_names"][str(i)] for i in range(len(entry["channels"]))] == \
        [c["modality"] for c in entry["channels"]]
    assert list(plans["configurations"]) == [entry["configuration"]]
    assert plans["configurations"][entry["configuration"]]["spacing"] == [2.0, 2.0, 2.0]
    training_info = entry["training"]
    assert training_info["epochs"] * training_info["iterations_per_epoch"] >= 100
    evaluation = entry.get("evaluation")
    assert evaluation is not None and evaluation["cases"] >= 10 and evaluation["negatives"] >= 1


def test_nnunet_preprocessing_pools_run_as_threads_inside_the_context_only():
    """The small-dataset shortcut of ``plan_and_preprocess_dataset``: nnU-Net's three pools become thread pools
    (the same API, ``_pool`` liveness included) and are processes again afterwards, even after an error."""
    import importlib
    import multiprocessing
    from multiprocessing.pool import ThreadPool

    modules = [importlib.import_module(name) for name in training.NNUNET_POOL_MODULES]
    with pytest.raises(KeyError):
        with training.nnunet_pools_as_threads():
            for module in modules:
                with module.multiprocessing.get_context("spawn").Pool(2) as pool:
                    assert isinstance(pool, ThreadPool) and all(worker.is_alive() for worker in pool._pool)
                    assert pool.starmap(divmod, [(7, 2)]) == [(3, 1)]
            raise KeyError("an nnU-Net error inside")
    assert all(module.multiprocessing is multiprocessing for module in modules)
