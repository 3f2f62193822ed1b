"""SynthSeg's generator steps added by issue 12: isotropic low resolution, low-intensity
backgrounds, bias-field probability. Off by default (the default random stream is unchanged),
batched, and the identity at their limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import BiasConfig, GMMConfig, ResolutionConfig
from synthseg_lite.synth.params import sample_params
from synthseg_lite.synth.resolution import simulate_resolution


def _params(cfg: SynthConfig, b: int = 64, seed: int = 3):
    return sample_params(cfg, b, (40, 40, 40), 6, make_generator("cpu", seed, 5))


def test_default_stream_is_the_one_before_the_new_steps():
    # Sums of the parameters drawn by the code before issue 12 (same seed, step, shapes):
    # checkpoints, resumed runs and exported sets keep their exact samples.
    p = sample_params(SynthConfig(patch_shape=[24, 24, 24]), 4, (40, 40, 40), 6,
                      make_generator("cpu", 3, 5))
    got = [float(x) for x in (p.means.sum(), p.stds.sum(), p.bias.abs().sum(), p.log_gamma.sum(),
                              p.res_spacing_mm.sum(), p.res_thickness_mm.sum())]
    assert got == pytest.approx([3010.0969, 538.2219, 74.6009, -0.9792, 20.1123, 6.7508], abs=2e-3)
    assert not p.res_iso.any()


def test_bias_probability():
    cfg = SynthConfig(patch_shape=[8, 8, 8])
    on = _params(cfg).bias
    never = _params(dataclasses.replace(cfg, bias=BiasConfig(prob=0.0))).bias
    assert torch.equal(never, torch.zeros_like(never))  # identity limit: exp(0) = 1
    some = _params(dataclasses.replace(cfg, bias=BiasConfig(prob=0.5))).bias
    has = some.flatten(1).abs().amax(1) > 0
    assert 0 < has.sum() < 64  # per sample
    assert torch.equal(some[has], on[has])  # the field itself is the one drawn without the coin


def test_low_background():
    cfg = SynthConfig(patch_shape=[8, 8, 8])
    gmm = GMMConfig(background_zero_prob=0.05, background_low_prob=0.25)
    p = _params(dataclasses.replace(cfg, gmm=gmm))
    zero = (p.means[:, 0] == 0) & (p.stds[:, 0] == 0)
    low = ~zero & (p.means[:, 0] <= 15) & (p.stds[:, 0] <= 5)
    assert 0 < zero.sum() < 12 and 6 < low.sum() < 30
    base = _params(cfg)
    # the same uniform chooses the background: zero where it was zero before, and the other
    # classes keep their draws
    assert torch.equal(zero, (base.means[:, 0] == 0) & (base.stds[:, 0] == 0))
    assert torch.equal(p.means[:, 1:], base.means[:, 1:])
    # identity limit: a "low" background of exactly 0 is the zero background
    lim = _params(dataclasses.replace(cfg, gmm=GMMConfig(
        background_zero_prob=0.0, background_low_prob=1.0, background_low_mean=[0, 0],
        background_low_std=[0, 0])))
    assert (lim.means[:, 0] == 0).all() and (lim.stds[:, 0] == 0).all()
    with pytest.raises(ValueError, match="background_low_prob"):
        SynthConfig(gmm=GMMConfig(background_low_prob=1.5))


def test_isotropic_low_resolution():
    cfg = SynthConfig(patch_shape=[8, 8, 8])
    p = _params(dataclasses.replace(cfg, resolution=ResolutionConfig(iso_prob=0.5)))
    iso = p.res_iso
    assert 10 < iso.sum() < 54
    assert ((p.res_spacing_mm[iso] >= 1) & (p.res_spacing_mm[iso] <= 4)).all()
    assert (p.res_thickness_mm[iso] <= p.res_spacing_mm[iso] + 1e-6).all()
    base = _params(cfg)
    assert torch.equal(p.res_spacing_mm[~iso], base.res_spacing_mm[~iso])

    g = torch.Generator().manual_seed(0)
    img = torch.rand((3, 1, 24, 24, 24), generator=g)
    B = img.shape[0]
    axis, native = torch.tensor([0, 1, 2]), torch.zeros(B, dtype=torch.bool)
    alpha = torch.ones(B)
    # identity limit: isotropic at the output spacing changes nothing
    one = torch.ones(B)
    every = torch.ones(B, dtype=torch.bool)
    out = simulate_resolution(img, axis, one, one * 0.0, alpha, native, 1.0, every)
    assert torch.equal(out, img)
    # iso at 3 mm smooths along every axis; the one-axis mode along its axis only: an image
    # constant along x is unchanged by thick x slices, but not by an isotropic acquisition
    three = torch.full((B,), 3.0)
    flat_x = img[:, :, :1].expand_as(img).contiguous()
    iso_out = simulate_resolution(flat_x, axis, three, three, alpha, native, 1.0, every)
    one_out = simulate_resolution(flat_x, axis, three, three, alpha, native, 1.0)
    assert torch.allclose(one_out[0], flat_x[0], atol=1e-5)
    assert not torch.allclose(one_out[1], flat_x[1], atol=1e-2)
    for d in (3, 4):
        assert iso_out.diff(dim=d).abs().mean() < 0.5 * flat_x.diff(dim=d).abs().mean()
    # batched: a sample gives the same output alone as in the batch
    s = slice(1, 2)
    alone = simulate_resolution(flat_x[s], axis[s], three[s], three[s], alpha[s], native[s], 1.0,
                                every[s])
    assert torch.allclose(alone, iso_out[1:2], atol=1e-6)


def test_synthseg_preset_values_run_through_the_generator():
    table = LabelTable.create("tissue")
    cfg = SynthConfig(patch_shape=[16, 16, 16], gmm=GMMConfig(background_low_prob=0.25),
                      bias=BiasConfig(prob=0.95), resolution=ResolutionConfig(iso_prob=0.1))
    lab = np.zeros((24, 24, 24), np.int32)
    lab[4:20, 4:20, 4:20] = 2
    lab[8:16, 8:16, 8:16] = 3
    x = torch.from_numpy(table.encode(lab))[None, None].repeat(4, 1, 1, 1, 1)
    out = SynthGenerator(cfg, table)(x, make_generator("cpu", 0, 0))
    assert out.image.shape == (4, 1, 16, 16, 16) and torch.isfinite(out.image).all()
    assert {"res_iso", "background_mean"} <= set(out.params)
