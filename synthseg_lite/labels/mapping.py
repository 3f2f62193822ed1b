"""Label values -> class indices: a reference convention (a preset of
:data:`~synthseg_lite.labels.presets.REFERENCE_PRESETS` or ``{value: class}``) applied to an array."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from synthseg_lite.labels.presets import REFERENCE_PRESETS

__all__ = ["label_mapping", "map_labels"]

log = logging.getLogger(__name__)


def label_mapping(spec: str | Mapping) -> dict[int, int]:
    """A label mapping ``{raw value: class index}`` from a preset name or a custom mapping.

    Raises:
        ValueError: unknown preset or a mapping with negative classes.
    """
    if isinstance(spec, str):
        if spec not in REFERENCE_PRESETS:
            raise ValueError(
                f"unknown label preset {spec!r}; choose one of {sorted(REFERENCE_PRESETS)} "
                "or give a mapping {value: class}"
            )
        mapping = dict(REFERENCE_PRESETS[spec])
    else:
        mapping = {int(k): int(v) for k, v in dict(spec).items()}
    if not mapping or min(mapping.values()) < 0:
        raise ValueError(f"a label mapping needs non-negative classes, got {mapping}")
    mapping.setdefault(0, 0)
    return mapping


def map_labels(data: np.ndarray, mapping: Mapping[int, int], source: str = "") -> np.ndarray:
    """Raw label values -> class indices (int64); values missing from ``mapping`` become 0."""
    keys = np.array(sorted(mapping), dtype=np.int64)
    vals = np.array([mapping[k] for k in keys], dtype=np.int64)
    flat = data.astype(np.int64)
    pos = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
    known = keys[pos] == flat
    if not known.all():
        log.info(
            "%s: values %s are not in the label mapping; counted as background",
            source,
            np.unique(flat[~known])[:20].tolist(),
        )
    return np.where(known, vals[pos], 0)
