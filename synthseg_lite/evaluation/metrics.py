"""Segmentation metrics per case and class, and their aggregation (nnU-Net's ``summary.json`` layout).

Both segmentations are converted to class indices with a label mapping (a preset of
:data:`synthseg_lite.labels.REFERENCE_PRESETS` -- ``tissue``, ``ibsr``, ``aseg`` (FreeSurfer ->
tissue, CSF with label 24), ``aseg_ventricular`` (CSF = ventricles only) -- or a custom
``{value: class}``; values not in the mapping become background) and must share one grid.

Per case and class ``k >= 1``: Dice, IoU, precision, recall, the 95th-percentile and maximum
Hausdorff distances (HD95: the larger of the two directed 95th percentiles) and the average
symmetric surface distance (ASSD), in mm using the voxel size of the affine (MONAI's edge and
distance-transform functions), volumes in mm^3 and their difference; plus the confusion matrix.

Empty-class policy (as MONAI's ``ignore_empty=False`` semantics, written out explicitly):

* class absent from both: Dice = IoU = precision = recall = 1, HD95 = HD = ASSD = 0 (a perfect
  prediction of "nothing");
* absent from one only: Dice = IoU = 0; precision is NaN when the prediction is empty and
  recall is NaN when the reference is empty (0 / 0), the other one is 0; HD95 = HD = ASSD = +inf.

Aggregated means skip NaN and keep +inf (a missed structure is never averaged away);
``summary.json`` stores them as the JSON tokens ``NaN`` / ``Infinity`` (Python's ``json``, as nnU-Net).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage as ndi

from synthseg_lite.io import Volume, atomic_write, load_segmentation
from synthseg_lite.labels import TARGET_PRESETS, label_mapping, map_labels

__all__ = [
    "METRICS",
    "LabelConventionError",
    "case_metrics",
    "check_convention",
    "class_names",
    "evaluate_pairs",
    "jsonable",
    "label_mapping",
    "labels_on_grid",
    "load_pair",
    "load_segmentation",
    "map_labels",
    "summarise",
    "write_report",
]

log = logging.getLogger(__name__)

#: Per-class metrics, in the order of the CSV columns.
# fmt: off
METRICS = ("Dice", "IoU", "precision", "recall", "HD95", "HD", "ASSD", "ref_volume_mm3",
           "pred_volume_mm3", "volume_diff_mm3", "volume_diff_pct", "TP", "FP", "FN")
# fmt: on


def load_pair(
    pred_path: str | Path, ref_path: str | Path, resample: bool = False
) -> tuple[Volume, Volume]:
    """Read a prediction and its reference (int64, RAS order) on one grid.

    Args:
        resample: a prediction on another grid (e.g. ``infer.py output_mm=1`` of a 5 mm scan
            against a 1 mm reference) is taken onto the reference's grid by
            :func:`labels_on_grid`; without it, another grid is an error.

    Raises:
        ValueError: unreadable, non-integer, or (without ``resample``) not on the same grid.
    """
    pred, ref = load_segmentation(pred_path), load_segmentation(ref_path)
    if pred.data.shape == ref.data.shape and np.allclose(pred.affine, ref.affine, atol=1e-2):
        return pred, ref
    if not resample:
        raise ValueError(
            f"{pred_path}: not on the grid of {ref_path} (shape {pred.data.shape} vs "
            f"{ref.data.shape}, or another affine; resample_pred=true scores it on the "
            "reference's grid)"
        )
    log.info("%s: taken onto the grid of %s (nearest neighbour)", pred_path, ref_path)
    return labels_on_grid(pred, ref), ref


def labels_on_grid(labels: Volume, grid: Volume) -> Volume:
    """``labels`` resampled onto ``grid``'s voxels by nearest neighbour in world coordinates
    (0 outside ``labels``' field of view); labels are never blended.

    Args:
        labels: integer label volume on its own grid.
        grid: any volume whose shape and affine define the target grid.

    Returns:
        The labels as an int64 :class:`~synthseg_lite.io.Volume` with ``grid``'s shape and affine.
    """
    vox = np.linalg.inv(labels.affine) @ grid.affine  # grid voxel -> labels voxel
    data = ndi.affine_transform(
        np.asarray(labels.data), vox[:3, :3], vox[:3, 3], output_shape=grid.data.shape,
        output=np.int64, order=0, mode="constant", cval=0,
    )
    return Volume(data, np.asarray(grid.affine, dtype=np.float64), labels.path)


def _surface(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float, float]:
    """(HD95, HD, ASSD) in mm of two non-empty boolean masks."""
    # Crop to the masks' common bounding box plus one voxel: the same edges and distances, and
    # far less work for small structures in a large volume.
    nz = np.nonzero(pred | ref)
    box = tuple(
        slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n)) for i, n in zip(nz, pred.shape)
    )
    pred, ref = np.ascontiguousarray(pred[box]), np.ascontiguousarray(ref[box])
    with warnings.catch_warnings():  # MONAI warns about its own use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        _, dists, _ = get_edge_surface_distance(
            torch.from_numpy(pred),
            torch.from_numpy(ref),
            spacing=list(spacing),
            symmetric=True,
            warn_empty=False,
        )
    d_pr, d_rp = (d.double() for d in dists)
    hd95 = max(float(torch.quantile(d_pr, 0.95)), float(torch.quantile(d_rp, 0.95)))
    hd = max(float(d_pr.max()), float(d_rp.max()))
    return hd95, hd, float(torch.cat([d_pr, d_rp]).mean())


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    n_classes: int,
    surface: bool = True,
) -> tuple[dict[int, dict[str, float]], np.ndarray]:
    """Metrics of one case.

    Args:
        pred: (X, Y, Z) int class indices (0 .. n_classes - 1).
        ref: (X, Y, Z) int class indices, same grid.
        spacing: (3,) voxel size in mm.
        n_classes: number of classes, background included.
        surface: compute the surface distances (the slowest part).

    Returns:
        per_class: class index (1 .. n_classes - 1) -> metric name -> value (see module docstring).
        confusion: (n_classes, n_classes) int64 voxel counts, rows reference, columns prediction.

    Raises:
        ValueError: shapes differ or indices out of range.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if min(pred.min(), ref.min()) < 0 or max(pred.max(), ref.max()) >= n_classes:
        raise ValueError(f"class indices must be in [0, {n_classes})")
    confusion = np.bincount(
        ref.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel(),
        minlength=n_classes**2,
    ).reshape(n_classes, n_classes)
    voxel = float(np.prod(spacing))
    out: dict[int, dict[str, float]] = {}
    for k in range(1, n_classes):
        tp = int(confusion[k, k])
        fn = int(confusion[k].sum()) - tp
        fp = int(confusion[:, k].sum()) - tp
        n_ref, n_pred = tp + fn, tp + fp
        m: dict[str, float] = {
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "ref_volume_mm3": n_ref * voxel,
            "pred_volume_mm3": n_pred * voxel,
            "volume_diff_mm3": (n_pred - n_ref) * voxel,
            "volume_diff_pct": 100.0 * (n_pred - n_ref) / n_ref if n_ref else float("nan"),
        }
        if n_ref == 0 and n_pred == 0:  # a perfect prediction of nothing
            m |= dict.fromkeys(("Dice", "IoU", "precision", "recall"), 1.0)
            m |= dict.fromkeys(("HD95", "HD", "ASSD"), 0.0)
        else:
            m |= {
                "Dice": 2 * tp / (n_ref + n_pred),
                "IoU": tp / (tp + fp + fn),
                "precision": tp / n_pred if n_pred else float("nan"),
                "recall": tp / n_ref if n_ref else float("nan"),
            }
            if n_ref == 0 or n_pred == 0:
                m |= dict.fromkeys(("HD95", "HD", "ASSD"), float("inf"))
            elif surface:
                m["HD95"], m["HD"], m["ASSD"] = _surface(pred == k, ref == k, spacing)
            else:
                m |= dict.fromkeys(("HD95", "HD", "ASSD"), float("nan"))
        out[k] = {name: m[name] for name in METRICS}
    return out, confusion


def class_names(n_classes: int) -> list[str]:
    """Tissue names for 4 classes, ``class_k`` otherwise."""
    tissue = TARGET_PRESETS["tissue"].names
    return list(tissue) if n_classes == len(tissue) else [f"class_{k}" for k in range(n_classes)]


class LabelConventionError(ValueError):
    """A segmentation does not follow the label preset it was said to follow."""


def check_convention(
    data: np.ndarray, spec: str | Mapping, mapping: Mapping[int, int], source: str, side: str
) -> None:
    """Refuse a segmentation whose values a *preset* does not know (custom mappings may select
    on purpose): e.g. a structure model's aseg values scored as ``tissue``.

    Args:
        data: (X, Y, Z) raw label values.
        spec: the preset name or mapping given by the user (only names are checked).
        mapping: its ``{value: class}`` mapping.
        source: file name for the message.
        side: ``pred`` or ``ref`` (the option is ``<side>_labels``).

    Raises:
        LabelConventionError: over 20 % of the labelled voxels have values the preset lacks.
    """
    if not isinstance(spec, str):
        return
    values, counts = np.unique(data, return_counts=True)
    unknown = np.array([v != 0 and int(v) not in mapping for v in values], dtype=bool)
    fg = counts[values != 0].sum()
    if fg and counts[unknown].sum() > 0.2 * fg:
        aseg = bool(np.isin(values, (41, 42)).any())
        raise LabelConventionError(
            f"{source}: {100 * counts[unknown].sum() / fg:.0f}% of the labelled voxels have values "
            f"{values[unknown][:8].tolist()} unknown to {side}_labels={spec!r}"
            + (
                f"; FreeSurfer aseg values: use {side}_labels=aseg_ventricular for the tissue "
                "view or mode=structures to score each structure"
                if aseg
                else "; give the right preset or a {value: class} mapping"
            )
        )


def evaluate_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    pred_labels: str | Mapping = "tissue",
    ref_labels: str | Mapping = "tissue",
    surface: bool = True,
    resample_pred: bool = False,
) -> dict:
    """Evaluate every pair; a pair that fails (unreadable, other grid) is listed under ``skipped``.
    With ``resample_pred``, a prediction on another grid is scored on the reference's
    (:func:`load_pair`).

    Returns:
        The summary dict (see :func:`summarise`).
    """
    pmap, rmap = label_mapping(pred_labels), label_mapping(ref_labels)
    n_classes = max(max(pmap.values()), max(rmap.values())) + 1
    per_case, skipped = [], []
    for case, pred_path, ref_path in pairs:
        try:
            pred, ref = load_pair(pred_path, ref_path, resample_pred)
            check_convention(pred.data, pred_labels, pmap, str(pred_path), "pred")
            check_convention(ref.data, ref_labels, rmap, str(ref_path), "ref")
            metrics, confusion = case_metrics(
                map_labels(pred.data, pmap, str(pred_path)),
                map_labels(ref.data, rmap, str(ref_path)),
                ref.spacing,
                n_classes,
                surface,
            )
        except LabelConventionError:
            raise  # the wrong option: every case would be wrong the same way
        except ValueError as exc:
            skipped.append({"case": case, "reason": str(exc).splitlines()[0]})
            log.warning("skipped %s: %s", case, skipped[-1]["reason"])
            continue
        per_case.append(
            {
                "case": case,
                "prediction_file": str(pred_path),
                "reference_file": str(ref_path),
                "metrics": metrics,
                "confusion": confusion,
            }
        )
    if not per_case:
        raise ValueError("no case could be evaluated: " + "; ".join(s["reason"] for s in skipped))
    return summarise(per_case, class_names(n_classes), skipped)


def summarise(per_case: list[dict], names: Sequence[str], skipped: Sequence[dict] = ()) -> dict:
    """Per-class means over cases (NaN skipped, inf kept), their foreground mean, summed confusion."""

    def nanmean(values) -> float:  # NaN skipped, inf kept
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    mean = {
        k: {name: nanmean([c["metrics"][k][name] for c in per_case]) for name in METRICS}
        for k in range(1, len(names))
    }
    foreground = {name: nanmean([mean[k][name] for k in mean]) for name in METRICS}
    total = sum(np.asarray(c["confusion"]) for c in per_case)
    return {
        "class_names": {k: n for k, n in enumerate(names)},
        "n_cases": len(per_case),
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground,
        "confusion": total,
        "skipped": list(skipped),
    }


def jsonable(obj):
    """Plain JSON types (dict keys as strings) from nested dicts, lists and numpy values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_report(summary: dict, output_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``summary.json``, ``metrics.csv`` and (``plots``) ``boxplots.png``, ``confusion.png``.

    Returns:
        Written files by kind.
    """
    from synthseg_lite.evaluation.plots import box_plots, confusion_plot

    out = Path(output_dir)
    names = summary["class_names"]
    text = json.dumps(jsonable(summary), indent=2, allow_nan=True)
    files = {"summary": atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "class", "name", *METRICS])
    for c in summary["metric_per_case"]:
        for k, m in c["metrics"].items():
            writer.writerow([c["case"], k, names[k], *(f"{m[n]:.6g}" for n in METRICS)])
    files["csv"] = atomic_write(
        out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue())
    )
    if plots:
        values = {
            metric: {
                names[k]: [c["metrics"][k][metric] for c in summary["metric_per_case"]]
                for k in summary["mean"]
            }
            for metric in ("Dice", "HD95", "ASSD")
        }
        n = summary["n_cases"]
        files["boxplots"] = box_plots(
            values,
            out / "boxplots.png",
            title=f"{n} case(s); distances in mm",
            cases=[c["case"] for c in summary["metric_per_case"]],
        )
        files["confusion"] = confusion_plot(
            summary["confusion"], [names[k] for k in sorted(names)], out / "confusion.png"
        )
    return files
