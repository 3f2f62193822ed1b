"""Helpers the test modules share (plain functions; the fixtures are in ``conftest.py``):
synthetic scans and label maps, the train command's composed config, a stand-in network, and
running a command's ``main()`` in this process."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from synthseg_lite.commands import train as train_command
from synthseg_lite.inference import pipeline
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]

ANISO = np.array([[1.2, 0, 0, -20], [0, 0.9, 0, -15], [0, 0, 1.5, -10], [0, 0, 0, 1.0]])


def _head(shape=(48, 52, 44), seed=0) -> np.ndarray:
    """A smooth head-like intensity image: float32, 0 outside an ellipsoid, two tissues inside."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = np.sqrt((((idx - np.array(shape) / 2) / (np.array(shape) / 2.4)) ** 2).sum(-1))
    img = np.where(r < 1, 60 + 50 * (r < 0.6), 0) + rng.normal(0, 3, shape) * (r < 1)
    return img.astype(np.float32)


AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: 96 x 104 x 88 mm


def _save(data, path: Path, affine=AFFINE, dtype=None) -> Path:
    """``data`` as a NIfTI file at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype)
    img = nib.Nifti1Image(data, affine)
    nib.save(img, str(path))
    return path


def two_hemisphere_head(size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball of cortex (3 left, 42 right) around white matter (2, 41), split at x = size/2.

    Returns:
        (labels int32 (size,)*3, voxel coordinates x (for left/right), radius from the centre).
    """
    x, y, z = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    c = (size - 1) / 2
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2)
    left = x < size // 2
    lab = np.zeros((size,) * 3, np.int32)
    lab[r < 0.45 * size] = np.where(left, 3, 42)[r < 0.45 * size]
    lab[r < 0.375 * size] = np.where(left, 2, 41)[r < 0.375 * size]
    return lab, x, r


def ventricle_maps(b: int = 4) -> tuple[LabelTable, torch.Tensor]:
    """``b`` copies of a two-hemisphere head (generation indices, (b, 1, 40, 40, 40)) and its
    ``synthseg`` table: cortex shell, WM, a lateral ventricle with an inferior horn per side,
    a 3rd ventricle between them."""
    table = LabelTable.create("synthseg")
    lab, x, _ = two_hemisphere_head(40)
    y, z = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")[1:]
    left = x < 20
    vent = (np.abs(np.abs(x - 19.5) - 6) < 3) & (np.abs(y - 19.5) < 6) & (np.abs(z - 19.5) < 4)
    lab[vent] = np.where(left, 4, 43)[vent]
    horn = (np.abs(np.abs(x - 19.5) - 6) < 2) & (np.abs(y - 28) < 2) & (np.abs(z - 19.5) < 1)
    lab[horn] = np.where(left, 5, 44)[horn]
    lab[(np.abs(x - 19.5) < 1) & (np.abs(y - 19.5) < 5) & (np.abs(z - 19.5) < 5)] = 14
    idx = torch.from_numpy(table.encode(lab)).view(1, 1, 40, 40, 40).repeat(b, 1, 1, 1, 1)
    return table, idx


def run_in_process(command: str, args: list[str]) -> int:
    """``main()`` of ``synthseg_lite.commands.<command>`` with ``sys.argv`` set; the exit code.

    Each command runs in its own process for a user, so Hydra's ConfigStore holds only what that
    command registers; here the train command's groups (``model``, ``data``: imported by other
    test modules) are hidden from the other commands, where ``model=`` is a plain key.
    """
    from hydra.core.config_store import ConfigStore

    module = importlib.import_module(f"synthseg_lite.commands.{command}")
    repo = ConfigStore.instance().repo
    hidden = {g: repo.pop(g) for g in ("model", "data") if command != "train" and g in repo}
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", []):  # handlers of an earlier case hold its stream
            if type(h) is logging.StreamHandler and h.stream not in (sys.stderr, sys.stdout):
                h.stream = sys.stderr  # (not setStream: it flushes the closed stream)
    argv = sys.argv
    sys.argv = [f"{command}.py", *args]
    try:
        module.main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        repo.update(hidden)


TINY = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)


class BandNet(nn.Module):
    """Stand-in network: foreground (rescaled intensity > 0.3) split into K-1 bands along axis 2,
    band k is class k; soft logits so probabilities are not one-hot. (B,1,X,Y,Z) -> (B,K,X,Y,Z)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.k = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, nx, ny, nz = x.shape
        band = (torch.arange(nz) * (self.k - 1) // nz + 1).view(1, 1, 1, nz).expand(b, nx, ny, nz)
        logits = torch.zeros(b, self.k, nx, ny, nz)
        fg = x[:, 0] > 0.3
        logits.scatter_(1, band[:, None], 4.0)
        logits[:, 0] = torch.where(fg, torch.tensor(-4.0), torch.tensor(8.0))
        return logits


def _use_net(monkeypatch, tmp_path: Path, target: str) -> Path:
    """Make the pipeline load a BandNet for ``target``; returns a model file to name."""
    table = LabelTable.create(target)
    meta = ModelMeta(TINY, table, 1.0, (32, 32, 32), {})
    net = BandNet(table.target.n_classes)
    monkeypatch.setattr(pipeline, "load_ensemble", lambda path, device: ([net], meta))
    model = tmp_path / "model.pt"
    model.write_bytes(b"stand-in model " + target.encode())
    return model


def _small_head(shape=(28, 24, 36), seed=0) -> np.ndarray:
    """A small uniform ellipsoid (intensity 100, noise 2) on zeros: float32."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = (((idx - np.array(shape) / 2) / (np.array(shape) * 0.42)) ** 2).sum(-1)
    return np.where(r < 1, 100 + rng.normal(0, 2, shape), 0).astype(np.float32)


def _write(path: Path, affine=ANISO, seed=0) -> Path:
    """A :func:`_small_head` scan with an anisotropic, shifted affine at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_small_head(seed=seed), affine), str(path))
    return path


OPTS = dict(tta="none", progress=False, roi_size=[32, 32, 32], keep_largest="none")


def _bids(root: Path) -> Path:
    """A small BIDS dataset: two subjects, T1w (one with a session), a T2w and a BOLD run."""
    (root).mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    _write(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _write(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", seed=1)
    _write(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", seed=2)
    _write(root / "sub-02" / "ses-1" / "func" / "sub-02_ses-1_task-rest_bold.nii.gz")
    return root


def read_digests(path: Path, rank: int = 0) -> list[dict]:
    """The per-step batch digests a run wrote (``<path>.rank<rank>.jsonl``)."""
    return [json.loads(line) for line in Path(f"{path}.rank{rank}.jsonl").read_text().splitlines()]


def write_toy_maps(folder: Path, n: int = 5, shape=(48, 56, 48)) -> str:
    """``n`` small whole-head-like FreeSurfer label maps (RAS, 1 mm); returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    for i in range(n):
        r = np.sqrt((grid**2).sum(0)) * (0.9 + 0.05 * i)
        right = grid[0] > 0
        lab = np.zeros(shape, np.int32)
        for radius, lt, rt in ((23, 507, 507), (21, 24, 24), (19, 3, 42), (13, 2, 41), (4, 4, 43)):
            lab[r < radius] = np.where(right, rt, lt)[r < radius]
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(folder / f"toy_{i:02d}.nii.gz"))
    return str(folder / "*.nii.gz")


def compose(overrides: list[str]):
    """The train command's configuration with ``overrides``, composed as ``train.py`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def run_training(overrides: list[str], tmp: Path) -> tuple:
    """Build and fit a run in this process; returns (cfg, module, trainer)."""
    cfg = compose([f"paths.output_dir={tmp}", "logger=none", *overrides])
    dm, module, trainer = train_command.build(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.resume)
    return cfg, module, trainer
