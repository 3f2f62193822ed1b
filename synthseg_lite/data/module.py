"""Folds, the per-step streams that feed the generator, real-scan validation sets and the
Lightning DataModule (label maps come from :mod:`synthseg_lite.data.bank`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from synthseg_lite.data.bank import load_label_maps, phantom_label_maps, resolve_paths
from synthseg_lite.data.config import DataConfig
from synthseg_lite.data.folds import fold_ids, kfold_splits, load_or_create_splits
from synthseg_lite.data.real import RealValDataset, load_real_case
from synthseg_lite.io import load_volume
from synthseg_lite.labels import LabelTable

__all__ = [
    "FixedSetStream", "LabelMapStream", "RealValDataset", "StepLoader", "SynthDataModule",
    "SyntheticValSet", "fold_ids", "kfold_splits", "load_fixed_set", "load_or_create_splits",
    "load_real_case",
]

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- streams


class LabelMapStream(IterableDataset):
    """Endless stream of label-map batches, one per training step.

    Each item is ``{"labels": (B, 1, X, Y, Z) uint8, "step": () int64, "group": () int64,
    "index": (B,) int64}``. Steps come in groups of ``reuse_steps`` that share one batch of
    volumes (group ``g = s // reuse_steps``; the module synthesises it once). Group ``g`` draws
    ``B`` distinct maps (with replacement only when fewer maps than ``B``) with a NumPy generator
    seeded from ``(seed, rank, g)``. Worker ``w`` of ``W`` yields steps
    ``start_step + w, + W, ...``, which the DataLoader interleaves back into step order.

    Args:
        maps: (N, X, Y, Z) uint8 generation indices.
        indices: maps this stream may draw (the training fold).
        batch_size: B.
        seed: stream seed; rank: distributed rank (each rank has its own stream).
        start_step: first step yielded (set by :class:`StepLoader` before each iteration).
        n_steps: stop after this many steps (None: endless).
        reuse_steps: steps per group of shared volumes.
    """

    def __init__(
        self,
        maps: np.ndarray,
        indices: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_step: int = 0,
        n_steps: int | None = None,
        reuse_steps: int = 1,
    ) -> None:
        if batch_size < 1 or not len(indices):
            raise ValueError(
                f"need batch_size >= 1 and at least one map, got {batch_size}, {len(indices)}"
            )
        self.maps, self.indices = maps, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.start_step, self.n_steps, self.reuse_steps = start_step, n_steps, reuse_steps

    def batch_indices(self, step: int) -> np.ndarray:
        """(B,) int64 indices into ``maps`` for ``step``."""
        group = step // self.reuse_steps
        rng = np.random.default_rng([self.seed, self.rank, group, 0x5EED])
        return rng.choice(
            self.indices, self.batch_size, replace=len(self.indices) < self.batch_size
        )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        idx = self.batch_indices(step)
        return {
            **self.samples(idx),
            "step": torch.tensor(step),
            "group": torch.tensor(step // self.reuse_steps),
            "index": torch.from_numpy(idx),
        }

    def samples(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The data of one step: ``{"labels": (B, 1, X, Y, Z) uint8}``."""
        return {"labels": torch.from_numpy(self.maps[idx][:, None])}

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + worker
        while self.n_steps is None or step < self.start_step + self.n_steps:
            yield self.batch(step)
            step += n_workers


class FixedSetStream(LabelMapStream):
    """Endless stream over a fixed set of pre-generated (image, target) samples (ablation of
    on-the-fly synthesis). Items are ``{"image": (B, 1, X, Y, Z) float32, "target": (B, X, Y, Z)
    int64, "step", "group", "index"}``, samples drawn exactly as :class:`LabelMapStream` draws maps.

    Args:
        images: (N, X, Y, Z) float16 in [0, 1]. targets: (N, X, Y, Z) uint8 class indices.
        batch_size, seed, rank, reuse_steps: as for :class:`LabelMapStream`.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int = 0,
        reuse_steps: int = 1,
    ) -> None:
        super().__init__(
            targets, np.arange(len(targets)), batch_size, seed, rank, reuse_steps=reuse_steps
        )
        self.images = images

    def samples(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "image": torch.from_numpy(self.images[idx][:, None].astype(np.float32)),
            "target": torch.from_numpy(self.maps[idx].astype(np.int64)),
        }


def load_fixed_set(folder: str | Path, table: LabelTable) -> tuple[np.ndarray, np.ndarray]:
    """Samples written by ``export.py`` (``nifti`` layout) as arrays for :class:`FixedSetStream`.

    Returns:
        images (N, X, Y, Z) float16 and targets (N, X, Y, Z) uint8 class indices of ``table``.

    Raises:
        ValueError: not an export folder, other target classes, or samples of different shapes.
    """
    folder = Path(folder)
    meta_path = folder / "export.json"
    if not meta_path.is_file():
        raise ValueError(f"data.fixed_set={folder}: no export.json (write it with export.py)")
    meta = json.loads(meta_path.read_text())
    if list(meta.get("target_names", [])) != list(table.target.names):
        raise ValueError(
            f"data.fixed_set={folder}: exported for classes {meta.get('target_names')}, "
            f"training predicts {list(table.target.names)} (export with the same target)"
        )
    values = np.asarray(meta["label_values_in_files"], dtype=np.int64)
    lut = np.zeros(max(256, int(values.max()) + 1), dtype=np.uint8)
    lut[values] = np.arange(len(values), dtype=np.uint8)
    names = sorted(p.name for p in (folder / "labels").glob("*.nii.gz"))
    if not names:
        raise ValueError(f"data.fixed_set={folder}: no labels/*.nii.gz")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        img = np.asarray(load_volume(folder / "images" / name).data, dtype=np.float16)
        lab = np.asarray(load_volume(folder / "labels" / name).data)
        return img, lut[np.rint(lab).astype(np.int64)]

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pairs = list(pool.map(read, names))
    shapes = {p[0].shape for p in pairs} | {p[1].shape for p in pairs}
    if len(shapes) != 1:
        raise ValueError(f"data.fixed_set={folder}: samples of different shapes {sorted(shapes)}")
    log.info("fixed training set %s: %d samples of %s", folder, len(pairs), pairs[0][0].shape)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class StepLoader(DataLoader):
    """A DataLoader over a :class:`LabelMapStream` that starts the stream at ``start_fn()``.

    Lightning creates a new iterator every epoch and after resuming; asking the trainer for the
    number of batches already consumed keeps the stream continuous (and a resumed run exact).
    Workers are never persistent, so each iteration sees the new start. The position is also
    stored in Lightning checkpoints (``state_dict``), which marks the loader as resumable.
    """

    def __init__(
        self, stream: LabelMapStream, start_fn: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        kwargs.pop("persistent_workers", None)
        super().__init__(stream, batch_size=None, **kwargs)
        self.start_fn = start_fn

    def __iter__(self):
        if self.start_fn is not None:
            self.dataset.start_step = int(self.start_fn())
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The next step of the stream (batches consumed so far)."""
        return {"next_step": int(self.start_fn()) if self.start_fn else self.dataset.start_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start at the stored step (``start_fn``, when given, still decides at the next iteration)."""
        self.dataset.start_step = int(state.get("next_step", 0))


class SyntheticValSet(Dataset):
    """Fixed synthetic validation batches: item ``i`` is ``{"labels", "val_index": i}``, the maps
    chosen with a generator seeded from ``(seed, i)``; the module seeds the synthesis from ``i``."""

    def __init__(
        self, maps: np.ndarray, indices: Sequence[int], batch_size: int, n_batches: int, seed: int
    ) -> None:
        self.maps, self.indices = maps, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, seed

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i, 0x7A1])
        idx = rng.choice(self.indices, self.batch_size, replace=len(self.indices) < self.batch_size)
        return {"labels": torch.from_numpy(self.maps[idx][:, None]), "val_index": torch.tensor(i)}


# ---------------------------------------------------------------------------------- data module


class SynthDataModule(pl.LightningDataModule):
    """Label maps -> per-step batches (training fold) + fixed synthetic and real validation sets.

    Args:
        cfg: data settings.
        table: label table (encodes the maps).
        fold: 0..n_folds-1 or ``"all"``.
        batch_size: samples per step and device.
        seed: seed of the training stream and of the validation batches.
        spacing_mm: training voxel size (real scans are resampled to it).
        splits_path: where ``splits.json`` is read or written (when ``cfg.splits_file`` is None).
    """

    def __init__(
        self,
        cfg: DataConfig,
        table: LabelTable,
        fold: int | str,
        batch_size: int,
        seed: int,
        spacing_mm: float,
        splits_path: str | Path,
    ) -> None:
        super().__init__()
        self.cfg, self.table, self.fold = cfg, table, fold
        self.batch_size, self.seed, self.spacing_mm = batch_size, seed, spacing_mm
        self.splits_path = Path(cfg.splits_file or splits_path)
        if not self.splits_path.is_file():  # fail before loading anything
            fold_ids([{"train": [], "val": []}] * cfg.n_folds, fold, [])
        self._maps: tuple[list[str], np.ndarray] | None = None
        self.real_sets: list[RealValDataset] = []

    def load_maps(self) -> tuple[list[str], np.ndarray]:
        """(ids, (N, X, Y, Z) uint8 maps), loaded once."""
        if self._maps is None:
            c = self.cfg
            if c.label_maps:
                paths = resolve_paths(c.label_maps)
                log.info("loading %d label maps from %s", len(paths), c.label_maps)
                self._maps = load_label_maps(paths, self.table, c.margin_vox)
            else:
                log.info("no data.label_maps given: using %d procedural phantoms", c.phantoms.n)
                self._maps = phantom_label_maps(c.phantoms, self.table, c.margin_vox)
            log.info(
                "label maps in memory: %s %s (%.0f MB)",
                self._maps[1].shape,
                self._maps[1].dtype,
                self._maps[1].nbytes / 2**20,
            )
        return self._maps

    def setup(self, stage: str | None = None) -> None:
        ids, maps = self.load_maps()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if str(self.fold) == "all":
            train_ids, val_ids = fold_ids([], "all", ids)
        else:
            splits = load_or_create_splits(
                self.splits_path, ids, self.cfg.n_folds, self.cfg.split_seed, write=rank == 0
            )
            train_ids, val_ids = fold_ids(splits, self.fold, ids)
        pos = {k: i for i, k in enumerate(ids)}
        self.train_indices = [pos[k] for k in train_ids]
        self.val_indices = [pos[k] for k in val_ids]
        log.info(
            "fold %s: %d training maps, %d validation maps", self.fold, len(train_ids), len(val_ids)
        )
        if self.cfg.fixed_set:
            images, targets = load_fixed_set(self.cfg.fixed_set, self.table)
            self.train_stream: LabelMapStream = FixedSetStream(
                images, targets, self.batch_size, self.seed, rank, self.cfg.reuse_steps
            )
        else:
            self.train_stream = LabelMapStream(
                maps,
                self.train_indices,
                self.batch_size,
                self.seed,
                rank,
                reuse_steps=self.cfg.reuse_steps,
            )
        self.val_set = SyntheticValSet(
            maps, self.val_indices, self.batch_size, self.cfg.val_batches, self.seed
        )
        if not self.real_sets:
            self.real_sets = [RealValDataset(s, self.spacing_mm) for s in self.cfg.real_val]

    def _start_step(self) -> int:
        t = self.trainer
        return 0 if t is None else t.global_step * t.accumulate_grad_batches

    def train_dataloader(self) -> StepLoader:
        return StepLoader(
            self.train_stream,
            self._start_step,
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [DataLoader(self.val_set, batch_size=None)]
        return loaders + [DataLoader(r, batch_size=1) for r in self.real_sets]
