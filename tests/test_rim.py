"""The partial-volume rim stage (synth.rim): brain voxels beside a ventricle take a random part of
the fluid's intensity, their label unchanged. Off by default (the random stream is unchanged),
identity at fraction 0, only the rim changes and only towards the fluid, the target never changes,
same seed -> same batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import RimConfig, SpatialConfig
from synthseg_lite.synth.gmm import gmm_image
from synthseg_lite.synth.morphology import morph_lut
from synthseg_lite.synth.params import sample_params
from synthseg_lite.synth.rim import fluid_rim
from helpers import ventricle_maps as _maps

FLUID = (4, 5, 14, 43, 44)
FACES = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def _rim_inputs(b: int = 3):
    """Maps, their fluid lut, a GMM with no spread (tissue 100-180, fluids 20) and its image."""
    table, maps = _maps(b)
    index = {v: i for i, v in enumerate(table.generation_labels)}
    lut = morph_lut(len(index), [[index[v] for v in FLUID]], [index[v] for v in (2, 3, 41, 42)])
    classes = torch.arange(len(index))
    means = torch.full((b, len(index)), 100.0)
    for v, m in ((2, 180.0), (41, 180.0), (3, 120.0), (42, 120.0)):
        means[:, index[v]] = m
    means[:, [index[v] for v in FLUID]] = 20.0
    means[:, 0] = 0.0
    stds, noise = torch.zeros_like(means), torch.zeros(maps.shape)
    return table, maps, lut, classes, means, stds, noise, gmm_image(maps, classes, means, stds, noise)


def test_off_by_default_keeps_the_stream():
    base = sample_params(SynthConfig(patch_shape=[16] * 3), 4, (40, 40, 40), 6, make_generator("cpu", 3, 5))
    on = sample_params(SynthConfig(patch_shape=[16] * 3, rim=RimConfig(prob=0.5)), 4, (40, 40, 40), 6,
                       make_generator("cpu", 3, 5))
    assert not base.rim_fraction.any() and base.rim_field.numel() == 0
    assert on.rim_field.shape == (4, 1, 16, 16, 16)
    assert ((on.rim_field >= 0) & (on.rim_field <= 1)).all()
    for f in dataclasses.fields(base):  # the rim draws come after every other draw
        if not f.name.startswith("rim_"):
            assert torch.equal(getattr(base, f.name), getattr(on, f.name)), f.name


def test_fraction_zero_is_identity():
    _, maps, lut, classes, means, stds, noise, image = _rim_inputs()
    out = fluid_rim(image, maps, lut, torch.zeros(3), torch.rand(maps.shape), classes, means, stds, noise)
    assert torch.equal(out, image)


def test_only_the_rim_moves_towards_the_fluid():
    _, maps, lut, classes, means, stds, noise, image = _rim_inputs()
    fraction = torch.tensor([0.0, 0.5, 1.0])
    out = fluid_rim(image, maps, lut, fraction, torch.ones(maps.shape), classes, means, stds, noise)
    kind = lut[maps.long()]
    # the rim: brain voxels (not fluid, not background) with a face neighbour in a fluid label
    fluid = kind == 1
    near = torch.zeros_like(fluid)
    for dx, dy, dz in FACES:
        near |= torch.roll(fluid, (dx, dy, dz), (2, 3, 4))
    rim = near & (kind == 0)
    changed = out != image
    assert not changed[0].any()  # fraction 0
    assert torch.equal(changed[1:], rim[1:])  # exactly the rim, never fluid or background
    # a convex mix of the tissue's and the fluid's intensity: half-way, then all the way
    assert torch.allclose(out[1][rim[1]], (image[1][rim[1]] + 20.0) / 2)
    assert torch.allclose(out[2][rim[2]], torch.full_like(out[2][rim[2]], 20.0))
    # the wall of each ventricle is darker, its inside and everything else as before
    assert (out[1:][rim[1:]] < image[1:][rim[1:]]).all()


def test_per_voxel_factor_spreads_the_fraction():
    _, maps, lut, classes, means, stds, noise, image = _rim_inputs(1)
    field = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    out = fluid_rim(image, maps, lut, torch.tensor([0.8]), field, classes, means, stds, noise)
    rim = out != image
    w = (image[rim] - out[rim]) / (image[rim] - 20.0)  # the fluid fraction each rim voxel took
    assert torch.allclose(w, 0.8 * field[rim], atol=1e-5)
    assert w.min() < 0.2 and w.max() > 0.6


def test_generator_keeps_the_target_and_reproduces():
    table, maps = _maps()
    cfg = SynthConfig(patch_shape=[32, 32, 32], spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      rim=RimConfig(prob=1.0, fraction=[0.5, 0.8]))
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    assert ((p.rim_fraction >= 0.5) & (p.rim_fraction <= 0.8)).all()
    with_rim = gen.apply(maps, p)
    without = gen.apply(maps, dataclasses.replace(p, rim_fraction=torch.zeros(4)))
    assert torch.equal(with_rim.target, without.target)
    assert torch.equal(with_rim.labels, without.labels)
    assert not torch.equal(with_rim.image, without.image)
    again = gen(maps, make_generator("cpu", 0, 0))
    assert torch.equal(again.image, with_rim.image) and torch.equal(again.target, with_rim.target)
    assert "rim_fraction" in with_rim.params


@pytest.mark.parametrize("bad", [dict(prob=-0.1), dict(prob=2.0), dict(fraction=[0.5, 0.2]),
                                 dict(fraction=[0.0, 1.5]), dict(fraction=[-0.1, 0.5]),
                                 dict(labels=[])])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="synth.rim"):
        SynthConfig(rim=RimConfig(**bad))


def test_unknown_label_is_refused():
    table, _ = _maps()
    with pytest.raises(ValueError, match="synth.rim"):
        SynthGenerator(SynthConfig(rim=RimConfig(prob=0.5, labels=[4, 9999])), table)


def test_white_rim_lies_in_the_cortex_beside_the_white_matter():
    """synth.white_rim's lut (white matter the source, the cortex the only place the rim may lie):
    exactly the cortex voxels with a white-matter face neighbour change, half-way to the white
    matter's intensity; the ventricles the white matter also touches do not."""
    table, maps, _, classes, means, stds, noise, image = _rim_inputs(2)
    index = {v: i for i, v in enumerate(table.generation_labels)}
    lut = morph_lut(len(index), [[index[2], index[41]]], [index[3], index[42]])
    out = fluid_rim(image, maps, lut, torch.tensor([0.0, 0.5]), torch.ones(maps.shape), classes,
                    means, stds, noise)
    kind = lut[maps.long()]
    near = torch.zeros_like(kind == 1)
    for dx, dy, dz in FACES:
        near |= torch.roll(kind == 1, (dx, dy, dz), (2, 3, 4))
    rim = near & (kind == 0)  # cortex beside white matter
    changed = out != image
    assert not changed[0].any() and rim[1].any() and torch.equal(changed[1], rim[1])
    assert torch.allclose(out[1][rim[1]], torch.full_like(out[1][rim[1]], (120.0 + 180.0) / 2))
    fluid = torch.isin(maps, torch.tensor([index[v] for v in FLUID]))
    assert (near & fluid).any() and not (changed & fluid).any()


def test_white_rim_in_the_generator():
    table, maps = _maps()
    base = SynthConfig(patch_shape=[32, 32, 32],
                       spatial=SpatialConfig(enabled=False, crop_jitter=False))
    cfg = dataclasses.replace(base, white_rim=RimConfig(prob=1.0, labels=[2, 41], into=[3, 42],
                                                        fraction=[0.3, 0.6]))
    off = sample_params(base, 4, (40, 40, 40), 6, make_generator("cpu", 3, 5))
    assert not off.white_fraction.any() and off.white_field.numel() == 0
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    assert ((p.white_fraction >= 0.3) & (p.white_fraction <= 0.6)).all()
    q = SynthGenerator(base, table).sample(maps, make_generator("cpu", 0, 0))
    for f in dataclasses.fields(p):  # the white rim's draws come after every other draw
        if not f.name.startswith("white_"):
            assert torch.equal(getattr(p, f.name), getattr(q, f.name)), f.name
    with_rim = gen.apply(maps, p)
    without = gen.apply(maps, dataclasses.replace(p, white_fraction=torch.zeros(4)))
    assert torch.equal(with_rim.target, without.target)
    assert not torch.equal(with_rim.image, without.image)
    again = gen(maps, make_generator("cpu", 0, 0))
    assert torch.equal(again.image, with_rim.image)
    assert "white_rim_fraction" in with_rim.params
    with pytest.raises(ValueError, match="synth.white_rim.into"):
        SynthConfig(white_rim=RimConfig(labels=[2, 41], into=[3, 41]))
