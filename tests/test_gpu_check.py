"""The GPU path on a CPU: the planner's out-of-memory fallback and ``benchmarks/gpu_check.py``."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train as train_script
from synthseg_lite.model.module import SynthSegModule
from synthseg_lite.model.planning import estimate_memory_gb, plan_patch_and_batch, shrink_plan
from synthseg_lite.model.unet import UNetConfig
from synthseg_lite.training import PlanGuard, peak_memory_gb

# a tiny run of the planned (gpu_memory_gb set) path on small phantoms, CPU
TINY_PLANNED = [
    "experiment=smoke",
    "gpu_memory_gb=1",
    "data.phantoms.n=5",
    "data.phantoms.shape=[64,64,64]",
    "synth.voxel_mm=2.0",
    "synth.patch_shape=[32,32,32]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "model.image_every_n_steps=0",
    "callbacks=none",
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


# ------------------------------------------------------------------------------- the planner


def test_shrink_plan_cuts_a_grown_batch_then_the_patch_then_batch_one() -> None:
    unet = UNetConfig(n_stages=4, base_features=8, max_features=64)
    maps, k = (160, 192, 160), 4
    plan = plan_patch_and_batch(4.0, unet, k, [64, 64, 64], maps, 1.0)
    assert plan.patch_size == (64, 64, 64) and plan.batch_size > 3  # the budget grew the batch
    seen = [plan]
    while True:
        try:
            seen.append(shrink_plan(seen[-1], unet, k, maps, 1.0))
        except ValueError as exc:
            assert "smallest plan" in str(exc)
            break
    est = [estimate_memory_gb(unet, p.patch_size, p.batch_size, k, maps) for p in seen]
    assert all(b < a for a, b in zip(est, est[1:]))  # every fallback estimates less
    batches = [p.batch_size for p in seen]
    patches = [math.prod(p.patch_size) for p in seen]
    first_patch_cut = next(i for i, p in enumerate(patches) if p < patches[0])
    assert batches[first_patch_cut - 1] == 2 and batches[1] == batches[0] - 1  # batch first
    assert all(p.patch_size == (64, 64, 64) for p in seen[:first_patch_cut])
    # then one divisor step of one axis per failure, at batch 2, down to the minimum patch
    for a, b in zip(seen[first_patch_cut - 1 : -1], seen[first_patch_cut:]):
        diff = [x - y for x, y in zip(a.patch_size, b.patch_size)]
        assert sorted(diff) in ([0, 0, unet.divisor], [0, 0, 0])
    assert seen[-1].patch_size == (2 * unet.divisor,) * 3 and seen[-1].batch_size == 1
    assert seen[-2].patch_size == (2 * unet.divisor,) * 3 and seen[-2].batch_size == 2


def test_peak_memory_on_cpu_is_the_process_rss() -> None:
    peak = peak_memory_gb("cpu")
    assert set(peak) == {"rss"} and 0.01 < peak["rss"] < 1024


# --------------------------------------------------------------------- the first-step fallback


def test_first_step_out_of_memory_falls_back_to_a_smaller_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A simulated OOM for patches above 28x32x32 voxels: the run goes on with the planner's next
    smaller plan, logs it in one line, and records it (plan.json, checkpoint config, TensorBoard)."""
    limit = 28 * 32 * 32
    calls: list[tuple[int, ...]] = []
    real_step = SynthSegModule.training_step

    def step(self, batch, batch_idx):
        calls.append(tuple(batch["image"].shape[2:]))
        if math.prod(batch["image"].shape[2:]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SynthSegModule, "training_step", step)
    cfg = compose([*TINY_PLANNED, f"paths.output_dir={tmp_path}"])
    with caplog.at_level(logging.INFO):
        train_script.run(cfg)
    assert calls[0] == (32, 32, 32) and math.prod(calls[-1]) <= limit
    assert len(calls) == 3  # one failed first step, then the two steps of the run
    lines = [r.getMessage() for r in caplog.records if "out of memory at the first" in r.message]
    assert len(lines) == 1 and "new plan patch" in lines[0]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["patch_size"] == list(calls[-1]) and plan["batch_size"] == 2
    assert plan["gpu_memory_gb"] == 1
    assert [p["patch_size"] for p in plan["out_of_memory_before"]] == [[32, 32, 32]]
    assert "simulated" in plan["out_of_memory_before"][0]["error"]
    assert plan["estimated_gb"] < plan["out_of_memory_before"][0]["estimated_gb"]
    assert plan["measured_peak_gb"]["rss"] > 0
    assert list(cfg.synth.patch_shape) == plan["patch_size"]  # the run's config has the new plan
    (ckpt_path,) = tmp_path.rglob("*.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["hyper_parameters"]["config"]["synth"]["patch_shape"] == plan["patch_size"]
    assert ckpt["hyper_parameters"]["patch_size"] == plan["patch_size"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"memory/estimated_gb", "memory/peak_rss_gb"} <= tags
    (est,) = [e.value for e in ea.Scalars("memory/estimated_gb")]
    assert est == pytest.approx(plan["estimated_gb"])


def test_out_of_memory_after_the_first_step_or_with_explicit_sizes_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = SynthSegModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated, second step)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SynthSegModule, "training_step", step)
    cfg = compose([*TINY_PLANNED, f"paths.output_dir={tmp_path / 'a'}", "logger=none"])
    with pytest.raises(torch.OutOfMemoryError, match="second step"):
        train_script.run(cfg)
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["out_of_memory_before"] == []

    def always(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(SynthSegModule, "training_step", always)
    cfg = compose(
        [*TINY_PLANNED, f"paths.output_dir={tmp_path / 'b'}", "logger=none", "gpu_memory_gb=null"]
    )
    with pytest.raises(torch.OutOfMemoryError):
        train_script.run(cfg)


def test_plan_guard_without_a_budget_records_explicit_sizes(tmp_path: Path) -> None:
    from synthseg_lite.model.planning import Plan

    guard = PlanGuard(Plan((32, 32, 32), 2, float("nan")), path=tmp_path / "plan.json")
    guard._write()
    rec = json.loads((tmp_path / "plan.json").read_text())
    assert rec["estimated_gb"] is None and rec["gpu_memory_gb"] is None
    assert rec["patch_size"] == [32, 32, 32] and rec["batch_size"] == 2
