"""PNG figures of evaluation summaries (matplotlib, Agg backend): per-class box plots, the
confusion matrix, per-structure box plots and confusion, and intensity histograms.

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

from synthseg_lite.inference.figures import save_figure
from synthseg_lite.labels.lut import class_colors

__all__ = [
    "box_plots",
    "confusion_plot",
    "histogram_plot",
    "structure_box_plot",
    "structure_colors",
    "structure_confusion_plot",
]


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
    return save_figure(fig, path)


def structure_colors(values: Sequence[int]) -> list[tuple[float, float, float]]:
    """RGB colours (0-1) of FreeSurfer label values: FreeSurfer's colour table where the package
    has it (:mod:`synthseg_lite.labels.lut`), else evenly spread hues."""
    try:
        from synthseg_lite.labels.lut import FREESURFER_COLORS
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def structure_confusion_plot(
    confusion_mm3: np.ndarray, labels: Sequence[int], path: str | Path, title: str = ""
) -> Path:
    """Where each structure's voxels went: the off-diagonal of a structure confusion, each row as
    a fraction of that reference structure's volume, on a log colour scale (0.1 % to 100 %);
    the diagonal (agreement) is shown apart as the row's recall, in the right-hand column.

    Args:
        confusion_mm3: (K, K) volumes, rows reference, columns prediction.
        labels: FreeSurfer value of each row / column (0 for background).
        path: PNG to write.
    """
    from matplotlib.colors import LogNorm

    from synthseg_lite.labels import FREESURFER_NAMES

    cm = np.asarray(confusion_mm3, dtype=float)
    rate = cm / np.maximum(cm.sum(1, keepdims=True), 1e-12)
    recall = np.diag(rate).copy()
    off = rate.copy()
    np.fill_diagonal(off, np.nan)
    off[off <= 0] = np.nan
    names = [FREESURFER_NAMES.get(int(v), str(v)) for v in labels]
    n = len(names)
    fig, (ax, axr, cax) = plt.subplots(
        1, 3, figsize=(0.3 * n + 4.5, 0.3 * n + 2.5),
        gridspec_kw={"width_ratios": [n, 2.5, 0.5]},
    )
    im = ax.imshow(off, cmap="magma_r", norm=LogNorm(vmin=1e-3, vmax=1.0), aspect="auto",
                   interpolation="none")
    ax.set_facecolor("0.95")
    for i in range(n):  # agreement cells, not coloured: outlined
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="0.6", lw=0.6))
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    axr.barh(range(n), recall, color=structure_colors([int(v) for v in labels]), height=0.8,
             edgecolor="0.3", linewidth=0.5)
    for i, r in enumerate(recall):
        axr.text(1.02, i, f"{r:.2f}", va="center", fontsize=6)
    axr.set_ylim(n - 0.5, -0.5)
    axr.set_xlim(0, 1)
    axr.set_yticks([])
    axr.set_xlabel("kept (recall)", fontsize=8)
    axr.grid(axis="x", alpha=0.3)
    fig.colorbar(im, cax=cax, label="fraction of the reference volume")
    fig.suptitle(title or "where each structure's voxels went")
    fig.tight_layout()
    return save_figure(fig, path)


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
    return save_figure(fig, path)
