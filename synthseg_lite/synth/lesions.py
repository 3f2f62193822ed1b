"""Lesion stage: random blobs painted inside a host structure, with their own random intensity.

White-matter hyperintensities (T2/FLAIR) and hypointensities (T1) are common in the scans labs
segment (ageing, small-vessel disease, multiple sclerosis). FreeSurfer's aseg counts them as
white matter (``WM-hypointensities``, and SynthSeg's 31 structures fold them into cerebral white
matter), but a network that has only seen white matter of one intensity per sample calls a
lesion at cortex intensity cortex. This stage paints, inside the host labels (cerebral white
matter), blobs of the lesion labels (FreeSurfer's ``Left-Lesion``/``Right-Lesion``, 25/57, whose
Gaussian class gets its own random mean like every class, and whose target is the host's), so
the network learns that a blob of any intensity inside the white matter is white matter.

The blobs are where a smooth random field (white noise on a coarse grid, trilinearly upsampled)
exceeds a per-sample threshold: a higher threshold gives fewer and smaller blobs. Beyond SynthSeg
(its generator paints lesions only where the training maps have them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lesion_lut", "paint_lesions"]


def lesion_lut(n_labels: int, hosts: list[int], lesions: list[int]) -> torch.Tensor:
    """(L,) int64 table: host generation index -> its lesion index, every other index -> -1.

    Args:
        n_labels: number of generation indices L.
        hosts, lesions: generation indices, ``lesions[i]`` painted inside ``hosts[i]``.
    """
    if len(hosts) != len(lesions) or not hosts:
        raise ValueError(f"lesions need one lesion label per host label, got {len(hosts)} hosts "
                         f"and {len(lesions)} lesion labels")
    lut = torch.full((n_labels,), -1, dtype=torch.long)
    lut[torch.tensor(hosts, dtype=torch.long)] = torch.tensor(lesions, dtype=torch.long)
    return lut


def paint_lesions(labels: torch.Tensor, field: torch.Tensor, threshold: torch.Tensor,
                  lut: torch.Tensor) -> torch.Tensor:
    """Replace host labels by their lesion label where the upsampled field exceeds the threshold.

    Args:
        labels: (B, 1, *S) integer generation indices (after flip and skull stripping).
        field: (B, 1, *n) float coarse random field spanning the patch (empty: no lesions).
        threshold: (B,) float, in units of the field's values; ``inf`` paints nothing.
        lut: (L,) int64 from :func:`lesion_lut`.

    Returns:
        (B, 1, *S) labels, same dtype; identical to ``labels`` where nothing is painted.
    """
    if field.numel() == 0 or not bool(torch.isfinite(threshold).any()):
        return labels
    dense = F.interpolate(field, size=tuple(labels.shape[2:]), mode="trilinear", align_corners=True)
    target = lut.to(labels.device)[labels.long()]
    paint = (dense > threshold.view(-1, 1, 1, 1, 1)) & (target >= 0)
    return torch.where(paint, target, labels.long()).to(labels.dtype)
