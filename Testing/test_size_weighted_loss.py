"""The lesion-size-weighted loss (Tran et al. 2025, seed 003; formula in models/size_weighted.py): known lesion
sizes give exactly the documented weights, and the loss is the weighted mean of nnU-Net's per-case losses."""
import numpy as np
import pytest
import torch

from GliomaProgressionLib.cli import main as cli
from GliomaProgressionLib.cohort.train import train_cohort
from GliomaProgressionLib.models.size_weighted import (LOSSES, SIZE_WEIGHTED_TRAINER, WEIGHT_RANGE, lesion_voxels,
                                                       size_weighted_loss, size_weights)
from GliomaProgressionLib.models.training import trainer_class

torch.set_num_threads(1)


def test_known_sizes_give_the_documented_weights():
    # r = V^-1/2 = 1/10, 1/20, 1/40 for 100, 400, 1600 voxels; mean 1 over the three: 3 r / (7/40) = 12/7, 6/7, 3/7.
    weights = size_weights([100, 400, 0, 1600])
    assert weights == pytest.approx([12 / 7, 6 / 7, 1.0, 3 / 7], rel=1e-12)
    assert np.mean(weights[[0, 1, 3]]) == pytest.approx(1.0)


def test_weights_are_clipped_and_cases_without_progression_weigh_one():
    # r = 1, 1/100 -> 2/1.01 and 0.02/1.01; the small weight is clipped up to 1/3.
    assert size_weights([1, 10_000]) == pytest.approx([2 / 1.01, WEIGHT_RANGE[0]], rel=1e-12)
    assert size_weights([1, 1_000_000]) == pytest.approx([2 / 1.001, WEIGHT_RANGE[0]], rel=1e-12)
    assert size_weights([0, 0]).tolist() == [1.0, 1.0]
    assert size_weights([50, 50]).tolist() == [1.0, 1.0]  # equal sizes: equal weights, mean 1


@pytest.mark.parametrize("sizes", [[], [-1, 3], [np.nan]])
def test_weights_refuse_impossible_sizes_in_one_sentence(sizes):
    with pytest.raises(ValueError, match="voxel counts >= 0") as error:
        size_weights(sizes)
    assert len(str(error.value).splitlines()) == 1


def _nnunet_loss():
    """nnU-Net's own loss as nnUNetTrainer._build_loss makes it (batch Dice + CE, deep supervision over 3 scales)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [4 / 7, 2 / 7, 1 / 7])


def _batch(sizes):
    """Logits and targets of a 3-scale deep-supervised batch whose full-resolution targets hold ``sizes`` voxels."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.zeros(len(sizes), 1, 16, 16, 16)
    for case, size in enumerate(sizes):
        targets[case, 0].view(-1)[:size] = 1
    scales = [targets, targets[:, :, ::2, ::2, ::2], targets[:, :, ::4, ::4, ::4]]
    outputs = [torch.randn(len(sizes), 2, *t.shape[2:], generator=generator, requires_grad=True) for t in scales]
    return outputs, scales


def _per_case(base, outputs, targets) -> list[float]:
    """nnU-Net's loss on each case of the batch alone."""
    with torch.no_grad():
        return [float(base([o[i:i + 1] for o in outputs], [t[i:i + 1] for t in targets]))
                for i in range(targets[0].shape[0])]


def test_the_loss_is_the_weighted_mean_of_nnunets_per_case_losses():
    sizes = [100, 400, 0, 1600]
    outputs, targets = _batch(sizes)
    base = _nnunet_loss()
    assert lesion_voxels(targets) == sizes
    per_case = _per_case(base, outputs, targets)
    weights = [12 / 7, 6 / 7, 1.0, 3 / 7]
    expected = sum(w * loss for w, loss in zip(weights, per_case)) / sum(weights)
    value = size_weighted_loss(base)(outputs, targets)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    assert len(set(np.round(per_case, 6))) == 4  # the cases differ, so the weighting shows in the value
    assert float(value.detach()) != pytest.approx(float(np.mean(per_case)), rel=1e-3)
    value.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)


def test_equal_sizes_give_the_plain_mean_of_per_case_losses():
    outputs, targets = _batch([200, 200])
    base = _nnunet_loss()
    per_case = _per_case(base, outputs, targets)
    assert float(size_weighted_loss(base)(outputs, targets).detach()) == pytest.approx(np.mean(per_case), rel=1e-6)


def test_the_trainer_classes_by_loss():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain, weighted = trainer_class("dice-ce"), trainer_class("size-weighted")
    assert LOSSES == ("dice-ce", "size-weighted")
    assert plain.__name__ == "nnUNetTrainerGliomaDemo" and weighted.__name__ == SIZE_WEIGHTED_TRAINER
    # Each call makes its class: the size-weighted one derives from a demo trainer of its own.
    assert weighted.__mro__[1].__name__ == plain.__name__ and issubclass(weighted, nnUNetTrainer)
    assert "_build_loss" in vars(weighted) and "_build_loss" not in vars(plain)
    with pytest.raises(ValueError, match="Unknown training loss 'focal': choose one of dice-ce, size-weighted"):
        trainer_class("focal")


def test_an_unknown_loss_is_refused_before_anything_is_written(tmp_path, capsys):
    raw = tmp_path / "Dataset905_Loss"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="Unknown training loss 'focal'"):
        train_cohort(raw, tmp_path / "results", loss="focal")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cohort", "train", str(raw), "--out", str(tmp_path / "results"), "--loss", "focal"])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "invalid choice: 'focal'" in error[-1]
    assert not (tmp_path / "results").exists()
