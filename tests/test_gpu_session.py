"""benchmarks/gpu_session.sh rehearsed on the CPU at tiny sizes: what a GPU lease will run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthseg_lite.inference.predictor import resolve_model
from synthseg_lite.model.artifact import load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _lease(tmp_path: Path, name: str, maps: str, **env: str) -> tuple[Path, str, str]:
    out = tmp_path / name
    out.mkdir()
    full = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "TINY": "1", "PHASES": "train",
            "BUDGET_S": "400", "LABEL_MAPS": maps, "RUNS": str(tmp_path / f"runs_{name}"),
            "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=full, check=False,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train rc=0" in proc.stdout, proc.stdout + (out / "train.log").read_text()
    return out / "structures_gpu.pt", (out / "train.log").read_text(), proc.stdout


def test_3d_lease_and_the_next_one_going_on_from_it(toy_maps: str, tmp_path: Path) -> None:
    first, _, said = _lease(tmp_path, "first", toy_maps, TRAIN="3d", PHASES="probe train")
    probe = json.loads((tmp_path / "first" / "slice_steps.json").read_text().splitlines()[-1])
    assert probe["experiment"] == "structures_3d" and "error" not in probe
    assert f"({probe['steps_per_s']} steps/s)" in said  # the schedule fitted to the probed rate
    meta = load_model(first)[1]
    assert meta.unet.spatial_dims == 3 and meta.unet.in_channels == 1
    assert meta.label_table.target == load_model(resolve_model("structures"))[1].label_table.target
    second, log, said = _lease(tmp_path, "second", toy_maps, TRAIN="3d", INIT=str(first),
                               STEPS_PER_S="3.5")
    assert "(3.5 steps/s)" in said  # no probe: the rate given
    assert f"init_weights: network from {first}" in log
    assert load_model(second)[1].extra["init"] == str(first)


def test_finetune_lease_starts_from_the_shipped_structure_model(
    toy_maps: str, tmp_path: Path
) -> None:
    model, log, _ = _lease(tmp_path, "finetune", toy_maps, TRAIN="finetune")
    shipped = load_model(resolve_model("structures"))[1]
    assert "init_weights: network from structures" in log
    meta = load_model(model)[1]
    assert meta.unet == shipped.unet and meta.slices["context"] == shipped.slices["context"]
