"""benchmarks/synthetic_volumes.py's scoring of ``evaluate.py mode=structures`` summaries: exact
truth gives ratio 1 and Dice 1, a dilated prediction a ratio above 1, and structures too small in a
sample do not count there."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmarks import synthetic_volumes as bench
from synthseg_lite.evaluation.structure_metrics import evaluate_structures


def _truth() -> np.ndarray:
    truth = np.zeros((20, 20, 20), np.int32)
    truth[4:16, 4:16, 4:16] = 2
    truth[8:12, 8:12, 8:12] = 15  # 64 voxels
    truth[1:3, 1:3, 1:3] = 5  # 8 voxels: below min_mm3
    return truth


def _summary(pairs: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path) -> dict:
    files = []
    for i, (pred, truth) in enumerate(pairs):
        p, t = tmp_path / f"p{i}.nii.gz", tmp_path / f"t{i}.nii.gz"
        nib.save(nib.Nifti1Image(pred.astype(np.int32), np.eye(4)), str(p))
        nib.save(nib.Nifti1Image(truth.astype(np.int32), np.eye(4)), str(t))
        files.append((f"case{i}", p, t))
    return evaluate_structures(files, surface=False)


def test_exact_prediction_scores_one(tmp_path: Path) -> None:
    truth = _truth()
    out = bench.score(_summary([(truth, truth)], tmp_path), min_mm3=10)
    wm, fourth = "Left-Cerebral-White-Matter", "4th-Ventricle"
    assert out["structures"][fourth] == {"ratio": 1.0, "dice": 1.0, "samples": 1}
    assert out["structures"][wm]["ratio"] == 1.0
    assert "Left-Inf-Lat-Vent" not in out["structures"]  # too small to count
    assert set(out["structures"]) == {wm, fourth}
    assert out["structure_mean"] == 1.0


def test_dilated_structure_is_over_and_its_neighbour_under(tmp_path: Path) -> None:
    truth = _truth()
    pred = truth.copy()
    pred[ndimage.binary_dilation(truth == 15)] = 15
    out = bench.score(_summary([(pred, truth), (truth, truth)], tmp_path), min_mm3=10)
    fourth = out["structures"]["4th-Ventricle"]
    assert fourth["samples"] == 2
    # one sample 4x4x4 -> a 6x6x6 cross-shaped dilation (64 + 6*16 = 160 voxels), one exact
    assert fourth["ratio"] == pytest.approx((160 / 64 + 1) / 2, abs=1e-3)
    assert fourth["dice"] == pytest.approx((2 * 64 / (160 + 64) + 1) / 2, abs=1e-3)
    assert out["structures"]["Left-Cerebral-White-Matter"]["ratio"] < 1.0
