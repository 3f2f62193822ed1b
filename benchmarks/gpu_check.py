"""Prove (or disprove) the GPU path in one command: generator throughput, the default job's memory
and speed with mixed precision, 3D inference, and CPU/CUDA agreement.

    python -m benchmarks.gpu_check --device cuda --output benchmarks/results/gpu_$(date +%F).json
    python -m benchmarks.gpu_check --device cpu --tiny            # the same parts, small (seconds)
    python -m benchmarks.gpu_check --device cuda --parts train --budgets 12 --steps 40

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
   allowance (``synthseg_lite/training/memory.py``).

``--tiny`` runs the same parts with a 3-stage 4-16 feature U-Net, 64^3 phantoms at 2 mm, budgets
/400, a 64^3 scan (used by the test suite). On a CPU the memory figures are the process's peak
resident set (``peak_rss_gb``, the whole process, not only training), labelled as such; fp16 is
CUDA-only, so CPU runs use ``32-true`` and ``bf16-mixed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.gpu_memory import part_memory  # part 5: fake-tensor peak against the real one
from benchmarks.gpu_steps import (  # noqa: F401  (the parts' shared settings and steps)
    BUDGETS_GB,
    PARTS,
    Settings,
    TINY_BUDGET_SCALE,
    TINY_OVERRIDES,
    _compose,
    _conf_dir,
    _memory,
    _phantoms_made_once,
    _reset_peak,
    _sync,
    job_overrides,
    settings_from_args,
    train_steps,
)

log = logging.getLogger("gpu_check")

# ----------------------------------------------------------------------------------- parts


def part_generator(s: Settings) -> dict[str, Any]:
    """Generator samples/s per output size and batch; share of a default-job training step."""
    import torch

    from synthseg_lite.commands import train
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

    from synthseg_lite.data.phantom import make_phantom

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
    from synthseg_lite.training.planning import plan_patch_and_batch
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

    from synthseg_lite.commands import train
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


def _outside_allocator_gb(s: Settings) -> float | None:
    """GiB the device has in use beyond PyTorch's allocator (the CUDA context, its loaded
    kernels, other processes): device memory in use minus ``memory_reserved``; None off CUDA."""
    import torch

    if not (s.is_cuda and torch.cuda.is_available()):
        return None
    device = torch.device(s.device)
    free, total = torch.cuda.mem_get_info(device)
    return round((total - free - torch.cuda.memory_reserved(device)) / 2**30, 3)


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
    outside = _outside_allocator_gb(s)
    if outside is not None:  # the CUDA context and loaded kernels: the allowance's first term
        rec["outside_allocator_gb"] = outside
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
    from synthseg_lite.commands.common import user_errors

    user_errors(main)
