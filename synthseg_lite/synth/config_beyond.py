"""Settings of the generator's stages beyond SynthSeg: lesions, structure size, the partial-volume
rim and texture. Split from :mod:`synthseg_lite.synth.config` (which re-exports them and checks
them with the rest in :class:`~synthseg_lite.synth.config.SynthConfig`); their defaults live here
only. Each stage is off by default, so the random stream of existing settings is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LesionConfig", "MorphConfig", "RimConfig", "TextureConfig"]


@dataclass
class LesionConfig:
    """Random blobs of their own random intensity inside the white matter, labelled white matter
    (:mod:`synthseg_lite.synth.lesions`; beyond SynthSeg, off by default).

    Attributes:
        prob: probability that a sample gets lesions (0 = off, the default: the random stream of
            existing settings is unchanged).
        hosts: label values the blobs are painted inside (FreeSurfer: cerebral white matter).
        labels: the label painted inside each host (``labels[i]`` inside ``hosts[i]``); its
            Gaussian class draws its own mean, and the target maps it to the host's class.
            FreeSurfer: ``Left-Lesion``/``Right-Lesion`` (25/57), whose targets are cerebral WM.
        spacing_mm: spacing of the coarse random field, mm (sets the blobs' size).
        threshold: range of the per-sample threshold on the field (standard normal units): blobs
            where the field exceeds it; lower gives more and larger lesions. With the defaults,
            on 128^3 patches of the training maps at 1 mm: 0.6 paints about 10 % of the white
            matter (blobs of several hundred mm^3 and up), 1.2 about 2 % (blobs of ~100 mm^3),
            1.8 about 0.1 % (a few punctate blobs).
    """

    prob: float = 0.0
    hosts: list[int] = field(default_factory=lambda: [2, 41])
    labels: list[int] = field(default_factory=lambda: [25, 57])
    spacing_mm: float = 8.0
    threshold: list[float] = field(default_factory=lambda: [0.6, 1.8])


@dataclass
class MorphConfig:
    """Structures (by default the ventricular system) shrunk or grown by voxel layers on a
    fraction of the samples, the image and target following
    (:mod:`synthseg_lite.synth.morphology`; beyond SynthSeg, off by default).

    Attributes:
        prob: probability that a group of a sample is resized (0 = off, the default: the random
            stream of existing settings is unchanged).
        groups: label values resized together, one list per group; each group draws its own
            rounds (and its own ``prob``) per sample, and grows into every other brain label.
            Default: one group, the ventricles and the extra ventricle labels of SynthSeg's maps
            (136/137/163/164) all resized by the same rounds. Several groups (e.g. each ventricle
            with its extra labels) decouple the structures' sizes from each other.
        steps: [low, high] range of the integer rounds per resized group, voxels (negative:
            erosion, positive: dilation; 0 can be drawn and changes nothing).
        group_steps: one [low, high] range per group instead of ``steps`` (empty: ``steps`` for
            every group), e.g. ventricles [-2, 1] beside white matter [-1, 1].
        into: per group, the label values it may grow into and give way to (an empty list: every
            other brain label); empty: every group grows into every other brain label. The white
            matter against the cortex only (``[[3, 42]]``) moves the grey/white boundary, the
            cortex thickening or thinning, and leaves the deep grey matter alone.
        fraction: per group, [low, high] range of the fraction of a round's candidate voxels
            that change (empty: all of them, whole-voxel rounds). One voxel of the cerebral white
            matter is a third of its volume: a fraction moves the boundary by part of a voxel on
            average, in patches chosen by a smooth random field (``field_mm``), so the cortex's
            thickness varies from region to region as it does in a brain.
        field_mm: control-point spacing of that field, mm.
    """

    prob: float = 0.0
    groups: list[list[int]] = field(
        default_factory=lambda: [[4, 5, 14, 15, 43, 44, 136, 137, 163, 164]])
    steps: list[int] = field(default_factory=lambda: [-2, 1])
    group_steps: list[list[int]] = field(default_factory=list)
    into: list[list[int]] = field(default_factory=list)
    fraction: list[list[float]] = field(default_factory=list)
    field_mm: float = 8.0


@dataclass
class RimConfig:
    """Brain voxels beside the ventricles take part of the fluid's intensity, label unchanged: a
    rater's partial-volume convention (:mod:`synthseg_lite.synth.rim`; beyond SynthSeg, off by
    default).

    Attributes:
        prob: probability that a sample gets the rim (0 = off, the default: the random stream of
            existing settings is unchanged).
        labels: the label values whose intensity the rim takes (``synth.rim``: the lateral
            ventricles, inferior horns, 3rd and 4th ventricle, not the extra-cerebral CSF, whose
            border with the cortex showed no excess; ``synth.white_rim``: the cerebral WM).
        fraction: [low, high] range of the per-sample maximum fluid fraction ``a``; each rim
            voxel takes ``a * u`` of the fluid's intensity, ``u ~ U(0, 1)``.
        into: the label values the rim may lie in (empty: every other brain label;
            ``synth.white_rim``: the cortex).
    """

    prob: float = 0.0
    labels: list[int] = field(default_factory=lambda: [4, 5, 14, 15, 43, 44])
    fraction: list[float] = field(default_factory=lambda: [0.0, 0.8])
    into: list[int] = field(default_factory=list)


@dataclass
class TextureConfig:
    """Smooth intensity variation inside each structure (:mod:`synthseg_lite.synth.texture`;
    beyond SynthSeg, off by default).

    Attributes:
        prob: probability that a sample is textured (0 = off, the default: the random stream of
            existing settings is unchanged).
        std: [low, high] range of the per-sample spread ``s`` of the per-class amplitudes
            ``N(0, s)``, in GMM intensity units (0-255 scale) at the field's unit value.
        spacing_mm: spacing of the coarse random grid: the scale of the variation.
    """

    prob: float = 0.0
    std: list[float] = field(default_factory=lambda: [0.0, 12.0])
    spacing_mm: float = 16.0
