"""The intensity refinement (``refine=gmm``) where a Gaussian per structure is least true:
white-matter lesions (its known limit) and an uncorrected bias field.

``lesions``: T1-hypointense lesions are painted into the shared OASIS scan: spheres of radius
2-4 mm (seeded), 12 in the periventricular white matter (2-6 mm from a lateral ventricle) and 8
in the deep white matter (>= 5 mm from anything else), each set to the cortex's mean intensity
plus noise. FreeSurfer labels such voxels WM-hypointensities (77) and SynthSeg calls them white
matter; a model that reads intensities calls them grey matter. Each model segments the scan with
``refine=none`` and ``refine=gmm`` (the public API, default options otherwise) and the lesion
voxels are counted by what they were labelled: white matter, cortex / GM, ventricles / CSF,
background, other. ``--lesion-contrasts t1 inverted`` also scores the scan with contrast inverted
inside the brain (``invert_contrast``: bright lesions in dark white matter, T2/FLAIR-like).

``bias``: the OASIS scan times a smooth multiplicative field exp(a (0.8 x + 0.6 y - 0.5 z +
0.5 x z)) (coordinates in [-1, 1] over the grid; a = 0, 0.2, 0.4: max / min 1, 2.1, 4.6),
segmented by the structure model with ``refine=none`` and ``refine=gmm``; mean Dice over the 31
structures against the aseg (``evaluate_structures``, as ``benchmarks/structures.py``).

    python benchmarks/refine_checks.py --threads 2        # one JSON line (about 2 min)
    python benchmarks/refine_checks.py --checks lesions --structures-model structures new.pt \
        --tissue-model '' --figure lesions.png   # the shipped model beside a candidate, a picture
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
OASIS = ROOT.parent / "shared/data/real/oasis_vxm"
WM, CORTEX, FLUID = (2, 41, 7, 46), (3, 42), (4, 43, 5, 44, 14, 15)


def paint_lesions(t1: np.ndarray, aseg: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scan with lesions, lesion mask) for a (X, Y, Z) T1 and its aseg (1 mm voxels)."""
    rng = np.random.default_rng(seed)
    vent, wm = np.isin(aseg, (4, 43)), np.isin(aseg, (2, 41))
    near = wm & ndi.binary_dilation(vent, iterations=6) & ~ndi.binary_dilation(vent, iterations=2)
    deep = wm & ~ndi.binary_dilation(~wm, iterations=5)
    grid = np.indices(t1.shape)
    lesion = np.zeros(t1.shape, bool)
    for pool, n in ((near, 12), (deep, 8)):
        candidates = np.argwhere(pool)
        for c in candidates[rng.choice(len(candidates), n, replace=False)]:
            r = rng.uniform(2.0, 4.0)
            lesion |= ((grid - c[:, None, None, None]) ** 2).sum(0) <= r * r
    lesion &= wm
    out = t1.copy()
    out[lesion] = t1[np.isin(aseg, (3, 42))].mean() + 0.02 * rng.standard_normal(lesion.sum())
    return out, lesion


def bias_field(shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """The smooth multiplicative field of the ``bias`` check, float32."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return np.exp(amplitude * (0.8 * x + 0.6 * y - 0.5 * z + 0.5 * x * z)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OASIS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", nargs="+", default=["lesions", "bias"],
                        choices=["lesions", "bias"])
    parser.add_argument("--structures-model", nargs="+", default=["structures"],
                        help="structure model(s): shipped name or .pt file (results keyed by the "
                             "file's stem when not 'structures')")
    parser.add_argument("--tissue-model", default="tissue_fast",
                        help="tissue model for the lesion check ('' skips it)")
    parser.add_argument("--lesion-contrasts", nargs="+", default=["t1"], choices=["t1", "inverted"])
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of the lesion check: a coronal slice through the most lesion "
                             "voxels, each structure model's labels with and without refinement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import synthseg_lite
    from synthseg_lite.evaluation.degrade import invert_contrast
    from synthseg_lite.evaluation.structure_metrics import evaluate_structures

    img = nib.load(str(args.data / "t1.nii.gz"))
    t1 = np.asarray(img.dataobj, np.float32)
    aseg = np.asarray(nib.load(str(args.data / "aseg.nii.gz")).dataobj).astype(np.int64)
    result: dict = {"benchmark": "refine_checks", "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        for amplitude in (0.0, 0.2, 0.4) if "bias" in args.checks else ():
            path = Path(tmp) / f"t1_bias{amplitude}.nii.gz"
            field = bias_field(t1.shape, amplitude)
            nib.save(nib.Nifti1Image(t1 * field, img.affine), str(path))
            row = {"max_over_min": round(float(field.max() / field.min()), 2)}
            for refine in ("none", "gmm"):
                res = synthseg_lite.segment(path, model=args.structures_model[0],
                                            threads=args.threads, refine=refine, save_qc=False)
                seg = Path(tmp) / f"seg_bias{amplitude}_{refine}.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(res.labels), res.affine), str(seg))
                summary = evaluate_structures([("oasis", seg, args.data / "aseg.nii.gz")],
                                              surface=False)
                row[f"refine={refine}"] = round(summary["structure_mean"]["Dice"], 4)
            result.setdefault("bias", {})[str(amplitude)] = row
        if "lesions" not in args.checks:
            print(json.dumps(result))
            return
        scan, lesion = paint_lesions(t1, aseg, args.seed)
        result["lesions"] = {"lesion_voxels": int(lesion.sum()), "models": {}}
        models = [("tissue", args.tissue_model)] if args.tissue_model else []
        models += [("structures", m) for m in args.structures_model]
        panels: list[tuple[str, np.ndarray, np.ndarray]] = []  # (title, image, labels) per run
        for contrast in args.lesion_contrasts:
            path = Path(tmp) / f"t1_lesions_{contrast}.nii.gz"
            image = scan if contrast == "t1" else invert_contrast(scan, aseg > 0)
            nib.save(nib.Nifti1Image(image, img.affine), str(path))
            for kind, model in models:
                for refine in ("none", "gmm"):
                    res = synthseg_lite.segment(path, model=model, threads=args.threads,
                                                refine=refine, save_qc=False)
                    labels = np.asarray(res.labels)[lesion]
                    if kind == "tissue":  # 1 GM, 2 WM, 3 CSF
                        groups = {"wm": labels == 2, "cortex_gm": labels == 1, "fluid": labels == 3}
                    else:
                        groups = {"wm": np.isin(labels, WM), "cortex_gm": np.isin(labels, CORTEX),
                                  "fluid": np.isin(labels, FLUID)}
                    groups["background"] = labels == 0
                    groups["other"] = ~np.any(list(groups.values()), axis=0)
                    tag = kind if model in ("structures", "tissue_fast") else Path(model).stem
                    name = f"{tag}/refine={refine}" + ("" if contrast == "t1" else f"/{contrast}")
                    if kind == "structures":
                        panels.append((name, image, np.asarray(res.labels)))
                    result["lesions"]["models"][name] = {
                        k: round(float(v.mean()), 3) for k, v in groups.items()
                    }
        if args.figure is not None:
            lesion_figure(panels, lesion, args.figure)
    print(json.dumps(result))


def lesion_figure(panels: list[tuple[str, np.ndarray, np.ndarray]], lesion: np.ndarray,
                  path: Path) -> None:
    """Coronal slice (LIA grid: axis 2) through the most lesion voxels: per run, the scan with
    the lesions outlined (white) and the labels in FreeSurfer colours (white matter shown as the
    scan, so that what is not WM stands out)."""
    from matplotlib.figure import Figure

    from synthseg_lite.labels import FREESURFER_COLORS

    k = int(lesion.sum((0, 1)).argmax())
    edge = lesion[..., k] & ~ndi.binary_erosion(lesion[..., k])
    brain = np.argwhere(panels[0][2][..., k] > 0)  # crop to the brain, 4 voxels of margin
    (x0, y0), (x1, y1) = brain.min(0) - 4, brain.max(0) + 5
    crop = (slice(max(y0, 0), y1), slice(max(x0, 0), x1))  # rows: axis 1, columns: axis 0
    colors = np.zeros((max(FREESURFER_COLORS) + 1, 3))  # label value -> RGB; WM left grey
    for value, c in FREESURFER_COLORS.items():
        if value not in (0, *WM):
            colors[value] = np.asarray(c) / 255
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.6 * rows), dpi=100)
    for i, (title, image, labels) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = image[..., k].T
        rgb = np.repeat((img / max(float(img.max()), 1e-6))[..., None], 3, -1)
        lab = labels[..., k].T
        show = (lab > 0) & ~np.isin(lab, WM)
        rgb[show] = 0.45 * rgb[show] + 0.55 * colors[lab[show]]
        rgb[edge.T] = 1.0
        ax.imshow(rgb[crop], interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
