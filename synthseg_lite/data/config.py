"""Settings of the ``data`` config group (Hydra schema ``data/schema``; the YAML files start from
these defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataConfig", "PhantomConfig", "RealValSet"]


@dataclass
class PhantomConfig:
    """Procedural head phantoms (:mod:`synthseg_lite.data.phantom`), used when no label maps are given.

    Attributes:
        n: number of phantoms.
        shape: grid of each phantom (1 mm voxels, RAS).
        seed: phantom seed (phantom ``i`` uses ``seed * 1000 + i``).
    """

    n: int = 20
    shape: list[int] = field(default_factory=lambda: [160, 192, 160])
    seed: int = 0


@dataclass
class RealValSet:
    """Real scans with reference segmentations, segmented at every validation.

    Attributes:
        name: used in metric names (``val_real/<name>/dice_GM``).
        images: glob, folder or file of the scans.
        references: glob, folder or file of the reference segmentations (paired in sorted order).
        reference_preset: convention of the references: ``tissue`` (1 GM, 2 WM, 3 CSF), ``ibsr``
            (1 CSF, 2 GM, 3 WM), ``aseg`` (FreeSurfer labels) or ``{value: tissue class}``.
        max_cases: use only the first cases (None: all).
    """

    name: str = "real"
    images: str = ""
    references: str = ""
    reference_preset: Any = "tissue"
    max_cases: int | None = None


@dataclass
class DataConfig:
    """The ``data`` config group: where the label maps come from and how batches are drawn.

    Attributes:
        label_maps: glob or folder of label maps (NIfTI/MGZ, any voxel size: resampled to 1 mm
            by nearest neighbour); None uses the embedded phantoms.
        phantoms: phantom settings (when ``label_maps`` is None).
        labels: label protocol: ``freesurfer`` (FreeSurfer/SynthSeg table), ``auto`` (every
            value found in the maps is a generation label with its own Gaussian class) or the
            path of a YAML/TSV protocol file (:func:`synthseg_lite.labels.read_label_protocol`).
        target: target preset (``tissue``, ``tissue_ventricular``, ``synthseg``) or
            ``{label: class}``; None: ``tissue`` for ``labels=freesurfer``, else the protocol
            file's target or every generation label itself.
        unknown_labels: ``warn`` (map to background) or ``error`` for labels outside the table.
        margin_vox: background kept around the labelled box of each map (voxels).
        n_folds: cross-validation folds.
        split_seed: seed of the fold shuffle (nnU-Net: 12345).
        splits_file: JSON list of ``{"train": [...], "val": [...]}``; None: ``splits.json`` in the
            run directory (created when missing, reused when present).
        batch_size: samples per step and device; None: planned from ``gpu_memory_gb``.
        num_workers: DataLoader workers for the label-map stream (0: main process).
        val_batches: synthetic validation batches (fixed seed) per validation.
        real_val: real-scan validation sets.
        reuse_steps: each batch of synthesised volumes serves this many consecutive training
            steps (2D training draws new slices from it at every step; 1 = a new batch per step).
        fixed_set: folder written by ``export.py`` (``images/``, ``labels/``, ``export.json``):
            train on these pre-generated samples instead of synthesising on the fly (the offline
            setting of lab2im + nnU-Net, for ablations); None: on the fly.
    """

    label_maps: str | None = None
    phantoms: PhantomConfig = field(default_factory=PhantomConfig)
    labels: str = "freesurfer"
    target: Any = None
    unknown_labels: str = "warn"
    margin_vox: int = 4
    n_folds: int = 5
    split_seed: int = 12345
    splits_file: str | None = None
    batch_size: int | None = None
    num_workers: int = 0
    val_batches: int = 4
    real_val: list[RealValSet] = field(default_factory=list)
    reuse_steps: int = 1
    fixed_set: str | None = None

    def __post_init__(self) -> None:
        if self.reuse_steps < 1:
            raise ValueError(f"data.reuse_steps must be >= 1, got {self.reuse_steps}")


def register_configs() -> None:
    """Register :class:`DataConfig` as ``data/schema`` in Hydra's ConfigStore (``conf/data/*.yaml``
    start from it, so the dataclass defaults are the only defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="schema", node=DataConfig)


register_configs()  # on import: the YAML presets start from the schema
