"""``gpu_check.py`` part ``memory``: the fake-tensor peak against the real one.

For a tiny job (3-stage 4-16 feature U-Net, two 64^3 phantoms, 32^3 patch at 2 mm, batch 2) and
each precision: the peak of two training steps counted on fake tensors
(:func:`synthseg_lite.model.memory.measure_step`) beside the same steps run for real on the device
(:func:`synthseg_lite.model.memory_check.compare_step`: ``torch.profiler`` allocations on a CPU,
``torch.cuda.max_memory_allocated``/``reserved`` on CUDA). On a CPU the check is that the two
agree within ``TOLERANCE``; on CUDA the figures calibrate the planner's allowance (the per-budget
default-job figures are in part ``train``: ``fake_peak_gb`` beside the measured peaks).
"""

from __future__ import annotations

import functools
from typing import Any

#: fake-counted peak within this fraction of the real one (the CPU check)
TOLERANCE = 0.10


def tiny_job(precision: str, device: str):
    """(StepJob, label maps (2, 1, 64, 64, 64) uint8): the tiny job of ``--tiny``."""
    import torch

    from synthseg_lite.data.bank import phantom_label_maps
    from synthseg_lite.data.config import PhantomConfig
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.loss import LossConfig
    from synthseg_lite.model.memory import StepJob
    from synthseg_lite.model.unet import UNetConfig
    from synthseg_lite.synth import SynthConfig

    table = LabelTable.create("tissue")
    _, maps = phantom_label_maps(PhantomConfig(n=2, shape=[64, 64, 64]), table)
    opt = functools.partial(
        torch.optim.SGD, lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    unet = UNetConfig(n_stages=3, base_features=4, max_features=16, deep_supr_num=1)
    job = StepJob(
        unet, table.target.n_classes, SynthConfig(voxel_mm=2.0, patch_shape=[32, 32, 32]),
        table, tuple(maps.shape[1:]), LossConfig(), opt, precision, 12.0, device,
    )
    return job, torch.from_numpy(maps[:2])[:, None].contiguous()


def part_memory(s: Any) -> dict[str, Any]:
    """Fake against real peak of the tiny step, per precision (``s``: gpu_check's Settings)."""
    from synthseg_lite.model.memory_check import compare_step

    device = "cuda" if s.is_cuda else "cpu"
    runs = []
    for precision in s.precisions:
        job, maps = tiny_job(precision, device)
        rec = compare_step(job, (32, 32, 32), maps, s.device, steps=2, seed=s.seed)
        rec["within_tolerance"] = abs(rec["fake_over_real"] - 1) <= TOLERANCE
        runs.append(rec)
    ok = all(r["within_tolerance"] for r in runs)
    return {"tolerance": TOLERANCE, "runs": runs, "ok": ok if not s.is_cuda else None}
