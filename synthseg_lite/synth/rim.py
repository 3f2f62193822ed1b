"""Partial-volume rim stage: the voxels beside a fluid take part of its intensity, label unchanged.

A rater, and FreeSurfer's aseg, label a voxel on the wall of a ventricle by its tissue unless it is
clearly fluid: in a real scan the voxel outside the ventricle's label still holds some fluid, so
its intensity lies between the tissue's and the fluid's. A generator that paints every voxel with
the Gaussian of its own label never shows that: its only intermediate intensities come from the
blur of a low-resolution acquisition, which mixes both sides alike, so a network trained on it puts
the label boundary at the midpoint of the intensity step and draws thin fluid structures one rim
too large against such references (on the shared OASIS scan the 4th ventricle 1.58x and the 3rd
1.20x of their aseg volumes, 498 of the 671 excess 4th-ventricle voxels one voxel outside it; on
the 10 IBSR scans, whose manual CSF is mostly ventricles, the CSF volume over by 5-50 % on 9).
This stage gives, on a fraction of the samples, every brain voxel with a face neighbour in a chosen
fluid label a random fraction ``w`` of that fluid's intensity:
``image = (1 - w) * tissue + w * fluid``, ``w = a * u`` with ``a`` drawn per sample and ``u ~ U(0, 1)``
per voxel; the label map and the target do not change. Beyond SynthSeg; off by default.
``synth.white_rim`` is the same function with the cerebral white matter as the source and the
cortex as the only place its rim may lie (a cortex's inner border holds myelin and white matter).
"""

from __future__ import annotations

import torch

from synthseg_lite.synth.gmm import gmm_image
from synthseg_lite.synth.morphology import resize_structures

__all__ = ["fluid_rim"]


def fluid_rim(image: torch.Tensor, labels: torch.Tensor, lut: torch.Tensor, fraction: torch.Tensor,
              field: torch.Tensor, classes: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Mix each rim voxel's intensity with its fluid neighbour's Gaussian draw.

    The rim is the set of voxels that one round of 6-connected dilation of the fluid labels
    changes (:func:`~synthseg_lite.synth.morphology.resize_structures`: brain voxels with a face
    neighbour in a fluid label; background and extracerebral voxels never). The fluid's intensity
    there is drawn from the fluid class's Gaussian with the same noise as the image, so the
    texture is kept.

    Args:
        image: (B, 1, *S) float GMM image of ``labels`` (before bias, gamma and resolution).
        labels: (B, 1, *S) integer generation indices.
        lut: (L,) int64 :func:`~synthseg_lite.synth.morphology.morph_lut` of one group, the
            fluid labels (1), the labels the rim may lie in (0) and the others (-1).
        fraction: (B,) maximum fluid fraction ``a`` of each sample in [0, 1]; 0 leaves it unchanged.
        field: (B, 1, *S) per-voxel ``u`` in [0, 1].
        classes, means, stds, noise: the GMM stage's inputs (:func:`~synthseg_lite.synth.gmm.gmm_image`).

    Returns:
        (B, 1, *S) image; equal to ``image`` outside the rim and for samples with ``fraction`` 0.
    """
    on = fraction > 0
    if not bool(on.any()):
        return image
    fluid = resize_structures(labels, on.long().view(-1, 1), lut)  # the rim takes the fluid's label
    rim = fluid != labels
    if not bool(rim.any()):
        return image
    shape = (-1,) + (1,) * (image.dim() - 1)
    weight = fraction.to(image.dtype).view(shape) * field.to(image.dtype)
    mixed = torch.lerp(image, gmm_image(fluid, classes, means, stds, noise), weight)
    return torch.where(rim, mixed, image)
