"""Training: what a run starts from (resume, ``init_weights``), atomic checkpoints, trainer checks,
the patch/batch plan (estimated, then measured on a fake step) and its out-of-memory fallback.

The LightningModule and the network are :mod:`synthseg_lite.model`; the Hydra entry point that
wires them is :mod:`synthseg_lite.commands.train`.
"""

from synthseg_lite.training.start import (
    check_resume_compatible,
    config_differences,
    init_weights,
    read_resume,
)
from synthseg_lite.training.trainer import (
    OOM_ERRORS,
    AtomicCheckpointIO,
    InterruptNote,
    PlanGuard,
    check_accelerator,
    check_optimizer,
    check_trainer_args,
    fit_with_oom_fallback,
    peak_memory_gb,
    plan_guard,
    plan_sizes,
)

__all__ = [
    "OOM_ERRORS",
    "AtomicCheckpointIO",
    "InterruptNote",
    "PlanGuard",
    "check_accelerator",
    "check_optimizer",
    "check_resume_compatible",
    "check_trainer_args",
    "config_differences",
    "fit_with_oom_fallback",
    "init_weights",
    "peak_memory_gb",
    "plan_guard",
    "plan_sizes",
    "read_resume",
]
