"""benchmarks/slice_steps.py: the structure preset's real training step at several sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import slice_steps


def test_tiny_sizes_on_cpu_give_one_line_each(tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    lines = slice_steps.main(["--device", "cpu", "--tiny", "--slices", "2", "8", "--volumes", "2",
                              "--steps", "2", "--warmup", "1", "--output", str(out)])
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == lines
    assert [(r["slices_per_step"], r["volumes_per_step"]) for r in lines] == [(2, 2), (8, 2)]
    for r in lines:
        assert "error" not in r, r
        assert r["experiment"] == "structures_gpu" and r["patch_size"] == [48, 48, 48]
        assert r["steps"] == 2 and r["s_per_step"] > 0
        assert r["slices_per_s"] == pytest.approx(r["slices_per_step"] / r["s_per_step"], rel=0.01)
        assert 0 < r["synth_share_of_step"] < 1 and all(v > 0 for v in r["losses_first_last"])


def test_3d_preset_at_the_patch_planned_for_a_budget(tmp_path: Path) -> None:
    """structures_3d (gpu_session.sh TRAIN=3d's probe): the planner shrinks the patch to fit."""
    common = ["--device", "cpu", "--tiny", "--experiment", "structures_3d", "--slices", "1",
              "--volumes", "2", "--steps", "2", "--warmup", "0"]
    free, tight = (slice_steps.main(common + extra)[0] for extra in ([], ["--gpu-memory-gb", "0.05"]))
    for r in (free, tight):
        assert "error" not in r, r
        assert r["experiment"] == "structures_3d" and r["volumes_per_step"] == 2
    assert free["patch_size"] == [48, 48, 48]  # the tiny preset's patch, unplanned
    assert all(t < f for t, f in zip(tight["patch_size"], free["patch_size"]))


@pytest.mark.parametrize("bad", [["--slices", "0"], ["--volumes", "0"], ["--steps", "1"],
                                 ["--gpu-memory-gb", "0"]])
def test_bad_sizes_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        slice_steps.parse_args(bad)
    assert info.value.code == 2
