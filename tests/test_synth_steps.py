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
                      bias=BiasConfig(prob=0.95),
                      resolution=ResolutionConfig(iso_prob=0.1, psf_sigma_vox=0.5))
    lab = np.zeros((24, 24, 24), np.int32)
    lab[4:20, 4:20, 4:20] = 2
    lab[8:16, 8:16, 8:16] = 3
    x = torch.from_numpy(table.encode(lab))[None, None].repeat(4, 1, 1, 1, 1)
    out = SynthGenerator(cfg, table)(x, make_generator("cpu", 0, 0))
    assert out.image.shape == (4, 1, 16, 16, 16) and torch.isfinite(out.image).all()
    assert {"res_iso", "background_mean"} <= set(out.params)


def test_point_spread_function_of_kept_axes():
    g = torch.Generator().manual_seed(1)
    B = 4
    img = torch.rand((B, 1, 20, 22, 24), generator=g)
    axis = torch.tensor([0, 1, 2, 0])
    native = torch.tensor([True, False, False, False])
    alpha = torch.ones(B)
    spacing = torch.tensor([1.0, 4.0, 4.0, 1.0])  # sample 3: its axis at 1 mm, nothing resampled
    off = simulate_resolution(img, axis, spacing, spacing, alpha, native, 1.0)
    zero = simulate_resolution(img, axis, spacing, spacing, alpha, native, 1.0, psf_sigma_vox=0.0)
    assert torch.equal(off, zero)  # sigma 0 is the identity
    on = simulate_resolution(img, axis, spacing, spacing, alpha, native, 1.0, psf_sigma_vox=0.5)
    # the blur keeps the mean (a normalised kernel, borders replicated) and smooths every axis
    # the acquisition kept: all three for a native sample, the other two for thick slices
    assert torch.allclose(on.mean((2, 3, 4)), img.mean((2, 3, 4)), atol=2e-3)
    for ax in range(3):  # an image that varies along one axis only: the others' blur is void
        shape = [1, 1, 1]
        shape[ax] = img.shape[2 + ax]
        line = torch.rand(shape, generator=g).expand(img.shape[2:])
        lines = line.expand(B, 1, *img.shape[2:]).contiguous()
        a = simulate_resolution(lines, axis, spacing, spacing, alpha, native, 1.0)
        b = simulate_resolution(lines, axis, spacing, spacing, alpha, native, 1.0,
                                psf_sigma_vox=0.5)
        for s, kept in enumerate(((0, 1, 2), (0, 2), (0, 1), (0, 1, 2))):
            rough_a = a[s].diff(dim=1 + ax).abs().mean()
            rough_b = b[s].diff(dim=1 + ax).abs().mean()
            if ax in kept:  # all three axes of a native sample, the other two of thick slices
                assert rough_b < 0.8 * rough_a
            else:  # the thick-slice axis keeps its own slice profile, not blurred twice
                assert torch.allclose(b[s], a[s], atol=1e-6)
    # a constant image stays constant; a step edge keeps its half-way point between the voxels
    flat = torch.full((1, 1, 8, 8, 8), 0.3)
    one = torch.ones(1)
    nat = torch.ones(1, dtype=torch.bool)
    assert torch.allclose(simulate_resolution(flat, axis[:1], one, one, one, nat, 1.0,
                                              psf_sigma_vox=0.5), flat)
    step = torch.zeros(1, 1, 10, 4, 4)
    step[:, :, 5:] = 1.0
    edge = simulate_resolution(step, axis[:1], one, one, one, nat, 1.0, psf_sigma_vox=0.5)[0, 0, :, 2, 2]
    assert torch.allclose(edge[4] + edge[5], torch.tensor(1.0), atol=1e-6)
    assert 0.0 < edge[4] < 0.2 and edge.diff().min() >= 0
    # batched: a sample gives the same output alone as in the batch
    alone = simulate_resolution(img[1:2], axis[1:2], spacing[1:2], spacing[1:2], alpha[1:2],
                                native[1:2], 1.0, psf_sigma_vox=0.5)
    assert torch.allclose(alone, on[1:2], atol=1e-6)
    with pytest.raises(ValueError, match="psf_sigma_vox"):
        SynthConfig(resolution=ResolutionConfig(psf_sigma_vox=-0.5))


def test_synthseg_preset_file_turns_every_step_on():
    from benchmarks.generator import _synthseg_config

    cfg = _synthseg_config(16)  # conf/synth/synthseg.yaml over the defaults, as synth=synthseg
    assert cfg.resolution.psf_sigma_vox == 0.5 and cfg.resolution.iso_prob == 0.1
    assert cfg.bias.prob == 0.95 and cfg.gmm.background_low_prob == 0.25
    assert SynthConfig().resolution.psf_sigma_vox == 0.0  # off by default: earlier runs' images
