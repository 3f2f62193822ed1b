"""End-to-end seconds, CPU time, peak memory and a per-stage breakdown of ``infer.py``'s pipeline.

    python benchmarks/inference.py                                   # model=structures, 256^3 stripped
    python benchmarks/inference.py --models tissue_fast tissue structures --cases stripped skull
    python benchmarks/inference.py --trees /tmp/base .                # an older checkout beside this one
    python benchmarks/inference.py --models tissue_fast structures --backends torch onnx   # ONNX Runtime
    python benchmarks/inference.py --models tissue_fast structures --precisions float32 auto
    python benchmarks/inference.py --models 3d-cpu:2.0 --cases phantom   # random cpu-preset 3D U-Net

Each run is one fresh worker process (``--worker``) that imports the package of one code tree,
loads the model and calls ``segment_scans`` on one scan into a new folder with the given options
(default: flip TTA, QC PNG on, 2 threads), exactly as ``infer.py`` does. The pipeline's functions
are wrapped (in ``synthseg_lite.inference.pipeline``'s namespace, so any checkout works) to time
the stages: ``read`` (load_volume), ``preprocess``, ``network`` (time inside the networks' forward,
from forward hooks), ``aggregation`` (the rest of the predictor: softmax, flips, averaging),
``smooth`` (the probabilities' Gaussian, structure models), ``refine`` (the intensity refinement),
``postprocess`` (connected components, QC scores), ``resample`` (back to the scan's grid and
argmax), ``write`` (image files), ``qc_figure``, ``other`` (the rest of ``segment_scans``).
``startup_s`` is import + model load; ``cpu_s`` is user + sys of the ``segment_scans`` call;
``peak_rss_gb`` the worker's peak resident memory. With several ``--trees`` the runs alternate
between trees (tree A, tree B, tree A, ...), and ``ratio`` (first tree / each) is printed per
setting: on a loaded machine only ratios measured side by side mean anything. ``--backends`` does
the same across backends (``backend=onnx``: ONNX Runtime; its ``network`` stage is the time inside
ONNX Runtime's calls), and ``--precisions`` across ``precision=`` values (``auto``: bfloat16 on a
CPU with AMX; the worker reports the dtype it resolved to).

Scans (written to a temporary folder): ``stripped``, the OASIS T1 (160x192x224, 1 mm, LIA,
skull-stripped) padded into 256^3; ``skull``, the same with low-intensity noise filling an
ellipsoid of 200 x 240 x 220 mm around the brain (a head with signal everywhere); ``phantom``, a
procedural 256^3 head; or ``--scan PATH``.
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
OASIS = ROOT.parent / "shared/data/real/oasis_vxm/t1.nii.gz"
STAGES = (
    "read", "preprocess", "network", "aggregation", "smooth", "refine", "postprocess", "resample",
    "write", "qc_figure", "other",
)


def make_scan(case: str, folder: Path, source: Path = OASIS) -> Path:
    """Write the benchmark scan ``case`` (see the module docstring) into ``folder``."""
    import nibabel as nib

    path = folder / f"{case}_256.nii.gz"
    if path.exists():
        return path
    if case == "phantom":
        from synthseg_lite.data.phantom import make_phantom

        labels = make_phantom((256, 256, 256), seed=0)
        rng = np.random.default_rng(0)
        lut = rng.uniform(20, 200, labels.max() + 1).astype(np.float32)
        lut[0] = 0
        data = lut[labels] + rng.normal(0, 4, labels.shape).astype(np.float32) * (labels > 0)
        nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1, 1, 1])), str(path))
        return path
    img = nib.load(str(source))
    src = np.asarray(img.dataobj, dtype=np.float32)
    data = np.zeros((256, 256, 256), np.float32)
    lo = [(256 - n) // 2 for n in src.shape]
    data[lo[0] : lo[0] + src.shape[0], lo[1] : lo[1] + src.shape[1], lo[2] : lo[2] + src.shape[2]] = src
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array(lo, dtype=float)
    if case == "skull":
        # semi-axes (mm) of the ellipsoid along each voxel axis (RAS half-sizes 100, 120, 110 mm)
        ras_half = np.array([100.0, 120.0, 110.0])
        ras_axis = nib.orientations.io_orientation(affine)[:, 0].astype(int)
        half = ras_half[ras_axis]
        centre = [lo[i] + src.shape[i] / 2 for i in range(3)]
        grid = np.ogrid[:256, :256, :256]
        r2 = sum(((g - c) / h) ** 2 for g, c, h in zip(grid, centre, half))
        rng = np.random.default_rng(0)
        head = (r2 <= 1) & (data == 0)
        noise = rng.normal(0.12, 0.05, data.shape).astype(np.float32).clip(0.01, 1)
        data[head] = noise[head] * data.max()
    elif case != "stripped":
        raise ValueError(f"unknown case {case!r}")
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _timed(stages: dict[str, float], name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def worker(args: argparse.Namespace) -> dict:
    """One run in this process: import the tree's package, segment the scan, time the stages."""
    t0 = time.perf_counter()
    import torch

    from synthseg_lite.inference import InferenceOptions, pipeline

    t_import = time.perf_counter() - t0
    stages: dict[str, float] = {}
    try:  # where one scan is segmented (its own module since the pipeline was split)
        from synthseg_lite.inference import segment as one_scan
    except ImportError:  # an older tree: all in pipeline
        one_scan = None
    for name, stage in (("load_volume", "read"), ("preprocess", "preprocess"),
                        ("smooth_probabilities_", "smooth"),
                        ("refine_with_intensities", "refine"),
                        ("keep_largest_component", "postprocess"), ("qc_scores", "postprocess"),
                        ("to_native", "resample"), ("save_volume", "write"),
                        ("qc_figure", "qc_figure")):
        for module in (pipeline, one_scan):  # wrapped where the pipeline looks it up
            if module is not None and hasattr(module, name):
                setattr(module, name, _timed(stages, stage, getattr(module, name)))
    load = pipeline.load_ensemble

    def load_hooked(*a, **k):
        start = time.perf_counter()
        nets, meta = load(*a, **k)
        stages["model_load"] = time.perf_counter() - start
        for net in nets:
            net.register_forward_pre_hook(lambda *_: stages.__setitem__("_t", time.perf_counter()))
            net.register_forward_hook(
                lambda *_: stages.__setitem__(
                    "network", stages.get("network", 0.0) + time.perf_counter() - stages["_t"]
                )
            )
        return nets, meta

    pipeline.load_ensemble = load_hooked
    try:  # backend=onnx: the network runs inside OnnxNet.__call__, not torch's forward
        from synthseg_lite.inference import onnx_backend

        onnx_backend.OnnxNet.__call__ = _timed(stages, "network", onnx_backend.OnnxNet.__call__)
    except ImportError:  # an older tree
        pass
    pipeline.Predictor.__call__ = _timed(stages, "predictor", pipeline.Predictor.__call__)
    options = {"tta": args.tta, "threads": args.threads, "progress": False, "device": args.device}
    options |= dict(kv.split("=", 1) for kv in args.option)
    for key in ("overlap",):
        if key in options:
            options[key] = float(options[key])
    model = args.model
    if model.startswith("3d-cpu:"):
        model = _random_3d(Path(args.out), float(model.split(":")[1]))
    opts = InferenceOptions(**options)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    (res,) = pipeline.segment_scans(args.scan, Path(args.out) / "seg", model, opts)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if res.error:
        raise SystemExit(res.error)
    stages.pop("_t", None)
    stages["aggregation"] = stages.pop("predictor") - stages.get("network", 0.0)
    model_load = stages.pop("model_load")
    stages["other"] = wall - model_load - sum(stages.values())
    return {
        "tree": str(args.tree),
        "seconds_per_scan": round(res.seconds, 2),
        "wall_s": round(wall - model_load, 2),
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "startup_s": round(t_import + model_load, 2),
        "peak_rss_gb": round(cpu1.ru_maxrss / 2**20, 2),
        "stages_s": {k: round(stages.get(k, 0.0), 2) for k in STAGES},
        "qc_score": round(res.qc["qc_score"], 4),
        "network_dtype": _network_dtype(opts),
        "torch": torch.__version__,
    }


def _network_dtype(opts) -> str:
    """The dtype the network ran in (float32 for a tree without ``precision=``)."""
    try:
        from synthseg_lite.inference.precision import network_dtype
    except ImportError:
        return "float32"
    if getattr(opts, "backend", "torch") != "torch":
        return "float32"
    return str(network_dtype(opts.precision, opts.device.replace("auto", "cpu")))[6:]


def _random_3d(folder: Path, spacing: float) -> Path:
    """A cpu-preset-size 3D U-Net with random weights (speed does not depend on weights)."""
    import torch

    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    unet = UNetConfig(n_stages=5, base_features=16, max_features=256, deep_supervision=False)
    meta = ModelMeta(unet, LabelTable.create("tissue"), spacing, (128,) * 3, {})
    return save_model(folder / "random3d.pt", build_unet(unet, 4), meta)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["structures"], help="model= values")
    p.add_argument("--cases", nargs="+", default=["stripped"], help="stripped, skull, phantom")
    p.add_argument("--scan", type=Path, default=None, help="segment this scan instead of --cases")
    p.add_argument("--trees", nargs="+", default=[str(ROOT)], help="code trees, compared in turn")
    p.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnx"],
                   help="network backends, compared in turn (with every tree)")
    p.add_argument("--precisions", nargs="+", default=None,
                   choices=["auto", "float32", "bfloat16", "float16"],
                   help="precision= values, compared in turn (default: the tree's own default)")
    p.add_argument("--tta", default="flip", choices=["none", "flip", "mirror"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="runs per tree and setting")
    p.add_argument("--option", nargs="*", default=[], help="more options, key=value (strings)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--model", default="structures", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = {"scan": args.scan} if args.scan else {c: make_scan(c, tmp) for c in args.cases}
        for case, scan in scans.items():
            for model in args.models:
                precisions = args.precisions or [None]
                variants = [
                    (t, b, q) for t in args.trees for b in args.backends for q in precisions
                ]
                name = {
                    v: " ".join([v[0]] + [f"{k}={x}" for k, x, n in (
                        ("backend", v[1], len(args.backends)), ("precision", v[2], len(precisions))
                    ) if n > 1])
                    for v in variants
                }
                runs: dict[str, list[dict]] = {name[v]: [] for v in variants}
                load = [os.getloadavg()[0]]
                for r in range(args.repeats):
                    for i, (tree, backend, precision) in enumerate(variants):
                        out = tmp / f"out_{case}_{model.replace(':', '_')}_{i}_{r}"
                        cmd = [
                            sys.executable, __file__, "--worker", "--tree", tree, "--model", model,
                            "--scan", str(scan), "--out", str(out), "--tta", args.tta,
                            "--threads", str(args.threads), "--device", args.device,
                            "--option", *args.option,
                            *([f"backend={backend}"] if backend != "torch" else []),
                            *([f"precision={precision}"] if precision else []),
                        ]
                        env = os.environ | {"OMP_NUM_THREADS": str(args.threads),  # the tree's package first
                                           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(tree).resolve()), os.environ.get("PYTHONPATH")]))}
                        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                        if done.returncode:
                            raise SystemExit(f"{tree}: {done.stderr.strip()[-2000:]}")
                        runs[name[(tree, backend, precision)]].append(
                            json.loads(done.stdout.strip().splitlines()[-1])
                        )
                        load.append(os.getloadavg()[0])
                best = {t: min(rs, key=lambda d: d["wall_s"]) for t, rs in runs.items()}
                first = best[name[variants[0]]]
                print(
                    json.dumps(
                        {
                            "benchmark": "inference",
                            "case": case,
                            "scan": str(args.scan or case),
                            "model": model,
                            "tta": args.tta,
                            "threads": args.threads,
                            "device": args.device,
                            "options": args.option,
                            "loadavg_1m": [round(v, 2) for v in load],
                            "runs": runs,
                            "ratio_first_over": {
                                t: {
                                    k: round(first[k] / max(b[k], 1e-9), 2)
                                    for k in ("wall_s", "cpu_s", "peak_rss_gb", "startup_s")
                                }
                                for t, b in best.items()
                            },
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
