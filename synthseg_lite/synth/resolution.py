"""Resolution stage: thick-slice acquisition along one axis (or isotropic low resolution on all
three), then back to the output grid.

As in the SynthSeg paper (section 3.1.4): Gaussian slice profile with
``sigma = alpha * 0.75 * thickness / voxel``, sampling at the slice spacing, linear interpolation back.
Blur, downsampling and upsampling along an axis of N voxels are all linear, so they are composed into
one (N, N) matrix per sample and applied with a single batched matrix product along the chosen axis.

Every axis that the acquisition leaves at the output resolution can get a Gaussian point-spread
function of ``alpha * psf_sigma_vox`` voxels (:func:`blur_native_axes`), as SynthSeg blurs an axis
whose resolution it keeps with sigma 0.5 voxels (``blurring_sigma_for_downsampling``): a real scan
never has the one-voxel step edges of a label map, and its partial-volume rim is what a network
must place a boundary in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["resolution_matrices", "apply_along_axis", "blur_native_axes", "simulate_resolution"]


def resolution_matrices(n: int, spacing_vox: torch.Tensor, thickness_vox: torch.Tensor,
                        alpha: torch.Tensor, native: torch.Tensor) -> torch.Tensor:
    """Per-sample operators (B, n, n) = upsample @ downsample @ blur along one axis.

    Args:
        n: number of voxels along the axis.
        spacing_vox: (B,) slice spacing in output voxels (<= 1 means no downsampling).
        thickness_vox: (B,) slice thickness in output voxels.
        alpha: (B,) slice-profile factor.
        native: (B,) bool; True gives the identity.
    """
    dev, dt = spacing_vox.device, spacing_vox.dtype
    B = spacing_vox.shape[0]
    idx = torch.arange(n, device=dev, dtype=dt)
    eye = torch.eye(n, device=dev, dtype=dt).expand(B, n, n)
    active = (~native) & (spacing_vox > 1)
    factor = torch.where(active, spacing_vox, torch.ones_like(spacing_vox)).view(B, 1, 1)

    sigma = (alpha * 0.75 * thickness_vox).clamp(min=1e-3).view(B, 1, 1)
    blur = torch.exp(-0.5 * ((idx.view(1, n, 1) - idx.view(1, 1, n)) / sigma) ** 2)
    blur = blur / blur.sum(2, keepdim=True)

    # Low-resolution samples k at positions k * factor (k < K); rows k >= K are unused.
    pos = idx.view(1, n, 1) * factor  # (B, n, 1)
    down = (1 - (pos - idx.view(1, 1, n)).abs()).clamp(min=0)  # (B, k, j)
    k_max = torch.floor((n - 1) / factor)  # (B, 1, 1) last valid LR index
    q = (idx.view(1, n, 1) / factor).minimum(k_max)  # (B, i, 1) LR coordinate of output voxel i
    up = (1 - (q - idx.view(1, 1, n)).abs()).clamp(min=0)  # (B, i, k)
    op = up @ down @ blur
    return torch.where(active.view(B, 1, 1), op, eye)


def apply_along_axis(image: torch.Tensor, matrices: torch.Tensor, axis: int) -> torch.Tensor:
    """``out[..., i, ...] = sum_j M[b, i, j] image[..., j, ...]`` along spatial ``axis`` (0, 1, 2).

    Args:
        image: (B, C, X, Y, Z). matrices: (B, n, n) with n the size of that axis.
    """
    eq = {0: "bij,bcjyz->bciyz", 1: "bij,bcxjz->bcxiz", 2: "bij,bcxyj->bcxyi"}[axis]
    return torch.einsum(eq, matrices, image)


def blur_native_axes(image: torch.Tensor, sigma_vox: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample, per-axis standard deviation.

    Args:
        image: (B, C, X, Y, Z) float.
        sigma_vox: (B, 3) standard deviations in voxels; 0 leaves that axis of that sample as it is.

    Returns:
        (B, C, X, Y, Z), borders replicated (per axis, a weighted sum of shifted copies with
        per-sample weights).
    """
    B = image.shape[0]
    top = float(sigma_vox.max()) if sigma_vox.numel() else 0.0
    if top <= 0:
        return image
    radius = max(1, math.ceil(3 * top))
    taps = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    out = image
    for ax in range(3):
        sigma = sigma_vox[:, ax].to(image.dtype).clamp(min=1e-3)
        kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, taps); sigma 0 -> a unit impulse
        pad = [0] * 6
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = radius  # F.pad lists the last axis first
        padded = F.pad(out, pad, mode="replicate")
        n = out.shape[2 + ax]
        acc = torch.zeros_like(out)
        for k in range(2 * radius + 1):  # a weighted sum of shifted copies: no loop over samples
            acc.add_(padded.narrow(2 + ax, k, n) * kernel[:, k].view(B, 1, 1, 1, 1))
        out = acc
    return out


def simulate_resolution(image: torch.Tensor, axis: torch.Tensor, spacing_mm: torch.Tensor,
                        thickness_mm: torch.Tensor, alpha: torch.Tensor, native: torch.Tensor,
                        voxel_mm: float, iso: torch.Tensor | None = None,
                        psf_sigma_vox: float = 0.0) -> torch.Tensor:
    """Simulate a thick-slice acquisition along a per-sample axis, or an isotropic one.

    Args:
        image: (B, 1, X, Y, Z) float.
        axis: (B,) int64 in {0, 1, 2}. spacing_mm, thickness_mm, alpha: (B,). native: (B,) bool.
        voxel_mm: output voxel size (mm).
        iso: (B,) bool, isotropic: the same spacing and thickness along all three axes
            (``axis`` ignored); None: no isotropic sample.
        psf_sigma_vox: Gaussian point-spread function (sigma, output voxels, times ``alpha``) of
            every axis the acquisition does not resample (all three where ``native``); 0: none.

    Returns:
        (B, 1, X, Y, Z): blurred and resampled along ``axis`` (or along every axis where ``iso``)
        unless ``native``; every other axis blurred by the point-spread function.
    """
    out = image.clone()
    resampled = torch.zeros(image.shape[0], 3, dtype=torch.bool, device=image.device)
    for ax in range(3):  # loop over the 3 axes, never over samples
        along = axis == ax if iso is None else (axis == ax) | iso
        resampled[:, ax] = along & ~native & (spacing_mm / voxel_mm > 1)
        sel = torch.nonzero(along & ~native).flatten()
        if sel.numel() == 0:
            continue
        mats = resolution_matrices(image.shape[2 + ax], spacing_mm[sel] / voxel_mm,
                                   thickness_mm[sel] / voxel_mm, alpha[sel], native[sel])
        out[sel] = apply_along_axis(out[sel], mats.to(image.dtype), ax)  # iso: axes compose
    if psf_sigma_vox > 0:
        sigma = torch.where(resampled, 0.0, alpha.view(-1, 1) * psf_sigma_vox)
        out = blur_native_axes(out, sigma)
    return out
