"""Spatial stage: affine + diffeomorphic deformation fused with the random crop, and label LUTs.

The output patch is sampled directly from the input label map through one sampling grid:

    y(u) = centre + M @ (u + d(u))

with ``u`` the output voxel position in mm (centred on the patch), ``d`` the displacement obtained by
integrating a stationary velocity field (scaling and squaring), ``M`` the affine's linear part and
``centre`` where the patch centre falls in the input (1 mm voxels). Only the patch is ever computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthseg_lite.synth.params import control_grid

__all__ = ["integrate_svf", "displacement_field", "sampling_grid", "warp_labels", "remap_labels",
           "label_luts", "jacobian_determinant"]


def _identity_norm(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(1, *shape, 3) normalised coordinates in grid_sample's (x=W, y=H, z=D) order."""
    axes = [torch.linspace(-1, 1, s, device=like.device, dtype=like.dtype) if s > 1
            else torch.zeros(1, device=like.device, dtype=like.dtype) for s in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], -1).unsqueeze(0)


def integrate_svf(velocity: torch.Tensor, half_extent_mm: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field.

    Args:
        velocity: (B, 3, *n) velocity in mm, on a grid spanning the patch.
        half_extent_mm: (3,) half size of that span per axis, mm (grid coordinates are
            normalised by it).
        steps: number of squarings (the field is divided by 2**steps first).

    Returns:
        (B, 3, *n) displacement in mm of the time-1 flow (a diffeomorphism for smooth fields).
    """
    disp = velocity / (2**steps)
    ident = _identity_norm(tuple(velocity.shape[2:]), velocity)
    scale = (1 / half_extent_mm.clamp(min=1e-6)).flip(0).view(1, 1, 1, 1, 3)
    for _ in range(steps):
        pos = ident + disp.permute(0, 2, 3, 4, 1).flip(-1) * scale
        disp = disp + F.grid_sample(disp, pos, mode="bilinear", padding_mode="border", align_corners=True)
    return disp


def _coarse_displacement(velocity: torch.Tensor, out_shape: tuple[int, int, int], voxel_mm: float,
                         integration_spacing_mm: float, steps: int) -> torch.Tensor:
    """Integrated displacement (B, 3, *n) in mm on the integration grid spanning the patch."""
    extent = [(s - 1) * voxel_mm for s in out_shape]
    n_int = tuple(min(control_grid(e, integration_spacing_mm), s) for e, s in zip(extent, out_shape))
    v = F.interpolate(velocity, size=n_int, mode="trilinear", align_corners=True)
    half = torch.tensor([max(e / 2, 1e-6) for e in extent], device=v.device, dtype=v.dtype)
    return integrate_svf(v, half, steps) if steps > 0 else v


def displacement_field(velocity: torch.Tensor, out_shape: tuple[int, int, int], voxel_mm: float,
                       integration_spacing_mm: float, steps: int) -> torch.Tensor:
    """Dense displacement (B, 3, *out_shape) in mm from control-point velocities.

    The velocity is upsampled (trilinear) to an integration grid of ``integration_spacing_mm``,
    integrated there, and the result upsampled (trilinear) to ``out_shape``.
    """
    disp = _coarse_displacement(velocity, out_shape, voxel_mm, integration_spacing_mm, steps)
    return F.interpolate(disp, size=tuple(out_shape), mode="trilinear", align_corners=True)


def _positions(shape: tuple[int, ...], extent: list[float], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, *shape) positions in mm of a grid spanning [-extent/2, extent/2] per axis."""
    axes = [torch.linspace(-e / 2, e / 2, s, device=like.device, dtype=like.dtype) for s, e in zip(shape, extent)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).unsqueeze(0)


def sampling_grid(matrix: torch.Tensor, centre: torch.Tensor, velocity: torch.Tensor,
                  out_shape: tuple[int, int, int], voxel_mm: float, in_shape: tuple[int, int, int],
                  integration_spacing_mm: float = 4.0, steps: int = 7) -> torch.Tensor:
    """Grid for ``F.grid_sample(..., align_corners=True)`` over an input of ``in_shape``.

    With a deformation, positions are computed on the coarse integration grid and upsampled once
    (trilinear interpolation reproduces the affine part exactly), which is much cheaper than
    upsampling the displacement and applying the affine at every output voxel.

    Args:
        matrix: (B, 3, 3) affine linear part. centre: (B, 3) input voxels.
        velocity: (B, 3, *n) SVF in mm (all zeros: no deformation).
        out_shape: output voxels; voxel_mm: output voxel size (mm).

    Returns:
        (B, *out_shape, 3) normalised sampling positions, last axis in (z, y, x) order.
    """
    B = matrix.shape[0]
    extent = [(s - 1) * voxel_mm for s in out_shape]
    # normalised = 2 * (centre + M u) / (S - 1) - 1, rows ordered (z, y, x) for grid_sample
    inv = torch.tensor([2.0 / max(s - 1, 1) for s in in_shape], device=matrix.device, dtype=matrix.dtype)
    a = (inv.view(1, 3, 1) * matrix).flip(1)  # (B, 3, 3)
    b = (inv * centre - 1).flip(1)  # (B, 3)
    if bool(velocity.abs().amax() > 0):
        disp = _coarse_displacement(velocity, out_shape, voxel_mm, integration_spacing_mm, steps)
        u = (_positions(tuple(disp.shape[2:]), extent, matrix) + disp).flatten(2)  # (B, 3, n)
        coarse = (torch.baddbmm(b.unsqueeze(2), a, u)).view(B, 3, *disp.shape[2:])
        grid = F.interpolate(coarse, size=tuple(out_shape), mode="trilinear", align_corners=True)
        return grid.permute(0, 2, 3, 4, 1)
    u = _positions(tuple(out_shape), extent, matrix).flatten(2).expand(B, -1, -1)
    return torch.baddbmm(b.unsqueeze(2), a, u).view(B, 3, *out_shape).permute(0, 2, 3, 4, 1)


def warp_labels(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling of (B, 1, X, Y, Z) integer labels -> (B, 1, *P) same dtype.

    Outside the input the label is 0 (background).
    """
    out = F.grid_sample(labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out.round_().to(labels.dtype)


def label_luts(flip: torch.Tensor, strip: torch.Tensor, keep_csf: torch.Tensor, lr_swap: torch.Tensor,
               extracerebral: torch.Tensor, csf_index: int) -> torch.Tensor:
    """Per-sample relabelling table (B, L): left/right swap, then skull stripping.

    Args:
        flip, strip, keep_csf: (B,) bool. lr_swap: (L,) int64. extracerebral: (L,) bool.
        csf_index: generation index of the extra-cerebral CSF label (0 if absent).
    """
    B, L = flip.shape[0], lr_swap.shape[0]
    ident = torch.arange(L, device=lr_swap.device)
    swapped = torch.where(flip.view(B, 1), lr_swap.view(1, L), ident.view(1, L))
    drop = extracerebral.view(1, L) & strip.view(B, 1)
    if csf_index > 0:
        is_csf = (ident == csf_index).view(1, L)
        drop = drop | (is_csf & strip.view(B, 1) & ~keep_csf.view(B, 1))
    stripped = torch.where(drop, 0, ident.view(1, L))
    return torch.gather(stripped, 1, swapped)


def remap_labels(labels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample (B, L) or shared (L,) table to (B, 1, *S) integer labels (B, 1, *S) int64."""
    idx = labels.long()
    if lut.dim() == 1:
        return lut[idx]
    B = labels.shape[0]
    return torch.gather(lut, 1, idx.reshape(B, -1)).view(idx.shape)


def jacobian_determinant(disp: torch.Tensor, voxel_mm: float) -> torch.Tensor:
    """det(I + grad d) by central differences; disp (B, 3, X, Y, Z) in mm -> (B, X-2, Y-2, Z-2)."""
    g = []
    for ax in range(3):
        sl_hi = [slice(1, -1)] * 3
        sl_lo = [slice(1, -1)] * 3
        sl_hi[ax], sl_lo[ax] = slice(2, None), slice(None, -2)
        g.append((disp[(..., *sl_hi)] - disp[(..., *sl_lo)]) / (2 * voxel_mm))
    jac = torch.stack(g, -1).permute(0, 2, 3, 4, 1, 5) + torch.eye(3, device=disp.device)
    return torch.linalg.det(jac)

