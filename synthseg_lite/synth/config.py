"""Generator settings: the one place where their defaults live.

Defaults follow SynthSeg (Billot et al., Medical Image Analysis 2023, Table S1) unless stated.
Hydra sees these dataclasses as the schema of the ``synth`` config group
(:func:`register_configs`); YAML presets in ``conf/synth/`` only override them.
Ranges are ``[low, high]`` of a uniform distribution. Units are in the names (mm, degrees).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SpatialConfig", "FlipConfig", "SkullStripConfig", "GMMConfig", "BiasConfig", "GammaConfig",
    "ResolutionConfig", "NoiseConfig", "SynthConfig", "register_configs",
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
        prior_prob: probability that a sample's brain classes take a tissue prior instead of random
            means (SynthSeg's informative priors mixed with random ones; 0 = off, the default).
            The prior below is T1-like: GM ~ U(prior_gm), WM = GM + U(prior_wm_minus_gm),
            CSF ~ U(prior_csf), each class then jittered by U(-prior_jitter, prior_jitter).
    """

    mean: list[float] = field(default_factory=lambda: [0.0, 255.0])
    std: list[float] = field(default_factory=lambda: [0.0, 35.0])
    background_zero_prob: float = 0.05
    prior_prob: float = 0.0
    prior_gm: list[float] = field(default_factory=lambda: [80.0, 150.0])
    prior_wm_minus_gm: list[float] = field(default_factory=lambda: [25.0, 85.0])
    prior_csf: list[float] = field(default_factory=lambda: [5.0, 65.0])
    prior_jitter: float = 15.0


@dataclass
class BiasConfig:
    """Multiplicative bias field: exp of an upsampled Gaussian grid.

    Attributes:
        std: range of the per-sample std of the log-field.
        control_points: size of the coarse Gaussian grid per axis.
    """

    std: list[float] = field(default_factory=lambda: [0.0, 0.6])
    control_points: int = 4


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
    """

    enabled: bool = True
    spacing_mm: list[float] = field(default_factory=lambda: [1.0, 9.0])
    thickness_min_mm: float = 1.0
    alpha: list[float] = field(default_factory=lambda: [0.95, 1.05])
    prob_native: float = 0.05


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
                          ("spatial.svf_std_mm", self.spatial.svf_std_mm)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"synth.{name} must be [low, high] with low <= high, got {list(rng)}")


def register_configs() -> None:
    """Register :class:`SynthConfig` as ``synth/schema`` in Hydra's ConfigStore.

    ``conf/synth/*.yaml`` start from it (``defaults: [schema, _self_]``), so the defaults above are
    the only ones and every key can be overridden from the command line.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="synth", name="schema", node=SynthConfig)
