"""The label-map bank: label maps read (any voxel size, resampled to 1 mm), encoded to generation
indices of the run's label table, cropped and stacked into one in-memory array; the label table
of a run (``data.labels``)."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from synthseg_lite.data.config import DataConfig, PhantomConfig
from synthseg_lite.io import IMAGE_SUFFIXES, load_label_map, strip_suffix
from synthseg_lite.labels import LabelTable, build_label_table

__all__ = [
    "crop_to_labels", "label_values", "load_label_maps", "make_label_table", "phantom_label_maps",
    "read_label_map_1mm", "resolve_paths", "stack_maps",
]

log = logging.getLogger(__name__)


def resolve_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files named by a glob, a folder, a file, or a list of those (sorted, no duplicates).

    Raises:
        ValueError: nothing matches.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    found: list[Path] = []
    for s in specs:
        s = os.path.expanduser(str(s))
        if os.path.isdir(s):
            hits = [str(p) for p in Path(s).iterdir()]
        elif any(c in s for c in "*?["):
            hits = glob.glob(s, recursive=True)
        else:
            hits = [s] if os.path.isfile(s) else []
        found += [Path(h) for h in hits if h.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(h)]
    if not found:
        raise ValueError(f"no NIfTI/MGZ files found for {spec!r}")
    return sorted(set(found))


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    ids = [strip_suffix(p) for p in paths]
    if len(set(ids)) < len(ids):  # e.g. subj*/aseg.nii.gz: prefix the folder name
        ids = [f"{p.parent.name}_{strip_suffix(p)}" for p in paths]
    if len(set(ids)) < len(ids):
        raise ValueError("label map names are not unique, even with their folder names")
    return ids


def crop_to_labels(indices: np.ndarray, margin: int) -> np.ndarray:
    """Crop a (X, Y, Z) map to the box of its non-zero voxels plus ``margin`` voxels."""
    nz = np.nonzero(indices)
    lo = [max(int(a.min()) - margin, 0) for a in nz]
    hi = [min(int(a.max()) + 1 + margin, s) for a, s in zip(nz, indices.shape)]
    return indices[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def stack_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Centre-pad (X, Y, Z) index maps to their largest extent per axis: (N, X, Y, Z), same
    dtype (uint8, or int16 for tables of more than 256 labels)."""
    shape = np.max([m.shape for m in maps], axis=0)
    out = np.zeros((len(maps), *shape), maps[0].dtype)
    for i, m in enumerate(maps):
        o = (shape - m.shape) // 2
        out[i, o[0] : o[0] + m.shape[0], o[1] : o[1] + m.shape[1], o[2] : o[2] + m.shape[2]] = m
    return out


def _encode(raw: np.ndarray, table: LabelTable, margin: int, source: str) -> np.ndarray:
    cropped = crop_to_labels(raw, margin)
    return table.encode(cropped, source)


def read_label_map_1mm(path: str | Path) -> np.ndarray:
    """A label map in RAS order on a 1 mm grid (the generator's input grid): maps of any other
    voxel size are resampled by nearest neighbour (voxels as areas, ``scipy.ndimage.zoom`` with
    ``grid_mode``), with a log line.

    Returns:
        (X, Y, Z) int32 label values.
    """
    from scipy.ndimage import zoom

    vol = load_label_map(path)
    if np.allclose(vol.spacing, 1.0, atol=0.01):
        return vol.data
    data = zoom(vol.data, vol.spacing, order=0, mode="nearest", grid_mode=True)
    log.info(
        "%s: voxel size %s mm, resampled (nearest neighbour) to 1 mm: %s -> %s voxels",
        path, tuple(round(s, 3) for s in vol.spacing), vol.data.shape, data.shape,
    )
    return data


def label_values(paths: Sequence[Path]) -> list[int]:
    """Sorted label values found in the label maps (for ``data.labels=auto``)."""

    def one(p: Path) -> np.ndarray:
        return np.unique(load_label_map(p).data)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        found = list(pool.map(one, paths))
    return sorted({int(v) for u in found for v in u})


def make_label_table(cfg: DataConfig) -> LabelTable:
    """The label table of ``cfg`` (``data.labels``, ``data.target``, ``data.unknown_labels``);
    with ``labels=auto`` the label values are read from the maps (or the phantoms)."""
    values = None
    if cfg.labels == "auto":
        if cfg.label_maps:
            values = label_values(resolve_paths(cfg.label_maps))
        else:
            from synthseg_lite.data.phantom import make_phantom_label_maps

            p = cfg.phantoms
            maps = make_phantom_label_maps(p.n, tuple(p.shape), p.seed)
            values = sorted({int(v) for m in maps for v in np.unique(m)})
        log.info("data.labels=auto: %d generation labels %s", len(values), values[:20])
    return build_label_table(cfg.labels, cfg.target, cfg.unknown_labels, values)


def load_label_maps(
    paths: Sequence[Path], table: LabelTable, margin: int = 4
) -> tuple[list[str], np.ndarray]:
    """Read (resampled to 1 mm, :func:`read_label_map_1mm`), encode, crop and stack label maps.

    Returns:
        ids (file names without suffix) and a (N, X, Y, Z) array of generation indices
        (``table.index_dtype``: uint8, or int16 beyond 256 labels).
    """

    def one(p: Path) -> np.ndarray:
        return _encode(read_label_map_1mm(p), table, margin, str(p))

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        maps = list(pool.map(one, paths))
    return _unique_ids(paths), stack_maps(maps)


def phantom_label_maps(
    cfg: PhantomConfig, table: LabelTable, margin: int = 4
) -> tuple[list[str], np.ndarray]:
    """The embedded default training set: ``cfg.n`` procedural phantoms, encoded and stacked."""
    from synthseg_lite.data.phantom import make_phantom_label_maps

    raw = make_phantom_label_maps(cfg.n, tuple(cfg.shape), cfg.seed)
    maps = [_encode(m, table, margin, f"phantom {i}") for i, m in enumerate(raw)]
    return [f"phantom_{i:03d}" for i in range(cfg.n)], stack_maps(maps)
