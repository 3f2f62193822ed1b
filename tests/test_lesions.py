"""The lesion stage (synth.lesion): blobs of their own random intensity inside the white matter,
labelled white matter. Off by default (the random stream is unchanged), batched, identity at its
limits, target unchanged, left stays left."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import LesionConfig, SpatialConfig
from synthseg_lite.synth.lesions import lesion_lut, paint_lesions
from synthseg_lite.synth.params import sample_params
from helpers import two_hemisphere_head


def _maps(b: int = 4) -> tuple[LabelTable, torch.Tensor]:
    """A two-hemisphere head: cortex shell, WM inside (2 left, 41 right), ventricles."""
    table = LabelTable.create("synthseg")
    lab, x, r = two_hemisphere_head(40)
    lab[r < 4] = np.where(x < 20, 4, 43)[r < 4]
    idx = torch.from_numpy(table.encode(lab)).view(1, 1, 40, 40, 40).repeat(b, 1, 1, 1, 1)
    return table, idx


def _gen(table: LabelTable, **lesion) -> SynthGenerator:
    cfg = SynthConfig(patch_shape=[32, 32, 32], spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      lesion=LesionConfig(**lesion))
    return SynthGenerator(cfg, table)


def _index(table: LabelTable, value: int) -> int:
    return table.generation_labels.index(value)


def test_off_by_default_keeps_the_stream():
    base = sample_params(SynthConfig(patch_shape=[16] * 3), 4, (40, 40, 40), 6, make_generator("cpu", 3, 5))
    on = sample_params(SynthConfig(patch_shape=[16] * 3, lesion=LesionConfig(prob=0.5)), 4,
                       (40, 40, 40), 6, make_generator("cpu", 3, 5))
    assert base.lesion_field.numel() == 0 and torch.isinf(base.lesion_threshold).all()
    for f in dataclasses.fields(base):  # the lesion draws come after every other draw
        if not f.name.startswith("lesion"):
            assert torch.equal(getattr(base, f.name), getattr(on, f.name)), f.name


def test_blobs_inside_the_host_and_target_unchanged():
    table, maps = _maps()
    gen = _gen(table, prob=1.0, threshold=[0.3, 0.3])
    p = gen.sample(maps, make_generator("cpu", 0, 0))
    with_lesions = gen.apply(maps, p)
    without = gen.apply(maps, dataclasses.replace(p, lesion_threshold=torch.full((4,), torch.inf)))
    painted = with_lesions.labels != without.labels
    wm = (without.labels == _index(table, 2)) | (without.labels == _index(table, 41))
    les = (with_lesions.labels == _index(table, 25)) | (with_lesions.labels == _index(table, 57))
    assert painted.any(dim=(1, 2, 3, 4)).all()  # every sample has lesions
    assert torch.equal(painted, les)  # only lesion labels are painted ...
    assert not (painted & ~wm).any()  # ... and only inside the white matter
    assert 0.05 < painted.sum() / wm.sum() < 0.8
    assert torch.equal(with_lesions.target, without.target)  # a lesion is white matter
    # the lesions reach the image (their class has its own mean)
    assert not torch.equal(with_lesions.image, without.image)


def test_left_stays_left():
    table, maps = _maps(8)
    gen = _gen(table, prob=1.0, threshold=[0.3, 0.3])
    p = gen.sample(maps, make_generator("cpu", 1, 0))
    assert 0 < p.flip.sum() < 8  # flipped and unflipped samples in the batch
    labels = gen.apply(maps, p).labels
    host = gen.apply(maps, dataclasses.replace(p, lesion_threshold=torch.full((8,), torch.inf))).labels
    # painted after the flip: Left-Lesion only where the (flipped) map is left white matter
    for lesion, wm in ((25, 2), (57, 41)):
        m = labels == _index(table, lesion)
        assert m.any() and (host[m] == _index(table, wm)).all()


def test_limits_and_monotone_threshold():
    table, maps = _maps(2)
    lut = lesion_lut(table.n_labels, [_index(table, 2), _index(table, 41)],
                     [_index(table, 25), _index(table, 57)])
    field = torch.randn((2, 1, 6, 6, 6), generator=torch.Generator().manual_seed(0))
    inf = torch.full((2,), torch.inf)
    assert torch.equal(paint_lesions(maps, field, inf, lut), maps)  # threshold inf: identity
    assert torch.equal(paint_lesions(maps, field[:, :, :0], torch.zeros(2), lut), maps)  # no field
    low = paint_lesions(maps, field, torch.full((2,), 0.0), lut) != maps
    high = paint_lesions(maps, field, torch.full((2,), 1.0), lut) != maps
    assert high.sum() < low.sum() and not (high & ~low).any()  # a higher threshold paints a subset
    assert paint_lesions(maps, field, torch.tensor([0.0, torch.inf]), lut)[1].equal(maps[1])  # per sample


def test_probability_and_reproducible():
    table, maps = _maps(64)
    gen = _gen(table, prob=0.5)
    p = gen.sample(maps, make_generator("cpu", 2, 0))
    has = torch.isfinite(p.lesion_threshold)
    assert 16 < has.sum() < 48
    assert ((p.lesion_threshold[has] >= 0.6) & (p.lesion_threshold[has] <= 1.8)).all()
    q = gen.sample(maps, make_generator("cpu", 2, 0))
    assert torch.equal(p.lesion_field, q.lesion_field) and torch.equal(p.lesion_threshold, q.lesion_threshold)


def test_bad_settings():
    table, _ = _maps(1)
    with pytest.raises(ValueError, match="lesion.hosts"):
        SynthConfig(lesion=LesionConfig(hosts=[2, 41], labels=[25]))
    with pytest.raises(ValueError, match="lesion.prob"):
        SynthConfig(lesion=LesionConfig(prob=1.5))
    with pytest.raises(ValueError, match="lesion.threshold"):
        SynthConfig(lesion=LesionConfig(threshold=[2.0, 1.0]))
    with pytest.raises(ValueError, match="not generation labels"):
        SynthGenerator(SynthConfig(lesion=LesionConfig(prob=0.5, labels=[25, 99999])), table)
