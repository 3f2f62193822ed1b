"""benchmarks/synthetic_volumes.py's scoring: exact truth gives ratio 1 and Dice 1, a dilated
prediction a ratio above 1, and structures too small in a sample do not count there."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmarks import synthetic_volumes as bench


def _truth() -> np.ndarray:
    truth = np.zeros((20, 20, 20), np.int64)
    truth[4:16, 4:16, 4:16] = 2
    truth[8:12, 8:12, 8:12] = 15  # 64 voxels
    truth[1:3, 1:3, 1:3] = 5  # 8 voxels: below min_voxels
    return truth


def test_exact_prediction_scores_one() -> None:
    truth = _truth()
    out = bench.score([(truth, truth)], {2: "WM", 15: "4th", 5: "horn"}, min_voxels=10)
    assert out["structures"]["4th"] == {"ratio": 1.0, "dice": 1.0, "samples": 1}
    assert out["structures"]["WM"]["ratio"] == 1.0
    assert "horn" not in out["structures"]  # too small to count
    assert out["structure_mean"] == 1.0


def test_dilated_structure_is_over_and_its_neighbour_under() -> None:
    truth = _truth()
    pred = truth.copy()
    pred[ndimage.binary_dilation(truth == 15)] = 15
    out = bench.score([(pred, truth), (truth, truth)], {2: "WM", 15: "4th"}, min_voxels=10)
    fourth = out["structures"]["4th"]
    assert fourth["samples"] == 2
    # one sample 4x4x4 -> a 6x6x6 cross-shaped dilation (64 + 6*16 = 160 voxels), one exact
    assert fourth["ratio"] == pytest.approx((160 / 64 + 1) / 2, abs=1e-3)
    assert fourth["dice"] == pytest.approx((2 * 64 / (160 + 64) + 1) / 2, abs=1e-3)
    assert out["structures"]["WM"]["ratio"] < 1.0
