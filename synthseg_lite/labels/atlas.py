"""Anatomical reference points: where SynthSeg's structures lie relative to each other in the
training label maps' mean pose (:mod:`synthseg_lite.inference.pose` reads a scan's tilt against
them)."""

from __future__ import annotations

__all__ = ["POSE_ATLAS"]

#: Centroids (mm, RAS axes, centred on their mean) of SynthSeg's structures in the mean pose of
#: the 20 training label maps (SynthSeg's published maps):
#: :func:`synthseg_lite.inference.pose.pose_atlas` of ``../shared/data/label_maps/*.nii.gz``
#: (a test recomputes it when they are present). FreeSurfer value -> (x, y, z).
POSE_ATLAS: dict[int, tuple[float, float, float]] = {
    2: (-26.1, -6.5, 21.6),
    3: (-29.7, -5.6, 19.8),
    4: (-13.4, -1.2, 19.7),
    5: (-31.0, -0.5, -7.0),
    7: (-17.3, -28.8, -29.0),
    8: (-23.6, -36.6, -34.1),
    10: (-12.3, -3.1, 11.0),
    11: (-14.5, 21.1, 19.1),
    12: (-25.4, 14.8, 9.4),
    13: (-20.2, 12.1, 7.0),
    14: (0.3, 6.6, 4.8),
    15: (-0.6, -21.6, -27.4),
    16: (-0.2, -8.4, -23.4),
    17: (-24.2, -3.5, -6.8),
    18: (-23.1, 14.5, -8.2),
    26: (-9.1, 26.4, 4.9),
    28: (-10.5, 2.1, -1.7),
    41: (27.0, -5.5, 21.5),
    42: (30.6, -4.1, 19.4),
    43: (14.0, -0.6, 19.6),
    44: (30.3, 4.5, -9.3),
    46: (15.6, -28.9, -29.2),
    47: (21.4, -37.4, -34.3),
    49: (12.4, -2.4, 11.1),
    50: (15.7, 22.0, 18.9),
    51: (25.7, 16.4, 8.6),
    52: (20.4, 12.4, 7.0),
    53: (24.6, -2.2, -7.6),
    54: (23.0, 14.7, -8.7),
    58: (9.6, 26.9, 4.8),
    60: (10.8, 2.4, -1.7),
}
