"""Left stays left: a structure segmentation of a scan stored in any orientation (flipped axes,
oblique) puts the left-hemisphere labels on the subject's left (RAS world x < 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from synthseg_lite.inference import InferenceOptions, Predictor
from synthseg_lite.inference.segment import segment_volume
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.unet import UNetConfig

LEFT_WM, RIGHT_WM = 2, 41


class RasHalfNet(nn.Module):
    """A stand-in network that knows anatomy only through the RAS convention of its input: the
    foreground of the lower half of axis 0 (RAS: towards the left) is Left-Cerebral-White-Matter,
    the upper half Right-Cerebral-White-Matter. (B, 1, X, Y, Z) -> (B, K, X, Y, Z) logits."""

    def __init__(self, n_classes: int, left: int, right: int) -> None:
        super().__init__()
        self.k, self.left, self.right = n_classes, left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, nx, ny, nz = x.shape
        logits = torch.zeros(b, self.k, nx, ny, nz)
        fg = x[:, 0] > 0.2
        lower = (torch.arange(nx) < nx / 2).view(1, nx, 1, 1)
        logits[:, 0] = (~fg).float() * 10
        logits[:, self.left] = (fg & lower).float() * 10
        logits[:, self.right] = (fg & ~lower).float() * 10
        return logits


def _scan(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A head-like ellipsoid centred on the world origin, sampled on the grid of ``affine``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    r = (xyz / np.array([40.0, 50.0, 40.0])) ** 2
    return (r.sum(-1) < 1).astype(np.float32) * 100, xyz


def _affine(rotation_deg: tuple[float, float, float], flips: tuple[int, int, int],
            spacing: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel -> world affine with axis flips and an oblique rotation, centred on the origin."""
    m = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    m = m @ np.diag(np.array(flips, float) * spacing)
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = -m @ (np.array(shape) - 1) / 2
    return a


@pytest.mark.parametrize(
    "rotation, flips",
    [
        ((0, 0, 0), (1, 1, 1)),  # RAS
        ((0, 0, 0), (-1, 1, 1)),  # LAS (radiological storage)
        ((0, 0, 0), (-1, -1, 1)),  # LPS (DICOM)
        ((90, 0, 0), (-1, 1, 1)),  # LIA-like (FreeSurfer conformed)
        ((20, -15, 30), (1, -1, 1)),  # oblique
    ],
)
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_left_structures_stay_on_the_left(rotation, flips, tta: str) -> None:
    table = LabelTable.create("synthseg")
    values = list(table.target.values)
    left, right = values.index(LEFT_WM), values.index(RIGHT_WM)
    meta = ModelMeta(
        unet=UNetConfig(spatial_dims=3, n_stages=1),
        label_table=table,
        spacing_mm=2.0,
        patch_size=(256, 256, 256),  # one window: the stand-in net sees the whole RAS image
        extra={},
    )
    net = RasHalfNet(table.target.n_classes, left, right)
    shape = (48, 56, 44)
    affine = _affine(rotation, flips, 2.0, shape)
    data, xyz = _scan(affine, shape)
    opts = InferenceOptions(tta=tta, keep_largest="none", save_qc=False)
    pred = segment_volume(data, affine, Predictor([net], meta, tta=tta), opts, torch.device("cpu"))
    seg = np.asarray(table.target.values)[pred.labels]
    inside = data > 0
    # the voxel axis closest to world left-right, pointing right: RAS reorientation makes it the
    # network's axis 0 (an oblique scan is not resampled, so the midline plane tilts with it)
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(cols[0])))
    x = xyz @ (cols[:, axis] * np.sign(cols[0, axis]))
    # far enough from the midline that resampling cannot blur the answer
    assert np.mean(seg[inside & (x < -6)] == LEFT_WM) > 0.98
    assert np.mean(seg[inside & (x > 6)] == RIGHT_WM) > 0.98
