"""From a scan on disk to the network's input grid, and the geometry needed to come back.

The steps follow SynthSeg's ``predict.preprocess``:

1. reorient to RAS (axis permutations and flips only, no interpolation: ``nibabel.as_closest_canonical``);
2. resample to the model's isotropic voxel size (separable linear interpolation; Gaussian
   anti-aliasing along axes that are downsampled). The new grid keeps the scan's axis directions
   (oblique scans stay oblique) and its field of view;
3. rescale intensities so that the ``(0.5, 99.5)`` percentiles map to [0, 1], then clip;
4. crop to the bounding box of the non-zero voxels (nnU-Net's "crop to non-zero": saves time on
   skull-stripped scans) and pad at the end to a multiple of the network's divisor.

Everything is done in torch on the device of the input tensor. :class:`Geometry` records each step
so :mod:`synthseg_lite.inference.native` can map predictions back onto the scan's own grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Geometry",
    "from_ras",
    "grid_for",
    "output_geometry",
    "percentile_rescale",
    "preprocess",
    "resample",
    "resample_to_grid",
    "resample_window",
    "to_ras",
]

#: Relative voxel-size difference under which an axis is not resampled.
_SAME_SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Where the network grid sits relative to the scan.

    Attributes:
        native_shape: (3,) array shape on disk.
        native_affine: (4, 4) voxel -> world (mm) affine on disk.
        ornt: (3, 2) nibabel orientation (native axis -> RAS axis, flip) of ``native_affine``.
        ras_shape: (3,) shape after reorientation to RAS.
        ras_affine: (4, 4) affine after reorientation to RAS.
        grid_shape: (3,) shape of the resampled grid (model voxel size).
        grid_affine: (4, 4) affine of the resampled grid.
        ratios: (3,) model voxel size / RAS voxel size, per axis (1.0: axis not resampled).
        box: (3, 2) [start, stop) of the crop fed to the network, in grid voxels.
        padded_shape: (3,) shape fed to the network (crop padded at the end).
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    ornt: np.ndarray
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray
    ratios: tuple[float, float, float]
    box: tuple[tuple[int, int], ...]
    padded_shape: tuple[int, int, int]

    @property
    def ras_spacing(self) -> tuple[float, ...]:
        """Voxel size (mm) of the RAS (= native, permuted) grid."""
        return tuple(float(v) for v in np.sqrt((self.ras_affine[:3, :3] ** 2).sum(0)))


def to_ras(x: torch.Tensor, ornt: np.ndarray) -> torch.Tensor:
    """Reorient the last 3 axes of ``x`` from the native voxel order to RAS (no interpolation).

    Args:
        x: (..., X, Y, Z) tensor in the on-disk voxel order.
        ornt: (3, 2) ``nibabel.io_orientation`` of the on-disk affine.
    """
    lead = x.dim() - 3
    flips = [lead + i for i in range(3) if ornt[i, 1] < 0]
    if flips:
        x = x.flip(flips)
    perm = [0, 0, 0]
    for i in range(3):
        perm[int(ornt[i, 0])] = i  # RAS axis j comes from native axis i
    return x.permute(*range(lead), *(lead + p for p in perm))


def from_ras(x: torch.Tensor, ornt: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`to_ras`: (..., RAS axes) -> (..., native axes)."""
    lead = x.dim() - 3
    x = x.permute(*range(lead), *(lead + int(ornt[i, 0]) for i in range(3)))
    flips = [lead + i for i in range(3) if ornt[i, 1] < 0]
    return x.flip(flips) if flips else x


def _axis_operator(
    n_in: int, n_out: int, ratio: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(n_out, n_in) matrix of 1D linear interpolation (border clamped), after an optional Gaussian
    pre-filter when downsampling (``ratio > 1``)."""
    pos = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * ratio - 0.5).clamp(
        0, n_in - 1
    )
    i0 = pos.floor().long()
    w = pos - i0
    op = torch.zeros(n_out, n_in, device=device, dtype=torch.float64)
    rows = torch.arange(n_out, device=device)
    op[rows, i0] += 1 - w
    op[rows, (i0 + 1).clamp(max=n_in - 1)] += w
    if antialias and ratio > 1 + _SAME_SPACING_RTOL:
        sigma = math.sqrt(ratio**2 - 1) / 2.3548  # input voxels; FWHM = sqrt(ratio^2 - 1)
        idx = torch.arange(n_in, device=device, dtype=torch.float64)
        radius = math.ceil(3 * sigma)
        taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = kernel / kernel.sum()
        src = (idx.view(-1, 1) + taps.view(1, -1)).clamp(0, n_in - 1).long()  # replicate border
        blur = torch.zeros(n_in, n_in, device=device, dtype=torch.float64)
        blur.scatter_add_(1, src, kernel.expand(n_in, -1).contiguous())
        op = op @ blur
    return op.to(dtype)


def resample(
    x: torch.Tensor, ratios: tuple[float, ...], out_shape: tuple[int, ...], antialias: bool = False
) -> torch.Tensor:
    """Separable linear resampling of a (C, X, Y, Z) tensor between grids sharing axis directions.

    Output voxel ``j`` along an axis samples input coordinate ``(j + 0.5) * ratio - 0.5`` (the first
    and last voxel *edges* of the two grids coincide); samples outside the input are clamped to
    its border. Each axis is one matrix product with a small (n_out, n_in) operator.

    Args:
        x: (C, X, Y, Z) float tensor.
        ratios: (3,) output voxel size / input voxel size.
        out_shape: (3,) output spatial shape.
        antialias: Gaussian pre-filter along downsampled axes
            (sigma = sqrt(ratio^2 - 1) / (2 sqrt(2 ln 2)) input voxels).

    Returns:
        (C, *out_shape) tensor, same dtype and device.
    """
    x = x.contiguous()  # matmul on permuted (reoriented) views is many times slower
    for axis, (ratio, n_out) in enumerate(zip(ratios, out_shape)):
        n_in = x.shape[1 + axis]
        if abs(ratio - 1) < _SAME_SPACING_RTOL and n_in == n_out:
            continue
        op = _axis_operator(n_in, n_out, ratio, antialias, x.device, x.dtype)
        x = torch.matmul(x.movedim(1 + axis, -1), op.T).movedim(-1, 1 + axis).contiguous()
    return x


def resample_window(
    x: torch.Tensor,
    ratios: tuple[float, ...],
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    box: tuple[tuple[int, int], ...],
) -> tuple[tuple[slice, ...], torch.Tensor]:
    """:func:`resample` of the part of a volume that matters: the input is known to be constant
    outside ``box``, so only the output voxels whose interpolation weights reach into ``box``
    are computed, from the input voxels they read (the box and a rim of at most a voxel or two).

    Args:
        x: callable ``window -> (C, *sizes)`` tensor: the input restricted to the given
            per-axis slices (the caller fills the rim outside ``box`` with its constant).
        ratios, out_shape: as :func:`resample` (no anti-aliasing: for upsampling back).
        in_shape: (3,) the whole input's spatial shape.
        box: (3, 2) [start, stop) of the non-constant input voxels.

    Returns:
        (output window, (C, *output window sizes) tensor): the output everywhere else equals the
        constant (up to float rounding of ``(1 - w) c + w c``).
    """
    ops, in_win, out_win, same = [], [], [], []
    for (a, b), ratio, n_in, n_out in zip(box, ratios, in_shape, out_shape):
        op = _axis_operator(n_in, n_out, ratio, False, torch.device("cpu"), torch.float64)
        rows = torch.nonzero(op[:, a:b].abs().sum(1) > 0).flatten()
        r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        cols = torch.nonzero(op[r0:r1].abs().sum(0) > 0).flatten()
        c0, c1 = (min(a, int(cols[0])), max(b, int(cols[-1]) + 1)) if len(cols) else (a, b)
        ops.append(op[r0:r1, c0:c1])
        in_win.append(slice(c0, c1))
        out_win.append(slice(r0, r1))
        same.append(abs(ratio - 1) < _SAME_SPACING_RTOL and n_in == n_out)  # as resample()
    y = x(tuple(in_win))
    for axis, (op, skip) in enumerate(zip(ops, same)):
        if skip:  # the identity
            continue
        op = op.to(device=y.device, dtype=y.dtype)
        y = torch.matmul(y.movedim(1 + axis, -1), op.T).movedim(-1, 1 + axis).contiguous()
    return tuple(out_win), y


def grid_for(
    ras_shape: tuple[int, ...], ras_affine: np.ndarray, spacing_mm: float
) -> tuple[tuple[int, int, int], np.ndarray, tuple[float, float, float]]:
    """The grid of voxel size ``spacing_mm`` covering the same field of view as a RAS grid.

    Returns:
        (shape, affine, ratios): grid shape, its (4, 4) affine, and per-axis
        ``spacing_mm / ras_spacing`` (exactly 1.0 where the spacing already matches).
    """
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    ratios = spacing_mm / spacing
    ratios = np.where(np.abs(ratios - 1) < _SAME_SPACING_RTOL, 1.0, ratios)
    shape = tuple(max(1, round(n / r)) for n, r in zip(ras_shape, ratios))
    to_ras_vox = np.diag([*ratios, 1.0])
    to_ras_vox[:3, 3] = 0.5 * ratios - 0.5
    return shape, ras_affine @ to_ras_vox, tuple(float(r) for r in ratios)


def output_geometry(geom: Geometry, output_mm: float) -> Geometry:
    """``geom`` with its scan grid replaced by an isotropic grid of ``output_mm`` voxels over the
    scan's field of view, in RAS voxel order (the scan's axes permuted and flipped to RAS, its
    direction cosines kept): :func:`~synthseg_lite.inference.native.to_native` with it
    writes the segmentation on that grid (SynthSeg's 1 mm output) instead of the scan's.

    The grid is :func:`grid_for`'s: its first voxel edge is the scan's, as is the network
    grid's, so the two grids' voxel centres sit at ``(j + 0.5) * ratio - 0.5`` of each other.
    """
    shape, affine, _ = grid_for(geom.ras_shape, geom.ras_affine, output_mm)
    net_mm = np.sqrt((geom.grid_affine[:3, :3] ** 2).sum(0))
    out_mm = np.sqrt((affine[:3, :3] ** 2).sum(0))
    ratios = net_mm / out_mm
    ratios = np.where(np.abs(ratios - 1) < _SAME_SPACING_RTOL, 1.0, ratios)
    return replace(
        geom,
        native_shape=shape,
        native_affine=affine,
        ornt=np.array([[0, 1], [1, 1], [2, 1]], dtype=float),  # RAS already: no reorientation
        ras_shape=shape,
        ras_affine=affine,
        ratios=tuple(float(r) for r in ratios),
    )


def resample_to_grid(
    data: torch.Tensor, native_affine: np.ndarray, spacing_mm: float
) -> tuple[torch.Tensor, np.ndarray]:
    """A scan on the isotropic RAS grid of ``spacing_mm`` over its field of view (:func:`grid_for`;
    linear, anti-aliased where coarser: the network's input before rescaling).

    Args:
        data: (X, Y, Z) tensor in the on-disk voxel order.
        native_affine: (4, 4) its voxel -> world affine (mm).
        spacing_mm: voxel size of the grid (mm).

    Returns:
        (X', Y', Z') float32 image and its (4, 4) affine.
    """
    _, _, _, image, (_, affine, _) = _to_grid(data, native_affine, spacing_mm)
    return image, affine


def _to_grid(data: torch.Tensor, native_affine: np.ndarray, spacing_mm: float) -> tuple:
    """(ornt, RAS shape, RAS affine, image on the grid of ``spacing_mm``, :func:`grid_for`'s
    (shape, affine, ratios) of that grid) of a scan."""
    native_affine = np.asarray(native_affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(native_affine)
    ras = to_ras(data.float(), ornt)
    ras_affine = native_affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    grid = grid_for(tuple(ras.shape), ras_affine, spacing_mm)
    image = resample(ras[None], grid[2], grid[0], antialias=True)[0]
    return ornt, tuple(ras.shape), ras_affine, image, grid


def percentile_rescale(
    x: torch.Tensor, percentiles: tuple[float, float] = (0.5, 99.5)
) -> torch.Tensor:
    """Map the given percentiles (over all voxels) to 0 and 1, then clip to [0, 1].

    Raises:
        ValueError: the two percentiles are equal (an empty or constant image).
    """
    flat = x.flatten()
    lo_q, hi_q = percentiles
    if not 0 <= lo_q < hi_q <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    n = flat.numel()
    lo = flat.kthvalue(max(1, round(lo_q / 100 * (n - 1)) + 1)).values
    hi = flat.kthvalue(max(1, round(hi_q / 100 * (n - 1)) + 1)).values
    if not hi > lo:
        hi = flat.max()
        if not hi > lo:
            raise ValueError("image is empty (constant intensity)")
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _foreground_box(x: torch.Tensor, margin: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) per axis of the non-zero voxels of a (X, Y, Z) tensor, widened by ``margin``."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(x.amax(dim=other) > 0).flatten()
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.numel() else (0, x.shape[axis])
        box.append((max(0, lo - margin), min(x.shape[axis], hi + margin)))
    return tuple(box)


def preprocess(
    data: torch.Tensor,
    native_affine: np.ndarray,
    spacing_mm: float,
    divisor: int,
    percentiles: tuple[float, float] = (0.5, 99.5),
    crop_foreground: bool = True,
    margin: int = 4,
) -> tuple[torch.Tensor, Geometry]:
    """Prepare one scan for the network.

    Args:
        data: (X, Y, Z) float tensor in the on-disk voxel order (any device).
        native_affine: (4, 4) on-disk voxel -> world affine (mm).
        spacing_mm: the model's isotropic voxel size (mm).
        divisor: every network input side must be a multiple of it (``UNetConfig.divisor``).
        percentiles: intensities mapped to 0 and 1.
        crop_foreground: crop to the non-zero voxels (after rescaling) before padding.
        margin: voxels kept around that crop.

    Returns:
        image: (1, 1, *geometry.padded_shape) float32 in [0, 1], on ``data``'s device.
        geometry: see :class:`Geometry`.

    Raises:
        ValueError: not 3D, or empty / constant image.
    """
    if data.dim() != 3:
        raise ValueError(f"expected a 3D volume, got shape {tuple(data.shape)}")
    native_affine = np.asarray(native_affine, dtype=np.float64)
    ornt, ras_shape, ras_affine, image, grid = _to_grid(data, native_affine, spacing_mm)
    grid_shape, grid_affine, ratios = grid
    image = percentile_rescale(image, percentiles)
    box = _foreground_box(image, margin) if crop_foreground else tuple((0, n) for n in grid_shape)
    image = image[tuple(slice(a, b) for a, b in box)]
    padded = tuple(int(math.ceil(n / divisor) * divisor) for n in image.shape)
    pad = [p - n for n, p in zip(image.shape, padded)]
    image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))
    geom = Geometry(
        tuple(int(n) for n in data.shape),
        native_affine,
        ornt,
        ras_shape,
        ras_affine,
        grid_shape,
        grid_affine,
        ratios,
        box,
        padded,
    )
    return image[None, None].contiguous(), geom
