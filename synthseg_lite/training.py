"""Training plumbing that is not the model or the data: config schemas, atomic checkpoints,
device checks, resume information and the patch/batch plan.

``train.py`` (the only place a Hydra ``DictConfig`` lives) composes the configuration and calls
these typed helpers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from synthseg_lite.data import DataConfig
from synthseg_lite.io import atomic_write
from synthseg_lite.model.module import ModelConfig
from synthseg_lite.model.planning import Plan, plan_patch_and_batch
from synthseg_lite.model.unet import UNetConfig

__all__ = [
    "AtomicCheckpointIO",
    "check_accelerator",
    "config_differences",
    "plan_sizes",
    "read_resume",
    "register_configs",
]

log = logging.getLogger(__name__)


def register_configs() -> None:
    """Register the ``data`` and ``model`` schemas (``data/schema``, ``model/schema``) in Hydra's
    ConfigStore; the YAML files start from them, so the dataclass defaults are the only defaults."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="data", name="schema", node=DataConfig)
    cs.store(group="model", name="schema", node=ModelConfig)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes to a temporary file and renames it into place, so an
    interrupted save never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        log.info("checkpoint written: %s", path)


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


def read_resume(path: str | Path) -> dict[str, Any]:
    """The training-relevant contents of a checkpoint: ``seed``, ``global_step``, ``config``.

    Raises:
        ValueError: missing or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resume={path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hp = ckpt["hyper_parameters"]
        return {
            "seed": int(hp["seed"]),
            "global_step": int(ckpt.get("global_step", 0)),
            "config": dict(hp.get("config") or {}),
        }
    except (KeyError, TypeError, RuntimeError, EOFError) as exc:
        raise ValueError(f"resume={path}: not a synthseg_lite training checkpoint ({exc})") from exc


def config_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    sections: tuple[str, ...] = ("data", "synth", "model", "seed", "fold"),
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (within ``sections``)."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")

    for s in sections:
        if s in old or s in new:
            walk(old.get(s), new.get(s), s)
    return diffs


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
