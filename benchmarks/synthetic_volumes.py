"""A structure model on the generator's own images: per-structure volume ratio and Dice where the
truth is exact, to tell a model's bias apart from the gap between training maps and real scans.

    python -m benchmarks.synthetic_volumes --output r/                       # model=structures
    python -m benchmarks.synthetic_volumes --model <ckpt or .pt> --output r/ --synth synth.rim.prob=1.0

``python export.py`` synthesises ``--n`` images from the label maps (1 mm, 160^3 crops, every
sample at native resolution and skull-stripped, no partial-volume rim unless ``--synth`` sets one:
the clean end of the training distribution), ``python infer.py model=<model>`` segments them with
``refine=gmm`` (the default) and ``refine=none``, ``python evaluate.py mode=structures`` scores
them against the exported labels, and every structure's predicted volume is divided by its label's
volume (samples where the label has >= ``MIN_MM3``; a crop can cut a structure). A model whose
volumes are near 1x here but not on a real scan is not biased by its loss or network but by what
separates the real scan from the training maps (their population, the reference's partial-volume
convention).

Output: ``results.json`` (per refine mode: per structure mean ratio and Dice over samples, the
structure mean Dice; the commands) and ``results.md``. Needs the label maps (``--label-maps``,
default ``../shared/data/label_maps``).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.real_scans import new_output, run
from synthseg_lite.commands.common import fail

ROOT = Path(__file__).resolve().parents[1]

#: A structure counts in a sample when its exported label has at least this volume (mm^3; 1 mm
#: voxels).
MIN_MM3 = 200.0
#: Generator settings of the exported images (besides ``--synth``): the CPU recipe's generator at
#: 1 mm, native resolution, skull-stripped, no rim.
EXPORT = ("synth=cpu", "synth.voxel_mm=1.0", "synth.patch_shape=[160,160,160]",
          "synth.resolution.prob_native=1.0", "synth.skull_strip.prob=1.0", "synth.rim.prob=0.0",
          "target=synthseg_fs", "montage=false")
REFINES = ("gmm", "none")


def score(summary: dict, min_mm3: float = MIN_MM3) -> dict[str, object]:
    """Volume ratio and Dice of each structure, averaged over the samples where it is present.

    Args:
        summary: ``evaluate.py mode=structures``'s ``summary.json`` (per case, per structure value:
            ``Dice``, ``pred_volume_mm3``, ``ref_volume_mm3``).
        min_mm3: a structure counts in a sample with at least this reference volume.

    Returns:
        ``{"structures": {name: {"ratio", "dice", "samples"}}, "structure_mean": mean Dice}``.
    """
    out: dict[str, dict[str, float]] = {}
    for value, name in summary["structures"].items():
        cases = [c["metrics"][value] for c in summary["metric_per_case"]]
        kept = [m for m in cases if m["ref_volume_mm3"] >= min_mm3]
        if kept:
            ratios = [m["pred_volume_mm3"] / m["ref_volume_mm3"] for m in kept]
            out[name] = {"ratio": round(float(np.mean(ratios)), 3),
                         "dice": round(float(np.mean([m["Dice"] for m in kept])), 3),
                         "samples": len(kept)}
    mean = float(np.mean([r["dice"] for r in out.values()])) if out else float("nan")
    return {"structures": out, "structure_mean": round(mean, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="results folder (new)")
    parser.add_argument("--model", default="structures", help="infer.py's model=")
    parser.add_argument("--label-maps", default=str(ROOT.parent / "shared" / "data" / "label_maps"
                                                    / "training_seg_0*.nii.gz"),
                        help="export.py's label_maps= (a folder, glob or file)")
    parser.add_argument("--n", type=int, default=4, help="images to synthesise")
    parser.add_argument("--seed", type=int, default=7, help="export.py's seed=")
    parser.add_argument("--synth", nargs="*", default=[],
                        help="more export.py overrides (e.g. synth.rim.prob=1.0)")
    parser.add_argument("--threads", type=int, default=None, help="infer.py threads=")
    args = parser.parse_args(argv)
    out = new_output(args.output)
    if args.n < 1:
        fail(f"--n must be >= 1, got {args.n}")
    maps = Path(args.label_maps)
    if not (maps.is_dir() or glob.glob(args.label_maps)):
        fail(f"no label maps at {args.label_maps} (--label-maps)")
    commands: list[str] = []
    py = sys.executable
    data = out / "synthetic"
    run([py, "export.py", *EXPORT, *args.synth, f"label_maps='{args.label_maps}'",
         f"n={args.n}", f"seed={args.seed}", f"output={data}"], commands)
    results: dict[str, object] = {"model": args.model, "n": args.n, "seed": args.seed,
                                  "export": [*EXPORT, *args.synth]}
    threads = [f"threads={args.threads}"] if args.threads else []
    for refine in REFINES:
        seg = out / f"seg_{refine}"
        run([py, "infer.py", f"input={data / 'images'}", f"output={seg}", f"model={args.model}",
             f"refine={refine}", *threads], commands)
        run([py, "evaluate.py", "mode=structures", f"pred={seg}", f"ref={data / 'labels'}",
             f"output={out / f'eval_{refine}'}", "surface=false"], commands)
        summary = json.loads((out / f"eval_{refine}" / "summary.json").read_text())
        results[refine] = score(summary)
        names = list(summary["structures"].values())
    results["commands"] = commands
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"# {args.model} on {args.n} generator images (seed {args.seed})", "",
             "| structure | " + " | ".join(f"ratio ({r}) | Dice ({r})" for r in REFINES) + " |",
             "|---|" + "---|---|" * len(REFINES)]
    for name in names:
        cells = []
        for r in REFINES:
            s = results[r]["structures"].get(name)  # type: ignore[index]
            cells += [f"{s['ratio']:.2f}", f"{s['dice']:.3f}"] if s else ["–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean Dice** | " + " | ".join(
        f"– | {results[r]['structure_mean']:.3f}" for r in REFINES) + " |")  # type: ignore[index]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
