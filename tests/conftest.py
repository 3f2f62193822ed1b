"""Shared fixtures: a tiny random model file and toy label maps. Plain helpers (synthetic scans,
the composed train config, a stand-in network) are in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_toy_maps
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta, save_model
from synthseg_lite.model.unet import UNetConfig, build_unet


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny network at 2 mm (fast); its predictions are meaningless but well-formed."""
    torch.manual_seed(0)
    cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)
    path = tmp_path_factory.mktemp("model") / "fold_0.pt"
    return save_model(
        path, build_unet(cfg, 4), ModelMeta(cfg, LabelTable.create("tissue"), 2.0, (128,) * 3, {})
    )


@pytest.fixture
def toy_maps(tmp_path) -> str:
    """Five small whole-head-like FreeSurfer label maps in ``tmp_path/maps``; their glob."""
    return write_toy_maps(tmp_path / "maps")
