"""Random parameters of the generator: every random draw happens here.

``sample_params`` draws, through one explicit :class:`torch.Generator`, a :class:`SynthParams` of
per-sample ``(B, ...)`` tensors on the generator's device. The apply stages are then deterministic
functions of (labels, params), so a batch is a pure function of (seed, step, rank, worker).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import torch

from synthseg_lite.synth.config import RimConfig, SynthConfig

__all__ = ["SynthParams", "sample_params", "make_generator", "seed_from"]


def seed_from(seed: int, step: int, rank: int = 0, worker: int = 0) -> int:
    """A 63-bit seed that depends on every argument (different ranks/workers never collide)."""
    key = f"synthseg_lite:{int(seed)}:{int(step)}:{int(rank)}:{int(worker)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, seed: int, step: int, rank: int = 0,
                   worker: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, step, rank, worker)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed_from(seed, step, rank, worker))
    return g


@dataclass
class SynthParams:
    """Per-sample parameters, all tensors with leading batch dimension B.

    Attributes:
        matrix: (B, 3, 3) linear part of the affine (rotation, scaling, shear, flip), applied to
            output coordinates in mm.
        centre: (B, 3) where the patch centre lands in the input map, input voxels (1 mm).
        velocity: (B, 3, *n) stationary velocity field at the control points, mm.
        flip: (B,) bool, left/right flip with label swap.
        strip: (B,) bool, skull stripping; keep_csf: (B,) bool, keep label 24 when stripping.
        means, stds: (B, C) GMM class means and standard deviations (0-255 scale).
        gmm_noise: (B, 1, *Pf) standard normal field of the GMM (Pf = patch * pv factor).
        bias: (B, 1, k, k, k) log bias field at the control points.
        log_gamma: (B,) gamma exponent is exp(log_gamma).
        res_axis: (B,) int64 axis of the simulated acquisition (0, 1, 2).
        res_spacing_mm, res_thickness_mm, res_alpha: (B,) slice spacing, thickness, profile factor.
        res_native: (B,) bool, keep native resolution.
        res_iso: (B,) bool, isotropic low resolution (all three axes at ``res_spacing_mm``)
            instead of thick slices along ``res_axis``.
        noise_std: (B,) noise std on [0, 1] images; noise: (B, 2, *P) standard normal fields
            (empty when noise is off).
        lesion_field: (B, 1, *n) standard normal coarse field of the lesion stage (empty when
            lesions are off); lesion_threshold: (B,) its threshold, ``inf`` for samples without.
        morph_steps: (B, G) int64 rounds of erosion (< 0) or dilation (> 0) of each of the
            structure-size stage's G groups, 0 for groups not resized (all 0 when it is off).
        rim_fraction: (B,) maximum fluid fraction of the partial-volume rim stage, 0 for samples
            without (all 0 when it is off); rim_field: (B, 1, *Pf) per-voxel U(0, 1) factor of
            that fraction (empty when the stage is off).
        morph_fraction: (B, G) fraction of each group's candidate voxels a round changes (1 for
            whole rounds; all 1 without ``synth.morph.fraction``); morph_field: (B, 1, *n)
            standard normal coarse field choosing them in patches (empty without).
        white_fraction, white_field: the same as ``rim_fraction`` and ``rim_field`` for the rim
            of white matter in the cortex (``synth.white_rim``).
        texture_amp: (B, C) per-class amplitude of the texture stage (0 for the background class
            and for samples without; all 0 when it is off); texture_field: (B, 1, *n) standard
            normal coarse grid spanning the patch (empty when the stage is off).
    """

    matrix: torch.Tensor
    centre: torch.Tensor
    velocity: torch.Tensor
    flip: torch.Tensor
    strip: torch.Tensor
    keep_csf: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    gmm_noise: torch.Tensor
    bias: torch.Tensor
    log_gamma: torch.Tensor
    res_axis: torch.Tensor
    res_spacing_mm: torch.Tensor
    res_thickness_mm: torch.Tensor
    res_alpha: torch.Tensor
    res_native: torch.Tensor
    noise_std: torch.Tensor
    noise: torch.Tensor
    res_iso: torch.Tensor
    lesion_field: torch.Tensor
    lesion_threshold: torch.Tensor
    morph_steps: torch.Tensor
    rim_fraction: torch.Tensor
    rim_field: torch.Tensor
    morph_fraction: torch.Tensor
    morph_field: torch.Tensor
    white_fraction: torch.Tensor
    white_field: torch.Tensor
    texture_amp: torch.Tensor
    texture_field: torch.Tensor

    def __getitem__(self, index: slice | torch.Tensor) -> SynthParams:
        """Parameters of a subset of the batch (``params[b:b+1]``)."""
        return SynthParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return self.matrix.shape[0]

    def summary(self) -> dict[str, torch.Tensor]:
        """Per-sample scalars (B,) for logging and histograms."""
        return {
            "scale_mean": torch.linalg.svdvals(self.matrix).mean(1),
            "svf_std_mm": self.velocity.flatten(1).std(1),
            "flip": self.flip.float(),
            "skull_strip": self.strip.float(),
            "gmm_mean": self.means.mean(1),
            "gmm_std": self.stds.mean(1),
            "background_mean": self.means[:, 0],
            "bias_std": self.bias.flatten(1).std(1),
            "gamma": self.log_gamma.exp(),
            "res_spacing_mm": torch.where(self.res_native, 0.0, self.res_spacing_mm),
            "res_thickness_mm": torch.where(self.res_native, 0.0, self.res_thickness_mm),
            "res_axis": self.res_axis.float(),
            "res_iso": (self.res_iso & ~self.res_native).float(),
            "noise_std": self.noise_std,
            "lesions": torch.isfinite(self.lesion_threshold).float(),
            "morph_steps": self.morph_steps.float().mean(1),
            "morph_fraction": self.morph_fraction.mean(1),
            "rim_fraction": self.rim_fraction,
            "white_rim_fraction": self.white_fraction,
            "texture_std": self.texture_amp.pow(2).mean(1).sqrt(),  # RMS class amplitude
        }


def _uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device) * (high - low) + low


def _bernoulli(g: torch.Generator, n: int | tuple[int, ...], p: float) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) < p


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians -> (B, 3, 3) rotation Rx @ Ry @ Rz."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    return rx.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rz.view(-1, 3, 3)


def _uniform_ranges(g: torch.Generator, batch: int, ranges: torch.Tensor,
                    default: list[float]) -> torch.Tensor:
    """(B, C) uniform draws, class c in ``ranges[c]`` ((C, 2), NaN rows: ``default``)."""
    lo = torch.nan_to_num(ranges[:, 0], nan=float(default[0]))
    hi = torch.nan_to_num(ranges[:, 1], nan=float(default[1]))
    return torch.rand((batch, ranges.shape[0]), generator=g, device=g.device) * (hi - lo) + lo


def _tissue_prior(cfg: SynthConfig, means: torch.Tensor, class_tissue: torch.Tensor | None,
                  g: torch.Generator) -> torch.Tensor:
    """Replace the brain-class means of a random subset of samples by ordered tissue means."""
    if class_tissue is None:
        raise ValueError("gmm.prior_prob > 0 needs the tissue of each generation class")
    gm = cfg.gmm
    B, C = means.shape
    use = _bernoulli(g, B, gm.prior_prob)
    base_gm = _uniform(g, (B,), *gm.prior_gm)
    base = torch.stack([torch.zeros_like(base_gm), base_gm,
                        base_gm + _uniform(g, (B,), *gm.prior_wm_minus_gm),
                        _uniform(g, (B,), *gm.prior_csf)], 1)  # (B, 4): -, GM, WM, CSF
    prior = base[:, class_tissue] + _uniform(g, (B, C), -gm.prior_jitter, gm.prior_jitter)
    return torch.where(use.view(B, 1) & (class_tissue > 0).view(1, C), prior.clamp(0, 255), means)


def _tie_classes(means: torch.Tensor, stds: torch.Tensor, class_ties: torch.Tensor, prob: float,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the classes of each tied group the mean and std of the group's first class.

    Args:
        means, stds: (B, C) drawn class means and standard deviations.
        class_ties: (C,) int64 tie group of each class, -1 for classes in none.
        prob: probability that a group is tied in a sample (one draw per sample and group).
    """
    B, C = means.shape
    member = class_ties >= 0
    group = class_ties.clamp(min=0)
    G = int(class_ties.max()) + 1
    index = torch.arange(C, device=means.device)
    first = torch.full((G,), C, device=means.device).scatter_reduce(
        0, group[member], index[member], "amin")
    source = torch.where(member, first[group], index)  # (C,) the class each one copies when tied
    tied = _bernoulli(g, (B, G), prob)[:, group] & member  # (B, C)
    return torch.where(tied, means[:, source], means), torch.where(tied, stds[:, source], stds)


def control_grid(extent_mm: float, spacing_mm: float) -> int:
    """Number of control points covering ``extent_mm`` at ``spacing_mm`` (at least 2)."""
    return max(2, math.ceil(extent_mm / spacing_mm) + 1)


def sample_params(cfg: SynthConfig, batch: int, in_shape: tuple[int, int, int], n_classes: int,
                  g: torch.Generator, bbox: torch.Tensor | None = None,
                  class_tissue: torch.Tensor | None = None,
                  class_priors: torch.Tensor | None = None,
                  class_ties: torch.Tensor | None = None) -> SynthParams:
    """Draw the parameters of ``batch`` samples.

    Args:
        cfg: generator settings.
        batch: number of samples B.
        in_shape: spatial shape of the input label maps (1 mm voxels).
        n_classes: number of Gaussian generation classes C.
        g: the only source of randomness; tensors are created on ``g.device``.
        bbox: (B, 2, 3) first and last input voxel of the brain in each map; the crop centre is
            drawn where the patch stays inside it (default: the whole input).
        class_tissue: (C,) int64 tissue of each class (0 other, 1 GM, 2 WM, 3 CSF), needed when
            ``cfg.gmm.prior_prob > 0``.
        class_priors: (C, 4) float per-class uniform ranges (mean low, mean high, std low, std
            high; NaN: ``cfg.gmm.mean``/``cfg.gmm.std``), from the label table; None: every class
            uses the global ranges (the same draws as before priors existed).
        class_ties: (C,) int64 group of ``cfg.gmm.tie_groups`` of each class (-1: none), needed
            when ``cfg.gmm.tie_prob > 0``.
    """
    dev, B = g.device, batch
    P = [int(p) for p in cfg.patch_shape]
    sp = cfg.spatial
    extent = [(p - 1) * cfg.voxel_mm for p in P]

    # -- spatial: affine, SVF, crop centre
    if sp.enabled:
        angles = _uniform(g, (B, 3), -sp.rotation_deg, sp.rotation_deg) * (math.pi / 180)
        scales = _uniform(g, (B, 3), *sp.scaling)
        shear = _uniform(g, (B, 3, 3), -sp.shear, sp.shear) * (1 - torch.eye(3, device=dev))
        matrix = _rotation(angles) @ torch.diag_embed(scales) @ (torch.eye(3, device=dev) + shear)
        translation = _uniform(g, (B, 3), -sp.translation_mm, sp.translation_mm)
        spacing = 256.0 / sp.svf_control_points
        n = [control_grid(e, spacing) for e in extent]
        svf_std = _uniform(g, (B,), *sp.svf_std_mm)
        velocity = torch.randn((B, 3, *n), generator=g, device=dev) * svf_std.view(B, 1, 1, 1, 1)
    else:
        matrix = torch.eye(3, device=dev).expand(B, 3, 3).clone()
        translation = torch.zeros(B, 3, device=dev)
        velocity = torch.zeros(B, 3, 2, 2, 2, device=dev)
    if bbox is None:
        bbox = torch.tensor([[0.0] * 3, [s - 1.0 for s in in_shape]], device=dev).expand(B, 2, 3)
    bbox = bbox.to(dev, torch.float32)
    mid = bbox.mean(1)
    room = ((bbox[:, 1] - bbox[:, 0] - torch.tensor(extent, device=dev)) / 2).clamp(min=0)
    jitter = _uniform(g, (B, 3), -1.0, 1.0) * room if sp.crop_jitter else torch.zeros(B, 3, device=dev)
    centre = mid + jitter + translation

    flip = _bernoulli(g, B, cfg.flip.prob)
    matrix = matrix @ torch.diag_embed(torch.stack(
        [1 - 2 * flip.float(), torch.ones(B, device=dev), torch.ones(B, device=dev)], 1))

    strip = _bernoulli(g, B, cfg.skull_strip.prob)
    keep_csf = _bernoulli(g, B, cfg.skull_strip.keep_csf_prob)

    # -- GMM (class 0 is the background)
    if class_priors is None:
        means = _uniform(g, (B, n_classes), *cfg.gmm.mean)
        stds = _uniform(g, (B, n_classes), *cfg.gmm.std)
    else:  # same number of draws, per-class ranges
        means = _uniform_ranges(g, B, class_priors[:, :2].to(dev), cfg.gmm.mean)
        stds = _uniform_ranges(g, B, class_priors[:, 2:].to(dev), cfg.gmm.std)
    if cfg.gmm.prior_prob > 0:  # drawn only when on, so the default stream does not change
        means = _tissue_prior(cfg, means, class_tissue, g)
    # One uniform chooses the background, as in SynthSeg: zero (p0), else low (p_low), else random.
    bg_draw = torch.rand(B, generator=g, device=dev)
    bg_zero = bg_draw < cfg.gmm.background_zero_prob
    means[:, 0] = torch.where(bg_zero, 0.0, means[:, 0])
    stds[:, 0] = torch.where(bg_zero, 0.0, stds[:, 0])
    if cfg.gmm.background_low_prob > 0:  # drawn only when on
        bg_low = ~bg_zero & (bg_draw < cfg.gmm.background_zero_prob + cfg.gmm.background_low_prob)
        low_mean = _uniform(g, (B,), *cfg.gmm.background_low_mean)
        low_std = _uniform(g, (B,), *cfg.gmm.background_low_std)
        means[:, 0] = torch.where(bg_low, low_mean, means[:, 0])
        stds[:, 0] = torch.where(bg_low, low_std, stds[:, 0])
    f = cfg.partial_volume_factor
    gmm_noise = torch.randn((B, 1, *[p * f for p in P]), generator=g, device=dev)

    # -- bias, gamma
    k = cfg.bias.control_points
    bias = torch.randn((B, 1, k, k, k), generator=g, device=dev) * _uniform(g, (B,), *cfg.bias.std).view(B, 1, 1, 1, 1)
    if cfg.bias.prob < 1:  # drawn only when on; a zero log-field is no bias
        bias = bias * _bernoulli(g, B, cfg.bias.prob).view(B, 1, 1, 1, 1)
    log_gamma = torch.randn(B, generator=g, device=dev) * cfg.gamma.std

    # -- resolution
    rs = cfg.resolution
    res_axis = torch.randint(0, 3, (B,), generator=g, device=dev)
    res_spacing = _uniform(g, (B,), *rs.spacing_mm)
    res_thickness = rs.thickness_min_mm + torch.rand(B, generator=g, device=dev) * (res_spacing - rs.thickness_min_mm).clamp(min=0)
    res_alpha = _uniform(g, (B,), *rs.alpha)
    res_native = _bernoulli(g, B, rs.prob_native) | (not rs.enabled)
    res_iso = torch.zeros(B, dtype=torch.bool, device=dev)
    if rs.iso_prob > 0:  # drawn only when on: isotropic spacing and thickness replace the axis ones
        res_iso = _bernoulli(g, B, rs.iso_prob)
        iso_spacing = _uniform(g, (B,), *rs.iso_spacing_mm)
        iso_room = (iso_spacing - rs.thickness_min_mm).clamp(min=0)
        iso_thickness = rs.thickness_min_mm + torch.rand(B, generator=g, device=dev) * iso_room
        res_spacing = torch.where(res_iso, iso_spacing, res_spacing)
        res_thickness = torch.where(res_iso, iso_thickness, res_thickness)

    # -- noise
    if cfg.noise.kind == "none":
        noise_std = torch.zeros(B, device=dev)
        noise = torch.zeros((B, 0, *P), device=dev)
    else:
        noise_std = _uniform(g, (B,), *cfg.noise.std)
        noise = torch.randn((B, 2, *P), generator=g, device=dev)

    # -- lesions (drawn only when on)
    ls = cfg.lesion
    if ls.prob > 0:
        lesion_threshold = torch.where(_bernoulli(g, B, ls.prob), _uniform(g, (B,), *ls.threshold),
                                       torch.inf)
        n = [control_grid(e, ls.spacing_mm) for e in extent]
        lesion_field = torch.randn((B, 1, *n), generator=g, device=dev)
    else:
        lesion_threshold = torch.full((B,), torch.inf, device=dev)
        lesion_field = torch.zeros((B, 1, 0, 0, 0), device=dev)

    # -- structure size (drawn only when on, after every other draw)
    ms = cfg.morph
    G = len(ms.groups)
    morph_steps = torch.zeros((B, G), dtype=torch.long, device=dev)
    if ms.prob > 0:  # one group draws what the (B,) draws of a single group were
        on = _bernoulli(g, (B, G), ms.prob)
        if ms.group_steps:  # a range per group: uniform integers in [lo, hi] from one draw
            lo, hi = (torch.tensor([float(r[i]) for r in ms.group_steps], device=dev)
                      for i in (0, 1))
            u = torch.rand((B, G), generator=g, device=dev)
            drawn = (lo + (u * (hi - lo + 1)).floor().clamp_max(hi - lo)).long()
        else:
            lo, hi = int(ms.steps[0]), int(ms.steps[1])
            drawn = torch.randint(lo, hi + 1, (B, G), generator=g, device=dev)
        morph_steps = torch.where(on, drawn, 0) * cfg.partial_volume_factor

    # -- partial-volume rim (drawn only when on, after every other draw)
    def rim_draws(rim: RimConfig) -> tuple[torch.Tensor, torch.Tensor]:
        if rim.prob <= 0:
            return torch.zeros(B, device=dev), torch.zeros((B, 1, 0, 0, 0), device=dev)
        on = _bernoulli(g, B, rim.prob)
        fraction = torch.where(on, _uniform(g, (B,), *rim.fraction), 0.0)
        return fraction, torch.rand((B, 1, *[p * f for p in P]), generator=g, device=dev)

    rim_fraction, rim_field = rim_draws(cfg.rim)

    # -- tied Gaussians (drawn only when on, after every other draw)
    if cfg.gmm.tie_prob > 0:
        if class_ties is None:
            raise ValueError("gmm.tie_prob > 0 needs the tie group of each generation class")
        means, stds = _tie_classes(means, stds, class_ties.to(dev), cfg.gmm.tie_prob, g)

    # -- partial structure-size rounds (drawn only when set, after every other draw)
    morph_fraction = torch.ones((B, G), device=dev)
    morph_field = torch.zeros((B, 1, 0, 0, 0), device=dev)
    if ms.prob > 0 and ms.fraction:
        lo, hi = (torch.tensor([float(r[i]) for r in ms.fraction], device=dev) for i in (0, 1))
        morph_fraction = lo + torch.rand((B, G), generator=g, device=dev) * (hi - lo)
        n = [control_grid(e, ms.field_mm) for e in extent]
        morph_field = torch.randn((B, 1, *n), generator=g, device=dev)

    # -- white-matter rim in the cortex (drawn only when on, after every other draw)
    white_fraction, white_field = rim_draws(cfg.white_rim)

    # -- texture inside the structures (drawn only when on, after every other draw)
    tx = cfg.texture
    texture_amp = torch.zeros((B, n_classes), device=dev)
    texture_field = torch.zeros((B, 1, 0, 0, 0), device=dev)
    if tx.prob > 0:
        spread = torch.where(_bernoulli(g, B, tx.prob), _uniform(g, (B,), *tx.std), 0.0)
        texture_amp = torch.randn((B, n_classes), generator=g, device=dev) * spread.view(B, 1)
        texture_amp[:, 0] = 0.0  # the background stays as the GMM drew it
        n = [control_grid(e, tx.spacing_mm) for e in extent]
        texture_field = torch.randn((B, 1, *n), generator=g, device=dev)

    return SynthParams(matrix, centre, velocity, flip, strip, keep_csf, means, stds, gmm_noise,
                       bias, log_gamma, res_axis, res_spacing, res_thickness, res_alpha, res_native,
                       noise_std, noise, res_iso, lesion_field, lesion_threshold, morph_steps,
                       rim_fraction, rim_field, morph_fraction, morph_field, white_fraction,
                       white_field, texture_amp, texture_field)
