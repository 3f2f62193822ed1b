"""The README's results table: a model and the classical baseline on the shared real scans, as they
are and degraded (inverted contrast as a T2-like check, thick slices), scored with evaluate.py.

    python benchmarks/real_scans.py --output results/                # the default model=tissue
    python benchmarks/real_scans.py --model tissue_fast --output results_fast/  # its fast network
    python benchmarks/real_scans.py --model outputs/train/<run> --output results_run/

Every number comes from the project's own command-line tools, run as subprocesses exactly as a
user would run them (the commands are logged and stored in the JSON):

* ``python -m synthseg_lite.commands.degrade`` derives the degraded scans (same voxel grid, so the original
  references stay valid): ``inverted`` (intensities mirrored inside the brain: CSF bright, WM
  dark), ``flair`` / ``pd`` (FLAIR- and PD-like: the T1's intensities through a non-monotonic
  curve whose knots are its own three tissue modes) and ``thick3`` / ``thick5`` (3 / 5 mm slabs
  along the acquisition's slice axis, the axis with the largest voxel spacing, interpolated back
  to the original grid);
* ``python infer.py`` segments them with the model (default TTA), ``python -m
  synthseg_lite.commands.baseline`` with the 3-class Gaussian mixture;
* ``python evaluate.py`` scores both against the references (IBSR manual labels; FreeSurfer aseg
  for OASIS with ``ref_labels=aseg_ventricular``: CSF = ventricles), Dice per class.

Output: ``<output>/results.json`` (mean Dice per condition, dataset, method and class, plus the
commands) and ``<output>/results.md`` (the table). Needs ``../shared/data/real`` (``--data``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from synthseg_lite.commands.common import fail

log = logging.getLogger("real_scans")

CONDITIONS = {
    "original": [],
    "inverted": ["--invert"],
    "flair": ["--contrast", "flair"],
    "pd": ["--contrast", "pd"],
    "thick3": ["--slice-mm", "3"],
    "thick5": ["--slice-mm", "5"],
}
CLASSES = ("GM", "WM", "CSF")


def datasets(data: Path) -> dict[str, dict]:
    """name -> scans (list), reference (folder or file) and its label preset."""
    ibsr = sorted(data.glob("ibsr/IBSR_*/IBSR_??.nii.gz"))
    oasis = data / "oasis_vxm" / "t1.nii.gz"
    if not ibsr or not oasis.is_file():
        fail(f"real scans not found under {data} (--data)")
    return {
        "ibsr": {"scans": ibsr, "ref": data / "ibsr", "labels": "ibsr"},
        # ventricles-only CSF, as the tissue_ventricular models predict and IBSR counts it
        "oasis": {
            "scans": [oasis],
            "ref": data / "oasis_vxm" / "aseg.nii.gz",
            "labels": "aseg_ventricular",
        },
    }


def new_output(folder: Path) -> Path:
    """``folder`` resolved, after checking it is absent or empty (a benchmark never mixes its
    results with an earlier run's); set up the log format."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = folder.resolve()
    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty")
    return out


def run(cmd: list[str], commands: list[str]) -> None:
    line = shlex.join(cmd)
    commands.append(line)
    log.info("$ %s", line)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def dice(summary_path: Path) -> dict[str, float]:
    summary = json.loads(summary_path.read_text())
    names = {str(k): v for k, v in summary["class_names"].items()}
    return {names[k]: round(float(v["Dice"]), 4) for k, v in summary["mean"].items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="results folder (new)")
    parser.add_argument(
        "--model", default=None,
        help="model=: a shipped name (tissue_fast, ...), file or run dir (default: tissue)",
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated")
    parser.add_argument("--no-baseline", action="store_true", help="score the model only")
    args = parser.parse_args(argv)
    out = new_output(args.output)
    conditions = [c for c in args.conditions.split(",") if c]
    if unknown := set(conditions) - set(CONDITIONS):
        fail(f"unknown conditions {sorted(unknown)}; choose from {list(CONDITIONS)}")
    py = sys.executable
    sets = datasets(args.data.resolve())
    commands: list[str] = []
    results: dict = {}
    t0 = time.perf_counter()
    for cond in conditions:
        for name, ds in sets.items():
            scans = [str(s) for s in ds["scans"]]
            if CONDITIONS[cond]:
                folder = out / "scans" / cond / name
                run(
                    [
                        py,
                        "-m",
                        "synthseg_lite.commands.degrade",
                        *scans,
                        "--output",
                        str(folder),
                        *CONDITIONS[cond],
                    ],
                    commands,
                )
                scans = [str(folder / Path(s).name) for s in scans]
            methods = {"model": out / "model" / cond / name}
            model_arg = [f"model={args.model}"] if args.model else []
            run(
                [
                    py,
                    "infer.py",
                    f"input=[{','.join(scans)}]",
                    f"output={methods['model']}",
                    *model_arg,
                ],
                commands,
            )
            if not args.no_baseline:
                methods["baseline"] = out / "baseline" / cond / name
                run(
                    [
                        py,
                        "-m",
                        "synthseg_lite.commands.baseline",
                        *scans,
                        "--output",
                        str(methods["baseline"]),
                    ],
                    commands,
                )
            for method, pred in methods.items():
                ev = out / "eval" / method / cond / name
                pred_arg = pred if name == "ibsr" else pred / "t1_seg.nii.gz"
                run(
                    [
                        py,
                        "evaluate.py",
                        f"pred={pred_arg}",
                        f"ref={ds['ref']}",
                        f"ref_labels={ds['labels']}",
                        f"output={ev}",
                    ],
                    commands,
                )
                results.setdefault(cond, {}).setdefault(name, {})[method] = dice(
                    ev / "summary.json"
                )
                log.info("%s %s %s: %s", cond, name, method, results[cond][name][method])
    record = {
        "model": args.model or "tissue (the default: the shipped structure network as GM/WM/CSF)",
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
        "commands": commands,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))
    rows = ["| condition | dataset | method | GM | WM | CSF |", "|---|---|---|---|---|---|"]
    for cond, per in results.items():
        for name, per_method in per.items():
            for method, d in per_method.items():
                vals = " | ".join(f"{d.get(c, float('nan')):.3f}" for c in CLASSES)
                rows.append(f"| {cond} | {name} | {method} | {vals} |")
    (out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
