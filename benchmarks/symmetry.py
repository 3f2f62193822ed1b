"""Left/right volume ratios of a structure study: a check that needs no reference labels.

    python -m benchmarks.symmetry --volumes <infer output>/volumes.csv --output sym/
    python -m benchmarks.symmetry --volumes seg/volumes.csv --aseg 'refs/*/aseg.nii.gz' --output sym/

A brain's paired structures are close to symmetric on average, so a model that draws one side
smaller than the other shows it in the median left/right volume ratio over many scans of any
contrast, none of which need a manual segmentation. One scan's ratio far from 1 is either that
scan's anatomy or the model: ``--aseg`` gives the references' own ratios beside the prediction's
(e.g. a FreeSurfer aseg of one of the scans) to tell the two apart.

Reads the ``volumes.csv`` of ``synthseg-lite-infer model=structures`` (``<name>_mm3`` columns,
FreeSurfer names ``Left-X`` / ``Right-X``); every pair with both columns is reported. Output:
``symmetry.json`` (per pair: the per-scan ratios, their median and range, the median volumes in
mm^3, a ratio ``null`` where only the right side is empty; with ``--aseg`` the same of the label
maps) and ``symmetry.md`` (the table).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
from pathlib import Path

import numpy as np

from synthseg_lite.commands.common import fail


def pairs_of(columns: list[str]) -> list[str]:
    """Structure names X whose ``Left-X_mm3`` and ``Right-X_mm3`` columns are both present."""
    cols = set(columns)
    return [
        c[len("Left-"):-len("_mm3")]
        for c in columns
        if c.startswith("Left-") and c.endswith("_mm3") and not c.endswith("_soft_mm3")
        and "Right-" + c[len("Left-"):] in cols
    ]


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


def read_study(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """The paired structures of a ``volumes.csv`` (``X`` of ``Left-X``) and its rows: per scan,
    {``Left-X`` / ``Right-X``: mm^3 of the hard labels}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no scan in it")
    names = pairs_of(list(rows[0]))
    if not names:
        raise ValueError(f"{path}: no Left-X_mm3 / Right-X_mm3 columns (a structure model's study?)")
    return names, [
        {f"{side}-{n}": float(r[f"{side}-{n}_mm3"]) for n in names for side in ("Left", "Right")}
        for r in rows
    ]


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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", required=True, type=Path,
                        help="volumes.csv of a study segmented with a structure model")
    parser.add_argument("--aseg", default=None,
                        help="glob of FreeSurfer-valued reference label maps, for their ratios")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        names, rows = read_study(args.volumes)
        record: dict = {
            "volumes": str(args.volumes),
            "pairs": {n: ratios(rows, n) for n in names},
        }
        if args.aseg:
            refs = read_asegs(args.aseg, names)
            record["aseg"] = {n: ratios(refs, n) for n in names if f"Left-{n}" in refs[0]}
            record["aseg_files"] = sorted(glob.glob(args.aseg))
        args.output.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    (args.output / "symmetry.json").write_text(json.dumps(record, indent=1))
    table = markdown(record)
    (args.output / "symmetry.md").write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
