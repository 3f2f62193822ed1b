"""GMM stage: one Gaussian per generation class, by table lookup (no loop over labels)."""

from __future__ import annotations

import torch

__all__ = ["gmm_image"]


def gmm_image(labels: torch.Tensor, classes: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Intensities ``mean[class[label]] + std[class[label]] * noise``.

    Args:
        labels: (B, 1, *S) integer generation indices.
        classes: (L,) int64 generation class of each index.
        means, stds: (B, C) per-sample class means / standard deviations.
        noise: (B, 1, *S) standard normal field.

    Returns:
        (B, 1, *S) float image (dtype of ``means``).
    """
    B = labels.shape[0]
    idx = labels.long().reshape(B, -1)
    mean_l = means[:, classes]  # (B, L)
    std_l = stds[:, classes]
    mu = torch.gather(mean_l, 1, idx).view(labels.shape)
    sigma = torch.gather(std_l, 1, idx).view(labels.shape)
    return torch.addcmul(mu, sigma, noise)
