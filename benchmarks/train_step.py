"""Seconds per training step and peak memory of the training presets.

    python benchmarks/train_step.py                                   # presets cpu and default, CPU
    python benchmarks/train_step.py --presets cpu --steps 20
    python benchmarks/train_step.py --presets default --steps 2 --warmup 1 \\
        --override gpu_memory_gb=null synth.patch_shape=[128,128,128] data.batch_size=2
    python benchmarks/train_step.py --presets default --device cuda   # planned for 12 GB

Prints one JSON line per preset. Each preset runs in its own subprocess (``--worker``) so its peak
resident memory is its own. A step is timed from the end of one training batch to the end of the
next (label-map batch, synthesis on the device, forward, backward, optimiser step); the first
``--warmup`` steps are not counted. Keys: preset, device, patch_size, voxel_mm, batch_size, unet,
params_m, steps, s_per_step (median wall time), s_per_step_min/max, cpu_s_per_step (median process
CPU time: about threads x the wall time of an otherwise idle machine), synth_s_per_step (median
wall time in the generator), peak_rss_mb (whole process), rss_after_setup_mb, cuda_peak_mb
(CUDA only), threads, load1 (1-minute load average at the start: other work on the machine slows
CPU timings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {"cpu": ["experiment=cpu"], "default": [], "smoke": ["experiment=smoke"]}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(preset: str, steps: int, warmup: int, device: str, overrides: list[str]) -> dict:
    import lightning.pytorch as pl
    import torch
    from hydra import compose, initialize_config_dir

    from synthseg_lite.commands import train as train_script

    out = tempfile.mkdtemp(prefix="ssl_bench_")
    trainer_group = "trainer=cpu" if device == "cpu" else "trainer=default"
    ov = [
        *PRESETS[preset],
        trainer_group,
        f"paths.output_dir={out}",
        "logger=none",
        "callbacks=none",
        f"trainer.max_steps={steps + warmup}",
        "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=ov)
    dm, module, trainer = train_script.build(cfg)
    synth_times: list[float] = []
    inner = module.synthesize

    def timed_synth(*a, **k):
        t = time.perf_counter()
        res = inner(*a, **k)
        if res["image"].is_cuda:
            torch.cuda.synchronize()
        synth_times.append(time.perf_counter() - t)
        return res

    module.synthesize = timed_synth
    ends: list[float] = []
    cpu_ends: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    trainer.callbacks.append(Timer())
    dm.setup("fit")
    rss_setup = _rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm)
    marks, cpu_marks = [start, *ends], [cpu_start, *cpu_ends]
    dts = [b - a for a, b in pairwise(marks)][warmup:]
    cpu_dts = [b - a for a, b in pairwise(cpu_marks)][warmup:]
    return {
        "preset": preset,
        "device": device,
        "patch_size": list(cfg.synth.patch_shape),
        "voxel_mm": float(cfg.synth.voxel_mm),
        "batch_size": int(cfg.data.batch_size),
        "unet": dict(cfg.model.unet),
        "params_m": round(sum(p.numel() for p in module.net.parameters()) / 1e6, 3),
        "steps": len(dts),
        "s_per_step": round(statistics.median(dts), 3),
        "s_per_step_min": round(min(dts), 3),
        "s_per_step_max": round(max(dts), 3),
        "cpu_s_per_step": round(statistics.median(cpu_dts), 3),
        "synth_s_per_step": round(statistics.median(synth_times[warmup:] or synth_times), 3),
        "peak_rss_mb": round(_rss_mb()),
        "rss_after_setup_mb": round(rss_setup),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20)
        if torch.cuda.is_available()
        else None,
        "threads": torch.get_num_threads(),
        "load1": round(os.getloadavg()[0], 2),
        "overrides": overrides,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", default="cpu,default", help="comma-separated: cpu, default, smoke")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--override", nargs="*", default=[], help="extra Hydra overrides for every preset"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(
            json.dumps(worker(args.worker, args.steps, args.warmup, args.device, args.override)),
            flush=True,
        )
        return
    for preset in args.presets.split(","):
        if preset not in PRESETS:
            p.error(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            preset,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
            "--override",
            *args.override,
        ]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode or not lines:
            print(
                json.dumps({"preset": preset, "error": res.stderr.strip().splitlines()[-1:]}),
                flush=True,
            )
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
