"""Seconds per scan of ``infer.py``'s pipeline on a 1 mm 256^3 head, CPU by default.

    python benchmarks/inference.py                                 # cpu-preset U-Net, 2 and 1 mm, 2 threads
    python benchmarks/inference.py --spacing 2 --tta flip --folds 5
    python benchmarks/inference.py --scan ../shared/data/real/oasis_vxm/t1.nii.gz --device cuda

Prints one JSON line per (spacing, roi) setting (keys: benchmarks/README.md). The network is the
assumed ``cpu`` preset (``UNetConfig(n_stages=5, base_features=16, max_features=256)``) with random
weights: speed does not depend on the weights. The default scan is a procedural whole head
(``synthseg_lite.phantom``, labels painted with random intensities, 256^3 at 1 mm, LIA on disk like
FreeSurfer's conformed space), so cropping to the non-zero voxels saves what it would on an
unstripped scan. Each run is the whole ``segment_scans`` call (read, preprocess, predict,
post-process, write segmentation, volumes and QC PNG); stage times come from a separate, identical
pass through the pipeline's functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _head(path: Path) -> Path:
    """Write a 256^3 1 mm head image (LIA on disk) painted from a phantom label map."""
    import nibabel as nib

    from synthseg_lite.phantom import make_phantom

    labels = make_phantom((256, 256, 256), seed=0)
    rng = np.random.default_rng(0)
    lut = rng.uniform(20, 200, labels.max() + 1).astype(np.float32)
    lut[0] = 0
    image = lut[labels] + rng.normal(0, 4, labels.shape).astype(np.float32) * (labels > 0)
    affine = np.eye(4)
    affine[:3, 3] = -128  # 1 mm RAS grid centred on the origin
    to_lia = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LIA")
    )
    nib.save(nib.Nifti1Image(image, affine).as_reoriented(to_lia), str(path))
    return path


def _stages(scan: Path, predictor, opts, device) -> dict[str, float]:
    """Seconds per stage of one scan (same calls as the pipeline)."""
    import torch

    from synthseg_lite.inference.postprocess import keep_largest_component, to_native
    from synthseg_lite.inference.preprocess import preprocess
    from synthseg_lite.io import load_volume

    t = {}
    start = time.perf_counter()
    vol = load_volume(scan, canonical=False)
    t["read"] = time.perf_counter() - start
    start = time.perf_counter()
    meta = predictor.meta
    image, geom = preprocess(
        torch.as_tensor(vol.data, device=device),
        vol.affine,
        meta.spacing_mm,
        meta.unet.divisor,
        tuple(opts.percentiles),
        opts.crop_foreground,
    )
    t["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    probs = predictor(image)[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t["network"] = time.perf_counter() - start
    start = time.perf_counter()
    probs = keep_largest_component(probs, opts.keep_largest)
    to_native(probs, geom)
    t["postprocess"] = time.perf_counter() - start
    return t | {"grid_shape": list(geom.grid_shape), "network_input_shape": list(geom.padded_shape)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--spacing", type=float, nargs="+", default=[2.0, 1.0], help="model voxel sizes (mm)"
    )
    p.add_argument(
        "--roi",
        nargs="+",
        default=["patch"],
        choices=["patch", "full"],
        help="sliding window of the training patch, or one window over the whole input",
    )
    p.add_argument("--patch", type=int, default=128, help="training patch side (voxels)")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--tta", default="none", choices=["none", "flip", "mirror"])
    p.add_argument("--folds", type=int, default=1, help="models in the ensemble")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed end-to-end runs")
    p.add_argument(
        "--scan", type=Path, default=None, help="scan to segment (default: 256^3 phantom head)"
    )
    args = p.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from synthseg_lite.inference import InferenceOptions, Predictor, load_ensemble, segment_scans
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.unet import UNetConfig, build_unet

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    unet = UNetConfig(n_stages=5, base_features=16, max_features=256, deep_supervision=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = args.scan or _head(tmp / "head_1mm.nii.gz")
        for spacing in args.spacing:
            run_dir = tmp / f"run_{spacing}"
            for fold in range(args.folds):
                torch.manual_seed(fold)
                meta = ModelMeta(unet, LabelTable.create("tissue"), spacing, (args.patch,) * 3, {})
                save_model(run_dir / f"fold_{fold}.pt", build_unet(unet, 4), meta)
            for roi in args.roi:
                opts = InferenceOptions(
                    device=args.device,
                    tta=args.tta,
                    overlap=args.overlap,
                    progress=False,
                    roi_size=[1024] * 3 if roi == "full" else None,
                )
                load_before = os.getloadavg()[0]
                runs = []
                for r in range(args.repeats):
                    (res,) = segment_scans(scan, tmp / f"out_{spacing}_{roi}_{r}", run_dir, opts)
                    if res.error:
                        raise SystemExit(res.error)
                    runs.append(round(res.seconds, 2))
                nets, meta = load_ensemble(run_dir, device)
                predictor = Predictor(
                    nets, meta, opts.tta, [1024] * 3 if roi == "full" else None, opts.overlap
                )
                stages = _stages(scan, predictor, opts, device)
                print(
                    json.dumps(
                        {
                            "benchmark": "inference",
                            "scan": str(args.scan or "phantom head 256^3 1 mm (LIA)"),
                            "spacing_mm": spacing,
                            "roi": roi,
                            "patch": args.patch,
                            "overlap": args.overlap,
                            "tta": args.tta,
                            "folds": args.folds,
                            "unet": unet.to_dict(),
                            "device": args.device,
                            "threads": args.threads,
                            "seconds_per_scan": float(np.median(runs)),
                            "runs_s": runs,
                            "stages_s": {
                                k: (round(v, 2) if isinstance(v, float) else v)
                                for k, v in stages.items()
                            },
                            "loadavg_1m_before": round(load_before, 2),
                            "loadavg_1m_after": round(os.getloadavg()[0], 2),
                            "torch": torch.__version__,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
