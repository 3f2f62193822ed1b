"""FastSurfer's view aggregation, measured before it is built into ``infer.py``: a sagittal network
on hemisphere-merged labels (``experiment=structures_sagittal``) beside the structure model.

The structure model's probabilities ``p`` (K classes, coronal and axial slices) and the sagittal
network's ``q`` (M merged classes: each left/right pair one class) are combined on the network
grid, before the intensity refinement and the clean-up, as FastSurfer does::

    split[k] = q[merged(k)] * p[k] / sum(p[j] for j in merged(k))   # q's mass shared by p
    final    = (1 - w) * p + w * split

``split`` sums to one like ``q`` (a pair's share is 1/2 each where ``p`` gives it nothing), so
``final`` does too, and ``w = 0`` is the structure model alone. Every scan then goes through the
rest of ``infer.py``'s pipeline (``segment_scans``) and is scored with ``evaluate.py``: the
structures on OASIS (as it is and degraded: the scans of a ``benchmarks/structures.py`` output
folder) and the tissue view on IBSR.

    python -m benchmarks.view_aggregation --sagittal sagittal.pt --scans results_structures/scans \\
        --output view_agg/ --weights 0 0.2 0.33 --threads 2

One JSON line per weight and condition (``--output``/results.json too).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from benchmarks.structures import HEAD_PROXY, OASIS_CONDITIONS, read_structures, read_tissue

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "real"

log = logging.getLogger("view_aggregation")


def combine(p: torch.Tensor, q: torch.Tensor, index: torch.Tensor, w: float,
            chunk: int = 16) -> torch.Tensor:
    """``(1 - w) p + w split(q, p)`` in place in ``p``, ``chunk`` planes of axis 1 at a time.

    Args:
        p: (K, X, Y, Z) float probabilities of the full classes (sum 1 over K).
        q: (M, X, Y, Z) float probabilities of the merged classes (sum 1 over M), same grid.
        index: (K,) int64 merged class of each full class.
        w: weight of the merged view, in [0, 1].
    """
    if not 0 <= w <= 1:
        raise ValueError(f"the weight must be in [0, 1], got {w}")
    m = q.shape[0]
    count = torch.bincount(index, minlength=m).to(p.dtype)  # full classes per merged class
    for x0 in range(0, p.shape[1], chunk):
        pc, qc = p[:, x0:x0 + chunk], q[:, x0:x0 + chunk]
        denom = torch.zeros((m, *pc.shape[1:]), dtype=p.dtype, device=p.device)
        denom.index_add_(0, index, pc)
        d = denom[index]
        share = torch.where(d > 1e-6, pc / d.clamp_min(1e-6), 1 / count[index].view(-1, 1, 1, 1))
        p[:, x0:x0 + chunk] = (1 - w) * pc + w * qc[index] * share
    return p


class ViewAggregate:
    """A :class:`~synthseg_lite.inference.predictor.Predictor` stand-in for ``segment_scans``:
    the structure model's probabilities combined with a merged-label view's (:func:`combine`).
    The last scan's network outputs are kept, so several weights in a row cost one network run."""

    def __init__(self, main, side, index: torch.Tensor, weight: float):
        self.main, self.side, self.index, self.weight = main, side, index, weight
        self.meta, self.slices = main.meta, main.slices
        self.target, self.tissue_group = main.target, main.tissue_group
        self._last: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    @property
    def passes_text(self) -> str:
        return f"{self.main.passes_text} + sagittal view {self.side.passes_text} (w={self.weight})"

    @property
    def batch_size(self) -> int:
        return self.main.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.main.batch_size = self.side.batch_size = value

    def to(self, device) -> ViewAggregate:
        self.main.to(device)
        self.side.to(device)
        return self

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        key = (tuple(image.shape), float(image.sum()), float((image * image).sum()))
        if self._last is None or self._last[0] != key:
            self._last = (key, self.main(image)[0], self.side(image)[0])
        _, p, q = self._last
        return combine(p.clone(), q, self.index.to(p.device), self.weight)[None]


def _evaluate(pred: Path, ref: Path, out: Path, *options: str) -> Path:
    """``evaluate.py``; the path of its summary."""
    subprocess.run([sys.executable, "evaluate.py", f"pred={pred}", f"ref={ref}", f"output={out}",
                    *options], cwd=ROOT, check=True, capture_output=True, text=True)
    return out / "summary.json"


def run(sagittal: Path, scans: Path, output: Path, weights: list[float], threads: int,
        conditions: list[str], ibsr: bool, model: str = "structures") -> list[dict[str, Any]]:
    from synthseg_lite.inference import pipeline
    from synthseg_lite.inference.predictor import Predictor, load_ensemble
    from synthseg_lite.inference.segment import InferenceOptions, build_predictor
    from synthseg_lite.labels.presets import hemispheres_merged

    opts = InferenceOptions(threads=threads, save_qc=False)
    main, meta, device, path = pipeline.load_predictor(model, opts, load_ensemble)
    side_nets, side_meta = load_ensemble(sagittal, device)
    merged, index = hemispheres_merged(meta.label_table.target)
    if side_meta.label_table.target != merged:
        raise ValueError(f"{sagittal}: predicts {side_meta.label_table.target.names[:3]}..., not "
                         "the structure model's classes with the hemispheres merged")
    side: Predictor = build_predictor(side_nets, side_meta, opts)
    agg = ViewAggregate(main, side, torch.as_tensor(index), 0.0)
    cases = [(c, [DATA / "oasis_vxm" / "t1.nii.gz" if c == "original"
                  else scans / c / "oasis" / "t1.nii.gz"]) for c in conditions]
    if ibsr:
        cases.append(("ibsr", sorted(DATA.glob("ibsr/IBSR_*/IBSR_??.nii.gz"))))
    lines = []
    with mock.patch.object(pipeline, "load_predictor", lambda *a, **k: (agg, meta, device, path)):
        for name, files in cases:
            for scan in files:  # scan by scan, every weight: the networks run once a scan
                for w in weights:
                    agg.weight = w
                    pipeline.segment_scans(scan, output / "seg" / f"w{w:g}" / name, model, opts)
            for w in weights:
                seg, ev = output / "seg" / f"w{w:g}" / name, output / "eval" / f"w{w:g}" / name
                if name == "ibsr":
                    rec = {"dice": read_tissue(_evaluate(
                        seg, DATA / "ibsr", ev, "pred_labels=aseg_ventricular", "ref_labels=ibsr"))}
                else:
                    ref = (scans / name / "head" / "aseg.nii.gz" if name == HEAD_PROXY
                           else DATA / "oasis_vxm" / "aseg.nii.gz")
                    r = read_structures(_evaluate(seg / "t1_seg.nii.gz", ref, ev,
                                                  "mode=structures"))
                    rec = {"structure_mean": r["structure_mean"], "dice": r["structures"]}
                line = {"condition": name, "weight": w, **rec}
                log.info("%s w=%g: %s", name, w, rec.get("structure_mean", rec["dice"]))
                lines.append(line)
                with open(output / "results.json", "a") as f:
                    f.write(json.dumps(line) + "\n")
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sagittal", type=Path, required=True,
                   help="a model of experiment=structures_sagittal192 (or structures_sagittal)")
    p.add_argument("--model", default="structures", help="the structure model (infer.py's model=)")
    p.add_argument("--scans", type=Path, required=True,
                   help="a benchmarks/structures.py output's scans/ (the degraded OASIS scans)")
    p.add_argument("--output", type=Path, required=True, help="results folder (new)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.2, 0.33])
    p.add_argument("--conditions", nargs="+", default=list(OASIS_CONDITIONS))
    p.add_argument("--no-ibsr", action="store_true", help="skip the IBSR tissue view")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.output.mkdir(parents=True, exist_ok=False)
    return run(args.sagittal, args.scans, args.output, args.weights, args.threads,
               args.conditions, not args.no_ibsr, args.model)


if __name__ == "__main__":
    main()
