"""A structure model on the shared real scans: per-structure Dice on OASIS as it is and degraded,
the tissue view on OASIS and IBSR, and per-group learning curves from a run's checkpoints.

    python -m benchmarks.structures --output results_structures/                  # model=structures
    python -m benchmarks.structures --model outputs/train/<run>/checkpoints/last.ckpt --output r/
    python -m benchmarks.structures --model tissue --output r_tissue/  # tissue view only
    python -m benchmarks.structures --checkpoints 'outputs/train/<run>/checkpoints/step*.ckpt' \\
        --output curves/                                # learning curves (OASIS, per group)

Every number comes from the project's command-line tools, run as subprocesses as a user would
(the commands are logged and stored in the JSON):

* ``python -m synthseg_lite.commands.degrade`` derives OASIS' degraded versions (same grid, so the
  aseg stays valid): ``inverted`` contrast and ``thick3`` / ``thick5`` slices (as
  ``benchmarks/real_scans.py``), ``flair`` and ``pd``: FLAIR-like (CSF dark, GM brighter than WM)
  and PD-like (CSF close to GM, WM darkest) contrast, the T1's intensities through a piecewise
  linear curve whose knots are its own three tissue modes (``degrade --contrast``; what no
  monotone map of a T1, such as the inversion, can give; a CSF/WM partial-volume voxel takes GM's
  value), and ``thick3_head``, a **proxy** for "a 3 mm scan with skull, no
  mask": ``../shared/data`` holds no real scan with a skull (OASIS and IBSR are skull-stripped), so
  the OASIS brain is padded by 16 mm and wrapped in a synthetic head (:func:`head_proxy`: shells
  at distances from the brain mask of 0-2 mm CSF, 2-7 mm skull, 7-12 mm scalp, T1-like
  intensities relative to the scan's WM, Gaussian noise), then given 3 mm slabs; the network sees
  no brain mask (its foreground box is the whole head). A synthetic head is not a real one (no
  eyes, neck, fat-suppression or coil shading): read it as a check of what extra-cerebral tissue
  does to the model, not as a real-scan figure;
* opt-in (``--conditions``, and ``--ibsr-conditions`` too): ``axial5`` and ``coronal5``, 5 mm
  slices in that anatomical plane (``degrade --plane``; ``thick5`` slices a scan along its coarsest
  voxel axis, the first of an isotropic one: on OASIS sagittally, on IBSR coronally), and the
  clinical-style ``inverted_axial5``, ``flair_axial5`` and ``pd_axial5``: a contrast, then 5 mm
  axial slices; and ``bias``, the scan as if not bias-corrected (``degrade --bias 0.3``: a smooth
  random field within [0.77, 1.3], seed 0);
* ``python infer.py model=<model>`` segments them (default options), and IBSR's 10 scans
  (``--ibsr-conditions``, default ``original``);
* ``python evaluate.py mode=structures`` scores OASIS per structure against its FreeSurfer aseg
  (SynthSeg 1.0's 31 structures, group means, CSF apart); ``python evaluate.py`` scores the tissue
  view (a structure segmentation grouped with ``pred_labels=aseg_ventricular``) against
  ``ref_labels=aseg_ventricular`` (OASIS) and ``ibsr`` (IBSR). A tissue model (values 1 GM, 2 WM,
  3 CSF, detected from its output) gets the tissue view only.

With a structure model, the shipped tissue network (``--tissue-model``, default ``tissue_fast``;
``''`` for none; the default ``model=tissue`` is the structure network's own tissue view)
segments OASIS and IBSR as they are too, so the tissue view sits beside it.

Output: ``results.json`` (per condition: Dice per structure, structure mean, group means, the
weakest structure, per structure the predicted and reference volume (mm^3) and their ratio with
the +-35 % check for structures of >= 1,000 mm^3 in the reference, tissue Dice, inference seconds;
the tissue model's tissue Dice; the commands) and ``results.md`` (tables).
With ``--checkpoints``: ``learning_curve.json`` and ``learning_curve.png`` (OASIS Dice per
structure group and the structure mean against the training step, read from the checkpoint
name ``...step=N...`` / ``...stepN...``; ``.pt`` model files, e.g. the shipped model of each
fine-tuning stage, count their total steps and show as stars); ``--merge-curves`` joins such
files. Needs ``../shared/data/real`` (``--data``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import nibabel as nib
import numpy as np

from benchmarks.head_proxy import head_proxy
from benchmarks.real_scans import CLASSES, CONDITIONS, new_output, run
from benchmarks.structure_curves import learning_curve, merge_curves, plot_curve
from synthseg_lite.commands.common import fail
from synthseg_lite.labels import STRUCTURE_GROUPS
from synthseg_lite.evaluation.pairing import find_cases
from synthseg_lite.evaluation.structure_metrics import check_structure_labels, describe_errors

log = logging.getLogger("structures")

#: OASIS conditions: real_scans' and the head proxy (3 mm slabs of OASIS in a synthetic head).
HEAD_PROXY = "thick3_head"
OASIS_CONDITIONS = {**CONDITIONS, HEAD_PROXY: CONDITIONS["thick3"]}
#: Opt-in OASIS conditions (``--conditions``, not run by default): 5 mm slices in a named
#: anatomical plane (``thick5`` takes the first axis of an isotropic scan: sagittal on OASIS).
PLANE_CONDITIONS = {
    f"{plane}5": ["--slice-mm", "5", "--plane", plane] for plane in ("axial", "coronal")
}
#: Opt-in: a scan that was not bias-corrected, a smooth multiplicative field within [0.77, 1.3]
#: (``degrade --bias 0.3``, seed 0: a 1.69x brightest-to-darkest ratio across the field of view).
BIAS_CONDITIONS = {"bias": ["--bias", "0.3"]}
#: Opt-in clinical-style OASIS conditions: a contrast, then 5 mm axial slices (degrade run twice).
CHAINS = {f"{c}_axial5": (c, "axial5") for c in ("inverted", "flair", "pd")}
#: ``degrade`` options of every single-step condition.
DEGRADE_OPTIONS = {**OASIS_CONDITIONS, **PLANE_CONDITIONS, **BIAS_CONDITIONS}
#: Every OASIS condition ``--conditions`` accepts.
ALL_OASIS_CONDITIONS = [*DEGRADE_OPTIONS, *CHAINS]
#: Predicted / reference volume within 1 +- VOLUME_TOLERANCE for structures >= VOLUME_CHECK_MM3.
VOLUME_TOLERANCE, VOLUME_CHECK_MM3 = 0.35, 1000.0


def only_prediction(folder: Path) -> Path:
    """The one segmentation ``infer.py`` wrote under ``folder``."""
    cases = find_cases(folder)
    if len(cases) != 1:
        fail(f"expected one segmentation under {folder}, found {sorted(cases)}")
    return next(iter(cases.values()))


def is_structure_segmentation(path: Path) -> bool:
    """True for FreeSurfer aseg values (a structure model), False for tissue values."""
    try:
        check_structure_labels(np.asarray(nib.load(str(path)).dataobj), str(path))
    except ValueError:
        return False
    return True


def read_structures(summary_path: Path) -> dict:
    """Dice per structure, structure mean, group means, the weakest structure, CSF (or None)."""
    s = json.loads(summary_path.read_text())
    dice = {
        s["structures"][v]: round(float(m["Dice"]), 4)
        for v, m in s["mean"].items()
        if not np.isnan(m["Dice"])
    }
    worst = min(dice, key=dice.get)
    value = next(v for v, name in s["structures"].items() if name == worst)
    errors = s.get("errors", {})  # absent from summaries written before it
    volumes = {}
    for v, m in s["mean"].items():
        pred, ref = float(m["pred_volume_mm3"]), float(m["ref_volume_mm3"])
        if np.isnan(ref) or ref <= 0:
            continue
        ratio = pred / ref
        checked = ref >= VOLUME_CHECK_MM3
        volumes[s["structures"][v]] = {
            "pred_mm3": round(pred, 1),
            "ref_mm3": round(ref, 1),
            "ratio": round(ratio, 3),
            "within_35pct": bool(abs(ratio - 1) <= VOLUME_TOLERANCE) if checked else None,
        }
    checked = {n: r for n, r in volumes.items() if r["within_35pct"] is not None}
    return {
        "structures": dice,
        "volumes": volumes,
        "volume_check": {
            "n_checked": len(checked),
            "n_within": sum(r["within_35pct"] for r in checked.values()),
            "outside": sorted(n for n, r in checked.items() if not r["within_35pct"]),
        },
        "structure_mean": round(s["structure_mean"]["Dice"], 4),
        "groups": {g: round(m["Dice"], 4) for g, m in s["group_mean"].items()},
        "weakest": [worst, dice[worst]],
        "weakest_errors": describe_errors(errors[value]) if value in errors else None,
        "not_scored": s["not_scored"],
        "csf_24": None if s["csf"] is None else round(s["csf"]["Dice"], 4),
    }


def read_tissue(summary_path: Path) -> dict[str, float]:
    s = json.loads(summary_path.read_text())
    names = {str(k): v for k, v in s["class_names"].items()}
    return {names[k]: round(float(v["Dice"]), 4) for k, v in s["mean"].items()}


class Bench:
    """Runs the tools for one model and collects the figures."""

    def __init__(self, args: argparse.Namespace, out: Path):
        self.args, self.out, self.py = args, out, sys.executable
        self.commands: list[str] = []
        self.kind: str | None = None if args.kind == "auto" else args.kind
        self.refs: dict[str, Path] = {}  # OASIS reference per condition (the head proxy's own)

    def infer(self, scans: list[str], folder: Path, model: str) -> float:
        extra = [f"threads={self.args.threads}"] if self.args.threads else []
        extra += self.args.infer_option
        t0 = time.perf_counter()
        run(
            [self.py, "infer.py", f"input=[{','.join(scans)}]", f"output={folder}",
             f"model={model}", *extra],
            self.commands,
        )
        return round((time.perf_counter() - t0) / len(scans), 1)

    def evaluate(self, pred: Path, ref: Path, folder: Path, *options: str) -> Path:
        run(
            [self.py, "evaluate.py", f"pred={pred}", f"ref={ref}", f"output={folder}", *options],
            self.commands,
        )
        return folder / "summary.json"

    def degraded(self, scans: list[str], cond: str, dataset: str) -> list[str]:
        if cond in CHAINS:  # each step on the previous one's output
            for step in CHAINS[cond]:
                scans = self.degraded(scans, step, f"{dataset}_{cond}")
            return scans
        if cond == HEAD_PROXY:  # OASIS only
            data = self.args.data / "oasis_vxm"
            t1, aseg = head_proxy(
                data / "t1.nii.gz", data / "aseg.nii.gz", self.out / "scans" / cond / "head"
            )
            self.commands.append(f"benchmarks/head_proxy.py head_proxy() -> {t1}, {aseg}")
            self.refs[cond] = aseg
            scans = [str(t1)]
        options = DEGRADE_OPTIONS[cond]
        if not options:
            return scans
        folder = self.out / "scans" / cond / dataset
        run(
            [self.py, "-m", "synthseg_lite.commands.degrade", *scans, "--output", str(folder),
             *options],
            self.commands,
        )
        return [str(folder / Path(s).name) for s in scans]

    def oasis(self, cond: str, model: str, tag: str, tissue: bool = True) -> dict:
        """Segment OASIS (``cond``) with ``model``; per-structure (and tissue) Dice."""
        data = self.args.data
        scans = self.degraded([str(data / "oasis_vxm" / "t1.nii.gz")], cond, "oasis")
        seg_dir = self.out / "seg" / tag / "oasis"
        seconds = self.infer(scans, seg_dir, model)
        pred = only_prediction(seg_dir)
        if self.kind is None:
            self.kind = "structures" if is_structure_segmentation(pred) else "tissue"
            log.info("the model writes %s segmentations", self.kind)
        ref = self.refs.get(cond, data / "oasis_vxm" / "aseg.nii.gz")
        result: dict = {"infer_seconds": seconds}
        if self.kind == "structures":
            ev = self.evaluate(pred, ref, self.out / "eval" / tag / "oasis", "mode=structures")
            result |= read_structures(ev)
        if tissue:
            result["tissue"] = read_tissue(
                self.evaluate(
                    pred, ref, self.out / "eval" / tag / "oasis_tissue",
                    f"pred_labels={self.pred_labels()}", "ref_labels=aseg_ventricular",
                )
            )
        log.info("%s oasis: %s", tag, {k: v for k, v in result.items() if k != "structures"})
        return result

    def ibsr(self, cond: str, model: str) -> dict:
        scans = sorted(str(p) for p in self.args.data.glob("ibsr/IBSR_*/IBSR_??.nii.gz"))
        if not scans:
            fail(f"IBSR scans not found under {self.args.data}")
        scans = self.degraded(scans, cond, "ibsr")
        seg_dir = self.out / "seg" / cond / "ibsr"
        seconds = self.infer(scans, seg_dir, model)
        if self.kind is None:
            self.kind = (
                "structures"
                if is_structure_segmentation(next(iter(find_cases(seg_dir).values())))
                else "tissue"
            )
        ev = self.evaluate(
            seg_dir, self.args.data / "ibsr", self.out / "eval" / cond / "ibsr",
            f"pred_labels={self.pred_labels()}", "ref_labels=ibsr",
        )
        result = {"infer_seconds": seconds, "tissue": read_tissue(ev)}
        log.info("%s ibsr: %s", cond, result)
        return result

    def pred_labels(self) -> str:
        return "aseg_ventricular" if self.kind == "structures" else "tissue"

    def tissue_model(self, model: str) -> dict:
        """Tissue Dice of a tissue model on OASIS and IBSR as they are (beside the tissue view)."""
        data, root = self.args.data, self.out / "tissue_model"
        result: dict = {"model": model}
        self.infer([str(data / "oasis_vxm" / "t1.nii.gz")], root / "seg" / "oasis", model)
        ev = self.evaluate(
            only_prediction(root / "seg" / "oasis"), data / "oasis_vxm" / "aseg.nii.gz",
            root / "eval" / "oasis", "pred_labels=tissue", "ref_labels=aseg_ventricular",
        )
        result["oasis"] = read_tissue(ev)
        scans = sorted(str(p) for p in data.glob("ibsr/IBSR_*/IBSR_??.nii.gz"))
        if scans:
            self.infer(scans, root / "seg" / "ibsr", model)
            ev = self.evaluate(root / "seg" / "ibsr", data / "ibsr", root / "eval" / "ibsr",
                               "pred_labels=tissue", "ref_labels=ibsr")
            result["ibsr"] = read_tissue(ev)
        log.info("tissue model %s: %s", model, result)
        return result


def _f(v: float, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None or np.isnan(v) else fmt.format(v)


def markdown(record: dict) -> str:
    oasis, lines = record["oasis"], []
    conds = [c for c in oasis if "structures" in oasis[c]]
    if conds:
        lines += [
            "| structure | " + " | ".join(conds) + " |",
            "|---|" + "---|" * len(conds),
        ]
        names = list(oasis[conds[0]]["structures"])
        for name in names:
            vals = [oasis[c]["structures"].get(name, float("nan")) for c in conds]
            lines.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + " |")
        for group in STRUCTURE_GROUPS:
            vals = [oasis[c]["groups"][group] for c in conds]
            lines.append(f"| *{group}* | " + " | ".join(_f(v) for v in vals) + " |")
        vals = [oasis[c]["structure_mean"] for c in conds]
        lines.append("| **mean (31)** | " + " | ".join(_f(v, "**{:.3f}**") for v in vals) + " |")
        lines.append(
            "| weakest | " + " | ".join(
                f"{oasis[c]['weakest'][0]} {oasis[c]['weakest'][1]:.3f}" for c in conds
            ) + " |"
        )
        lines.append(
            "| volumes within ±35 % (≥ 1,000 mm³) | " + " | ".join(
                "{n_within}/{n_checked}".format(**oasis[c]["volume_check"]) for c in conds
            ) + " |"
        )
        lines.append("")
        for c in conds:
            if oasis[c].get("weakest_errors"):
                lines.append(f"- {c}: {oasis[c]['weakest'][0]} {oasis[c]['weakest_errors']}")
        lines.append("")
        first = conds[0]
        lines += [f"Volumes on OASIS ({first}): predicted vs reference (mm³)", "",
                  "| structure | predicted | reference | ratio | ±35 % |", "|---|---|---|---|---|"]
        for name, r in oasis[first]["volumes"].items():
            check = {True: "ok", False: "**out**", None: ""}[r["within_35pct"]]
            lines.append(f"| {name} | {r['pred_mm3']:,.0f} | {r['ref_mm3']:,.0f} | "
                         f"{r['ratio']:.2f} | {check} |")
        lines.append("")
    view = "tissue view" if record.get("kind") == "structures" else "tissue"
    lines += ["| model | condition | dataset | " + " | ".join(CLASSES) + " |",
              "|---|---|---|" + "---|" * len(CLASSES)]
    for dataset in ("oasis", "ibsr"):
        for cond, r in record[dataset].items():
            if "tissue" in r:
                vals = " | ".join(_f(r["tissue"].get(c, float("nan"))) for c in CLASSES)
                lines.append(f"| {record['model']} ({view}) | {cond} | {dataset} | {vals} |")
        tm = record.get("tissue_model") or {}
        if dataset in tm:
            vals = " | ".join(_f(tm[dataset].get(c, float("nan"))) for c in CLASSES)
            lines.append(f"| {tm['model']} (tissue model) | original | {dataset} | {vals} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="results folder (new)")
    parser.add_argument("--model", default="structures",
                        help="infer.py's model=: 'structures', 'tissue', a file or a run folder")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--conditions", default=",".join(OASIS_CONDITIONS),
                        help="OASIS conditions, comma-separated (opt-in too: "
                             f"{', '.join([*PLANE_CONDITIONS, *BIAS_CONDITIONS, *CHAINS])})")
    parser.add_argument("--tissue-model", default="tissue_fast",
                        help="tissue network segmented beside a structure model ('' for none)")
    parser.add_argument("--ibsr-conditions", default="original",
                        help="IBSR conditions (tissue view), comma-separated, the OASIS ones but "
                             f"{HEAD_PROXY}; '' for none")
    parser.add_argument("--kind", choices=("auto", "structures", "tissue"), default="auto",
                        help="what the model writes (auto: from its first output)")
    parser.add_argument("--threads", type=int, default=None, help="infer.py threads=")
    parser.add_argument("--infer-option", nargs="*", default=[],
                        help="more infer.py options, key=value (e.g. precision=float32)")
    parser.add_argument("--checkpoints", nargs="+", default=None,
                        help="checkpoint or .pt model files, or globs: learning curves on OASIS "
                             "instead")
    parser.add_argument("--merge-curves", nargs="+", type=Path, default=None,
                        help="learning_curve.json files (e.g. one per checkpoint, evaluated "
                             "while training ran): merge their points by step and re-plot")
    args = parser.parse_args(argv)
    out = new_output(args.output)
    if args.merge_curves:
        merged = merge_curves(args.merge_curves)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learning_curve.json").write_text(json.dumps(merged, indent=1))
        plot_curve(merged, out / "learning_curve.png")
        print(f"wrote {out / 'learning_curve.json'} and {out / 'learning_curve.png'}")
        return
    args.data = args.data.resolve()
    if not (args.data / "oasis_vxm" / "t1.nii.gz").is_file():
        fail(f"the OASIS scan is not under {args.data} (--data)")
    lists = {}
    ibsr_known = [*CONDITIONS, *PLANE_CONDITIONS, *BIAS_CONDITIONS, *CHAINS]
    for opt, known in (("conditions", ALL_OASIS_CONDITIONS), ("ibsr_conditions", ibsr_known)):
        lists[opt] = [c for c in getattr(args, opt).split(",") if c]
        if unknown := set(lists[opt]) - set(known):
            fail(f"unknown --{opt.replace('_', '-')} {sorted(unknown)}; choose from "
                 f"{list(known)}")
    bench = Bench(args, out)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoints:
        curve = learning_curve(bench, args.checkpoints)
        curve |= {"seconds": round(time.perf_counter() - t0, 1), "commands": bench.commands}
        (out / "learning_curve.json").write_text(json.dumps(curve, indent=1))
        plot_curve(curve, out / "learning_curve.png")
        print(f"wrote {out / 'learning_curve.json'} and {out / 'learning_curve.png'}")
        return
    record: dict = {"model": args.model, "oasis": {}, "ibsr": {}}
    for cond in lists["conditions"]:
        record["oasis"][cond] = bench.oasis(cond, args.model, cond)
    for cond in lists["ibsr_conditions"]:
        record["ibsr"][cond] = bench.ibsr(cond, args.model)
    if args.tissue_model and bench.kind == "structures":
        record["tissue_model"] = bench.tissue_model(args.tissue_model)
    record |= {
        "kind": bench.kind,
        "seconds": round(time.perf_counter() - t0, 1),
        "commands": bench.commands,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))
    table = markdown(record)
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
