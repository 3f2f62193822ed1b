"""TensorBoard overlay images: image | reference | prediction, slice by slice (RGB tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["overlay_grid", "overlay_real", "overlay_slices"]


def overlay_grid(
    image: torch.Tensor,
    target: torch.Tensor,
    pred: torch.Tensor,
    colors: torch.Tensor,
    alpha: float = 0.45,
) -> torch.Tensor:
    """Central sagittal/coronal/axial slices: image | target overlay | prediction overlay.

    Args:
        image: (X, Y, Z) float in [0, 1] (RAS). target, pred: (X, Y, Z) class indices.
        colors: (K, 3) float RGB per class (class 0 is not drawn).

    Returns:
        (3, H, W) float RGB in [0, 1]; superior/anterior up.
    """
    views = [tuple(v.select(a, v.shape[a] // 2) for v in (image, target, pred)) for a in range(3)]
    return _overlay_rows(views, colors, alpha)


def overlay_slices(
    image: torch.Tensor,
    target: torch.Tensor,
    pred: torch.Tensor,
    colors: torch.Tensor,
    alpha: float = 0.45,
) -> torch.Tensor:
    """Like :func:`overlay_grid` for a batch of 2D slices: image (N, H, W), up to 4 rows."""
    views = [(image[i], target[i], pred[i]) for i in range(min(4, image.shape[0]))]
    return _overlay_rows(views, colors, alpha)


#: Slices of :func:`overlay_real`: (RAS axis, fraction of the reference's extent along it, from
#: posterior / inferior). Three coronal slices (on an adult brain: through the hippocampi, the
#: amygdalae, the basal ganglia and accumbens) and one axial slice.
REAL_SLICES: tuple[tuple[int, float], ...] = ((1, 0.45), (1, 0.55), (1, 0.62), (2, 0.5))


def overlay_real(
    image: torch.Tensor,
    target: torch.Tensor,
    pred: torch.Tensor,
    colors: torch.Tensor,
    slices: Sequence[tuple[int, float]] = REAL_SLICES,
    margin: int = 4,
    alpha: float = 0.45,
) -> torch.Tensor:
    """A real scan's overlay: one row per slice of ``slices``, cropped to the reference.

    Args:
        image: (X, Y, Z) float in [0, 1], RAS. target, pred: (X, Y, Z) class indices.
        colors: (K, 3) float RGB per class.
        slices: (axis, fraction) pairs: the slice at that fraction of the reference's bounding
            box along the RAS axis (1 coronal, 2 axial, 0 sagittal).
        margin: voxels kept around the reference's bounding box.

    Returns:
        (3, H, W) float RGB in [0, 1] (rows: image | reference | prediction).
    """
    nz = torch.nonzero(target > 0)
    if nz.numel():
        lo = (nz.min(0).values - margin).clamp(min=0).tolist()
        hi = [min(int(h) + margin + 1, n) for h, n in zip(nz.max(0).values, target.shape)]
    else:
        lo, hi = [0, 0, 0], list(target.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    image, target, pred = image[crop], target[crop], pred[crop]
    views = []
    for axis, frac in slices:
        i = min(max(round(frac * (image.shape[axis] - 1)), 0), image.shape[axis] - 1)
        views.append(tuple(v.select(axis, i) for v in (image, target, pred)))
    return _overlay_rows(views, colors, alpha)


def _overlay_rows(
    views: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    colors: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    rows = []
    for view in views:
        img, tgt, prd = (v.T.flip(0) for v in (view[0].float(), view[1].long(), view[2].long()))
        gray = img.clamp(0, 1).expand(3, *img.shape)
        panels = [gray]
        for lab in (tgt, prd):
            col = colors.to(gray)[lab].permute(2, 0, 1)
            a = (lab > 0).float() * alpha
            panels.append(gray * (1 - a) + col * a)
        rows.append(torch.cat(panels, 2))
    width = max(r.shape[2] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2], 0, 2)) for r in rows]
    return torch.cat(rows, 1).cpu()
