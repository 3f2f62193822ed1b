"""Prove (or disprove) the GPU path in one command: generator throughput, the default job's memory
and speed with mixed precision, 3D inference, and CPU/CUDA agreement.

    python benchmarks/gpu_check.py --device cuda --output benchmarks/results/gpu_$(date +%F).json
    python benchmarks/gpu_check.py --device cpu --tiny            # the same parts, small (seconds)
    python benchmarks/gpu_check.py --device cuda --parts train --budgets 12 --steps 40

Parts, in this order; each writes one JSON line (stdout, and appended to ``--output``), and a part
that fails writes its line with ``error`` and the next part runs:

1. ``generator``: ``SynthGenerator`` samples/s at 160^3 and at the default job's planned patch,
   batch 1/2/4/8, and its share of a training step of the default job (12 GB plan, fp16: a few real
   steps with the generator timed inside them).
2. ``train``: the default job exactly as ``train.py`` builds it (``train.build``: planner, data,
   ``SynthSegModule``, Lightning trainer, the first-step out-of-memory fallback) for each
   ``--budgets`` value and precision (CUDA: ``16-mixed``, ``bf16-mixed``): ``--steps`` real training
   steps, s/step, ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` at the first step
   and over the run against the planner's estimate. On CUDA the process is capped at the budget
   (``torch.cuda.set_per_process_memory_fraction``), so a 12 GB plan is tried as on a 12 GB card
   and a plan that does not fit goes through the fallback (``plans_out_of_memory``).
3. ``inference``: ``segment_scans`` (``infer.py``'s pipeline) on a 256^3 1 mm head (a phantom
   painted with random intensities) with the default 3D network (random weights) at its planned
   patch, Gaussian sliding window and flip TTA, end to end (read, predict, write).
4. ``correctness``: for a few steps, parameters drawn from one seed on the CPU, synthesis on the
   device and on the CPU give the same batch up to float tolerance (the training stream itself is
   seeded per device: ``torch.Generator`` streams differ between CPU and CUDA by design); and the
   default job's loss decreases over ``--loss-steps`` steps on the device.

5. ``memory`` (``benchmarks/gpu_memory.py``): a tiny step's peak counted on fake tensors beside the
   same step run for real (CPU: ``torch.profiler``, within 10 %; CUDA: ``max_memory_allocated`` /
   ``reserved``). Part ``train`` records, per budget, the planner's fake-counted peak
   (``fake_peak_gb``) beside the real first-step and run peaks: one CUDA run calibrates the
   allowance (``synthseg_lite/model/memory.py``).

``--tiny`` runs the same parts with a 3-stage 4-16 feature U-Net, 64^3 phantoms at 2 mm, budgets
/400, a 64^3 scan (used by the test suite). On a CPU the memory figures are the process's peak
resident set (``peak_rss_gb``, the whole process, not only training), labelled as such; fp16 is
CUDA-only, so CPU runs use ``32-true`` and ``bf16-mixed``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_memory import part_memory  # noqa: E402  (part 5: fake-tensor peak against the real one)

log = logging.getLogger("gpu_check")

PARTS = ("generator", "train", "inference", "correctness", "memory")
BUDGETS_GB = (12.0, 8.0, 24.0)
TINY_BUDGET_SCALE = 1 / 400
# the tiny job: 3-stage U-Net (4-16 features), 64^3 phantoms at 2 mm, patch at most 32^3
TINY_OVERRIDES = [
    "model.unet.n_stages=3",
    "model.unet.base_features=4",
    "model.unet.max_features=16",
    "model.unet.deep_supr_num=1",
    "synth.voxel_mm=2.0",
    "synth.patch_shape=[32,32,32]",
    "data.phantoms.n=5",
    "data.phantoms.shape=[64,64,64]",
]


@dataclass
class Settings:
    """What one check runs (``--tiny`` shrinks every size).

    Attributes:
        device: ``cuda``, ``cuda:1`` or ``cpu``.
        tiny: small sizes (seconds on a CPU).
        budgets: ``gpu_memory_gb`` values of part ``train`` (GiB).
        precisions: Lightning precisions of part ``train``.
        steps, warmup: timed and untimed training steps per run.
        loss_steps: training steps of the loss check (part ``correctness``).
        cap_memory: cap the CUDA process at each budget in part ``train``.
        gen_batches: generator batch sizes; gen_sizes: extra cubic generator outputs (voxels).
        gen_iters: timed generator calls per setting.
        scan_size: side of the inference scan (voxels, 1 mm).
        inference_runs: end-to-end inference runs (the first includes warm-up).
        seed: seed of everything.
    """

    device: str = "cuda"
    tiny: bool = False
    budgets: tuple[float, ...] = BUDGETS_GB
    precisions: tuple[str, ...] = ("16-mixed", "bf16-mixed")
    steps: int = 24
    warmup: int = 3
    loss_steps: int = 40
    cap_memory: bool = True
    gen_batches: tuple[int, ...] = (1, 2, 4, 8)
    gen_sizes: tuple[int, ...] = (160,)
    gen_iters: int = 5
    scan_size: int = 256
    inference_runs: int = 2
    seed: int = 0
    overrides: list[str] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def settings_from_args(args: argparse.Namespace) -> Settings:
    s = Settings(device=args.device, tiny=args.tiny, cap_memory=not args.no_cap, seed=args.seed)
    if not s.is_cuda:
        s.precisions = ("32-true", "bf16-mixed")  # fp16 mixed precision is CUDA-only
    if s.tiny:
        s = replace(
            s,
            budgets=tuple(b * TINY_BUDGET_SCALE for b in s.budgets),
            steps=3,
            warmup=1,
            loss_steps=16,
            gen_sizes=(48,),
            gen_iters=2,
            scan_size=64,
            inference_runs=1,
            overrides=list(TINY_OVERRIDES),
        )
    if args.budgets:
        s.budgets = tuple(args.budgets)
    if args.precisions:
        s.precisions = tuple(args.precisions)
    for key in ("steps", "warmup", "loss_steps"):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    return s


# --------------------------------------------------------------------------------- helpers


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device) -> dict[str, float]:
    """Peak memory since the last reset, GiB, keys labelled by kind (``peak_allocated_gb``...)."""
    from synthseg_lite.training import peak_memory_gb

    return {f"peak_{k}_gb": round(v, 3) for k, v in peak_memory_gb(device).items()}


def _reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@functools.cache
def _conf_dir() -> str:
    import synthseg_lite

    return str(Path(synthseg_lite.__file__).parent / "conf")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import train  # noqa: F401  (registers the config schemas)

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


@contextlib.contextmanager
def _phantoms_made_once():
    """Within the block, each phantom set is made once (every ``train.build`` would make it again);
    the package's function is restored afterwards (its callers import it when they run)."""
    import synthseg_lite.phantom as phantom

    inner, made = phantom.make_phantom_label_maps, {}

    def cached(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in made:
            made[key] = inner(*args, **kwargs)
        return made[key]

    phantom.make_phantom_label_maps = cached
    try:
        yield
    finally:
        phantom.make_phantom_label_maps = inner


def job_overrides(
    s: Settings, out_dir: Path, gpu_memory_gb: float | None, precision: str, steps: int
) -> list[str]:
    """Hydra overrides of the default job (``python train.py``) for a short measured run."""
    index = s.device.partition(":")[2]
    devices = f"[{int(index)}]" if index else "1"  # cuda:N trains on GPU N
    trainer = ["trainer=default", f"trainer.devices={devices}"] if s.is_cuda else ["trainer=cpu"]
    return [
        *trainer,
        *s.overrides,
        f"paths.output_dir={out_dir}",
        f"seed={s.seed}",
        "gpu_memory_gb=null" if gpu_memory_gb is None else f"gpu_memory_gb={gpu_memory_gb}",
        f"trainer.precision={precision}",
        f"trainer.max_steps={steps}",
        "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        "++trainer.enable_checkpointing=false",
        "model.image_every_n_steps=0",
        "logger=none",
        "callbacks=none",
    ]


def train_steps(
    s: Settings,
    gpu_memory_gb: float | None,
    precision: str,
    steps: int,
    warmup: int,
    cap_gb: float | None = None,
) -> dict[str, Any]:
    """Train the default job for ``warmup + steps`` steps as ``train.py`` does (``train.build``,
    first-step out-of-memory fallback) and measure it.

    Returns:
        plan (patch, batch, estimate, plans that ran out of memory), s/step (median of the timed
        steps), generator s/step and its share, losses, first-step and run peak memory (GiB).
    """
    import lightning.pytorch as pl
    import torch

    import train
    from synthseg_lite.training import PlanGuard, fit_with_oom_fallback

    device = torch.device(s.device)
    ends: list[float] = []
    losses: list[float] = []
    synth_s: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            ends.append(time.perf_counter())
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))

    def attach(parts):
        dm, module, trainer = parts
        inner = module.synthesize

        def timed(*a, **k):
            t = time.perf_counter()
            res = inner(*a, **k)
            _sync(device)
            synth_s.append(time.perf_counter() - t)
            return res

        module.synthesize = timed
        trainer.callbacks.append(Timer())
        for series in (ends, losses, synth_s):  # a fallback starts the measurement again
            series.clear()
        ends.append(time.perf_counter())
        return parts

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = _compose(job_overrides(s, Path(tmp), gpu_memory_gb, precision, warmup + steps))
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            frac = 1.0 if cap_gb is None else min(1.0, cap_gb * 2**30 / total)
            torch.cuda.set_per_process_memory_fraction(frac, device)
        _reset_peak(device)
        try:
            parts = attach(train.build(cfg))

            def rebuild(plan):  # as train.py's run(): the stored config gets the new plan
                cfg.synth.patch_shape, cfg.data.batch_size = list(plan.patch_size), plan.batch_size
                return attach(train.build(cfg))

            dm, module, trainer = fit_with_oom_fallback(
                parts, lambda dm, m, t: t.fit(m, datamodule=dm), rebuild
            )
        finally:
            if device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, device)
        guard = next(c for c in trainer.callbacks if isinstance(c, PlanGuard))
        run_peak = _memory(device)
        plan = guard.to_dict()
    dts = [b - a for a, b in zip(ends, ends[1:])]
    timed_dts, timed_synth = dts[warmup:] or dts, synth_s[warmup:] or synth_s
    step_s = statistics.median(timed_dts)
    synth = statistics.median(timed_synth) if timed_synth else math.nan
    est = plan["estimated_gb"]
    first = {f"first_step_peak_{k}_gb": v for k, v in (plan["measured_peak_gb"] or {}).items()}
    fake = plan.get("fake_measured") or {}  # the planner's fake-tensor count of this plan
    return {
        "gpu_memory_gb": gpu_memory_gb,
        "precision": str(trainer.precision),
        "patch_size": plan["patch_size"],
        "batch_size": plan["batch_size"],
        "estimated_gb": est,
        "plans_out_of_memory": plan["out_of_memory_before"],
        "steps": len(timed_dts),
        "s_per_step": round(step_s, 4),
        "s_per_step_min": round(min(timed_dts), 4),
        "synth_s_per_step": round(synth, 4),
        "synth_share_of_step": round(synth / step_s, 3) if step_s > 0 else None,
        **first,
        **run_peak,
        "fake_peak_gb": fake.get("measured_peak_gb"),
        "fake_peak_by_kind_gb": fake.get("peak_by_kind_gb"),
        "fake_allowance_gb": fake.get("allowance_gb"),
        "plan_method": fake.get("method"),
        # on a CPU the peak is the whole process's (Python, torch, maps): no ratio to the estimate
        "peak_over_estimate": (
            round(run_peak["peak_allocated_gb"] / est, 3) if est and device.type == "cuda" else None
        ),
        "losses_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "losses": [round(v, 4) for v in losses],
        "params_m": round(sum(p.numel() for p in module.net.parameters()) / 1e6, 3),
    }


# ----------------------------------------------------------------------------------- parts


def part_generator(s: Settings) -> dict[str, Any]:
    """Generator samples/s per output size and batch; share of a default-job training step."""
    import torch

    import train
    from synthseg_lite.synth import SynthGenerator, make_generator

    device = torch.device(s.device)
    step = train_steps(s, s.budgets[0], s.precisions[0], steps=2 if s.tiny else 4, warmup=1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = _compose(job_overrides(s, Path(tmp), s.budgets[0], s.precisions[0], 1))
        dm, module, _ = train.build(cfg)  # the default job's planned patch, label maps, table
        _, maps = dm.load_maps()
    results = []
    for shape in [[n] * 3 for n in s.gen_sizes] + [list(step["patch_size"])]:
        gen = SynthGenerator(replace(module.synth_cfg, patch_shape=shape), module.table).to(device)
        for b in s.gen_batches:
            labels = torch.from_numpy(maps[[i % len(maps) for i in range(b)]])[:, None].to(device)
            for i in range(2):  # warm-up
                gen(labels, make_generator(device, s.seed, i))
            _sync(device)
            _reset_peak(device)
            t = time.perf_counter()
            for i in range(s.gen_iters):
                out = gen(labels, make_generator(device, s.seed + 1, i))
            _sync(device)
            sec = (time.perf_counter() - t) / s.gen_iters
            assert out.image.shape == (b, 1, *shape)
            results.append(
                {
                    "patch": shape,
                    "batch_size": b,
                    "samples_per_s": round(b / sec, 3),
                    "s_per_batch": round(sec, 4),
                    **_memory(device),
                }
            )
            del labels, out
    return {
        "label_maps_shape": list(maps.shape),
        "voxel_mm": float(module.synth_cfg.voxel_mm),
        "results": results,
        "default_job": {
            k: step[k]
            for k in (
                "gpu_memory_gb",
                "precision",
                "patch_size",
                "batch_size",
                "s_per_step",
                "synth_s_per_step",
                "synth_share_of_step",
            )
        },
    }


def part_train(s: Settings) -> dict[str, Any]:
    """The default job per budget and precision: s/step and peak memory against the estimate."""
    runs = []
    for gb in s.budgets:
        for precision in s.precisions:
            try:
                cap = gb if s.cap_memory and s.is_cuda else None
                run = train_steps(s, gb, precision, s.steps, s.warmup, cap_gb=cap)
                run.pop("losses")
                runs.append({"memory_cap_gb": cap, **run})
            except Exception as exc:  # one failed run does not stop the others
                runs.append({"gpu_memory_gb": gb, "precision": precision, "error": _error(exc)})
            log.info("train: %s", json.dumps(runs[-1]))
    return {"runs": runs}


def _write_head(path: Path, size: int, seed: int) -> Path:
    """A size^3 1 mm head (LIA on disk, like FreeSurfer's conformed space) painted from a phantom
    label map with random intensities (as ``benchmarks/inference.py``)."""
    import nibabel as nib
    import numpy as np

    from synthseg_lite.phantom import make_phantom

    labels = make_phantom((size, size, size), seed=seed)
    rng = np.random.default_rng(seed)
    lut = rng.uniform(20, 200, labels.max() + 1).astype(np.float32)
    lut[0] = 0
    image = lut[labels] + rng.normal(0, 4, labels.shape).astype(np.float32) * (labels > 0)
    affine = np.eye(4)
    affine[:3, 3] = -size / 2
    to_lia = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LIA")
    )
    nib.save(nib.Nifti1Image(image, affine).as_reoriented(to_lia), str(path))
    return path


def part_inference(s: Settings) -> dict[str, Any]:
    """``segment_scans`` end to end on a 1 mm head: default 3D network, sliding window, flip TTA."""
    import torch
    from omegaconf import OmegaConf

    from synthseg_lite.inference import InferenceOptions, segment_scans
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.planning import plan_patch_and_batch
    from synthseg_lite.model.unet import UNetConfig, build_unet

    device = torch.device(s.device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        cfg = _compose(job_overrides(s, tmp, s.budgets[0], s.precisions[0], 1))
        unet = UNetConfig(**OmegaConf.to_container(cfg.model.unet))
        table = LabelTable.create("tissue")
        maps_shape = [int(v) for v in cfg.data.phantoms.shape]
        plan = plan_patch_and_batch(  # the patch train.py plans for the first budget: the window
            s.budgets[0],
            unet,
            table.target.n_classes,
            list(cfg.synth.patch_shape),
            maps_shape,
            float(cfg.synth.voxel_mm),
        )
        torch.manual_seed(s.seed)
        unet = replace(unet, deep_supervision=False)  # inference uses the full-resolution head
        net = build_unet(unet, table.target.n_classes)
        meta = ModelMeta(unet, table, float(cfg.synth.voxel_mm), plan.patch_size, {})
        model = save_model(tmp / "model" / "fold_0.pt", net, meta)
        scan = _write_head(tmp / "head.nii.gz", s.scan_size, s.seed)
        opts = InferenceOptions(device=s.device, tta="flip")
        if hasattr(opts, "progress"):
            opts.progress = False
        runs = []
        for r in range(s.inference_runs):
            _reset_peak(device)
            (res,) = segment_scans(scan, tmp / f"out{r}", model, opts)
            if res.error:
                raise RuntimeError(res.error)
            runs.append({"seconds": round(res.seconds, 2), **_memory(device)})
        seg = next(p for p in (tmp / "out0").rglob("*") if "_seg" in p.name)
        import nibabel as nib

        seg_shape = list(nib.load(str(seg)).shape)
    return {
        "scan": f"phantom head {s.scan_size}^3 1 mm (LIA)",
        "unet": unet.to_dict(),
        "spacing_mm": float(cfg.synth.voxel_mm),
        "window": list(plan.patch_size),
        "tta": opts.tta,
        "overlap": opts.overlap,
        "seg_shape": seg_shape,
        "runs": runs,
        "seconds_per_scan": runs[-1]["seconds"],
    }


def _params_to(p, device):
    """SynthParams with every tensor moved to ``device``."""
    return replace(p, **{f.name: getattr(p, f.name).to(device) for f in fields(p)})


def part_correctness(s: Settings) -> dict[str, Any]:
    """Same seed, same parameters: device and CPU synthesis agree; the loss decreases on device."""
    import torch

    import train
    from synthseg_lite.synth import SynthGenerator, make_generator

    device = torch.device(s.device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = _compose(job_overrides(s, Path(tmp), s.budgets[0], "32-true", 1))
        dm, module, _ = train.build(cfg)
        _, maps = dm.load_maps()
    cpu_gen = SynthGenerator(module.synth_cfg, module.table)
    dev_gen = SynthGenerator(module.synth_cfg, module.table).to(device)
    b = int(cfg.data.batch_size)
    checks = []
    for step in range(3):
        idx = [(step * b + i) % len(maps) for i in range(b)]
        labels = torch.from_numpy(maps[idx])[:, None]
        params = cpu_gen.sample(labels, make_generator("cpu", s.seed, step))
        with torch.no_grad():
            ref = cpu_gen.apply(labels, params)
            got = dev_gen.apply(labels.to(device), _params_to(params, device))
        diff = (got.image.float().cpu() - ref.image).abs()
        same_target = (got.target.cpu() == ref.target).float().mean().item()
        checks.append(
            {
                "step": step,
                "image_max_abs_diff": round(float(diff.max()), 6),
                "image_mean_abs_diff": round(float(diff.mean()), 8),
                "image_voxels_off_by_1e-3": round(float((diff > 1e-3).float().mean()), 6),
                "target_agreement": round(same_target, 6),
            }
        )
    same = all(c["target_agreement"] >= 0.999 and c["image_mean_abs_diff"] < 1e-3 for c in checks)
    losses = train_steps(s, s.budgets[0], s.precisions[0], s.loss_steps, 0)["losses"]
    q = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:q]), statistics.mean(losses[-q:])
    return {
        "patch": list(module.synth_cfg.patch_shape),
        "batch_size": b,
        "synthesis": checks,
        "same_batch": same,
        "tolerance": "target agreement >= 0.999, mean |image difference| < 1e-3",
        "loss_steps": len(losses),
        "loss_first_quarter": round(first, 4),
        "loss_last_quarter": round(last, 4),
        "loss_decreases": last < first,
        "losses": [round(v, 4) for v in losses],
        "ok": same and last < first,
    }


PART_FUNCTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "generator": part_generator,
    "train": part_train,
    "inference": part_inference,
    "correctness": part_correctness,
    "memory": part_memory,
}


def _error(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:500]


def _environment(s: Settings) -> dict[str, Any]:
    import torch

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if s.is_cuda and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(s.device))
        env |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
    return env


def run_parts(
    s: Settings, parts: list[str], output: Path | None, emit: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run ``parts`` in order; one JSON line each (also appended to ``output``); a failing part
    records its error and the next one runs."""
    lines = []
    env = _environment(s)
    with _phantoms_made_once():
        for name in parts:
            lines.append(_run_part(s, name, env, output, emit))
    return lines


def _run_part(
    s: Settings,
    name: str,
    env: dict[str, Any],
    output: Path | None,
    emit: Callable[[str], None],
) -> dict[str, Any]:
    """One part: its JSON line (emitted, appended to ``output``) or its error."""
    start = time.perf_counter()
    rec: dict[str, Any] = {"part": name, "device": s.device, "tiny": s.tiny}
    rec["memory"] = (
        "peak_*_gb: torch.cuda.max_memory_allocated/reserved since the measurement started"
        if s.is_cuda
        else "peak_rss_gb: peak resident set of the whole process (VmHWM, never reset), not of "
        "training alone; no peak/estimate ratio on a CPU"
    )
    try:
        rec |= PART_FUNCTIONS[name](s)
    except Exception as exc:  # the next part still runs
        log.exception("part %s failed", name)
        rec["error"] = _error(exc)
    rec |= {"seconds": round(time.perf_counter() - start, 1), "environment": env}
    line = json.dumps(rec)
    emit(line)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a") as f:  # appended: earlier results are kept
            f.write(line + "\n")
    return rec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--tiny", action="store_true", help="small sizes (seconds; used by the tests)")
    p.add_argument("--output", type=Path, help="append the JSON lines to this file")
    p.add_argument("--parts", nargs="+", default=list(PARTS), help=f"subset of {list(PARTS)}")
    p.add_argument("--budgets", type=float, nargs="+", help="gpu_memory_gb values (GiB)")
    p.add_argument("--precisions", nargs="+", help="Lightning precisions of part train")
    p.add_argument("--steps", type=int, help="timed training steps per run (default 24)")
    p.add_argument("--warmup", type=int, help="untimed first training steps (default 3)")
    p.add_argument("--loss-steps", type=int, help="steps of the loss check (default 40)")
    p.add_argument("--no-cap", action="store_true", help="do not cap CUDA memory at the budget")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    s = settings_from_args(args)
    import torch

    if s.is_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU here; use --device cpu --tiny to check the script")
    for key in ("steps", "loss_steps"):
        if getattr(s, key) < 2:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 2, got {getattr(s, key)}")
    return run_parts(s, args.parts, args.output)


if __name__ == "__main__":
    from synthseg_lite.cli import user_errors

    user_errors(main)
