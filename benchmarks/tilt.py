"""Tilted heads: a model on a real scan turned in its voxel grid, the header unchanged (a head
tilted in the scanner, which no header can undo), with the pose step
(:mod:`synthseg_lite.inference.upright`, ``pose_max_deg`` default) and without it
(``pose_max_deg=null``), side by side in one run.

    python -m benchmarks.tilt --output tilt/                        # shipped structures, OASIS
    python -m benchmarks.tilt --output tilt/ --turns pitch:20,roll:30 --model my_model.pt
    python -m benchmarks.tilt --output tilt_t/ --model tissue       # GM / WM / CSF only

Each turn is a rotation about one axis of the scan's RAS voxel grid through the volume's centre:
``pitch`` about left-right (nodding), ``roll`` about front-back (ear to shoulder), ``yaw`` about
up-down, in degrees (right-hand rule). The scan (trilinear) and its aseg (nearest neighbour) are
padded by 32 voxels first, so that nothing is cut, and turned alike. Output: ``tilt.json`` (per
turn and setting: the mean Dice over SynthSeg's 31 structures, the 4th ventricle's and the
left inferior horn's (a structure model), the GM / WM / CSF Dice of the tissue view (a structure
model's structures grouped, or a tissue model's output; CSF: the ventricles, as
``ref_labels=aseg_ventricular``), seconds, the pose read) and ``tilt.md`` (the table). A tissue
network (``model=tissue_fast``) has no pose step: its two settings are the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from synthseg_lite.commands.common import fail
from synthseg_lite.io import load_volume, save_volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "oasis_vxm"
TURNS = "pitch:0,pitch:10,pitch:20,pitch:30,pitch:-20,roll:15,roll:30,yaw:15,yaw:30"
#: The RAS axis each turn is about.
AXES = {"pitch": "x", "roll": "y", "yaw": "z"}
PAD = 32

log = logging.getLogger(__name__)


def parse_turns(text: str) -> list[tuple[str, float]]:
    """``"pitch:10,roll:-20"`` -> ``[("pitch", 10.0), ("roll", -20.0)]``."""
    turns = []
    for part in text.split(","):
        axis, _, deg = part.partition(":")
        if axis not in AXES:
            raise ValueError(f"a turn is pitch|roll|yaw:<degrees>, got {part!r}")
        try:
            turns.append((axis, float(deg)))
        except ValueError:
            raise ValueError(f"a turn is pitch|roll|yaw:<degrees>, got {part!r}") from None
    return turns


def tilt(volume: np.ndarray, axis: str, degrees: float, order: int) -> np.ndarray:
    """A (X, Y, Z) RAS-ordered volume turned about ``axis`` (``pitch``, ``roll``, ``yaw``) through
    its centre by ``degrees``: output voxel o holds the input at ``R.T (o - c) + c`` (zero
    outside); ``order`` 1 for a scan, 0 for labels."""
    if degrees == 0:
        return volume.copy()
    r = Rotation.from_euler(AXES[axis], degrees, degrees=True).as_matrix()
    c = (np.asarray(volume.shape) - 1) / 2
    return ndimage.affine_transform(volume, r.T, offset=c - r.T @ c, order=order, mode="constant")


def padded_ras(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A file in RAS order, padded by :data:`PAD` voxels, and its affine."""
    vol = load_volume(path, dtype=dtype)
    data = np.pad(vol.data, PAD)
    affine = vol.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, PAD)
    return data, affine


def _tissue_text(setting: dict) -> str:
    t = setting.get("tissue")
    return "" if not t else " / ".join(f"{t[c]:.3f}" for c in ("GM", "WM", "CSF"))


def table(rows: list[dict]) -> list[str]:
    """The markdown table of :func:`main`'s rows (``turn``, and per setting ``dice`` (None for a
    tissue model), ``tissue``, ``seconds`` and the ``pose`` read)."""
    header = ("| turn | pose read (degrees) | with the pose step | without (`pose_max_deg=null`) |"
              " GM / WM / CSF with | GM / WM / CSF without |")
    lines = [header + " seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        pose = r["pose"]["pose"]
        read = "none" if pose is None else (
            f"{pose['degrees']:.1f}{' (upright)' if pose['segmented_upright'] else ''}")
        dice = [("" if r[k]["dice"] is None else f"{r[k]['dice']:.3f}") for k in ("pose", "no pose")]
        lines.append(f"| {r['turn']} | {read} | {dice[0]} | {dice[1]} | "
                     f"{_tissue_text(r['pose'])} | {_tissue_text(r['no pose'])} | "
                     f"{r['pose']['seconds']:.0f} / {r['no pose']['seconds']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--model", default="structures")
    ap.add_argument("--scan", type=Path, default=DATA / "t1.nii.gz")
    ap.add_argument("--aseg", type=Path, default=DATA / "aseg.nii.gz")
    ap.add_argument("--turns", default=TURNS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        turns = parse_turns(args.turns)
        for p in (args.scan, args.aseg):
            if not p.is_file():
                raise ValueError(f"{p} not found (see ../shared/data/README.md)")
        args.output.mkdir(parents=True, exist_ok=True)
        if (args.output / "tilt.json").exists():
            raise ValueError(f"{args.output / 'tilt.json'} exists; choose another --output")
    except ValueError as e:
        return fail(e)

    import synthseg_lite
    from synthseg_lite.evaluation.metrics import evaluate_pairs
    from synthseg_lite.evaluation.structure_metrics import evaluate_structures

    scan, affine = padded_ras(args.scan, np.float32)
    aseg, _ = padded_ras(args.aseg, np.int32)
    settings = {"pose": {}, "no pose": {"pose_max_deg": None}}
    rows = []
    for axis, deg in turns:
        tag = f"{axis}{deg:+g}"
        image, ref = tilt(scan, axis, deg, 1), tilt(aseg, axis, deg, 0)
        ref_path = args.output / f"{tag}_aseg.nii.gz"
        save_volume(ref, affine, ref_path)
        row = {"turn": tag}
        for name, options in settings.items():
            t = time.perf_counter()
            result = synthseg_lite.segment(
                (image, affine), model=args.model, threads=args.threads, **options
            )
            seconds = time.perf_counter() - t
            seg_path = args.output / f"{tag}_{name.replace(' ', '_')}.nii.gz"
            seg_path.unlink(missing_ok=True)
            result.save(seg_path)
            tissue = tuple(result.names[1:]) == ("GM", "WM", "CSF")
            t = evaluate_pairs([(tag, seg_path, ref_path)], "tissue" if tissue else
                               "aseg_ventricular", "aseg_ventricular", surface=False)
            row[name] = {
                "dice": None,
                "tissue": {c: round(t["mean"][k]["Dice"], 4) for k, c in
                           enumerate(("GM", "WM", "CSF"), 1)},
                "seconds": round(seconds, 1),
                "pose": result.pose,  # the pose read (None without the pose step)
            }
            if not tissue:
                s = evaluate_structures([(tag, seg_path, ref_path)], surface=False)
                row[name] |= {
                    "dice": round(s["structure_mean"]["Dice"], 4),
                    "4th_ventricle": round(s["mean"][15]["Dice"], 4),
                    "left_inferior_horn": round(s["mean"][5]["Dice"], 4),
                }
            log.info("%s, %s: mean Dice %s, GM / WM / CSF %s (%.0f s)", tag, name,
                     row[name]["dice"], _tissue_text(row[name]), seconds)
        rows.append(row)
    (args.output / "tilt.json").write_text(json.dumps(
        {"model": args.model, "scan": str(args.scan), "threads": args.threads, "turns": rows},
        indent=1))
    lines = table(rows)
    (args.output / "tilt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
