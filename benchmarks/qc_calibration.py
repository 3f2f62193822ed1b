"""Calibrate a model's QC threshold on clean and degraded real scans (JSON output).

    python benchmarks/qc_calibration.py --model structures --output qc_structures.json
    python benchmarks/qc_calibration.py --model tissue --output qc_tissue.json
    python benchmarks/qc_calibration.py --model structures --output qc.json \\
        --write synthseg_lite/resources/model_structures.pt     # store the proposed threshold
    python benchmarks/qc_calibration.py --from-json qc_tissue.json --threshold 0.70 \\
        --write synthseg_lite/resources/model_cpu.pt            # store a chosen value

The README's procedure ("Outputs", QC score), as one command:

* **clean** scans: the OASIS T1 and the 10 IBSR T1 scans of ``../shared/data/real`` (``--data``);
* **degraded** versions of one scan (``--base``, default IBSR_01, skull-stripped): ``inverted``
  (:func:`synthseg_lite.evaluation.degrade.invert_contrast`), ``thick5`` (5 mm slabs along the through-plane
  axis, :func:`synthseg_lite.evaluation.degrade.thick_slices`), ``noise`` (Gaussian, SD 1.5 x the brain's
  intensity SD, in the brain mask), and the **heavy** ones, which a QC must flag: ``blur``
  (Gaussian, sigma 4 voxels) and ``random`` (uniform random intensities in the brain mask,
  between the brain's 0.5 and 99.5 percentiles). Seeded.

Each scan is segmented with :func:`synthseg_lite.segment` (the inference defaults: flip TTA) and
its QC score recorded, with the tissue Dice (GM / WM / CSF) against its reference (IBSR's manual
labels; OASIS' aseg grouped as ``aseg_ventricular``; a structure model's output grouped the same
way) as evidence of how bad each degraded scan's segmentation is.

Proposed threshold (rule): the midpoint between the lowest clean score and the highest heavy
score, rounded down to 0.01; none when they overlap (``separable: false``). ``--write OUT`` stores
the proposal in a copy of the model file (the weights byte for byte,
:func:`synthseg_lite.model.artifact.with_qc_threshold`), read by ``infer.py`` when
``qc_threshold`` is not set; OUT may be the model's own file only when named there explicitly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
from scipy.ndimage import gaussian_filter

import synthseg_lite
from synthseg_lite.commands.common import fail
from synthseg_lite.evaluation.degrade import invert_contrast, thick_slices, through_plane_axis
from synthseg_lite.inference.segment import QC_THRESHOLD
from synthseg_lite.inference.predictor import resolve_model
from synthseg_lite.io import load_label_map, load_volume
from synthseg_lite.evaluation.metrics import label_mapping, map_labels
from synthseg_lite.model.artifact import model_qc_threshold, read_meta, with_qc_threshold

log = logging.getLogger("qc_calibration")

#: Degraded conditions, in order; the heavy ones must be flagged.
DEGRADATIONS = ("inverted", "thick5", "noise", "blur", "random")
HEAVY = ("blur", "random")


def degrade(data: np.ndarray, spacing: tuple[float, ...], kind: str, seed: int = 0) -> np.ndarray:
    """One degraded version of a skull-stripped scan (X, Y, Z) on its own grid (float32)."""
    data = np.asarray(data, dtype=np.float32)
    mask = data > 0
    brain = data[mask]
    rng = np.random.default_rng(seed)
    out = data.copy()
    if kind == "inverted":
        return invert_contrast(data)
    if kind == "thick5":
        return thick_slices(data, spacing, 5.0, through_plane_axis(spacing))
    if kind == "noise":
        out[mask] += rng.normal(0, 1.5 * brain.std(), int(mask.sum())).astype(np.float32)
        return np.where(mask, np.clip(out, 1e-3, None), 0).astype(np.float32)
    if kind == "blur":
        return gaussian_filter(data, 4.0).astype(np.float32)
    if kind == "random":
        lo, hi = np.percentile(brain, [0.5, 99.5])
        out[mask] = rng.uniform(max(lo, 1e-3), hi, int(mask.sum())).astype(np.float32)
        return out
    raise ValueError(f"unknown degradation {kind!r}; choose from {DEGRADATIONS}")


def tissue_dice(pred: np.ndarray, values: tuple[int, ...], ref: np.ndarray, preset: str) -> dict:
    """GM / WM / CSF Dice of a segmentation (written values) against a reference."""
    tissue = tuple(values[:4]) == (0, 1, 2, 3)
    p = pred.astype(np.int64) if tissue else map_labels(pred, label_mapping("aseg_ventricular"))
    r = map_labels(ref, label_mapping(preset))
    out = {}
    for k, name in enumerate(("GM", "WM", "CSF"), start=1):
        a, b = p == k, r == k
        den = int(a.sum() + b.sum())
        out[name] = round(2 * int((a & b).sum()) / den, 4) if den else math.nan
    return out


def scans(data: Path, base: str) -> list[tuple[str, str, Path, Path, str]]:
    """(name, condition, image, reference, reference preset) of the clean scans and the base."""
    oasis = data / "oasis_vxm"
    found = [("oasis", "clean", oasis / "t1.nii.gz", oasis / "aseg.nii.gz", "aseg_ventricular")]
    for d in sorted((data / "ibsr").glob("IBSR_*")):
        found.append((d.name, "clean", d / f"{d.name}.nii.gz", d / f"{d.name}_seg.nii.gz", "ibsr"))
    missing = [str(p) for _, _, i, r, _ in found for p in (i, r) if not p.is_file()]
    if missing or len(found) < 2:
        raise ValueError(f"real scans missing under {data}: {missing[:3] or 'no IBSR scans'}")
    if base not in {f[0] for f in found}:
        raise ValueError(f"--base {base!r} is none of {[f[0] for f in found]}")
    return found


def calibrate(model: str, data: Path, base: str, threads: int, seed: int) -> dict:
    """Score every clean and degraded scan; propose a threshold (see the module docstring)."""
    path = resolve_model(model)
    rows = []
    found = scans(data, base)
    jobs = [(n, c, i, r, p, None) for n, c, i, r, p in found]
    _, _, bi, br, bp = next(f for f in found if f[0] == base)
    jobs += [(f"{base}_{k}", k, bi, br, bp, k) for k in DEGRADATIONS]
    for name, cond, image, ref_path, preset, kind in jobs:
        vol = load_volume(image, canonical=False)
        x = vol.data if kind is None else degrade(vol.data, vol.spacing, kind, seed)
        start = time.perf_counter()
        res = synthseg_lite.segment((x, vol.affine), model=str(path), threads=threads)
        seconds = time.perf_counter() - start
        ref = load_label_map(ref_path, canonical=False).data
        row = {
            "scan": name,
            "condition": cond,
            "heavy": cond in HEAVY,
            "qc_score": round(float(res.qc["qc_score"]), 4),
            "qc_groups": {k: round(float(v), 4) for k, v in res.qc.items() if k != "qc_score"},
            "tissue_dice": tissue_dice(res.labels, res.values, ref, preset),
            "seconds": round(seconds, 1),
        }
        log.info("%s (%s): QC %.3f, Dice %s, %.0f s", name, cond, row["qc_score"],
                 row["tissue_dice"], seconds)
        rows.append(row)
    clean = [r["qc_score"] for r in rows if r["condition"] == "clean"]
    heavy = [r["qc_score"] for r in rows if r["heavy"]]
    separable = min(clean) > max(heavy)
    proposed = math.floor(100 * (min(clean) + max(heavy)) / 2) / 100 if separable else None
    stored = model_qc_threshold(read_meta(path))
    current = stored if stored is not None else QC_THRESHOLD

    def flagged(t: float | None) -> dict | None:
        if t is None:
            return None
        return {
            "clean": [r["scan"] for r in rows if r["condition"] == "clean" and r["qc_score"] < t],
            "degraded": [r["scan"] for r in rows if r["condition"] != "clean" and r["qc_score"] < t],
        }

    return {
        "model": model,
        "model_file": str(path),
        "threads": threads,
        "scans": rows,
        "clean_range": [min(clean), max(clean)],
        "heavy_range": [min(heavy), max(heavy)],
        "separable": separable,
        "proposed_threshold": proposed,
        "stored_threshold": stored,
        "current_threshold": current,
        "current_separates": min(clean) >= current > max(heavy),
        "flagged_at_current": flagged(current),
        "flagged_at_proposed": flagged(proposed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="structures", help="tissue, structures, .pt or .ckpt")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/real"),
                        help="folder with oasis_vxm/ and ibsr/IBSR_*/")
    parser.add_argument("--base", default="IBSR_01", help="the scan that is degraded")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--write", metavar="OUT.pt",
                        help="write the model with the proposed threshold stored to OUT.pt")
    parser.add_argument("--threshold", type=float,
                        help="with --write: store this value instead of the proposal")
    parser.add_argument("--from-json", metavar="QC.json",
                        help="with --write: take the scores of an earlier run instead of "
                             "segmenting again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.from_json:
            result = json.loads(Path(args.from_json).read_text())
        else:
            result = calibrate(args.model, Path(args.data), args.base, args.threads, args.seed)
            result["command"] = " ".join(["python", "benchmarks/qc_calibration.py", *(argv if argv is not None else sys.argv[1:])])
        if args.write:
            value = args.threshold if args.threshold is not None else result["proposed_threshold"]
            if value is None:
                raise ValueError("clean and heavily degraded scores overlap: nothing to store "
                                 "(give --threshold to store a value anyway)")
            note = (f"{result['command']}: clean {result['clean_range']}, heavy (blur, random) "
                    f"{result['heavy_range']}")
            with_qc_threshold(result["model_file"], args.write, value, note)
            result["written"] = {"file": args.write, "qc_threshold": value}
        text = json.dumps(result, indent=1)
        print(text)
        if args.output:
            Path(args.output).write_text(text + "\n")
    except ValueError as exc:
        fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
