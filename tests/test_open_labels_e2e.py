"""A non-brain label protocol end to end: train experiment=smoke with data.labels=auto on procedural
nested-shape label maps (6 labels, values up to 1000, two voxel sizes), export synthetic pairs,
segment one with the trained checkpoint, and get the user's own label values back."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.model.artifact import load_model

ROOT = Path(__file__).resolve().parents[1]
VALUES = (5, 17, 40, 99, 300, 1000)  # outer to inner


def nested_shapes(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A 'body' ellipsoid holding a box, two blobs and a core: six labels, nested."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    r = np.array(shape) * rng.uniform(0.36, 0.44, 3)
    out = np.zeros(shape, np.int16)
    out[(((grid - c) / r) ** 2).sum(-1) <= 1] = VALUES[0]
    lo, hi = (c - r * 0.55).astype(int), (c + r * 0.55).astype(int)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = VALUES[1]
    for k, side in ((2, -1), (3, 1)):
        cb = c + side * np.array([r[0] * 0.3, 0, 0])
        out[(((grid - cb) / (r * 0.2)) ** 2).sum(-1) <= 1] = VALUES[k]
    out[(((grid - c) / (r * 0.12)) ** 2).sum(-1) <= 1] = VALUES[4]
    out[(((grid - c - [0, r[1] * 0.35, 0]) / (r * 0.1)) ** 2).sum(-1) <= 1] = VALUES[5]
    return out


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_auto_labels_train_export_segment(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(4):  # 1 mm maps and 2 mm maps (resampled to 1 mm when loaded)
        mm = 1.0 if i % 2 == 0 else 2.0
        shape = (96, 88, 80) if mm == 1.0 else (48, 44, 40)
        nib.save(nib.Nifti1Image(nested_shapes(shape, i), np.diag([mm, mm, mm, 1.0])),
                 maps / f"body_{i}.nii.gz")
    run = tmp_path / "run"
    res = _run("train.py", "experiment=smoke", "data.labels=auto", f"data.label_maps={maps}",
               "fold=all", f"hydra.run.dir={run}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    _, meta = load_model(ckpt)
    assert meta.label_table.target.values == (0, *VALUES)  # the user's values, nothing else
    assert meta.label_table.generation_labels == (0, *VALUES)

    exp = tmp_path / "export"
    res = _run("export.py", f"output={exp}", "n=2", "labels=auto", f"label_maps={maps}",
               "synth.patch_shape=[32,32,32]", "synth.voxel_mm=4.0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lab = np.asarray(nib.load(exp / "labels" / "synth_00000.nii.gz").dataobj)
    assert set(np.unique(lab)) <= {0, *VALUES} and len(np.unique(lab)) >= 4
    assert lab.dtype == np.int16  # 1000 does not fit uint8

    out = tmp_path / "seg"
    res = _run("infer.py", f"input={exp / 'images' / 'synth_00000.nii.gz'}", f"output={out}",
               f"model={ckpt}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    seg = np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj)
    assert seg.shape == lab.shape and set(np.unique(seg)) <= {0, *VALUES}
    with open(out / "volumes.csv") as fh:
        header = next(csv.reader(fh))
    assert all(any(f"label_{v}" in h for h in header) for v in VALUES)
