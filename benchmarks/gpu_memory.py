"""``gpu_check.py`` part ``memory``: the fake-tensor peak against the real one.

For a tiny job (3-stage 4-16 feature U-Net, two 64^3 phantoms, 32^3 patch at 2 mm, batch 2) and
each precision: the peak of two training steps counted on fake tensors
(:func:`synthseg_lite.training.memory.measure_step`) beside the same steps run for real on the device
(:func:`synthseg_lite.training.memory_check.compare_step`: ``torch.profiler`` allocations on a CPU,
``torch.cuda.max_memory_allocated``/``reserved`` on CUDA). On a CPU the check is that the two
agree within ``TOLERANCE``. On CUDA a tiny step's real peak is mostly cuBLAS/cuDNN workspace (on
an H200: 253 MiB real against 14 counted after the other parts had run, 47 when it ran first, the
difference there about cuBLAS's 32 MiB Hopper workspace), so the check there is that the
difference is positive and within the planner's workspace allowance; the per-budget default-job
figures (part ``train``: ``fake_peak_gb`` beside the measured peaks) calibrate the allowance.
"""

from __future__ import annotations

import functools
from pathlib import Path
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
    from synthseg_lite.training.memory import StepJob
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
    from synthseg_lite.training.memory import ALLOWANCE
    from synthseg_lite.training.memory_check import compare_step

    device = "cuda" if s.is_cuda else "cpu"
    runs = []
    for precision in s.precisions:
        job, maps = tiny_job(precision, device)
        rec = compare_step(job, (32, 32, 32), maps, s.device, steps=2, seed=s.seed)
        rec["within_tolerance"] = abs(rec["fake_over_real"] - 1) <= TOLERANCE
        if s.is_cuda:  # a tiny step's real peak is mostly workspace: the allowance must hold it
            extra = rec["real_mib"] - rec["fake_mib"]
            allowed = ALLOWANCE["cuda"]["workspace_gb"] * 1024
            rec["real_minus_fake_mib"] = round(extra, 3)
            rec["workspace_allowance_mib"] = allowed
            rec["within_allowance"] = 0 <= extra <= allowed
        runs.append(rec)
    key = "within_allowance" if s.is_cuda else "within_tolerance"
    return {"tolerance": TOLERANCE, "runs": runs, "ok": all(r[key] for r in runs)}


def generator_peaks(
    patches: tuple[tuple[int, int, int], ...] = ((160, 160, 160), (128, 160, 160), (128, 128, 128)),
    batches: tuple[int, ...] = (1, 2, 4, 8),
    map_shape: tuple[int, int, int] = (160, 192, 160),
) -> list[dict[str, Any]]:
    """The default generator's own peak on fake tensors, per patch and batch (label maps of
    ``map_shape``, the default phantoms' stack, included)."""
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.training.memory import measure_generator
    from synthseg_lite.synth import SynthConfig

    table = LabelTable.create("tissue")
    return [
        measure_generator(SynthConfig(), table, map_shape, p, b) for p in patches for b in batches
    ]


def default_job_plans(budgets: tuple[float, ...], overrides: tuple[str, ...] = ()) -> list[dict]:
    """``plan_only``'s JSON record of the default job (``python train.py``) for each budget, in
    one process (the label maps are made once)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from synthseg_lite.commands.train import plan_for
    from synthseg_lite.data import SynthDataModule, make_label_table

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/gpu_memory_plans", *overrides])
    data_cfg = OmegaConf.to_object(cfg.data)
    table = make_label_table(data_cfg)
    dm = SynthDataModule(data_cfg, table, cfg.fold, 1, int(cfg.seed), float(cfg.synth.voxel_mm),
                         "/tmp/gpu_memory_plans/splits.json")
    _, maps = dm.load_maps()
    out = []
    for gb in budgets:
        cfg.gpu_memory_gb = gb
        out.append(plan_for(cfg, table, maps.shape[1:])[1])
    return out


if __name__ == "__main__":
    # python benchmarks/gpu_memory.py             the generator's peaks (JSON lines)
    # python benchmarks/gpu_memory.py --plans 8,12,16,24,40,80    the default job's plans
    import json
    import sys

    import torch

    torch.set_num_threads(1)
    if len(sys.argv) > 2 and sys.argv[1] == "--plans":
        recs = default_job_plans(tuple(float(v) for v in sys.argv[2].split(",")))
    else:
        recs = generator_peaks()
    for rec in recs:
        print(json.dumps(rec), flush=True)
