"""Training plumbing that is not the model or the data: atomic checkpoints, device and trainer
checks, the patch/batch plan and its out-of-memory fallback.

``train.py`` (the only place a Hydra ``DictConfig`` lives) composes the configuration and calls
these typed helpers.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from synthseg_lite.io import atomic_write
from synthseg_lite.training.planning import Plan, plan_patch_and_batch, shrink_plan
from synthseg_lite.model.unet import UNetConfig
from synthseg_lite.safety import load_torch_file, remove_stale_temporaries

__all__ = [
    "OOM_ERRORS",
    "AtomicCheckpointIO",
    "InterruptNote",
    "PlanGuard",
    "check_accelerator",
    "check_trainer_args",
    "fit_with_oom_fallback",
    "peak_memory_gb",
    "plan_guard",
    "plan_sizes",
]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes to a temporary file and renames it into place, so an
    interrupted save never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        # a run killed mid-write (SIGKILL) leaves its hidden temporary: the next save removes it
        remove_stale_temporaries(Path(path).parent, ".ckpt")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        log.info("checkpoint written: %s", path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's resume read, always with ``weights_only=True`` (never runs code)."""
        return load_torch_file(path, map_location or "cpu", "checkpoint")


class InterruptNote(pl.Callback):
    """When Ctrl-C or SIGTERM (``scancel``, a SLURM time limit) stops a run, log one line: the
    step reached and the ``resume=`` that goes on from the last checkpoint written.

    Lightning stops such a run itself (Ctrl-C: "attempting graceful shutdown", exit 1; SIGTERM:
    "Received SIGTERM", then exit 0 unless :mod:`synthseg_lite.commands.train` makes it 143),
    and neither says where the run can go on from.
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        if not trainer.is_global_zero:
            return
        which = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
        last = [Path(c.best_model_path) for c in trainer.checkpoint_callbacks
                if getattr(c, "monitor", None) is None and getattr(c, "best_model_path", "")]
        hint = (f"the same command with resume={last[0]} goes on from its last checkpoint"
                if last and last[0].is_file() else "no checkpoint was written yet")
        log.error("interrupted (%s) at step %d: %s", which, trainer.global_step, hint)


def check_accelerator(accelerator: str) -> None:
    """Fail early, in one line, when a GPU job runs where there is no GPU.

    Raises:
        ValueError: ``accelerator`` is ``gpu``/``cuda`` and CUDA is not available.
    """
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            "no CUDA GPU found: this job is sized for a 12 GB GPU; on a CPU run "
            "`python train.py experiment=cpu` (small 2 mm model) or `experiment=smoke`, "
            "or force this job with trainer=cpu"
        )


#: Lightning Trainer settings and the types they take (the trainer section has no schema).
_TRAINER_TYPES: dict[str, tuple[type, ...]] = {
    "max_epochs": (int,), "min_epochs": (int,), "max_steps": (int,), "min_steps": (int,),
    "limit_train_batches": (int, float), "limit_val_batches": (int, float),
    "val_check_interval": (int, float), "check_val_every_n_epoch": (int,),
    "log_every_n_steps": (int,), "accumulate_grad_batches": (int,),
    "gradient_clip_val": (int, float), "num_nodes": (int,), "num_sanity_val_steps": (int,),
}


def check_trainer_args(trainer: Mapping[str, Any]) -> None:
    """Fail in one line on a Trainer setting of the wrong type or sign (``trainer.max_epochs=ten``),
    before Lightning or the model trip over it.

    Raises:
        ValueError: the first bad ``trainer.*`` value.
    """
    for key, types in _TRAINER_TYPES.items():
        v = trainer.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            names = " or ".join("an integer" if t is int else "a number" for t in types)
            raise ValueError(f"trainer.{key} must be {names}, got {v!r}")
        if v < 0 and not (key in ("max_epochs", "max_steps") and v == -1):
            raise ValueError(f"trainer.{key} must not be negative, got {v}")


def check_optimizer(optimizer: Callable[..., torch.optim.Optimizer]) -> None:
    """Fail in one line on a bad optimiser setting (``model.optimizer.lr=fast``, ``lr=-1``), before
    planning or training build the optimiser: a keyword whose default in the optimiser's signature
    is a number must be one, and the optimiser must accept the settings on one parameter.

    Args:
        optimizer: Hydra ``_partial_`` of ``model.optimizer`` (``optimizer(params=...)``).

    Raises:
        ValueError: the first bad ``model.optimizer.*`` value.
    """
    try:
        params = inspect.signature(optimizer.func).parameters
    except (AttributeError, TypeError, ValueError):  # not a partial of an inspectable class
        params = {}
    for key, value in getattr(optimizer, "keywords", {}).items():
        default = params[key].default if key in params else None
        if _is_number(default) and not _is_number(value):
            raise ValueError(f"model.optimizer.{key} must be a number, got {value!r}")
    try:
        optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model.optimizer: {exc}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plan_sizes(
    gpu_memory_gb: float | None,
    unet: UNetConfig,
    n_classes: int,
    patch: list[int],
    batch_size: int | None,
    map_shape: tuple[int, ...],
    voxel_mm: float,
    partial_volume_factor: int = 1,
) -> Plan:
    """Patch and batch size of a run: planned for ``gpu_memory_gb``, or as given when it is None
    (batch size 2 by default)."""
    if gpu_memory_gb is None:
        return Plan(tuple(int(p) for p in patch), int(batch_size or 2), float("nan"))
    plan = plan_patch_and_batch(
        gpu_memory_gb,
        unet,
        n_classes,
        patch,
        map_shape,
        voxel_mm,
        partial_volume_factor,
        batch_size,
    )
    log.info(
        "planned for %.1f GB: patch %s, batch %d (estimated %.1f GB)",
        gpu_memory_gb,
        list(plan.patch_size),
        plan.batch_size,
        plan.estimated_gb,
    )
    return plan


# ------------------------------------------------------------------------------ plan safety
#: what an out-of-memory error is (``torch.OutOfMemoryError``, alias ``torch.cuda.OutOfMemoryError``)
OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def peak_memory_gb(device: torch.device | str) -> dict[str, float]:
    """Peak memory of this process so far, GiB.

    CUDA: ``{"allocated": torch.cuda.max_memory_allocated, "reserved": max_memory_reserved}`` of
    ``device`` (since the last ``torch.cuda.reset_peak_memory_stats``). Other devices:
    ``{"rss": peak resident set size}`` of the whole process (``VmHWM``, else ``ru_maxrss``):
    everything the process ever held, not only training.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "allocated": torch.cuda.max_memory_allocated(device) / 2**30,
            "reserved": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"rss": int(line.split()[1]) / 2**20}  # kB
    except OSError:
        pass
    import resource

    return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # Linux: kB


class PlanGuard(pl.Callback):
    """Watches the first training step of a run's patch/batch plan.

    At train start it writes ``path`` (``plan.json``: the plan, the budget, the plans that ran out
    of memory before it); at the end of the first training step it logs the planner's estimate and
    the measured peak to every logger (TensorBoard: ``memory/estimated_gb``, and
    ``memory/peak_allocated_gb`` + ``memory/peak_reserved_gb`` on CUDA or ``memory/peak_rss_gb``
    on a CPU: the whole process) and in one log line, and adds the figures to ``plan.json``.
    :func:`fit_with_oom_fallback` asks it whether the first step finished and for a smaller plan.

    Args:
        plan: the plan the run uses (``estimated_gb`` NaN when the sizes were given explicitly).
        shrink: ``plan -> smaller plan`` (:func:`~synthseg_lite.training.planning.shrink_plan`
            bound to the run's network and maps); None: no fallback (sizes given explicitly).
        path: where to write ``plan.json`` (rank 0); None: nowhere.
        gpu_memory_gb: the budget the plan was made for (None: sizes given explicitly).
    """

    def __init__(
        self,
        plan: Plan,
        shrink: Callable[[Plan], Plan] | None = None,
        path: str | Path | None = None,
        gpu_memory_gb: float | None = None,
    ) -> None:
        self.plan, self.shrink, self.gpu_memory_gb = plan, shrink, gpu_memory_gb
        self.path = Path(path) if path is not None else None
        self.failed: list[dict[str, Any]] = []  # plans that ran out of memory before this one
        self.first_step_done = False
        self.measured: dict[str, float] = {}
        self.fake: dict[str, Any] | None = None  # the planner's fake-tensor record (plan_measure)

    def to_dict(self) -> dict[str, Any]:
        est = self.plan.estimated_gb
        return {
            "gpu_memory_gb": self.gpu_memory_gb,
            "patch_size": list(self.plan.patch_size),
            "batch_size": self.plan.batch_size,
            "estimated_gb": est if math.isfinite(est) else None,
            "measured_peak_gb": {k: round(v, 3) for k, v in self.measured.items()} or None,
            "out_of_memory_before": self.failed,
            "fake_measured": self.fake,
        }

    def _write(self) -> None:
        if self.path is not None:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        if trainer.is_global_zero:
            self._write()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.first_step_done:
            return
        self.first_step_done = True
        self.measured = peak_memory_gb(pl_module.device)
        metrics = {f"memory/peak_{k}_gb": v for k, v in self.measured.items()}
        if math.isfinite(self.plan.estimated_gb):
            metrics["memory/estimated_gb"] = self.plan.estimated_gb
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        log.info(
            "first step: patch %s, batch %d, estimated %s GB, measured peak %s",
            list(self.plan.patch_size),
            self.plan.batch_size,
            f"{self.plan.estimated_gb:.3g}" if math.isfinite(self.plan.estimated_gb) else "n/a",
            ", ".join(f"{k} {v:.2f} GB" for k, v in self.measured.items()),
        )
        if trainer.is_global_zero:
            self._write()


def plan_guard(
    plan: Plan,
    gpu_memory_gb: float | None,
    unet: UNetConfig,
    n_classes: int,
    map_shape: tuple[int, ...],
    voxel_mm: float,
    partial_volume_factor: int = 1,
    path: str | Path | None = None,
) -> PlanGuard:
    """The :class:`PlanGuard` of a run: planned runs (``gpu_memory_gb`` set) fall back to smaller
    plans by :func:`~synthseg_lite.training.planning.shrink_plan`; explicit sizes never change."""
    shrink = None
    if gpu_memory_gb is not None:
        shrink = functools.partial(
            shrink_plan,
            unet=unet,
            n_classes=n_classes,
            map_shape=tuple(map_shape),
            voxel_mm=voxel_mm,
            partial_volume_factor=partial_volume_factor,
        )
    return PlanGuard(plan, shrink, path, gpu_memory_gb)


def fit_with_oom_fallback(
    parts: tuple[Any, ...],
    fit: Callable[..., None],
    rebuild: Callable[[Plan], tuple[Any, ...]],
) -> tuple[Any, ...]:
    """Fit a run; if its first training step runs out of memory, go on with a smaller plan.

    Args:
        parts: ``(datamodule, module, trainer)``; a :class:`PlanGuard` among the trainer's
            callbacks enables the fallback (and gives the smaller plan).
        fit: ``fit(datamodule, module, trainer)``.
        rebuild: ``plan -> (datamodule, module, trainer)`` with that plan, recorded in the run's
            configuration.

    Returns:
        The (datamodule, module, trainer) that trained.

    Raises:
        ValueError: out of memory with the smallest plan.
        torch.OutOfMemoryError: after the first step, without a planner (explicit sizes), or with
            several processes (DDP: ranks must agree on the sizes).
    """
    failed: list[dict[str, Any]] = []
    while True:
        trainer = parts[-1]
        guard = next((c for c in trainer.callbacks if isinstance(c, PlanGuard)), None)
        if guard is not None:
            guard.failed = list(failed)
        try:
            fit(*parts)
            return parts
        except OOM_ERRORS as exc:
            if guard is None or guard.shrink is None or guard.first_step_done:
                raise
            if trainer.world_size > 1:
                log.error(
                    "out of memory at the first step with %d processes: no fallback (ranks must "
                    "agree on the plan); lower gpu_memory_gb",
                    trainer.world_size,
                )
                raise
            old, reason = guard.plan, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        new = guard.shrink(old)
        failed.append({**asdict(old), "error": reason[:300]})
        del parts, trainer, guard
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning(
            "out of memory at the first training step with patch %s, batch %d (estimated %.3g GB):"
            " new plan patch %s, batch %d (estimated %.3g GB)",
            list(old.patch_size),
            old.batch_size,
            old.estimated_gb,
            list(new.patch_size),
            new.batch_size,
            new.estimated_gb,
        )
        parts = rebuild(new)
