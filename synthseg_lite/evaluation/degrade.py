"""Degraded versions of real scans, for robustness checks.

Each transform keeps the voxel grid (shape, voxel order, affine), so the ORIGINAL reference
segmentation still scores a prediction made on the degraded scan:

* :func:`invert_contrast` and :func:`remap_contrast` (:mod:`.contrast`): a T2-like check from a
  skull-stripped T1 (CSF bright, WM dark), and FLAIR- or PD-like ones (a non-monotonic curve
  through the T1's own tissue modes);
* :func:`~.bias.bias_field` (``--bias``): the intensity non-uniformity of a scan that was not
  bias-corrected (a smooth multiplicative field, fixed by a seed);
* :func:`thick_slices`: a thick-slice acquisition (slab averages along one voxel axis, linearly
  interpolated back to the original grid); the axis is the scan's coarsest, a given voxel axis or
  the one nearest an anatomical plane's normal (:func:`plane_axis`: ``--plane axial``).

One does not: :func:`thick_slab_grid` (``--slab-grid``) stores the slab averages on their own
grid, a real low-resolution file as a scanner writes it; its reference is scored with
``evaluate.py resample_pred=true``.

Scans are read as stored on disk (no reorientation) and written under the same file name in
another folder, as float32, atomically::

    python -m synthseg_lite.commands.degrade ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output inv --invert
    python -m synthseg_lite.commands.degrade ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output 5mm \
        --slice-mm 5
    python -m synthseg_lite.commands.degrade t1.nii.gz --output 5mm_file --slice-mm 5 --slab-grid
    python -m synthseg_lite.commands.degrade t1.nii.gz --output axial5 --slice-mm 5 --plane axial
    python -m synthseg_lite.commands.degrade t1.nii.gz --output bias --bias 0.3
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from synthseg_lite.evaluation.bias import bias_field, check_strength
from synthseg_lite.evaluation.contrast import (
    CONTRASTS,
    _invert,
    _remap,
    invert_contrast,
    remap_contrast,
    tissue_modes,
)
from synthseg_lite.io import read_image, save_volume

__all__ = ["CONTRASTS", "PLANES", "degrade_scans", "invert_contrast", "remap_contrast", "slab_size",
           "plane_axis", "thick_slab_grid", "thick_slices", "through_plane_axis", "tissue_modes"]

log = logging.getLogger(__name__)

#: Anatomical planes of a slice -> the axis codes (``nib.aff2axcodes``) of the slice's normal.
PLANES = {"sagittal": "LR", "coronal": "PA", "axial": "IS"}

#: Relative tolerance under which two voxel sizes count as equal in :func:`through_plane_axis`.
SPACING_RTOL = 1e-3


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be 3 numbers (mm), got {spacing_mm!r}") from exc
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive finite voxel sizes in mm, got {spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def _check_axis(axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


def slab_size(spacing_mm: Sequence[float], slice_mm: float, axis: int) -> int:
    """Voxels per thick slice: ``max(1, round(slice_mm / spacing_mm[axis]))``, halves rounded up.

    Args:
        spacing_mm: (3,) voxel size in mm along each array axis.
        slice_mm: simulated slice thickness in mm (> 0).
        axis: voxel axis of the slices' normal (0, 1 or 2).

    Raises:
        ValueError: bad spacing, axis or slice thickness.
    """
    spacing = _check_spacing(spacing_mm)
    axis = _check_axis(axis)
    try:
        slice_mm = float(slice_mm)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"slice thickness must be a number of mm, got {slice_mm!r}") from exc
    if not (math.isfinite(slice_mm) and slice_mm > 0):
        raise ValueError(f"slice thickness must be a positive number of mm, got {slice_mm!r}")
    return max(1, math.floor(slice_mm / spacing[axis] + 0.5))


def thick_slices(data: np.ndarray, spacing_mm: Sequence[float], slice_mm: float,
                 axis: int) -> np.ndarray:
    """Simulate a thick-slice acquisition along voxel axis ``axis``, on the original grid.

    Consecutive slabs of ``n`` voxels (:func:`slab_size`) along ``axis`` are averaged (a last,
    shorter slab is averaged on its own); the slab means, placed at the slab centres, are then
    linearly interpolated back to every original voxel position along ``axis``, and held constant
    before the first and after the last centre. Other axes are untouched. ``n == 1`` (e.g.
    ``slice_mm <= spacing_mm[axis]``) returns an exact float32 copy.

    Args:
        data: (X, Y, Z) intensities, any real dtype.
        spacing_mm: (3,) voxel size in mm along each array axis of ``data``.
        slice_mm: simulated slice thickness in mm (> 0).
        axis: voxel axis (0, 1 or 2) along which slices are thick.

    Returns:
        (X, Y, Z) float32.

    Raises:
        ValueError: data not 3D, bad spacing, axis or slice thickness.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    n = slab_size(spacing_mm, slice_mm, axis)
    if n == 1:
        return data.astype(np.float32, copy=True)
    size = data.shape[axis]
    starts, lengths, means = _slab_means(data, n, axis)
    shape = [1, 1, 1]
    centres = starts + (lengths - 1) / 2.0
    # Fractional slab index of every voxel position (np.interp holds the ends constant).
    frac = np.interp(np.arange(size, dtype=np.float64), centres,
                     np.arange(len(starts), dtype=np.float64))
    left = np.floor(frac).astype(np.intp)
    right = np.minimum(left + 1, len(starts) - 1)
    shape[axis] = size
    w = (frac - left).reshape(shape)
    out = (1.0 - w) * np.take(means, left, axis=axis) + w * np.take(means, right, axis=axis)
    return out.astype(np.float32)


def _slab_means(data: np.ndarray, n: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, float64 means) of consecutive slabs of ``n`` voxels along ``axis`` (a
    last, shorter slab averaged on its own)."""
    size = data.shape[axis]
    starts = np.arange(0, size, n)
    lengths = np.minimum(starts + n, size) - starts
    shape = [1, 1, 1]
    shape[axis] = len(starts)
    means = np.add.reduceat(data.astype(np.float64), starts, axis=axis) / lengths.reshape(shape)
    return starts, lengths, means


def thick_slab_grid(data: np.ndarray, affine: np.ndarray, slice_mm: float,
                    axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A thick-slice acquisition stored as one: the slab means of :func:`thick_slices` on their
    own grid (``n`` times the spacing along ``axis``, voxel centres at the slab centres), as a
    scanner writes a 5 mm clinical scan. A last, shorter slab is dropped (a scanner acquires
    whole slices), so at least one whole slab must fit.

    Args:
        data: (X, Y, Z) intensities, any real dtype.
        affine: (4, 4) voxel -> world affine of ``data`` (mm).
        slice_mm: slice thickness in mm (> 0).
        axis: voxel axis (0, 1 or 2) along which slices are thick.

    Returns:
        (float32 slab means, their (4, 4) affine).

    Raises:
        ValueError: data not 3D, bad affine, axis or slice thickness; no whole slab.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    n = slab_size(_spacing(affine), slice_mm, axis)
    whole = data.shape[axis] // n
    if whole < 1:
        raise ValueError(
            f"{slice_mm} mm slices need {n} voxels along axis {axis}, the scan has "
            f"{data.shape[axis]}"
        )
    _, _, means = _slab_means(data.take(np.arange(whole * n), axis=axis), n, axis)
    to_old = np.eye(4)
    to_old[axis, axis], to_old[axis, 3] = n, (n - 1) / 2.0  # slab j's centre: voxel n j + (n-1)/2
    return means.astype(np.float32), affine @ to_old


def through_plane_axis(spacing_mm: Sequence[float]) -> int:
    """Voxel axis with the largest spacing (the acquisition's slice axis); the first one on ties.

    Spacings within a relative ``SPACING_RTOL`` (0.1 %) of the largest count as ties, so float
    noise in an affine does not pick an arbitrary axis of an isotropic scan.

    Args:
        spacing_mm: (3,) voxel size in mm along each array axis.

    Raises:
        ValueError: not 3 positive finite numbers.
    """
    spacing = _check_spacing(spacing_mm)
    top = max(spacing)
    return next(i for i, s in enumerate(spacing) if s >= top * (1 - SPACING_RTOL))


def plane_axis(affine: np.ndarray, plane: str) -> int:
    """Voxel axis whose direction is nearest the normal of an anatomical ``plane``.

    ``axial`` slices are stacked along inferior-superior, ``coronal`` along posterior-anterior,
    ``sagittal`` along left-right: the voxel axis of a (4, 4) voxel-to-world ``affine`` whose unit
    direction has the largest component along that world axis (``nib.aff2axcodes``' choice; an
    oblique scan gets its nearest axis).

    Raises:
        ValueError: unknown plane, or an affine whose 3x3 part is singular or not finite.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {sorted(PLANES)}, got {plane!r}")
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(rot).all() or abs(np.linalg.det(rot)) < 1e-12:
        raise ValueError("the scan's affine is singular or not finite: no anatomical plane")
    return next(i for i, c in enumerate(nib.aff2axcodes(affine)) if c in PLANES[plane])


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of a (4, 4) affine."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    return float(norms[0]), float(norms[1]), float(norms[2])


def _read_data(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """(X, Y, Z) float32 data in the on-disk voxel order."""
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable image data ({type(exc).__name__}: {exc})") from exc
    data = data.reshape(data.shape[:3]).astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or Inf values")
    return data


def _plan(scans: Sequence[str | Path], output: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs, after every check that can be made before writing anything."""
    if not scans:
        raise ValueError("no scans given")
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: output exists and is not a folder")
    by_name: dict[str, list[Path]] = defaultdict(list)
    for scan in scans:
        by_name[Path(scan).name].append(Path(scan))
    dup = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if dup:
        name, paths = next(iter(dup.items()))
        raise ValueError(f"several inputs share the file name {name} (outputs would collide): "
                         + ", ".join(str(p) for p in paths))
    pairs = []
    for scan in map(Path, scans):
        dest = output / scan.name
        same = dest.resolve() == scan.resolve() or (
            dest.exists() and scan.exists() and os.path.samefile(dest, scan))
        if same:
            raise ValueError(f"{dest}: output would overwrite the input {scan}; "
                             "choose another --output folder")
        if dest.exists() and not overwrite:
            raise ValueError(f"{dest}: already exists (use --overwrite to replace it)")
        pairs.append((scan, dest))
    return pairs


def degrade_scans(scans: Sequence[str | Path], output: str | Path, *, invert: bool = False,
                  slice_mm: float | None = None, axis: int | None = None,
                  slab_grid: bool = False, overwrite: bool = False,
                  contrast: str | None = None, plane: str | None = None,
                  bias: float | None = None, seed: int | None = None) -> list[Path]:
    """Write a degraded copy of each scan to ``output/<same file name>``.

    Scans are read as stored (no reorientation; a trailing singleton 4th axis is dropped) and
    written as float32 with the original affine (and NIfTI header fields), atomically. Everything
    that can be checked is checked before the first file is written.

    Args:
        scans: NIfTI/MGZ paths, with distinct file names.
        output: destination folder (created if needed); must not hold the inputs themselves.
        invert: apply :func:`invert_contrast` (mask: intensity > 0).
        slice_mm: apply :func:`thick_slices` with this slice thickness in mm.
        axis: voxel axis of the thick slices (default per scan: :func:`through_plane_axis`).
        plane: instead of ``axis``, the anatomical plane of the thick slices (``axial``,
            ``coronal``, ``sagittal``), resolved per scan from its affine (:func:`plane_axis`).
        slab_grid: write the thick slices on their own grid (:func:`thick_slab_grid`: a real
            low-resolution file, whose references no longer share its grid) instead of
            interpolated back to the scan's.
        overwrite: replace existing output files.
        contrast: apply :func:`remap_contrast` with this key of :data:`CONTRASTS` (mask:
            intensity > 0).
        bias: multiply by :func:`~.bias.bias_field` of this strength (0.3: within
            [0.77, 1.3], a 1.69x brightest-to-darkest ratio).
        seed: the bias field's seed (default 0; every scan gets the field of this seed on its
            own grid).

    Returns:
        The written paths.

    Raises:
        ValueError: not exactly one of ``invert`` / ``slice_mm`` / ``contrast`` / ``bias``;
            a bias strength outside [0, 10); ``axis`` or
            ``plane`` without ``slice_mm``, or both;
            colliding names; an output that is an input or exists without ``overwrite``; a scan
            that is missing, unreadable, not 3D or not finite.
    """
    if invert + (slice_mm is not None) + (contrast is not None) + (bias is not None) != 1:
        raise ValueError("give exactly one of --invert, --slice-mm, --contrast or --bias")
    if bias is not None:
        bias = check_strength(bias)
    if seed is not None and bias is None:
        raise ValueError("--seed only applies with --bias")
    seed = 0 if seed is None else int(seed)
    if contrast is not None and contrast not in CONTRASTS:
        raise ValueError(f"--contrast must be one of {sorted(CONTRASTS)}, got {contrast!r}")
    if slice_mm is not None:
        slab_size((1.0, 1.0, 1.0), slice_mm, 0)  # validates slice_mm
    if axis is not None:
        if slice_mm is None:
            raise ValueError("--axis only applies with --slice-mm")
        axis = _check_axis(axis)
    if plane is not None:
        if slice_mm is None:
            raise ValueError("--plane only applies with --slice-mm")
        if axis is not None:
            raise ValueError("give --axis or --plane, not both")
        if plane not in PLANES:
            raise ValueError(f"--plane must be one of {sorted(PLANES)}, got {plane!r}")
    if slab_grid and slice_mm is None:
        raise ValueError("--slab-grid only applies with --slice-mm")
    output = Path(output)
    pairs = _plan(scans, output, overwrite)
    images = [read_image(src) for src, _ in pairs]
    written = []
    with logging_redirect_tqdm():
        bar = tqdm(pairs, desc="degrade", unit="scan", disable=None if len(pairs) > 1 else True)
        for (src, dest), img in zip(bar, images):
            data = _read_data(img, src)
            affine = np.asarray(img.affine, dtype=np.float64)
            if invert:
                out, lo, hi = _invert(data, None)
                what = f"inverted contrast inside intensity > 0, mirrored in [{lo:.4g}, {hi:.4g}]"
            elif bias is not None:
                out = data * bias_field(data.shape, _spacing(affine), bias, seed)
                what = f"bias field of strength {bias:g} (seed {seed})"
            elif contrast is not None:
                out, modes = _remap(data, contrast, None)
                what = (f"{contrast}-like contrast inside intensity > 0 (tissue modes "
                        f"{', '.join(f'{m:.4g}' for m in modes)})")
            else:
                spacing = _spacing(affine)
                if plane is not None:
                    ax = plane_axis(affine, plane)
                else:
                    ax = through_plane_axis(spacing) if axis is None else axis
                n = slab_size(spacing, slice_mm, ax)  # type: ignore[arg-type]
                what = (f"{slice_mm:g} mm {plane + ' ' if plane else ''}slices along voxel axis {ax} "
                        f"({nib.aff2axcodes(affine)[ax]}, spacing {spacing[ax]:.4g} mm): "
                        f"slabs of {n} voxel(s)")
                if slab_grid:
                    out, affine = thick_slab_grid(data, affine, slice_mm, ax)  # type: ignore
                    what += f", on their own grid {out.shape}"
                else:
                    out = thick_slices(data, spacing, slice_mm, ax)  # type: ignore[arg-type]
            header = None
            if isinstance(img.header, nib.Nifti1Header):
                header = img.header.copy()
                header.set_data_dtype(np.float32)
                header["cal_min"], header["cal_max"] = 0, 0
            written.append(save_volume(out, affine, dest, dtype=np.float32, header=header))
            log.info("%s: %s -> %s", src, what, dest)
    return written
