"""Label maps in memory, cross-validation folds, and the batch streams that feed the generator.

Only cheap CPU work happens here, in two steps along the flow:

* :mod:`~synthseg_lite.data.bank`: the label-map bank. Label maps are read once
  (``io.load_label_map``, resampled to 1 mm when they have another voxel size), encoded to uint8
  generation indices (int16 beyond 256 labels; ``LabelTable.encode``), cropped to their labelled
  box plus a margin and padded to one common shape, so that hundreds of maps fit in memory as one
  ``(N, X, Y, Z)`` array; the label table of a run (``data.labels``) is built there too.
* :mod:`~synthseg_lite.data.module`: folds, the per-step streams and the Lightning DataModule.
  Each training step picks ``B`` maps; the synthesis itself runs on the training device
  (:class:`synthseg_lite.model.module.SynthSegModule`).

Settings: :mod:`~synthseg_lite.data.config` (the ``data`` config group).

Reproducibility: the maps of step ``s`` on rank ``r`` are drawn with a generator seeded from
``(seed, s, r)``, whatever the number of DataLoader workers, so any batch can be rebuilt and a
resumed run continues the same stream (:class:`StepLoader` starts it at the trainer's step).
"""

from synthseg_lite.data.bank import (
    crop_to_labels,
    label_values,
    load_label_maps,
    make_label_table,
    phantom_label_maps,
    read_label_map_1mm,
    resolve_paths,
    stack_maps,
)
from synthseg_lite.data.config import DataConfig, PhantomConfig, RealValSet

#: Names served by :mod:`~synthseg_lite.data.module`, imported at first use (PEP 562) so that
#: inference, which needs only ``data.preprocess``, does not import Lightning (about 1 s).
_FROM_MODULE = (
    "FixedSetStream", "LabelMapStream", "RealValDataset", "StepLoader", "SynthDataModule",
    "SyntheticValSet", "fold_ids", "kfold_splits", "load_fixed_set", "load_or_create_splits",
    "load_real_case",
)


def __getattr__(name: str):
    if name in _FROM_MODULE:
        from synthseg_lite.data import module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# fmt: off
__all__ = [
    "DataConfig", "FixedSetStream", "LabelMapStream", "PhantomConfig", "RealValDataset", "RealValSet", "StepLoader",
    "SynthDataModule", "SyntheticValSet", "crop_to_labels", "fold_ids", "kfold_splits",
    "label_values", "load_fixed_set", "load_label_maps", "load_or_create_splits", "load_real_case",
    "make_label_table", "phantom_label_maps", "read_label_map_1mm", "resolve_paths", "stack_maps",
]
# fmt: on
