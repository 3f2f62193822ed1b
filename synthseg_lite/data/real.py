"""Real validation scans: a scan and its reference loaded once, preprocessed as inference does, so a
run can report real-scan Dice while it trains (``data.real_val``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from synthseg_lite.data.bank import resolve_paths
from synthseg_lite.data.config import RealValSet
from synthseg_lite.data.preprocess import grid_for, percentile_rescale, resample
from synthseg_lite.io import load_segmentation, load_volume
from synthseg_lite.labels import TARGET_PRESETS, label_mapping, map_labels

__all__ = ["RealValDataset", "load_real_case"]

log = logging.getLogger(__name__)


def load_real_case(
    image_path: str | Path, reference_path: str | Path, preset: Any, spacing_mm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A real scan and its reference, ready for the network: inference's preprocessing
    (:mod:`synthseg_lite.data.preprocess`: RAS, resampled to ``spacing_mm`` with anti-aliasing,
    0.5-99.5 percentiles rescaled to [0, 1]; the reference by nearest neighbour), without the crop.

    Args:
        preset: reference convention (``tissue``, ``ibsr``, ``aseg``) or ``{value: tissue class}``.

    Returns:
        image (1, X, Y, Z) float32 and reference (X, Y, Z) uint8 tissue classes
        (0 background, 1 GM, 2 WM, 3 CSF), on the training grid.

    Raises:
        ValueError: unknown preset, unreadable files, or grids that differ.
    """
    mapping = label_mapping(preset)
    img, ref = load_volume(image_path), load_segmentation(reference_path)
    if img.data.shape != ref.data.shape:
        raise ValueError(f"{reference_path}: shape {ref.data.shape} differs from {image_path}")
    size, _, ratios = grid_for(img.data.shape, img.affine, spacing_mm)
    x = resample(torch.from_numpy(img.data)[None].float(), ratios, size, antialias=True)
    x = percentile_rescale(x)
    t = torch.from_numpy(map_labels(ref.data, mapping, str(reference_path)).astype(np.uint8))
    t = F.interpolate(t[None, None].float(), size=list(size), mode="nearest-exact")
    return x, t[0, 0].to(torch.uint8)


class RealValDataset(Dataset):
    """Real validation cases, loaded once.

    Item ``i``: ``{"image": (1, X, Y, Z) float32, "target": (X, Y, Z) uint8 tissue classes}``,
    and for FreeSurfer references (``reference_preset: aseg``) ``"structures"``: (X, Y, Z) uint8
    indices of SynthSeg 1.0's structures (the ``synthseg`` preset's folding: 0 background,
    1..31 in the preset's order; FreeSurfer's CSF 24 and unlisted labels are 0).
    """

    def __init__(self, spec: RealValSet, spacing_mm: float) -> None:
        images, refs = resolve_paths(spec.images), resolve_paths(spec.references)
        if len(images) != len(refs):
            raise ValueError(
                f"real_val {spec.name!r}: {len(images)} images but {len(refs)} references"
            )
        pairs = list(zip(images, refs))[: spec.max_cases]
        self.name, self.paths = spec.name, pairs
        self.cases = [load_real_case(i, r, spec.reference_preset, spacing_mm) for i, r in pairs]
        self.structures: list[torch.Tensor] = []
        if spec.reference_preset == "aseg":  # per-structure validation of a structure model
            folding = dict(TARGET_PRESETS["synthseg"].mapping)
            self.structures = [load_real_case(i, r, folding, spacing_mm)[1] for i, r in pairs]
        log.info("real validation set %r: %d cases", spec.name, len(self.cases))

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, target = self.cases[i]
        item = {"image": image, "target": target}
        return item | ({"structures": self.structures[i]} if self.structures else {})
