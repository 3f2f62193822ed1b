"""Procedural whole-head label maps: the embedded default training set (no download needed).

Each phantom is a randomised, smoothly folded head in RAS at 1 mm with FreeSurfer labels: scalp and
skull (extra-cerebral 507/515/516), extra-cerebral CSF (24), cortex (3/42) with gyri, white matter
(2/41), lateral ventricles (4/43), deep grey nuclei, hippocampi, cerebellum, brainstem, 3rd/4th
ventricles. Left and right structures carry their own labels. It is not anatomy: it lets the
whole pipeline run and tests run anywhere; train on real label maps for real use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["make_phantom_label_maps", "make_phantom"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    small = tuple(max(4, s // 4) for s in shape)
    field = gaussian_filter(rng.standard_normal(small), sigma / 4)
    field = (field - field.mean()) / (field.std() + 1e-8)
    zoom = [np.linspace(0, n - 1, s) for n, s in zip(small, shape)]
    # separable linear upsampling
    for ax, z in enumerate(zoom):
        lo = np.floor(z).astype(int)
        hi = np.minimum(lo + 1, small[ax] - 1)
        w = (z - lo).reshape([-1 if i == ax else 1 for i in range(3)])
        field = np.take(field, lo, axis=ax) * (1 - w) + np.take(field, hi, axis=ax) * w
    return field


def make_phantom(shape: tuple[int, int, int] = (160, 192, 160), seed: int = 0) -> np.ndarray:
    """One phantom label map, (X, Y, Z) int32 in RAS+ (x: left->right, y: post->ant, z: inf->sup)."""
    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    c = np.array([X / 2, Y / 2, Z / 2 + 4]) + rng.uniform(-3, 3, 3)
    x, y, z = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    wobble = _smooth_noise(rng, shape, 12.0)
    folds = _smooth_noise(rng, shape, 3.0)
    s = rng.uniform(0.92, 1.05, 3)

    def ell(cx, cy, cz, rx, ry, rz):
        return ((dx - cx) / rx) ** 2 + ((dy - cy) / ry) ** 2 + ((dz - cz) / rz) ** 2

    lab = np.zeros(shape, np.int32)
    head = ell(0, 0, -6, 72 * s[0], 90 * s[1], 78 * s[2]) + 0.04 * wobble
    lab[head < 1] = 507  # scalp / soft tissue
    lab[head < 0.88] = 515  # skull
    lab[head < 0.80] = 24  # extra-cerebral CSF
    brain = ell(0, 0, 2, 60 * s[0], 76 * s[1], 62 * s[2]) + 0.03 * wobble
    cortex = brain + 0.06 * folds < 0.97
    left = dx < 0
    lab[cortex & left], lab[cortex & ~left] = 3, 42
    wm = brain + 0.10 * folds < 0.62
    lab[wm & left], lab[wm & ~left] = 2, 41
    lab[(np.abs(dx) < 1.2 + 0.6 * (folds > 1)) & (brain < 0.97) & (dz > -10)] = 24  # fissure
    # cerebellum and brainstem
    cb = ell(0, -48 * s[1], -38, 44, 24, 18) + 0.05 * folds
    cbl = dx < 0
    lab[(cb < 1) & cbl], lab[(cb < 1) & ~cbl] = 8, 47
    lab[(cb < 0.45) & cbl], lab[(cb < 0.45) & ~cbl] = 7, 46
    lab[ell(0, -14, -36, 10, 11, 26) < 1] = 16
    lab[ell(0, -36, -38, 3, 4, 5) < 1] = 15
    # deep structures (mirrored pairs, individually jittered)
    parts = [  # (left label, right label, x, y, z, rx, ry, rz)
        (4, 43, 10, 4, 10, 5, 24, 6), (10, 49, 9, -10, 2, 7, 10, 7), (11, 50, 13, 14, 10, 4, 8, 6),
        (12, 51, 24, 4, 2, 5, 12, 8), (13, 52, 19, 2, 0, 3, 6, 5), (17, 53, 25, -16, -16, 5, 14, 5),
        (18, 54, 23, 2, -18, 5, 5, 5), (28, 60, 10, -6, -10, 5, 6, 4),
    ]
    for ll, rl, px, py, pz, rx, ry, rz in parts:
        for sign, label in ((-1, ll), (1, rl)):
            j = rng.uniform(0.85, 1.15, 3)
            lab[ell(sign * px, py, pz, rx * j[0], ry * j[1], rz * j[2]) < 1] = label
    lab[ell(0, -4, 4, 1.8, 12, 6) < 1] = 14  # 3rd ventricle
    return lab


def make_phantom_label_maps(n: int, shape: tuple[int, int, int] = (160, 192, 160), seed: int = 0) -> list[np.ndarray]:
    """``n`` different phantoms (X, Y, Z) int32, RAS+ at 1 mm (identity affine up to a shift)."""
    if n < 1:
        raise ValueError(f"need at least one phantom, got n={n}")
    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1)) as pool:  # numpy frees the GIL
        return list(pool.map(lambda i: make_phantom(shape, seed * 1000 + i), range(n)))
