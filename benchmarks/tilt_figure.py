"""``docs/tilt.png``: one turn of ``benchmarks/tilt.py``, drawn: the tilted scan, its aseg, and the
structure model's segmentation without and with the pose step, on one coronal slice through
the middle of the brain::

    python -m benchmarks.tilt --output tilt/ --turns roll:30
    python -m benchmarks.tilt_figure --tilt-output tilt/ --turn roll:30 --output docs/tilt.png

The scan is turned again from ``--scan`` exactly as ``tilt.py`` turned it (it writes the
segmentations and the aseg, not the scan).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.tilt import DATA, padded_ras, parse_turns, tilt
from synthseg_lite.commands.common import fail
from synthseg_lite.evaluation.plots import structure_colors
from synthseg_lite.inference.figures import save_figure
from synthseg_lite.io import load_label_map


def colour(labels: np.ndarray) -> np.ndarray:
    """(W, H) FreeSurfer values -> (W, H, 4) RGBA in FreeSurfer's colours, background
    transparent."""
    rgba = np.zeros((*labels.shape, 4))
    values = [int(v) for v in np.unique(labels) if v]
    for value, rgb in zip(values, structure_colors(values)):
        rgba[labels == value] = (*rgb, 0.55)
    return rgba


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tilt-output", required=True, type=Path, help="benchmarks/tilt.py's --output")
    ap.add_argument("--turn", default="roll:30")
    ap.add_argument("--scan", type=Path, default=DATA / "t1.nii.gz")
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args(argv)
    try:
        ((axis, deg),) = parse_turns(args.turn)
        tag = f"{axis}{deg:+g}"
        files = {k: args.tilt_output / f"{tag}_{k}.nii.gz" for k in ("aseg", "no_pose", "pose")}
        for p in [*files.values(), args.tilt_output / "tilt.json", args.scan]:
            if not p.is_file():
                raise ValueError(f"{p} not found (run benchmarks/tilt.py --turns {args.turn})")
        if args.output.exists():
            raise ValueError(f"{args.output} exists; choose another --output")
    except ValueError as e:
        return fail(e)
    rows = json.loads((args.tilt_output / "tilt.json").read_text())["turns"]
    scores = {r["turn"]: r for r in rows}
    scan, _ = padded_ras(args.scan, np.float32)
    image = tilt(scan, axis, deg, 1)
    labels = {k: load_label_map(p).data for k, p in files.items()}
    brain = np.argwhere(labels["aseg"] > 0)
    y = int(np.median(brain[:, 1]))  # a coronal slice through the middle of the brain
    lo, hi = brain.min(0) - 4, brain.max(0) + 5
    crop = (slice(lo[0], hi[0]), y, slice(lo[2], hi[2]))
    row = scores.get(tag, {})
    titles = {
        "aseg": "FreeSurfer aseg (turned)",
        "no_pose": f"without the pose step: {row.get('no pose', {}).get('dice', float('nan')):.3f}",
        "pose": f"with it (default): {row.get('pose', {}).get('dice', float('nan')):.3f}",
    }
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6))
    gray = np.rot90(image[crop])
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title(f"OASIS T1, {axis} {deg:+g} degrees", fontsize=9)
    axes[0].text(0.03, 0.95, "L", color="w", transform=axes[0].transAxes, va="top")  # RAS x
    for ax, key in zip(axes[1:], ("aseg", "no_pose", "pose")):
        ax.imshow(gray, cmap="gray")
        ax.imshow(np.rot90(colour(labels[key][crop])))
        ax.set_title(titles[key], fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("A tilted head: mean Dice over the 31 structures (benchmarks/tilt.py)",
                 fontsize=10)
    fig.tight_layout()
    print(save_figure(fig, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
