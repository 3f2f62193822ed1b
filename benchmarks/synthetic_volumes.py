"""A structure model on the generator's own images: per-structure volume ratio and Dice where the
truth is exact, to tell a model's bias apart from the gap between training maps and real scans.

    python -m benchmarks.synthetic_volumes --output r/                       # model=structures
    python -m benchmarks.synthetic_volumes --model <ckpt or .pt> --output r/ --synth synth.rim.prob=1.0

``python export.py`` synthesises ``--n`` images from the label maps (1 mm, 160^3 crops, every
sample at native resolution and skull-stripped, no partial-volume rim unless ``--synth`` sets one:
the clean end of the training distribution), ``python infer.py model=<model>`` segments them with
``refine=gmm`` (the default) and ``refine=none``, and every structure's predicted volume is divided
by its exported label's volume (samples where the structure has >= ``MIN_VOXELS`` voxels; a crop
can cut a structure). A model whose volumes are near 1x here but not on a real scan is not biased
by its loss or network but by what separates the real scan from the training maps (their
population, the reference's partial-volume convention).

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

import nibabel as nib
import numpy as np

from benchmarks.real_scans import new_output, run
from synthseg_lite.commands.common import fail
from synthseg_lite.labels import TARGET_PRESETS

ROOT = Path(__file__).resolve().parents[1]

#: A structure counts in a sample when its exported label has at least this many voxels.
MIN_VOXELS = 200
#: Generator settings of the exported images (besides ``--synth``): the CPU recipe's generator at
#: 1 mm, native resolution, skull-stripped, no rim.
EXPORT = ("synth=cpu", "synth.voxel_mm=1.0", "synth.patch_shape=[160,160,160]",
          "synth.resolution.prob_native=1.0", "synth.skull_strip.prob=1.0", "synth.rim.prob=0.0",
          "target=synthseg_fs", "montage=false")
REFINES = ("gmm", "none")


def score(pairs: list[tuple[np.ndarray, np.ndarray]], values: dict[int, str],
          min_voxels: int = MIN_VOXELS) -> dict[str, object]:
    """Volume ratio and Dice of each structure, averaged over the samples where it is present.

    Args:
        pairs: (prediction, truth) integer label volumes (FreeSurfer values), one pair a sample.
        values: label value -> structure name.
        min_voxels: a structure counts in a sample with at least this many true voxels.

    Returns:
        ``{"structures": {name: {"ratio", "dice", "samples"}}, "structure_mean": mean Dice}``.
    """
    out: dict[str, dict[str, float]] = {}
    for value, name in values.items():
        ratios, dices = [], []
        for pred, truth in pairs:
            t, p = truth == value, pred == value
            n_t = int(t.sum())
            if n_t < min_voxels:
                continue
            n_p = int(p.sum())
            ratios.append(n_p / n_t)
            dices.append(2.0 * int((t & p).sum()) / (n_t + n_p))
        if ratios:
            out[name] = {"ratio": round(float(np.mean(ratios)), 3),
                         "dice": round(float(np.mean(dices)), 3), "samples": len(ratios)}
    mean = float(np.mean([r["dice"] for r in out.values()])) if out else float("nan")
    return {"structures": out, "structure_mean": round(mean, 4)}


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


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
    target = TARGET_PRESETS["synthseg_fs"]
    values = {v: n for v, n in zip(target.values, target.names) if v}
    truths = sorted((data / "labels").glob("*.nii.gz"))
    results: dict[str, object] = {"model": args.model, "n": args.n, "seed": args.seed,
                                  "export": [*EXPORT, *args.synth]}
    threads = [f"threads={args.threads}"] if args.threads else []
    for refine in REFINES:
        seg = out / f"seg_{refine}"
        run([py, "infer.py", f"input={data / 'images'}", f"output={seg}", f"model={args.model}",
             f"refine={refine}", *threads], commands)
        pairs = [(_read(seg / t.name.replace(".nii.gz", "_seg.nii.gz")), _read(t)) for t in truths]
        results[refine] = score(pairs, values)
    results["commands"] = commands
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"# {args.model} on {args.n} generator images (seed {args.seed})", "",
             "| structure | " + " | ".join(f"ratio ({r}) | Dice ({r})" for r in REFINES) + " |",
             "|---|" + "---|---|" * len(REFINES)]
    for name in values.values():
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
