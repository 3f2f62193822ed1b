"""FreeSurfer's label numbers and names, left/right pairs, the target presets (what a network
predicts: ``tissue``, ``synthseg``, ...) and the reference presets (how an evaluated segmentation's
values map to classes).

Label numbers follow the FreeSurfer colour table (aseg), plus SynthSeg's extra-cerebral labels
502-530 and its extra ventricle labels 136/137 (left) and 163/164 (right).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


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


def _synthseg(temporal_choroid: int = 5) -> TargetPreset:
    """SynthSeg 1.0's structures. ``temporal_choroid``: the structure (aseg value, 4 or 5) that
    takes the choroid plexus of the temporal horn (the maps' 137/164): SynthSeg trains it as the
    inferior horn (5/44); FreeSurfer labels it choroid plexus (31/63), which SynthSeg's 31
    structures and this project's evaluation count in the lateral ventricle (4/43)."""
    index = {v: i for i, v in enumerate(_SYNTHSEG_VALUES)}
    mapping = dict(index)
    # Fold the finer labels into SynthSeg's structures.
    mapping |= {v: index[3] for v in _CORTEX_PARCELS_L} | {v: index[42] for v in _CORTEX_PARCELS_R}
    mapping |= {25: index[2], 57: index[41], 77: index[2], 251: index[2], 252: index[2],
                253: index[2], 254: index[2], 255: index[2], 85: index[16],
                31: index[4], 63: index[43], 136: index[4], 163: index[43], 72: index[14],
                137: index[temporal_choroid], 164: index[dict(LR_PAIRS)[temporal_choroid]]}
    mapping[0] = 0
    pairs = tuple((index[a], index[b]) for a, b in LR_PAIRS if a in index and b in index)
    names = tuple(FREESURFER_NAMES[v] for v in _SYNTHSEG_VALUES)
    return TargetPreset(names, _SYNTHSEG_VALUES, mapping, pairs)


def hemispheres_merged(target: TargetPreset) -> tuple[TargetPreset, tuple[int, ...]]:
    """``target`` with each left/right pair as one class, for a network that cannot tell the
    hemispheres apart (FastSurfer's sagittal view: a sagittal slice does not show its side).

    Returns:
        The merged preset (a pair's class keeps the left class's place and value, its name
        without ``Left-``; no pairs) and ``index``: (K,) merged class of each class of ``target``.
    """
    right_to_left = {r: left for left, r in target.lr_pairs}
    kept = [k for k in range(target.n_classes) if k not in right_to_left]
    new = {k: i for i, k in enumerate(kept)}
    index = tuple(new[right_to_left.get(k, k)] for k in range(target.n_classes))
    names = tuple(target.names[k].removeprefix("Left-") for k in kept)
    values = tuple(target.values[k] for k in kept)
    mapping = {label: index[c] for label, c in target.mapping.items()}
    return TargetPreset(names, values, mapping), index


#: Target presets. ``tissue`` is the thesis' grouping with all CSF (ventricles + label 24, the
#: extra-cerebral/sulcal CSF); ``tissue_ventricular`` counts only ventricular CSF, as IBSR and
#: FreeSurfer references mostly do (label 24 becomes background).
TARGET_PRESETS: dict[str, TargetPreset] = {
    "tissue": _tissue(_TISSUE_CSF_VENTRICULAR + (CSF_LABEL,)),
    "tissue_ventricular": _tissue(_TISSUE_CSF_VENTRICULAR),
    "synthseg": _synthseg(),
    # The same with FreeSurfer's choroid plexus convention: the temporal horn's choroid plexus
    # (137/164) in the lateral ventricle, as the aseg's 31/63 are counted, not in the inferior horn
    "synthseg_fs": _synthseg(temporal_choroid=4),
    # SynthSeg's structures, hemispheres merged: the target of a sagittal view network
    "synthseg_hemispheres": hemispheres_merged(_synthseg())[0],
    # The same for the shipped structure model's convention (``synthseg_fs``)
    "synthseg_fs_hemispheres": hemispheres_merged(_synthseg(temporal_choroid=4))[0],
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

#: SynthSeg's topological classes (FreeSurfer values): structures whose union is one connected
#: piece of tissue (a hemisphere's WM and cortex; a lateral ventricle, its inferior horn and the
#: hippocampus beside it; a cerebellar hemisphere's WM and cortex). Every other structure is a
#: topological class of its own.
TOPOLOGY_GROUPS: tuple[tuple[int, ...], ...] = (
    (2, 3),
    (41, 42),
    (4, 5, 17),
    (43, 44, 53),
    (7, 8),
    (46, 47),
)


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
