"""Texture stage: smooth intensity variation inside each structure, of its own random strength.

The GMM stage paints every structure flat: one mean per class plus white noise, so on a synthetic
image every intensity edge is a label boundary and nothing inside a structure varies over more
than a voxel. Real tissue is not flat at the scale of a structure: the pulvinar is darker than the
rest of the thalamus in T1, the pallidum brighter than the putamen next to it, the white matter
varies with myelination along its tracts, the cortex with its thickness and myelin, and along one
boundary the contrast between two structures changes. This stage adds, to the GMM image,
``amp[class] * field``: one smooth random field per sample (white noise on a coarse grid spanning
the patch, trilinearly upsampled) scaled by a per-class amplitude ``amp ~ N(0, s)``, so each
structure varies smoothly and differently from its neighbours, and a boundary's contrast changes
along it. ``s`` is drawn per sample; the background class is never textured, so a zero background
stays zero. Beyond SynthSeg; off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthseg_lite.synth.gmm import class_values

__all__ = ["add_texture"]


def add_texture(image: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                amp: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """``image + amp[class[label]] * upsample(field)``.

    Args:
        image: (B, 1, *S) float GMM image of ``labels`` (0-255 scale, before bias and gamma).
        labels: (B, 1, *S) integer generation indices.
        classes: (L,) int64 generation class of each index.
        amp: (B, C) per-sample, per-class amplitude (intensity units at the field's unit value;
            0 for the background class and for samples without texture).
        field: (B, 1, *n) float coarse standard normal grid spanning the patch (empty: off).

    Returns:
        (B, 1, *S) image; equal to ``image`` where the amplitude is 0.
    """
    if field.numel() == 0 or not bool((amp != 0).any()):
        return image
    dense = F.interpolate(field.to(image.dtype), size=tuple(image.shape[2:]), mode="trilinear",
                          align_corners=True)
    return torch.addcmul(image, class_values(amp.to(image.dtype), labels, classes), dense)
