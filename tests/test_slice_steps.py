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


@pytest.mark.parametrize("bad", [["--slices", "0"], ["--volumes", "0"], ["--steps", "1"]])
def test_bad_sizes_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        slice_steps.parse_args(bad)
    assert info.value.code == 2
