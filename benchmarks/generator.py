"""Throughput and peak memory of our batched generator vs TorchIO (and cornucopia when installed).

    python benchmarks/generator.py --sizes 96,160                 # CPU, 2 threads, batch 4
    python benchmarks/generator.py --sizes 160 --device cuda --batch-size 8 --contenders ours

Prints one JSON line per output size (keys: benchmarks/README.md). Every contender runs in its own
subprocess (``--worker``), so its peak resident memory (``ru_maxrss``) is its own. All contenders
get the same label map (the first of ``../shared/data/label_maps`` if present, else a phantom),
cropped to its labelled bounding box. Ours and cornucopia crop the output patch themselves;
TorchIO gets the map already cropped/padded to the output size (``CropOrPad``, untimed).
Ours runs ``--batch-size`` samples per call; TorchIO and cornucopia one sample per call.
``--contenders ours,synthseg`` measures what SynthSeg's steps that are off by default cost: ours
with ``conf/synth/synthseg.yaml``'s values (``synthseg_vs_ours``: its speed over the default's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAPS = ROOT.parent / "shared" / "data" / "label_maps"


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    ``/proc/self/status`` VmHWM (reset by exec, unlike ``ru_maxrss`` which a child inherits
    from its parent's size at fork); ``ru_maxrss`` where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux KiB (macOS: bytes)


def _label_map(spec: str | None):
    """(X, Y, Z) uint8 generation indices cropped to the labels, the table and the map's name."""
    from synthseg_lite.data import crop_to_labels, resolve_paths
    from synthseg_lite.io import load_label_map
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.data.phantom import make_phantom

    table = LabelTable.create("tissue")
    if spec is None and DEFAULT_MAPS.is_dir():
        spec = str(DEFAULT_MAPS)
    if spec is None:
        return crop_to_labels(table.encode(make_phantom()), 0), table, "phantom"
    path = resolve_paths(spec)[0]
    return crop_to_labels(table.encode(load_label_map(path).data), 0), table, path.name


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthseg_config(size: int):
    """The generator settings of ``train.py synth=synthseg`` (Hydra-composed) at a ``size`` cube."""
    from omegaconf import OmegaConf

    from benchmarks.gpu_steps import _compose

    cfg = _compose(["synth=synthseg", f"synth.patch_shape=[{size},{size},{size}]"])
    return OmegaConf.to_object(cfg.synth)


def _run_ours(labels, table, size: int, device, batch: int, warmup: int, iters: int,
              synthseg: bool = False) -> dict:
    import torch

    from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator

    cfg = _synthseg_config(size) if synthseg else SynthConfig(patch_shape=[size] * 3)
    gen = SynthGenerator(cfg, table).to(device)
    lab = torch.from_numpy(labels)[None, None].expand(batch, 1, *labels.shape)
    lab = lab.contiguous().to(device)
    rss0 = _rss_mb()
    for step in range(warmup):
        gen(lab, make_generator(device, 0, step))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for step in range(iters):
        out = gen(lab, make_generator(device, 1, step))
    _sync(device)
    sec = time.perf_counter() - t
    res = {"samples_per_s": batch * iters / sec, "s_per_batch": sec / iters, "setup_rss_mb": rss0}
    if device.type == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    assert out.image.shape == (batch, 1, size, size, size)
    return res


def _torchio_chain():
    import torchio as tio

    # The SynthSeg chain in TorchIO terms: deform the labels, GMM image, bias, gamma, thick
    # slices, blur.
    return tio.Compose([
        tio.RandomAffine(scales=(0.8, 1.2), degrees=20, translation=10, default_pad_label=0),
        tio.RandomElasticDeformation(num_control_points=7, max_displacement=7.5),
        tio.RandomLabelsToImage(label_key="label", image_key="image"),
        tio.RandomBiasField(coefficients=0.6),
        tio.RescaleIntensity(out_min_max=(0, 1)),
        tio.RandomGamma(log_gamma=(-0.4, 0.4)),
        tio.RandomAnisotropy(downsampling=(1, 9)),
        tio.RandomBlur(std=(0, 1)),
    ])


def _run_torchio(labels, size: int, warmup: int, iters: int) -> dict:
    import torch
    import torchio as tio

    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
    except ImportError:
        pass
    lab = tio.LabelMap(tensor=torch.from_numpy(labels.astype(np.int64))[None], affine=np.eye(4))
    subject = tio.CropOrPad(size)(tio.Subject(label=lab))
    chain = _torchio_chain()
    rss0 = _rss_mb()
    for _ in range(warmup):
        chain(subject)
    t = time.perf_counter()
    for _ in range(iters):
        out = chain(subject)
    sec = time.perf_counter() - t
    assert out["image"].shape == (1, size, size, size)
    return {"samples_per_s": iters / sec, "s_per_sample": sec / iters, "setup_rss_mb": rss0}


def _run_cornucopia(labels, size: int, device, warmup: int, iters: int) -> dict:
    import torch

    try:
        import cornucopia as cc
    except ImportError as exc:
        return {"error": f"cornucopia not importable ({exc}); pip install cornucopia"}
    synth = cc.SynthFromLabelTransform(patch=size, device=device)
    pad = [(max(size - n, 0) // 2, max(size - n, 0) - max(size - n, 0) // 2) for n in labels.shape]
    labels = np.pad(labels, pad)  # cornucopia cannot crop a patch larger than its input
    lab = torch.from_numpy(labels.astype(np.int64))[None].to(device)
    rss0 = _rss_mb()
    for _ in range(warmup):
        synth(lab)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        image, _target = synth(lab)
    _sync(device)
    sec = time.perf_counter() - t
    assert image.shape[-3:] == (size, size, size)
    return {"samples_per_s": iters / sec, "s_per_sample": sec / iters, "setup_rss_mb": rss0,
            "version": getattr(cc, "__version__", "?")}


def worker(args: argparse.Namespace) -> None:
    """Measure one contender at one size; print one JSON object."""
    import torch

    from synthseg_lite.labels import LabelTable

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    labels, table = np.load(args.labels_npy), LabelTable.create("tissue")
    iters = {"ours": args.iters, "synthseg": args.iters, "torchio": args.iters_per_sample,
             "cornucopia": args.iters_cornucopia}[args.worker]
    if args.worker in ("ours", "synthseg"):
        res = _run_ours(labels, table, args.worker_size, device, args.batch_size, args.warmup,
                        iters, synthseg=args.worker == "synthseg")
    elif args.worker == "torchio":
        res = _run_torchio(labels, args.worker_size, args.warmup, iters)
    else:
        res = _run_cornucopia(labels, args.worker_size, device, args.warmup, iters)
    res.update(peak_rss_mb=_rss_mb(), iters=iters, torch=torch.__version__)
    print(json.dumps(res))


def _spawn(args: argparse.Namespace, who: str, size: int, labels_npy: str) -> dict:
    python = sys.executable
    if who == "cornucopia" and args.cornucopia_python:
        python = args.cornucopia_python
    cmd = [python, str(Path(__file__).resolve()), "--worker", who, "--worker-size", str(size),
           "--device", args.device, "--threads", str(args.threads),
           "--batch-size", str(args.batch_size),
           "--warmup", str(args.warmup), "--iters", str(args.iters),
           "--iters-per-sample", str(args.iters_per_sample), "--iters-cornucopia",
           str(args.iters_cornucopia), "--labels-npy", labels_npy]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="96,160", help="comma-separated output sizes (cubes)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (ours and cornucopia; TorchIO is CPU only)")
    p.add_argument("--threads", type=int, default=2, help="torch/OMP/SimpleITK threads per process")
    p.add_argument("--batch-size", type=int, default=4, help="our batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--iters", type=int, default=3, help="timed batches (ours)")
    p.add_argument("--iters-per-sample", type=int, default=4, help="timed samples (TorchIO)")
    p.add_argument("--iters-cornucopia", type=int, default=1, help="timed samples (cornucopia)")
    p.add_argument("--contenders", default="ours,torchio,cornucopia")
    p.add_argument("--label-map", default=None,
                   help="label map file/folder/glob (default: the shared data, else a phantom)")
    p.add_argument("--cornucopia-python", default=None,
                   help="an interpreter that has cornucopia (e.g. a throwaway venv)")
    p.add_argument("--worker", choices=["ours", "synthseg", "torchio", "cornucopia"],
                   help=argparse.SUPPRESS)
    p.add_argument("--worker-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--labels-npy", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"error: --sizes must be comma-separated integers, got {args.sizes!r}",
              file=sys.stderr)
        return 2
    contenders = [c for c in args.contenders.split(",") if c]
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
    try:
        labels, _, name = _label_map(args.label_map)  # workers load the small cropped map only
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="bench_generator_")
    labels_npy = str(Path(tmp.name) / "labels.npy")
    np.save(labels_npy, labels)
    for size in sizes:
        row: dict = {"size": size, "device": args.device, "threads": args.threads,
                     "batch_size": args.batch_size, "label_map": name,
                     "label_map_shape": list(labels.shape)}
        row["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
        results = {c: _spawn(args, c, size, labels_npy) for c in contenders}
        row["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        for c, r in results.items():
            if "error" in r:
                row[f"{c}_error"] = r["error"]
                continue
            row[f"{c}_samples_per_s"] = round(r["samples_per_s"], 4)
            row[f"{c}_peak_rss_mb"] = round(r["peak_rss_mb"], 1)
            row[f"{c}_setup_rss_mb"] = round(r["setup_rss_mb"], 1)
            if "peak_gpu_mb" in r:
                row[f"{c}_peak_gpu_mb"] = round(r["peak_gpu_mb"], 1)
            if "s_per_batch" in r:
                row[f"{c}_ms_per_batch"] = round(1000 * r["s_per_batch"], 1)
            row.setdefault("torch", r["torch"])
        ours = row.get("ours_samples_per_s")
        for c in ("torchio", "cornucopia"):
            if ours and row.get(f"{c}_samples_per_s"):
                row[f"ratio_vs_{c}"] = round(ours / row[f"{c}_samples_per_s"], 2)
        if ours and row.get("synthseg_samples_per_s"):
            row["synthseg_vs_ours"] = round(row["synthseg_samples_per_s"] / ours, 3)
        peaks = [v for k, v in row.items() if k.endswith("_peak_rss_mb")]
        row["peak_rss_mb"] = max(peaks) if peaks else None
        print(json.dumps(row), flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
