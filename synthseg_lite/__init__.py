"""synthseg_lite: train brain-MRI segmentation from label maps alone.

    import synthseg_lite
    result = synthseg_lite.segment("t1.nii.gz")   # labels, probabilities, volumes, affine

``import synthseg_lite`` stays light: :func:`segment` and :class:`SegmentationResult`
(:mod:`synthseg_lite.api`) load torch and the model on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthseg_lite._version import __version__

if TYPE_CHECKING:
    from synthseg_lite.api import SegmentationResult, segment

__all__ = ["SegmentationResult", "__version__", "segment"]


def __getattr__(name: str) -> Any:
    if name in ("segment", "SegmentationResult"):
        from synthseg_lite import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthseg_lite' has no attribute {name!r}")
