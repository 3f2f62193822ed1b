"""The QC figure of a segmented scan (PNG, matplotlib's Agg backend), and the helpers the
evaluation plots share with it.

Slices are drawn from RAS arrays in the neurological convention: the subject's left on the left
of the screen, anterior / superior at the top; each panel is labelled with its directions, and
pixels keep their physical aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from synthseg_lite.io import atomic_write
from synthseg_lite.labels.lut import class_colors

__all__ = ["VIEWS", "qc_figure", "save_figure"]

#: (fixed axis, horizontal axis, vertical axis, name, left / right / bottom / top direction letters)
VIEWS = ((0, 1, 2, "sagittal", "PAIS"), (1, 0, 2, "coronal", "LRIS"), (2, 0, 1, "axial", "LRPA"))


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically) and close it."""
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
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Path:
    """Three views of a scan: the image alone, then three slices with the segmentation overlaid.

    The legend lists the classes present in ``labels`` (in their colours), below the panels in as
    many rows as needed; the figure grows by the legend's height so nothing runs off the edges.

    Args:
        image: (X, Y, Z) intensities, RAS order.
        labels: (X, Y, Z) int class indices on the same grid (0 = background).
        affine: (4, 4) RAS affine (for the voxel size).
        names: class names, index 0 background.
        path: PNG to write (atomically).
        title: figure title.
        colors: (K,) RGB 0-255 per class (e.g. FreeSurfer's LUT colours, see
            :mod:`synthseg_lite.labels.lut`); None: :func:`class_colors`.
    """
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    lo, hi = np.percentile(image[::2, ::2, ::2], [0.5, 99.5])  # display range: 1/8 is plenty
    rgba = class_colors(len(names))
    if colors is not None:
        rgba[1:, :3] = np.asarray(colors, dtype=float)[1:] / 255
        rgba[1:, 3] = 1
    cmap = ListedColormap(rgba)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [k for k in np.nonzero(counts)[0].tolist() if 0 < k < len(names)]
    ncol = 8 if max((len(names[k]) for k in present), default=0) <= 12 else 4
    legend_rows = -(-len(present) // ncol)
    legend_in = 0.2 * legend_rows + 0.15
    fg = (labels > 0) | (image > lo + 0.05 * max(hi - lo, 1e-6))
    # Show the bounding box of the head / brain (with a margin), slices at 30, 50, 70 % of it.
    box = []
    for axis, n in enumerate(labels.shape):
        idx = np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo_i, hi_i = (int(idx[0]), int(idx[-1])) if idx.size else (0, n - 1)
        box.append((max(0, lo_i - 5), min(n, hi_i + 6)))
    fig_h = 10 + legend_in
    fig, axes = plt.subplots(3, 4, figsize=(13, fig_h), facecolor="black")
    for row, (fixed, h, v, view, dirs) in enumerate(VIEWS):
        lo_i, hi_i = box[fixed]
        positions = [round(lo_i + f * (hi_i - 1 - lo_i)) for f in (0.5, 0.3, 0.5, 0.7)]
        for col, pos in enumerate(positions):
            ax = axes[row, col]
            sl = [slice(*b) for b in box]
            sl[fixed] = pos
            aspect = spacing[v] / spacing[h]
            ax.imshow(
                np.clip((image[tuple(sl)].T - lo) / max(hi - lo, 1e-6), 0, 1),
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
                # Label boundaries in dark grey: regions drawn in light colours (FreeSurfer's
                # white for white matter) stay visible on a bright image.
                edge = np.zeros(lab.shape, bool)
                edge[:-1] |= lab[:-1] != lab[1:]
                edge[1:] |= lab[:-1] != lab[1:]
                edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
                ax.imshow(
                    np.ma.masked_equal(edge.astype(np.uint8), 0),
                    cmap=ListedColormap([(0.1, 0.1, 0.1, 0.55)]),
                    origin="lower",
                    aspect=aspect,
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
    handles = [Patch(color=cmap(k), label=str(names[k]).replace("$", r"\$")) for k in present]
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), ncol),
            fontsize=8,
            frameon=False,
            labelcolor="white",
            columnspacing=1.2,
            handlelength=1.2,
        )
    fig.suptitle(title, color="white", parse_math=False)  # a file name may hold `$`
    # Fixed margins (the panels have no ticks): tight_layout costs seconds per figure.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=(legend_in + 0.1) / fig_h,
                        top=1 - 0.75 / fig_h, wspace=0.04, hspace=0.14)
    return save_figure(fig, path)


#: Metrics in [0, 1]: their axis is fixed to 0-1 so figures compare at a glance.
