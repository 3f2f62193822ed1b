"""The Python API: segment one scan in memory with the pipeline of ``synthseg-lite-infer``.

    import synthseg_lite
    result = synthseg_lite.segment("t1.nii.gz")              # GM, WM, CSF (model="tissue")
    result.labels, result.probabilities, result.volumes, result.affine
    result.save("t1_seg.nii.gz")

The steps are those of :func:`synthseg_lite.inference.segment_volume` (reorientation, resampling,
intensity rescaling, network with TTA, connected components, back to the scan's grid); only the
file handling of a study (output tree, ``volumes.csv``, report) is left to the command.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SegmentationResult", "segment"]

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """One segmented scan, on the scan's own grid (its on-disk voxel order), or with
    ``output_mm`` on an isotropic RAS grid of that voxel size over the scan's field of view.

    Attributes:
        labels: (X, Y, Z) uint8 (uint16 / int32 for larger values) output label values: tissue
            (``model="tissue"`` or ``"tissue_fast"``) 1 GM, 2 WM, 3 CSF (``labels="fast"``: 1 CSF,
            2 GM, 3 WM); structure model FreeSurfer aseg values. 0 is background.
        probabilities: (K, X, Y, Z) float32 class probabilities (sum 1 over K); class k is
            ``names[k]`` and has the value ``values[k]``. None with ``save_posteriors=False``
            (labels and volumes only: no K-channel volume of the scan's size in memory, and
            faster on a scan that is not at the model's voxel size).
        affine: (4, 4) float64 voxel -> world (mm) matrix of ``labels`` (the scan's, unless
            ``output_mm`` is given).
        names: class names, background first.
        values: output label value of each class.
        volumes: class name -> volume in mm^3 of the label volume (voxel count x voxel volume),
            background left out.
        soft_volumes: class name -> sum of probabilities x voxel volume (mm^3), background left
            out.
        qc: QC scores in [0, 1] (``qc_score``: the lowest group confidence, as in ``volumes.csv``).
        model: the model file or run directory used.
        pose: a structure network's reading of the brain's pose (degrees from the training
            maps' mean pose, pitch / roll / yaw, ``segmented_upright``), as in the sidecar JSON
            (``model="tissue"`` too: a structure network); None for a tissue network
            (``tissue_fast``; :mod:`synthseg_lite.inference.pose`).
        fov_cut: the side where the field of view cuts the segmented brain (``"inferior"``,
            ``"superior"``, ``"anterior"``, ``"posterior"``, ``"left"``, ``"right"``), ``""``
            where it does not: the volumes there are partial (``qc_fov_cut`` in ``volumes.csv``).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    affine: np.ndarray
    names: tuple[str, ...]
    values: tuple[int, ...]
    volumes: dict[str, float]
    soft_volumes: dict[str, float]
    qc: dict[str, float] = field(default_factory=dict)
    model: str = ""
    pose: dict | None = None
    fov_cut: str = ""

    def save(self, path: str | Path) -> Path:
        """Write the label volume (NIfTI, or MGZ for a ``.mgz`` name) atomically; returns ``path``.

        Raises:
            ValueError: ``path`` exists (an input is never overwritten; remove it first).
        """
        from synthseg_lite.io import save_volume

        path = Path(path)
        if path.exists():
            raise ValueError(f"{path} exists; choose another name or remove it first")
        return save_volume(self.labels, self.affine, path)


def _ensemble(path: Path, device: Any) -> tuple[list, Any]:
    """Loaded networks of a model, kept for the next call (same model and device)."""
    return _cached_ensemble(str(path), str(device))


@functools.lru_cache(maxsize=2)
def _cached_ensemble(path: str, device: str) -> tuple[list, Any]:
    from synthseg_lite.inference.predictor import load_ensemble

    return load_ensemble(path, device)


def _read(scan: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a path, a nibabel image or a ``(data, affine)`` pair; NaN voxels read as
    no signal, as a file's are (:func:`synthseg_lite.validate.fill_nan`)."""
    if isinstance(scan, (str, Path)):
        from synthseg_lite.io import load_volume

        vol = load_volume(scan, canonical=False, nan="fill")
        return np.asarray(vol.data), np.asarray(vol.affine, dtype=np.float64)
    from synthseg_lite.io import cast_volume
    from synthseg_lite.validate import check_dtype, fill_nan

    data, affine = _in_memory(scan)
    check_dtype(data.dtype)
    data, warning = fill_nan(data)
    if warning:
        log.warning(warning)
    return cast_volume(data, np.float32), affine


def _in_memory(scan: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a nibabel image or a ``(data, affine)`` pair, as given (one volume of a
    4D one with a single volume, as a file's)."""
    if hasattr(scan, "affine") and hasattr(scan, "get_fdata"):
        data, affine = np.asanyarray(scan.dataobj), scan.affine  # scaled as stored
    elif isinstance(scan, tuple) and len(scan) == 2:
        data, affine = np.asarray(scan[0]), scan[1]
    else:
        raise ValueError(
            "scan must be a file path, a nibabel image or a (data, affine) pair, got "
            f"{type(scan).__name__}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(
            f"expected a (X, Y, Z) array and a (4, 4) affine, got {data.shape} and {affine.shape}"
        )
    return data, affine


def segment(scan_or_path: Any, model: str | Path = "tissue", **options: Any) -> SegmentationResult:
    """Segment one brain MRI scan.

    Args:
        scan_or_path: a NIfTI/MGZ file, a nibabel image, or a ``(data, affine)`` pair with data
            (X, Y, Z) (or (X, Y, Z, 1)) in any intensity scale and affine (4, 4) voxel -> world
            in mm.
        model: ``"tissue"`` (GM, WM, ventricular CSF: the shipped structure network's
            structures grouped; without it, ``tissue_fast``), ``"tissue_fast"`` (the shipped
            dedicated tissue network: about 2.6x faster, less accurate), ``"structures"``
            (SynthSeg's structures; shipped when present), a run directory, a ``.ckpt`` or a
            ``.pt`` file.
        **options: any field of :class:`~synthseg_lite.inference.InferenceOptions`, e.g.
            ``tta="none"``, ``device="cuda"``, ``threads=1``, ``labels="fast"``,
            ``save_posteriors=False`` (no ``probabilities``); the options about files, studies
            and reports have no effect here.

    Returns:
        :class:`SegmentationResult`.

    Raises:
        ValueError: unknown option, unreadable, empty or constant scan, RGB or complex voxels,
            values beyond float32's range, a folder, a label map, fewer than
            8 voxels along an axis, a zero, singular or non-finite affine, missing model
            (:func:`synthseg_lite.validate.check_scan`, as ``synthseg-lite-infer`` skips a scan).
    """
    from synthseg_lite.inference.segment import InferenceOptions, load_predictor, segment_volume
    from synthseg_lite.labels.lut import label_dtype, output_labels
    from synthseg_lite.validate import check_scan

    known = {f.name for f in fields(InferenceOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; options are {sorted(known)}")
    opts = InferenceOptions(**({"save_posteriors": True} | options | {"progress": False}))
    data, affine = _read(scan_or_path)
    for warning in check_scan(data, affine):  # the checks of synthseg-lite-infer's scans
        log.warning(warning)
    predictor, _, device, path = load_predictor(model, opts, _ensemble)
    pred = segment_volume(data, affine, predictor, opts, device)
    out = output_labels(predictor.target, opts.labels)
    lut = out.lut()
    labels = lut[pred.labels].astype(label_dtype(lut))
    voxel_mm3 = float(abs(np.linalg.det(pred.affine[:3, :3])))
    hard = np.bincount(pred.labels.ravel(), minlength=len(out.names)) * voxel_mm3
    return SegmentationResult(
        labels=labels,
        probabilities=pred.posteriors,
        affine=np.asarray(pred.affine, dtype=np.float64),
        names=tuple(out.names),
        values=tuple(int(v) for v in out.values),
        volumes={n: float(v) for n, v in zip(out.names[1:], hard[1:])},
        soft_volumes={n: float(v) for n, v in zip(out.names[1:], pred.volumes_mm3[1:])},
        qc=dict(pred.qc),
        model=str(path),
        pose=pred.pose,
        fov_cut=pred.fov_cut,
    )
