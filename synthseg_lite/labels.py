"""Label tables: generation labels, Gaussian classes, left/right pairs, target presets.

A label map is stored as ``uint8`` *indices* into :attr:`LabelTable.generation_labels` (index 0 is
always background, value 0). Every per-label quantity is then a small lookup table indexed by that
index, so the generator never loops over labels:

* ``classes[i]``        generation class (labels that share one Gaussian, e.g. left/right twins)
* ``lr_swap[i]``        index of the contralateral twin (itself for midline labels)
* ``extracerebral[i]``  dropped to background by the skull-stripping simulation
* ``target_lut[i]``     class index in the target preset (0 = background)

Label numbers follow the FreeSurfer colour table (aseg), plus SynthSeg's extra-cerebral labels
502-530 and its extra ventricle labels 136/137 (left) and 163/164 (right).

Any other label protocol (non-brain anatomy, infant or animal atlases, lesions) is an *open* table:
:func:`build_label_table` with ``labels="auto"`` (every value found in the training maps, each its
own Gaussian class, the target every label itself) or with a YAML/TSV protocol file
(:func:`read_label_protocol`: generation labels, Gaussian classes, left/right pairs, target
mapping and names, per-class intensity priors as lab2im's ``prior_means``/``prior_stds``).
Indices are ``uint8`` up to 256 labels, ``int16`` beyond.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FREESURFER_NAMES",
    "LR_PAIRS",
    "EXTRACEREBRAL",
    "TARGET_PRESETS",
    "REFERENCE_PRESETS",
    "STRUCTURE_GROUPS",
    "LabelTable",
    "TargetPreset",
    "build_label_table",
    "identity_target",
    "read_label_protocol",
    "target_preset",
]

log = logging.getLogger(__name__)

#: FreeSurfer label number -> name, for every label the shipped generation table knows.
FREESURFER_NAMES: dict[int, str] = {
    0: "background",
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum",
    14: "3rd-Ventricle", 15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus",
    18: "Left-Amygdala", 24: "CSF", 25: "Left-Lesion", 26: "Left-Accumbens-area",
    28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent", 46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
    53: "Right-Hippocampus", 54: "Right-Amygdala", 57: "Right-Lesion", 58: "Right-Accumbens-area",
    60: "Right-VentralDC", 62: "Right-vessel", 63: "Right-choroid-plexus",
    72: "5th-Ventricle", 77: "WM-hypointensities", 80: "non-WM-hypointensities",
    85: "Optic-Chiasm", 251: "CC_Posterior", 252: "CC_Mid_Posterior", 253: "CC_Central",
    254: "CC_Mid_Anterior", 255: "CC_Anterior",
    136: "Left-extra-ventricle-1", 137: "Left-extra-ventricle-2",
    163: "Right-extra-ventricle-1", 164: "Right-extra-ventricle-2",
    502: "extra-cerebral-502", 506: "extra-cerebral-506", 507: "extra-cerebral-507",
    508: "extra-cerebral-508", 509: "extra-cerebral-509", 511: "extra-cerebral-511",
    512: "extra-cerebral-512", 514: "extra-cerebral-514", 515: "extra-cerebral-515",
    516: "extra-cerebral-516", 530: "extra-cerebral-530",
}
# Desikan-Killiany cortical parcels (aparc+aseg): 1001-1035 left, 2001-2035 right.
FREESURFER_NAMES.update({1000 + i: f"ctx-lh-{i}" for i in range(1, 36)})
FREESURFER_NAMES.update({2000 + i: f"ctx-rh-{i}" for i in range(1, 36)})

#: (left, right) twins: swapped by the left/right flip and sharing one Gaussian.
LR_PAIRS: tuple[tuple[int, int], ...] = (
    (2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (10, 49), (11, 50), (12, 51), (13, 52),
    (17, 53), (18, 54), (25, 57), (26, 58), (28, 60), (30, 62), (31, 63), (136, 163), (137, 164),
    *((1000 + i, 2000 + i) for i in range(1, 36)),
)

#: Labels outside the brain: dropped to background by the skull-stripping simulation.
EXTRACEREBRAL: frozenset[int] = frozenset(v for v in FREESURFER_NAMES if 500 <= v < 600)
#: Extra-cerebral CSF: kept in half of the simulated skull strippings (imperfect stripping).
CSF_LABEL = 24

_CORTEX_PARCELS_L = tuple(range(1001, 1036))
_CORTEX_PARCELS_R = tuple(range(2001, 2036))

# Tissue grouping of the thesis (shared/data/README.md).
_TISSUE_GM = (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58,
              *_CORTEX_PARCELS_L, *_CORTEX_PARCELS_R)
_TISSUE_WM = (2, 41, 7, 46, 16, 28, 60, 77, 85, 251, 252, 253, 254, 255, 25, 57)
_TISSUE_CSF_VENTRICULAR = (4, 43, 5, 44, 14, 15, 72, 31, 63, 136, 137, 163, 164)


@dataclass(frozen=True)
class TargetPreset:
    """What the network learns to predict.

    Attributes:
        names: class names, index 0 is background.
        values: label value written for each class in output segmentations.
        mapping: FreeSurfer label -> class index; labels not listed map to 0.
        lr_pairs: (left class, right class) pairs, swapped by flip test-time augmentation.
    """

    names: tuple[str, ...]
    values: tuple[int, ...]
    mapping: Mapping[int, int]
    lr_pairs: tuple[tuple[int, int], ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def class_swap(self) -> list[int]:
        """Permutation of class indices that exchanges left and right classes."""
        perm = list(range(self.n_classes))
        for a, b in self.lr_pairs:
            perm[a], perm[b] = b, a
        return perm


def _tissue(csf: tuple[int, ...]) -> TargetPreset:
    mapping = {v: 1 for v in _TISSUE_GM} | {v: 2 for v in _TISSUE_WM} | {v: 3 for v in csf}
    return TargetPreset(("background", "GM", "WM", "CSF"), (0, 1, 2, 3), mapping)


# SynthSeg 1.0's 32 output labels (background + 31 structures).
_SYNTHSEG_VALUES = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 26, 28,
                    41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60)


def _synthseg() -> TargetPreset:
    index = {v: i for i, v in enumerate(_SYNTHSEG_VALUES)}
    mapping = dict(index)
    # Fold the finer labels into SynthSeg's structures.
    mapping |= {v: index[3] for v in _CORTEX_PARCELS_L} | {v: index[42] for v in _CORTEX_PARCELS_R}
    mapping |= {25: index[2], 57: index[41], 77: index[2], 251: index[2], 252: index[2],
                253: index[2], 254: index[2], 255: index[2], 85: index[16],
                31: index[4], 63: index[43], 136: index[4], 137: index[5],
                163: index[43], 164: index[44], 72: index[14]}
    mapping[0] = 0
    pairs = tuple((index[a], index[b]) for a, b in LR_PAIRS if a in index and b in index)
    names = tuple(FREESURFER_NAMES[v] for v in _SYNTHSEG_VALUES)
    return TargetPreset(names, _SYNTHSEG_VALUES, mapping, pairs)


#: Target presets. ``tissue`` is the thesis' grouping with all CSF (ventricles + label 24, the
#: extra-cerebral/sulcal CSF); ``tissue_ventricular`` counts only ventricular CSF, as IBSR and
#: FreeSurfer references mostly do (label 24 becomes background).
TARGET_PRESETS: dict[str, TargetPreset] = {
    "tissue": _tissue(_TISSUE_CSF_VENTRICULAR + (CSF_LABEL,)),
    "tissue_ventricular": _tissue(_TISSUE_CSF_VENTRICULAR),
    "synthseg": _synthseg(),
}

#: Conventions of *reference* segmentations (evaluation): raw value -> tissue class index.
REFERENCE_PRESETS: dict[str, Mapping[int, int]] = {
    "tissue": {0: 0, 1: 1, 2: 2, 3: 3},
    "ibsr": {0: 0, 1: 3, 2: 1, 3: 2},
    "aseg": dict(TARGET_PRESETS["tissue"].mapping),
    # The same, but CSF = ventricles only (label 24 background): matches ``tissue_ventricular``.
    "aseg_ventricular": dict(TARGET_PRESETS["tissue_ventricular"].mapping),
}

#: Groups of SynthSeg 1.0's 31 structures (FreeSurfer aseg values), for per-structure evaluation:
#: every structure of the ``synthseg`` preset is in exactly one group.
STRUCTURE_GROUPS: dict[str, tuple[int, ...]] = {
    "cerebral WM": (2, 41),
    "cortex": (3, 42),
    "ventricles": (4, 43, 5, 44, 14, 15),
    "deep GM": (10, 49, 11, 50, 12, 51, 13, 52),
    "hippocampus+amygdala": (17, 53, 18, 54),
    "accumbens+ventral DC": (26, 58, 28, 60),
    "cerebellum": (7, 46, 8, 47),
    "brainstem": (16,),
}


def target_preset(name_or_mapping: str | Mapping[int, int] | TargetPreset) -> TargetPreset:
    """Return a target preset by name, or build one from a user mapping ``{label: class}``.

    Raises:
        ValueError: unknown preset name or an invalid mapping.
    """
    if isinstance(name_or_mapping, TargetPreset):
        return name_or_mapping
    if isinstance(name_or_mapping, str):
        if name_or_mapping not in TARGET_PRESETS:
            raise ValueError(
                f"unknown target preset {name_or_mapping!r}; choose one of {sorted(TARGET_PRESETS)}"
                " or give a mapping {label: class}"
            )
        return TARGET_PRESETS[name_or_mapping]
    mapping = {int(k): int(v) for k, v in dict(name_or_mapping).items()}
    if not mapping or min(mapping.values()) < 0:
        raise ValueError(f"a target mapping needs non-negative class indices, got {mapping}")
    n = max(mapping.values()) + 1
    return TargetPreset(tuple(f"class_{i}" for i in range(n)), tuple(range(n)), mapping)


@dataclass(frozen=True)
class LabelTable:
    """Everything the generator and the network need to know about labels.

    Build it with :meth:`LabelTable.create`. All tuples are indexed by generation index.
    """

    generation_labels: tuple[int, ...]
    classes: tuple[int, ...]
    lr_swap: tuple[int, ...]
    extracerebral: tuple[bool, ...]
    csf_index: int
    target: TargetPreset
    target_lut: tuple[int, ...]
    unknown: str = "warn"
    _index: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        target: str | Mapping[int, int] | TargetPreset = "tissue",
        generation_labels: Iterable[int] | None = None,
        unknown: str = "warn",
    ) -> LabelTable:
        """Build a table.

        Args:
            target: target preset name (``tissue``, ``tissue_ventricular``, ``synthseg``) or a
                user mapping ``{FreeSurfer label: class index}``.
            generation_labels: label values that may appear in the maps; default: every label
                in :data:`FREESURFER_NAMES`. At most 255 labels besides background.
            unknown: what to do with label values not in the table: ``"warn"`` (map them to
                background and log a warning) or ``"error"`` (raise ``ValueError``).
        """
        if unknown not in ("warn", "error"):
            raise ValueError(f"unknown= must be 'warn' or 'error', got {unknown!r}")
        labels = sorted(set(FREESURFER_NAMES if generation_labels is None else generation_labels))
        labels = [0] + [int(v) for v in labels if int(v) != 0]
        if len(labels) > 256:
            raise ValueError(f"at most 255 non-background labels are supported, got {len(labels) - 1}")
        index = {v: i for i, v in enumerate(labels)}
        twin = {a: b for a, b in LR_PAIRS} | {b: a for a, b in LR_PAIRS}
        lr_swap = tuple(index.get(twin.get(v, v), i) for i, v in enumerate(labels))
        # Twins share one Gaussian class: the class of a label is the index of its left twin.
        class_of = [min(i, lr_swap[i]) for i in range(len(labels))]
        dense = {c: k for k, c in enumerate(sorted(set(class_of)))}
        preset = target_preset(target)
        return cls(
            generation_labels=tuple(labels),
            classes=tuple(dense[c] for c in class_of),
            lr_swap=lr_swap,
            extracerebral=tuple(v in EXTRACEREBRAL for v in labels),
            csf_index=index.get(CSF_LABEL, 0),
            target=preset,
            target_lut=tuple(int(preset.mapping.get(v, 0)) for v in labels),
            unknown=unknown,
            _index=index,
        )

    @property
    def n_labels(self) -> int:
        return len(self.generation_labels)

    @property
    def n_classes(self) -> int:
        """Number of Gaussian generation classes."""
        return max(self.classes) + 1

    def encode(self, values: np.ndarray, source: str = "label map") -> np.ndarray:
        """Map raw label values to uint8 generation indices.

        Args:
            values: integer array of FreeSurfer label values, any shape.
            source: name used in messages (e.g. the file path).

        Returns:
            uint8 array of the same shape.

        Raises:
            ValueError: unknown labels when the table was built with ``unknown="error"``.
        """
        uniq = np.unique(values)
        missing = [int(v) for v in uniq if int(v) not in self._index]
        if missing:
            msg = f"{source}: labels {missing[:20]} are not in the label table"
            if self.unknown == "error":
                raise ValueError(msg + " (set data.unknown_labels=warn to map them to background)")
            log.warning("%s; mapped to background", msg)
        lut_keys = np.array(sorted(self._index), dtype=np.int64)
        pos = np.searchsorted(lut_keys, values.astype(np.int64))
        pos = np.clip(pos, 0, len(lut_keys) - 1)
        known = lut_keys[pos] == values
        idx = np.array([self._index[int(k)] for k in lut_keys], dtype=np.uint8)[pos]
        return np.where(known, idx, 0).astype(np.uint8)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Map generation indices back to FreeSurfer label values (int32)."""
        return np.asarray(self.generation_labels, dtype=np.int32)[indices]

    def to_dict(self) -> dict:
        """Plain-Python description, stored in checkpoints (see :meth:`from_dict`)."""
        return {
            "generation_labels": list(self.generation_labels),
            "target": {
                "names": list(self.target.names),
                "values": list(self.target.values),
                "mapping": {int(k): int(v) for k, v in self.target.mapping.items()},
                "lr_pairs": [list(p) for p in self.target.lr_pairs],
            },
            "unknown": self.unknown,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LabelTable:
        t = d["target"]
        preset = TargetPreset(
            tuple(t["names"]), tuple(int(v) for v in t["values"]),
            {int(k): int(v) for k, v in t["mapping"].items()},
            tuple(tuple(int(x) for x in p) for p in t["lr_pairs"]),
        )
        return cls.create(preset, d["generation_labels"], d.get("unknown", "warn"))

