"""Per-structure evaluation: a structure segmentation against a FreeSurfer aseg, per structure.

Both sides carry FreeSurfer aseg values (a ``model=structures`` prediction writes 2, 3, 4, ...;
the reference is FreeSurfer's ``aseg``). Both are folded exactly as the ``synthseg`` target preset
folds training maps (:data:`synthseg_lite.labels.TARGET_PRESETS`: cortical parcels 1000-2999 ->
cortex, corpus callosum 251-255 and WM hypointensities -> cerebral WM, choroid plexus -> lateral
ventricle, ...), giving SynthSeg 1.0's 31 structures; FreeSurfer's CSF (24) is kept apart.

Per case and structure: every metric of :func:`synthseg_lite.evaluation.metrics.case_metrics` (Dice, HD95,
ASSD in mm, volumes in mm^3 and their difference in mm^3 and %, ...) and a status:

* ``scored``: the structure is in the reference (a structure the prediction misses scores Dice 0
  and infinite distances, and counts);
* ``absent_from_reference``: predicted but not in the reference;
* ``absent_from_both``.

Explicit empty policy (MONAI's ``ignore_empty=True``, written out): only ``scored`` structures
enter the means; for the others the overlap and distance metrics are NaN in the per-case record
(volumes are kept) and the (case, structure) is listed under ``absent`` -- never averaged as 1 or 0.

Aggregates: the per-structure mean over cases, the **structure mean** (mean over the structures
scored in at least one case of their per-structure means; NaN skipped, inf kept), the mean per
structure group (:data:`synthseg_lite.labels.STRUCTURE_GROUPS`), and the same per case. CSF (24) is
reported apart, over the cases where both sides have it.

Where the errors go: the confusion of the folded labels (background, the 31 structures, CSF) in
mm^3 summed over cases, and per structure the volume it missed and the labels the prediction gave
it (``missed_as``), the volume it took in excess and whose it was in the reference
(``extra_from``), largest first. A structure that scores low because the prediction draws its
boundary with a neighbour elsewhere (an inferior horn called lateral ventricle where the two
meet) reads differently from one that is missed or misplaced.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthseg_lite.io import atomic_write
from synthseg_lite.labels import CSF_LABEL, FREESURFER_NAMES, STRUCTURE_GROUPS, TARGET_PRESETS
from synthseg_lite.evaluation.metrics import METRICS, case_metrics, jsonable, load_pair, map_labels

__all__ = [
    "STRUCTURES",
    "check_structure_labels",
    "confusion_labels",
    "describe_errors",
    "error_summary",
    "evaluate_structures",
    "structure_mapping",
    "write_structure_report",
]

log = logging.getLogger(__name__)

#: The 31 structures (FreeSurfer aseg values) of SynthSeg 1.0, in the ``synthseg`` preset's order.
STRUCTURES: tuple[int, ...] = tuple(TARGET_PRESETS["synthseg"].values[1:])
_CSF_CLASS = len(STRUCTURES) + 1
#: Metrics that are undefined (NaN) when a structure is not scored.
_OVERLAP = ("Dice", "IoU", "precision", "recall", "HD95", "HD", "ASSD", "volume_diff_pct")
#: Metrics shown in the logs and the structure / group means of each case.
SUMMARY_METRICS = ("Dice", "HD95", "ASSD", "volume_diff_mm3", "volume_diff_pct")


def structure_mapping() -> dict[int, int]:
    """FreeSurfer value -> class index: the ``synthseg`` preset's folding, plus CSF (24) -> 32."""
    return dict(TARGET_PRESETS["synthseg"].mapping) | {CSF_LABEL: _CSF_CLASS}


def confusion_labels() -> list[int]:
    """FreeSurfer value of each row / column of the structure confusion: 0 (background), the 31
    :data:`STRUCTURES`, CSF (24)."""
    return [0, *STRUCTURES, CSF_LABEL]


def error_summary(confusion_mm3: np.ndarray, top: int = 3) -> dict[int, dict]:
    """Where each structure's errors went, from a structure confusion.

    Args:
        confusion_mm3: (33, 33) volumes in mm^3, rows reference, columns prediction, in the order
            of :func:`confusion_labels`.
        top: how many labels to list on each side.

    Returns:
        Structure value -> ``missed_mm3`` (reference volume predicted as anything else),
        ``missed_as`` (up to ``top`` ``{"label", "name", "mm3"}``, largest first, zeros left out),
        ``extra_mm3`` and ``extra_from`` (the same for predicted volume the reference gives to
        other labels).
    """
    labels = confusion_labels()
    off = np.asarray(confusion_mm3, dtype=float).copy()
    np.fill_diagonal(off, 0.0)

    def ranked(row: np.ndarray) -> list[dict]:
        order = [j for j in np.argsort(-row, kind="stable")[:top] if row[j] > 0]
        return [
            {"label": labels[j], "name": FREESURFER_NAMES[labels[j]], "mm3": float(row[j])}
            for j in order
        ]

    return {
        v: {
            "missed_mm3": float(off[i].sum()),
            "missed_as": ranked(off[i]),
            "extra_mm3": float(off[:, i].sum()),
            "extra_from": ranked(off[:, i]),
        }
        for i, v in enumerate(labels)
        if v in STRUCTURES
    }


def describe_errors(e: dict) -> str:
    """One structure's entry of :func:`error_summary` as a line: ``missed 124 mm³ (as
    Left-Lateral-Ventricle 66, ...), extra 150 mm³ (from ...)``."""

    def part(items: list[dict]) -> str:
        return ", ".join(f"{d['name']} {d['mm3']:.0f}" for d in items)

    return (
        f"missed {e['missed_mm3']:.0f} mm³ (as {part(e['missed_as']) or '-'}), "
        f"extra {e['extra_mm3']:.0f} mm³ (from {part(e['extra_from']) or '-'})"
    )


def check_structure_labels(data: np.ndarray, source: str, max_unknown: float = 0.01) -> None:
    """Refuse a segmentation that is not in FreeSurfer aseg values (e.g. a tissue segmentation).

    Args:
        data: (X, Y, Z) integer label values.
        source: file name for the message.
        max_unknown: largest tolerated fraction of foreground voxels whose value is no
            FreeSurfer label of :data:`synthseg_lite.labels.FREESURFER_NAMES`.

    Raises:
        ValueError: too many voxels with non-FreeSurfer values (tissue values 1 GM, 2 WM, 3 CSF
            or IBSR's 1 CSF, 2 GM, 3 WM have value 1, which is no aseg structure).
    """
    values, counts = np.unique(data, return_counts=True)
    fg = counts[values != 0].sum()
    unknown = [int(v) for v in values if int(v) != 0 and int(v) not in FREESURFER_NAMES]
    n_unknown = counts[np.isin(values, unknown)].sum()
    if fg and n_unknown > max_unknown * fg:
        tissue = set(values.tolist()) <= {0, 1, 2, 3}
        raise ValueError(
            f"{source}: values {unknown[:10]} ({100 * n_unknown / fg:.0f}% of the foreground) are "
            "not FreeSurfer aseg labels"
            + (" (a tissue segmentation?)" if tissue else "")
            + "; per-structure evaluation needs aseg values on both sides (a model=structures "
            "prediction, a FreeSurfer aseg); score tissue with mode=segmentation "
            "ref_labels=aseg_ventricular (or ibsr) instead"
        )


def _nanmean(values) -> float:  # NaN skipped, inf kept
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _means(per_structure: dict[int, dict[str, float]], members: Sequence[int]) -> dict:
    """Mean of each summary metric over ``members`` that have a value."""
    return {m: _nanmean(per_structure[v][m] for v in members) for m in SUMMARY_METRICS}


def evaluate_structures(
    pairs: Sequence[tuple[str, Path, Path]], surface: bool = True, resample_pred: bool = False
) -> dict:
    """Score structure segmentations against FreeSurfer asegs (see the module docstring).

    Args:
        pairs: (case id, prediction file, reference file), both in FreeSurfer aseg values.
        surface: compute HD95 / HD / ASSD.
        resample_pred: score a prediction on another grid on the reference's
            (:func:`~synthseg_lite.evaluation.metrics.load_pair`).

    Returns:
        The summary: ``structures`` (value -> name), ``groups``, ``n_cases``,
        ``metric_per_case`` (per case: ``metrics`` and ``status`` per structure value,
        ``structure_mean``, ``group_mean``, ``csf``), ``mean`` (per structure value),
        ``structure_mean``, ``group_mean``, ``n_structures_scored``, ``csf``, ``absent`` and
        ``not_scored`` (structures without any scored case), ``skipped``, ``confusion``
        (``labels``: :func:`confusion_labels`; ``mm3``: (33, 33) summed over cases, rows
        reference) and ``errors`` (:func:`error_summary`).

    Raises:
        ValueError: no case could be evaluated; a tissue segmentation on either side.
    """
    mapping = structure_mapping()
    cls = {v: mapping[v] for v in STRUCTURES}
    per_case, skipped, absent, csf_cases = [], [], [], []
    confusion_mm3 = np.zeros((_CSF_CLASS + 1,) * 2)
    for case, pred_path, ref_path in pairs:
        try:
            pred, ref = load_pair(pred_path, ref_path, resample_pred)
            check_structure_labels(pred.data, str(pred_path))
            check_structure_labels(ref.data, str(ref_path))
            raw, cm = case_metrics(
                map_labels(pred.data, mapping, str(pred_path)),
                map_labels(ref.data, mapping, str(ref_path)),
                ref.spacing,
                _CSF_CLASS + 1,
                surface,
            )
        except ValueError as exc:
            if "not FreeSurfer aseg labels" in str(exc):
                raise  # the wrong kind of evaluation: no case would be different
            skipped.append({"case": case, "reason": str(exc).splitlines()[0]})
            log.warning("skipped %s: %s", case, skipped[-1]["reason"])
            continue
        confusion_mm3 += cm * float(np.prod(ref.spacing))
        metrics, status = {}, {}
        for v, k in cls.items():
            m = dict(raw[k])
            n_ref, n_pred = m["TP"] + m["FN"], m["TP"] + m["FP"]
            status[v] = (
                "scored" if n_ref else ("absent_from_reference" if n_pred else "absent_from_both")
            )
            if status[v] != "scored":
                m |= dict.fromkeys(_OVERLAP, float("nan"))
                absent.append(
                    {
                        "case": case,
                        "label": v,
                        "name": FREESURFER_NAMES[v],
                        "absent_from": status[v].removeprefix("absent_from_"),
                        "pred_volume_mm3": m["pred_volume_mm3"],
                    }
                )
            metrics[v] = m
        csf = raw[_CSF_CLASS]
        has_csf = csf["TP"] + csf["FN"] > 0 and csf["TP"] + csf["FP"] > 0
        if has_csf:
            csf_cases.append(csf)
        per_case.append(
            {
                "case": case,
                "prediction_file": str(pred_path),
                "reference_file": str(ref_path),
                "metrics": metrics,
                "status": status,
                "structure_mean": _means(metrics, STRUCTURES),
                "group_mean": {g: _means(metrics, vs) for g, vs in STRUCTURE_GROUPS.items()},
                "csf": csf if has_csf else None,
            }
        )
    if not per_case:
        raise ValueError("no case could be evaluated: " + "; ".join(s["reason"] for s in skipped))
    mean = {
        v: {
            name: _nanmean(c["metrics"][v][name] for c in per_case if c["status"][v] == "scored")
            for name in METRICS
        }
        for v in STRUCTURES
    }
    scored = [v for v in STRUCTURES if any(c["status"][v] == "scored" for c in per_case)]
    return {
        "mode": "structures",
        "structures": {v: FREESURFER_NAMES[v] for v in STRUCTURES},
        "groups": {g: list(vs) for g, vs in STRUCTURE_GROUPS.items()},
        "n_cases": len(per_case),
        "metric_per_case": per_case,
        "mean": mean,
        "structure_mean": _means(mean, scored),
        "n_structures_scored": len(scored),
        "group_mean": {
            g: _means(mean, [v for v in vs if v in scored]) for g, vs in STRUCTURE_GROUPS.items()
        },
        "csf": (
            {"n_cases": len(csf_cases)}
            | {name: _nanmean(c[name] for c in csf_cases) for name in METRICS}
            if csf_cases
            else None
        ),
        "absent": absent,
        "not_scored": [FREESURFER_NAMES[v] for v in STRUCTURES if v not in scored],
        "skipped": list(skipped),
        "confusion": {"labels": confusion_labels(), "mm3": confusion_mm3},
        "errors": error_summary(confusion_mm3),
    }


def write_structure_report(
    summary: dict, output_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write ``summary.json``, ``metrics.csv``, ``confusion.csv`` and (``plots``)
    ``structures_boxplot.png`` and ``structures_confusion.png``.

    ``metrics.csv`` has one row per case and structure (``case, label, name, group, status`` and
    every metric) and a ``CSF`` row per case where both sides have label 24. ``confusion.csv`` has
    one row per non-empty cell of the confusion summed over cases (``reference_label,
    reference_name, predicted_label, predicted_name, mm3, fraction_of_reference``).

    Returns:
        Written files by kind.
    """
    out = Path(output_dir)
    text = json.dumps(jsonable(summary), indent=2, allow_nan=True)
    files = {"summary": atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))}
    group_of = {v: g for g, vs in STRUCTURE_GROUPS.items() for v in vs}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "label", "name", "group", "status", *METRICS])
    for c in summary["metric_per_case"]:
        for v, m in c["metrics"].items():
            row = [c["case"], v, FREESURFER_NAMES[v], group_of[v], c["status"][v]]
            writer.writerow(row + [f"{m[n]:.6g}" for n in METRICS])
        if c["csf"] is not None:
            row = [c["case"], CSF_LABEL, "CSF", "CSF (apart)", "scored"]
            writer.writerow(row + [f"{c['csf'][n]:.6g}" for n in METRICS])
    files["csv"] = atomic_write(
        out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue())
    )
    labels, cm = summary["confusion"]["labels"], np.asarray(summary["confusion"]["mm3"], float)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["reference_label", "reference_name", "predicted_label", "predicted_name",
                     "mm3", "fraction_of_reference"])
    rows = cm.sum(1)
    for i, j in zip(*np.nonzero(cm)):
        writer.writerow([labels[i], FREESURFER_NAMES[labels[i]], labels[j],
                         FREESURFER_NAMES[labels[j]], f"{cm[i, j]:.6g}",
                         f"{cm[i, j] / rows[i]:.6g}"])
    files["confusion_csv"] = atomic_write(
        out / "confusion.csv", lambda tmp: Path(tmp).write_text(buf.getvalue())
    )
    if plots:
        from synthseg_lite.evaluation.plots import structure_box_plot, structure_confusion_plot

        cases = [c["case"] for c in summary["metric_per_case"]]
        values = {
            metric: {
                v: [
                    c["metrics"][v][metric] if c["status"][v] == "scored" else float("nan")
                    for c in summary["metric_per_case"]
                ]
                for vs in STRUCTURE_GROUPS.values()
                for v in vs
            }
            for metric in ("Dice", "HD95", "volume_diff_pct")
        }
        mean = summary["structure_mean"]["Dice"]
        files["boxplot"] = structure_box_plot(
            values,
            cases,
            out / "structures_boxplot.png",
            title=f"{len(cases)} case(s); mean Dice over {summary['n_structures_scored']} "
            f"structures {mean:.3f}",
        )
        files["confusion"] = structure_confusion_plot(
            cm, labels, out / "structures_confusion.png",
            title=f"{len(cases)} case(s): where each structure's reference voxels went",
        )
    return files
