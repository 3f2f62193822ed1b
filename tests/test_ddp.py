"""Distributed training: 2 CPU processes (gloo) through ``train.py`` and Lightning's launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_digests, write_toy_maps

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_ddp_two_cpu_ranks_draw_different_batches_and_checkpoint_once(tmp_path: Path) -> None:
    maps = write_toy_maps(tmp_path / "maps")
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "experiment=smoke",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"data.label_maps={maps}",
        f"hydra.run.dir={run}",
        "+callbacks.digest._target_=test_training.BatchDigest",
        f"+callbacks.digest.path={tmp_path}/dig",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    t0 = time.time()
    try:  # a hung rendezvous must fail the test, not the CI job
        res = subprocess.run(
            cmd,
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DDP run did not finish in {exc.timeout} s")
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"DDP smoke run: {time.time() - t0:.1f} s")
    r0, r1 = read_digests(tmp_path / "dig", 0), read_digests(tmp_path / "dig", 1)
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == list(range(6))
    assert all(a["digest"] != b["digest"] for a, b in zip(r0, r1))  # each rank its own stream
    assert len({r["digest"] for r in r0}) == 6
    out = res.stdout + res.stderr
    written = [ln for ln in out.splitlines() if "checkpoint written" in ln]
    assert sum("last.ckpt" in ln for ln in written) == 2  # once per epoch, by rank 0 only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
