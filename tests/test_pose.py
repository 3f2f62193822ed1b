"""Head pose (synthseg_lite.inference.pose): the rotation read from a segmentation's structures,
and (synthseg_lite.inference.upright) the second pass in the training maps' mean pose."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synthseg_lite.inference import InferenceOptions
from synthseg_lite.inference.pose import (
    POSE_ATLAS,
    estimate_pose,
    kabsch,
    pose_atlas,
)
from synthseg_lite.inference.upright import segment_in_pose, turn
from synthseg_lite.labels.presets import TARGET_PRESETS

SYNTHSEG = TARGET_PRESETS["synthseg"]
SPACING = 2.0  # mm: the atlas's structures as 6 mm balls on a coarse grid keep the test small
SHAPE = (44, 48, 42)
LABEL_MAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "label_maps"


def _labels(rotation: np.ndarray) -> np.ndarray:
    """(X, Y, Z) class indices of the synthseg target: a ball of 6 mm at each atlas centroid
    turned by ``rotation`` about the grid's centre (nearest centroid where two balls meet)."""
    centre = (np.asarray(SHAPE) - 1) / 2 * SPACING
    classes = [k for k, v in enumerate(SYNTHSEG.values) if v in POSE_ATLAS]
    points = np.array([POSE_ATLAS[SYNTHSEG.values[k]] for k in classes]) @ rotation.T + centre
    grid = np.stack(np.meshgrid(*[np.arange(n) * SPACING for n in SHAPE], indexing="ij"), -1)
    dist = np.linalg.norm(grid[..., None, :] - points, axis=-1)  # (X, Y, Z, N)
    nearest = dist.argmin(-1)
    return np.where(dist.min(-1) <= 6.0, np.asarray(classes)[nearest], 0)


def _one_hot(labels: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(labels, dtype=torch.long)
    return torch.nn.functional.one_hot(t, SYNTHSEG.n_classes).permute(3, 0, 1, 2).float()


def _image(labels: np.ndarray) -> torch.Tensor:
    """(1, 1, X, Y, Z) image whose intensity is the class index / K."""
    return torch.as_tensor(labels / SYNTHSEG.n_classes, dtype=torch.float32)[None, None]


def _network(image: torch.Tensor) -> torch.Tensor:
    """A 'network' that reads the class from the intensity, voxel by voxel: (K, X, Y, Z); an
    intensity off every class's level (a blend at an edge) is background."""
    level = image[0, 0] * SYNTHSEG.n_classes
    k = torch.round(level).long().clamp(0, SYNTHSEG.n_classes - 1)
    k[(level - k).abs() > 0.02] = 0
    return torch.nn.functional.one_hot(k, SYNTHSEG.n_classes).permute(3, 0, 1, 2).float()


def _interior(labels: np.ndarray) -> np.ndarray:
    """Voxels whose 3 x 3 x 3 neighbourhood is one structure."""
    from scipy import ndimage

    lo = ndimage.minimum_filter(labels, 3)
    return (lo == ndimage.maximum_filter(labels, 3)) & (labels > 0)


def test_kabsch_recovers_a_rotation_and_never_mirrors():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(12, 3)) * 20
    r = Rotation.from_euler("xyz", [25, -10, 40], degrees=True).as_matrix()
    q = p @ r.T + [5.0, -3.0, 8.0]
    np.testing.assert_allclose(kabsch(p, q), r, atol=1e-9)
    mirrored = p * [-1, 1, 1]  # the best fit of a mirror image is still a proper rotation
    assert np.linalg.det(kabsch(p, mirrored)) == pytest.approx(1.0)


@pytest.mark.parametrize("euler", [(0, 0, 0), (25, 0, 0), (0, -20, 0), (12, 8, -15)])
def test_the_pose_of_turned_structures_is_the_turn(euler):
    turned = Rotation.from_euler("xyz", euler, degrees=True).as_matrix()
    pose = estimate_pose(_one_hot(_labels(turned)), SYNTHSEG, SPACING)
    # balls that meet are split between two structures, and some fall under the smallest volume
    assert pose is not None and pose.n_structures >= len(POSE_ATLAS) - 3
    # the pose takes the scan back to the atlas: the inverse of the turn
    error = Rotation.from_matrix(pose.rotation @ turned).magnitude()
    assert np.degrees(error) < 1.5
    assert pose.degrees == pytest.approx(np.degrees(Rotation.from_matrix(turned).magnitude()),
                                         abs=1.5)
    assert pose.rms_mm < 1.0
    np.testing.assert_allclose(pose.euler, euler, atol=1.5)  # the tilt, as it was applied


def test_a_haze_of_probability_over_the_head_does_not_move_the_pose():
    """A network leaves a little probability of every structure outside the brain. Summed over a
    head's face and neck, that haze outweighed the small structures and spoiled the pose (the
    pydeface mean head pitched 25 degrees read 18 at 18 mm RMS): only each structure's confident
    voxels count."""
    turned = Rotation.from_euler("xyz", (20, -10, 5), degrees=True).as_matrix()
    probs = _one_hot(_labels(turned))
    haze = torch.zeros(SHAPE, dtype=torch.bool)
    haze[:, 24:, :16] = True  # in front and below: the face and the neck
    haze &= probs[0] > 0.5
    share = np.random.default_rng(0).dirichlet(np.ones(SYNTHSEG.n_classes - 1)) * 0.2
    probs[1:, haze] = torch.as_tensor(share, dtype=torch.float32)[:, None]
    probs[0, haze] = 0.8
    pose = estimate_pose(probs, SYNTHSEG, SPACING)
    assert pose is not None and pose.rms_mm < 1.0
    assert np.degrees(Rotation.from_matrix(pose.rotation @ turned).magnitude()) < 1.5


def test_no_pose_without_structures_or_for_a_tissue_model():
    tissue = TARGET_PRESETS["tissue"]
    probs = torch.rand(tissue.n_classes, 16, 16, 16)
    assert estimate_pose(probs, tissue, 1.0) is None
    empty = _one_hot(np.zeros(SHAPE, np.int64))
    assert estimate_pose(empty, SYNTHSEG, SPACING) is None
    # a scrambled segmentation (each structure somewhere else) does not pass for a pose
    rng = np.random.default_rng(1)
    values = [v for v in SYNTHSEG.values if v in POSE_ATLAS]
    scrambled = dict(zip(values, rng.permutation([POSE_ATLAS[v] for v in values])))
    assert estimate_pose(_one_hot(_labels(np.eye(3))), SYNTHSEG, SPACING, scrambled) is None


def test_turn_by_identity_is_identity_and_a_quarter_turn_is_exact():
    x = torch.rand(1, 2, 9, 11, 7)
    assert torch.allclose(turn(x, np.eye(3), x.shape[2:]), x, atol=1e-5)
    quarter = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    y = turn(x, quarter, (9, 7, 11))
    assert torch.allclose(turn(y, quarter.T, x.shape[2:]), x, atol=1e-5)


def test_a_tilted_scan_is_segmented_upright_and_turned_back():
    """A quarter turn of roll: the network sees the upright brain, left stays left, and the
    result on the scan's grid is the first pass's inside the structures."""
    tilted = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    labels = _labels(tilted)
    seen = []

    def network(image):
        seen.append(image)
        return _network(image)

    image = _image(labels)
    first = _network(image)
    probs, pose = segment_in_pose(network, image, first.clone(), SYNTHSEG, SPACING, 10.0)
    assert pose is not None and pose.degrees == pytest.approx(90, abs=1)
    assert len(seen) == 1  # one second pass
    upright = estimate_pose(_network(seen[0]), SYNTHSEG, SPACING)
    assert upright is not None and upright.degrees < 5.0  # (the edges blur the balls)
    interior = torch.as_tensor(_interior(labels))
    agree = (probs.argmax(0) == first.argmax(0))[interior].float().mean()
    assert interior.sum() > 200 and agree > 0.99
    torch.testing.assert_close(probs.sum(0), torch.ones(SHAPE))


def test_a_reading_short_of_the_tilt_is_completed_by_the_upright_pass(monkeypatch):
    """A strong tilt spoils the first pass, and the pose read from it falls short (OASIS turned
    45 degrees of yaw read 21): the upright pass is read again and the scan turned by both."""
    from synthseg_lite.inference import upright as module

    tilted = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    labels = _labels(tilted)
    real = module.estimate_pose
    readings = [module.Pose(Rotation.from_euler("y", -45, degrees=True).as_matrix(), 3.0, 31)]
    monkeypatch.setattr(
        module, "estimate_pose", lambda *a, **k: readings.pop() if readings else real(*a, **k)
    )
    seen = []
    image = _image(labels)
    first = _network(image)
    probs, pose = segment_in_pose(
        lambda im: seen.append(im) or _network(im), image, first.clone(), SYNTHSEG, SPACING, 15.0
    )
    assert len(seen) == 2 and pose.upright  # half way, then the rest
    assert np.degrees(Rotation.from_matrix(pose.rotation @ tilted).magnitude()) < 3.0
    assert real(_network(seen[1]), SYNTHSEG, SPACING).degrees < 5.0
    interior = torch.as_tensor(_interior(labels))
    assert (probs.argmax(0) == first.argmax(0))[interior].float().mean() > 0.99


def test_a_scan_is_turned_at_most_max_turns_times(monkeypatch):
    from synthseg_lite.inference import upright as module

    labels = _labels(np.eye(3))
    tilt = module.Pose(Rotation.from_euler("x", 20, degrees=True).as_matrix(), 3.0, 31)
    monkeypatch.setattr(module, "estimate_pose", lambda *a, **k: tilt)  # never upright
    seen = []
    segment_in_pose(lambda im: seen.append(im) or _network(im), _image(labels),
                    _network(_image(labels)), SYNTHSEG, SPACING, 15.0)
    assert len(seen) == module.MAX_TURNS == 2


@pytest.mark.parametrize("max_deg", [None, 30.0])
def test_a_scan_within_max_deg_is_left_as_it_lies(max_deg):
    labels = _labels(Rotation.from_euler("x", 20, degrees=True).as_matrix())
    calls = []
    first = _one_hot(labels)
    probs, pose = segment_in_pose(
        lambda im: calls.append(im) or _network(im), _image(labels), first, SYNTHSEG, SPACING,
        max_deg,
    )
    assert probs is first and not calls
    assert (pose is None) == (max_deg is None)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_pose_max_deg_must_be_an_angle(bad):
    with pytest.raises(ValueError, match="pose_max_deg"):
        InferenceOptions(pose_max_deg=bad)


@pytest.mark.skipif(not LABEL_MAPS.is_dir(), reason="shared training label maps absent")
def test_the_atlas_is_the_training_maps_mean_pose():
    atlas = pose_atlas(sorted(glob.glob(str(LABEL_MAPS / "*.nii.gz"))))
    assert atlas.keys() == POSE_ATLAS.keys()
    np.testing.assert_allclose([atlas[v] for v in atlas], [POSE_ATLAS[v] for v in atlas],
                               atol=0.051)


def test_a_brain_cut_by_the_field_of_view_is_left_as_it_lies():
    """A tilted brain whose lowest 16 mm the field of view cut off: its pose is read and
    reported, but the scan is not turned (a cut oblique to the slices is one the network never
    saw: on OASIS it cost 0.07 of Dice)."""
    labels = np.pad(_labels(Rotation.from_euler("x", 30, degrees=True).as_matrix()), 4)
    whole = estimate_pose(_one_hot(labels), SYNTHSEG, SPACING)
    assert whole is not None and not whole.cut
    cut = labels[:, :, 12:]
    calls = []
    first = _one_hot(cut)
    probs, pose = segment_in_pose(
        lambda im: calls.append(im) or _network(im), _image(cut), first, SYNTHSEG, SPACING, 15.0
    )
    assert probs is first and not calls
    assert pose is not None and pose.cut and pose.degrees > 15
    record = pose.record()
    assert record["cut_by_field_of_view"] and not record["segmented_upright"]


@pytest.mark.parametrize("face", range(6))
def test_the_cut_side_is_the_face_of_the_ras_grid_the_brain_lies_on(face):
    """A ball of brain pushed through one face of a RAS grid is cut on that side (axis 0 runs
    left to right, 1 posterior to anterior, 2 inferior to superior); one that only touches a
    face over less than CUT_MM2, or lies inside, is not cut."""
    from synthseg_lite.inference.pose import FACES, cut_side

    axis, end = divmod(face, 2)
    idx = torch.stack(torch.meshgrid(*[torch.arange(40.0)] * 3, indexing="ij"))
    centre = torch.full((3, 1, 1, 1), 19.5)
    centre[axis] = 37.0 if end else 2.0
    ball = ((idx - centre) ** 2).sum(0) < 12.0**2
    assert cut_side(ball, 1.0) == FACES[face]
    assert cut_side(ball, 0.1) == ""  # the same voxels at 0.1 mm: 4.4 mm^2 on that face
    assert cut_side(((idx - 19.5) ** 2).sum(0) < 15.0**2, 1.0) == ""
    others = [f != face for f in range(6)]  # that face is not the field of view's edge
    assert cut_side(ball, 1.0, others) == ""


@pytest.mark.parametrize("fits", [True, False])
def test_a_rough_reading_turns_the_scan_only_if_the_upright_pass_fits_better(monkeypatch, fits):
    """A first pass a strong tilt spoiled gives a rough reading (RMS over MAX_RMS_MM): the scan
    is turned by it, and the upright pass is kept only if its own reading fits the atlas within
    MAX_RMS_MM; otherwise the first pass stands (a spurious reading turns nothing)."""
    from synthseg_lite.inference import upright as module

    turned = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    labels = _labels(turned)
    rough = module.Pose(turned.T, 12.0, 31)
    second = module.Pose(np.eye(3), 3.0, 31)
    readings = iter([rough, second if fits else None])
    monkeypatch.setattr(module, "estimate_pose", lambda *a, **k: next(readings))
    first = _network(_image(labels))
    probs, pose = segment_in_pose(_network, _image(labels), first, SYNTHSEG, SPACING, 15.0)
    assert pose.upright == fits and pose.record()["segmented_upright"] == fits
    assert (probs is first) != fits
