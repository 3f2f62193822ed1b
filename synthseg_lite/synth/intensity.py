"""Intensity stages: bias field, rescaling, gamma, noise. Pure functions of (image, params)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_bias", "rescale_minmax", "apply_gamma", "add_noise"]


def apply_bias(image: torch.Tensor, log_field: torch.Tensor) -> torch.Tensor:
    """Multiply by ``exp(upsample(log_field))``.

    Args:
        image: (B, 1, *S) float. log_field: (B, 1, k, k, k) coarse log bias (zeros: identity).
    """
    field = F.interpolate(log_field, size=image.shape[2:], mode="trilinear", align_corners=True)
    return image * field.exp()


def rescale_minmax(image: torch.Tensor, clip_min: float | None = 0.0) -> torch.Tensor:
    """Clip below ``clip_min`` then rescale each sample to [0, 1] (a constant image becomes 0)."""
    if clip_min is not None:
        image = image.clamp(min=clip_min)
    flat = image.flatten(1)
    lo = flat.amin(1).view(-1, *[1] * (image.dim() - 1))
    hi = flat.amax(1).view(-1, *[1] * (image.dim() - 1))
    return (image - lo) / (hi - lo).clamp(min=1e-6)


def apply_gamma(image: torch.Tensor, log_gamma: torch.Tensor) -> torch.Tensor:
    """``image ** exp(log_gamma)`` for images in [0, 1]; log_gamma (B,), 0 is the identity."""
    gamma = log_gamma.exp().view(-1, *[1] * (image.dim() - 1))
    return image.clamp(min=0).pow(gamma)


def add_noise(image: torch.Tensor, std: torch.Tensor, noise: torch.Tensor, kind: str) -> torch.Tensor:
    """Gaussian (``image + std n0``) or Rician (``|image + std (n0 + i n1)|``) noise, clipped to [0, 1].

    Args:
        image: (B, 1, *S). std: (B,). noise: (B, 2, *S) standard normal fields.
        kind: "none", "gaussian" or "rician".
    """
    if kind == "none":
        return image
    s = std.view(-1, *[1] * (image.dim() - 1))
    real = image + s * noise[:, :1]
    if kind == "rician":
        real = torch.sqrt(real.square() + (s * noise[:, 1:2]).square())
    elif kind != "gaussian":
        raise ValueError(f"noise kind must be none|gaussian|rician, got {kind!r}")
    return real.clamp(0, 1)
