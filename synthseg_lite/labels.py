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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


#: A per-class intensity prior: (mean [low, high] or None, std [low, high] or None) on the GMM's
#: 0-255 scale; None keeps ``synth.gmm.mean`` / ``synth.gmm.std``.
Prior = tuple[tuple[float, float] | None, tuple[float, float] | None]


def identity_target(labels: Iterable[int], names: Mapping[int, str] | None = None) -> TargetPreset:
    """Every generation label is its own output class, written with its own value.

    Args:
        labels: generation label values (0, the background, is added when missing).
        names: optional value -> name; default ``label_<value>``.
    """
    values = [0] + sorted({int(v) for v in labels} - {0})
    names = dict(names or {})
    return TargetPreset(
        tuple(names.get(v, "background" if v == 0 else f"label_{v}") for v in values),
        tuple(values), {v: i for i, v in enumerate(values)},
    )


def _derived_target_pairs(
    target_lut: Sequence[int], lr_swap: Sequence[int]
) -> tuple[tuple[int, int], ...] | None:
    """Target class pairs implied by the generation pairs, or None when they are not consistent
    (a class that would be the twin of two classes)."""
    partner: dict[int, int] = {}
    for i, j in enumerate(lr_swap):
        a, b = target_lut[i], target_lut[j]
        if a == b:
            continue
        if partner.get(a, b) != b or partner.get(b, a) != a:
            return None
        partner[a], partner[b] = b, a
    return tuple(sorted({(min(a, b), max(a, b)) for a, b in partner.items()}))


@dataclass(frozen=True)
class LabelTable:
    """Everything the generator and the network need to know about labels.

    Build it with :meth:`LabelTable.create` (or :func:`build_label_table`). All tuples are indexed
    by generation index, except ``priors`` (indexed by Gaussian class).

    Attributes:
        protocol: None for the FreeSurfer table; for an open table, the plain-Python description
            it was built from (``lr_pairs``, ``class_groups``, ``drop_labels``, ``priors``, label
            values), stored in checkpoints by :meth:`to_dict`.
        priors: per Gaussian class, ``(mean range or None, std range or None)`` (0-255 scale);
            empty when no class has a prior (the generator then draws exactly as before).
    """

    generation_labels: tuple[int, ...]
    classes: tuple[int, ...]
    lr_swap: tuple[int, ...]
    extracerebral: tuple[bool, ...]
    csf_index: int
    target: TargetPreset
    target_lut: tuple[int, ...]
    unknown: str = "warn"
    priors: tuple[Prior, ...] = ()
    protocol: Mapping | None = field(default=None, compare=False)
    _index: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        target: str | Mapping[int, int] | TargetPreset | None = "tissue",
        generation_labels: Iterable[int] | None = None,
        unknown: str = "warn",
        *,
        lr_pairs: Iterable[Sequence[int]] | None = None,
        class_groups: Iterable[Iterable[int]] = (),
        drop_labels: Iterable[int] = (),
        priors: Mapping[int, Sequence] | None = None,
        names: Mapping[int, str] | None = None,
        derive_pairs: bool | None = None,
    ) -> LabelTable:
        """Build a table.

        Args:
            target: target preset name (``tissue``, ``tissue_ventricular``, ``synthseg``), a
                user mapping ``{label: class index}``, a :class:`TargetPreset`, or None (every
                generation label is its own class: :func:`identity_target`).
            generation_labels: label values that may appear in the maps; default: every label
                in :data:`FREESURFER_NAMES`.
            unknown: what to do with label values not in the table: ``"warn"`` (map them to
                background and log a warning) or ``"error"`` (raise ``ValueError``).
            lr_pairs: None: the FreeSurfer table (its left/right twins, extra-cerebral labels and
                CSF). Otherwise an open table with these ``(left, right)`` label pairs (twins
                share a Gaussian class unless ``class_groups`` says otherwise).
            class_groups: open tables: groups of labels that share one Gaussian class (every
                other label has its own class).
            drop_labels: open tables: labels removed (to background) by the skull-strip step.
            priors: open tables: ``{label: (mean [low, high] or None, std [low, high] or None)}``
                for the class of that label (lab2im's uniform ``prior_means``/``prior_stds``).
            names: open tables: label value -> name (used by the identity target).
            derive_pairs: give a target without left/right pairs the class pairs implied by the
                generation pairs (when consistent); None: unless ``target`` is a
                :class:`TargetPreset` (stored tables keep their pairs as they are).
        """
        if unknown not in ("warn", "error"):
            raise ValueError(f"unknown= must be 'warn' or 'error', got {unknown!r}")
        open_table = lr_pairs is not None
        if generation_labels is None and open_table:
            raise ValueError("an open label table needs its generation labels")
        given = FREESURFER_NAMES if generation_labels is None else generation_labels
        labels = sorted({int(v) for v in given})
        labels = [0] + [v for v in labels if v != 0]
        if len(labels) > 32768:
            raise ValueError(
                f"at most 32767 non-background labels are supported, got {len(labels) - 1}"
            )
        index = {v: i for i, v in enumerate(labels)}
        pairs = [tuple(int(x) for x in p) for p in (LR_PAIRS if lr_pairs is None else lr_pairs)]
        if open_table:
            for p in pairs:
                if len(p) != 2 or p[0] == p[1] or not set(p) <= set(index) or 0 in p:
                    raise ValueError(f"left/right pair {list(p)}: needs two different non-zero "
                                     "generation labels")
            seen = [v for p in pairs for v in p]
            if len(seen) != len(set(seen)):
                raise ValueError("a label appears in more than one left/right pair")
        twin = {a: b for a, b in pairs} | {b: a for a, b in pairs}
        lr_swap = tuple(index.get(twin.get(v, v), i) for i, v in enumerate(labels))
        # Twins share one Gaussian class: the class of a label is the index of its left twin.
        class_of = [min(i, lr_swap[i]) for i in range(len(labels))]
        groups = [sorted({int(v) for v in g}) for g in class_groups]
        for g in groups:
            if not set(g) <= set(index) or (0 in g and len(g) > 1):
                raise ValueError(f"class group {g}: every label must be a generation label "
                                 "(and background has its own class)")
            rep = min(class_of[index[v]] for v in g)
            members = {class_of[index[v]] for v in g}
            class_of = [rep if c in members else c for c in class_of]
        dense = {c: k for k, c in enumerate(sorted(set(class_of)))}
        classes = tuple(dense[c] for c in class_of)
        class_priors: list[list] = [[None, None] for _ in dense]
        for value, prior in (priors or {}).items():
            if int(value) not in index:
                raise ValueError(f"prior for label {value}: not a generation label")
            c = classes[index[int(value)]]
            for k, rng in enumerate(prior):
                if rng is None:
                    continue
                rng = tuple(float(x) for x in rng)
                if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
                    raise ValueError(f"prior for label {value}: ranges must be [low, high] with "
                                     f"0 <= low <= high, got {list(rng)}")
                if class_priors[c][k] not in (None, rng):
                    raise ValueError(
                        f"labels of one Gaussian class have different priors ({value})"
                    )
                class_priors[c][k] = rng
        if isinstance(target, TargetPreset):
            preset = target
        else:
            preset = identity_target(labels, names) if target is None else target_preset(target)
        target_lut = tuple(int(preset.mapping.get(v, 0)) for v in labels)
        if derive_pairs is None:
            derive_pairs = not isinstance(target, TargetPreset)
        if derive_pairs and not preset.lr_pairs:
            derived = _derived_target_pairs(target_lut, lr_swap)
            if derived:
                preset = TargetPreset(preset.names, preset.values, preset.mapping, derived)
        drop = {int(v) for v in drop_labels} if open_table else set(EXTRACEREBRAL)
        protocol = None
        if open_table:
            protocol = {
                "lr_pairs": [list(p) for p in pairs],
                "class_groups": groups,
                "drop_labels": sorted(drop),
                "priors": {int(k): [None if r is None else [float(x) for x in r] for r in v]
                           for k, v in (priors or {}).items()},
                "names": {int(k): str(v) for k, v in (names or {}).items()},
            }
        return cls(
            generation_labels=tuple(labels),
            classes=classes,
            lr_swap=lr_swap,
            extracerebral=tuple(v in drop for v in labels),
            csf_index=0 if open_table else index.get(CSF_LABEL, 0),
            target=preset,
            target_lut=target_lut,
            unknown=unknown,
            priors=tuple((a, b) for a, b in class_priors)
            if any(a or b for a, b in class_priors) else (),
            protocol=protocol,
            _index=index,
        )

    @property
    def n_labels(self) -> int:
        return len(self.generation_labels)

    @property
    def n_classes(self) -> int:
        """Number of Gaussian generation classes."""
        return max(self.classes) + 1

    @property
    def index_dtype(self) -> type[np.integer]:
        """dtype of encoded maps: ``uint8`` up to 256 labels, ``int16`` beyond."""
        return np.uint8 if self.n_labels <= 256 else np.int16

    @property
    def flip_consistent(self) -> bool:
        """True when a left/right flip of the target is the target's class swap, i.e. flip
        test-time augmentation is right: every generation pair maps to a declared target pair
        (midline labels are not checked: SynthSeg's preset folds e.g. the corpus callosum into
        the left white matter)."""
        swap = self.target.class_swap()
        return all(swap[self.target_lut[i]] == self.target_lut[j]
                   for i, j in enumerate(self.lr_swap) if i != j)

    def encode(self, values: np.ndarray, source: str = "label map") -> np.ndarray:
        """Map raw label values to generation indices.

        Args:
            values: integer array of label values, any shape.
            source: name used in messages (e.g. the file path).

        Returns:
            array of the same shape, :attr:`index_dtype` (uint8, or int16 beyond 256 labels).

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
        idx = np.array([self._index[int(k)] for k in lut_keys], dtype=self.index_dtype)[pos]
        return np.where(known, idx, 0).astype(self.index_dtype)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Map generation indices back to label values (int32)."""
        return np.asarray(self.generation_labels, dtype=np.int32)[indices]

    def to_dict(self) -> dict:
        """Plain-Python description, stored in checkpoints (see :meth:`from_dict`)."""
        d = {
            "generation_labels": list(self.generation_labels),
            "target": {
                "names": list(self.target.names),
                "values": list(self.target.values),
                "mapping": {int(k): int(v) for k, v in self.target.mapping.items()},
                "lr_pairs": [list(p) for p in self.target.lr_pairs],
            },
            "unknown": self.unknown,
        }
        if self.protocol is not None:  # absent for the FreeSurfer table (as before)
            d["protocol"] = {k: (dict(v) if isinstance(v, Mapping) else list(v))
                             for k, v in self.protocol.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LabelTable:
        """Inverse of :meth:`to_dict` (dicts written before open tables existed give the FreeSurfer
        table, as they did)."""
        t = d["target"]
        preset = TargetPreset(
            tuple(t["names"]), tuple(int(v) for v in t["values"]),
            {int(k): int(v) for k, v in t["mapping"].items()},
            tuple(tuple(int(x) for x in p) for p in t["lr_pairs"]),
        )
        proto = d.get("protocol")
        if proto is None:
            return cls.create(preset, d["generation_labels"], d.get("unknown", "warn"))
        return cls.create(
            preset, d["generation_labels"], d.get("unknown", "warn"),
            lr_pairs=proto.get("lr_pairs", []), class_groups=proto.get("class_groups", []),
            drop_labels=proto.get("drop_labels", []),
            priors={int(k): v for k, v in (proto.get("priors") or {}).items()},
            names={int(k): v for k, v in (proto.get("names") or {}).items()},
        )


# ------------------------------------------------------------------------------- open protocols

_PROTOCOL_KEYS = {
    "labels", "classes", "lr_pairs", "target", "target_names", "priors", "drop_labels",
}


def _int_keys(d: Mapping, what: str) -> dict[int, object]:
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: keys must be integer label values ({exc})") from exc


def _range(v: object, what: str) -> tuple[float, float] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        v = [x for x in v.replace(",", " ").split()]
    try:
        lo, hi = (float(x) for x in v)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected [low, high], got {v!r}") from exc
    return lo, hi


def _read_tsv(path: Path) -> dict:
    """One row per generation label; columns ``value`` (required), ``name``, ``class``, ``twin``
    (value of the contralateral label), ``target`` (output value), ``target_name``,
    ``mean`` and ``std`` (``low,high``)."""
    import csv

    with open(path, newline="") as fh:
        lines = (line for line in fh if not line.startswith("#"))
        rows = list(csv.DictReader(lines, delimiter="\t"))
    if not rows or "value" not in rows[0]:
        raise ValueError(f"{path}: a TSV label protocol needs a header with a 'value' column")
    spec: dict = {"labels": {}, "classes": {}, "lr_pairs": [], "priors": {}}
    target, target_names = {}, {}
    for r in rows:
        v = int(r["value"])
        spec["labels"][v] = r.get("name") or f"label_{v}"
        if r.get("class"):
            spec["classes"].setdefault(r["class"], []).append(v)
        if r.get("twin") and int(r["twin"]) > v:
            spec["lr_pairs"].append([v, int(r["twin"])])
        if r.get("target", "") != "":
            target[v] = int(r["target"])
            if r.get("target_name"):
                target_names[int(r["target"])] = r["target_name"]
        if r.get("mean") or r.get("std"):
            spec["priors"][v] = {"mean": r.get("mean") or None, "std": r.get("std") or None}
    if target:
        spec["target"], spec["target_names"] = target, target_names
    return spec


def read_label_protocol(path: str | Path) -> dict:
    """Read a label protocol file (YAML, or TSV with one row per label) into the keyword
    arguments of :meth:`LabelTable.create` plus ``target`` (a :class:`TargetPreset` or None).

    YAML layout (every key but ``labels`` optional)::

        labels: {1: myocardium, 2: LV-blood, 3: RV-blood}  # value: name (or a list of values)
        classes: {blood: [2, 3]}      # labels sharing one Gaussian (others: their own class)
        lr_pairs: [[10, 11]]          # (left, right) values, swapped by flips
        target: {1: 1, 2: 2, 3: 2}    # generation value -> output value (default: itself);
                                      # unlisted labels -> background
        target_names: {1: myo, 2: blood}
        priors:                       # per class name or label value, 0-255 scale, uniform
          blood: {mean: [150, 220], std: [0, 15]}
        drop_labels: [20]             # removed by the skull-strip step

    Raises:
        ValueError: unreadable file, unknown keys, or values that do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.labels={str(path)!r}: no such file (or use freesurfer|auto)")
    if path.suffix.lower() in (".tsv", ".txt"):
        spec = _read_tsv(path)
    else:
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(spec, Mapping) or "labels" not in spec:
        raise ValueError(f"{path}: a label protocol needs a 'labels' entry")
    unknown_keys = set(spec) - _PROTOCOL_KEYS
    if unknown_keys:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown_keys)}; allowed: {sorted(_PROTOCOL_KEYS)}"
        )
    from synthseg_lite.schema import check_protocol

    check_protocol(spec, path)  # every field's type and range, one line naming it
    raw = spec["labels"]
    if isinstance(raw, Mapping):
        names = _int_keys(raw, f"{path}: labels")
    else:
        names = {int(v): f"label_{int(v)}" for v in raw}
    names = {k: str(v) for k, v in names.items()}
    names.setdefault(0, "background")
    groups_by_name = {str(k): [int(x) for x in v] for k, v in (spec.get("classes") or {}).items()}
    priors: dict[int, tuple] = {}
    for key, pr in (spec.get("priors") or {}).items():
        members = groups_by_name.get(str(key))
        if members is None:
            try:
                members = [int(key)]
            except ValueError:
                raise ValueError(
                    f"{path}: prior for {key!r}: not a class name or label value"
                ) from None
        if not isinstance(pr, Mapping) or not set(pr) <= {"mean", "std"}:
            raise ValueError(
                f"{path}: prior for {key!r} must be {{mean: [low, high], std: [low, high]}}"
            )
        rng = (_range(pr.get("mean"), f"{path}: prior mean of {key}"),
               _range(pr.get("std"), f"{path}: prior std of {key}"))
        for m in members:
            priors[m] = rng
    target = None
    if spec.get("target"):
        out = {k: int(v) for k, v in _int_keys(spec["target"], f"{path}: target").items()}
        given = _int_keys(spec.get("target_names") or {}, f"{path}: target_names")
        tnames = {k: str(v) for k, v in given.items()}
        values = [0] + sorted(set(out.values()) - {0})
        by_value = {v: names[k] for k, v in sorted(out.items()) if k in names}
        target = TargetPreset(
            tuple(tnames.get(v, by_value.get(v, "background" if v == 0 else f"label_{v}"))
                  for v in values),
            tuple(values), {k: values.index(v) for k, v in out.items()} | {0: 0},
        )
    return {
        "generation_labels": sorted(names), "names": names, "target": target,
        "lr_pairs": [list(p) for p in spec.get("lr_pairs") or []],
        "class_groups": list(groups_by_name.values()),
        "drop_labels": [int(v) for v in spec.get("drop_labels") or []],
        "priors": priors,
    }


def build_label_table(
    labels: str = "freesurfer",
    target: str | Mapping[int, int] | None = None,
    unknown: str = "warn",
    values: Iterable[int] | None = None,
) -> LabelTable:
    """The label table of a run, from the ``data.labels`` setting.

    Args:
        labels: ``freesurfer`` (the FreeSurfer/SynthSeg table), ``auto`` (every value in
            ``values`` is a generation label with its own Gaussian class, no pairs) or the path of
            a protocol file (:func:`read_label_protocol`).
        target: target preset or ``{label: class}``; None: ``tissue`` for ``freesurfer``, the
            file's target for a protocol file, else every generation label itself.
        unknown: ``warn`` or ``error`` for map values outside the table.
        values: label values found in the training maps (needed by ``auto``).

    Raises:
        ValueError: unknown setting, unreadable or inconsistent protocol file.
    """
    if labels == "freesurfer":
        return LabelTable.create("tissue" if target is None else target, unknown=unknown)
    if labels == "auto":
        if values is None:
            raise ValueError("data.labels=auto needs the label values of the training maps")
        return LabelTable.create(target, values, unknown, lr_pairs=())
    spec = read_label_protocol(labels)
    file_target = spec.pop("target")
    try:
        return LabelTable.create(file_target if target is None else target, unknown=unknown,
                                 derive_pairs=True, **spec)
    except ValueError as exc:  # values that do not fit together: name the file
        raise ValueError(f"{labels}: {exc}") from exc
