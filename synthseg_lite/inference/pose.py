"""Head pose: the brain's tilt from the training maps' mean pose, read from a structure model's
own first pass (:mod:`synthseg_lite.inference.upright` segments a tilted brain again upright).

The structure model is a 2.5D network: it sees slices, and a slice of a tilted head is a slice
it has not been trained on. The 20 training maps are in their scanners' poses, which differ by up
to 34 degrees of pitch (nodding) and 8 of roll and yaw; the generator rotates them by up to 15
more. On the OASIS T1 turned in its voxel grid (the header unchanged: a head tilted in the
scanner), the shipped model lost 0.02 of mean Dice at 10 degrees more pitch, 0.07 at 30 and 0.12
at 30 degrees of roll; segmented again in the mean pose, each of these came back to 0.833-0.836
(0.841 as it lies; ``benchmarks/tilt.py``, ``docs/structures.md``, "Tilted heads").

The pose is read from the first pass's own segmentation, as a registration to landmarks would read
it: the centroid of each structure (over the voxels where it is more likely than not, mm) is
matched to :data:`POSE_ATLAS`, the same centroids in the training maps' mean pose, by the rotation
that best aligns the two point sets (Kabsch, after centring; a proper rotation, so left stays
left). A structure far from where the fit puts it (a cut field of view, a failed structure) is
dropped and the rotation fitted again. A fit within :data:`MAX_RMS_MM` is trusted; one within
:data:`ROUGH_RMS_MM` is a rough reading (a strong tilt spoils the first pass), which turns the scan
only if the upright pass then fits within :data:`MAX_RMS_MM`. A brain that the field of view cuts
(:data:`CUT_MM2`) is marked so, and left as it lies. :func:`field_of_view_cut` names the side
where it cuts any model's final labels (``qc_fov_cut`` in ``volumes.csv``).

Only targets with at least :data:`MIN_STRUCTURES` of the atlas's structures have a pose (the
structure models, and so the default ``model=tissue``, the structure network written as GM / WM /
CSF); a tissue network (``model=tissue_fast``: GM, WM, CSF) is left as it is.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synthseg_lite.data.preprocess import Geometry
from synthseg_lite.inference.postprocess import _box, _largest
from synthseg_lite.labels import TargetPreset
from synthseg_lite.labels.atlas import POSE_ATLAS

__all__ = [
    "FACES",
    "FOV_SIGNAL",
    "MIN_STRUCTURES",
    "POSE_ATLAS",
    "Pose",
    "brain_mask",
    "cut_side",
    "estimate_pose",
    "field_of_view_cut",
    "kabsch",
    "pose_atlas",
    "soft_centroids",
]

log = logging.getLogger(__name__)

#: Fewest atlas structures (each at least :data:`MIN_VOLUME_MM3`) that a pose is read from.
MIN_STRUCTURES = 8

#: Smallest structure volume (mm^3, probability-weighted) whose centroid is used.
MIN_VOLUME_MM3 = 100.0

#: A structure whose centroid lies more than this many mm, and more than 3x the median, from
#: where the fitted rotation puts it is dropped and the rotation fitted again.
OUTLIER_MM = 6.0

#: Brain (mm^2; the largest component of background < 0.5) on a face of the network's grid above
#: which the field of view cuts it (the grid holds the scan's non-zero voxels and 4 around them).
#: OASIS with its lowest 40 mm cut away read 15.9 degrees instead of 8.5, and turned upright
#: its mean Dice fell from 0.829 to 0.758 (the cerebellum cut obliquely to the slices).
CUT_MM2 = 100.0

#: Largest RMS distance (mm) between the fitted centroids and the atlas's for a pose to be
#: trusted: the 20 training maps fit their mean pose within 1.5-3.3 mm (the OASIS aseg 3.7, its
#: inferior horns the structures most often dropped).
MAX_RMS_MM = 8.0

#: Largest RMS (mm) of a rough reading, from a first pass that a strong tilt spoiled (OASIS
#: rolled 45 degrees: Dice 0.36, read 32 degrees at 9.6 mm RMS): the scan is turned by it, and
#: the upright pass is kept only if its own reading fits within :data:`MAX_RMS_MM`.
ROUGH_RMS_MM = 16.0

#: A voxel counts towards a structure's centroid above this probability (the atlas: hard labels).
CONFIDENT = 0.5

@dataclass(frozen=True)
class Pose:
    """A brain's pose against :data:`POSE_ATLAS`.

    Attributes:
        rotation: (3, 3) proper rotation taking the scan's centred centroids (grid axes, mm) to
            the atlas's: ``atlas ~= rotation @ (p - centre)``.
        rms_mm: RMS distance of the structures used from the atlas after the fit (mm).
        n_structures: structures used.
        cut: the field of view cuts the first pass's brain (at least :data:`CUT_MM2` of it on
            a face of the grid, :func:`cut_side`): such a brain is left as it lies, whatever its
            pose (a cut shifts the centroids, and the network has only seen cuts along its
            slices). What ``volumes.csv`` reports (``qc_fov_cut``) is read from the final
            labels instead (an artefact's haze in a first pass is not a cut brain).
        upright: the scan was segmented again upright
            (:func:`synthseg_lite.inference.upright.segment_in_pose`).
    """

    rotation: np.ndarray
    rms_mm: float
    n_structures: int
    cut: bool = False
    upright: bool = False

    @property
    def degrees(self) -> float:
        """The rotation's angle (degrees)."""
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    @property
    def euler(self) -> tuple[float, float, float]:
        """The brain's tilt from the mean pose (``rotation``'s inverse) as rotations about the x
        (pitch: left-right), y (roll: front-back) and z (yaw: up-down) axes of the grid, degrees
        (scipy's extrinsic ``xyz``, right-hand rule)."""
        with warnings.catch_warnings():  # at 90 degrees of roll: scipy's gimbal-lock notice
            warnings.simplefilter("ignore")
            x, y, z = Rotation.from_matrix(self.rotation.T).as_euler("xyz", degrees=True)
        return float(x), float(y), float(z)

    def describe(self) -> str:
        p, r, y = self.euler
        return f"{self.degrees:.1f} deg (pitch {p:+.1f}, roll {r:+.1f}, yaw {y:+.1f})"

    def record(self) -> dict[str, float | int | bool]:
        """For a scan's sidecar JSON: the angles (degrees), the fit's RMS (mm), the structures
        used, whether the field of view cuts the brain and whether it was segmented upright."""
        p, r, y = self.euler
        return {
            "degrees": round(self.degrees, 1), "pitch": round(p, 1), "roll": round(r, 1),
            "yaw": round(y, 1), "rms_mm": round(self.rms_mm, 2), "structures": self.n_structures,
            "cut_by_field_of_view": bool(self.cut), "segmented_upright": bool(self.upright),
        }


def kabsch(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """The proper rotation R minimising ``sum |R (m_i - m) - (f_i - f)|^2``, m and f the means
    (Kabsch's algorithm; a reflection is never returned).

    Args:
        moving, fixed: (N, 3) corresponding points, N >= 3.

    Returns:
        (3, 3) float64 rotation matrix, det +1.
    """
    m = np.asarray(moving, np.float64)
    f = np.asarray(fixed, np.float64)
    m, f = m - m.mean(0), f - f.mean(0)
    u, _, vt = np.linalg.svd(m.T @ f)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def soft_centroids(
    probs: torch.Tensor, classes: Sequence[int], spacing_mm: float,
    brain: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability-weighted centroids and volumes of some classes, over each class's confident
    voxels (probability above :data:`CONFIDENT`) in the brain.

    A network leaves a little probability of every structure everywhere: summed over a whole
    head's face and neck, it pulled the pydeface mean head's pose 14.5 degrees off (18 mm RMS;
    over the confident voxels in the brain: 1.3 degrees, 3.2 mm).

    Args:
        probs: (K, X, Y, Z) class probabilities on an isotropic grid.
        classes: class indices.
        spacing_mm: the grid's voxel size (mm).
        brain: (X, Y, Z) bool, the voxels that count (None: all).

    Returns:
        ((N, 3) centroids in mm from voxel (0, 0, 0) along the grid's axes, (N,) volumes in mm^3
        of the voxels counted; a class with none has a NaN centroid).
    """
    lo = np.zeros(3)
    if brain is not None and (box := _box(brain)) is not None:  # only the brain's box is read
        lo, probs, brain = np.array([b.start for b in box]), probs[(slice(None), *box)], brain[box]
    centre, volume = [], []
    for k in classes:  # one class at a time: no copy of the whole (K, X, Y, Z) volume
        p = probs[k]
        keep = p > CONFIDENT if brain is None else (p > CONFIDENT) & brain
        w = torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device))
        xy, z = w.sum(2).double(), w.sum((0, 1)).double()  # the class's marginals
        mass = xy.sum()
        c = [(m @ torch.arange(len(m), dtype=torch.float64, device=m.device)) / mass
             for m in (xy.sum(1), xy.sum(0), z)]
        centre.append(torch.stack(c).cpu())
        volume.append(mass.cpu())
    c = (torch.stack(centre).numpy() + lo) * spacing_mm
    return c, torch.stack(volume).numpy() * spacing_mm**3


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
    max_rms_mm: float = MAX_RMS_MM,
    brain: torch.Tensor | None = None,
) -> Pose | None:
    """The brain's pose on the network's grid, from a segmentation's probabilities.

    Args:
        probs: (K, X, Y, Z) probabilities of ``target``'s classes on an isotropic RAS grid.
        target: the model's target (its FreeSurfer values name the classes).
        spacing_mm: the grid's voxel size (mm).
        atlas: centroids in the reference pose (default :data:`POSE_ATLAS`).
        max_rms_mm: largest RMS of the fit (mm).
        brain: (X, Y, Z) bool, the brain's voxels (None: found from ``probs``).

    Returns:
        The :class:`Pose`, or None when fewer than :data:`MIN_STRUCTURES` atlas structures of
        at least :data:`MIN_VOLUME_MM3` are segmented, or the fit's RMS is over ``max_rms_mm``
        (not a brain the atlas describes).
    """
    atlas = POSE_ATLAS if atlas is None else atlas
    pairs = [(k, v) for k, v in enumerate(target.values) if k and v in atlas]
    if len(pairs) < MIN_STRUCTURES:
        return None
    brain = brain_mask(probs) if brain is None else brain
    centre, volume = soft_centroids(probs, [k for k, _ in pairs], spacing_mm, brain=brain)
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
    if rms > max_rms_mm:
        return None
    return Pose(rotation, rms, len(points), bool(cut_side(brain, spacing_mm)))


def brain_mask(probs: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) bool: the largest component of background < 0.5 where it holds most of it (not
    the haze over a whole head's face and neck: 0.2 of it on the pydeface mean head rolled)."""
    mask = probs[0] < 0.5
    largest = _largest(mask)
    return largest if 2 * largest.sum() > mask.sum() else mask


#: The six faces of a RAS grid, in the order (axis 0 first, last), (axis 1 ...), (axis 2 ...).
FACES = ("left", "right", "posterior", "anterior", "inferior", "superior")


def cut_side(
    brain: torch.Tensor, spacing_mm: float, faces: Sequence[bool] = (True,) * 6
) -> str:
    """The side where the field of view cuts a brain: the face of the RAS grid with the most
    of the (X, Y, Z) brain mask on it, if that is at least :data:`CUT_MM2` (one of
    :data:`FACES`); ``""`` where no face has that much.

    Args:
        brain: (X, Y, Z) bool mask on a RAS grid of ``spacing_mm`` voxels.
        spacing_mm: the grid's voxel size (mm).
        faces: which of the six faces (:data:`FACES` order) are the field of view's edges.
    """
    ends = [(axis, i) for axis in range(3) for i in (0, -1)]  # in FACES order
    areas = [int(brain.select(axis, i).sum()) if use else 0 for (axis, i), use in zip(ends, faces)]
    best = max(range(6), key=areas.__getitem__)
    return FACES[best] if areas[best] * spacing_mm**2 >= CUT_MM2 else ""


#: Rescaled intensity (0 and 1: the scan's 0.5th and 99.5th percentiles) from which a voxel on
#: an edge of the scan holds signal, for ``qc_fov_cut``.
FOV_SIGNAL = 0.1


def field_of_view_cut(
    labels: torch.Tensor, signal: torch.Tensor, geom: Geometry, spacing_mm: float
) -> str:
    """The side where the field of view cuts the segmented brain: the crop's faces that are the
    scan's own edges (the crop holds the non-zero voxels and a margin; elsewhere the scan goes
    on, empty), with brain labels on voxels of signal over at least
    :data:`CUT_MM2` of one of them.

    Args:
        labels: class indices on the padded network grid.
        signal: bool, same grid: the network's input at or above :data:`FOV_SIGNAL` (not a
            skull-stripped scan's zeros, nor what resampling smears into them).
        geom: where the crop lies on the network grid.
        spacing_mm: the network grid's voxel size (mm).
    """
    inner = tuple(slice(0, b - a) for a, b in geom.box)
    edges = [edge for (a, b), n in zip(geom.box, geom.grid_shape) for edge in (a == 0, b == n)]
    return cut_side((labels[inner] > 0) & signal[inner], spacing_mm, edges)


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
