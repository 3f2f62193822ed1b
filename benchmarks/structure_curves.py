"""Learning curves of a structure model for ``benchmarks/structures.py --checkpoints`` and
``--merge-curves``: the OASIS Dice per structure group of each checkpoint or model file against its
training step, merged across runs and plotted (``learning_curve.json``, ``learning_curve.png``)."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from synthseg_lite.commands.common import fail
from synthseg_lite.labels import STRUCTURE_GROUPS

if TYPE_CHECKING:
    from benchmarks.structures import Bench

__all__ = ["learning_curve", "merge_curves", "plot_curve", "step_of"]


def step_of(path: Path) -> int:
    """Training step of a checkpoint or model file.

    A checkpoint: from its name (``step=1500.ckpt``, ``step1500.ckpt``), else its
    ``global_step``. A ``.pt`` model file (e.g. a shipped model fine-tuned in stages): its total
    steps, ``extra["total_steps"]``, else the leading ``N steps`` of ``extra["training"]``, else
    the last stage's ``global_step``.
    """
    if path.suffix == ".pt":
        from synthseg_lite.model.artifact import read_meta

        extra = read_meta(path).extra
        if extra.get("total_steps") is not None:
            return int(extra["total_steps"])
        if m := re.match(r"\s*(\d+) steps", str(extra.get("training", ""))):
            return int(m.group(1))
        return int(extra.get("global_step", -1))
    if m := re.search(r"step[=_-]?(\d+)", path.name):
        return int(m.group(1))
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1))


def learning_curve(bench: Bench, patterns: list[str]) -> dict:
    """OASIS Dice of each checkpoint or model file matching ``patterns``, by training step; a
    point from a ``.pt`` model file says so (``"model_file": true``)."""
    files = sorted({Path(f) for p in patterns for f in glob.glob(p)}, key=step_of)
    if not files:
        fail(f"no checkpoint matches {patterns}")
    bench.kind = "structures"
    points = []
    for ckpt in files:
        step = step_of(ckpt)
        r = bench.oasis("original", str(ckpt), f"step{step}", tissue=False)
        points.append({"step": step, "checkpoint": str(ckpt), "model_file": ckpt.suffix == ".pt"}
                      | r)
    return {"points": points}


def merge_curves(paths: list[Path]) -> dict:
    """Points of several ``learning_curve.json`` files, one per step (the last file wins), sorted
    by step; their commands are kept."""
    points: dict[int, dict] = {}
    commands: list = []
    for p in paths:
        try:
            curve = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            fail(f"{p}: not a learning_curve.json ({e})")
        points.update({int(q["step"]): q for q in curve.get("points", [])})
        commands += curve.get("commands", [])
    if not points:
        fail("no learning-curve points in " + ", ".join(str(p) for p in paths))
    return {"points": [points[k] for k in sorted(points)], "commands": commands}


def plot_curve(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab10")
    for i, group in enumerate(STRUCTURE_GROUPS):
        ax.plot(steps, [p["groups"][group] for p in curve["points"]], "o-", ms=3,
                color=colors(i), label=group)
    ax.plot(steps, [p["structure_mean"] for p in curve["points"]], "k-", lw=2.5,
            label="mean (31 structures)")
    if shipped := [p for p in curve["points"] if p.get("model_file")]:
        ax.plot([p["step"] for p in shipped], [p["structure_mean"] for p in shipped], "k*",
                ms=11, label="mean, model files (stage ends)")
    ax.set(xlabel="training step", ylabel="Dice on the OASIS scan", ylim=(0, 1),
           title="real-scan Dice per structure group")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
