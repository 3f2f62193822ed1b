"""Tied Gaussians (synth.gmm.tie_prob): the labels of a tie group share one Gaussian in a sample.
Off by default (the random stream is unchanged), on: every member of a tied group has its first
class's mean and std and nothing else changes, the image cannot tell tied labels apart, bad groups
raise, same seed -> same batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import BiasConfig, GammaConfig, GMMConfig, ResolutionConfig, SpatialConfig
from synthseg_lite.synth.params import sample_params
from helpers import ventricle_maps

C = 8
TIES = torch.tensor([-1, 0, 0, -1, 1, 1, 1, -1])  # classes 1-2 one group, 4-6 another


def _params(tie_prob: float, seed: int = 3, batch: int = 64):
    cfg = SynthConfig(patch_shape=[8] * 3, gmm=GMMConfig(tie_prob=tie_prob))
    return sample_params(cfg, batch, (20, 20, 20), C, make_generator("cpu", seed, 1), class_ties=TIES)


def test_off_by_default_keeps_the_stream():
    base = sample_params(SynthConfig(patch_shape=[8] * 3), 4, (20, 20, 20), C, make_generator("cpu", 3, 1))
    off = _params(0.0, batch=4)
    for f in dataclasses.fields(base):
        assert torch.equal(getattr(base, f.name), getattr(off, f.name)), f.name


def test_tied_groups_share_their_first_class_and_nothing_else_moves():
    free, always, half = _params(0.0), _params(1.0), _params(0.5)
    for p in (always, half):  # the tie draws come after every other draw
        for f in dataclasses.fields(p):
            if f.name not in ("means", "stds"):
                assert torch.equal(getattr(free, f.name), getattr(p, f.name)), f.name
    for values in ("means", "stds"):
        drawn, tied = getattr(free, values), getattr(always, values)
        assert torch.equal(tied[:, [0, 3, 7]], drawn[:, [0, 3, 7]])  # in no group
        assert torch.equal(tied[:, [1, 2]], drawn[:, [1, 1]])  # the first class of each group
        assert torch.equal(tied[:, [4, 5, 6]], drawn[:, [4, 4, 4]])
    # at 0.5 each group is tied in about half of the samples, the two groups apart
    tied0 = half.means[:, 2] == free.means[:, 1]
    tied1 = half.means[:, 6] == free.means[:, 4]
    assert 16 < int(tied0.sum()) < 48 and 16 < int(tied1.sum()) < 48
    assert not torch.equal(tied0, tied1)
    assert torch.equal(half.means[~tied0][:, 2], free.means[~tied0][:, 2])


def _flat_generator(tie_prob: float) -> tuple[SynthGenerator, torch.Tensor]:
    """The ventricle head and a generator whose only randomness is the GMM means (no spread)."""
    table, maps = ventricle_maps(6)
    cfg = SynthConfig(patch_shape=[40] * 3, spatial=SpatialConfig(enabled=False),
                      gmm=GMMConfig(std=[0.0, 0.0], tie_prob=tie_prob), bias=BiasConfig(std=[0.0, 0.0]),
                      gamma=GammaConfig(std=0.0), resolution=ResolutionConfig(enabled=False))
    return SynthGenerator(cfg, table), maps


def test_tied_fluids_are_one_intensity_in_the_image():
    gen, maps = _flat_generator(1.0)
    index = {v: i for i, v in enumerate(gen.table.generation_labels)}
    batch = gen(maps, make_generator("cpu", 0, 0))
    labels, image = batch.labels[:, 0], batch.image[:, 0]
    for b in range(labels.shape[0]):
        fluid = image[b][torch.isin(labels[b], torch.tensor([index[v] for v in (4, 5, 14, 43, 44)]))]
        wm = image[b][torch.isin(labels[b], torch.tensor([index[v] for v in (2, 41)]))]
        assert fluid.numel() > 0 and torch.allclose(fluid, fluid[0].expand_as(fluid))
        assert torch.allclose(wm, wm[0].expand_as(wm))
    free, _ = _flat_generator(0.0)
    loose = free(maps, make_generator("cpu", 0, 0))
    horn = loose.image[:, 0][loose.labels[:, 0] == index[5]]
    vent = loose.image[:, 0][loose.labels[:, 0] == index[4]]
    assert not torch.allclose(horn.mean(), vent.mean())  # drawn apart, the horn shows
    again = gen(maps, make_generator("cpu", 0, 0))
    assert torch.equal(again.image, batch.image)


@pytest.mark.parametrize("groups, message", [
    ([[4, 5], [5, 14]], "two groups"),
    ([[4, 0]], "non-background"),
    ([[]], "non-empty"),
])
def test_bad_groups_raise(groups, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(gmm=GMMConfig(tie_prob=0.5, tie_groups=groups))


def test_groups_must_fit_the_table():
    table, _ = ventricle_maps(1)
    with pytest.raises(ValueError, match="not generation labels"):
        SynthGenerator(SynthConfig(gmm=GMMConfig(tie_prob=0.5, tie_groups=[[4, 9999]])), table)
    with pytest.raises(ValueError, match="shares a Gaussian class"):  # 4 and 43 are twins
        SynthGenerator(SynthConfig(gmm=GMMConfig(tie_prob=0.5, tie_groups=[[4, 5], [43, 14]])), table)
    SynthGenerator(SynthConfig(gmm=GMMConfig(tie_groups=[[4, 9999]])), table)  # off: not checked
