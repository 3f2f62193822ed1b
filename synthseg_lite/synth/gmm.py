"""GMM stage: one Gaussian per generation class, by table lookup (no loop over labels)."""

from __future__ import annotations

import torch

__all__ = ["class_values", "gmm_image"]


def class_values(values: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Each voxel's ``values[class[label]]``.

    Args:
        values: (B, C) per-sample value of each generation class.
        labels: (B, 1, *S) integer generation indices.
        classes: (L,) int64 generation class of each index.

    Returns:
        (B, 1, *S) tensor of ``values``' dtype.
    """
    B = labels.shape[0]
    return torch.gather(values[:, classes], 1, labels.long().reshape(B, -1)).view(labels.shape)


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
    return torch.addcmul(class_values(means, labels, classes), class_values(stds, labels, classes),
                         noise)
