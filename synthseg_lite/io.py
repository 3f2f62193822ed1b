"""NIfTI / MGZ reading and writing with nibabel.

Volumes are returned as numpy arrays in RAS+ voxel order (``nibabel.as_closest_canonical``) with
their 4x4 voxel-to-world affine in mm. Writers never overwrite an input by accident: they write to a
temporary file in the destination folder and rename it into place (atomic on POSIX).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.imageglobals import LoggingOutputSuppressor
from nibabel.openers import ImageOpener

__all__ = [
    "IMAGE_SUFFIXES",
    "TMP_MARK",
    "Volume",
    "add_write_hook",
    "atomic_write",
    "broken_link",
    "load_label_map",
    "load_segmentation",
    "load_volume",
    "read_image",
    "remove_write_hook",
    "save_volume",
    "strip_suffix",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")

log = logging.getLogger(__name__)


@dataclass
class Volume:
    """A 3D volume.

    Attributes:
        data: (X, Y, Z) array in the voxel order of ``affine``.
        affine: (4, 4) float64 voxel -> world (mm) matrix.
        path: where it was read from.
        oriented: False for a NIfTI with neither qform nor sform (``affine`` is then nibabel's
            fallback from the voxel sizes, x flipped: :func:`has_orientation`).
    """

    data: np.ndarray
    affine: np.ndarray
    path: str = ""
    oriented: bool = True

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


def strip_suffix(path: str | Path) -> str:
    """File name without its image suffix (``a/b/scan.nii.gz`` -> ``scan``)."""
    name = Path(path).name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def broken_link(path: str | Path) -> str | None:
    """Why a path that is a link to nothing cannot be read (None where it is not one): a
    git-annex / DataLad file whose content is not on this machine is such a link."""
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    target = os.readlink(path)
    hint = (": a git-annex / DataLad file whose content is not here (`datalad get` it)"
            if "annex" in target else "")
    return f"a broken link (to {target}){hint}"


def has_orientation(img: nib.spatialimages.SpatialImage) -> bool:
    """False for a NIfTI with neither qform nor sform (qform_code = sform_code = 0): its voxels'
    place in the world is unknown and nibabel's affine a fallback (pixdim, x flipped: LAS)."""
    hdr = img.header
    return not (isinstance(hdr, nib.Nifti1Header)  # NIfTI-2 too; MGZ always has its matrix
                and int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0)


def read_image(path: str | Path, max_voxels: int | None = None) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI/MGZ image lazily, in its on-disk orientation, as 3D (a 4D file with one
    volume is sliced to it). Header warnings (no qform/sform) are logged once, naming the file.

    Args:
        max_voxels: most voxels accepted (None: :data:`synthseg_lite.validate.MAX_VOXELS`).

    Raises:
        ValueError: missing file, other format, unreadable header, not a single 3D volume, or
            unusable (:func:`synthseg_lite.validate.check_header`: RGB/complex data, too many
            voxels, zero/negative voxel sizes, zero or singular affine).
    """
    from synthseg_lite.validate import MAX_VOXELS, check_header

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"{path}: {broken_link(path) or 'no such file'}")
    if not any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES):
        raise ValueError(f"{path}: not a NIfTI or MGZ file (expected one of {IMAGE_SUFFIXES})")
    raw = None
    try:
        with LoggingOutputSuppressor():  # nibabel's own notes (zero pixdim set to 1): ours below
            img = nib.load(str(path))
            img.header  # noqa: B018  (touch the header so a broken file fails here)
            if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
                with ImageOpener(path) as f:  # as stored: nibabel fixes zero voxel sizes to 1
                    raw = type(img.header).from_fileobj(f, check=False)
    except Exception as exc:  # nibabel raises many different types
        raise ValueError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    shape = img.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ValueError(f"{path}: expected a 3D volume (or 4D with one volume), got shape {shape}")
    for warning in check_header(img, path, MAX_VOXELS if max_voxels is None else max_voxels, raw):
        log.warning(warning)  # before any voxel is read: the header's size is checked first
    return _first_volume(img) if len(shape) == 4 else img


def _first_volume(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    """The 3D image of a 4D image with one volume, still unread: its array proxy reshaped (the
    proxy keeps the file's scaling), so that a broken file fails where the data are read."""
    return type(img)(img.dataobj.reshape(img.shape[:3]), img.affine, img.header, extra=img.extra)


def cast_volume(data: np.ndarray, dtype: np.dtype, path: str | Path | None = None) -> np.ndarray:
    """``data`` as ``dtype`` (no copy when it already is), refusing values a narrower float
    cannot hold (float64 beyond float32's 3.4e38 would become Inf).

    Raises:
        ValueError: finite values that overflow ``dtype``, named with ``path``.
    """
    with np.errstate(over="ignore"):  # reported below, in one line
        out = data.astype(dtype, copy=False)
    narrowed = (np.issubdtype(data.dtype, np.floating) and out.dtype.kind == "f"
                and out.itemsize < data.itemsize)
    if narrowed and not np.isfinite(out).all():  # only a narrower float can overflow
        where = f"{path}: " if path else ""
        raise ValueError(
            f"{where}{data.dtype} values up to {float(np.abs(data).max()):.3g} exceed "
            f"the {out.dtype} range"
        )
    return out


def load_volume(
    path: str | Path,
    canonical: bool = True,
    dtype: np.dtype | None = np.float32,
    max_voxels: int | None = None,
    nan: str = "error",
) -> Volume:
    """Read a 3D image.

    Args:
        path: .nii, .nii.gz or .mgz; 3D, or 4D with a single volume.
        canonical: reorient to RAS+ (closest canonical orientation, no resampling).
        dtype: output dtype (None keeps the on-disk dtype).
        max_voxels: most voxels accepted, checked on the header before reading
            (None: :data:`synthseg_lite.validate.MAX_VOXELS`).
        nan: what NaN voxels do: ``"error"`` (label maps, references) or ``"fill"`` (scans to
            segment: set to 0, no signal, with a warning;
            :func:`~synthseg_lite.validate.fill_nan`).
            An infinite value is an error either way.

    Raises:
        ValueError: missing/unreadable file, not 3D, too large, Inf values, NaN values (with
            ``nan="error"``, or when every voxel is NaN).
    """
    if nan not in ("error", "fill"):
        raise ValueError(f"nan must be 'error' or 'fill', got {nan!r}")
    img = read_image(path, max_voxels)
    oriented = has_orientation(img)  # before reorienting: a new image gets new codes
    try:  # the voxels are read here (reorienting reads them too): a truncated or corrupt file
        if canonical:
            img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # gzip's EOFError, zlib.error, OSError, nibabel's own...
        raise ValueError(f"{path}: unreadable image data ({type(exc).__name__}: {exc})") from exc
    floating = np.issubdtype(data.dtype, np.floating)
    if floating and nan == "fill":
        from synthseg_lite.validate import fill_nan

        data, warning = fill_nan(data, path)
        if warning:
            log.warning(warning)
    elif floating and not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or Inf values")
    if dtype is not None:
        data = cast_volume(data, dtype, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(np.ascontiguousarray(data), affine, str(path), oriented)


def load_label_map(path: str | Path, canonical: bool = True) -> Volume:
    """Read a label map as int32 (integer, or integer-valued float, on disk).

    Raises:
        ValueError: NaN/Inf, non-integer values, empty map (all background), an intensity image
            (too many distinct values), not 3D, unreadable.
    """
    vol = load_volume(path, canonical=canonical, dtype=None)
    data = vol.data
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.mod(data, 1) == 0):
            bad = data[np.mod(data, 1) != 0][:5]
            raise ValueError(f"{path}: label map has non-integer values (e.g. {bad.tolist()})")
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{path}: label map has unsupported dtype {data.dtype}")
    data = data.astype(np.int32)
    if not data.any():
        raise ValueError(f"{path}: label map is empty (all background)")
    from synthseg_lite.validate import check_label_values

    check_label_values(data[::2, ::2, ::2], path)  # an intensity image is not a label map
    vol.data = data
    return vol


#: Marks this tool's temporary files: ``.<name, shortened>.sslt-tmp-<8 random><suffix>``
#: (hidden, recognisable, at most 255 bytes whatever the length of ``<name>``).
TMP_MARK = ".sslt-tmp-"
_NAME_MAX = 255
#: Observers of :func:`atomic_write` (the study record of :mod:`synthseg_lite.inference.record`,
#: fault-injection tests): ``hook(path)`` returns a context manager entered before the
#: temporary file is created and left after it was renamed into place (or the write failed).
_WRITE_HOOKS: list = []


def add_write_hook(hook) -> None:
    """Register ``hook(path) -> context manager`` around every :func:`atomic_write`."""
    _WRITE_HOOKS.append(hook)


def remove_write_hook(hook) -> None:
    """Unregister a hook of :func:`add_write_hook` (no error when it is not registered)."""
    if hook in _WRITE_HOOKS:
        _WRITE_HOOKS.remove(hook)


def temporary_prefix(name: str, suffix: str = "") -> str:
    """Prefix of the temporary file of ``name`` (``mkstemp`` adds 8 characters and ``suffix``),
    shortened so that the whole name fits in 255 bytes."""
    room = _NAME_MAX - len(f".{TMP_MARK}{suffix}".encode()) - 8
    head = name.encode()[:room].decode(errors="ignore")
    return f".{head}{TMP_MARK}"


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path`` (same folder).

    The temporary file is hidden and named by :func:`temporary_prefix` (a killed write leaves it;
    :func:`synthseg_lite.safety.remove_stale_temporaries` recognises it). Hooks registered with
    :func:`add_write_hook` are entered first (e.g. the output folder's record claims ``path``).
    """
    from contextlib import ExitStack

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    with ExitStack() as hooks:
        for hook in tuple(_WRITE_HOOKS):
            hooks.enter_context(hook(path))
        fd, tmp = tempfile.mkstemp(
            prefix=temporary_prefix(path.name, suffix), suffix=suffix, dir=path.parent
        )
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | Path,
                dtype: np.dtype | None = None, header: nib.Nifti1Header | None = None,
                oriented: bool = True) -> Path:
    """Write a 3D (or 4D, channels last) array as NIfTI or MGZ, atomically.

    Args:
        data: (X, Y, Z[, C]) array in the voxel order of ``affine``.
        affine: (4, 4) voxel -> world matrix (mm).
        path: destination; its suffix picks the format.
        dtype: on-disk dtype (default: the array's).
        oriented: NIfTI qform and sform codes 1 (scanner); False writes codes 0, as a scan
            without them (:func:`has_orientation`), so that a viewer places the output where
            it places that scan, whatever its fallback.
    """
    data = np.asarray(data if dtype is None else data.astype(dtype))
    path = Path(path)
    if path.name.lower().endswith(".mgz"):
        img = nib.MGHImage(data.astype(np.float32) if data.dtype == np.float64 else data, affine)
    else:
        img = nib.Nifti1Image(data, affine, header=header)
        img.set_qform(affine, code=int(oriented))
        img.set_sform(affine, code=int(oriented))
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def load_segmentation(path: str | Path) -> Volume:
    """Read a segmentation (RAS order) as int64; unlike training label maps it may be empty.

    Raises:
        ValueError: unreadable, not 3D, non-integer values, or an intensity image
            (:func:`synthseg_lite.validate.check_label_values`).
    """
    from synthseg_lite.validate import check_label_values

    vol = load_volume(path, dtype=None)
    if np.issubdtype(vol.data.dtype, np.floating) and not np.all(np.mod(vol.data, 1) == 0):
        raise ValueError(
            f"{path}: looks like an intensity image, not a segmentation (non-integer values)"
        )
    vol.data = vol.data.astype(np.int64)
    check_label_values(vol.data[::2, ::2, ::2], path)  # an integer intensity image is refused too
    return vol
