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

__all__ = [
    "box_plots",
    "class_colors",
    "confusion_plot",
    "histogram_plot",
    "qc_figure",
    "structure_box_plot",
    "structure_colors",
]

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
            :mod:`synthseg_lite.lut`); None: :func:`class_colors`.
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
    for row, (fixed, h, v, view, dirs) in enumerate(_VIEWS):
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
    return _save(fig, path)


#: Metrics in [0, 1]: their axis is fixed to 0-1 so figures compare at a glance.
_UNIT_METRICS = ("Dice", "IoU", "precision", "recall")
_MARKERS = "osD^vP*Xhp<>"
#: Up to this many cases, every case gets its own colour and marker, named in a legend; beyond,
#: only the points outside the whiskers are annotated with their case.
MAX_LEGEND_CASES = 12


def _case_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """(colour, marker) for each of ``n`` cases, all distinct up to 120 cases."""
    cmap = plt.get_cmap("tab10")
    return [(cmap(i % 10), _MARKERS[(i // 10) % len(_MARKERS)]) for i in range(n)]


def _strip(
    ax: plt.Axes, values: Sequence[Sequence[float]], cases: Sequence[str], width: float = 0.15
) -> None:
    """Points of each box (``values[box][case]``), styled per case; outliers annotated by case."""
    styles = _case_styles(len(cases))
    offsets = np.linspace(-width, width, len(cases)) if len(cases) > 1 else np.zeros(1)
    legend = len(cases) <= MAX_LEGEND_CASES
    named: set[int] = set()
    for b, per_case in enumerate(values, start=1):
        v = np.asarray(per_case, dtype=float)
        finite = np.isfinite(v)
        if not finite.any():
            continue
        q1, q3 = np.percentile(v[finite], [25, 75])
        lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        for c, (case, (color, marker)) in enumerate(zip(cases, styles)):
            if not finite[c]:
                continue
            x = b + offsets[c]
            ax.plot(x, v[c], marker, ms=4, alpha=0.8, color=color if legend else "k", zorder=4,
                    label=case if legend and c not in named else None)
            named.add(c)
            if not legend and not lo <= v[c] <= hi:
                ax.annotate(case, (x, v[c]), fontsize=6, xytext=(3, 0),
                            textcoords="offset points")


def box_plots(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    title: str = "",
    cases: Sequence[str] | None = None,
) -> Path:
    """One panel per metric, one box per class, each case a labelled point.

    Args:
        values: metric -> class name -> per-case values, in the order of ``cases`` (non-finite
            values are left out and counted in the tick label).
        path: PNG to write.
        cases: case names; up to :data:`MAX_LEGEND_CASES` each has its own colour and marker
            in a legend, beyond that points outside the whiskers are annotated with their case.
            Dice, IoU, precision and recall axes are fixed to 0-1.
    """
    metrics = list(values)
    n = len(next(iter(next(iter(values.values())).values()), []))
    cases = list(cases) if cases is not None else [f"case {i}" for i in range(n)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.4), squeeze=False)
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
        _strip(ax, [values[metric][name] for name in classes], cases)
        if metric in _UNIT_METRICS:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    if len(cases) <= MAX_LEGEND_CASES:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(cases), 6), fontsize=7,
                   frameon=False)
    fig.suptitle(title)
    rows = -(-len(cases) // 6) if len(cases) <= MAX_LEGEND_CASES else 0
    fig.tight_layout(rect=(0, 0.04 * rows, 1, 1))
    return _save(fig, path)


def structure_colors(values: Sequence[int]) -> list[tuple[float, float, float]]:
    """RGB colours (0-1) of FreeSurfer label values: FreeSurfer's colour table where the package
    has it (:mod:`synthseg_lite.lut`), else evenly spread hues."""
    try:
        from synthseg_lite.lut import FREESURFER_COLORS
    except ImportError:
        FREESURFER_COLORS = {}
    spread = class_colors(len(values) + 1)[1:, :3]
    return [
        tuple(c / 255 for c in FREESURFER_COLORS[v]) if v in FREESURFER_COLORS else tuple(spread[i])
        for i, v in enumerate(values)
    ]


_LABEL_NAMES = {
    "HD95": "HD95 (mm)",
    "ASSD": "ASSD (mm)",
    "volume_diff_pct": "volume difference (%)",
    "volume_diff_mm3": "volume difference (mm³)",
}


def structure_box_plot(
    values: Mapping[str, Mapping[int, Sequence[float]]],
    cases: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Per-structure box plot: one row per metric, one box per structure in its FreeSurfer colour,
    each case a labelled point (as :func:`box_plots`); the Dice axis is fixed to 0-1.

    Args:
        values: metric -> FreeSurfer label value -> per-case values in the order of ``cases``
            (NaN: not scored, left out; inf: counted above the box).
        cases: case names.
        path: PNG to write.
    """
    from matplotlib import patheffects

    from synthseg_lite.labels import FREESURFER_NAMES

    _outline = patheffects.withStroke(linewidth=5.5, foreground="0.2")
    metrics = list(values)
    labels = list(next(iter(values.values())))
    colors = structure_colors(labels)
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(max(10, 0.42 * len(labels) + 2), 3.2 * len(metrics) + 1.5),
        squeeze=False, sharex=True,
    )
    for ax, metric in zip(axes[:, 0], metrics):
        data = [np.asarray(values[metric][v], dtype=float) for v in labels]
        boxes = ax.boxplot(
            [x[np.isfinite(x)] for x in data], showfliers=False, patch_artist=True, widths=0.6
        )
        for patch, median, color in zip(boxes["boxes"], boxes["medians"], colors):
            patch.set(facecolor=color, alpha=0.7, edgecolor="0.3")
            median.set(color=color, linewidth=4, path_effects=[_outline])
        _strip(ax, [values[metric][v] for v in labels], cases, width=0.2)
        if metric in _UNIT_METRICS:
            ax.set_ylim(-0.02, 1.02)
        for i, x in enumerate(data, start=1):  # infinite distances (a missed structure)
            if n_inf := int(np.isinf(x).sum()):
                ax.text(i, 0.97, f"{n_inf}×inf", transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=7, color="crimson")
        ax.set_ylabel(_LABEL_NAMES.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    ticks = [FREESURFER_NAMES[v] for v in labels]
    axes[-1, 0].set_xticks(range(1, len(labels) + 1), ticks, rotation=60, ha="right", fontsize=8)
    if len(cases) <= MAX_LEGEND_CASES:
        handles, names = axes[0, 0].get_legend_handles_labels()
        axes[0, 0].legend(handles, names, fontsize=7, loc="lower left", ncol=min(len(cases), 6))
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
