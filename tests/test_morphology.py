"""The structure-size stage (synth.morph): the ventricles (or the white matter against the cortex)
eroded or dilated by whole voxels, the image and target following. Off by default (the random
stream is unchanged), identity at 0 rounds, only chosen and growable labels change, a group grows
only into its ``into`` labels, left stays left."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import MorphConfig, SpatialConfig
from synthseg_lite.synth.morphology import morph_into, morph_lut, resize_structures
from synthseg_lite.synth.params import sample_params
from helpers import ventricle_maps as _maps

LEFT, RIGHT = (2, 3, 4, 5), (41, 42, 43, 44)


def _lut(table: LabelTable, groups: tuple[tuple[int, ...], ...] = ((4, 5, 14, 43, 44),)) -> torch.Tensor:
    index = {v: i for i, v in enumerate(table.generation_labels)}
    growable = [index[v] for v in (2, 3, 41, 42)]
    return morph_lut(len(index), [[index[v] for v in g] for g in groups], growable)


def _steps(*rounds: int) -> torch.Tensor:
    """(B, 1) rounds of a single group."""
    return torch.tensor(rounds).view(-1, 1)


def _count(labels: torch.Tensor, table: LabelTable, values: tuple[int, ...]) -> torch.Tensor:
    index = [table.generation_labels.index(v) for v in values]
    return torch.isin(labels, torch.tensor(index)).flatten(1).sum(1)


def test_off_by_default_keeps_the_stream():
    base = sample_params(SynthConfig(patch_shape=[16] * 3), 4, (40, 40, 40), 6, make_generator("cpu", 3, 5))
    on = sample_params(SynthConfig(patch_shape=[16] * 3, morph=MorphConfig(prob=0.5)), 4,
                       (40, 40, 40), 6, make_generator("cpu", 3, 5))
    assert not base.morph_steps.any()
    for f in dataclasses.fields(base):  # the structure-size draws come after every other draw
        if f.name != "morph_steps":
            assert torch.equal(getattr(base, f.name), getattr(on, f.name)), f.name


def test_zero_rounds_is_identity():
    table, maps = _maps()
    assert torch.equal(resize_structures(maps, torch.zeros(4, 1, dtype=torch.long), _lut(table)), maps)


def test_erosion_and_dilation_change_only_what_they_may():
    table, maps = _maps()
    lut = _lut(table)
    out = resize_structures(maps, _steps(-2, -1, 1, 2), lut)
    assert out.dtype == maps.dtype
    vent = (4, 5, 14, 43, 44)
    before, after = _count(maps, table, vent), _count(out, table, vent)
    assert after[0] < after[1] < before[0] < after[2] < after[3]  # monotone in the rounds
    changed = out != maps
    kind_in, kind_out = lut[maps.long()], lut[out.long()]
    # eroded samples: chosen -> growable; dilated: growable -> chosen; nothing else ever changes
    assert (kind_in[:2][changed[:2]] == 1).all() and (kind_out[:2][changed[:2]] == 0).all()
    assert (kind_in[2:][changed[2:]] == 0).all() and (kind_out[2:][changed[2:]] == 1).all()
    assert torch.equal(out[maps == 0], maps[maps == 0])  # background is never touched
    # each round moves one voxel layer: every changed voxel of one round had a face neighbour
    # with its new label
    one = resize_structures(maps[:1], _steps(-1), lut)
    moved = (one != maps[:1])[0, 0].nonzero()
    for x, y, z in moved.tolist():
        nbrs = {int(maps[0, 0, x + dx, y + dy, z + dz]) for dx, dy, dz in
                ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))}
        assert int(one[0, 0, x, y, z]) in nbrs


def test_left_stays_left():
    table, maps = _maps(2)
    out = resize_structures(maps, _steps(-2, 2), _lut(table))
    left = [table.generation_labels.index(v) for v in LEFT]
    right = [table.generation_labels.index(v) for v in RIGHT]
    changed = out != maps
    was_left = torch.isin(maps, torch.tensor(left))
    now_left = torch.isin(out, torch.tensor(left))
    now_right = torch.isin(out, torch.tensor(right))
    assert changed.any()
    # a left structure only becomes another left structure (or the midline 3rd ventricle)
    assert not (changed & was_left & now_right).any()
    assert not (changed & torch.isin(maps, torch.tensor(right)) & now_left).any()


def test_generator_target_follows_and_seed_reproduces():
    table, maps = _maps()
    cfg = SynthConfig(patch_shape=[32, 32, 32], spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      morph=MorphConfig(prob=1.0, groups=[[4, 5, 14, 43, 44]], steps=[-1, -1]))
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    assert (p.morph_steps == -1).all()
    small = gen.apply(maps, p)
    same = gen.apply(maps, dataclasses.replace(p, morph_steps=torch.zeros(4, 1, dtype=torch.long)))
    # the target is the changed map's: the ventricles shrink in both
    vent = (4, 5, 14, 43, 44)
    assert (_count(small.labels, table, vent) < _count(same.labels, table, vent)).all()
    lut = gen.target_lut
    assert torch.equal(small.target, lut[small.labels.long()][:, 0])
    assert not torch.equal(small.image, same.image)
    again = gen(maps, make_generator("cpu", 0, 0))
    assert torch.equal(again.image, small.image) and torch.equal(again.target, small.target)


@pytest.mark.parametrize("bad", [dict(prob=1.5), dict(steps=[1, -1]), dict(steps=[-1.5, 1]),
                                 dict(groups=[]), dict(groups=[[4], []]), dict(groups=[[4, 5], [5]]),
                                 dict(groups=[[4], [2]], group_steps=[[-1, 1]]),
                                 dict(groups=[[4]], group_steps=[[1, -1]]),
                                 dict(groups=[[4]], group_steps=[[-1.5, 1]]),
                                 dict(groups=[[4], [2]], into=[[3]]),
                                 dict(groups=[[2, 41]], into=[[3, 41]]),
                                 dict(groups=[[4]], fraction=[[0.5, 1.5]]),
                                 dict(groups=[[4], [2]], fraction=[[0, 1]]), dict(field_mm=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="synth.morph"):
        SynthConfig(morph=MorphConfig(**bad))


def test_unknown_label_is_refused():
    table, _ = _maps()
    with pytest.raises(ValueError, match="synth.morph"):
        SynthGenerator(SynthConfig(morph=MorphConfig(prob=0.5, groups=[[4], [9999]])), table)


def test_groups_resize_independently():
    """Each group takes its own rounds: the others keep every voxel, and two resized groups that
    touch do not eat each other (the horn is not eroded into the lateral ventricle's label nor
    the ventricle dilated into the horn)."""
    table, maps = _maps(3)
    groups = ((4, 43), (5, 44), (14,))
    lut = _lut(table, groups)
    steps = torch.tensor([[-1, 0, 0], [0, 2, 0], [1, -1, 0]])
    out = resize_structures(maps, steps, lut)
    count = [_count(out, table, g) - _count(maps, table, g) for g in groups]
    assert count[0][0] < 0 and count[1][0] == 0 and count[2][0] == 0  # only the lateral ventricles
    assert count[0][1] == 0 and count[1][1] > 0 and count[2][1] == 0  # only the horns
    assert count[0][2] > 0 and count[1][2] < 0 and count[2][2] == 0
    changed = out != maps  # resized <-> growable only: no group takes another group's voxels
    kind_in, kind_out = lut[maps.long()][changed], lut[out.long()][changed]
    assert changed.any() and ((kind_in == 0) ^ (kind_out == 0)).all() and (kind_in >= 0).all()


def test_groups_draw_their_own_rounds():
    cfg = SynthConfig(patch_shape=[16] * 3, morph=MorphConfig(prob=1.0, groups=[[4], [5], [14]],
                                                              steps=[-2, 1]))
    p = sample_params(cfg, 64, (40, 40, 40), 6, make_generator("cpu", 0, 1))
    assert p.morph_steps.shape == (64, 3)
    assert (p.morph_steps.min() >= -2) and (p.morph_steps.max() <= 1)
    assert not torch.equal(p.morph_steps[:, 0], p.morph_steps[:, 1])


def test_white_matter_moves_only_against_the_cortex():
    """The grey/white boundary moved: with ``into`` the cortex, eroded white matter becomes cortex
    and dilated white matter takes cortex only, the ventricles it also touches keep every voxel;
    without ``into`` the same erosion hands white matter to the ventricles too."""
    table, maps = _maps(2)
    index = {v: i for i, v in enumerate(table.generation_labels)}
    wm, cortex, vent = (2, 41), (3, 42), (4, 5, 14, 43, 44)
    lut = morph_lut(len(index), [[index[v] for v in wm]], [index[v] for v in cortex + vent])
    into = morph_into(lut, [[index[v] for v in cortex]])
    assert into.shape == (1, len(index)) and int(into.sum()) == 2
    steps = _steps(-1, 1)
    out = resize_structures(maps, steps, lut, into)
    free = resize_structures(maps, steps, lut)
    d_wm, d_cortex = (_count(out, table, v) - _count(maps, table, v) for v in (wm, cortex))
    assert d_wm[0] < 0 and d_wm[1] > 0 and torch.equal(d_cortex, -d_wm)  # a swap, both ways
    assert torch.equal(_count(out, table, vent), _count(maps, table, vent))
    assert (_count(free, table, vent) != _count(maps, table, vent)).any()  # what into prevents
    changed = out != maps
    swap = torch.tensor([index[v] for v in wm + cortex])
    assert changed.any() and torch.isin(maps[changed], swap).all()
    assert torch.isin(out[changed], swap).all()
    # left stays left: a left white-matter voxel becomes left cortex, never right
    left = torch.tensor([index[v] for v in LEFT])
    assert (torch.isin(maps[changed], left) == torch.isin(out[changed], left)).all()
    # an empty list is "every growable label", the default
    assert torch.equal(resize_structures(maps, steps, lut, morph_into(lut, [[]])), free)


def test_group_steps_draw_each_groups_range():
    cfg = SynthConfig(patch_shape=[16] * 3, morph=MorphConfig(
        prob=1.0, groups=[[4], [5], [2, 41]], group_steps=[[-2, -2], [-2, 1], [-1, 1]]))
    p = sample_params(cfg, 256, (40, 40, 40), 6, make_generator("cpu", 0, 1))
    assert (p.morph_steps[:, 0] == -2).all()
    for g, (lo, hi) in ((1, (-2, 1)), (2, (-1, 1))):  # every round of the range, nothing else
        assert set(p.morph_steps[:, g].tolist()) == set(range(lo, hi + 1))
    again = sample_params(cfg, 256, (40, 40, 40), 6, make_generator("cpu", 0, 1))
    assert torch.equal(again.morph_steps, p.morph_steps)


def test_white_matter_group_in_the_generator():
    """``synth.morph`` with a white-matter group and ``into`` the cortex: the image's target has
    the same ventricles and brain, and the cortex thickened (eroded white matter)."""
    table, maps = _maps(2)
    cfg = SynthConfig(patch_shape=[32, 32, 32],
                      spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      morph=MorphConfig(prob=1.0, groups=[[2, 41]], group_steps=[[-1, -1]],
                                        into=[[3, 42]]))
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    thick = gen.apply(maps, p)
    same = gen.apply(maps, dataclasses.replace(p, morph_steps=torch.zeros_like(p.morph_steps)))
    for values, sign in (((2, 41), -1), ((3, 42), 1), ((4, 5, 14, 43, 44), 0)):
        diff = _count(thick.labels, table, values) - _count(same.labels, table, values)
        assert (torch.sign(diff) == sign).all(), values
    with pytest.raises(ValueError, match="synth.morph.into"):
        SynthGenerator(SynthConfig(morph=MorphConfig(prob=0.5, groups=[[2]], into=[[9999]])), table)


def test_fraction_moves_part_of_the_boundary_in_patches():
    """A fraction of 0 is the identity, 1 the whole round; in between, the voxels moved are a
    subset of the whole round's, more for a larger fraction, and a second round moves the same
    patches deeper (never a voxel whose gate is above the fraction)."""
    table, maps = _maps(1)
    index = {v: i for i, v in enumerate(table.generation_labels)}
    lut = morph_lut(len(index), [[index[v] for v in (2, 41)]], [index[v] for v in (3, 42)])
    field = torch.randn((1, 1, 6, 6, 6), generator=torch.Generator().manual_seed(0))
    whole = resize_structures(maps, _steps(-1), lut)
    moved = []
    for f in (0.0, 0.25, 0.5, 1.0):
        out = resize_structures(maps, _steps(-1), lut, fraction=torch.tensor([[f]]), field=field)
        changed = out != maps
        assert not (changed & (whole == maps)).any()  # a subset of the whole round
        moved.append(int(changed.sum()))
    assert moved[0] == 0 and moved[0] < moved[1] < moved[2] < moved[3]
    assert moved[3] == int((whole != maps).sum())
    two = resize_structures(maps, _steps(-2), lut, fraction=torch.tensor([[0.5]]), field=field)
    one = resize_structures(maps, _steps(-1), lut, fraction=torch.tensor([[0.5]]), field=field)
    assert int((two != maps).sum()) > int((one != maps).sum())
    assert not ((one != maps) & (two == maps)).any()


def test_fraction_draws_and_keeps_the_stream():
    base = MorphConfig(prob=1.0, groups=[[4], [2, 41]])
    cfg = SynthConfig(patch_shape=[16] * 3, morph=base)
    part = SynthConfig(patch_shape=[16] * 3, morph=dataclasses.replace(
        base, fraction=[[1.0, 1.0], [0.0, 0.3]], field_mm=4.0))
    p = sample_params(cfg, 64, (40, 40, 40), 6, make_generator("cpu", 0, 1))
    q = sample_params(part, 64, (40, 40, 40), 6, make_generator("cpu", 0, 1))
    assert (p.morph_fraction == 1).all() and p.morph_field.numel() == 0
    assert (q.morph_fraction[:, 0] == 1).all()
    assert (q.morph_fraction[:, 1] >= 0).all() and (q.morph_fraction[:, 1] <= 0.3).all()
    assert q.morph_field.shape == (64, 1, 5, 5, 5)  # 15 mm at 4 mm: 5 control points
    for f in dataclasses.fields(p):  # the fraction's draws come after every other draw
        if f.name not in ("morph_fraction", "morph_field"):
            assert torch.equal(getattr(p, f.name), getattr(q, f.name)), f.name
