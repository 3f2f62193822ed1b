"""A brain tilted beyond the poses the model was trained on is segmented again in the training
maps' mean pose, read by :mod:`synthseg_lite.inference.pose`.

When the pose read from the first pass is more than ``max_deg`` from the mean pose, the scan, on
the network's grid, is turned by it into a grid that holds the first pass's brain (and
:data:`MARGIN_MM` around it), segmented again (and once more if the upright pass still reads a
tilt beyond ``max_deg``: :data:`MAX_TURNS`), and the probabilities are turned back onto the first
grid (trilinear). A scan within ``max_deg`` is left as the first pass has it: turning costs an
interpolation of the image and a second set of network passes, and near the training poses it
gains nothing (OASIS turned 11 degrees from the mean pose: 0.835 as it lies, 0.834 upright; 19
degrees: 0.821 and 0.834). Nor is a brain that the field of view cuts
(:data:`~synthseg_lite.inference.pose.CUT_MM2`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from synthseg_lite.inference.pose import (
    MAX_RMS_MM,
    ROUGH_RMS_MM,
    Pose,
    brain_mask,
    estimate_pose,
)
from synthseg_lite.labels import TargetPreset
from synthseg_lite.synth.spatial import sampling_grid

__all__ = ["MAX_TURNS", "POSE_MAX_DEG", "segment_in_pose", "turn"]

log = logging.getLogger(__name__)

#: Default largest tilt (degrees) from the training maps' mean pose that is segmented as it
#: lies: the training maps span -12 to +22 degrees of pitch around their mean pose and 4 of roll
#: and yaw; turning OASIS back gained nothing 11 degrees from it and 0.013 of Dice at 19.
POSE_MAX_DEG = 15.0

#: Most upright passes of one scan: the pose read from a spoiled first pass falls short (OASIS at
#: 45 degrees of yaw read 19), and the upright pass's reading of the rest turns it once more.
MAX_TURNS = 2

#: Room (mm) kept around the first pass's brain in the upright grid of the second pass.
MARGIN_MM = 8.0


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
    middle = (np.asarray(shape, np.float64) - 1) / 2
    c_in = (np.asarray(x.shape[2:], np.float64) - 1) / 2 if centre_in is None else centre_in
    c_out = middle if centre_out is None else centre_out
    back = np.asarray(rotation, np.float64).T  # output offsets -> input offsets
    # the generator's affine sampling grid (no deformation), centred on the output's middle
    as_x = {"dtype": x.dtype, "device": x.device}
    grid = sampling_grid(
        torch.as_tensor(back, **as_x)[None],
        torch.as_tensor(np.asarray(c_in) + back @ (middle - np.asarray(c_out)), **as_x)[None],
        torch.zeros(1, 3, 1, 1, 1, **as_x), tuple(shape), 1.0, tuple(x.shape[2:]),
    )
    # a contiguous input: grid_sample on the predictor's permuted sum buffer was 3x slower
    return F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros",
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
    brain = brain_mask(probs)  # read once: for the pose, then for the upright grid
    pose = estimate_pose(probs, target, spacing_mm, max_rms_mm=ROUGH_RMS_MM, brain=brain)
    if pose is None:
        log.debug("%s: no pose read (not enough structures, or not brain-like)", name or "scan")
        return probs, None
    if pose.degrees <= max_deg:
        log.debug("%s: pose %s, within %g deg: as it lies", name or "scan", pose.describe(),
                  max_deg)
        return probs, pose
    if pose.cut:
        log.info(
            "%s: the brain is tilted %s from the training maps' mean pose, but the field of "
            "view cuts it: segmented as it lies", name or "scan", pose.describe(),
        )
        return probs, pose
    log.info(
        "%s: the brain is tilted %s from the training maps' mean pose: segmented again in it",
        name or "scan", pose.describe(),
    )
    # the upright grid holds the first pass's brain and a margin, not the whole turned box
    margin = math.ceil(MARGIN_MM / spacing_mm)
    # a rough reading (a spoiled first pass) keeps the first pass to fall back on; else it goes
    fallback = probs if pose.rms_mm > MAX_RMS_MM else None
    del probs
    rotation = pose.rotation
    for attempt in range(MAX_TURNS):
        shape, centre, upright_centre = _upright_grid(brain, rotation, margin, divisor)
        second = predict(turn(image, rotation, shape, centre, upright_centre))
        again = estimate_pose(second, target, spacing_mm)
        if fallback is not None and again is None:  # the upright pass does not fit the atlas
            log.info("%s: the upright pass does not fit the atlas either: segmented as it lies",
                     name or "scan")
            return fallback, pose
        fallback = None
        if again is None or again.degrees <= max_deg or attempt == MAX_TURNS - 1:
            break
        # a strong tilt spoiled the first reading: the upright pass reads what is left of it
        rotation = again.rotation @ rotation
        log.info("%s: still %.1f deg from the mean pose upright: turned again (%.1f deg in all)",
                 name or "scan", again.degrees, replace(pose, rotation=rotation).degrees)
        second = None  # freed before the next pass
    pose = replace(pose, rotation=rotation)
    back = turn(second[None], rotation.T, image.shape[2:], upright_centre, centre)[0]
    del second
    # beyond the upright grid (outside the brain and its margin): background
    back[0] += (1 - back.sum(0)).clamp_min_(0)
    back /= back.sum(0, keepdim=True)
    return back, replace(pose, upright=True)
