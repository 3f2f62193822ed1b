"""The SynthSeg generative model, batched and on the device of its input.

Billot et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution without
retraining", Medical Image Analysis 86 (2023). Random parameters are drawn first
(:func:`~synthseg_lite.synth.params.sample_params`, one explicit ``torch.Generator``); every stage
is then a pure batched function (:mod:`spatial`, :mod:`morphology`, :mod:`lesions`, :mod:`gmm`,
:mod:`rim`, :mod:`texture`, :mod:`intensity`, :mod:`resolution`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthseg_lite.labels import TARGET_PRESETS, LabelTable
from synthseg_lite.synth.config import SynthConfig
from synthseg_lite.synth.gmm import gmm_image
from synthseg_lite.synth.intensity import add_noise, apply_bias, apply_gamma, rescale_minmax
from synthseg_lite.synth.lesions import lesion_lut, paint_lesions
from synthseg_lite.synth.morphology import morph_into, morph_lut, resize_structures
from synthseg_lite.synth.params import SynthParams, make_generator, sample_params
from synthseg_lite.synth.resolution import simulate_resolution
from synthseg_lite.synth.rim import fluid_rim
from synthseg_lite.synth.spatial import label_luts, remap_labels, sampling_grid, warp_labels
from synthseg_lite.synth.texture import add_texture

__all__ = ["SynthConfig", "SynthGenerator", "SynthBatch", "SynthParams", "make_generator", "brain_bbox"]


@dataclass
class SynthBatch:
    """One synthetic batch.

    Attributes:
        image: (B, 1, *P) float32 in [0, 1].
        target: (B, *P) int64 target class indices.
        labels: (B, 1, *P) warped (flipped, stripped) generation indices, dtype of the input
            maps (uint8, or int16 for tables of more than 256 labels).
        params: per-sample scalars (B,) for logging.
    """

    image: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    params: dict[str, torch.Tensor]


def brain_bbox(labels: torch.Tensor, brain: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """(B, 2, 3) first and last voxel index of brain labels per sample (whole volume if none).

    Computed on every ``stride``-th voxel (cheap; exact up to ``stride - 1`` voxels, plenty for
    placing the random crop).

    Args:
        labels: (B, 1, X, Y, Z) generation indices. brain: (L,) bool, True for brain labels.
    """
    mask = brain[labels[:, 0, ::stride, ::stride, ::stride].int()]
    lo, hi = [], []
    for ax in range(3):  # loop over axes, not samples
        other = tuple(d for d in (1, 2, 3) if d != ax + 1)
        prof = mask.any(dim=other[1]).any(dim=other[0])  # (B, n)
        n, full = prof.shape[1], labels.shape[2 + ax]
        pos = torch.arange(n, device=labels.device).expand_as(prof) * stride
        has = prof.any(1)
        lo.append(torch.where(has, torch.where(prof, pos, full).amin(1), 0))
        last = (torch.where(prof, pos, -1).amax(1) + stride - 1).clamp(max=full - 1)
        hi.append(torch.where(has, last, full - 1))
    return torch.stack([torch.stack(lo, 1), torch.stack(hi, 1)], 1).float()


def _indices(table: LabelTable, values: list[int], stage: str) -> list[int]:
    """Generation indices of label ``values`` for the ``synth.<stage>`` settings; a ValueError
    naming the values the table lacks."""
    index = {v: i for i, v in enumerate(table.generation_labels)}
    missing = [v for v in values if v not in index]
    if missing:
        raise ValueError(f"synth.{stage}: labels {missing} are not generation labels of this "
                         "label table")
    return [index[v] for v in values]


class SynthGenerator(nn.Module):
    """Label maps -> (image, target) pairs, B samples per call with per-sample parameters.

    Args:
        cfg: generator settings (:class:`SynthConfig`).
        table: label table; its lookup tables become non-persistent buffers.
    """

    def __init__(self, cfg: SynthConfig, table: LabelTable) -> None:
        super().__init__()
        self.cfg, self.table = cfg, table
        self.register_buffer("classes", torch.tensor(table.classes, dtype=torch.long), persistent=False)
        self.register_buffer("lr_swap", torch.tensor(table.lr_swap, dtype=torch.long), persistent=False)
        self.register_buffer("extracerebral", torch.tensor(table.extracerebral), persistent=False)
        brain = [v != 0 and not e for v, e in zip(table.generation_labels, table.extracerebral)]
        self.register_buffer("brain", torch.tensor(brain), persistent=False)
        tissue = TARGET_PRESETS["tissue"].mapping
        class_tissue = [0] * table.n_classes
        for value, cls in zip(table.generation_labels, table.classes):
            class_tissue[cls] = int(tissue.get(value, 0))
        self.register_buffer("class_tissue", torch.tensor(class_tissue), persistent=False)
        self.register_buffer("target_lut", torch.tensor(table.target_lut, dtype=torch.long), persistent=False)
        priors = None  # (C, 4) per-class mean/std ranges, NaN = global; None: no class has one
        if table.priors:
            nan = (float("nan"),) * 2
            rows = [(*(m or nan), *(s or nan)) for m, s in table.priors]
            priors = torch.tensor(rows, dtype=torch.float32)
        self.register_buffer("class_priors", priors, persistent=False)
        lesions = None  # (L,) host index -> lesion index; None: the stage is off
        if cfg.lesion.prob > 0:
            lesions = lesion_lut(table.n_labels, _indices(table, cfg.lesion.hosts, "lesion"),
                                 _indices(table, cfg.lesion.labels, "lesion"))
        self.register_buffer("lesion_lut", lesions, persistent=False)
        brain_indices = [i for i, b in enumerate(brain) if b]  # what resized labels may grow into
        morph = None  # (L,) group + 1 / 0 growable / -1 fixed; None: the stage is off
        into = None  # (G, L) what each group may grow into; None: every growable label
        if cfg.morph.prob > 0:
            morph = morph_lut(table.n_labels, [_indices(table, g, "morph") for g in cfg.morph.groups],
                              brain_indices)
            if cfg.morph.into:
                into = morph_into(morph, [_indices(table, v, "morph.into") for v in cfg.morph.into])
        self.register_buffer("morph_lut", morph, persistent=False)
        self.register_buffer("morph_allowed", into, persistent=False)
        for name in ("rim", "white_rim"):  # (L,) source 1 / rim may lie in 0 / -1; None: off
            rim_cfg, rim = getattr(cfg, name), None
            if rim_cfg.prob > 0:
                into = _indices(table, rim_cfg.into, name) if rim_cfg.into else brain_indices
                rim = morph_lut(table.n_labels, [_indices(table, rim_cfg.labels, name)], into)
            self.register_buffer(f"{name}_lut", rim, persistent=False)
        ties = None  # (C,) tie group of each class, -1 none; None: ties are off
        if cfg.gmm.tie_prob > 0:
            ties = torch.full((table.n_classes,), -1, dtype=torch.long)
            for k, group in enumerate(cfg.gmm.tie_groups):
                cls = self.classes[_indices(table, group, "gmm.tie_groups")]
                if (ties[cls] >= 0).any():
                    raise ValueError(f"synth.gmm.tie_groups: group {list(group)} shares a Gaussian "
                                     "class (e.g. a left/right twin) with another group")
                ties[cls] = k
        self.register_buffer("class_ties", ties, persistent=False)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> SynthParams:
        """Draw the parameters for a batch of label maps (B, 1, X, Y, Z)."""
        return sample_params(self.cfg, labels.shape[0], tuple(labels.shape[2:]), self.table.n_classes,
                             generator, brain_bbox(labels, self.brain), self.class_tissue,
                             self.class_priors, self.class_ties)

    def apply(self, labels: torch.Tensor, p: SynthParams) -> SynthBatch:
        """Deterministic synthesis from label maps (B, 1, X, Y, Z) (uint8/int16) and parameters."""
        cfg, f = self.cfg, self.cfg.partial_volume_factor
        shape = tuple(int(s) * f for s in cfg.patch_shape)
        grid = sampling_grid(p.matrix, p.centre, p.velocity, shape, cfg.voxel_mm / f,
                             tuple(labels.shape[2:]), cfg.spatial.integration_spacing_mm,
                             cfg.spatial.svf_steps)
        lut = label_luts(p.flip, p.strip, p.keep_csf, self.lr_swap, self.extracerebral, self.table.csf_index)
        warped = remap_labels(warp_labels(labels, grid), lut)
        if self.morph_lut is not None:
            warped = resize_structures(warped, p.morph_steps, self.morph_lut, self.morph_allowed,
                                       p.morph_fraction, p.morph_field)
        if self.lesion_lut is not None:
            warped = paint_lesions(warped, p.lesion_field, p.lesion_threshold, self.lesion_lut)
        image = gmm_image(warped, self.classes, p.means, p.stds, p.gmm_noise)
        if self.rim_lut is not None:
            image = fluid_rim(image, warped, self.rim_lut, p.rim_fraction, p.rim_field, self.classes,
                              p.means, p.stds, p.gmm_noise)
        if self.white_rim_lut is not None:
            image = fluid_rim(image, warped, self.white_rim_lut, p.white_fraction, p.white_field,
                              self.classes, p.means, p.stds, p.gmm_noise)
        image = add_texture(image, warped, self.classes, p.texture_amp, p.texture_field)
        if f > 1:  # partial volume: average the fine grid, labels at the fine voxel nearest the centre
            image = F.avg_pool3d(image, f)
            warped = warped[:, :, f // 2::f, f // 2::f, f // 2::f]
        image = apply_bias(image, p.bias)
        image = apply_gamma(rescale_minmax(image), p.log_gamma)
        image = simulate_resolution(image, p.res_axis, p.res_spacing_mm, p.res_thickness_mm, p.res_alpha,
                                    p.res_native, cfg.voxel_mm, p.res_iso, cfg.resolution.psf_sigma_vox)
        image = add_noise(image, p.noise_std, p.noise, cfg.noise.kind)
        target = remap_labels(warped, self.target_lut)[:, 0]
        return SynthBatch(image.contiguous(), target, warped.to(labels.dtype), p.summary())

    @torch.no_grad()
    def forward(self, labels: torch.Tensor, generator: torch.Generator) -> SynthBatch:
        """Sample parameters with ``generator`` (on the labels' device) and synthesise."""
        if labels.dim() != 5 or labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, 1, X, Y, Z), got {tuple(labels.shape)}")
        if generator.device.type != labels.device.type:
            raise ValueError(f"generator is on {generator.device}, labels on {labels.device}")
        return self.apply(labels, self.sample(labels, generator))
