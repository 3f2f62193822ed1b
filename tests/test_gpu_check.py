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

from synthseg_lite.commands import train as train_script
from synthseg_lite.model.module import SynthSegModule
from synthseg_lite.training.planning import estimate_memory_gb, plan_patch_and_batch, shrink_plan
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
    ckpt = torch.load(ckpt_path, weights_only=True)
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
    from synthseg_lite.training.planning import Plan

    guard = PlanGuard(Plan((32, 32, 32), 2, float("nan")), path=tmp_path / "plan.json")
    guard._write()
    rec = json.loads((tmp_path / "plan.json").read_text())
    assert rec["estimated_gb"] is None and rec["gpu_memory_gb"] is None
    assert rec["patch_size"] == [32, 32, 32] and rec["batch_size"] == 2


# ------------------------------------------------------------------ benchmarks/gpu_check.py


@pytest.fixture(scope="module")
def gpu_check():
    import importlib

    return importlib.import_module("benchmarks.gpu_check")


def _check_lines(lines: list[dict], device: str) -> None:
    assert [r["part"] for r in lines] == ["generator", "train", "inference", "correctness", "memory"]
    assert not [r["error"] for r in lines if "error" in r]
    gen, train, infer, correct, memory = lines
    assert {tuple(r["patch"]) for r in gen["results"]} == {(48, 48, 48), (32, 32, 32)}
    assert sorted({r["batch_size"] for r in gen["results"]}) == [1, 2, 4, 8]
    assert all(r["samples_per_s"] > 0 for r in gen["results"])
    assert 0 < gen["default_job"]["synth_share_of_step"] < 1
    peak = "peak_allocated_gb" if device.startswith("cuda") else "peak_rss_gb"
    for run in train["runs"]:
        assert run["s_per_step"] > 0 and run["steps"] >= 2 and run["estimated_gb"] > 0
        assert run[peak] > 0
        if device.startswith("cuda"):
            assert run["peak_over_estimate"] > 0
        else:  # the whole process's resident set: no ratio to the training estimate
            assert run["peak_over_estimate"] is None and "whole process" in train["memory"]
        assert math.prod(run["patch_size"]) <= 32**3 and run["batch_size"] >= 1
        assert run["plan_method"] == "measured" and 0 < run["fake_peak_gb"] <= run["gpu_memory_gb"]
    assert infer["seg_shape"] == [64, 64, 64] and infer["seconds_per_scan"] > 0
    assert infer["tta"] == "flip" and infer["window"] == [32, 32, 32]
    assert correct["same_batch"] and correct["loss_decreases"] and correct["ok"]
    assert memory["runs"] and all(r["fake_mib"] > 0 and r["real_mib"] > 0 for r in memory["runs"])
    if not device.startswith("cuda"):  # the fake count against torch.profiler, within 10 %
        from synthseg_lite.inference.precision import amx_bf16

        # bfloat16 emulated (no AMX) allocates float32 scratch no GPU does: float32 runs only
        judged = [r for r in memory["runs"] if amx_bf16() or r["precision"] != "bf16-mixed"]
        assert judged and all(r["within_tolerance"] for r in judged)
    else:  # the real peak above the count is workspace, within the planner's allowance for it
        assert memory["ok"] and all(r["within_allowance"] for r in memory["runs"])
    on_cuda = device.startswith("cuda")  # the CUDA context's memory, outside the allocator
    assert all(("outside_allocator_gb" in r) == on_cuda for r in lines)
    assert all(r["outside_allocator_gb"] > 0 for r in lines if on_cuda)


def test_gpu_check_tiny_runs_every_part_on_cpu(gpu_check, tmp_path: Path) -> None:
    """``--device cpu --tiny`` (one budget and precision here; all of them: the slow test). The
    precision is bf16-mixed where the CPU has bfloat16 tiles (AMX); elsewhere bfloat16 is
    emulated, with float32 scratch memory no GPU allocates, so the fake count is checked in
    float32 (``test_plan_measure.py``)."""
    from synthseg_lite.inference.precision import amx_bf16

    precision = "bf16-mixed" if amx_bf16() else "32-true"
    out = tmp_path / "results" / "gpu.json"
    args = ["--device", "cpu", "--tiny", "--budgets", "0.03", "--precisions", precision]
    lines = gpu_check.main([*args, "--output", str(out)])
    _check_lines(lines, "cpu")
    (run,) = lines[1]["runs"]
    assert run["precision"] == precision and run["gpu_memory_gb"] == 0.03
    batch = 4 if precision == "bf16-mixed" else 2  # measured for 0.03 GB
    assert (run["patch_size"], run["batch_size"]) == ([32, 32, 32], batch)
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == lines


def test_gpu_check_a_failing_part_is_recorded_and_the_next_runs(
    gpu_check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(s):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "generator", broken)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "train", lambda s: {"runs": []})
    out = tmp_path / "gpu.json"
    out.write_text('{"part": "earlier"}\n')
    s = gpu_check.Settings(device="cpu", tiny=True)
    emitted: list[str] = []
    lines = gpu_check.run_parts(s, ["generator", "train"], out, emitted.append)
    assert "illegal memory access" in lines[0]["error"] and lines[1]["runs"] == []
    assert [json.loads(e)["part"] for e in emitted] == ["generator", "train"]
    assert [json.loads(ln)["part"] for ln in out.read_text().splitlines()] == [
        "earlier",
        "generator",
        "train",
    ]  # appended, never overwritten


def test_gpu_check_refuses_bad_arguments(gpu_check) -> None:
    with pytest.raises(ValueError, match="--parts"):
        gpu_check.main(["--device", "cpu", "--parts", "nope"])
    with pytest.raises(ValueError, match="--steps"):
        gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            gpu_check.main(["--device", "cuda"])


@pytest.mark.slow
def test_gpu_check_cli_tiny_every_budget_and_precision(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--output", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    _check_lines(lines, "cpu")
    runs = lines[1]["runs"]
    assert [(r["gpu_memory_gb"], r["precision"]) for r in runs] == [
        (b / 400, p) for b in (12, 8, 24) for p in ("32-true", "bf16-mixed")
    ]
    batches = [r["batch_size"] for r in runs[::2]]  # the measured planner's batch per budget
    assert batches[1] <= batches[0] <= batches[2] and batches[2] > batches[0]
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == lines


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_tiny_on_cuda(gpu_check) -> None:
    _check_lines(gpu_check.main(["--device", "cuda", "--tiny", "--steps", "2"]), "cuda")
