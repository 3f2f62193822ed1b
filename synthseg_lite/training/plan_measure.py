"""Patch and batch for a GPU memory budget, from the measured peak of a fake training step.

The formula (:mod:`synthseg_lite.training.planning`) gives the first guess; each candidate plan is then
measured (:func:`~synthseg_lite.training.memory.measure_step`: one full training step on fake tensors,
plus :func:`~synthseg_lite.training.memory.allowance_gb`) and the largest patch, then the largest
batch, whose measured peak plus allowance fits the budget is kept.

The candidate patches are the formula's own shrinking sequence (from ``synth.patch_shape``, clipped
to the label maps, the axis largest relative to the data loses one network divisor at a time): it
does not depend on the budget, and the measured peak falls along it (fewer voxels each step), so
the patch chosen never shrinks as the budget grows. When a step cannot run on fake tensors, the
plan is the formula's and the record says which operation failed, and where.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from synthseg_lite.training.memory import (
    FakeUnsupported,
    StepJob,
    StepMeasurement,
    allowance_gb,
    measure_generator,
    measure_step,
)
from synthseg_lite.training.planning import Plan, estimate_memory_gb, plan_patch_and_batch

__all__ = ["candidate_patches", "plan_measured"]

log = logging.getLogger(__name__)

#: smallest batch the planner gives when it plans the batch (nnU-Net: 2), before falling to 1
MIN_BATCH = 2


def candidate_patches(
    max_patch: Sequence[int], divisor: int, map_shape: Sequence[int], voxel_mm: float
) -> list[tuple[int, int, int]]:
    """The formula planner's patches, largest first, down to 2 divisors per axis."""
    extent = [s / voxel_mm for s in map_shape]
    patch = [
        max(2 * divisor, min(divisor * (int(p) // divisor), divisor * math.ceil(e / divisor)))
        for p, e in zip(max_patch, extent)
    ]
    out = [tuple(patch)]
    while True:
        shrinkable = [i for i in range(3) if patch[i] > 2 * divisor]
        if not shrinkable:
            return out
        axis = max(shrinkable, key=lambda i: patch[i] / extent[i])
        patch[axis] -= divisor
        out.append(tuple(patch))


def plan_measured(
    gpu_memory_gb: float,
    job: StepJob,
    max_patch: Sequence[int],
    batch_size: int | None = None,
    measure: Callable[[StepJob, Sequence[int], int], StepMeasurement] = measure_step,
) -> tuple[Plan, dict[str, Any]]:
    """The largest patch, then batch, whose fake-measured peak plus allowance fits the budget.

    Args:
        gpu_memory_gb: the budget (GiB).
        job: the training step to measure (network, generator, loss, optimiser, precision).
        max_patch: the largest patch (``synth.patch_shape``).
        batch_size: fixed batch size (only the patch is planned); None plans it (>= 2, else 1).
        measure: ``(job, patch, batch) -> StepMeasurement`` (tests replace it).

    Returns:
        ``(plan, record)``: ``plan.estimated_gb`` is the measured peak plus allowance (the
        formula's estimate when it fell back); ``record`` is the JSON-able account (plan, formula,
        measured peak by kind, allowance, the plans tried, seconds).

    Raises:
        ValueError: nothing fits (not even the smallest patch at batch size 1).
    """
    start, cpu = time.perf_counter(), time.process_time()
    u, vox, pv = job.unet, float(job.synth.voxel_mm), int(job.synth.partial_volume_factor)
    try:
        formula: Plan | None = plan_patch_and_batch(
            gpu_memory_gb, u, job.n_classes, max_patch, job.map_shape, vox, pv, batch_size
        )
    except ValueError as exc:  # the formula finds nothing: the measurement may still
        formula, formula_error = None, exc
    record: dict[str, Any] = {
        "gpu_memory_gb": gpu_memory_gb,
        "device": job.device,
        "precision": str(job.precision),
        "formula": asdict(formula) if formula is not None else {"error": str(formula_error)},
        "counted": "allocations of one training step on fake tensors (CPU), not a run on a GPU",
    }
    tried: list[dict[str, Any]] = []
    cache: dict[tuple[tuple[int, ...], int], StepMeasurement] = {}

    def total(m: StepMeasurement) -> float:
        return m.peak_gb + allowance_gb(m.peak_gb, job.device)["total_gb"]

    def fits(p: Sequence[int], b: int) -> bool:
        key = (tuple(p), int(b))
        if key not in cache:
            cache[key] = m = measure(job, p, b)
            tried.append({"patch_size": list(p), "batch_size": b, "peak_gb": m.peak_gb,
                          "total_gb": round(total(m), 4), "seconds": m.seconds,
                          "cpu_seconds": m.cpu_seconds})
        return total(cache[key]) <= gpu_memory_gb

    patches = candidate_patches(max_patch, u.divisor, job.map_shape, vox)
    try:
        a = allowance_gb(1.0, job.device)  # fixed parts, and the fragmentation per GiB
        frag = a["fragmentation_gb"]
        budget_peak = (gpu_memory_gb - a["cuda_context_gb"] - a["workspace_gb"]) / (1 + frag)
        chosen = _search(
            patches, formula, batch_size, fits, lambda p, b: cache[(tuple(p), b)], budget_peak
        )
    except FakeUnsupported as exc:
        if formula is None:
            raise formula_error from exc
        log.warning("fake tensors cannot run %s: the formula's plan is used", exc)
        record |= {
            "method": "formula",
            "unsupported": {"op": exc.op, "where": exc.where, "error": str(exc)[:300]},
            "patch_size": list(formula.patch_size),
            "batch_size": formula.batch_size,
            "measured": tried,
            "seconds": round(time.perf_counter() - start, 2),
        }
        return formula, record
    if chosen is None:
        raise ValueError(
            f"no plan fits gpu_memory_gb={gpu_memory_gb} (measured: the smallest patch "
            f"{list(patches[-1])} at batch 1 needs more); use a smaller network, a larger voxel "
            "size or set gpu_memory_gb=null"
        )
    patch, batch = chosen
    m = cache[(tuple(patch), batch)]
    allowance = allowance_gb(m.peak_gb, job.device)
    gen = measure_generator(job.synth, job.table, job.map_shape, patch, batch)
    record |= {
        "method": "measured",
        "patch_size": list(patch),
        "batch_size": batch,
        "formula_estimate_gb": round(
            estimate_memory_gb(u, patch, batch, job.n_classes, job.map_shape, pv), 4
        ),
        "measured_peak_gb": m.peak_gb,
        "peak_by_kind_gb": m.by_kind,
        "generator_peak_gb": gen["peak_gb"],
        "allowance_gb": allowance,
        "total_gb": round(m.peak_gb + allowance["total_gb"], 4),
        "measured": tried,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
    }
    plan = Plan(tuple(patch), batch, record["total_gb"])
    return plan, record


def _search(
    patches: list[tuple[int, int, int]],
    formula: Plan | None,
    batch_size: int | None,
    fits: Callable[[Sequence[int], int], bool],
    measured: Callable[[Sequence[int], int], StepMeasurement],
    budget_peak_gb: float,
) -> tuple[tuple[int, int, int], int] | None:
    """(patch, batch) or None. The formula's patch is the first guess: walk to larger patches
    while they fit, or to smaller ones until one fits; then grow the batch."""
    min_batch = batch_size or MIN_BATCH
    for b in ([min_batch, 1] if batch_size is None else [batch_size]):
        guess = formula.patch_size if formula is not None else patches[-1]
        i = patches.index(guess) if guess in patches else 0
        if fits(patches[i], b):
            while i > 0 and fits(patches[i - 1], b):
                i -= 1
        else:
            while i + 1 < len(patches) and not fits(patches[i + 1], b):
                i += 1
            i += 1
            if i == len(patches):
                continue  # nothing at this batch: try batch 1
        if batch_size is not None or b == 1:
            return patches[i], b
        return patches[i], _grow_batch(patches[i], b, fits, measured, budget_peak_gb)
    return None


def _grow_batch(
    patch: tuple[int, int, int],
    b: int,
    fits: Callable[[Sequence[int], int], bool],
    measured: Callable[[Sequence[int], int], StepMeasurement],
    budget_peak_gb: float,
) -> int:
    """The largest batch >= ``b`` that fits. The peak is close to affine in the batch (parameters
    and optimiser state once, activations per sample): extrapolate from the peak at ``b`` to
    ``budget_peak_gb`` (the budget less the allowance), then step by one until the next does
    not fit."""
    m = measured(patch, b)
    k = m.by_kind
    fixed = k["params"] + k["buffers"] + k["optimizer_state"] + k["grads"]
    per_sample = max(m.peak_gb - fixed, 1e-9) / b
    est = max(b, int((budget_peak_gb - fixed) // per_sample))
    while est > b and not fits(patch, est):
        est -= 1
    while fits(patch, est + 1):
        est += 1
    return est
