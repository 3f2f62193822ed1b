"""Peak memory of one training step, counted on fake tensors: no GPU, no data, seconds.

A whole training step of a job (the generator on its batch of label maps, the U-Net forward with
the job's precision and deep supervision, the loss, backward, gradient clipping and the optimiser
step) runs under :class:`torch._subclasses.fake_tensor.FakeTensorMode`: tensors carry shapes and
dtypes but no storage, so a 12 GB step costs nothing. :class:`torch.distributed._tools.mem_tracker.
MemTracker` counts every allocation as it happens and keeps the peak by kind (parameters, gradients,
optimiser state, activations, temporaries). A CPU-only build of torch cannot fake a CUDA device, so
the step runs as CPU tensors: the same sizes, and the CPU autocast casts (convolutions and
transposed convolutions in the low-precision dtype, as CUDA autocast does).

Fake tensors have no values, so an operation whose result depends on them (``bool(t)``,
``t.item()``, ``nonzero``) cannot run. :class:`_SmallValues` keeps the real values of small tensors
(at most :func:`value_limit` elements: the generator's random parameters, index tables, MONAI's
``torch.arange(...).tolist()``) by running those operations for real beside the fake ones (random
draws from the job's own ``torch.Generator``), so every data-dependent decision of the step is
taken exactly as a real step with that seed would take it. A data-dependent operation on a large
tensor raises :class:`FakeUnsupported`, naming the operation and where it was called.

Not seen by fake tensors, and so added as an allowance (:func:`allowance_gb`): the CUDA context,
cuDNN/cuBLAS workspaces, and the caching allocator's rounding and fragmentation. Not counted
either: the fp16 grad scaler's two scalars (``16-mixed``), a few bytes.

One job (the fake step and its accounting) in one module, just over 400 lines: the value-keeping
fake mode, the step it runs and the peaks it reads only make sense together.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from synthseg_lite.labels import LabelTable
from synthseg_lite.model.loss import LossConfig, SegLoss
from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator

__all__ = [
    "ALLOWANCE",
    "FakeUnsupported",
    "StepJob",
    "StepMeasurement",
    "allowance_gb",
    "build_step",
    "measure_generator",
    "measure_step",
    "run_steps",
]

def value_limit(patch: Sequence[int], batch_size: int) -> int:
    """Tensors of at most this many elements keep their real values beside the fake ones: 1/64
    of a batch of patches (at least 4096). The generator's SVF (3 values per 25.6 mm grid node)
    and its parameter tables stay under it; image-sized tensors never do."""
    return max(4096, int(batch_size) * math.prod(int(p) for p in patch) // 64)

#: What fake tensors do not see, on a CUDA device. Each figure and its source:
#: - ``cuda_context_gb``: the CUDA context (driver, runtime and the kernels loaded), outside
#:   PyTorch's allocator. PyTorch sets ``CUDA_MODULE_LOADING=LAZY`` (pytorch/pytorch PR #86509,
#:   torch >= 1.13): 287 MB with lazy loading, 667 MB without, on the PR's test GPU; the cuDNN and
#:   cuBLAS kernels a U-Net step loads come on top. 0.5 GiB; not yet measured (nvidia-smi minus
#:   ``max_memory_reserved`` was not recorded on the H200 run of 2026-12-04).
#: - ``workspace_gb``: cuDNN convolution workspaces and cuBLAS workspaces, allocated through the
#:   caching allocator during the step. PyTorch tries cuDNN's algorithms in its heuristic order
#:   and takes the first whose workspace it can allocate (pytorch/pytorch issue #49207), so a full
#:   card costs speed rather than an error; cuBLAS keeps a workspace per handle and stream (32 MiB
#:   on Hopper). 0.25 GiB: on an H200 a tiny step's real peak was 239 MiB above its fake count,
#:   nearly all workspace (``gpu_check`` part ``memory``, 2026-12-04).
#: - ``fragmentation``: the caching allocator rounds blocks to 512 B, serves requests under 1 MiB
#:   from 2 MiB segments and 1-10 MiB from 20 MiB segments, rounds larger ones to 2 MiB
#:   (``c10/cuda/CUDACachingAllocator.cpp``), and split cached blocks leave holes:
#:   ``max_memory_reserved`` exceeds ``max_memory_allocated``. 10 % of the measured peak, still an
#:   assumption: on the H200 run (capped at each budget) reserved grew to the cap, which says what
#:   the allocator was allowed, not what it needed; the real allocated peaks were 2-5 % under the
#:   fake counts at 8, 12 and 24 GB, and every plan fit.
ALLOWANCE: dict[str, dict[str, float]] = {
    "cuda": {"cuda_context_gb": 0.5, "workspace_gb": 0.25, "fragmentation": 0.10},
    "cpu": {"cuda_context_gb": 0.0, "workspace_gb": 0.0, "fragmentation": 0.0},
}

#: MemTracker's kinds -> the names used in plan records
KINDS = {
    "Parameter": "params",
    "Buffer": "buffers",
    "Gradient": "grads",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "inputs",
}


class FakeUnsupported(RuntimeError):
    """An operation of the step cannot run on fake tensors.

    Attributes:
        op: the ATen operation (``aten.nonzero.default``).
        where: ``file:line (function)`` of the first project or library frame that called it.
    """

    def __init__(self, op: str, where: str, reason: str = "") -> None:
        super().__init__(f"{op} at {where}" + (f": {reason}" if reason else ""))
        self.op, self.where = op, where


@dataclass(frozen=True)
class StepJob:
    """What one training step of a job is made of (the typed pieces ``train.py`` builds).

    Attributes:
        unet: network topology; n_classes: output classes.
        synth: generator settings (``patch_shape`` is replaced by the measured patch).
        table: label table of the run.
        map_shape: (X, Y, Z) of the label maps (1 mm voxels).
        loss: loss settings.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (Hydra ``_partial_``).
        precision: Lightning precision (``16-mixed``, ``bf16-mixed``, ``32-true``...).
        gradient_clip_val: gradient-norm clipping (None or 0: none).
        device: the device the plan is for (``cuda`` or ``cpu``): chooses the allowance.
    """

    unet: UNetConfig
    n_classes: int
    synth: SynthConfig
    table: LabelTable
    map_shape: tuple[int, int, int]
    loss: LossConfig
    optimizer: Callable[..., torch.optim.Optimizer]
    precision: str = "16-mixed"
    gradient_clip_val: float | None = None
    device: str = "cuda"


@dataclass
class StepMeasurement:
    """Peak of one measured plan.

    Attributes:
        patch_size, batch_size: the plan measured.
        peak_gb: the fake-counted peak (GiB, 2**30 bytes).
        by_kind: the peak's parts (GiB): params, buffers, grads, optimizer_state, activations,
            temporaries, inputs (the label maps on the device).
        seconds: wall time of the measurement; cpu_seconds: its process CPU time (what a
            loaded machine does not inflate).
    """

    patch_size: tuple[int, int, int]
    batch_size: int
    peak_gb: float
    by_kind: dict[str, float]
    seconds: float
    cpu_seconds: float = float("nan")


def allowance_gb(peak_gb: float, device: str = "cuda") -> dict[str, float]:
    """What to add to a fake-counted peak on ``device`` (:data:`ALLOWANCE`), GiB, and the total."""
    a = ALLOWANCE["cuda" if str(device).startswith("cuda") else "cpu"]
    parts = {
        "cuda_context_gb": a["cuda_context_gb"],
        "workspace_gb": a["workspace_gb"],
        "fragmentation_gb": round(a["fragmentation"] * peak_gb, 4),
    }
    return {**parts, "total_gb": round(sum(parts.values()), 4)}


# ---------------------------------------------------------------------------- fake machinery
def _call_site() -> str:
    """The innermost frame outside torch and this module: ``file:line (function)``."""
    here = Path(__file__).resolve()
    torch_dir = Path(torch.__file__).resolve().parent
    f = sys._getframe(1)
    while f is not None:
        p = Path(f.f_code.co_filename).resolve()
        if p != here and torch_dir not in p.parents:
            parts = p.parts
            short = "/".join(parts[-3:]) if len(parts) >= 3 else str(p)
            return f"{short}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "unknown"


def _mutated_args(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """The tensor arguments ``func`` writes to (its schema's ``(a!)`` annotations)."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[i] if i < len(args) else kwargs.get(a.name)
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out


class _SmallValues(TorchDispatchMode):
    """Runs every operation on small tensors for real beside the fake one and keeps the real
    results, so data-dependent operations on them (``item``, ``bool``, ``nonzero``) get their true
    answer. Enter it inside the :class:`FakeTensorMode` (and inside the MemTracker)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.values: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _real(self, flat: list[Any]) -> list[Any] | None:
        out = []
        for x in flat:
            if isinstance(x, FakeTensor):
                v = self.values.get(x)
                if v is None:
                    return None
                out.append(v)
            else:
                out.append(x)
        return out

    def _run_real(self, func: Any, flat: list[Any], spec: Any) -> Any:
        real = self._real(flat)
        if real is None:
            return None
        r_args, r_kwargs = tree_unflatten(real, spec)
        with _disable_current_modes():
            try:
                return func(*r_args, **r_kwargs)
            except Exception:  # noqa: BLE001 - no real value then; the fake result stands
                return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        try:
            out = func(*args, **kwargs)
        except UnsupportedOperatorException as exc:
            raise FakeUnsupported(str(func), _call_site(), "no fake implementation") from exc
        except (DataDependentOutputException, DynamicOutputShapeException) as exc:
            real = self._run_real(func, flat, spec)
            if real is None:
                raise FakeUnsupported(str(func), _call_site(), "needs tensor values") from exc
            if not isinstance(real, torch.Tensor | tuple | list):
                return real  # a Python scalar (item, bool)

            def fake_like(r: torch.Tensor) -> torch.Tensor:
                t = torch.empty_strided(r.shape, r.stride(), dtype=r.dtype, device=r.device)
                self.values[t] = r
                return t

            return tree_map(lambda r: fake_like(r) if isinstance(r, torch.Tensor) else r, real)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, FakeTensor)]
        if outs and all(t.numel() <= self.limit for t in outs):
            real = self._run_real(func, flat, spec)
            if real is not None:
                for f, r in zip(outs, [t for t in tree_flatten(real)[0] if torch.is_tensor(t)]):
                    self.values[f] = r
                return out
        for t in _mutated_args(func, args, kwargs):  # written from unknown values: forget
            if isinstance(t, FakeTensor):
                self.values.pop(t, None)
        return out


def _tracker() -> Any:
    """A MemTracker that keeps only the global peak: its per-module peaks (not used here) cost a
    pass over every module at every operation, a third of a measurement's time (torch 2.13)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):
        def _update_peak_stats(self, peak_state: Any) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return PeakTracker()


def _autocast(precision: str) -> tuple[bool, torch.dtype]:
    p = str(precision)
    if p.startswith("bf16") and "mixed" in p:
        return True, torch.bfloat16
    if p.startswith("16") and "mixed" in p:
        return True, torch.float16
    return False, torch.float32


# --------------------------------------------------------------------------- measurement
def _gb(b: float) -> float:
    return round(b / 2**30, 4)


def _peak(tracker: Any) -> tuple[int, dict[str, int]]:
    snap = tracker.get_tracker_snapshot("peak")
    total, kinds = 0, {k: 0 for k in KINDS.values()}
    for dev_snap in snap.values():
        for k, v in dev_snap.items():
            if k == "Total":
                total += v
            else:
                kinds[KINDS.get(getattr(k, "value", str(k)), str(k))] += v
    return total, kinds


def build_step(
    job: StepJob, patch: Sequence[int], batch_size: int, maps: torch.Tensor | None = None
) -> tuple[Any, ...]:
    """The parts of a training step: (generator, network, loss, optimiser, label maps).

    Under a :class:`FakeTensorMode` every tensor is fake; ``maps`` (B, 1, X, Y, Z) uint8 defaults
    to an uninitialised batch of ``job.map_shape``.
    """
    synth = replace(job.synth, patch_shape=[int(p) for p in patch])
    gen = SynthGenerator(synth, job.table)
    net = build_unet(job.unet, job.n_classes)
    loss_fn = SegLoss(job.loss, job.unet.n_stages)
    opt = job.optimizer(params=net.parameters())
    if maps is None:
        maps = torch.empty((batch_size, 1, *job.map_shape), dtype=torch.uint8)
    return gen, net, loss_fn, opt, maps


def run_steps(
    job: StepJob,
    parts: tuple[Any, ...],
    steps: int = 2,
    seed: int = 0,
    before_step: Callable[[], None] | None = None,
) -> list[float]:
    """Run ``steps`` training steps in Lightning's order: synthesis (outside autocast), forward
    and loss (autocast), zero_grad (gradients set to None), backward, gradient clipping,
    optimiser step. From the second step on, the optimiser state and the previous gradients are
    alive during the forward. Returns the losses (NaN on fake tensors)."""
    gen, net, loss_fn, opt, maps = parts
    use_amp, dtype = _autocast(job.precision)
    # CUDA autocast runs softmax, log_softmax and the losses in float32, CPU autocast in the
    # low-precision dtype: for a CUDA plan the loss gets float32 logits, as on CUDA
    cuda_like = use_amp and job.device.startswith("cuda")
    losses = []
    for step in range(steps):
        if before_step is not None:
            before_step()
        batch = gen(maps, make_generator(maps.device, seed, step, 0))
        image, target = batch.image, batch.target
        del batch
        with torch.autocast(maps.device.type, dtype=dtype, enabled=use_amp):
            logits = net(image)
            loss = loss_fn(logits.float() if cuda_like else logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if job.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(job.gradient_clip_val))
        opt.step()
        losses.append(math.nan if isinstance(loss, FakeTensor) else float(loss.detach()))
        del logits, loss, image, target
    return losses


def measure_step(
    job: StepJob, patch: Sequence[int], batch_size: int, steps: int = 2, seed: int = 0
) -> StepMeasurement:
    """Count the peak memory of ``steps`` training steps (:func:`run_steps`) of ``job`` at
    ``patch`` x ``batch_size`` on fake tensors.

    Raises:
        FakeUnsupported: an operation needs tensor values it does not have.
    """
    start, cpu = time.perf_counter(), time.process_time()
    fake, values = FakeTensorMode(), _SmallValues(value_limit(patch, batch_size))
    with fake, values:
        parts = build_step(job, patch, batch_size)
    tracker = _tracker()
    _, net, _, opt, maps = parts
    tracker.track_external(net, opt, maps)
    with fake, tracker, values, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Module is None")
        # per-module statistics only (MemTracker refuses a module called twice); the peak stays
        run_steps(job, parts, steps, seed, before_step=tracker.reset_mod_stats)
    total, kinds = _peak(tracker)
    return StepMeasurement(
        tuple(int(p) for p in patch),
        int(batch_size),
        _gb(total),
        {k: _gb(v) for k, v in kinds.items()},
        round(time.perf_counter() - start, 3),
        round(time.process_time() - cpu, 3),
    )


def measure_generator(
    synth: SynthConfig,
    table: LabelTable,
    map_shape: Sequence[int],
    patch: Sequence[int],
    batch_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The generator's own peak (GiB, the label maps included) for one batch, on fake tensors."""
    start = time.perf_counter()
    fake, values = FakeTensorMode(), _SmallValues(value_limit(patch, batch_size))
    with fake, values:
        gen = SynthGenerator(replace(synth, patch_shape=[int(p) for p in patch]), table)
        maps = torch.empty((batch_size, 1, *map_shape), dtype=torch.uint8)
    tracker = _tracker()
    tracker.track_external(maps)
    with fake, tracker, values:
        out = gen(maps, make_generator(maps.device, seed, 0, 0))
        del out
    total, kinds = _peak(tracker)
    return {
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch_size),
        "peak_gb": _gb(total),
        "label_maps_gb": _gb(kinds["inputs"]),
        "seconds": round(time.perf_counter() - start, 3),
    }
