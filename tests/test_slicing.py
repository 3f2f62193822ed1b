"""2D slice training and slice-wise inference, volume reuse, the fixed-set ablation, schedules."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from synthseg_lite.data import LabelMapStream, load_fixed_set
from synthseg_lite.data.export import ExportConfig, export_dataset
from synthseg_lite.inference import Predictor
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import load_model, save_model
from synthseg_lite.model.schedules import warmup_cosine
from synthseg_lite.model.slicing import (
    SliceConfig,
    class_presence,
    extract_slices,
    predict_slicewise,
    sample_slices,
)
from synthseg_lite.synth import SynthConfig
from helpers import read_digests, write_toy_maps, run_training as _run

SMOKE_2D = [
    "experiment=smoke",
    "model.unet.spatial_dims=2",
    "model.unet.deep_supervision=false",
    "model.slices.per_step=4",
    "data.reuse_steps=2",
]


@pytest.fixture(scope="module")
def toy_maps(tmp_path_factory) -> str:
    return write_toy_maps(tmp_path_factory.mktemp("toy_maps_2d"))


# ------------------------------------------------------------------------------- sampling


def _target_with_band() -> torch.Tensor:
    """(2, 12, 12, 12) targets labelled only in the cube [3, 6)^3 (5 % or less elsewhere: none)."""
    t = torch.zeros(2, 12, 12, 12, dtype=torch.long)
    t[:, 3:6, 3:6, 3:6] = 1
    return t


def test_sample_slices_picks_only_slices_with_foreground() -> None:
    target = _target_with_band()
    axes = [0, 1, 2]
    g = torch.Generator().manual_seed(0)
    a, b, s = sample_slices(target, 12, axes, 0.02, g)
    assert a.shape == b.shape == s.shape == (12,)
    assert set(s.tolist()) <= {3, 4, 5} and set(b.tolist()) <= {0, 1}
    assert len(set(zip(a.tolist(), b.tolist(), s.tolist()))) == 12  # without replacement
    again = sample_slices(target, 12, axes, 0.02, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((a, b, s), again))
    # more slices than eligible (2 x 3 x 3 = 18): with replacement, still only eligible ones
    _, _, s = sample_slices(target, 40, axes, 0.02, torch.Generator().manual_seed(1))
    assert set(s.tolist()) <= {3, 4, 5}
    # nothing labelled: any slice rather than an error
    _, _, s = sample_slices(torch.zeros_like(target), 5, axes, 0.02, g)
    assert s.shape == (5,)


def test_class_presence_matches_a_direct_check() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 6, 6, 6)) * (torch.rand(2, 6, 6, 6) < 0.1)
    pres = class_presence(target, [0, 1, 2], 5)
    assert pres.shape == (3, 2, 6, 5)
    for a in range(3):
        for b in range(2):
            for s in range(6):
                sl = target[b].movedim(a, 0)[s]
                assert pres[a, b, s].tolist() == [bool((sl == k).any()) for k in range(5)]


def test_class_first_sampling_finds_a_small_structure() -> None:
    """A class in one voxel of one sample: uniform sampling almost never shows it, class-first
    sampling shows it in about half of the slices (2 classes, each drawn with probability 1/2)."""
    target = torch.zeros(2, 24, 24, 24, dtype=torch.long)
    target[:, 2:22, 2:22, 2:22] = 1
    target[1, 7, 9, 11] = 2  # the small structure: slices x=7, y=9, z=11 of sample 1
    hits = {(0, 7), (1, 9), (2, 11)}

    def share(class_prob: float) -> float:
        g = torch.Generator().manual_seed(0)
        a, b, s = sample_slices(target, 400, [0, 1, 2], 0.02, g, class_prob)
        return float(
            np.mean(
                [
                    (bb == 1 and (aa, ss) in hits)
                    for aa, bb, ss in zip(a.tolist(), b.tolist(), s.tolist())
                ]
            )
        )

    assert share(0.0) < 0.05
    assert 0.15 < share(0.5) < 0.4  # half the slices class-first, half of those for class 2
    assert 0.35 < share(1.0) < 0.65
    # same seed -> same slices, with a precomputed presence table or without
    pres = class_presence(target, [0, 1, 2], 3)
    one = sample_slices(target, 8, [0, 1, 2], 0.02, torch.Generator().manual_seed(3), 0.5)
    two = sample_slices(target, 8, [0, 1, 2], 0.02, torch.Generator().manual_seed(3), 0.5, pres)
    assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_extract_slices_matches_direct_indexing_with_context() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 1, 8, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8, 8))
    axes = [2, 0]
    index = (torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]), torch.tensor([0, 7, 4]))
    x, y = extract_slices(image, target, index, axes, context=3)
    assert x.shape == (3, 3, 8, 8) and y.shape == (3, 8, 8)
    for i, (a, b, s) in enumerate(zip(*index)):
        vol = image[b, 0].movedim(axes[a], 0)
        for j, off in enumerate((-1, 0, 1)):
            assert torch.equal(x[i, j], vol[min(max(s + off, 0), 7)])
        assert torch.equal(y[i], target[b].movedim(axes[a], 0)[s])


class Threshold2D(torch.nn.Module):
    """Voxel-wise 'network': class 1 where the centre channel exceeds 0.5 (logits +-20)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return torch.cat([(0.5 - c) * 40, (c - 0.5) * 40], 1)


@pytest.mark.parametrize("axes,context", [([0, 1, 2], 1), ([1], 3), ([2, 0], 1)])
def test_predict_slicewise_reassembles_the_volume(axes: list[int], context: int) -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 1, 9, 10, 11)  # not multiples of the divisor: padded, cropped back
    probs = predict_slicewise(Threshold2D(), image, axes, context, batch_size=4, divisor=4)
    assert probs.shape == (1, 2, 9, 10, 11)
    assert torch.allclose(probs.sum(1), torch.ones(1, 9, 10, 11))
    assert torch.equal(probs.argmax(1)[0], (image[0, 0] > 0.5).long())


def test_a_volume_smaller_than_the_network_is_padded_to_its_coarsest_level() -> None:
    # An instance-normalised 2D U-Net (divisor 8) fails on a 1x1 coarsest level: a 6- or
    # 8-voxel axis must reach 16 voxels (2 at the bottleneck), not only the next multiple of 8.
    from synthseg_lite.model.slicing import accumulate_slicewise
    from synthseg_lite.model.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    cfg = UNetConfig(
        n_stages=4, base_features=4, max_features=8, deep_supervision=False, spatial_dims=2
    )
    net = build_unet(cfg, 3).eval()
    image = torch.rand(1, 1, 6, 8, 20)
    probs = predict_slicewise(net, image, [0, 1, 2], batch_size=4, divisor=cfg.divisor)
    assert probs.shape == (1, 3, 6, 8, 20)
    assert torch.allclose(probs.sum(1), torch.ones(1, 6, 8, 20))
    out = accumulate_slicewise(
        net, image, torch.zeros(3, 6, 8, 20), [0, 1, 2], batch_size=4, divisor=cfg.divisor
    )
    assert torch.allclose(out / 3, probs[0], atol=1e-5)


class AlwaysTissue(torch.nn.Module):
    """A network that calls everything class 1, blank input included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = 10.0
        return logits


def test_blank_slices_are_background_without_asking_the_network() -> None:
    image = torch.zeros(1, 1, 8, 8, 8)
    image[0, 0, 2:6, 2:6, 2:6] = torch.rand(4, 4, 4) + 0.1
    probs = predict_slicewise(AlwaysTissue(), image, [0], batch_size=3)
    labels = probs.argmax(1)[0]
    assert (labels[:2] == 0).all() and (labels[6:] == 0).all()  # blank sagittal slices
    assert (labels[2:6] == 1).all()  # slices with signal: the network's answer
    asked = predict_slicewise(AlwaysTissue(), image, [0], empty_class=None)
    assert (asked.argmax(1) == 1).all()


def test_slice_config_rejects_bad_class_prob() -> None:
    with pytest.raises(ValueError, match="class_prob"):
        SliceConfig(class_prob=1.5)


def test_slice_config_rejects_bad_values() -> None:
    for kw in ({"per_step": 0}, {"axes": [0, 0]}, {"axes": [3]}, {"context": 2}):
        with pytest.raises(ValueError):
            SliceConfig(**kw)


# ---------------------------------------------------------------------------- volume reuse


def test_stream_groups_share_maps() -> None:
    maps = np.zeros((10, 4, 4, 4), np.uint8)
    stream = LabelMapStream(maps, list(range(10)), 2, seed=3, reuse_steps=4)
    batches = [stream.batch(s) for s in range(8)]
    assert [int(b["group"]) for b in batches] == [0, 0, 0, 0, 1, 1, 1, 1]
    for b in batches[1:4]:
        assert torch.equal(b["index"], batches[0]["index"])
    plain = LabelMapStream(maps, list(range(10)), 2, seed=3)
    assert [int(plain.batch(s)["group"]) for s in range(3)] == [0, 1, 2]


def test_2d_training_is_reproducible_and_reuses_volumes(toy_maps: str, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        _, module, trainer = _run(
            [
                *SMOKE_2D,
                f"data.label_maps={toy_maps}",
                "+callbacks.digest._target_=test_training.BatchDigest",
                f"+callbacks.digest.path={out}/dig",
            ],
            out,
        )
        runs.append(read_digests(out / "dig"))
    assert runs[0] == runs[1]
    digests = [r["digest"] for r in runs[0]]
    assert len(set(digests)) == len(digests)  # new slices every step, even within a group
    assert module._cache is not None and module._cache[0] == (trainer.global_step - 1) // 2
    assert trainer.global_step == 6 and 0 <= float(trainer.callback_metrics["val/dice"]) <= 1


def test_2d_model_file_and_predictor(toy_maps: str, tmp_path: Path) -> None:
    _run([*SMOKE_2D, f"data.label_maps={toy_maps}"], tmp_path)
    net, meta = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert meta.unet.spatial_dims == 2 and meta.slices["axes"] == [0, 1, 2]
    small = save_model(tmp_path / "m.pt", net, meta, precision="int8")
    net2, meta2 = load_model(small)
    assert meta2.slices == meta.slices
    pred = Predictor([net2], meta2, tta="flip")
    probs = pred(torch.rand(1, 1, 16, 20, 12))
    assert probs.shape == (1, 4, 16, 20, 12)
    assert torch.allclose(probs.sum(1), torch.ones(1, 16, 20, 12), atol=1e-5)


def test_init_weights_widens_the_slice_context_without_changing_predictions(
    toy_maps: str, tmp_path: Path
) -> None:
    """A 3-slice network fine-tuned with 7 slices starts as the file's network: the outer
    slices' weights are 0, so any input gives the 3-slice network's logits on the centre three.
    Wider stages as well (Net2WiderNet) still give the same logits."""
    from helpers import compose

    from synthseg_lite.commands import train as train_command
    from synthseg_lite.training.start import init_weights

    three = [
        *SMOKE_2D,
        f"data.label_maps={toy_maps}",
        "model.unet.in_channels=3",
        "model.slices.context=3",
    ]
    _run(three, tmp_path / "a")
    net3, meta3 = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt")
    pt = save_model(tmp_path / "m3.pt", net3, meta3, precision="float32")

    def build(context: int, *more: str):
        over = [
            *SMOKE_2D,
            f"data.label_maps={toy_maps}",
            f"model.unet.in_channels={context}",
            f"model.slices.context={context}",
            f"paths.output_dir={tmp_path / str(context)}",
            "logger=none",
            *more,
        ]
        return train_command.build(compose(over))[1]

    wide = build(7)
    init_weights(wide, pt)
    w = wide.net.state_dict()["input_block.conv1.conv.weight"]
    assert w.shape[1] == 7 and not w[:, [0, 1, 5, 6]].any()
    x = torch.randn(3, 7, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(wide.net.eval()(x), net3(x[:, 2:5]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="init_weights=.*another network"):  # narrower: refused
        init_weights(build(1), pt)

    # wider stages and a wider context at once (Net2WiderNet, then the context): same logits
    wider = build(7, "model.unet.base_features=6", "model.unet.max_features=20")
    init_weights(wider, pt, seed=5)
    assert wider.net.state_dict()["downsamples.0.conv1.conv.weight"].shape[:2] == (12, 6)
    with torch.no_grad():
        torch.testing.assert_close(wider.net.eval()(x), net3(x[:, 2:5]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="init_weights=.*cannot widen stages"):
        init_weights(build(3, "model.unet.base_features=2"), pt)


def test_2d_needs_a_cubic_patch_and_matching_channels(toy_maps: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cubic"):
        _run([*SMOKE_2D, f"data.label_maps={toy_maps}", "synth.patch_shape=[32,32,16]"], tmp_path)
    with pytest.raises(ValueError, match="in_channels"):
        _run([*SMOKE_2D, f"data.label_maps={toy_maps}", "model.slices.context=3"], tmp_path)


# ------------------------------------------------------------------------------- fixed set


def test_fixed_set_from_export_trains(toy_maps: str, tmp_path: Path) -> None:
    out = tmp_path / "fixed"
    export_dataset(
        ExportConfig(
            output=str(out),
            n=4,
            label_maps=toy_maps,
            target="tissue_ventricular",
            device="cpu",
            montage=False,
        ),
        SynthConfig(patch_shape=[32, 32, 32], voxel_mm=4.0),
    )
    table = LabelTable.create("tissue_ventricular")
    images, targets = load_fixed_set(out, table)
    assert images.shape == targets.shape == (4, 32, 32, 32) and images.dtype == np.float16
    assert set(np.unique(targets)) <= set(range(table.target.n_classes))
    assert (targets > 0).any()
    with pytest.raises(ValueError, match="classes"):
        load_fixed_set(out, LabelTable.create("synthseg"))
    with pytest.raises(ValueError, match="export.json"):
        load_fixed_set(tmp_path, table)
    _, _, trainer = _run(
        [
            *SMOKE_2D,
            f"data.label_maps={toy_maps}",
            "data.target=tissue_ventricular",
            f"data.fixed_set={out}",
        ],
        tmp_path / "run",
    )
    assert trainer.global_step == 6


# ------------------------------------------------------------------------------- schedule


def test_warmup_cosine_shape() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_iters=100, warmup=0.1, min_factor=0.05)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0 and max(lrs) == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone decay after warm-up
    assert lrs[-1] == pytest.approx(0.05, abs=0.01)
    with pytest.raises(ValueError):
        warmup_cosine(opt, total_iters=0)


# ------------------------------------------------------------------------------ model files


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_compact_model_files_stay_close_to_float32(precision: str, tmp_path: Path) -> None:
    from synthseg_lite.model.artifact import ModelMeta
    from synthseg_lite.model.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    cfg = UNetConfig(
        n_stages=4, base_features=16, max_features=64, deep_supervision=False, spatial_dims=2
    )
    net = build_unet(cfg, 4).eval()
    meta = ModelMeta(cfg, LabelTable.create("tissue"), 1.5, (32, 32, 32), {}, {"axes": [0, 1, 2]})
    full = save_model(tmp_path / "f32.pt", net, meta)
    small = save_model(tmp_path / f"{precision}.pt", net, meta, precision=precision)
    ratio = {"float16": 2, "int8": 4}[precision]
    assert small.stat().st_size < full.stat().st_size / ratio * 1.3
    net2, meta2 = load_model(small)
    assert meta2.slices == {"axes": [0, 1, 2]}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a, b = torch.softmax(net(x), 1), torch.softmax(net2(x), 1)
    diff = (a - b).abs()
    assert diff.mean() < 0.005 and diff.max() < 0.1
    if precision == "int8":  # each weight within half a quantisation step of its channel
        for k, v in net.state_dict().items():
            if v.dim() >= 2:
                step = v.abs().flatten(1).amax(1) / 127
                err = (net2.state_dict()[k] - v).abs().flatten(1).amax(1)
                assert (err <= step / 2 + 1e-7).all(), k
    with pytest.raises(ValueError, match="precision"):
        save_model(tmp_path / "x.pt", net, meta, precision="int4")


class Recording(torch.nn.Module):
    """Threshold2D that records every input window it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return Threshold2D()(x)


def _reference_slicewise(net, image, axes, context, empty_class=0):
    """The rule spelled out slice by slice: softmax of the network, or the empty class for a
    window that is one constant value."""
    h, total = context // 2, 0
    for axis in axes:
        vol = image[0, 0].movedim(axis, 0)
        padded = torch.nn.functional.pad(vol[None, None], (0, 0, 0, 0, h, h), mode="replicate")
        out = []
        for s in range(vol.shape[0]):
            x = padded[0, 0, s : s + context][None]
            if x.amax() == x.amin():
                p = torch.zeros(1, 2, *vol.shape[1:])
                p[:, empty_class] = 1.0
            else:
                p = torch.softmax(net(x).float(), 1)
            out.append(p)
        total = total + torch.cat(out).movedim(0, 1).movedim(1, 1 + axis)[None]
    return total / len(axes)


@pytest.mark.parametrize("context", [1, 3])
def test_network_never_sees_blank_slices(context: int) -> None:
    """Blank windows are skipped, not computed and overwritten: the network is called on the
    non-blank ones only (fewer calls), and the result is the slice-by-slice rule's."""
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 12, 10, 9)
    image[0, 0, 3:8, 2:7, 2:6] = torch.rand(5, 5, 4) + 0.1
    net = Recording()
    probs = predict_slicewise(net, image, [0, 1, 2], context, batch_size=4)
    assert net.seen, "the network was not called at all"
    for x in net.seen:
        flat = x.flatten(1)
        assert (flat.amax(1) > flat.amin(1)).all(), "a blank window reached the network"
    n_blank = sum(int((image[0, 0].movedim(a, 0).flatten(1).amax(1) == 0).sum()) for a in range(3))
    seen = sum(len(x) for x in net.seen)
    # context 3: the blank slice on each side of the signal has signal in its window (3 axes)
    assert seen == sum(image.shape[2:]) - n_blank + (2 * 3 if context == 3 else 0)
    ref = _reference_slicewise(Threshold2D(), image, [0, 1, 2], context)
    torch.testing.assert_close(probs, ref)


def test_all_blank_volume_is_background() -> None:
    net = Recording()
    probs = predict_slicewise(net, torch.full((1, 1, 5, 6, 7), 3.0), [0, 2], batch_size=4)
    assert probs.shape == (1, 2, 5, 6, 7) and (probs[:, 0] == 1).all()
    assert sum(len(x) for x in net.seen) <= 2  # at most one window per axis, for the class count
