"""Generator settings: the one place where their defaults live (the stages beyond SynthSeg in
:mod:`synthseg_lite.synth.config_beyond`, re-exported here and checked with the rest).

Defaults follow SynthSeg (Billot et al., Medical Image Analysis 2023, Table S1) unless stated.
Hydra sees these dataclasses as the schema of the ``synth`` config group
(:func:`register_configs`); YAML presets in ``conf/synth/`` only override them.
Ranges are ``[low, high]`` of a uniform distribution. Units are in the names (mm, degrees).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synthseg_lite.synth.config_beyond import LesionConfig, MorphConfig, RimConfig, TextureConfig

__all__ = [
    "SpatialConfig", "FlipConfig", "SkullStripConfig", "GMMConfig", "BiasConfig", "GammaConfig",
    "ResolutionConfig", "NoiseConfig", "LesionConfig", "MorphConfig", "RimConfig",
    "TextureConfig", "SynthConfig", "register_configs",
]


@dataclass
class SpatialConfig:
    """Affine + diffeomorphic (SVF, scaling and squaring) deformation, fused with the random crop.

    Attributes:
        enabled: False gives the identity transform (the crop is still random unless
            ``crop_jitter`` is False).
        rotation_deg: max |rotation| about each axis, degrees.
        scaling: range of the per-axis scaling factor.
        shear: max |shear| (off-diagonal terms).
        translation_mm: max |translation| per axis, mm.
        svf_std_mm: range of the per-sample std of the stationary velocity field, mm.
        svf_control_points: size of the Gaussian velocity grid drawn over a 256 mm head (SynthSeg: 10);
            the grid spacing (25.6 mm) is kept for any patch size.
        svf_steps: scaling-and-squaring steps.
        integration_spacing_mm: grid spacing at which the SVF is integrated, mm (upsampled after).
        crop_jitter: draw the crop centre uniformly where the patch fits; False centres it.
    """

    enabled: bool = True
    rotation_deg: float = 20.0
    scaling: list[float] = field(default_factory=lambda: [0.8, 1.2])
    shear: float = 0.015
    translation_mm: float = 30.0
    svf_std_mm: list[float] = field(default_factory=lambda: [0.0, 4.0])
    svf_control_points: int = 10
    svf_steps: int = 7
    integration_spacing_mm: float = 4.0
    crop_jitter: bool = True


@dataclass
class FlipConfig:
    """Left/right flip with contralateral label swap."""

    prob: float = 0.5


@dataclass
class SkullStripConfig:
    """Skull-stripping simulation: extra-cerebral labels become background.

    Attributes:
        prob: probability of stripping a sample.
        keep_csf_prob: of the stripped samples, fraction that keep the extra-cerebral CSF (label
            24), simulating imperfect stripping.
    """

    prob: float = 0.5
    keep_csf_prob: float = 0.5


@dataclass
class GMMConfig:
    """One Gaussian per generation class. Intensities are on SynthSeg's 0-255 scale.

    Attributes:
        mean: range of class means.
        std: range of class standard deviations.
        background_zero_prob: probability that the background is exactly 0 (skull-stripped look).
        background_low_prob: probability that the background is dark but not zero: mean ~
            U(background_low_mean), std ~ U(background_low_std) (SynthSeg: 0.25, with [0, 15] and
            [0, 5]; exclusive with the zero background, drawn from the same uniform as in SynthSeg).
            0 = off, the default (the random stream of existing settings is unchanged);
            ``synth=synthseg`` sets SynthSeg's value.
        prior_prob: probability that a sample's brain classes take a tissue prior instead of random
            means (SynthSeg's informative priors mixed with random ones; 0 = off, the default).
            The prior below is T1-like: GM ~ U(prior_gm), WM = GM + U(prior_wm_minus_gm),
            CSF ~ U(prior_csf), each class then jittered by U(-prior_jitter, prior_jitter).
        tie_prob: probability, per sample and per group of ``tie_groups``, that the group's labels
            share one Gaussian (the mean and std of its first class) instead of each drawing its
            own. In a real scan the fluid of a lateral ventricle, its inferior horn, the 3rd and 4th
            ventricles and the cisterns is one fluid, and cerebral and cerebellar white matter one
            tissue: a network that has only seen them apart can learn to find their borders by a
            contrast no scan has. Tied samples leave it only the anatomy. 0 = off, the default
            (the random stream of existing settings is unchanged). Beyond SynthSeg.
        tie_groups: label values tied together, one list per group; labels a table lacks raise
            when ``tie_prob > 0``. Default: the fluids (4, 5, 14, 15, 24, 43, 44), white matter
            (2, 7, 41, 46) and cortical grey matter (cortex, cerebellar cortex, hippocampus,
            amygdala: 3, 8, 17, 18, 42, 47, 53, 54).
    """

    mean: list[float] = field(default_factory=lambda: [0.0, 255.0])
    std: list[float] = field(default_factory=lambda: [0.0, 35.0])
    background_zero_prob: float = 0.05
    background_low_prob: float = 0.0
    background_low_mean: list[float] = field(default_factory=lambda: [0.0, 15.0])
    background_low_std: list[float] = field(default_factory=lambda: [0.0, 5.0])
    prior_prob: float = 0.0
    prior_gm: list[float] = field(default_factory=lambda: [80.0, 150.0])
    prior_wm_minus_gm: list[float] = field(default_factory=lambda: [25.0, 85.0])
    prior_csf: list[float] = field(default_factory=lambda: [5.0, 65.0])
    prior_jitter: float = 15.0
    tie_prob: float = 0.0
    tie_groups: list[list[int]] = field(default_factory=lambda: [
        [4, 5, 14, 15, 24, 43, 44], [2, 7, 41, 46], [3, 8, 17, 18, 42, 47, 53, 54]])


@dataclass
class BiasConfig:
    """Multiplicative bias field: exp of an upsampled Gaussian grid.

    Attributes:
        std: range of the per-sample std of the log-field.
        control_points: size of the coarse Gaussian grid per axis.
        prob: probability that a sample gets a bias field (SynthSeg: 0.95; 1 = always, the
            default, which keeps the random stream of existing settings).
    """

    std: list[float] = field(default_factory=lambda: [0.0, 0.6])
    control_points: int = 4
    prob: float = 1.0


@dataclass
class GammaConfig:
    """Gamma transform ``x ** exp(N(0, std))`` on the [0, 1]-rescaled image."""

    std: float = 0.4


@dataclass
class ResolutionConfig:
    """Acquisition simulation along one random axis (SynthSeg paper, section 3.1.4).

    Attributes:
        enabled: False keeps the image at the output resolution.
        spacing_mm: range of the simulated slice spacing, mm.
        thickness_min_mm: slice thickness ~ U(thickness_min_mm, spacing), mm.
        alpha: range of the Gaussian slice-profile factor (sigma = alpha * 0.75 * thickness / voxel).
        prob_native: probability of keeping the native resolution.
        iso_prob: of the other samples, fraction acquired at an isotropic low resolution instead
            of thick slices along one axis: spacing ~ U(iso_spacing_mm) on all three axes,
            thickness ~ U(thickness_min_mm, spacing) (SynthSeg's p_iso: 0.1 with [1, 4] mm).
            0 = off, the default (keeps the random stream); ``synth=synthseg`` sets 0.1.
        iso_spacing_mm: range of the isotropic spacing, mm.
        psf_sigma_vox: Gaussian point-spread function, sigma in output voxels (times the
            sample's ``alpha``), on every axis the acquisition keeps at the output resolution
            (all three for a native sample): SynthSeg's 0.5 (``blurring_sigma_for_downsampling``).
            0 = none, the default (keeps earlier runs' images); ``synth=synthseg`` sets 0.5.
    """

    enabled: bool = True
    spacing_mm: list[float] = field(default_factory=lambda: [1.0, 9.0])
    thickness_min_mm: float = 1.0
    alpha: list[float] = field(default_factory=lambda: [0.95, 1.05])
    prob_native: float = 0.05
    iso_prob: float = 0.0
    iso_spacing_mm: list[float] = field(default_factory=lambda: [1.0, 4.0])
    psf_sigma_vox: float = 0.0


@dataclass
class NoiseConfig:
    """Additive noise after resolution simulation (beyond SynthSeg; off by default).

    Attributes:
        kind: ``"none"``, ``"gaussian"`` or ``"rician"``.
        std: range of the noise std on the [0, 1] image.
    """

    kind: str = "none"
    std: list[float] = field(default_factory=lambda: [0.0, 0.05])


@dataclass
class SynthConfig:
    """Everything the generator does.

    Attributes:
        patch_shape: output size (voxels).
        voxel_mm: output voxel size, mm (the label maps are 1 mm).
        partial_volume_factor: generate intensities on a grid this many times finer, then
            average-pool (partial-volume effects; 1 = off, beyond SynthSeg).
    """

    patch_shape: list[int] = field(default_factory=lambda: [160, 160, 160])
    voxel_mm: float = 1.0
    partial_volume_factor: int = 1
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)
    skull_strip: SkullStripConfig = field(default_factory=SkullStripConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    gamma: GammaConfig = field(default_factory=GammaConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    lesion: LesionConfig = field(default_factory=LesionConfig)
    morph: MorphConfig = field(default_factory=MorphConfig)
    rim: RimConfig = field(default_factory=RimConfig)
    #: the same stage at the grey/white border: the cortex's inner layer takes part of the white
    #: matter's intensity (partial volume and the cortex's own myelin), label unchanged; off by
    #: default
    white_rim: RimConfig = field(default_factory=lambda: RimConfig(
        labels=[2, 41], into=[3, 42], fraction=[0.0, 0.6]))
    texture: TextureConfig = field(default_factory=TextureConfig)

    def __post_init__(self) -> None:
        if len(self.patch_shape) != 3 or min(self.patch_shape) < 1:
            raise ValueError(f"synth.patch_shape must be 3 positive ints, got {self.patch_shape}")
        if self.voxel_mm <= 0:
            raise ValueError(f"synth.voxel_mm must be > 0, got {self.voxel_mm}")
        if self.partial_volume_factor < 1:
            raise ValueError(f"synth.partial_volume_factor must be >= 1, got {self.partial_volume_factor}")
        if self.noise.kind not in ("none", "gaussian", "rician"):
            raise ValueError(f"synth.noise.kind must be none|gaussian|rician, got {self.noise.kind!r}")
        for name, rng in (("spatial.scaling", self.spatial.scaling), ("gmm.mean", self.gmm.mean),
                          ("gmm.std", self.gmm.std), ("bias.std", self.bias.std),
                          ("gmm.prior_gm", self.gmm.prior_gm), ("gmm.prior_csf", self.gmm.prior_csf),
                          ("gmm.prior_wm_minus_gm", self.gmm.prior_wm_minus_gm),
                          ("resolution.spacing_mm", self.resolution.spacing_mm),
                          ("resolution.alpha", self.resolution.alpha), ("noise.std", self.noise.std),
                          ("spatial.svf_std_mm", self.spatial.svf_std_mm),
                          ("gmm.background_low_mean", self.gmm.background_low_mean),
                          ("gmm.background_low_std", self.gmm.background_low_std),
                          ("resolution.iso_spacing_mm", self.resolution.iso_spacing_mm),
                          ("lesion.threshold", self.lesion.threshold),
                          ("morph.steps", self.morph.steps),
                          ("rim.fraction", self.rim.fraction),
                          ("white_rim.fraction", self.white_rim.fraction),
                          ("texture.std", self.texture.std)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"synth.{name} must be [low, high] with low <= high, got {list(rng)}")
        for name, prob in (("gmm.background_low_prob", self.gmm.background_low_prob),
                           ("bias.prob", self.bias.prob),
                           ("resolution.iso_prob", self.resolution.iso_prob),
                           ("lesion.prob", self.lesion.prob),
                           ("morph.prob", self.morph.prob),
                           ("rim.prob", self.rim.prob),
                           ("white_rim.prob", self.white_rim.prob),
                           ("texture.prob", self.texture.prob),
                           ("gmm.tie_prob", self.gmm.tie_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"synth.{name} must be a probability in [0, 1], got {prob}")
        for name, prob in (("flip.prob", self.flip.prob),
                           ("skull_strip.prob", self.skull_strip.prob),
                           ("skull_strip.keep_csf_prob", self.skull_strip.keep_csf_prob),
                           ("gmm.background_zero_prob", self.gmm.background_zero_prob),
                           ("gmm.prior_prob", self.gmm.prior_prob),
                           ("resolution.prob_native", self.resolution.prob_native)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"synth.{name} must be a probability in [0, 1], got {prob}")
        for name, low in (("gmm.std", self.gmm.std[0]), ("bias.std", self.bias.std[0]),
                          ("noise.std", self.noise.std[0]),
                          ("spatial.svf_std_mm", self.spatial.svf_std_mm[0]),
                          ("gmm.background_low_std", self.gmm.background_low_std[0]),
                          ("texture.std", self.texture.std[0]),
                          ("gamma.std", self.gamma.std),
                          ("spatial.rotation_deg", self.spatial.rotation_deg),
                          ("spatial.shear", self.spatial.shear),
                          ("spatial.translation_mm", self.spatial.translation_mm),
                          ("gmm.prior_jitter", self.gmm.prior_jitter),
                          ("resolution.psf_sigma_vox", self.resolution.psf_sigma_vox)):
            if low < 0:
                raise ValueError(
                    f"synth.{name} must not be negative (a spread or a maximum), got {low}"
                )
        for name, low in (("spatial.scaling", self.spatial.scaling[0]),
                          ("resolution.spacing_mm", self.resolution.spacing_mm[0]),
                          ("resolution.iso_spacing_mm", self.resolution.iso_spacing_mm[0]),
                          ("resolution.thickness_min_mm", self.resolution.thickness_min_mm),
                          ("spatial.integration_spacing_mm", self.spatial.integration_spacing_mm),
                          ("lesion.spacing_mm", self.lesion.spacing_mm),
                          ("texture.spacing_mm", self.texture.spacing_mm)):
            if low <= 0:
                raise ValueError(f"synth.{name} must be > 0, got {low}")
        for name, n, least in (("spatial.svf_control_points", self.spatial.svf_control_points, 2),
                               ("spatial.svf_steps", self.spatial.svf_steps, 0),
                               ("bias.control_points", self.bias.control_points, 2)):
            if n < least:
                raise ValueError(f"synth.{name} must be >= {least}, got {n}")
        if len(self.lesion.hosts) != len(self.lesion.labels) or not self.lesion.hosts:
            raise ValueError("synth.lesion.hosts and synth.lesion.labels must be non-empty lists of "
                             f"the same length, got {list(self.lesion.hosts)} and "
                             f"{list(self.lesion.labels)}")
        morph_values = [v for group in self.morph.groups for v in group]
        if not self.morph.groups or not all(self.morph.groups):
            raise ValueError("synth.morph.groups must be non-empty lists of label values to resize, "
                             f"got {self.morph.groups}")
        if len(set(morph_values)) != len(morph_values):
            raise ValueError(f"synth.morph.groups: a label is in two groups ({self.morph.groups})")
        if any(int(v) != v for v in self.morph.steps):
            raise ValueError(f"synth.morph.steps must be whole voxels, got {list(self.morph.steps)}")
        for name, per_group in (("group_steps", self.morph.group_steps), ("into", self.morph.into),
                                ("fraction", self.morph.fraction)):
            if per_group and len(per_group) != len(self.morph.groups):
                raise ValueError(f"synth.morph.{name} needs one entry per group "
                                 f"({len(self.morph.groups)}), got {len(per_group)}")
        for rng in self.morph.group_steps:
            if len(rng) != 2 or rng[0] > rng[1] or any(int(v) != v for v in rng):
                raise ValueError("synth.morph.group_steps must be [low, high] whole voxels with "
                                 f"low <= high, got {list(rng)}")
        for rng in self.morph.fraction:
            if len(rng) != 2 or not 0.0 <= rng[0] <= rng[1] <= 1.0:
                raise ValueError("synth.morph.fraction must be [low, high] with 0 <= low <= high "
                                 f"<= 1, got {list(rng)}")
        if self.morph.field_mm <= 0:
            raise ValueError(f"synth.morph.field_mm must be > 0, got {self.morph.field_mm}")
        for group, into in zip(self.morph.groups, self.morph.into):
            if set(group) & set(into):
                raise ValueError(f"synth.morph.into: group {list(group)} cannot grow into its own "
                                 f"labels {sorted(set(group) & set(into))}")
        tie_values = [v for group in self.gmm.tie_groups for v in group]
        if not self.gmm.tie_groups or not all(self.gmm.tie_groups) or 0 in tie_values:
            raise ValueError("synth.gmm.tie_groups must be non-empty lists of non-background label "
                             f"values, got {self.gmm.tie_groups}")
        if len(set(tie_values)) != len(tie_values):
            raise ValueError(f"synth.gmm.tie_groups: a label is in two groups ({self.gmm.tie_groups})")
        for name, rim in (("rim", self.rim), ("white_rim", self.white_rim)):
            if not rim.labels:
                raise ValueError(f"synth.{name}.labels must be a non-empty list of label values")
            if not 0.0 <= rim.fraction[0] <= rim.fraction[1] <= 1.0:
                raise ValueError(f"synth.{name}.fraction must lie in [0, 1], got "
                                 f"{list(rim.fraction)}")
            if set(rim.labels) & set(rim.into):
                raise ValueError(f"synth.{name}.into cannot hold its own labels "
                                 f"{sorted(set(rim.labels) & set(rim.into))}")
        if self.gmm.background_zero_prob + self.gmm.background_low_prob > 1.0:
            raise ValueError("synth.gmm.background_zero_prob + background_low_prob must be <= 1, got "
                             f"{self.gmm.background_zero_prob} + {self.gmm.background_low_prob}")


def register_configs() -> None:
    """Register :class:`SynthConfig` as ``synth/schema`` in Hydra's ConfigStore.

    ``conf/synth/*.yaml`` start from it (``defaults: [schema, _self_]``), so the defaults above are
    the only ones and every key can be overridden from the command line.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="synth", name="schema", node=SynthConfig)


register_configs()  # on import: the YAML presets start from the schema
