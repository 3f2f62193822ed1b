"""infer.py and evaluate.py as a user runs them (subprocesses), on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A run directory trained by `train.py experiment=smoke` (the README's main job, ~15 s)."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    res = _run("train.py", "experiment=smoke", f"hydra.run.dir={run}", cwd=run.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def _ball(shape=(40, 36, 32), radius=12) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (((idx - np.array(shape) / 2) ** 2).sum(-1) <= radius**2).astype(np.int16)


def test_infer_then_evaluate_on_small_scans(tmp_path, tiny_model):
    scans, refs, cwd = tmp_path / "scans", tmp_path / "refs", tmp_path / "cwd"
    for d in (scans, refs, cwd):
        d.mkdir()
    affine = np.array(
        [[-1.2, 0, 0, 10], [0, 0, -1.0, 20], [0, 1.1, 0, -5], [0, 0, 0, 1]]
    )  # LIA-like
    ball = _ball()
    nib.save(nib.Nifti1Image((ball * 80 + 5).astype(np.float32), affine), str(scans / "s1.nii.gz"))
    nib.save(
        nib.Nifti1Image(ball * 2, affine), str(refs / "s1_seg.nii.gz")
    )  # tissue preset: 2 = WM
    (scans / "broken.nii.gz").write_bytes(b"\x00garbage")

    out = tmp_path / "out"
    res = _run(
        "infer.py",
        f"input={scans}",
        f"output={out}",
        f"model={tiny_model.parent}",
        "tta=flip",
        "progress=false",
        cwd=cwd,
    )
    assert res.returncode == 1, res.stderr  # one scan skipped
    skip_lines = [line for line in res.stderr.splitlines() if "broken.nii.gz" in line]
    assert skip_lines and all("unreadable" in line for line in skip_lines), res.stderr
    seg = nib.load(str(out / "s1_seg.nii.gz"))
    assert seg.shape == ball.shape and np.allclose(seg.affine, affine, atol=1e-4)
    assert (out / "s1_qc.png").stat().st_size > 0 and (out / "volumes.csv").is_file()
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "infer.log").is_file()
    assert list(cwd.iterdir()) == []  # Hydra left nothing in the working directory

    ev = tmp_path / "eval"
    res = _run(
        "evaluate.py", f"pred={out}", f"ref={refs}", "ref_labels=tissue", f"output={ev}", cwd=cwd
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["mean"]) == {"1", "2", "3"}
    for name in ("metrics.csv", "boxplots.png", "confusion.png"):
        assert (ev / name).stat().st_size > 0
    assert list(cwd.iterdir()) == []


def test_cli_argument_errors_are_one_line_with_exit_code_2(tmp_path, tiny_model):
    res = _run("infer.py", f"output={tmp_path / 'o'}", f"model={tiny_model}", cwd=tmp_path)
    assert (
        res.returncode == 2
        and res.stderr.strip() == "error: missing required setting(s): input=..."
    )
    res = _run(
        "evaluate.py",
        f"pred={tmp_path}",
        f"ref={tmp_path}",
        "ref_labels=nope",
        f"output={tmp_path / 'e'}",
        cwd=tmp_path,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "unknown label preset 'nope'" in res.stderr


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real scans not available")
def test_smoke_on_shared_real_scans(tmp_path, smoke_run):
    """train (smoke) -> infer -> evaluate on real IBSR and OASIS scans (values meaningless)."""
    ibsr = REAL / "ibsr" / "IBSR_01" / "IBSR_01.nii.gz"
    oasis = REAL / "oasis_vxm" / "t1.nii.gz"
    out = tmp_path / "out"
    res = _run(
        "infer.py",
        f"input=[{ibsr},{oasis}]",
        f"output={out}",
        f"model={smoke_run}",
        "tta=none",
        "progress=false",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    for scan, name in ((ibsr, "IBSR_01"), (oasis, "t1")):
        ref_img, seg = nib.load(str(scan)), nib.load(str(out / f"{name}_seg.nii.gz"))
        assert seg.shape == ref_img.shape[:3] and np.allclose(seg.affine, ref_img.affine, atol=1e-4)
    res = _run(
        "evaluate.py",
        f"pred={out}",
        f"ref={REAL / 'ibsr'}",
        "ref_labels=ibsr",
        f"output={tmp_path / 'ev'}",
        "surface=false",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["metric_per_case"][0]["case"] == "IBSR_01"
