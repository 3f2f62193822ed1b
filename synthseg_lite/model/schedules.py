"""Learning-rate schedules that take the run length as ``total_iters`` (like
``torch.optim.lr_scheduler.PolynomialLR``), so every ``model/scheduler`` config is built the same
way by :meth:`~synthseg_lite.model.module.SynthSegModule.configure_optimizers`."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    warmup: float = 0.02,
    min_factor: float = 0.02,
) -> LambdaLR:
    """Linear warm-up over the first ``warmup`` fraction of ``total_iters``, then a cosine decay
    to ``min_factor`` times the base learning rate at ``total_iters``.

    Raises:
        ValueError: ``total_iters < 1``, ``warmup`` outside [0, 1) or ``min_factor`` outside [0, 1].
    """
    if total_iters < 1 or not 0 <= warmup < 1 or not 0 <= min_factor <= 1:
        raise ValueError(
            f"need total_iters >= 1, 0 <= warmup < 1, 0 <= min_factor <= 1; got {total_iters}, "
            f"{warmup}, {min_factor}"
        )
    n_warm = round(warmup * total_iters)

    def factor(step: int) -> float:
        if step < n_warm:
            return min_factor + (1 - min_factor) * (step + 1) / n_warm
        t = min(1.0, (step - n_warm) / max(1, total_iters - n_warm))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)
