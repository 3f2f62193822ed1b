"""The label table of a run (:class:`LabelTable`) and :func:`build_label_table`, which makes
one from the ``data.labels`` setting (the FreeSurfer table, ``auto`` or a protocol file)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from synthseg_lite.labels.presets import (
    CSF_LABEL,
    EXTRACEREBRAL,
    FREESURFER_NAMES,
    LR_PAIRS,
    Prior,
    TargetPreset,
    _derived_target_pairs,
    identity_target,
    target_preset,
)
from synthseg_lite.labels.protocol import read_label_protocol

log = logging.getLogger(__name__)


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
