"""The texture stage (synth.texture): a smooth field inside each structure, of a per-class random
amplitude. Off by default (the random stream is unchanged), identity at amplitude 0, the
background never textured, smooth (no step inside a structure), each structure its own strength,
the target never changes, same seed -> same batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import ventricle_maps as _maps

from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import SpatialConfig, TextureConfig
from synthseg_lite.synth.params import sample_params
from synthseg_lite.synth.texture import add_texture


def _base() -> SynthConfig:
    return SynthConfig(patch_shape=[32, 32, 32], spatial=SpatialConfig(enabled=False, crop_jitter=False))


def test_off_by_default_keeps_the_stream():
    off = sample_params(_base(), 4, (40, 40, 40), 6, make_generator("cpu", 3, 5))
    assert not off.texture_amp.any() and off.texture_field.numel() == 0
    table, maps = _maps()
    gen = SynthGenerator(_base(), table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    assert torch.equal(gen.apply(maps, p).image,
                       gen.apply(maps, dataclasses.replace(p, texture_amp=torch.zeros_like(p.texture_amp))).image)


def test_zero_amplitude_is_identity_and_the_background_stays():
    labels = torch.randint(0, 4, (2, 1, 12, 12, 12))
    image = torch.rand(2, 1, 12, 12, 12) * 200
    classes = torch.tensor([0, 1, 2, 3])
    field = torch.randn(2, 1, 3, 3, 3)
    assert torch.equal(add_texture(image, labels, classes, torch.zeros(2, 4), field), image)
    amp = torch.tensor([[0.0, 10.0, -5.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    out = add_texture(image, labels, classes, amp, field)
    assert torch.equal(out[labels == 0], image[labels == 0])  # background class 0
    assert torch.equal(out[1], image[1])  # a sample without texture
    assert not torch.equal(out[0], image[0])


def test_each_structure_varies_smoothly_with_its_own_strength():
    """On a flat two-class image the change inside each class is the same smooth field times its
    own amplitude: neighbouring voxels differ by little, and the ratio of the two changes is the
    ratio of the amplitudes (opposite signs: the boundary's contrast varies along it)."""
    labels = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    labels[..., :16] = 1
    labels[..., 16:] = 2
    image = torch.where(labels == 1, 100.0, 150.0)
    field = torch.randn(1, 1, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    amp = torch.tensor([[0.0, 8.0, -4.0]])
    out = add_texture(image, labels, torch.arange(3), amp, field)
    delta = out - image
    assert delta[labels == 1].std() > 1.0  # it varies inside a structure
    step = (delta[..., 1:16] - delta[..., :15]).abs().max()
    cell = 31 / 2  # voxels between control points (align_corners: 3 points over 32 voxels)
    assert step <= 8.0 * (field[..., 1:] - field[..., :-1]).abs().max() / cell + 1e-4  # linear in a cell
    a, b = delta[..., 15], delta[..., 16]  # both sides of the boundary, nearly the same field
    assert torch.allclose(a / 8.0, -b / 4.0, atol=0.5)


def test_texture_in_the_generator():
    table, maps = _maps()
    cfg = dataclasses.replace(_base(), texture=TextureConfig(prob=1.0, std=[5.0, 10.0], spacing_mm=8.0))
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    assert p.texture_field.shape[2:] == (5, 5, 5)  # 31 mm at 8 mm: ceil(3.9) + 1
    assert not p.texture_amp[:, 0].any() and p.texture_amp[:, 1:].abs().gt(0).all()
    q = SynthGenerator(_base(), table).sample(maps, make_generator("cpu", 0, 0))
    for f in dataclasses.fields(p):  # the texture's draws come after every other draw
        if not f.name.startswith("texture_"):
            assert torch.equal(getattr(p, f.name), getattr(q, f.name)), f.name
    with_texture = gen.apply(maps, p)
    without = gen.apply(maps, dataclasses.replace(p, texture_amp=torch.zeros_like(p.texture_amp)))
    assert torch.equal(with_texture.target, without.target)
    assert not torch.equal(with_texture.image, without.image)
    assert torch.equal(gen(maps, make_generator("cpu", 0, 0)).image, with_texture.image)
    assert "texture_std" in with_texture.params


@pytest.mark.parametrize("override, match", [
    ({"prob": 1.5}, "synth.texture.prob"),
    ({"std": [5.0, 1.0]}, "synth.texture.std"),
    ({"std": [-1.0, 1.0]}, "synth.texture.std"),
    ({"spacing_mm": 0.0}, "synth.texture.spacing_mm"),
])
def test_bad_settings_are_one_line_errors(override, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(texture=TextureConfig(**override))
