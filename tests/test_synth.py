"""Properties of the generator: limits, invariants, reproducibility, batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.intensity import apply_bias, apply_gamma
from synthseg_lite.synth.params import sample_params
from synthseg_lite.synth.resolution import simulate_resolution
from synthseg_lite.synth.spatial import displacement_field, jacobian_determinant

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TABLE = LabelTable.create("tissue")
IDX = {v: i for i, v in enumerate(TABLE.generation_labels)}


def toy_map(shape: tuple[int, int, int] = (40, 44, 36)) -> np.ndarray:
    """Head-like nested boxes with distinct left/right labels, as uint8 generation indices (RAS)."""
    X, Y, Z = shape
    lab = np.zeros(shape, np.int32)
    lab[2:-2, 2:-2, 2:-2] = 507  # scalp
    lab[4:-4, 4:-4, 4:-4] = 24  # CSF
    lab[6:-6, 6:-6, 6:-6] = 3
    lab[X // 2:, 6:-6, 6:-6][lab[X // 2:, 6:-6, 6:-6] == 3] = 42
    lab[9:X // 2, 9:-9, 9:-9] = 2
    lab[X // 2:-9, 9:-9, 9:-9] = 41
    lab[12:16, 14:20, 12:20] = 4
    lab[X - 16:X - 12, 14:20, 12:20] = 43
    lab[X // 2 - 1:X // 2 + 1, 12:16, 10:14] = 16
    return TABLE.encode(lab)


def cfg_identity(shape) -> SynthConfig:
    """Everything that can be switched off, switched off."""
    cfg = SynthConfig(patch_shape=list(shape))
    cfg.spatial.enabled = False
    cfg.spatial.crop_jitter = False
    cfg.flip.prob = 0.0
    cfg.skull_strip.prob = 0.0
    cfg.bias.std = [0.0, 0.0]
    cfg.gamma.std = 0.0
    cfg.resolution.enabled = False
    cfg.gmm.std = [0.0, 0.0]
    return cfg


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def batch_of(lab: np.ndarray, b: int, device) -> torch.Tensor:
    return torch.from_numpy(lab)[None, None].repeat(b, 1, 1, 1, 1).to(device)


def test_identity_keeps_label_map(device):
    lab = toy_map()
    gen = SynthGenerator(cfg_identity(lab.shape), TABLE).to(device)
    out = gen(batch_of(lab, 2, device), make_generator(device, 0, 0))
    assert torch.equal(out.labels[:, 0].cpu(), torch.from_numpy(lab)[None].expand(2, -1, -1, -1))
    # with zero GMM std every voxel of one class has one intensity
    im = out.image[0, 0].cpu().numpy()
    for i in np.unique(lab):
        assert np.ptp(im[lab == i]) < 1e-5


def test_flip_swaps_left_and_right_exactly(device):
    lab = toy_map()
    cfg = cfg_identity(lab.shape)
    cfg.flip.prob = 1.0
    out = SynthGenerator(cfg, TABLE).to(device)(batch_of(lab, 1, device), make_generator(device, 0, 0))
    expected = np.asarray(TABLE.lr_swap, np.uint8)[lab[::-1]]
    np.testing.assert_array_equal(out.labels[0, 0].cpu().numpy(), expected)
    # left WM now lies where right WM was
    assert (out.labels[0, 0].cpu().numpy() == IDX[2]).sum() == (lab == IDX[41]).sum()


def test_skull_strip_drops_extracerebral_labels(device):
    lab = toy_map()
    cfg = cfg_identity(lab.shape)
    cfg.skull_strip.prob, cfg.skull_strip.keep_csf_prob = 1.0, 0.0
    out = SynthGenerator(cfg, TABLE).to(device)(batch_of(lab, 1, device), make_generator(device, 0, 0))
    got = set(np.unique(out.labels.cpu().numpy()).tolist())
    assert IDX[507] not in got and IDX[24] not in got and IDX[2] in got
    cfg.skull_strip.keep_csf_prob = 1.0
    out = SynthGenerator(cfg, TABLE).to(device)(batch_of(lab, 1, device), make_generator(device, 0, 0))
    got = set(np.unique(out.labels.cpu().numpy()).tolist())
    assert IDX[507] not in got and IDX[24] in got


def test_deformation_is_diffeomorphic(device):
    cfg = SynthConfig(patch_shape=[48, 48, 48])
    cfg.spatial.svf_std_mm = [4.0, 4.0]  # the strongest default deformation
    g = make_generator(device, 3, 0)
    p = sample_params(cfg, 4, (60, 60, 60), TABLE.n_classes, g)
    disp = displacement_field(p.velocity, (48, 48, 48), 1.0, cfg.spatial.integration_spacing_mm,
                              cfg.spatial.svf_steps)
    assert disp.abs().amax() > 1.0  # a real deformation, not a no-op
    det = jacobian_determinant(disp, 1.0)
    assert det.amin() > 0
    # and the affine part cannot fold either
    assert (torch.linalg.det(p.matrix) * torch.where(p.flip, -1.0, 1.0)).amin() > 0


def test_warped_labels_have_no_holes(device):
    lab = toy_map((48, 48, 48))
    cfg = SynthConfig(patch_shape=[40, 40, 40])
    cfg.flip.prob = cfg.skull_strip.prob = 0.0
    cfg.spatial.translation_mm = 0.0
    out = SynthGenerator(cfg, TABLE).to(device)(batch_of(lab, 2, device), make_generator(device, 1, 0))
    labels = out.labels.cpu().numpy()
    # every label present in the output is one of the input's; WM stays one piece inside cortex
    assert set(np.unique(labels)) <= set(np.unique(lab))
    from scipy.ndimage import label as cc
    for b in range(2):
        wm = labels[b, 0] == IDX[2]
        if wm.any():
            assert cc(wm)[1] == 1


@pytest.mark.parametrize("preset", ["tissue", "tissue_ventricular", "synthseg"])
def test_target_label_set_within_preset(preset, device):
    table = LabelTable.create(preset)
    lab = table.encode(TABLE.decode(toy_map()))
    cfg = SynthConfig(patch_shape=[32, 32, 32])
    out = SynthGenerator(cfg, table).to(device)(batch_of(lab, 3, device), make_generator(device, 0, 0))
    assert out.target.dtype == torch.int64
    assert set(out.target.unique().tolist()) <= set(range(table.target.n_classes))
    assert out.target.shape == (3, 32, 32, 32) and out.image.shape == (3, 1, 32, 32, 32)
    assert 0 <= out.image.amin() and out.image.amax() <= 1


def test_gmm_means_within_priors(device):
    cfg = SynthConfig()
    cfg.gmm.mean, cfg.gmm.std = [40.0, 90.0], [1.0, 3.0]
    p = sample_params(cfg, 64, (40, 40, 40), TABLE.n_classes, make_generator(device, 5, 0))
    bg_zero = p.means[:, 0] == 0
    m, s = p.means[~bg_zero], p.stds[~bg_zero]
    assert m.amin() >= 40 and m.amax() <= 90 and s.amin() >= 1 and s.amax() <= 3
    # with 64 samples the priors are explored, not a constant
    assert m.std() > 5


def test_gamma_and_bias_identity_at_zero_strength(device):
    g = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(2, 1, 16, 16, 16, generator=g, device=device)
    assert torch.allclose(apply_gamma(image, torch.zeros(2, device=device)), image)
    assert torch.allclose(apply_bias(image, torch.zeros(2, 1, 4, 4, 4, device=device)), image)
    assert not torch.allclose(apply_gamma(image, torch.full((2,), 0.5, device=device)), image)


def test_resolution_removes_high_frequencies_along_axis_only(device):
    g = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(3, 1, 32, 32, 32, generator=g, device=device)
    axis = torch.tensor([0, 1, 2], device=device)
    spacing = torch.full((3,), 5.0, device=device)
    out = simulate_resolution(image, axis, spacing, spacing, torch.ones(3, device=device),
                              torch.zeros(3, dtype=torch.bool, device=device), 1.0)
    for b in range(3):
        spec_in = torch.fft.rfft(image[b, 0].movedim(b, -1), dim=-1).abs()
        spec_out = torch.fft.rfft(out[b, 0].movedim(b, -1), dim=-1).abs()
        hi = slice(8, None)  # frequencies above the 5 mm Nyquist (~3 cycles / 32 voxels)
        assert spec_out[..., hi].mean() < 0.1 * spec_in[..., hi].mean()
        # along the other axes, nothing changes: the operator is a linear map along one axis only,
        # so each line along another axis is a fixed combination of input lines
        other = (b + 1) % 3
        spec_o_in = torch.fft.rfft(image[b, 0].movedim(other, -1), dim=-1).abs()[..., hi].mean()
        spec_o_out = torch.fft.rfft(out[b, 0].movedim(other, -1), dim=-1).abs()[..., hi].mean()
        # ratio of high to low energy along the untouched axis is preserved (white noise stays white)
        lo = slice(1, 8)
        r_in = spec_o_in / torch.fft.rfft(image[b, 0].movedim(other, -1), dim=-1).abs()[..., lo].mean()
        r_out = spec_o_out / torch.fft.rfft(out[b, 0].movedim(other, -1), dim=-1).abs()[..., lo].mean()
        assert abs(float(r_out / r_in) - 1) < 0.15
    native = simulate_resolution(image, axis, spacing, spacing, torch.ones(3, device=device),
                                 torch.ones(3, dtype=torch.bool, device=device), 1.0)
    assert torch.equal(native, image)


def test_same_seed_same_batch_and_streams_differ(device):
    lab = toy_map()
    gen = SynthGenerator(SynthConfig(patch_shape=[32, 32, 32]), TABLE).to(device)
    x = batch_of(lab, 2, device)
    a = gen(x, make_generator(device, 7, 11, rank=0, worker=0))
    b = gen(x, make_generator(device, 7, 11, rank=0, worker=0))
    assert torch.equal(a.image, b.image) and torch.equal(a.target, b.target)
    for other in (make_generator(device, 7, 12), make_generator(device, 7, 11, rank=1),
                  make_generator(device, 7, 11, worker=1), make_generator(device, 8, 11)):
        assert not torch.equal(gen(x, other).image, a.image)


def test_batch_equals_single_calls(device):
    lab = toy_map()
    cfg = SynthConfig(patch_shape=[24, 28, 32])
    cfg.noise.kind = "rician"
    gen = SynthGenerator(cfg, TABLE).to(device)
    x = torch.stack([torch.from_numpy(lab), torch.from_numpy(lab[::-1].copy()), torch.from_numpy(lab)])[:, None]
    x = x.to(device)
    p = gen.sample(x, make_generator(device, 2, 0))
    whole = gen.apply(x, p)
    for b in range(3):
        single = gen.apply(x[b:b + 1], p[b:b + 1])
        torch.testing.assert_close(single.image, whole.image[b:b + 1], rtol=1e-4, atol=1e-5)
        assert torch.equal(single.target, whole.target[b:b + 1])


def test_partial_volume_mode(device):
    lab = toy_map()
    cfg = SynthConfig(patch_shape=[16, 16, 16], partial_volume_factor=2)
    out = SynthGenerator(cfg, TABLE).to(device)(batch_of(lab, 2, device), make_generator(device, 0, 0))
    assert out.image.shape == (2, 1, 16, 16, 16) and out.target.shape == (2, 16, 16, 16)


def test_rejects_bad_input():
    gen = SynthGenerator(SynthConfig(patch_shape=[16, 16, 16]), TABLE)
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        gen(torch.zeros(1, 16, 16, 16, dtype=torch.uint8), make_generator("cpu", 0, 0))
    with pytest.raises(ValueError, match="patch_shape"):
        SynthConfig(patch_shape=[16, 16])
    with pytest.raises(ValueError, match="low <= high"):
        SynthConfig(gmm=dataclasses.replace(SynthConfig().gmm, mean=[10.0, 0.0]))
    with pytest.raises(ValueError, match="noise.kind"):
        SynthConfig(noise=dataclasses.replace(SynthConfig().noise, kind="speckle"))


def test_hydra_config_defaults_are_the_dataclass_defaults():
    import os

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from synthseg_lite.synth.config import register_configs

    register_configs()
    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base="1.3"):
        cfg = compose(overrides=["+synth=default"])
        assert OmegaConf.to_object(cfg.synth) == SynthConfig()
        cfg = compose(overrides=["+synth=default", "synth.gmm.std=[0,20]", "synth.patch_shape=[64,64,64]"])
        obj = OmegaConf.to_object(cfg.synth)
        assert obj.gmm.std == [0, 20] and obj.patch_shape == [64, 64, 64]
        obj = OmegaConf.to_object(compose(overrides=["+synth=light"]).synth)
        assert isinstance(obj, SynthConfig) and obj.resolution.enabled is False


def test_tissue_prior_orders_brain_means(device):
    cfg = SynthConfig()
    cfg.gmm.prior_prob = 1.0
    gen = SynthGenerator(cfg, TABLE).to(device)
    p = sample_params(cfg, 32, (40, 40, 40), TABLE.n_classes, make_generator(device, 0, 0),
                      class_tissue=gen.class_tissue)
    ct = gen.class_tissue
    c = {v: TABLE.classes[IDX[v]] for v in (2, 3, 4, 24, 507)}
    assert [int(ct[c[v]]) for v in (3, 2, 4, 24, 507)] == [1, 2, 3, 3, 0]
    # T1 ordering up to the per-class jitter (15): WM - GM >= 25 - 30, GM - CSF >= 80 - 65 - 30
    assert (p.means[:, c[2]] - p.means[:, c[3]]).amin() >= -5 and (p.means[:, c[2]] - p.means[:, c[3]]).mean() > 40
    assert (p.means[:, c[3]] - p.means[:, c[4]]).amin() >= -15 and (p.means[:, c[3]] - p.means[:, c[4]]).mean() > 40
    assert p.means[:, c[507]].std() > 30  # non-brain classes stay random
    # off by default: the same stream as before the option existed
    cfg0 = SynthConfig()
    a = sample_params(cfg0, 4, (40, 40, 40), TABLE.n_classes, make_generator(device, 0, 0))
    b = sample_params(cfg0, 4, (40, 40, 40), TABLE.n_classes, make_generator(device, 0, 0),
                      class_tissue=gen.class_tissue)
    assert torch.equal(a.means, b.means)
    with pytest.raises(ValueError, match="tissue"):
        sample_params(cfg, 2, (40, 40, 40), TABLE.n_classes, make_generator(device, 0, 0))
