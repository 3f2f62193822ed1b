"""Contrast changes of a skull-stripped T1, for robustness checks (same grid, so its references
still apply):

* :func:`invert_contrast`: a T2-like check (CSF bright, WM dark), the intensities mirrored;
* :func:`remap_contrast`: FLAIR-like (CSF dark, GM brighter than WM) or PD-like (little contrast,
  GM brightest): the T1's intensities through a non-monotonic curve whose knots are its own three
  tissue modes (:func:`tissue_modes`), so no mirror of the T1 can stand in for them.

:func:`synthseg_lite.evaluation.degrade.degrade_scans` applies them to files.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONTRASTS", "MIRROR_PERCENTILES", "invert_contrast", "remap_contrast", "tissue_modes"]

#: Percentiles of the masked intensities between which :func:`invert_contrast` mirrors.
MIRROR_PERCENTILES = (0.5, 99.5)

#: Target levels (CSF, GM, WM), as fractions of the T1's 99.5th percentile, of
#: :func:`remap_contrast`: typical ratios of 3 T FLAIR (CSF nulled, GM/WM about 1.3) and
#: proton-density images (GM/WM about 1.3, CSF close to GM).
CONTRASTS: dict[str, tuple[float, float, float]] = {
    "flair": (0.10, 0.80, 0.60),
    "pd": (0.90, 1.00, 0.75),
}


def _mirror_range(data: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """Boolean mask (default ``data > 0``) and the (lo, hi) percentiles of the masked voxels."""
    data = np.asarray(data)
    if mask is None:
        mask = data > 0
    else:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
        mask = mask.astype(bool)
    values = data[mask].astype(np.float64)
    if values.size == 0:
        raise ValueError("the mask selects no voxels "
                         "(expected a skull-stripped scan with a zero background)")
    if not np.isfinite(values).all():
        raise ValueError("data contains NaN or Inf inside the mask")
    lo, hi = np.percentile(values, MIRROR_PERCENTILES)
    return mask, float(lo), float(hi)


def invert_contrast(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mirror intensities inside a brain mask: a T2-like check from a skull-stripped T1.

    With ``lo``, ``hi`` the 0.5 and 99.5 percentiles of the masked voxels, a masked voxel becomes
    ``clip(lo + hi - data, lo, hi)`` (bright WM turns dark, dark CSF bright); every voxel outside
    the mask is 0. For a positive-valued brain (``lo > 0``) the default mask is therefore preserved:
    ``out > 0`` equals ``data > 0``.

    Args:
        data: (X, Y, Z) intensities, any scale and dtype.
        mask: (X, Y, Z) brain mask, any dtype (non-zero = brain); default ``data > 0``.

    Returns:
        (X, Y, Z) float32, values in ``[lo, hi]`` inside the mask and 0 outside.

    Raises:
        ValueError: mask of another shape, empty mask, NaN/Inf inside the mask.
    """
    return _invert(data, mask)[0]


def _invert(data: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """:func:`invert_contrast` and the (lo, hi) it mirrored between."""
    data = np.asarray(data)
    mask, lo, hi = _mirror_range(data, mask)
    out = np.zeros(data.shape, np.float32)
    out[mask] = np.clip(lo + hi - data[mask].astype(np.float64), lo, hi)
    return out, lo, hi


def tissue_modes(values: np.ndarray, iterations: int = 50) -> tuple[float, float, float]:
    """The three tissue intensities of a skull-stripped T1 (CSF < GM < WM), by 1-D k-means.

    Deterministic: the centres start at the 10th, 50th and 90th percentiles of ``values``.

    Args:
        values: (N,) intensities of the brain's voxels.
        iterations: k-means rounds (it converges in a few on brain histograms).

    Raises:
        ValueError: fewer than 3 distinct values (no tissue contrast to remap).
    """
    v = np.sort(np.asarray(values, np.float64).ravel())
    if np.count_nonzero(np.diff(v)) < 2:  # sorted: fewer than 3 distinct values
        raise ValueError("the brain holds fewer than 3 distinct intensities: no tissue contrast")
    centres = np.percentile(v, [10, 50, 90])
    for _ in range(iterations):
        bounds = (centres[:-1] + centres[1:]) / 2
        parts = np.split(v, np.searchsorted(v, bounds))
        new = np.array([p.mean() if p.size else c for p, c in zip(parts, centres)])
        if np.allclose(new, centres):
            break
        centres = np.sort(new)
    return float(centres[0]), float(centres[1]), float(centres[2])


def remap_contrast(
    data: np.ndarray, contrast: str, mask: np.ndarray | None = None
) -> np.ndarray:
    """Another contrast from a skull-stripped T1: its intensities through a non-monotonic curve.

    The curve is piecewise linear through the T1's three tissue modes (:func:`tissue_modes` of the
    masked voxels: CSF, GM, WM), which go to ``CONTRASTS[contrast]`` times the 99.5th percentile;
    its end segments go on beyond the CSF and WM modes (so the texture within a tissue is kept),
    down to a quarter of the lowest level (so ``out > 0`` is the mask). Real anatomy, noise, bias
    and partial volume are kept; what a T1 cannot give is kept too: a CSF/WM partial-volume voxel
    has GM's T1 intensity and takes GM's new value (a thin rim at the ventricle walls that a real
    FLAIR shows only in places).

    Args:
        data: (X, Y, Z) intensities, any scale and dtype.
        contrast: a key of :data:`CONTRASTS` (``flair``, ``pd``).
        mask: (X, Y, Z) brain mask (non-zero = brain); default ``data > 0``.

    Returns:
        (X, Y, Z) float32, 0 outside the mask.

    Raises:
        ValueError: unknown contrast, mask of another shape, empty mask, NaN/Inf inside it, or
            no tissue contrast.
    """
    return _remap(data, contrast, mask)[0]


def _remap(
    data: np.ndarray, contrast: str, mask: np.ndarray | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """:func:`remap_contrast` and the tissue modes (CSF, GM, WM) its curve went through."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {sorted(CONTRASTS)}, got {contrast!r}")
    data = np.asarray(data)
    mask, _, hi = _mirror_range(data, mask)
    values = data[mask].astype(np.float64)
    modes = tissue_modes(values)
    x = np.array(modes)
    y = hi * np.array(CONTRASTS[contrast])
    lo_slope, hi_slope = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
    out = np.zeros(data.shape, np.float32)
    mapped = np.interp(values, x, y)
    below, above = values < x[0], values > x[2]  # the end segments go on: texture is kept
    mapped[below] = y[0] + lo_slope * (values[below] - x[0])
    mapped[above] = y[2] + hi_slope * (values[above] - x[2])
    out[mask] = np.maximum(mapped, 0.25 * y.min())  # above 0: the brain mask is kept
    return out, modes
