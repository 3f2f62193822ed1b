"""Intensity refinement of network probabilities (``refine=gmm``)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthseg_lite.inference import InferenceOptions
from synthseg_lite.inference.refine import (
    fit_intensities,
    guard_voxels,
    interior,
    interior_means,
    out_of_reach,
    refine_with_intensities,
)
from synthseg_lite.labels import TARGET_PRESETS


def _scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 24^3 'brain': tissue (class 1, intensity 0.6) holding a large fluid compartment
    (class 2, 0.1) and a small one (class 3, 0.1: the same fluid), in a background of 0, with
    noise of SD 0.03. The prior over-segments both compartments: class 2 by a hesitant one-voxel
    rim (p 0.6), class 3 by a one-voxel rim into the tissue (p 0.7, 4.5x its volume).

    Returns (probs (4, X, Y, Z) float32, image (X, Y, Z) float32, truth (X, Y, Z) int64)."""
    g = torch.Generator().manual_seed(seed)
    n = 24
    truth = torch.zeros(n, n, n, dtype=torch.long)
    truth[4:20, 4:20, 4:20] = 1
    truth[6:18, 6:12, 6:18] = 2
    truth[8:12, 15:17, 8:12] = 3
    image = torch.tensor([0.0, 0.6, 0.1, 0.1])[truth] + 0.03 * torch.randn(truth.shape, generator=g)
    logits = 6.0 * torch.nn.functional.one_hot(truth, 4).permute(3, 0, 1, 2).float()
    rim2 = torch.zeros_like(truth, dtype=torch.bool)
    rim2[5:19, 5:13, 5:19] = True
    rim2 &= truth == 1
    rim3 = torch.zeros_like(rim2)
    rim3[7:13, 14:18, 7:13] = True
    rim3 &= truth == 1
    logits[1][rim2 | rim3] = 0.0
    logits[2][rim2] = float(np.log(0.6 / 0.4))
    logits[3][rim3] = float(np.log(0.7 / 0.3))
    return torch.softmax(logits, 0), image, truth


def _dice(pred: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    a, b = pred == k, truth == k
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_refinement_follows_the_scans_intensities_where_the_prior_over_segments():
    probs, image, truth = _scene()
    before = probs.argmax(0)
    after = refine_with_intensities(probs.clone(), image, shared=[[2, 3]]).argmax(0)
    assert _dice(before, truth, 2) < 0.9 and _dice(before, truth, 3) < 0.4
    assert _dice(after, truth, 2) > 0.99 and _dice(after, truth, 3) > 0.95
    assert _dice(after, truth, 1) > _dice(before, truth, 1)


def test_a_small_compartment_needs_the_shared_fluid_model():
    """Alone, the small compartment's Gaussian is fitted mostly to its own tissue-bright rim and
    keeps it; sharing the large compartment's (one fluid) removes the rim."""
    probs, image, truth = _scene()
    alone = refine_with_intensities(probs.clone(), image).argmax(0)
    shared = refine_with_intensities(probs.clone(), image, shared=[[2, 3]]).argmax(0)
    assert _dice(alone, truth, 3) < 0.8 and _dice(shared, truth, 3) > 0.95
    with pytest.raises(ValueError, match="foreground"):
        refine_with_intensities(probs.clone(), image, shared=[[0, 2]])


def test_probabilities_stay_normalised_and_the_background_is_kept():
    probs, image, _ = _scene()
    out = refine_with_intensities(probs.clone(), image)
    torch.testing.assert_close(out.sum(0), torch.ones_like(out[0]))
    torch.testing.assert_close(out[0], probs[0])
    assert (out >= 0).all()


def test_an_image_without_contrast_leaves_the_probabilities_unchanged():
    probs, image, truth = _scene()
    flat = torch.full_like(image, 0.5)
    torch.testing.assert_close(refine_with_intensities(probs.clone(), flat, [[2, 3]]), probs)


def test_inverted_or_rescaled_contrast_gives_the_same_result():
    """The Gaussians are fitted per scan: an affine intensity change is invisible to them (up to
    the 1/1023 intensity levels the likelihoods are tabulated on)."""
    probs, image, _ = _scene(1)
    image = image.clamp(0, 1)
    ref = refine_with_intensities(probs.clone(), image, [[2, 3]])
    for changed in (1 - image, 0.5 * image + 0.25):
        out = refine_with_intensities(probs.clone(), changed, [[2, 3]])
        torch.testing.assert_close(out, ref, atol=0.02, rtol=0)
        assert (out.argmax(0) == ref.argmax(0)).float().mean() > 0.999


def test_strided_probabilities_are_refined_like_contiguous_ones():
    probs, image, _ = _scene(2)
    ref = refine_with_intensities(probs.clone(), image)
    permuted = probs.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # Z innermost no more
    assert not permuted.is_contiguous()
    torch.testing.assert_close(refine_with_intensities(permuted, image), ref)


def test_shape_mismatch_and_bad_option_are_refused():
    probs, image, _ = _scene()
    with pytest.raises(ValueError, match="share a grid"):
        refine_with_intensities(probs, image[:-1])
    with pytest.raises(ValueError, match="refine must be one of"):
        InferenceOptions(refine="em")


def test_a_two_class_model_is_left_as_it_is():
    probs, image, truth = _scene()
    two = torch.stack([probs[0], 1 - probs[0]])
    np.testing.assert_array_equal(refine_with_intensities(two.clone(), image).numpy(), two.numpy())


def test_interior_is_every_class_eroded_by_its_face_neighbours():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (6, 7, 5), generator=g)
    labels[1:5, 1:6, 1:4] = 1  # a block with an interior
    probs = torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()
    faces = ndimage.generate_binary_structure(3, 1)
    expected = np.zeros(labels.shape, bool)
    for k in range(3):
        # a neighbour outside the grid agrees: erosion with border_value=1
        expected |= ndimage.binary_erosion(labels.numpy() == k, faces, border_value=1)
    assert np.array_equal(interior(probs).numpy(), expected)
    assert interior(probs)[2:4, 2:5, 2].all()


def test_a_partial_volume_wall_does_not_pull_the_mean():
    """A fluid compartment (0.1) whose one-voxel wall is half tissue (0.35), labelled fluid as a
    rater would: its Gaussian sits at the fluid's intensity, not at the labels' average (about
    0.2), and is wide enough to hold the wall; with too small an interior, the labels' mean."""
    g = torch.Generator().manual_seed(1)
    n = 24
    truth = torch.zeros(n, n, n, dtype=torch.long)
    truth[2:22, 2:22, 2:22] = 1
    truth[6:18, 6:14, 6:18] = 2
    wall = (truth == 2) & ~torch.from_numpy(
        ndimage.binary_erosion((truth == 2).numpy(), ndimage.generate_binary_structure(3, 1))
    )
    image = torch.tensor([0.0, 0.6, 0.1])[truth] + 0.02 * torch.randn(truth.shape, generator=g)
    image[wall] += 0.25
    probs = torch.nn.functional.one_hot(truth, 3).permute(3, 0, 1, 2).float()
    mu, var = fit_intensities(probs, image, step=1)  # 600 interior voxels
    labelled = float(image[truth == 2].mean())
    assert labelled > 0.18
    assert abs(float(mu[1]) - 0.1) < 0.01 and abs(float(mu[0]) - 0.6) < 0.01
    assert float(var[1]) > 0.1**2  # the wall is 0.25 away: the spread keeps it
    mu, _ = fit_intensities(probs, image, step=2)  # 75 interior voxels in the sample
    assert abs(float(mu[1]) - labelled) < 0.01
    mu, _ = fit_intensities(probs, image, step=1, interior_mean=False)
    assert abs(float(mu[1]) - labelled) < 0.01


def test_interior_means_for_structures_not_for_tissue_classes():
    assert interior_means(TARGET_PRESETS["synthseg"])
    assert not interior_means(TARGET_PRESETS["tissue"])
    assert not interior_means(TARGET_PRESETS["tissue_ventricular"])


def test_interior_takes_the_first_class_of_a_tie_as_argmax_does():
    probs = torch.full((3, 4, 4, 4), 1 / 3)
    probs[2, 0, 0, 0] = 0.5  # one voxel of class 2; elsewhere a three-way tie -> class 0
    inner = interior(probs)
    assert not inner[0, 0, 0] and not inner[1, 0, 0] and not inner[0, 1, 0]
    assert inner[2:, 2:, 2:].all() and int((~inner).sum()) == 4


def test_out_of_reach_is_a_city_block_distance_per_class():
    """Against scipy: a voxel's new class is out of reach where its city-block distance to the
    reference's voxels of that class exceeds the steps."""
    g = torch.Generator().manual_seed(4)
    reference = torch.zeros(12, 11, 10, dtype=torch.uint8)
    reference[2:5, 3:6, 2:4] = 1
    reference[8:10, 1:9, 5:9] = 2
    label = torch.randint(0, 3, reference.shape, generator=g).to(torch.uint8)
    for steps in (1, 2, 3):
        expected = np.zeros(reference.shape, bool)
        for k in range(3):
            far = ndimage.distance_transform_cdt(reference.numpy() != k, metric="taxicab")
            expected |= (label.numpy() == k) & (far > steps)
        got = np.zeros(reference.shape, bool)
        points = out_of_reach(label, reference, steps).numpy()
        got[tuple(points.T)] = True
        assert np.array_equal(got, expected) and expected.any()
    assert len(out_of_reach(reference, reference, 1)) == 0


def test_the_guard_keeps_the_network_where_intensities_alone_would_add_a_structure():
    """A patch of fluid-bright voxels inside the tissue, 4+ voxels from the compartment, where the
    network is 99 % sure of tissue, 5 voxels from the nearest fluid: unguarded, the intensities make
    it fluid; with a 2-voxel
    guard it keeps the network's probabilities exactly, while the compartment's rim, within
    reach, is refined as before."""
    probs, image, truth = _scene()
    image = image.clone()
    image[14:16, 16:18, 14:16] = 0.1  # tissue by the prior; 5 voxels from class 2, 6 from class 3
    free = refine_with_intensities(probs.clone(), image, [[2, 3]])
    guarded = refine_with_intensities(probs.clone(), image, [[2, 3]], guard=2)
    patch = (slice(None), slice(14, 16), slice(16, 18), slice(14, 16))
    assert (free[patch].argmax(0) >= 2).all()
    torch.testing.assert_close(guarded[patch], probs[patch])
    rest = torch.ones_like(truth, dtype=torch.bool)
    rest[patch[1:]] = False
    assert (guarded.argmax(0)[rest] == free.argmax(0)[rest]).all()
    assert _dice(guarded.argmax(0), truth, 3) > 0.95
    torch.testing.assert_close(guarded.sum(0), torch.ones_like(guarded[0]))


def test_guard_reach_in_voxels_of_the_models_grid():
    assert [guard_voxels(mm) for mm in (1.0, 1.5, 5.0)] == [3, 2, 1]
