"""Real thick-slice files: the segmentation written on the scan's grid or at 1 mm (``output_mm``).

A clinical 3 or 5 mm scan is stored on its own coarse grid. ``infer.py`` segments it at the
model's 1 mm and, by default, writes the result back on that coarse grid; ``output_mm=1`` writes
it at 1 mm as SynthSeg does. This benchmark measures what the choice costs against a 1 mm
reference, with the project's own tools run as subprocesses:

1. ``python -m synthseg_lite.commands.degrade <OASIS T1> --slice-mm N --plane P --slab-grid``:
   the OASIS T1 as an N mm file of slices in plane P (``--planes``, default axial; slab means on
   their own grid);
2. ``python infer.py`` on it, as is and with ``output_mm=1``;
3. ``python evaluate.py mode=structures resample_pred=true`` against the 1 mm aseg (both
   predictions taken onto the aseg's grid by nearest neighbour).

    python -m benchmarks.thick_files --output thick/ --threads 2
    python -m benchmarks.thick_files --output planes/ --thickness 5 --planes sagittal coronal

Output: ``<output>/results.json`` (mean Dice over the 31 structures, groups, weakest structure,
the left hippocampus and the volume check per thickness, plane and output grid) and
``<output>/results.md``. Needs ``../shared/data/real/oasis_vxm`` (``--data``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

from benchmarks.real_scans import new_output, run
from benchmarks.structures import read_structures
from synthseg_lite.commands.common import fail
from synthseg_lite.evaluation.degrade import PLANES

ROOT = Path(__file__).resolve().parents[1]
#: Output grids compared: folder -> (name in the table, infer.py options).
GRIDS = {"native": ("scan's grid", []), "1mm": ("1 mm (output_mm=1)", ["output_mm=1"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="results folder (new)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--model", default="structures", help="infer.py's model=")
    parser.add_argument("--thickness", type=float, nargs="+", default=[3.0, 5.0],
                        help="slice thicknesses (mm)")
    parser.add_argument("--planes", nargs="+", default=["axial"], choices=sorted(PLANES),
                        help="anatomical planes of the slices (degrade --plane)")
    parser.add_argument("--threads", type=int, default=None, help="infer.py threads=")
    args = parser.parse_args(argv)
    out = new_output(args.output)
    t1, aseg = args.data / "oasis_vxm" / "t1.nii.gz", args.data / "oasis_vxm" / "aseg.nii.gz"
    if not t1.is_file() or not aseg.is_file():
        fail(f"the OASIS scan and aseg are not under {args.data} (--data)")
    out.mkdir(parents=True, exist_ok=True)
    py, commands = sys.executable, []
    threads = [f"threads={args.threads}"] if args.threads else []
    record: dict = {"model": args.model, "results": {}}
    for mm, plane in itertools.product(args.thickness, args.planes):
        tag = f"{mm:g}mm_{plane}"
        scans = out / "scans" / tag
        run([py, "-m", "synthseg_lite.commands.degrade", str(t1), "--output", str(scans),
             "--slice-mm", str(mm), "--plane", plane, "--slab-grid"], commands)
        for name, (grid, options) in GRIDS.items():
            seg = out / "seg" / tag / name
            run([py, "infer.py", f"input={scans / t1.name}", f"output={seg}",
                 f"model={args.model}", *threads, *options], commands)
            ev = out / "eval" / tag / name
            run([py, "evaluate.py", "mode=structures", f"pred={seg / 't1_seg.nii.gz'}",
                 f"ref={aseg}", f"output={ev}", "resample_pred=true", "plots=false"], commands)
            r = read_structures(ev / "summary.json")
            record["results"].setdefault(tag, {})[grid] = {
                k: r[k] for k in ("structure_mean", "groups", "weakest", "volume_check")
            } | {"Left-Hippocampus": r["structures"]["Left-Hippocampus"]}
            logging.info("%s, %s: mean %.3f", tag, grid, r["structure_mean"])
    record["commands"] = commands
    (out / "results.json").write_text(json.dumps(record, indent=1))
    lines = ["| slices | written on | mean (31) | ventricles | deep GM | hippocampus+amygdala | "
             "Left-Hippocampus | volumes within ±35 % |", "|---|---|---|---|---|---|---|---|"]
    for tag, grids in record["results"].items():
        for grid, r in grids.items():
            v = r["volume_check"]
            lines.append(
                f"| {tag} | {grid} | {r['structure_mean']:.3f} | {r['groups']['ventricles']:.3f} "
                f"| {r['groups']['deep GM']:.3f} | {r['groups']['hippocampus+amygdala']:.3f} | "
                f"{r['Left-Hippocampus']:.3f} | {v['n_within']}/{v['n_checked']} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
