"""The fake-tensor count against a real step: is :func:`~synthseg_lite.training.memory.measure_step`
right?

:func:`compare_step` runs the same training steps (:func:`~synthseg_lite.training.memory.run_steps`:
the same parts, seed and order) once on fake tensors and once for real on ``device``, and puts the
two peaks side by side. The real peak on a CPU is the sum of the allocations ``torch.profiler``
records (``profile_memory=True``: every allocation and free of PyTorch's CPU allocator, in time
order) on top of what was already allocated (parameters, label maps); on CUDA it is
``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``: the allocator's rounding and
fragmentation, which the allowance covers). ``benchmarks/gpu_check.py`` (part ``memory``) and the
tests use it.

The real CPU step runs on one thread: CPU convolution kernels allocate scratch buffers inside
the kernel, per thread, that no operation returns, so fake tensors cannot see them (the CPU
counterpart of cuDNN's workspace). Measured on the tiny step (32^3, batch 2): 1 thread, fake/real
0.91 (float32) and 0.99 (bf16); 2 threads, 0.75 and 0.86.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from synthseg_lite.runtime import set_threads
from synthseg_lite.training.memory import StepJob, build_step, measure_step, run_steps

__all__ = ["compare_step", "profiled_peak_bytes"]


def profiled_peak_bytes(fn: Any) -> tuple[int, Any]:
    """Run ``fn()`` under ``torch.profiler`` (CPU, ``profile_memory``): (peak of the running sum of
    the allocations it records, in bytes, above the start; ``fn``'s result)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak, result


def compare_step(
    job: StepJob,
    patch: Sequence[int],
    maps: torch.Tensor,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Peak of the same ``steps`` training steps, counted on fake tensors and measured for real.

    Args:
        job: the step (its ``device`` chooses the CUDA-like loss cast; the real run is on
            ``device``).
        patch: patch (voxels). maps: (B, 1, X, Y, Z) uint8 label maps (real, on the CPU).
        device: where the real step runs (``cpu`` or ``cuda``).

    Returns:
        fake and real peaks (MiB), their ratio, and the losses of the real steps.
    """
    b = int(maps.shape[0])
    job = replace(job, map_shape=tuple(int(s) for s in maps.shape[2:]))
    fake = measure_step(job, patch, b, steps, seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    gen, net, loss_fn, _, _ = build_step(job, patch, b)
    maps = maps.to(dev)
    parts = (gen.to(dev), net.to(dev), loss_fn.to(dev), job.optimizer(params=net.parameters()), maps)
    base = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers(), maps])
    rec: dict[str, Any] = {"patch_size": list(patch), "batch_size": b, "precision": job.precision}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        losses = run_steps(job, parts, steps, seed)
        torch.cuda.synchronize(dev)
        real = torch.cuda.max_memory_allocated(dev)
        rec["real_reserved_mib"] = round(torch.cuda.max_memory_reserved(dev) / 2**20, 3)
        rec["real"] = "torch.cuda.max_memory_allocated"
    else:  # one thread: CPU kernels keep per-thread scratch buffers no op returns (see above)
        threads = set_threads(1)
        try:
            delta, losses = profiled_peak_bytes(lambda: run_steps(job, parts, steps, seed))
        finally:
            set_threads(threads)
        real = base + delta
        rec["real"] = (
            "torch.profiler allocations (profile_memory, 1 thread) + parameters and label maps"
        )
    fake_mib = fake.peak_gb * 1024
    return {
        **rec,
        "fake_mib": round(fake_mib, 3),
        "real_mib": round(real / 2**20, 3),
        "fake_over_real": round(fake_mib / (real / 2**20), 4),
        "fake_by_kind_mib": {k: round(v * 1024, 3) for k, v in fake.by_kind.items()},
        "losses": [round(v, 4) for v in losses],
    }
