"""Gaussian smoothing of the network's class probabilities (SynthSeg's ``sigma_smoothing``).

SynthSeg smooths its posteriors with a Gaussian of 0.5 voxels before the argmax
(``predict_synthseg.py``). A network's probabilities carry voxel-level noise, and a 2D model's
more: each voxel's value is the average of slices that were predicted apart, so a boundary is
jagged across the slices. A small kernel removes that noise without moving a boundary that the
probabilities of its neighbours agree on. On the shipped structure model it raised every OASIS
condition and the IBSR tissue view's GM on 10 of 10 scans (README "Segment scans",
``docs/structures.md``, "Smoothing the probabilities"); the tissue presets are not smoothed by
default (:func:`default_sigma_vox`).

The filter is separable, three (or more) taps per axis, with the edge voxel repeated (scipy's
``mode="nearest"``); each class is filtered alone, so a voxel's probabilities still sum to 1.
"""

from __future__ import annotations

import math

import torch

from synthseg_lite.labels import TargetPreset
from synthseg_lite.labels.lut import is_tissue_target

__all__ = [
    "SMOOTH_SIGMA_VOX",
    "TRUNCATE",
    "default_sigma_vox",
    "gaussian_taps",
    "smooth_probabilities_",
]

#: SynthSeg's standard deviation of the posteriors' smoothing, in voxels of the network's grid.
SMOOTH_SIGMA_VOX = 0.5

#: The kernel's radius in standard deviations (scipy's ``truncate``): at 0.5 voxels, 3 taps
#: (the next ones would weigh 3e-4).
TRUNCATE = 2.0


def default_sigma_vox(target: TargetPreset) -> float:
    """The smoothing a model gets unless told otherwise: :data:`SMOOTH_SIGMA_VOX` for a
    structure target, none for the tissue presets. The shipped tissue model (2D, 1.5 mm) came out
    even with it: IBSR GM +0.005 on the T1, OASIS GM and WM 0.001-0.004 lower in 5 of its 6
    conditions (``docs/structures.md``, "Smoothing the probabilities")."""
    return 0.0 if is_tissue_target(target) else SMOOTH_SIGMA_VOX


def gaussian_taps(sigma_vox: float, truncate: float = TRUNCATE) -> list[float]:
    """The normalised taps of a Gaussian of ``sigma_vox`` voxels (> 0), radius
    ``int(truncate * sigma_vox + 0.5)`` (at least 1), as scipy's ``gaussian_filter1d``."""
    if not (math.isfinite(sigma_vox) and sigma_vox > 0):
        raise ValueError(f"the smoothing's sigma must be a number of voxels > 0, got {sigma_vox}")
    radius = max(1, int(truncate * sigma_vox + 0.5))
    w = [math.exp(-0.5 * (i / sigma_vox) ** 2) for i in range(-radius, radius + 1)]
    total = sum(w)
    return [v / total for v in w]


def _filter_axis_(v: torch.Tensor, dim: int, taps: list[float], out: torch.Tensor) -> None:
    """``v`` (X, Y, Z) filtered along ``dim`` with ``taps`` (odd count, symmetric), edges
    repeated; the result is written back into ``v`` (``out``: scratch of ``v``'s shape)."""
    r, n = len(taps) // 2, v.shape[dim]
    torch.mul(v, taps[r], out=out)
    for o in range(1, r + 1):
        w = taps[r + o]
        m = max(n - o, 0)
        if m:
            out.narrow(dim, o, m).add_(v.narrow(dim, 0, m), alpha=w)  # the neighbour before
            out.narrow(dim, 0, m).add_(v.narrow(dim, o, m), alpha=w)  # the neighbour after
        # beyond an edge the edge voxel stands in: the first and last min(o, n) voxels
        k = min(o, n)
        out.narrow(dim, 0, k).add_(v.narrow(dim, 0, 1).expand_as(out.narrow(dim, 0, k)), alpha=w)
        out.narrow(dim, n - k, k).add_(
            v.narrow(dim, n - 1, 1).expand_as(out.narrow(dim, n - k, k)), alpha=w
        )
    v.copy_(out)


def smooth_probabilities_(probs: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Smooth each class of ``probs`` with a Gaussian of ``sigma_vox`` voxels, in place.

    Args:
        probs: (K, X, Y, Z) float probabilities (any strides: a 2D model's sum keeps its slices'
            memory order), overwritten.
        sigma_vox: standard deviation in voxels of ``probs``' grid (> 0; 0 leaves ``probs`` as
            it is).

    Returns:
        ``probs``: each class filtered alone along X, Y and Z (:func:`gaussian_taps`), so the
        sum over classes is kept wherever it was 1. One channel of scratch memory.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must be (K, X, Y, Z), got shape {tuple(probs.shape)}")
    if sigma_vox == 0:
        return probs
    taps = gaussian_taps(sigma_vox)
    out = torch.empty_like(probs[0])
    # the axes from the outermost in memory to the innermost; any order gives the same filter up
    # to float rounding (on the OASIS scan X, Y, Z order changed 1 voxel's label), and this one
    # is the order every figure was measured in
    axes = sorted(range(3), key=lambda d: -probs.stride(1 + d))
    for k in range(probs.shape[0]):  # one class at a time: one channel of scratch
        for d in axes:
            _filter_axis_(probs[k], d, taps, out)
    return probs
