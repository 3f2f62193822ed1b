"""Learning curves from TensorBoard logs: real-scan Dice (GM, WM, CSF) against training steps.

    python benchmarks/learning_curves.py outputs/train/cpu_main --output docs/learning_curves.png
    python benchmarks/learning_curves.py on_the_fly=outputs/train/ablation_onthefly \\
        fixed_500=outputs/train/ablation_fixed500 --output ablation.png

    python benchmarks/learning_curves.py --json docs/learning_curves.json \\
        --output docs/learning_curves.png

Each argument is a run directory (``NAME=DIR`` to name it in the legend); ``--json`` plots the
points of an earlier run of this script instead (the logs need not exist any more). Writes the
figure (one panel per real validation set, one colour per class, the QC figures' colours, one
line style per run) and, beside it, a JSON file with the same points (step, minutes since the
start, Dice per set and class).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from matplotlib import patheffects

from synthseg_lite.commands.common import fail
from synthseg_lite.io import atomic_write
from synthseg_lite.labels import target_preset
from synthseg_lite.labels.lut import output_labels

# the class colours of the QC figures and label tables (FreeSurfer's cortex, white matter and
# ventricle colours, synthseg_lite.labels.lut); lines get a dark outline so white matter shows on white
_TISSUE = output_labels(target_preset("tissue"))
CLASSES = {n: tuple(c / 255 for c in rgb) for n, rgb in zip(_TISSUE.names[1:], _TISSUE.colors[1:])}
OUTLINE = [patheffects.Stroke(linewidth=3.2, foreground="0.15"), patheffects.Normal()]
STYLES = ["-", "--", ":", "-."]


def read_run(run: Path) -> dict:
    """{set: {class: [(step, minutes, dice), ...]}} from the newest event file of a run."""
    files = sorted(run.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        fail(f"no TensorBoard event file under {run}")
    ea = EventAccumulator(str(files[-1]))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    start = ea.Scalars("train/loss")[0].wall_time if "train/loss" in tags else 0.0
    out: dict = {}
    for tag in tags:
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == "val_real" and parts[2].startswith("dice_"):
            out.setdefault(parts[1], {})[parts[2][5:]] = [
                (e.step, round((e.wall_time - start) / 60, 1), round(e.value, 4))
                for e in ea.Scalars(tag)
            ]
    if not out:
        fail(f"{run} has no real-scan validation (train with data/real_val=...)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories, optionally NAME=DIR")
    parser.add_argument("--json", type=Path, help="points written by an earlier run (no logs)")
    parser.add_argument("--output", required=True, type=Path, help="figure (.png)")
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.json):
        fail("give run directories or --json FILE (one of them)")
    runs = json.loads(args.json.read_text()) if args.json else {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        runs[name if sep else Path(item).name] = read_run(Path(path if sep else item))
    sets = sorted({s for r in runs.values() for s in r})
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        for (run_name, data), style in zip(runs.items(), STYLES):
            for cls, color in CLASSES.items():
                pts = data.get(set_name, {}).get(cls)
                if pts:
                    ax.plot(
                        [p[0] for p in pts],
                        [p[2] for p in pts],
                        style,
                        color=color,
                        marker="o",
                        ms=3,
                        mec="0.15",
                        path_effects=OUTLINE,
                        label=f"{cls} ({run_name})",
                    )
        ax.set(title=f"real scans: {set_name}", xlabel="training step", ylabel="Dice", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    if args.output.with_suffix(".json") != args.json:
        args.output.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
