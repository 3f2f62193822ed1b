"""Is this file what the command expects? Checks of scans and label maps, before any work on them.

* :func:`check_header` (every image, from the header alone, before any allocation): data type
  (RGB, complex), dimensions and the number of voxels (``max_voxels``), voxel sizes (zero,
  negative, non-finite) and geometry (zero, singular or non-finite affine).
* :func:`fill_nan` (a scan to segment): NaN voxels (SPM writes NaN where a normalised image has
  no data) become 0 (no signal), with a warning; an infinite value is refused.
* :func:`check_scan` (a scan to segment, read from a file or given in memory): the affine
  (:func:`affine_problem`), an empty or constant image (:func:`blank_problem`), then the two below.
* :func:`scan_problem` (a scan to segment): a few voxels, or a label map given as a scan: skipped
  with a reason.
* :func:`scan_warnings` (a scan to segment): voxels far coarser than any training resolution, or a
  field of view that cannot hold a head: a warning naming the limit (the scan is still segmented).
* :func:`check_label_values` (label maps read for training, export and evaluation): an intensity
  image given as a label map is refused.

Every problem is one line naming the file; a ``ValueError`` for what cannot be used.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from synthseg_lite.labels.presets import FREESURFER_NAMES

__all__ = [
    "MAX_LABEL_VALUES",
    "MAX_SPACING_MM",
    "MAX_VOXELS",
    "MIN_FOV_MM",
    "MIN_VOXELS_PER_AXIS",
    "affine_problem",
    "blank_problem",
    "check_header",
    "check_label_values",
    "check_scan",
    "fill_nan",
    "scan_problem",
    "scan_warnings",
]

#: Most voxels a volume may have (default of ``max_voxels``): 2**28, twice a 0.5 mm 512^3 head
#: (134 M voxels; 0.5 GiB as float32); a header claiming more is refused before any allocation.
MAX_VOXELS = 2**28
#: Fewer voxels than this along any axis is not a volume to segment or train on.
MIN_VOXELS_PER_AXIS = 8
#: Coarsest voxel the generator simulates along one axis (``synth.resolution`` spacing up to 9 mm).
MAX_SPACING_MM = 9.0
#: The generator degrades one axis at a time: the other two should not be coarser than this.
MAX_INPLANE_SPACING_MM = 3.0
#: A field of view smaller than this along an axis cannot hold an adult head (brain ~ 140 mm).
MIN_FOV_MM = 80.0
#: A label map has far fewer distinct values (aseg ~ 45, aparc+aseg ~ 110).
MAX_LABEL_VALUES = 300

_FS_LABELS = frozenset(int(v) for v in FREESURFER_NAMES)


def check_dtype(dtype: np.dtype, path: str | Path | None = None) -> None:
    """Refuse voxels that are not one real number each (RGB, structured, complex, strings...).

    Raises:
        ValueError: any dtype but bool, integer or floating, named with ``path``.
    """
    dtype, where = np.dtype(dtype), _prefix(path)
    if dtype.fields is not None or dtype.kind == "V":
        raise ValueError(f"{where}unsupported data type {dtype} (RGB or structured voxels)")
    if dtype.kind == "c":
        raise ValueError(f"{where}unsupported data type {dtype} (complex voxels)")
    if dtype.kind not in "biuf":
        raise ValueError(f"{where}unsupported data type {dtype}")


def check_header(
    img: nib.spatialimages.SpatialImage,
    path: str | Path,
    max_voxels: int = MAX_VOXELS,
    raw: nib.spatialimages.Header | None = None,
) -> list[str]:
    """Refuse an image whose header already says it cannot be used (no voxel data is read).

    Args:
        img: the opened image, 3D.
        path: its file, for the message.
        max_voxels: most voxels accepted (the array would be allocated from the header's size).
        raw: a NIfTI header as stored (nibabel replaces zero voxel sizes by 1 when it loads one).

    Returns:
        Warnings, one line each (a NIfTI without qform or sform: orientation unknown).

    Raises:
        ValueError: RGB/structured or complex data type, dimensions that are not positive, more
            than ``max_voxels`` voxels, voxel sizes zero, negative or not finite, non-finite,
            zero or singular affine.
    """
    dtype = np.dtype(img.get_data_dtype())
    check_dtype(dtype, path)
    shape = [int(n) for n in img.shape[:3]]
    if min(shape) < 1:
        raise ValueError(f"{path}: the header gives dimensions {shape}: not a volume")
    n = float(np.prod(np.asarray(shape, dtype=np.float64)))
    if n > max_voxels:
        raise ValueError(
            f"{path}: {'x'.join(map(str, shape))} voxels ({n / 1e6:,.0f} M, "
            f"{n * dtype.itemsize / 2**30:,.1f} GiB on disk type) exceed max_voxels={max_voxels} "
            f"({max_voxels / 1e6:,.0f} M; a 0.5 mm 512^3 head is 134 M): not read "
            "(raise max_voxels= if the scan is real)"
        )
    warnings = []
    if raw is not None and "pixdim" in raw:
        zooms = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
        if not (np.isfinite(zooms).all() and (zooms > 0).all()):
            raise ValueError(
                f"{path}: voxel sizes {zooms.tolist()} mm in the header (pixdim) are zero, "
                "negative or not finite: the volumes would be wrong"
            )
        if int(raw["qform_code"]) == 0 and int(raw["sform_code"]) == 0:
            warnings.append(
                f"{path}: no qform or sform in the header: voxel sizes taken from pixdim "
                f"{[round(float(z), 3) for z in zooms]} mm, orientation unknown: nibabel's "
                "fallback assumed (x flipped, LAS), so left and right may be swapped; outputs "
                "keep no qform or sform either"
            )
    else:
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
        if not (np.isfinite(zooms).all() and (zooms > 0).all()):
            raise ValueError(
                f"{path}: voxel sizes {zooms.tolist()} mm in the header are zero, negative or "
                "not finite: the volumes would be wrong"
            )
    problem = affine_problem(img.affine, path)
    if problem:
        raise ValueError(problem)
    return warnings


def affine_problem(affine: np.ndarray, path: str | Path | None = None) -> str | None:
    """Why a voxel -> world matrix cannot place a scan (None: it can): not (4, 4), not finite,
    zero or singular.

    Args:
        affine: (4, 4) voxel -> world (mm) matrix.
        path: the file, for the message (None: no prefix).
    """
    where = _prefix(path)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return f"{where}the affine (voxel -> world matrix) is missing or not finite"
    lin = affine[:3, :3]
    sizes = np.sqrt((lin**2).sum(0))
    if not sizes.all() or abs(np.linalg.det(lin)) < 1e-6 * max(float(sizes.prod()), 1e-12):
        return (
            f"{where}degenerate geometry: the affine is zero or singular (voxel sizes "
            f"{[round(float(s), 3) for s in sizes]} mm)"
        )
    return None


def check_scan(data: np.ndarray, affine: np.ndarray, path: str | Path | None = None) -> list[str]:
    """Every check of a scan about to be segmented, from a file or from memory alike.

    Args:
        data: (X, Y, Z) voxel values (NaN already filled: :func:`fill_nan`).
        affine: (4, 4) voxel -> world (mm) matrix.
        path: the file, for the messages (None: no prefix).

    Returns:
        :func:`scan_warnings`' lines (the scan is still segmented).

    Raises:
        ValueError: :func:`affine_problem`, :func:`blank_problem` or :func:`scan_problem`.
    """
    problem = (
        affine_problem(affine, path)
        or blank_problem(data, path)
        or scan_problem(data[::2, ::2, ::2], path, data.shape)  # a strided subsample is enough
    )
    if problem:
        raise ValueError(problem)
    spacing = nib.affines.voxel_sizes(np.asarray(affine, dtype=np.float64))
    return scan_warnings(data.shape, tuple(float(s) for s in spacing), path)


def _prefix(path: str | Path | None) -> str:
    """``"<path>: "`` before a message about a file, nothing for a scan given in memory."""
    return f"{path}: " if path is not None else ""


def _integer_valued(data: np.ndarray) -> bool:
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return True
    return bool(np.all(np.mod(data, 1) == 0))


def fill_nan(data: np.ndarray, path: str | Path | None = None) -> tuple[np.ndarray, str | None]:
    """A scan's NaN voxels set to 0 (or to its lowest value, if that is negative): no signal.

    SPM writes NaN where a normalised image has no data (outside the source's field of view), and
    some pipelines mask the brain with NaN: those voxels are background, not a broken scan. An MR
    magnitude image has no signal at 0, so NaN becomes 0, or the lowest value of an image shifted
    below 0. An infinite value has no such convention (an overflow, a corrupt file): refused.

    Args:
        data: (X, Y, Z) voxel values, any dtype (only a floating one can hold NaN or Inf).
        path: the file, for the messages (None: no prefix).

    Returns:
        ``(data, warning)``: ``data`` itself when it holds no NaN (warning None), else a filled
        copy and a one-line warning giving how many voxels were filled and with what.

    Raises:
        ValueError: an infinite value, or no voxel but NaN.
    """
    if not np.issubdtype(data.dtype, np.floating):
        return data, None
    finite = np.isfinite(data)
    if finite.all():
        return data, None
    where = _prefix(path)
    if np.isinf(data).any():
        raise ValueError(f"{where}contains Inf values")
    if not finite.any():
        raise ValueError(f"{where}every voxel is NaN")
    n_nan = int(data.size - np.count_nonzero(finite))
    low = min(data[finite].min(), 0)
    warning = (
        f"{where}{n_nan} NaN voxel(s) ({100 * n_nan / data.size:.2g} % of the image) set to "
        f"{float(low):g}, as voxels without signal"
    )
    return np.where(finite, data, low).astype(data.dtype, copy=False), warning


def blank_problem(data: np.ndarray, path: str | Path | None = None) -> str | None:
    """Why a scan holds nothing to segment (None: it has contrast): every voxel 0, or every voxel
    one value (a constant image would be segmented into tissue the network imagines).

    Args:
        data: (X, Y, Z) voxel values, all of them (a subsample can miss the one voxel that differs).
        path: the file, for the message (None: no prefix).
    """
    where = _prefix(path)
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo != hi:
        return None
    if lo == 0:
        return f"{where}image is empty (all zeros)"
    return f"{where}image is constant (every voxel {float(lo):g}): nothing to segment"


def scan_problem(
    data: np.ndarray, path: str | Path | None, shape: tuple[int, ...] | None = None
) -> str | None:
    """Why a scan cannot be segmented (None: it can): a few voxels, or a label map given as a scan.

    A label map has integer values, background 0 as its most common value, and either very few
    values (at most 8: a mask or a tissue segmentation) or only FreeSurfer labels.

    Args:
        data: (X, Y, Z) voxel values (a strided subsample is enough).
        path: the file, for the message (None: no prefix).
        shape: the scan's full shape (default: ``data.shape``).
    """
    where = _prefix(path)
    shape = tuple(int(n) for n in (shape or data.shape)[:3])
    if min(shape) < MIN_VOXELS_PER_AXIS:
        return (
            f"{where}only {'x'.join(map(str, shape))} voxels (at least {MIN_VOXELS_PER_AXIS} "
            "per axis needed)"
        )
    if data.size == 0 or not _integer_valued(data):
        return None
    values, counts = np.unique(data, return_counts=True)
    if len(values) > MAX_LABEL_VALUES or values[np.argmax(counts)] != 0 or len(values) < 2:
        return None
    ints = {int(v) for v in values}
    if len(values) <= 8 or ints <= _FS_LABELS:
        shown = sorted(ints)[:8]
        return (
            f"{where}looks like a label map, not a scan ({len(values)} integer values "
            f"{shown}{'...' if len(values) > 8 else ''}, mostly 0)"
        )
    return None


def scan_warnings(
    shape: tuple[int, ...], spacing: tuple[float, ...], path: str | Path | None
) -> list[str]:
    """Implausible geometry of a scan, one line each (it is still segmented).

    Args:
        shape: voxels along each axis.
        spacing: voxel size along each axis (mm).
        path: the file, for the message (None: no prefix).
    """
    where = _prefix(path)
    out = []
    sp = sorted(float(s) for s in spacing)
    if sp[-1] > MAX_SPACING_MM:
        out.append(
            f"{where}voxels of {sp[-1]:.1f} mm are coarser than any training resolution "
            f"(limit {MAX_SPACING_MM:g} mm): the segmentation may be poor"
        )
    elif sp[1] > MAX_INPLANE_SPACING_MM:
        out.append(
            f"{where}two axes coarser than {MAX_INPLANE_SPACING_MM:g} mm ({sp[1]:.1f}, "
            f"{sp[2]:.1f} mm); training degrades one axis at a time: the segmentation may be poor"
        )
    fov = [n * s for n, s in zip(shape, spacing)]
    if min(fov) < MIN_FOV_MM:
        out.append(
            f"{where}field of view {' x '.join(f'{f:.0f}' for f in fov)} mm cannot hold a head "
            f"(limit {MIN_FOV_MM:g} mm per axis): the segmentation may be poor"
        )
    return out


def check_label_values(data: np.ndarray, path: str | Path) -> None:
    """Refuse an intensity image given where a label map is expected.

    Args:
        data: (X, Y, Z) integer-valued voxels (non-integer values are refused by the reader).
        path: the file, for the message.

    Raises:
        ValueError: more than :data:`MAX_LABEL_VALUES` distinct values, or more than 64 values
            most of which are not FreeSurfer labels (an 8-bit intensity image).
    """
    values = np.unique(data)
    if len(values) > MAX_LABEL_VALUES:
        raise ValueError(
            f"{path}: looks like an intensity image, not a label map ({len(values)} distinct "
            f"values; a label map has at most {MAX_LABEL_VALUES})"
        )
    if len(values) > 64:
        foreign = sum(int(v) not in _FS_LABELS for v in values)
        if foreign > len(values) // 2:
            raise ValueError(
                f"{path}: looks like an intensity image, not a label map ({len(values)} distinct "
                f"values, {foreign} of them not FreeSurfer labels)"
            )
