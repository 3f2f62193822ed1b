"""A smooth multiplicative bias field on a real scan: the intensity non-uniformity of a scan that
was not bias-corrected (a raw scanner image: the receive coils' sensitivity falls off with
distance, so one tissue's intensity drifts across the head by 20-50 % at 3 T).

The field is the exponential of a smooth random log-field, fixed by a seed: standard-normal values
on a coarse grid of nodes :data:`NODE_MM` apart *in millimetres* (so a scan's voxel size does not
change how fast the field varies across the head), interpolated to the voxels by cubic splines,
then scaled so that the log-field spans at most ``[-log(1 + s), log(1 + s)]`` for a strength
``s``: the field lies within ``[1 / (1 + s), 1 + s]`` and reaches one end. ``s = 0.3`` is a
1.69x brightest-to-darkest ratio over the field of view.

The segmentation models never saw these scans; their generator draws its own bias fields
(:mod:`synthseg_lite.synth`), as SynthSeg's does. This module only degrades real scans for the
robustness checks of :mod:`.degrade` (``--bias``)::

    python -m synthseg_lite.commands.degrade t1.nii.gz --output bias --bias 0.3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["NODE_MM", "bias_field", "check_strength"]

#: Distance between the coarse grid's nodes (mm): a head of ~180 mm gets 5 nodes along an axis,
#: a field that rises and falls about once across it, as a head coil's sensitivity does.
NODE_MM = 45.0


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 10); ValueError otherwise."""
    try:
        value = float(strength)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bias strength must be a number, got {strength!r}") from exc
    if not (math.isfinite(value) and 0 <= value < 10):
        raise ValueError(f"bias strength must be in [0, 10) (0.3: a 1.69x brightest-to-darkest "
                         f"ratio), got {strength!r}")
    return value


def bias_field(shape: Sequence[int], spacing_mm: Sequence[float], strength: float,
               seed: int = 0) -> np.ndarray:
    """A smooth random multiplicative field.

    Args:
        shape: (X, Y, Z) voxels.
        spacing_mm: (3,) voxel size in mm along each array axis (positive).
        strength: ``s`` >= 0; the field lies within ``[1 / (1 + s), 1 + s]`` and reaches one of
            its ends (0: all ones).
        seed: the random log-field's seed (same seed, shape and spacing: the same field).

    Returns:
        (X, Y, Z) float32 field, > 0.

    Raises:
        ValueError: bad shape, spacing or strength.
    """
    strength = check_strength(strength)
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing_mm)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes, got {shape}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive finite voxel sizes in mm, got {spacing_mm!r}")
    if strength == 0:
        return np.ones(shape, dtype=np.float32)
    nodes = [max(2, math.ceil(n * s / NODE_MM) + 1) for n, s in zip(shape, spacing)]
    coarse = np.random.default_rng(seed).standard_normal(nodes)
    # grid_mode: the coarse grid's cells span the field of view, whatever its voxel size; the
    # output shape is round(c * n / c) = n per axis
    log_field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, nodes)], order=3,
                             mode="reflect", grid_mode=True)
    log_field -= log_field.mean()
    peak = np.abs(log_field).max()
    if peak == 0:  # a 1-voxel image: nothing varies
        return np.ones(shape, dtype=np.float32)
    return np.exp(log_field * (math.log1p(strength) / peak)).astype(np.float32)
