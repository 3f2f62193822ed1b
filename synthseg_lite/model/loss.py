"""Segmentation loss: nnU-Net's Dice + cross-entropy over the deep-supervision outputs.

Built from MONAI's :class:`~monai.losses.DiceCELoss` (softmax Dice without the background by
default, optional batch Dice, smoothing 1e-5 as nnU-Net's ``MemoryEfficientSoftDiceLoss``) wrapped
in :class:`~monai.losses.DeepSupervisionLoss` with nnU-Net's weights: ``1 / 2**i`` per output, the
lowest-resolution decoder output weighted 0, normalised to sum 1. SynthSeg's recipe (soft Dice
only) is ``ce_weight=0, include_background=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn

__all__ = ["LossConfig", "SegLoss", "deep_supervision_weights"]


@dataclass
class LossConfig:
    """Loss settings.

    Attributes:
        dice_weight: weight of the soft Dice term.
        ce_weight: weight of the cross-entropy term (0: Dice only, as SynthSeg).
        batch_dice: one Dice over the whole batch instead of the mean of per-sample Dices.
        include_background: count the background class in the Dice (nnU-Net: no).
        smooth: added to the Dice numerator and denominator.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = False
    include_background: bool = False
    smooth: float = 1e-5

    def __post_init__(self) -> None:
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got dice_weight={self.dice_weight}, "
                f"ce_weight={self.ce_weight}"
            )


def deep_supervision_weights(n_outputs: int, n_stages: int) -> list[float]:
    """nnU-Net's deep-supervision weights for a U-Net with ``n_stages`` resolution stages.

    nnU-Net supervises every decoder output (``n_stages - 1`` of them) with weights ``1 / 2**i``
    and gives the lowest-resolution one weight 0. MONAI's DynUNet builds ``1 + deep_supr_num``
    outputs (at most ``n_stages - 1``); the lowest is zeroed only when it is nnU-Net's lowest.

    Returns:
        ``n_outputs`` weights summing to 1, full resolution first.
    """
    w = [0.5**i for i in range(n_outputs)]
    if n_outputs > 1 and n_outputs >= n_stages - 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class SegLoss(nn.Module):
    """Loss of the U-Net's output against integer targets.

    Args:
        cfg: loss settings.
        n_stages: U-Net resolution stages (for the deep-supervision weights).
    """

    def __init__(self, cfg: LossConfig, n_stages: int) -> None:
        super().__init__()
        self.n_stages = n_stages
        self.dice_ce = DiceCELoss(
            include_background=cfg.include_background,
            to_onehot_y=True,
            softmax=True,
            batch=cfg.batch_dice,
            smooth_nr=cfg.smooth,
            smooth_dr=cfg.smooth,
            lambda_dice=cfg.dice_weight,
            lambda_ce=cfg.ce_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: (B, K, *S) or, with deep supervision, (B, 1 + D, K, *S) (heads at full size).
            target: (B, *S) int64 class indices.
        """
        target = target.unsqueeze(1)
        if logits.dim() == target.dim():
            return self.dice_ce(logits.float(), target)
        weights = deep_supervision_weights(logits.shape[1], self.n_stages)
        keep = [i for i, w in enumerate(weights) if w > 0]
        ds = DeepSupervisionLoss(self.dice_ce, weights=[weights[i] for i in keep])
        return ds([logits[:, i] for i in keep], target)
