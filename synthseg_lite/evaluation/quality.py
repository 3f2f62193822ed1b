"""Image-quality mode of the evaluation: how close are synthetic images to real ones?

For each (synthetic, real) pair on one grid, inside a brain mask (a label map's non-zero voxels,
or the real image's non-zero voxels for skull-stripped scans):

* both images are set to 0 outside the mask and rescaled so that their ``(0.5, 99.5)``
  percentiles inside the mask map to [0, 1] (the scanners' units differ);
* intensity histograms inside the mask (density over ``bins`` bins of [0, 1]) and their overlap
  (histogram intersection, 1 = identical distributions);
* SSIM (scikit-image, ``data_range=1``) averaged over the axial (RAS z) slices that contain brain;
* PSNR (dB, ``data_range=1``) on the volume made of those slices (one mean squared error; a
  per-slice mean would be +inf as soon as one slice is identical); +inf only for identical volumes.

The two images (and the mask) must share a grid: same shape and same affine.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from synthseg_lite.io import Volume, atomic_write, load_volume, strip_suffix
from synthseg_lite.evaluation.pairing import find_cases

__all__ = ["QUALITY_METRICS", "check_same_grid", "evaluate_quality", "image_quality"]

log = logging.getLogger(__name__)

QUALITY_METRICS = ("SSIM", "PSNR", "hist_intersection")


def _rescale(x: np.ndarray, mask: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    lo, hi = np.percentile(x[mask], percentiles)
    return np.where(mask, np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)


def image_quality(
    synth: np.ndarray,
    real: np.ndarray,
    mask: np.ndarray | None = None,
    bins: int = 64,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> dict:
    """Compare a synthetic image with a real one.

    Args:
        synth: (X, Y, Z) synthetic image, RAS order.
        real: (X, Y, Z) real image on the same grid.
        mask: (X, Y, Z) bool brain mask; default ``real != 0``.
        bins: histogram bins over [0, 1].
        percentiles: intensity percentiles (inside the mask) mapped to 0 and 1.

    Returns:
        ``SSIM``, ``PSNR`` (dB), ``hist_intersection`` (floats), ``hist_synth``, ``hist_real`` ((bins,)
        densities) and ``bins`` ((bins + 1,) edges).

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    if synth.shape != real.shape:
        raise ValueError(f"synthetic shape {synth.shape} differs from real shape {real.shape}")
    mask = (real != 0) if mask is None else mask.astype(bool)
    if mask.shape != real.shape or not mask.any():
        raise ValueError("brain mask is empty or not on the images' grid")
    s, r = _rescale(synth, mask, percentiles), _rescale(real, mask, percentiles)
    edges = np.linspace(0, 1, bins + 1)
    h_s = np.histogram(s[mask], edges, density=True)[0]
    h_r = np.histogram(r[mask], edges, density=True)[0]
    inter = float(np.minimum(h_s, h_r).sum() * (edges[1] - edges[0]))
    slab = np.nonzero(mask.any((0, 1)))[0]
    ssim = [structural_similarity(r[..., z], s[..., z], data_range=1.0) for z in slab]
    a, b = r[..., slab], s[..., slab]
    psnr = np.inf if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=1.0)
    return {
        "SSIM": float(np.mean(ssim)),
        "PSNR": float(psnr),
        "hist_intersection": inter,
        "hist_synth": h_s,
        "hist_real": h_r,
        "bins": edges,
    }


def check_same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> None:
    """Raise ``ValueError`` unless two volumes share a grid (shape and affine within ``tol_mm``)."""
    if a.data.shape != b.data.shape:
        raise ValueError(f"{b.path}: shape {b.data.shape} differs from {a.path}: {a.data.shape}")
    if not np.allclose(a.affine, b.affine, atol=tol_mm):
        raise ValueError(
            f"{b.path}: not on the grid of {a.path} (affines differ; resample one onto the other)"
        )


def evaluate_quality(
    synth: str | Path,
    real: str | Path,
    output_dir: str | Path,
    synth_pattern: str = r"(?P<id>.+)",
    real_pattern: str = r"(?P<id>.+)",
    mask: str | Path | None = None,
    mask_pattern: str = r"(?P<id>.+)_seg",
    bins: int = 64,
) -> dict:
    """Compare synthetic and real images paired by case id; write ``quality_summary.json``,
    ``quality.csv`` and ``histograms.png`` into ``output_dir``.

    Args:
        synth, real: files or folders (see :func:`synthseg_lite.evaluation.metrics.find_cases`).
        output_dir: created if needed.
        synth_pattern, real_pattern: file-name patterns giving the case id.
        mask: optional file or folder of label maps (non-zero = brain), paired by ``mask_pattern``.
        bins: histogram bins.

    Returns:
        The summary written to ``quality_summary.json``.

    Raises:
        ValueError: no pairs or no case could be compared.
    """
    from synthseg_lite.evaluation.plots import histogram_plot

    if Path(synth).is_file() and Path(real).is_file():
        pairs = {strip_suffix(real): (Path(synth), Path(real))}
    else:
        s_cases, r_cases = find_cases(synth, synth_pattern), find_cases(real, real_pattern)
        pairs = {c: (s_cases[c], r_cases[c]) for c in sorted(set(s_cases) & set(r_cases))}
    if not pairs:
        raise ValueError(f"no (synthetic, real) pairs between {synth} and {real}")
    masks = {}
    if mask is not None:
        masks = (
            {next(iter(pairs)): Path(mask)}
            if Path(mask).is_file()
            else find_cases(mask, mask_pattern)
        )
    per_case, skipped, curves, edges = [], [], {}, None
    for case, (s_path, r_path) in pairs.items():
        try:
            s, r = load_volume(s_path), load_volume(r_path)
            check_same_grid(r, s)
            m = None
            if case in masks:
                mv = load_volume(masks[case], dtype=None)
                check_same_grid(r, mv)
                m = mv.data != 0
            elif mask is not None:
                raise ValueError(f"no mask for case {case!r} in {mask}")
            q = image_quality(s.data, r.data, m, bins)
        except ValueError as exc:
            skipped.append({"case": case, "reason": str(exc).splitlines()[0]})
            log.warning("skipped %s: %s", case, skipped[-1]["reason"])
            continue
        edges = q["bins"]
        curves[case] = (q["hist_real"], q["hist_synth"])
        per_case.append(
            {
                "case": case,
                "synthetic_file": str(s_path),
                "real_file": str(r_path),
                **{k: q[k] for k in QUALITY_METRICS},
            }
        )
    if not per_case:
        raise ValueError("no case could be compared: " + "; ".join(s["reason"] for s in skipped))
    mean = {k: float(np.mean([c[k] for c in per_case])) for k in QUALITY_METRICS}
    summary = {"n_cases": len(per_case), "per_case": per_case, "mean": mean, "skipped": skipped}
    out = Path(output_dir)
    text = json.dumps(summary, indent=2, allow_nan=True)
    atomic_write(out / "quality_summary.json", lambda tmp: Path(tmp).write_text(text))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", *QUALITY_METRICS])
    for c in per_case:
        writer.writerow([c["case"], *(f"{c[k]:.6g}" for k in QUALITY_METRICS)])
    atomic_write(out / "quality.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    histogram_plot(edges, curves, out / "histograms.png")
    return summary
