"""Segment scans end to end: read, preprocess, predict, post-process, write.

Per scan ``<name>`` (the file name without its suffix) the output folder receives
``<name>_seg.<ext>`` (values ``target.values``, on the input's grid and affine), optionally
``<name>_posteriors.<ext>`` (X, Y, Z, K float32) and ``<name>_qc.png``; ``volumes.csv`` holds one
row per scan (soft volumes in mm^3). ``<ext>`` is ``mgz`` for MGZ inputs, ``nii.gz`` otherwise.
A scan that cannot be processed is skipped with a one-line reason; the others go on.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from synthseg_lite.inference.postprocess import (
    KEEP_LARGEST,
    NativePrediction,
    keep_largest_component,
    to_native,
)
from synthseg_lite.inference.predictor import (
    TTA_MODES,
    Predictor,
    default_model_path,
    load_ensemble,
)
from synthseg_lite.inference.preprocess import preprocess, to_ras
from synthseg_lite.io import IMAGE_SUFFIXES, atomic_write, load_volume, save_volume, strip_suffix
from synthseg_lite.plots import qc_figure

__all__ = [
    "InferenceOptions",
    "ScanResult",
    "expand_inputs",
    "output_paths",
    "resolve_device",
    "segment_scans",
    "segment_volume",
]

log = logging.getLogger(__name__)

VOLUMES_CSV = "volumes.csv"


@dataclass
class InferenceOptions:
    """How scans are segmented (the defaults of ``infer.py``).

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        tta: test-time augmentation, one of ``none``, ``flip`` (left/right, SynthSeg), ``mirror``
            (all 8 axis flips, nnU-Net).
        overlap: sliding-window overlap fraction in [0, 1).
        sw_batch_size: windows per network call.
        roi_size: sliding-window size in voxels (None: the model's training patch).
        keep_largest: connected-component clean-up: ``none``, ``brain`` or ``labels``.
        percentiles: intensity percentiles mapped to 0 and 1.
        crop_foreground: run the network on the bounding box of the non-zero voxels only.
        save_posteriors: also write the class probabilities on the input grid.
        save_qc: write a QC PNG per scan.
        threads: CPU threads for torch (None: torch's default).
        progress: show a progress bar over scans.
    """

    device: str = "auto"
    tta: str = "flip"
    overlap: float = 0.5
    sw_batch_size: int = 1
    roi_size: list[int] | None = None
    keep_largest: str = "brain"
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    crop_foreground: bool = True
    save_posteriors: bool = False
    save_qc: bool = True
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.keep_largest not in KEEP_LARGEST:
            raise ValueError(
                f"keep_largest must be one of {KEEP_LARGEST}, got {self.keep_largest!r}"
            )
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(
                f"percentiles must be [low, high] in [0, 100], got {list(self.percentiles)}"
            )


@dataclass
class ScanResult:
    """Outcome for one scan.

    Attributes:
        input: the scan.
        outputs: written files by kind (``seg``, ``posteriors``, ``qc``); empty when skipped.
        volumes_mm3: class name -> soft volume (mm^3).
        seconds: wall time for this scan.
        error: why the scan was skipped (one line), or None.
    """

    input: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    volumes_mm3: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from exc


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Scans named by files, folders (their NIfTI/MGZ files, not recursive) and glob patterns.

    Raises:
        ValueError: nothing matches.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found += sorted(
                f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)
            )
        elif p.exists():
            found.append(p)
        elif glob.has_magic(str(item)):
            found += sorted(
                Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file()
            )
        else:
            raise ValueError(f"input {item}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ValueError(f"input {inputs}: no scans found (NIfTI or MGZ files)")
    return unique


def output_paths(scan: Path, output_dir: Path) -> dict[str, Path]:
    """Where the outputs of ``scan`` go."""
    name = strip_suffix(scan)
    ext = ".mgz" if scan.name.lower().endswith(".mgz") else ".nii.gz"
    return {
        "seg": output_dir / f"{name}_seg{ext}",
        "posteriors": output_dir / f"{name}_posteriors{ext}",
        "qc": output_dir / f"{name}_qc.png",
    }


def segment_volume(
    data: np.ndarray,
    affine: np.ndarray,
    predictor: Predictor,
    opts: InferenceOptions,
    device: torch.device,
) -> NativePrediction:
    """Segment one volume held in memory.

    Args:
        data: (X, Y, Z) array in the on-disk voxel order.
        affine: (4, 4) its voxel -> world affine.
        predictor: the ensemble.
        opts: options (percentiles, cropping, connected components, posteriors).
        device: where to compute.

    Returns:
        :class:`~synthseg_lite.inference.postprocess.NativePrediction`.

    Raises:
        ValueError: empty or constant image.
    """
    meta = predictor.meta
    x = torch.as_tensor(np.asarray(data, dtype=np.float32), device=device)
    image, geom = preprocess(
        x, affine, meta.spacing_mm, meta.unet.divisor, tuple(opts.percentiles), opts.crop_foreground
    )
    probs = predictor(image)[0]
    probs = keep_largest_component(probs, opts.keep_largest)
    return to_native(probs, geom, keep_posteriors=opts.save_posteriors)


def _write_volumes(path: Path, names: Sequence[str], results: Sequence[ScanResult]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["scan", "total_brain_mm3", *names[1:]])
    for r in results:
        if r.error is None:
            fg = [r.volumes_mm3[n] for n in names[1:]]
            writer.writerow([str(r.input), f"{sum(fg):.1f}", *(f"{v:.1f}" for v in fg)])
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def _segment_one(
    scan: Path,
    out: dict[str, Path],
    predictor: Predictor,
    opts: InferenceOptions,
    device: torch.device,
) -> dict[str, float]:
    vol = load_volume(scan, canonical=False)
    if not np.any(vol.data):
        raise ValueError(f"{scan}: image is empty (all zeros)")
    pred = segment_volume(vol.data, vol.affine, predictor, opts, device)
    target = predictor.meta.label_table.target
    values = np.asarray(target.values)
    dtype = np.uint8 if values.max() < 256 else np.int16
    save_volume(values[pred.labels].astype(dtype), vol.affine, out["seg"])
    if pred.posteriors is not None:
        save_volume(np.moveaxis(pred.posteriors, 0, -1), vol.affine, out["posteriors"])
    if opts.save_qc:
        ornt = nib.orientations.io_orientation(vol.affine)
        ras_image = to_ras(torch.as_tensor(vol.data), ornt).numpy()
        ras_affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
        qc_figure(ras_image, pred.labels_ras, ras_affine, target.names, out["qc"], title=scan.name)
    return {name: float(v) for name, v in zip(target.names, pred.volumes_mm3)}


def segment_scans(
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    model: str | Path | None = None,
    options: InferenceOptions | None = None,
) -> list[ScanResult]:
    """Segment every scan named by ``inputs`` into ``output_dir``.

    Args:
        inputs: files, folders or glob patterns (see :func:`expand_inputs`).
        output_dir: created if needed. Outputs never replace an input file.
        model: a run directory (fold checkpoints, see
            :func:`~synthseg_lite.inference.predictor.find_checkpoints`), a ``.ckpt`` or a ``.pt``
            file; None: the model shipped in the package.
        options: see :class:`InferenceOptions`.

    Returns:
        One :class:`ScanResult` per scan, skipped scans included (``error`` set).

    Raises:
        ValueError: no scans, bad options or no usable model (scan-level problems do not raise).
    """
    opts = options or InferenceOptions()
    scans = expand_inputs(inputs)
    output_dir = Path(output_dir)
    device = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    nets, meta = load_ensemble(model if model is not None else default_model_path(), device)
    predictor = Predictor(nets, meta, opts.tta, opts.roi_size, opts.overlap, opts.sw_batch_size)
    log.info(
        "%d scan(s) -> %s (device %s, %d pass(es) per scan, %.2f mm)",
        len(scans),
        output_dir,
        device,
        predictor.n_passes,
        meta.spacing_mm,
    )
    inputs_set = set(scans)
    seen: set[Path] = set()
    results: list[ScanResult] = []
    for scan in tqdm(scans, desc="scans", unit="scan", disable=not opts.progress):
        out = output_paths(scan, output_dir)
        result = ScanResult(scan)
        start = time.perf_counter()
        try:
            clash = [p for p in out.values() if p.resolve() in inputs_set or p in seen]
            if clash:
                raise ValueError(
                    f"{scan}: output {clash[0]} would replace an input or another scan's output"
                )
            seen.update(out.values())
            result.volumes_mm3 = _segment_one(scan, out, predictor, opts, device)
            keep = {"seg": True, "posteriors": opts.save_posteriors, "qc": opts.save_qc}
            result.outputs = {k: v for k, v in out.items() if keep[k]}
        except (ValueError, OSError, RuntimeError, MemoryError) as exc:  # bad scan, disk, memory
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            result.error = msg if str(scan) in msg else f"{scan}: {msg}"
            log.warning("skipped %s", result.error)
            log.debug("details", exc_info=True)
        result.seconds = time.perf_counter() - start
        results.append(result)
        if result.error is None:
            log.info("%s: %.1f s", scan.name, result.seconds)
            _write_volumes(output_dir / VOLUMES_CSV, meta.label_table.target.names, results)
    return results
