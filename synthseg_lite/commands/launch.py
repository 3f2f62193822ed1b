"""DDP ranks of a training job under Hydra's launchers (``train.py -m``, ``hydra/launcher=...``).

Who starts the ranks of a job with ``trainer.devices * trainer.num_nodes > 1``:

- a plain run (``python train.py trainer=ddp``): Lightning starts ``devices - 1`` copies of the
  command (its subprocess launcher); nothing to do here;
- SLURM (``hydra/launcher=slurm``): submitit's ``srun`` starts one task per device on every node
  (``tasks_per_node = trainer.devices``, ``nodes = trainer.num_nodes`` in the preset); Lightning's
  ``SLURMEnvironment`` reads the ranks from SLURM's variables and starts nothing;
- submitit's local executor (``hydra/launcher=local``): it starts ``tasks_per_node`` processes;
  :func:`launched_ranks` exports the ``torch.distributed`` variables of each (submitit's
  ``TorchDistributedEnvironment``), so Lightning takes them as ranks started outside it;
- Hydra's basic launcher (``train.py -m ...`` without a launcher): Lightning would start the
  copies with the multirun's command line (``-m`` and every sweep value), i.e. run the whole
  sweep again in every rank, each in a new run folder. :func:`launched_ranks` gives it this job's
  command instead: the job's own overrides and its output folder as ``hydra.run.dir``; after
  the job it ends the job's process group (the next job of the sweep, in the same process, starts
  its own ranks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["launched_ranks"]

log = logging.getLogger(__name__)

_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_RANK")


def _processes(trainer: Any) -> int:
    """Processes per node that ``trainer`` (the ``trainer`` config node) asks for."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str):  # "auto", "-1", "0,1"
        return 1 if devices in ("auto", "-1") else len([d for d in devices.split(",") if d])
    return len(devices)  # a list of device indices


def _submitit_ranks(processes: int, nodes: int) -> None:
    """Inside a submitit job: check that its tasks are the DDP ranks; on the local executor,
    export them for Lightning (SLURM's own variables serve under SLURM)."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks == 1 and processes * nodes > 1:
        raise ValueError(
            f"trainer.devices={processes} trainer.num_nodes={nodes} under a submitit launcher: "
            "each DDP rank is a launcher task; set hydra.launcher.tasks_per_node=trainer.devices "
            "and hydra.launcher.nodes=trainer.num_nodes (the presets do)"
        )
    if env.cluster != "local" or env.num_tasks == 1:
        return
    if nodes != 1 or env.num_tasks != processes:
        raise ValueError(
            f"hydra/launcher=local runs one node with {env.num_tasks} task(s); the trainer asks "
            f"for {nodes} node(s) x {processes} device(s)"
        )
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("rank %d of %d (submitit local task)", dist.rank, dist.world_size)


@contextlib.contextmanager
def launched_ranks(trainer: Any) -> Iterator[None]:
    """Around a Hydra job of ``train.py``: make its DDP ranks work under the launcher that
    started it (see the module's docstring). A no-op outside a multirun.

    Args:
        trainer: the job's ``trainer`` config node (``devices``, ``num_nodes``).

    Raises:
        ValueError: the launcher's tasks do not match ``trainer.devices`` x ``trainer.num_nodes``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    processes, nodes = _processes(trainer), int(trainer.get("num_nodes", 1))
    if os.environ.get("SUBMITIT_EXECUTOR"):
        _submitit_ranks(processes, nodes)
        yield
        return
    started = "LOCAL_RANK" in os.environ or "SLURM_NTASKS" in os.environ  # ranks exist already
    # Hydra's basic launcher: harmless when Lightning starts no process (devices="auto" may)
    if started or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, run_dir = list(sys.argv), hydra_cfg.run.dir
    env = {k: os.environ.get(k) for k in _DIST_ENV}
    # Lightning's copies run `sys.argv` + `hydra.run.dir=<HydraConfig run.dir>`: this job only
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    log.info("DDP ranks of this job: %s ... in %s", " ".join(sys.argv[1:]), hydra_cfg.run.dir)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in env.items():  # Lightning sets MASTER_PORT... in this process
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir
