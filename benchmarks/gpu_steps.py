"""What ``gpu_check``'s parts share: the settings of a check (:class:`Settings`), device memory
and timing helpers, the default job's composed config and its real training steps (:func:`train_steps`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

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
        # CUDA: the planner adds the context and workspace allowance (0.75 GiB) to any plan, so
        # the tiny budgets get it on top; on a CPU there is none
        from synthseg_lite.training.memory import allowance_gb

        a = allowance_gb(0.0, "cuda" if s.is_cuda else "cpu")
        tiny_fixed_gb = a["cuda_context_gb"] + a["workspace_gb"]
        s = replace(
            s,
            budgets=tuple(b * TINY_BUDGET_SCALE + tiny_fixed_gb for b in s.budgets),
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

    import synthseg_lite.commands.train  # noqa: F401  (the train command's config schemas)

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


@contextlib.contextmanager
def _phantoms_made_once():
    """Within the block, each phantom set is made once (every ``train.build`` would make it again);
    the package's function is restored afterwards (its callers import it when they run)."""
    import synthseg_lite.data.phantom as phantom

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

    from synthseg_lite.commands import train
    from synthseg_lite.training import PlanGuard, fit_with_oom_fallback

    device = torch.device(s.device)
    if device.type == "cuda" and device.index is None:  # set_per_process_memory_fraction needs it
        device = torch.device("cuda", torch.cuda.current_device())
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
