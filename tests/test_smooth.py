"""Gaussian smoothing of class probabilities (``smooth_sigma_vox``, SynthSeg's posteriors)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthseg_lite.inference import InferenceOptions
from synthseg_lite.inference.smooth import (
    SMOOTH_SIGMA_VOX,
    TRUNCATE,
    default_sigma_vox,
    gaussian_taps,
    smooth_probabilities_,
)
from synthseg_lite.labels import TARGET_PRESETS


def _probs(shape: tuple[int, ...], k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(k, *shape, generator=g, dtype=torch.float64), 0)


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [((9, 8, 10), SMOOTH_SIGMA_VOX), ((7, 1, 5), 0.5), ((9, 8, 10), 1.3), ((2, 3, 9), 1.6)],
)
def test_equals_scipy_gaussian_filter_with_edges_repeated(shape, sigma):
    p = _probs(shape)
    expected = np.stack(
        [ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=TRUNCATE) for c in p.numpy()]
    )
    # a 2D model's sum is not (X, Y, Z)-ordered in memory: the same result on any strides
    q = p.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert q.stride(3) != 1
    smooth_probabilities_(q, sigma)
    np.testing.assert_allclose(q.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(q.sum(0).numpy(), 1.0, atol=1e-12)  # still probabilities


def test_zero_sigma_is_identity_and_bad_sigma_is_refused():
    p = _probs((6, 5, 4))
    before = p.clone()
    assert smooth_probabilities_(p, 0) is p
    assert torch.equal(p, before)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            gaussian_taps(bad)
        with pytest.raises(ValueError, match="smooth_sigma_vox"):
            InferenceOptions(smooth_sigma_vox=bad)
    assert InferenceOptions().smooth_sigma_vox is None  # the model's default:
    assert default_sigma_vox(TARGET_PRESETS["synthseg_fs"]) == SMOOTH_SIGMA_VOX == 0.5  # SynthSeg's
    assert default_sigma_vox(TARGET_PRESETS["tissue"]) == 0.0


def test_taps_are_a_normalised_symmetric_gaussian():
    taps = gaussian_taps(0.5)
    assert len(taps) == 3 and sum(taps) == pytest.approx(1.0)  # radius 1 at SynthSeg's 0.5
    assert taps[0] == taps[2] < taps[1]
    assert taps[0] / taps[1] == pytest.approx(np.exp(-2.0))
    assert len(gaussian_taps(1.3)) == 2 * int(TRUNCATE * 1.3 + 0.5) + 1


def test_left_stays_left_and_a_flat_boundary_stays_put():
    """Smoothing commutes with a flip, and a plane between two classes keeps every voxel's
    most probable class."""
    p = _probs((8, 9, 7), k=4, seed=1)
    flipped = p.flip(1).clone()
    smooth_probabilities_(p, 0.5)
    smooth_probabilities_(flipped, 0.5)
    torch.testing.assert_close(flipped, p.flip(1))

    plane = torch.zeros(2, 10, 6, 6, dtype=torch.float64)
    plane[0, :5], plane[1, 5:] = 0.9, 0.9
    plane[0, 5:], plane[1, :5] = 0.1, 0.1
    labels = plane.argmax(0)
    smooth_probabilities_(plane, 0.5)
    assert torch.equal(plane.argmax(0), labels)


def test_a_one_voxel_speck_goes_and_a_thin_structure_stays():
    """The noise it removes: one voxel where another class barely wins. What it keeps: a
    structure two voxels thick that its probabilities agree on."""
    p = torch.zeros(3, 12, 12, 12, dtype=torch.float64)
    p[0] = 1.0
    p[:, 6, 6, 6] = torch.tensor([0.45, 0.55, 0.0])  # a speck of class 1 in class 0
    p[:, 2:4, 1:11, 1:11] = torch.tensor([0.1, 0.0, 0.9])[:, None, None, None]  # a 2-voxel sheet
    smooth_probabilities_(p, 0.5)
    labels = p.argmax(0)
    assert labels[6, 6, 6] == 0
    assert (labels[2:4, 1:11, 1:11] == 2).all() and (labels == 2).sum() == 2 * 10 * 10
