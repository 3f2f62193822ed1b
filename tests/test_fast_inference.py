"""The fast inference path gives the straightforward path's labels: in-place accumulation of
slice passes, in-place clean-up, the identity resampling shortcut; out-of-memory fallback, device
choice, fast mode, reading ahead and the study progress bar."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from synthseg_lite.inference import InferenceOptions, Predictor, resolve_device, segment_volume
from synthseg_lite.inference.segment import build_predictor
from synthseg_lite.inference.native import to_native
from synthseg_lite.inference.postprocess import keep_largest_component, qc_scores
from synthseg_lite.data.preprocess import preprocess
from synthseg_lite.inference.study import ScanReader, StudyProgress
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.slicing import predict_slicewise
from synthseg_lite.model.unet import UNetConfig, build_unet


def _tiny_2d(context: int, axes: list[int], target: str = "synthseg", seed: int = 0):
    """A random tiny 2D U-Net and its metadata (left/right classes for ``synthseg``)."""
    cfg = UNetConfig(
        n_stages=3, base_features=4, deep_supervision=False, spatial_dims=2, in_channels=context
    )
    table = LabelTable.create(target)
    torch.manual_seed(seed)
    net = build_unet(cfg, table.target.n_classes).eval()
    slices = {"axes": axes, "context": context, "batch_size": 5}
    return net, ModelMeta(cfg, table, 1.0, (32, 32, 32), {}, slices)


def _volume(shape=(20, 17, 23)) -> torch.Tensor:
    """(1, 1, *shape) a bright off-centre blob with texture in a blank margin."""
    g = torch.Generator().manual_seed(1)
    image = torch.zeros(1, 1, *shape)
    box = tuple(slice(n // 6, n * 3 // 4) for n in shape)
    size = [b.stop - b.start for b in box]
    image[(0, 0, *box)] = torch.rand(*size, generator=g) * 0.5 + 0.3
    return image


def _straightforward(net, meta, image, tta):
    """The old predictor: a full volume per flip and axis, flipped back, permuted, averaged."""
    pred = Predictor([net], meta, tta=tta)
    c, swap, total = pred.slices, meta.label_table.target.class_swap(), 0
    for axes in pred.flips:
        dims = [2 + a for a in axes]
        x = image.flip(dims) if dims else image
        p = predict_slicewise(net, x, c.axes, c.context, c.batch_size, meta.unet.divisor)
        p = p.flip(dims) if dims else p
        total = total + (p[:, swap] if 0 in axes else p)
    return total / len(pred.flips)


@pytest.mark.parametrize(
    "tta,context,axes", [("flip", 3, [1, 2]), ("mirror", 1, [0, 1, 2]), ("none", 1, [2, 0])]
)
def test_accumulated_passes_give_the_straightforward_probabilities(tta, context, axes) -> None:
    net, meta = _tiny_2d(context, axes)
    image = _volume()  # sides not multiples of the divisor: padded, cropped back
    new = Predictor([net], meta, tta=tta)(image)
    ref = _straightforward(net, meta, image, tta)
    assert new.shape == ref.shape == (1, meta.label_table.target.n_classes, 20, 17, 23)
    torch.testing.assert_close(new, ref, atol=2e-6, rtol=0)
    assert torch.equal(new.argmax(1), ref.argmax(1))


def test_slices_gathered_across_a_gap_give_the_straightforward_probabilities() -> None:
    """Slices across the sum's innermost axis are gathered in blocks before they are added; a
    block that spans blank slices (skipped by the network) adds them one by one."""
    net, meta = _tiny_2d(1, [2])
    image = _volume((12, 14, 40))
    image[..., 12:15] = 0  # blank slices inside the run the network sees
    pred = Predictor([net], meta, tta="flip")
    pred.slices.batch_size = 3  # blocks of 15 slices: the gap falls inside the first one
    new = pred(image)
    ref = _straightforward(net, meta, image, "flip")
    torch.testing.assert_close(new, ref, atol=2e-6, rtol=0)


def test_fewer_slices_per_call_give_the_same_probabilities(monkeypatch) -> None:
    """On the CPU a call holds at most CPU_SLICE_PIXELS pixels: the batches shrink (here to one
    slice), the probabilities stay."""
    from synthseg_lite.inference import predictor as predictor_module
    from synthseg_lite.model import slicing

    net, meta = _tiny_2d(3, [1, 2])
    image = _volume()
    ref = Predictor([net], meta, tta="flip")(image)  # 5 slices per call at this size
    sizes = []
    monkeypatch.setattr(predictor_module, "CPU_SLICE_PIXELS", 401)  # slices of 400-480 px
    wrapped = slicing.accumulate_slicewise

    def spy(net_, *args, **kwargs):
        return wrapped(lambda x: sizes.append(len(x)) or net_(x), *args, **kwargs)

    monkeypatch.setattr(predictor_module, "accumulate_slicewise", spy)
    got = Predictor([net], meta, tta="flip")(image)
    assert max(sizes) == 1 and len(sizes) > 20
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_in_place_clean_up_and_identity_resampling_keep_the_labels() -> None:
    net, meta = _tiny_2d(3, [1, 2])
    data = torch.zeros(24, 22, 26)
    data[4:18, 3:19, 5:21] = _volume((14, 16, 16))[0, 0] * 100 + 1
    image, geom = preprocess(data, np.diag([-1.0, 1, 1, 1]), 1.0, meta.unet.divisor)
    assert all(r == 1.0 for r in geom.ratios) and geom.box != ((0, 24), (0, 22), (0, 26))
    probs = Predictor([net], meta, tta="flip")(image)[0]
    for mode in ("brain", "labels"):
        copy = keep_largest_component(probs, mode)
        inplace = keep_largest_component(probs.clone(), mode, inplace=True)
        torch.testing.assert_close(inplace, copy, atol=1e-6, rtol=0)
    cleaned = keep_largest_component(probs, "brain")
    fast = to_native(cleaned, geom)  # shortcut: argmax of the crop, no K-channel full volume
    full = to_native(cleaned, geom, keep_posteriors=True)  # the resampling path
    assert fast.posteriors is None and full.posteriors is not None
    np.testing.assert_array_equal(fast.labels, full.labels)
    np.testing.assert_array_equal(fast.labels_ras, full.labels_ras)
    np.testing.assert_allclose(fast.volumes_mm3, full.volumes_mm3, rtol=1e-6)
    # one argmax serves the clean-up, QC and labels: the same as computing each from the probs
    groups = {"a": [1, 2, 3], "b": list(range(4, probs.shape[0]))}
    for mode in ("none", "brain", "labels"):
        ref = keep_largest_component(probs, mode)
        got, labels = keep_largest_component(probs.clone(), mode, inplace=True, return_labels=True)
        assert torch.equal(labels, ref.argmax(0)), mode
        assert qc_scores(got, groups, labels) == pytest.approx(qc_scores(ref, groups), abs=1e-6)
        with_labels = to_native(got, geom, labels=labels)
        np.testing.assert_array_equal(with_labels.labels, to_native(ref, geom).labels)
    assert with_labels.labels.flags["C_CONTIGUOUS"]  # (a permuted view made NumPy copy slowly)


def test_the_sum_keeps_an_unsliced_axis_innermost_and_the_clean_up_follows_its_layout() -> None:
    """Slices across Y and Z are added as runs along X (the sum's innermost axis); the clean-up,
    QC and labels of that layout equal those of the same values laid out contiguously."""
    net, meta = _tiny_2d(3, [1, 2])
    probs = Predictor([net], meta, tta="flip")(_volume())[0].clone()  # clone keeps the layout
    assert probs.stride(1) == 1 and not probs.is_contiguous()
    probs[:, :3, :3, :3] = 1.0 / probs.shape[0]  # exact ties: the first class wins, as argmax
    dense = probs.contiguous()
    groups = {"a": [1, 2, 3], "b": list(range(4, probs.shape[0]))}
    for mode in ("none", "brain", "labels"):
        got, labels = keep_largest_component(probs.clone(), mode, inplace=True, return_labels=True)
        ref, ref_labels = keep_largest_component(dense, mode, return_labels=True)
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
        assert torch.equal(labels, ref_labels) and torch.equal(ref_labels, ref.argmax(0)), mode
        assert labels.is_contiguous()
        assert qc_scores(got, groups, labels) == qc_scores(ref, groups)


class _OomAbove(nn.Module):
    """Wraps a network; raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, net: nn.Module, limit: int):
        super().__init__()
        self.net, self.limit, self.batches = net, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def _scan() -> tuple[np.ndarray, np.ndarray]:
    data = np.zeros((24, 22, 26), np.float32)
    data[4:18, 3:19, 5:21] = _volume((14, 16, 16))[0, 0].numpy() * 100 + 1
    return data, np.diag([-1.0, 1, 1, 1])


def test_out_of_memory_retries_with_a_smaller_batch(caplog) -> None:
    net, meta = _tiny_2d(3, [1, 2])
    data, affine = _scan()
    opts, cpu = InferenceOptions(progress=False), torch.device("cpu")
    plain = segment_volume(data, affine, Predictor([net], meta), opts, cpu)
    flaky = _OomAbove(net, limit=2)
    predictor = Predictor([flaky], meta)
    with caplog.at_level(logging.WARNING):
        pred = segment_volume(data, affine, predictor, opts, cpu, "scan.nii.gz")
    np.testing.assert_array_equal(pred.labels, plain.labels)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "out of memory" in warnings[0] and "batch 2" in warnings[0]
    assert max(flaky.batches[-3:]) <= 2 and predictor.batch_size == 5  # restored for the next scan


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu(monkeypatch, caplog) -> None:
    """Simulated on a CPU machine: every attempt on 'cuda' runs out of memory."""
    net, meta = _tiny_2d(1, [2], target="tissue")
    predictor = Predictor([net], meta)
    moves: list[str] = []
    monkeypatch.setattr(Predictor, "to", lambda self, d: moves.append(str(d)) or self)
    tried: list[tuple[str, int]] = []

    def attempt(dev: torch.device) -> str:
        tried.append((dev.type, predictor.batch_size))
        if dev.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "done"

    from synthseg_lite.inference.predictor import with_oom_fallback

    with caplog.at_level(logging.WARNING):
        assert with_oom_fallback(attempt, predictor, torch.device("cuda"), "s") == "done"
    assert tried == [("cuda", 5), ("cuda", 2), ("cuda", 1), ("cpu", 5)]
    assert moves == ["cpu", "cuda"] and predictor.batch_size == 5  # back on the GPU afterwards
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "the CPU" in warning
    with pytest.raises(torch.OutOfMemoryError):  # on the CPU with a batch of 1: a real failure
        predictor.batch_size = 1
        with_oom_fallback(lambda d: attempt(torch.device("cuda")), predictor, torch.device("cpu"))


def test_auto_device_prefers_cuda_then_mps(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="MPS"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_fast_mode_is_one_pass() -> None:
    net, meta = _tiny_2d(3, [1, 2])
    fast = build_predictor([net], meta, InferenceOptions(fast=True, tta="flip"))
    assert fast.flips == [()] and fast.axes == [1]
    assert fast.passes_text.startswith("1 network passes")
    full = build_predictor([net], meta, InferenceOptions())
    assert len(full.flips) == 2 and full.axes == [1, 2]


def test_reader_reads_ahead_only_pending_scans_and_reports_errors_in_turn() -> None:
    read: list[str] = []

    def load(name: str) -> str:
        read.append(name)
        if name == "bad":
            raise ValueError("bad: not a NIfTI file")
        return name.upper()

    scans = ["a", "done", "b", "bad", "c"]
    with ScanReader(scans, load, pending=lambda s: s != "done") as reader:
        assert reader.read("a") == "A"
        assert reader.read("b") == "B"  # "done" was never read
        with pytest.raises(ValueError, match="bad"):
            reader.read("bad")
        assert reader.read("c") == "C"
    assert "done" not in read and read.count("b") == 1 and read.count("c") == 1


def test_progress_bar_shows_scans_per_hour_and_time_left() -> None:
    bar = StudyProgress(range(4), disable=False)
    bar.done(0.0, segmented=False)
    bar.done(36.0)
    assert "100 scans/h" in bar.postfix and "01:12 left" in bar.postfix  # 2 scans x 36 s
    bar.close()


@pytest.mark.parametrize(
    "spacing, box",
    [
        ((1.5, 1.0, 0.7), ((3, 11), (0, 9), (5, 17))),  # scan coarser, equal, finer than 1 mm
        ((1.0, 3.0, 1.2), ((2, 14), (1, 5), (0, 22))),  # the crop touching the grid's ends
    ],
)
def test_resampling_back_only_the_crops_reach_equals_the_whole_grid(spacing, box) -> None:
    """to_native resamples only the output voxels the crop reaches: the same probabilities and
    labels as resampling the whole grid (background 1 outside the crop)."""
    from synthseg_lite.data.preprocess import Geometry, resample

    g = torch.Generator().manual_seed(3)
    ratios = tuple(1.0 / s for s in spacing)  # model 1 mm, scan `spacing`
    grid = (16, 12, 22)
    ras = tuple(max(1, round(n * r)) for n, r in zip(grid, ratios))
    k = 5
    sizes = [b - a for a, b in box]
    crop = torch.softmax(torch.randn(k, *sizes, generator=g) * 3, 0)
    geom = Geometry(ras, np.diag([*spacing, 1.0]), np.array([[0, 1], [1, 1], [2, 1]]), ras,
                    np.diag([*spacing, 1.0]), grid, np.eye(4), ratios, box, tuple(sizes))
    got = to_native(crop, geom, keep_posteriors=True, chunk=2)
    full = torch.zeros(k, *grid)
    full[0] = 1
    full[(slice(None), *(slice(a, b) for a, b in box))] = crop
    ref = resample(full, tuple(1.0 / r for r in ratios), ras)
    assert np.abs(got.posteriors - ref.numpy()).max() < 1e-6
    assert np.array_equal(got.labels, ref.argmax(0).numpy())
    # soft volumes: the network's sum on its 1 mm grid (grid_affine), not the resampled one's;
    # background: the rest of the scan's field of view
    assert np.allclose(got.volumes_mm3[1:], crop[1:].double().sum((1, 2, 3)).numpy())
    assert got.volumes_mm3.sum() == pytest.approx(np.prod(ras) * np.prod(spacing))
    fast = to_native(crop, geom, chunk=3)  # without posteriors: same labels and volumes
    assert np.array_equal(fast.labels, got.labels)
    assert np.allclose(fast.volumes_mm3, got.volumes_mm3)


@pytest.mark.parametrize("posteriors", [True, False])
@pytest.mark.parametrize("spacing", [(1.5, 1.0, 0.7), (1.0, 1.0, 1.0)])  # resampled; shortcut
def test_merging_as_the_posteriors_are_resampled_equals_merging_afterwards(
    posteriors, spacing
) -> None:
    """to_native(group=...) (a structure model written as tissue: only the merged channels are
    ever held at the scan's size) gives what merge_classes gives on the unmerged prediction:
    the same labels, volumes and summed posteriors, on a permuted and flipped on-disk grid."""
    from synthseg_lite.data.preprocess import Geometry
    from synthseg_lite.inference.native import merge_classes

    g = torch.Generator().manual_seed(5)
    grid, box = (16, 12, 22), ((3, 11), (0, 9), (5, 17))
    ratios = tuple(1.0 / s for s in spacing)
    ras = tuple(max(1, round(n * r)) for n, r in zip(grid, ratios))
    ornt = np.array([[2, -1], [0, 1], [1, -1]])  # native axis i holds RAS axis ornt[i, 0]
    native = tuple(ras[int(a)] for a in ornt[:, 0])
    k, group = 7, np.array([0, 1, 1, 2, 3, 1, 3])
    sizes = [b - a for a, b in box]
    crop = torch.softmax(torch.randn(k, *sizes, generator=g) * 3, 0)
    geom = Geometry(native, np.eye(4), ornt, ras, np.diag([*spacing, 1.0]), grid, np.eye(4),
                    ratios, box, tuple(sizes))
    want = merge_classes(to_native(crop, geom, keep_posteriors=posteriors, chunk=3), group, 4)
    got = to_native(crop, geom, keep_posteriors=posteriors, chunk=3, group=group, n_groups=4)
    assert got.labels.shape == native and set(np.unique(got.labels)) <= {0, 1, 2, 3}
    assert np.array_equal(got.labels, want.labels)
    assert np.array_equal(got.labels_ras, want.labels_ras)
    assert np.allclose(got.volumes_mm3, want.volumes_mm3)
    if posteriors:
        assert got.posteriors.shape == (4, *native)
        assert np.abs(got.posteriors - want.posteriors).max() < 1e-6
        assert np.allclose(got.posteriors.sum(0), 1, atol=1e-5)
    else:
        assert got.posteriors is None
    with pytest.raises(ValueError, match="group"):
        to_native(crop, geom, group=group[:-1], n_groups=4)


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 0.7), (1.5, 1.0, 0.7), (0.94, 1.5, 0.94)])
def test_labels_resampled_class_by_class_in_their_boxes_equal_all_classes_everywhere(spacing):
    """Without posteriors, to_native resamples each structure only over the output voxels that
    read its voxels at or above half of 1/K: the labels are exactly those of resampling every
    class over the whole grid (the posteriors' path), for small localised structures, a class
    that never comes near winning, and classes cut by the crop's edge."""
    from synthseg_lite.data.preprocess import Geometry

    g = torch.Generator().manual_seed(11)
    grid, box = (30, 26, 28), ((2, 27), (0, 26), (4, 24))
    sizes = [b - a for a, b in box]
    ratios = tuple(1.0 / s for s in spacing)
    ras = tuple(max(1, round(n * r)) for n, r in zip(grid, ratios))
    k = 12
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in sizes],
                                     indexing="ij"))
    centres = torch.rand(k, 3, generator=g) * torch.tensor(sizes, dtype=torch.float32)
    radius = 1.5 + 5 * torch.rand(k, generator=g)
    dist = ((idx[None] - centres[:, :, None, None, None]) ** 2).sum(1).sqrt()
    # crowded: away from its centre a structure stays near the others (winners at p ~ 0.1-0.3)
    logits = (1.5 * (radius[:, None, None, None] - dist) / radius[:, None, None, None]).clamp(-0.5)
    logits[0] = 0.0  # background: wherever no structure is
    logits[5] = -30.0  # a class far below 1/K everywhere
    crop = torch.softmax(logits + 0.3 * torch.randn(logits.shape, generator=g), 0)
    ornt = np.array([[1, 1], [0, -1], [2, 1]])
    geom = Geometry(tuple(ras[int(a)] for a in ornt[:, 0]), np.eye(4), ornt, ras,
                    np.diag([*spacing, 1.0]), grid, np.eye(4), ratios, box, tuple(sizes))
    every = to_native(crop, geom, keep_posteriors=True, chunk=5)
    boxes = to_native(crop, geom)
    assert len(np.unique(every.labels)) >= 8  # most structures win somewhere
    assert np.array_equal(boxes.labels, every.labels)
    assert np.array_equal(boxes.labels_ras, every.labels_ras)
    assert np.array_equal(boxes.labels, every.posteriors.argmax(0))
