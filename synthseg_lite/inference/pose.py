"""Head pose: a brain tilted beyond the poses the model was trained on is segmented again in the
training maps' mean pose.

The structure model is a 2.5D network: it sees slices, and a slice of a tilted head is a slice
it has not been trained on. The 20 training maps are in their scanners' poses, which differ by up
to 34 degrees of pitch (nodding) and 8 of roll and yaw; the generator rotates them by up to 15
more. On the OASIS T1 turned in its voxel grid (the header unchanged: a head tilted in the
scanner), the shipped model lost 0.02 of mean Dice at 10 degrees more pitch, 0.07 at 30 and 0.12
at 30 degrees of roll; segmented again in the mean pose, each of these came back to 0.833-0.836
(0.841 as it lies; ``benchmarks/tilt.py``, ``docs/structures.md``, "Tilted heads").

The pose is read from the first pass's own segmentation, as a registration to landmarks would read
it: the centroid of each structure (its probability-weighted centre, mm) is matched to
:data:`POSE_ATLAS`, the same centroids in the training maps' mean pose, by the rotation that best
aligns the two point sets (Kabsch, after centring; a proper rotation, so left stays left). A
structure far from where the fit puts it (a cut field of view, a failed structure) is dropped and
the rotation fitted again. A fit within :data:`MAX_RMS_MM` is trusted; one within
:data:`ROUGH_RMS_MM` is a rough reading (a strong tilt spoils the first pass), which turns the scan
only if the upright pass then fits within :data:`MAX_RMS_MM`. When the rotation is larger than
``max_deg`` the scan, on the network's grid, is turned by it into a grid that holds the first
pass's brain (and 8 mm around it), segmented again, and the probabilities are turned back onto the
first grid (trilinear). A scan within ``max_deg`` is left as the first pass has it: turning costs
an interpolation of the image and a second set of network passes, and near the training poses it
gains nothing (OASIS turned 11 degrees from the mean pose: 0.835 as it lies, 0.834 upright; 19
degrees: 0.821 and 0.834). Nor is a brain that the field of view cuts (:data:`CUT_MM2`).

Only targets with at least :data:`MIN_STRUCTURES` of the atlas's structures have a pose (the
structure models); a tissue model (GM, WM, CSF) is left as it is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthseg_lite.labels import TargetPreset
from synthseg_lite.labels.atlas import POSE_ATLAS

__all__ = [
    "MIN_STRUCTURES",
    "POSE_ATLAS",
    "POSE_MAX_DEG",
    "Pose",
    "estimate_pose",
    "kabsch",
    "pose_atlas",
    "segment_in_pose",
    "soft_centroids",
    "turn",
]

log = logging.getLogger(__name__)

#: Default largest tilt (degrees) from the training maps' mean pose that is segmented as it
#: lies: the training maps span -12 to +22 degrees of pitch around their mean pose and 4 of roll
#: and yaw; turning OASIS back gained nothing 11 degrees from it and 0.013 of Dice at 19.
POSE_MAX_DEG = 15.0

#: Fewest atlas structures (each at least :data:`MIN_VOLUME_MM3`) that a pose is read from.
MIN_STRUCTURES = 8

#: Smallest structure volume (mm^3, probability-weighted) whose centroid is used.
MIN_VOLUME_MM3 = 100.0

#: A structure whose centroid lies more than this many mm, and more than 3x the median, from
#: where the fitted rotation puts it is dropped and the rotation fitted again.
OUTLIER_MM = 6.0

#: Brain (mm^2, probability of background < 0.5) on a face of the network's grid above which the
#: field of view cuts the brain. The grid is the scan's non-zero voxels and 4 voxels around them
#: (``crop_foreground``), so an uncut skull-stripped brain never reaches a face; a head scan's
#: brain does where its field of view cuts it. OASIS with its lowest 40 mm cut away (through the
#: cerebellum) read 15.9 degrees instead of 8.5, and turned upright its mean Dice fell from 0.829
#: to 0.758 (the cerebellum cut obliquely to the slices: a cut the network never saw).
CUT_MM2 = 100.0

#: Largest RMS (mm) of a rough reading, from a first pass that a strong tilt spoiled (OASIS
#: rolled 45 degrees: Dice 0.36, RMS 13.6 mm, read 32 degrees of roll): the scan is turned by
#: it, and the upright pass is kept only if its own reading fits within :data:`MAX_RMS_MM`, as
#: the first did not (else the first pass stands: not a brain the atlas describes).
ROUGH_RMS_MM = 16.0

#: Room (mm) kept around the first pass's brain in the upright grid of the second pass.
MARGIN_MM = 8.0

#: Largest RMS distance (mm) between the fitted centroids and the atlas's for a pose to be
#: trusted: the 20 training maps fit their mean pose within 1.5-3.3 mm (the OASIS aseg 3.7, its
#: inferior horns the structures most often dropped); a segmentation that
#: does not look like a brain is left unturned.
MAX_RMS_MM = 8.0


@dataclass(frozen=True)
class Pose:
    """A brain's pose against :data:`POSE_ATLAS`.

    Attributes:
        rotation: (3, 3) proper rotation taking the scan's centred centroids (grid axes, mm) to
            the atlas's: ``atlas ~= rotation @ (p - centre)``.
        degrees: its angle (degrees).
        euler: the brain's tilt from the mean pose (``rotation``'s inverse) as rotations about
            the x (pitch: left-right), y (roll: front-back) and z (yaw: up-down) axes of the grid,
            degrees (scipy's extrinsic ``xyz``, right-hand rule).
        rms_mm: RMS distance of the structures used from the atlas after the fit (mm).
        n_structures: structures used.
        cut: the field of view cuts the brain (at least :data:`CUT_MM2` of it on a face of
            the grid): such a brain is left as it lies, whatever its pose (a cut shifts the
            centroids, and the network has only seen cuts along its slices).
        upright: the scan was segmented again upright (:func:`segment_in_pose`).
    """

    rotation: np.ndarray
    degrees: float
    euler: tuple[float, float, float]
    rms_mm: float
    n_structures: int
    cut: bool = False
    upright: bool = False

    def describe(self) -> str:
        p, r, y = self.euler
        return f"{self.degrees:.1f} deg (pitch {p:+.1f}, roll {r:+.1f}, yaw {y:+.1f})"

    def record(self) -> dict[str, float | int | bool]:
        """For a scan's sidecar JSON: the angles (degrees), the fit's RMS (mm), the structures
        used, whether the field of view cuts the brain, and whether the scan was segmented again
        upright."""
        p, r, y = self.euler
        return {
            "degrees": round(self.degrees, 1), "pitch": round(p, 1), "roll": round(r, 1),
            "yaw": round(y, 1), "rms_mm": round(self.rms_mm, 2), "structures": self.n_structures,
            "cut_by_field_of_view": bool(self.cut),
            "segmented_upright": bool(self.upright),
        }


def kabsch(moving: np.ndarray, fixed: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The proper rotation R minimising ``sum w_i |R (m_i - m) - (f_i - f)|^2``, m and f the
    weighted means (Kabsch's algorithm; a reflection is never returned).

    Args:
        moving, fixed: (N, 3) corresponding points, N >= 3.
        weights: (N,) non-negative weights (None: equal).

    Returns:
        (3, 3) float64 rotation matrix, det +1.
    """
    moving, fixed = np.asarray(moving, np.float64), np.asarray(fixed, np.float64)
    w = np.ones(len(moving)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    m = moving - w @ moving
    f = fixed - w @ fixed
    u, _, vt = np.linalg.svd((m * w[:, None]).T @ f)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def _angle_deg(rotation: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rotation) - 1) / 2))))


def _euler_xyz(rotation: np.ndarray) -> tuple[float, float, float]:
    from scipy.spatial.transform import Rotation

    x, y, z = Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)
    return float(x), float(y), float(z)


def soft_centroids(
    probs: torch.Tensor, classes: Sequence[int], spacing_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Probability-weighted centroids and volumes of some classes.

    Args:
        probs: (K, X, Y, Z) class probabilities on an isotropic grid.
        classes: class indices.
        spacing_mm: the grid's voxel size (mm).

    Returns:
        ((N, 3) centroids in mm from voxel (0, 0, 0) along the grid's axes, (N,) volumes in mm^3);
        a class of zero volume has a NaN centroid.
    """
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=probs.device)
    centre = []
    for axis in range(3):  # marginals of every class (no copy of the volume), then the classes
        other = tuple(d for d in (1, 2, 3) if d != axis + 1)
        marginal = probs.sum(dim=other).index_select(0, idx).cpu().double()  # (N, n_axis)
        coords = torch.arange(marginal.shape[1], dtype=torch.float64)
        volume = marginal.sum(1)
        centre.append((marginal @ coords) / volume)
    c = torch.stack(centre, dim=1).numpy() * spacing_mm
    return c, volume.numpy() * spacing_mm**3


def _fit(points: np.ndarray, atlas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, per-point distance in mm after the fit) of centred points onto the atlas's."""
    r = kabsch(points, atlas)
    moved = (points - points.mean(0)) @ r.T
    return r, np.linalg.norm(moved - (atlas - atlas.mean(0)), axis=1)


def estimate_pose(
    probs: torch.Tensor,
    target: TargetPreset,
    spacing_mm: float,
    atlas: dict[int, tuple[float, float, float]] | None = None,
    max_rms_mm: float | None = None,
) -> Pose | None:
    """The brain's pose on the network's grid, from a segmentation's probabilities.

    Args:
        probs: (K, X, Y, Z) probabilities of ``target``'s classes on an isotropic RAS grid.
        target: the model's target (its FreeSurfer values name the classes).
        spacing_mm: the grid's voxel size (mm).
        atlas: centroids in the reference pose (default :data:`POSE_ATLAS`).
        max_rms_mm: largest RMS of the fit (default :data:`MAX_RMS_MM`).

    Returns:
        The :class:`Pose`, or None when fewer than :data:`MIN_STRUCTURES` atlas structures of
        at least :data:`MIN_VOLUME_MM3` are segmented, or the fit's RMS is over ``max_rms_mm``
        (not a brain the atlas describes).
    """
    atlas = POSE_ATLAS if atlas is None else atlas
    pairs = [(k, v) for k, v in enumerate(target.values) if k and v in atlas]
    if len(pairs) < MIN_STRUCTURES:
        return None
    centre, volume = soft_centroids(probs, [k for k, _ in pairs], spacing_mm)
    keep = volume >= MIN_VOLUME_MM3
    if keep.sum() < MIN_STRUCTURES:
        return None
    points = centre[keep]
    ref = np.array([atlas[v] for (_, v), k in zip(pairs, keep) if k], np.float64)
    rotation, dist = _fit(points, ref)
    inlier = ~((dist > OUTLIER_MM) & (dist > 3 * np.median(dist)))
    if not inlier.all() and inlier.sum() >= MIN_STRUCTURES:
        points, ref = points[inlier], ref[inlier]
        rotation, dist = _fit(points, ref)
    rms = float(np.sqrt(np.mean(dist**2)))
    if rms > (MAX_RMS_MM if max_rms_mm is None else max_rms_mm):
        return None
    cut = _cut_area_mm2(probs[0] < 0.5) * spacing_mm**2 >= CUT_MM2
    return Pose(rotation, _angle_deg(rotation), _euler_xyz(rotation.T), rms, len(points), cut)


def _cut_area_mm2(brain: torch.Tensor) -> int:
    """Voxels of a (X, Y, Z) brain mask on the largest of the grid's six faces."""
    faces = [brain.select(axis, i) for axis in range(3) for i in (0, -1)]
    return max(int(face.sum()) for face in faces)


def _index_grid(
    shape: Sequence[int], rotation: np.ndarray, centre_out: np.ndarray, centre_in: np.ndarray,
    in_shape: Sequence[int], device: torch.device,
) -> torch.Tensor:
    """grid_sample's (1, X, Y, Z, 3) grid: output voxel j reads input voxel
    ``rotation @ (j - centre_out) + centre_in`` (voxel units), normalised (align_corners)."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) - float(c)
            for n, c in zip(shape, centre_out)]
    j = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (X, Y, Z, 3)
    r = torch.as_tensor(rotation, dtype=torch.float32, device=device)
    i = j @ r.T + torch.as_tensor(centre_in, dtype=torch.float32, device=device)
    size = torch.as_tensor([max(n - 1, 1) for n in in_shape], dtype=torch.float32, device=device)
    return (2 * i / size - 1).flip(-1)[None]  # grid_sample wants (z, y, x) = (W, H, D) order


def turn(
    x: torch.Tensor,
    rotation: np.ndarray,
    shape: Sequence[int],
    centre_in: Sequence[float] | None = None,
    centre_out: Sequence[float] | None = None,
) -> torch.Tensor:
    """Resample a volume turned by ``rotation`` into a grid of ``shape`` (trilinear; zero outside
    the input).

    Args:
        x: (1, C, X, Y, Z) float tensor.
        rotation: (3, 3) rotation in the grid's axes (voxel units: an isotropic grid): output
            voxel ``j`` is the input at ``rotation.T @ (j - centre_out) + centre_in``, so the
            content turns by ``rotation`` about ``centre_in``, which lands on ``centre_out``.
        shape: (3,) output shape.
        centre_in, centre_out: voxel coordinates (default: each grid's centre).

    Returns:
        (1, C, *shape) tensor of ``x``'s dtype and device.
    """
    c_in = (np.asarray(x.shape[2:], np.float64) - 1) / 2 if centre_in is None else centre_in
    c_out = (np.asarray(shape, np.float64) - 1) / 2 if centre_out is None else centre_out
    grid = _index_grid(shape, np.asarray(rotation).T, np.asarray(c_out), np.asarray(c_in),
                       x.shape[2:], x.device)
    # a contiguous input: grid_sample on the predictor's permuted sum buffer was 3x slower
    return F.grid_sample(x.contiguous(), grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def _upright_grid(
    brain: torch.Tensor, rotation: np.ndarray, margin: int, divisor: int
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The grid that holds a brain mask turned by ``rotation`` about its grid's centre, with
    ``margin`` voxels around it: (shape, multiples of ``divisor``; the centre of turning in the
    first grid; where it lands in the upright one)."""
    centre = (np.asarray(brain.shape, np.float64) - 1) / 2
    points = torch.nonzero(brain[::2, ::2, ::2]).double().cpu().numpy() * 2  # every 8th voxel
    q = (points - centre) @ np.asarray(rotation).T
    low, high = q.min(0) - margin - 1, q.max(0) + margin + 1
    shape = [math.ceil((h - lo + 1) / divisor) * divisor for lo, h in zip(low, high)]
    extra = (np.asarray(shape) - (high - low + 1)) / 2  # the rounding, split on both sides
    return shape, centre, -low + extra


def segment_in_pose(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    probs: torch.Tensor,
    target: TargetPreset,
    spacing_mm: float,
    max_deg: float | None,
    divisor: int = 1,
    name: str = "",
) -> tuple[torch.Tensor, Pose | None]:
    """The first pass's probabilities, or those of a second pass in the mean training pose.

    Args:
        predict: the network: (1, 1, X, Y, Z) image -> (K, X, Y, Z) probabilities.
        image: (1, 1, X, Y, Z) the network's input.
        probs: (K, X, Y, Z) the first pass's probabilities of ``image``.
        target: the model's target.
        spacing_mm: the grid's voxel size (mm).
        max_deg: largest tilt (degrees) left as it lies; None: never turned.
        divisor: the turned grid's sides are multiples of it (a 3D network's divisor).
        name: the scan, for the log line.

    Returns:
        ((K, X, Y, Z) float32 probabilities, the :class:`Pose` or None where none was read).
    """
    if max_deg is None:
        return probs, None
    pose = estimate_pose(probs, target, spacing_mm, max_rms_mm=ROUGH_RMS_MM)
    if pose is None:
        log.debug("%s: no pose read (not enough structures, or not brain-like)", name or "scan")
        return probs, None
    if pose.degrees > max_deg and pose.cut:
        log.info(
            "%s: the brain is tilted %s from the training maps' mean pose, but the field of "
            "view cuts it: segmented as it lies", name or "scan", pose.describe(),
        )
        return probs, pose
    if pose.degrees <= max_deg:
        log.debug("%s: pose %s, within %g deg: as it lies", name or "scan", pose.describe(),
                  max_deg)
        return probs, pose
    log.info(
        "%s: the brain is tilted %s from the training maps' mean pose: segmented again in it",
        name or "scan", pose.describe(),
    )
    # the upright grid holds the first pass's brain and a margin, not the whole turned box
    margin = math.ceil(MARGIN_MM / spacing_mm)
    shape, centre, upright_centre = _upright_grid(probs[0] < 0.5, pose.rotation, margin, divisor)
    rough = pose.rms_mm > MAX_RMS_MM
    if not rough:
        del probs  # the first pass's, no longer needed
    upright = turn(image, pose.rotation, shape, centre, upright_centre)
    second = predict(upright)
    del upright
    # a rough reading (a spoiled first pass): the upright pass is kept only if it fits the atlas
    # within MAX_RMS_MM, which the first did not
    if rough and estimate_pose(second, target, spacing_mm) is None:
        log.info("%s: the upright pass does not fit the atlas either: segmented as it lies",
                 name or "scan")
        return probs, pose
    if rough:
        del probs
    back = turn(second[None], pose.rotation.T, image.shape[2:], upright_centre, centre)[0]
    del second
    # beyond the upright grid (outside the brain and its margin): background
    back[0] += (1 - back.sum(0)).clamp_min_(0)
    back /= back.sum(0, keepdim=True)
    return back, replace(pose, upright=True)


def pose_atlas(paths: Sequence[str | Path], iterations: int = 5) -> dict[int, tuple[float, ...]]:
    """:data:`POSE_ATLAS` from label maps: each map's centroids of SynthSeg's structures (RAS
    voxel axes, mm), aligned on each other (generalised Procrustes, rotations only), then turned
    into the mean of the maps' own poses (the rotations' mean), and centred.

    Args:
        paths: FreeSurfer-style label maps with every structure of the ``synthseg`` target.
        iterations: Procrustes iterations.

    Returns:
        FreeSurfer value -> (x, y, z) in mm, rounded to 0.1 mm.
    """
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from synthseg_lite.io import load_label_map
    from synthseg_lite.labels.presets import TARGET_PRESETS

    values = list(TARGET_PRESETS["synthseg"].values[1:])
    shapes = []
    for path in paths:
        vol = load_label_map(path)
        c = ndimage.center_of_mass(np.ones(vol.data.shape, np.uint8), vol.data, values)
        shapes.append(np.asarray(c, np.float64) * np.asarray(vol.spacing))
    if not shapes or np.isnan(np.array(shapes)).any():
        raise ValueError(
            "pose_atlas needs label maps holding every structure of the synthseg target"
        )
    shapes = [s - s.mean(0) for s in shapes]
    mean = shapes[0]
    for _ in range(iterations):
        mean = np.mean([s @ kabsch(s, mean).T for s in shapes], axis=0)
    # each map's pose relative to the (arbitrarily posed) mean shape, averaged
    turns = Rotation.from_matrix(np.array([kabsch(mean, s) for s in shapes])).mean().as_matrix()
    atlas = mean @ turns.T
    atlas -= atlas.mean(0)
    return {v: tuple(round(float(c), 1) for c in p) for v, p in zip(values, atlas)}
