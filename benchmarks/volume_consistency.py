"""Volume checks of a structure study that need no reference labels: left against right, and
the same subjects against another study (another contrast, resolution or model).

    python -m benchmarks.volume_consistency --volumes <infer output>/volumes.csv --output vc/
    python -m benchmarks.volume_consistency --volumes seg/volumes.csv --aseg 'refs/*/aseg.nii.gz' \
        --output vc/                                    # the references' own left/right ratios
    python -m benchmarks.volume_consistency --volumes seg_flair/volumes.csv \
        --against seg_t1/volumes.csv --output vc/       # each structure's volume, FLAIR over T1

Left and right: paired structures are close to symmetric on average, and one scan's ratio far
from 1 is either that scan's anatomy or a structure drawn differently on its two sides: ``--aseg``
gives the references' own ratios beside the prediction's (a FreeSurfer aseg of the same scan, or
the training label maps for the population) to tell the two apart. With flip TTA (the default)
the network sees every scan and its mirror image, so a side bias of the network itself cancels;
segment with ``tta=none`` to see it.

Against another study (``--against``, subjects paired by the ``subject`` column): a subject's
structures do not change with the contrast or the slice thickness of its scan, so the ratio of
each structure's volume in this study to that in the other shows, on unlabelled scans, what a
contrast or a resolution does to the model (SynthSeg's claim of volumes that hold across
contrasts, measured).

Reads the ``volumes.csv`` of ``synthseg-lite-infer model=structures`` (``<name>_mm3`` columns of
the hard labels, FreeSurfer names ``Left-X`` / ``Right-X``). Output: ``volume_consistency.json``
(per pair: the per-scan left/right ratios, their median and range, the median volumes in mm^3, a
ratio ``null`` where only the right side is empty; with ``--aseg`` the same of the label maps;
with ``--against``, per structure the per-subject ratios, median, range and how many are within
10 %) and ``volume_consistency.md`` (the tables).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from synthseg_lite.commands.common import fail
from synthseg_lite.inference.outputs import read_volumes
from synthseg_lite.inference.report import paired_structures


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def ratios(rows: list[dict[str, float]], name: str) -> dict:
    """Left/right ratio of ``name`` per scan (scans where both sides are empty are left out)."""
    left = np.array([r[f"Left-{name}"] for r in rows], dtype=float)
    right = np.array([r[f"Right-{name}"] for r in rows], dtype=float)
    keep = (left > 0) | (right > 0)
    q = np.where(right[keep] > 0, left[keep] / np.maximum(right[keep], 1e-9), np.inf)
    if not q.size:
        return {"scans": 0}
    return {  # None: the right side empty, the left not (an infinite ratio; JSON has no inf)
        "scans": int(q.size),
        "ratios": [_finite(round(float(v), 4)) for v in q],
        "median": _finite(float(np.median(q))),
        "min": _finite(float(q.min())),
        "max": _finite(float(q.max())),
        "median_left_mm3": float(np.median(left[keep])),
        "median_right_mm3": float(np.median(right[keep])),
    }


def read_study(path: Path) -> list[dict[str, str]]:
    """The rows of a study's ``volumes.csv`` (:func:`read_volumes`).

    Raises:
        ValueError: no such file, or no scan in it.
    """
    rows = read_volumes(path)[1]
    if not rows:
        raise ValueError(f"{path}: no scan in it (a volumes.csv of synthseg-lite-infer?)")
    return rows


def sides(rows: list[dict[str, str]], names: list[str]) -> list[dict[str, float]]:
    """Per scan, {``Left-X`` / ``Right-X``: mm^3 of the hard labels} of the structures ``names``."""
    return [
        {f"{side}-{n}": float(r[f"{side}-{n}_mm3"]) for n in names for side in ("Left", "Right")}
        for r in rows
    ]


def against(rows: list[dict[str, str]], other: list[dict[str, str]]) -> dict:
    """Per structure (every hard ``<name>_mm3`` column but the totals), the ratio of its volume
    in ``rows`` to that in ``other`` for each subject in both (structures empty in ``other``
    for a subject leave that subject out).

    Raises:
        ValueError: no subject in both.
    """
    a, b = {r["subject"]: r for r in rows}, {r["subject"]: r for r in other}
    subjects = sorted(set(a) & set(b))
    if not subjects:
        raise ValueError("the two studies have no subject in common")
    first = a[subjects[0]]
    names = [c[: -len("_mm3")] for c in first if c.endswith("_mm3")
             and not c.endswith("_soft_mm3") and not c.startswith("total_") and c in b[subjects[0]]]
    out = {}
    for name in names:
        num = np.array([float(a[s][f"{name}_mm3"]) for s in subjects])
        den = np.array([float(b[s][f"{name}_mm3"]) for s in subjects])
        keep = den > 0
        if not keep.any():
            continue
        q = num[keep] / den[keep]
        out[name] = {
            "subjects": int(keep.sum()),
            "ratios": [round(float(v), 4) for v in q],
            "median": float(np.median(q)),
            "min": float(q.min()),
            "max": float(q.max()),
            "within_10pct": int((np.abs(q - 1) <= 0.1).sum()),
        }
    return out


def read_asegs(pattern: str, names: list[str]) -> list[dict[str, float]]:
    """The same volumes (mm^3) from FreeSurfer-valued label maps."""
    from synthseg_lite.io import load_label_map
    from synthseg_lite.labels.presets import FREESURFER_NAMES

    value = {v: int(k) for k, v in FREESURFER_NAMES.items()}
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"--aseg {pattern!r} matches no file")
    rows = []
    for file in files:
        lab = load_label_map(file)
        counts = np.bincount(lab.data.ravel().clip(0), minlength=max(value.values()) + 1)
        mm3 = abs(float(np.linalg.det(lab.affine[:3, :3])))
        rows.append({
            f"{side}-{n}": float(counts[value[f"{side}-{n}"]]) * mm3
            for n in names for side in ("Left", "Right") if f"{side}-{n}" in value
        })
    return rows


def _f(v: float | None) -> str:
    return "inf" if v is None else f"{v:.2f}"


def markdown(record: dict) -> str:
    has_ref = bool(record.get("aseg"))
    head = "| structure | scans | median L/R | range | median L, R (mm³) |"
    rule = "|---|---|---|---|---|"
    if has_ref:
        head += " reference median L/R | reference range |"
        rule += "---|---|"
    lines = [head, rule]
    for name, r in record["pairs"].items():
        if not r["scans"]:
            continue
        line = (f"| {name} | {r['scans']} | {_f(r['median'])} | {_f(r['min'])}–{_f(r['max'])} | "
                f"{r['median_left_mm3']:,.0f}, {r['median_right_mm3']:,.0f} |")
        if has_ref:
            a = record["aseg"].get(name) or {"scans": 0}
            line += (f" {_f(a['median'])} | {_f(a['min'])}–{_f(a['max'])} |" if a["scans"]
                     else " | |")
        lines.append(line)
    if record.get("against"):
        title = f"Each structure's volume over that in {record['against_volumes']}, same subjects:"
        lines += ["", title, "",
                  "| structure | subjects | median ratio | range | within ±10 % |",
                  "|---|---|---|---|---|"]
        for name, r in record["against"].items():
            lines.append(f"| {name} | {r['subjects']} | {r['median']:.2f} | {r['min']:.2f}–"
                         f"{r['max']:.2f} | {r['within_10pct']}/{r['subjects']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", required=True, type=Path,
                        help="volumes.csv of a study segmented with a structure model")
    parser.add_argument("--aseg", default=None,
                        help="glob of FreeSurfer-valued reference label maps, for their ratios")
    parser.add_argument("--against", default=None, type=Path,
                        help="volumes.csv of the same subjects in another study, for the ratios")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        study = read_study(args.volumes)
        names = paired_structures(list(study[0]))
        if not names:
            raise ValueError(
                f"{args.volumes}: no Left-X_mm3 / Right-X_mm3 columns (a structure model's study?)"
            )
        rows = sides(study, names)
        record: dict = {
            "volumes": str(args.volumes),
            "pairs": {n: ratios(rows, n) for n in names},
        }
        if args.aseg:
            refs = read_asegs(args.aseg, names)
            record["aseg"] = {n: ratios(refs, n) for n in names if f"Left-{n}" in refs[0]}
            record["aseg_files"] = sorted(glob.glob(args.aseg))
        if args.against:
            record["against"] = against(study, read_study(args.against))
            record["against_volumes"] = str(args.against)
        args.output.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    (args.output / "volume_consistency.json").write_text(json.dumps(record, indent=1))
    table = markdown(record)
    (args.output / "volume_consistency.md").write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
