"""One real scan stored and acquired the ways a lab's files come: each variant segmented with a
model and scored against the scan's aseg stored the same way, so that a difference in storage is
the tool's, not the data's, and an artefact's cost is measured with what QC makes of it.

    python -m benchmarks.scan_variants --output variants/            # model=tissue, OASIS
    python -m benchmarks.scan_variants --output v/ --model structures --variants oblique,cut

Variants (:data:`VARIANTS`), each of the scan and its labels alike. Stored differently:

* ``stored``: as on disk (OASIS: 160 x 192 x 224, 1 mm, LIA, skull-stripped);
* ``oblique``: the same voxels under a header turned 20 degrees about the first axis (an
  oblique acquisition: the head lies in the voxel grid as before);
* ``permuted``: the voxel axes stored in another order, one of them reversed, the header
  following (another scanner's storage order; the same image in the world);
* ``ct_int16``: int16 voxels offset by -1024 (a scaled, signed integer file);
* ``tiny_scale``: float voxels times 1e-4 (a quantitative map's units);
* ``off_centre``: 100 empty voxels before the brain and 20 after along one axis (a large field
  of view with the brain off its centre);
* ``fine``: resampled to 0.7 mm (229 x 274 x 320 voxels: a 7 T-like grid; labels by nearest
  neighbour);
* ``cut``: only the upper 55 % of the field of view (the cerebellum and brainstem cut away; the
  Dice is over what remains, and ``fov_cut`` should name the side).

Acquired with an artefact (TorchIO's k-space simulations, torch seed 7 each; labels unchanged):

* ``motion_mild`` / ``motion_strong``: ``RandomMotion``, 2 movements of 2 degrees and 2 mm / 4
  of 8 degrees and 8 mm;
* ``ghosting``: ``RandomGhosting``, 4 ghosts at intensity 0.8;
* ``spikes``: ``RandomSpike``, 2 spikes at intensity 1.5 (a herringbone pattern).

Output: ``variants.json`` (per variant: the shape, the GM / WM / CSF Dice of the tissue view, CSF
the ventricles as ``ref_labels=aseg_ventricular``; seconds; the QC score; the pose read) and
``variants.md`` (the table), with the pose read and ``fov_cut`` (the side where the field of
view cuts the segmented brain, as ``qc_fov_cut`` in ``volumes.csv``). Each variant is one :func:`synthseg_lite.segment` call.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from synthseg_lite.commands.common import fail

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "oasis_vxm"

log = logging.getLogger(__name__)

Variant = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _oblique(image, labels, affine):
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    return image, labels, turn @ affine


def _permuted(image, labels, affine):
    """Voxel axes (0, 1, 2) stored as (2, 0, 1), the new first axis reversed."""
    def move(v):
        return np.ascontiguousarray(np.transpose(v, (2, 0, 1))[::-1])

    new = affine[:, [2, 0, 1, 3]].copy()
    new[:3, 3] += new[:3, 0] * (image.shape[2] - 1)
    new[:3, 0] *= -1
    return move(image), move(labels), new


def _ct_int16(image, labels, affine):
    return (image * 1000 / image.max() - 1024).astype(np.int16), labels, affine


def _tiny_scale(image, labels, affine):
    return (image * 1e-4).astype(np.float32), labels, affine


def _off_centre(image, labels, affine):
    pad = ((0, 0), (0, 0), (100, 20))
    new = affine.copy()
    new[:3, 3] -= affine[:3, :3] @ np.array([0, 0, 100])
    return np.pad(image, pad), np.pad(labels, pad), new


def _fine(image, labels, affine, mm: float = 0.7):
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * mm
    new[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, (mm - 1) / 2)  # same field of view
    return (ndimage.zoom(image, 1 / mm, order=1), ndimage.zoom(labels, 1 / mm, order=0), new)


def _cut(image, labels, affine, keep: float = 0.55):
    """The upper ``keep`` of the field of view: along the voxel axis nearest inferior-superior,
    the superior end kept (the header's origin moved with it)."""
    axis = int(np.argmax(np.abs(affine[2, :3])))
    n = image.shape[axis]
    up = affine[2, axis] > 0  # the index grows toward superior
    start = n - int(n * keep) if up else 0
    part = [slice(None)] * 3
    part[axis] = slice(start, start + int(n * keep))
    new = affine.copy()
    new[:3, 3] += affine[:3, axis] * start
    return image[tuple(part)], labels[tuple(part)], new


def _artefact(make: Callable[[], object]) -> Variant:
    """A TorchIO transform (built by ``make``) applied to the scan, torch seed 7."""

    def apply(image, labels, affine):
        import torch
        import torchio as tio

        torch.manual_seed(7)
        out = make()(tio.ScalarImage(tensor=image[None], affine=affine))
        return out.data[0].numpy().astype(np.float32), labels, affine

    return apply


def _tio(name: str, **kwargs) -> Callable[[], object]:
    def make():
        import torchio as tio

        return getattr(tio, name)(**kwargs)

    return make


VARIANTS: dict[str, Variant] = {
    "stored": lambda image, labels, affine: (image, labels, affine),
    "oblique": _oblique,
    "permuted": _permuted,
    "ct_int16": _ct_int16,
    "tiny_scale": _tiny_scale,
    "off_centre": _off_centre,
    "fine": _fine,
    "cut": _cut,
    "motion_mild": _artefact(_tio("RandomMotion", degrees=(2, 2), translation=(2, 2),
                                  num_transforms=2)),
    "motion_strong": _artefact(_tio("RandomMotion", degrees=(8, 8), translation=(8, 8),
                                    num_transforms=4)),
    "ghosting": _artefact(_tio("RandomGhosting", num_ghosts=(4, 4), intensity=(0.8, 0.8))),
    "spikes": _artefact(_tio("RandomSpike", num_spikes=(2, 2), intensity=(1.5, 1.5))),
}


def table(rows: list[dict]) -> list[str]:
    lines = ["| variant | voxels | GM / WM / CSF Dice | QC | pose read | fov cut | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        pose = r["pose"] or {}
        shape = " x ".join(map(str, r["shape"]))
        dice = " / ".join(f"{r['tissue'][c]:.3f}" for c in ("GM", "WM", "CSF"))
        lines.append(
            f"| {r['variant']} | {shape} | {dice} | {r['qc']:.3f} | {pose.get('degrees', '')} | "
            f"{r['fov_cut']} | {r['seconds']:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--model", default="tissue")
    ap.add_argument("--scan", type=Path, default=DATA / "t1.nii.gz")
    ap.add_argument("--aseg", type=Path, default=DATA / "aseg.nii.gz")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        names = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown or not names:
            raise ValueError(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
        for p in (args.scan, args.aseg):
            if not p.is_file():
                raise ValueError(f"{p} not found (see ../shared/data/README.md)")
        args.output.mkdir(parents=True, exist_ok=True)
        if (args.output / "variants.json").exists():
            raise ValueError(f"{args.output / 'variants.json'} exists; choose another --output")
    except ValueError as e:
        return fail(e)

    import nibabel as nib

    import synthseg_lite
    from synthseg_lite.evaluation.metrics import evaluate_pairs
    from synthseg_lite.io import save_volume

    scan, aseg = nib.load(args.scan), nib.load(args.aseg)
    image = np.asarray(scan.dataobj, dtype=np.float32)
    labels = np.asarray(aseg.dataobj).astype(np.int32)
    rows = []
    for name in names:
        im, lab, affine = VARIANTS[name](image, labels, scan.affine)
        ref, seg = args.output / f"{name}_aseg.nii.gz", args.output / f"{name}_seg.nii.gz"
        save_volume(lab, affine, ref)
        seg.unlink(missing_ok=True)
        t = time.perf_counter()
        result = synthseg_lite.segment((im, affine), model=args.model, threads=args.threads,
                                       save_posteriors=False)
        seconds = time.perf_counter() - t
        result.save(seg)
        if tuple(result.names[1:]) != ("GM", "WM", "CSF"):
            kind = "aseg_ventricular"  # a structure model: its tissue view
        else:
            kind = "tissue"
        m = evaluate_pairs([(name, seg, ref)], kind, "aseg_ventricular", surface=False)
        rows.append({
            "variant": name, "shape": list(im.shape),
            "tissue": {c: round(m["mean"][k]["Dice"], 4) for k, c in
                       enumerate(("GM", "WM", "CSF"), 1)},
            "qc": round(result.qc["qc_score"], 4), "pose": result.pose,
            "fov_cut": result.fov_cut,
            "seconds": round(seconds, 1),
        })
        log.info("%s: %s", name, table(rows)[-1])
    (args.output / "variants.json").write_text(json.dumps(
        {"model": args.model, "scan": str(args.scan), "threads": args.threads, "variants": rows},
        indent=1))
    lines = table(rows)
    (args.output / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
