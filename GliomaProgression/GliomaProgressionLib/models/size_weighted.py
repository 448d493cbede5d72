"""The lesion-size-weighted training loss (Tran et al. 2025, seed 003) and the nnU-Net trainer that uses it.

Tran et al. (npj Digital Medicine 2025) predicted glioblastoma recurrence with a deep network and report that
"lesion size-weighted loss functions" during training significantly improved the model; the paper gives the idea
(cases with small progression regions must not be drowned out by the large ones), not a formula we could copy.
The formula here is this extension's, chosen so that it can be stated, tested and switched off:

- V_i = the number of progression voxels (label > 0, nnU-Net's foreground) in case i's training patch: the
  full-resolution target the loss sees, so a lesion cut by the patch border weighs as much as is seen of it;
- cases with progression (V_i > 0, the set P of the batch) get r_i = V_i ** -ALPHA, normalised to mean 1 over P:
  w_i = |P| r_i / sum_{j in P} r_j (V_ref of the brief is then the batch's own: the sizes only count relative to
  each other), then clipped to WEIGHT_RANGE;
- cases without progression get w_i = 1: they weigh as an average lesion case of the batch;
- loss = sum_i w_i L_i / sum_i w_i, a weighted mean of the per-case losses L_i, where L_i is nnU-Net's own loss
  (Dice + cross-entropy with its deep supervision, ``nnUNetTrainer._build_loss``) on case i alone.

ALPHA = 0.5 (square root) halves the log-ratio of two cases' sizes: a lesion 16 times smaller counts 4 times
more; ALPHA = 1 (inverse volume) would let a few-voxel, partly noisy label dominate a batch. The clip to
[1/3, 3] bounds what one case of nnU-Net's batch of two can do to a step. With all weights 1 the loss is the
mean of per-case losses, which differs from nnU-Net's default where the plans ask for a batch Dice (one Dice
over the batch's voxels): per-case Dice is what a size weighting needs, since a batch Dice is already dominated
by the large lesions.

The trainer changes only the loss: the network, plans and checkpoints are nnUNetTrainer's, so a package trained
with it records "nnUNetTrainer" (``training.slim_checkpoint``) and predicts as any other; its own class name is
kept in the checkpoint's "trained_with" and the package metadata names the loss.

Numpy and torch are imported inside the functions: the command line imports LOSSES to build its parser.
"""

from __future__ import annotations

LOSSES = ("dice-ce", "size-weighted")  # nnU-Net's own Dice + cross-entropy; the size-weighted loss above
DEFAULT_LOSS = "dice-ce"
ALPHA = 0.5
WEIGHT_RANGE = (1.0 / 3.0, 3.0)
SIZE_WEIGHTED_TRAINER = "nnUNetTrainerGliomaSizeWeighted"


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"Unknown training loss {loss!r}: choose one of {', '.join(LOSSES)}.")
    return loss


def loss_record(loss: str) -> dict:
    """What a trained model's metadata says of its loss (the formula's parameters with the size-weighted one)."""
    check_loss(loss)
    if loss == DEFAULT_LOSS:
        return {"loss": loss, "loss_description": "nnU-Net's Dice + cross-entropy (nnUNetTrainer)"}
    return {"loss": loss, "loss_description": (
        f"lesion-size-weighted (Tran et al. 2025): w_i = (V_i^-{ALPHA:g}) normalised to mean 1 over the batch's "
        f"cases with progression, clipped to [{WEIGHT_RANGE[0]:.3g}, {WEIGHT_RANGE[1]:g}], 1 without progression; "
        "loss = sum w_i L_i / sum w_i of nnU-Net's per-case Dice + cross-entropy"),
        "loss_alpha": ALPHA, "loss_weight_range": list(WEIGHT_RANGE)}


def size_weights(lesion_voxels, alpha: float = ALPHA, weight_range: tuple[float, float] = WEIGHT_RANGE):
    """The weight of each case of a batch from its progression voxels (module text); a float64 array."""
    import numpy as np

    voxels = np.asarray(lesion_voxels, dtype=float)
    if voxels.ndim != 1 or voxels.size == 0 or not np.all(np.isfinite(voxels)) or np.any(voxels < 0):
        raise ValueError(f"The lesion sizes of a batch must be a non-empty list of voxel counts >= 0, got {voxels}.")
    weights = np.ones_like(voxels)
    lesion = voxels > 0
    if lesion.any():
        raw = voxels[lesion] ** -alpha
        weights[lesion] = np.clip(raw * lesion.sum() / raw.sum(), *weight_range)
    return weights


def lesion_voxels(target) -> list[int]:
    """Progression voxels per case of nnU-Net's target (a tensor, or deep supervision's list: full resolution
    first)."""
    full = target[0] if isinstance(target, (list, tuple)) else target
    return [int(count) for count in (full > 0).reshape(full.shape[0], -1).sum(dim=1).tolist()]


def size_weighted_loss(base):
    """A torch module: the size-weighted mean over the batch of ``base`` (nnU-Net's loss) on each case alone."""
    import torch

    class SizeWeightedLoss(torch.nn.Module):
        def __init__(self, base_loss):
            super().__init__()
            self.base = base_loss

        def case_losses(self, output, target):
            def one(value, i):
                return [v[i:i + 1] for v in value] if isinstance(value, (list, tuple)) else value[i:i + 1]

            cases = (target[0] if isinstance(target, (list, tuple)) else target).shape[0]
            return torch.stack([self.base(one(output, i), one(target, i)) for i in range(cases)])

        def forward(self, output, target):
            losses = self.case_losses(output, target)
            weights = torch.as_tensor(size_weights(lesion_voxels(target)), dtype=losses.dtype, device=losses.device)
            return (weights * losses).sum() / weights.sum()

    return SizeWeightedLoss(base)


def size_weighted_trainer(base_class):
    """``base_class`` (the extension's nnUNetTrainer subclass) with the size-weighted loss."""

    class nnUNetTrainerGliomaSizeWeighted(base_class):
        def _build_loss(self):
            return size_weighted_loss(super()._build_loss())

    assert nnUNetTrainerGliomaSizeWeighted.__name__ == SIZE_WEIGHTED_TRAINER
    return nnUNetTrainerGliomaSizeWeighted
