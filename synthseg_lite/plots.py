"""PNG figures: inference QC overlays and evaluation summaries (matplotlib, Agg backend).

Slices are drawn from RAS arrays in the neurological convention: the subject's left on the left
of the screen, anterior / superior at the top; each panel is labelled with its directions, and
pixels keep their physical aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from synthseg_lite.io import atomic_write

__all__ = ["box_plots", "class_colors", "confusion_plot", "histogram_plot", "qc_figure"]

# (fixed axis, horizontal axis, vertical axis, name, left / right / bottom / top direction letters)
_VIEWS = ((0, 1, 2, "sagittal", "PAIS"), (1, 0, 2, "coronal", "LRIS"), (2, 0, 1, "axial", "LRPA"))


def class_colors(n: int) -> np.ndarray:
    """(n, 4) RGBA colours; index 0 (background) transparent."""
    base = plt.get_cmap("tab10" if n <= 11 else "tab20")
    cols = np.array([base(i % base.N) for i in range(max(n - 1, 0))]).reshape(-1, 4)
    if n > 21:  # many classes: spread hues instead of cycling
        cols = plt.get_cmap("hsv")(np.linspace(0, 1, n - 1, endpoint=False))
    return np.vstack([[0, 0, 0, 0], cols])


def _save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def qc_figure(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Three views of a scan: the image alone, then three slices with the segmentation overlaid.

    Args:
        image: (X, Y, Z) intensities, RAS order.
        labels: (X, Y, Z) int class indices on the same grid (0 = background).
        affine: (4, 4) RAS affine (for the voxel size).
        names: class names, index 0 background.
        path: PNG to write (atomically).
        title: figure title.
    """
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    lo, hi = np.percentile(image, [0.5, 99.5])
    img = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    cmap = ListedColormap(class_colors(len(names)))
    fg = (labels > 0) | (img > 0.05)
    fg = np.nonzero(fg) if fg.any() else np.nonzero(np.ones_like(labels))
    # Show the bounding box of the head / brain (with a margin), slices at 30, 50, 70 % of it.
    box = [(max(0, int(i.min()) - 5), min(n, int(i.max()) + 6)) for i, n in zip(fg, labels.shape)]
    fig, axes = plt.subplots(3, 4, figsize=(13, 10), facecolor="black")
    for row, (fixed, h, v, view, dirs) in enumerate(_VIEWS):
        lo_i, hi_i = box[fixed]
        positions = [round(lo_i + f * (hi_i - 1 - lo_i)) for f in (0.5, 0.3, 0.5, 0.7)]
        for col, pos in enumerate(positions):
            ax = axes[row, col]
            sl = [slice(*b) for b in box]
            sl[fixed] = pos
            aspect = spacing[v] / spacing[h]
            ax.imshow(
                img[tuple(sl)].T,
                cmap="gray",
                origin="lower",
                aspect=aspect,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            if col:
                lab = labels[tuple(sl)].T
                ax.imshow(
                    np.ma.masked_equal(lab, 0),
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=len(names) - 0.5,
                    origin="lower",
                    aspect=aspect,
                    alpha=0.45,
                    interpolation="nearest",
                )
            ax.set_axis_off()
            ax.set_title(f"{view} {pos}" + ("" if col else " (image)"), color="white", fontsize=9)
            for (x, y, ha, va), letter in zip(
                (
                    (0.01, 0.5, "left", "center"),
                    (0.99, 0.5, "right", "center"),
                    (0.5, 0.01, "center", "bottom"),
                    (0.5, 0.99, "center", "top"),
                ),
                dirs,
            ):
                ax.text(
                    x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=9
                )
    handles = [Patch(color=cmap(k), label=n) for k, n in enumerate(names) if k > 0]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 8),
        fontsize=8,
        frameon=False,
        labelcolor="white",
    )
    fig.suptitle(title, color="white")
    fig.tight_layout(rect=(0, 0.05 + 0.02 * ((len(handles) - 1) // 8), 1, 0.97))
    return _save(fig, path)


def box_plots(
    values: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, title: str = ""
) -> Path:
    """One panel per metric, one box per class (cases as dots).

    Args:
        values: metric -> class name -> per-case values (non-finite values are left out and
            counted in the tick label).
        path: PNG to write.
    """
    metrics = list(values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        classes = list(values[metric])
        data, ticks = [], []
        for name in classes:
            v = np.asarray(values[metric][name], dtype=float)
            finite = v[np.isfinite(v)]
            data.append(finite)
            ticks.append(
                name if finite.size == v.size else f"{name}\n({v.size - finite.size} inf/NaN)"
            )
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), ticks)
        for i, d in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.12, 0.12, d.size), d, "o", ms=3, alpha=0.6, color="k")
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion_plot(
    matrix: np.ndarray, names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Confusion matrix (rows: reference, columns: prediction), coloured by row-normalised rate."""
    matrix = np.asarray(matrix, dtype=float)
    rate = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{rate[i, j]:.2f}\n{int(matrix[i, j]):,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rate[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    ax.set_title(title or "confusion (row-normalised; voxel counts)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def histogram_plot(
    bins: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Intensity histograms of real (solid) and synthetic (dashed) images, one colour per case.

    Args:
        bins: (n + 1,) bin edges.
        curves: case -> (real density (n,), synthetic density (n,)).
    """
    centers = 0.5 * (bins[1:] + bins[:-1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10")
    for i, (case, (real, synth)) in enumerate(curves.items()):
        ax.plot(centers, real, "-", color=colors(i % 10), label=f"{case} real")
        ax.plot(centers, synth, "--", color=colors(i % 10), label=f"{case} synthetic")
    ax.set_xlabel("intensity (percentile-rescaled)")
    ax.set_ylabel("density inside the brain")
    ax.set_title(title or "intensity histograms: real (solid) vs synthetic (dashed)")
    if len(curves) <= 6:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
