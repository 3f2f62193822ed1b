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
from synthseg_lite.safety import load_torch_file, remove_stale_temporaries

__all__ = [
    "AtomicCheckpointIO",
    "check_accelerator",
    "check_resume_compatible",
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
        # a run killed mid-write (SIGKILL) leaves its hidden temporary: the next save removes it
        remove_stale_temporaries(Path(path).parent, ".ckpt")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        log.info("checkpoint written: %s", path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's resume read, always with ``weights_only=True`` (never runs code)."""
        return load_torch_file(path, map_location or "cpu", "checkpoint")


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
    try:  # weights_only: a crafted checkpoint cannot run code
        ckpt = load_torch_file(path, "cpu", "checkpoint")
    except ValueError as exc:
        raise ValueError(f"resume={exc}") from exc
    try:
        hp = ckpt["hyper_parameters"]
        return {
            "seed": int(hp["seed"]),
            "global_step": int(ckpt.get("global_step", 0)),
            "config": dict(hp.get("config") or {}),
            "shapes": {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()},
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"resume={path}: not a synthseg_lite training checkpoint (no {exc})"
        ) from exc


def check_resume_compatible(module: torch.nn.Module, info: Mapping[str, Any], path: str) -> None:
    """Fail before any training when the checkpoint's weights do not fit the configured network.

    Args:
        module: the LightningModule built from the current configuration.
        info: :func:`read_resume`'s result (``shapes``: state-dict key -> tensor shape).
        path: the checkpoint, for the message.

    Raises:
        ValueError: missing, unexpected or differently shaped weights (the first one is named).
    """
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = dict(info.get("shapes") or {})
    missing = sorted(set(have) - set(want))
    extra = sorted(set(want) - set(have))
    shaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if missing or extra or shaped:
        what = (
            f"{shaped[0]} is {list(want[shaped[0]])} there, {list(have[shaped[0]])} here"
            if shaped
            else f"weights {'missing' if missing else 'unexpected'}: {(missing or extra)[0]}"
        )
        raise ValueError(
            f"resume={path}: checkpoint from an incompatible configuration ({what}; "
            f"{len(missing) + len(extra) + len(shaped)} mismatch(es)); resume with the run's own "
            "settings (model.*, data.target)"
        )


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
