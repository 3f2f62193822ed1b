"""Inference: geometry round trips, flip TTA, fold ensembling, post-processing, bad inputs."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from synthseg_lite.inference import (
    InferenceOptions,
    Predictor,
    find_checkpoints,
    load_ensemble,
    segment_scans,
    segment_volume,
)
from synthseg_lite.inference.postprocess import keep_largest_component
from synthseg_lite.inference.predictor import default_model_path
from synthseg_lite.data.preprocess import from_ras, grid_for, preprocess, resample, to_ras
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta, save_model
from synthseg_lite.model.unet import UNetConfig, build_unet

TINY = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)


def _meta(target: str = "tissue", spacing: float = 1.0, patch=(32, 32, 32)) -> ModelMeta:
    return ModelMeta(TINY, LabelTable.create(target), spacing, patch, {})


def _tiny_net(seed: int, n_classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return build_unet(TINY, n_classes).eval()


class ThresholdNet(nn.Module):
    """Analytic 'network': class 1 where the rescaled intensity exceeds 0.5, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 20 * (x - 0.5)
        return torch.cat([torch.zeros_like(x), fg, fg - 30, fg - 30], 1)


class SideNet(nn.Module):
    """Analytic 'network' that knows anatomy: foreground in the left half of its RAS input is
    Left-Cerebral-White-Matter (FreeSurfer 2), in the right half Right-Cerebral-White-Matter (41)."""

    def __init__(self, table: LabelTable):
        super().__init__()
        values = list(table.target.values)
        self.n, self.left, self.right = len(values), values.index(2), values.index(41)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.n, *x.shape[2:])
        half = x.shape[2] // 2
        out[:, self.left, :half] = 10 * x[:, 0, :half]
        out[:, self.right, half:] = 10 * x[:, 0, half:]
        return out


def _phantom(shape=(30, 26, 22), center=(9, 15, 12), radius=6) -> np.ndarray:
    """An off-centre ball (a wrong flip or permutation moves it), intensity ~100, background 0."""
    rng = np.random.default_rng(0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ball = ((idx - np.array(center)) ** 2).sum(-1) <= radius**2
    return np.where(ball, 100 + rng.normal(0, 3, shape), 0).astype(np.float32)


_ROT = np.array([[np.cos(0.35), -np.sin(0.35), 0], [np.sin(0.35), np.cos(0.35), 0], [0, 0, 1]])
AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LIA": np.array([[-1.0, 0, 0, 90], [0, 0, -1, 100], [0, 1, 0, -110], [0, 0, 0, 1]]),
    "oblique_aniso": np.vstack(
        [np.hstack([_ROT @ np.diag([1.3, 0.9, 1.7]), [[5], [-3], [8]]]), [0, 0, 0, 1]]
    ),
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("codes", ["RAS", "LIA", "PSR", "ILA"])
def test_to_ras_from_ras_round_trip(codes):
    ornt = nib.orientations.axcodes2ornt(codes)  # = io_orientation of an affine with these axes
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    ras = to_ras(x, ornt)
    assert np.array_equal(ras[1].numpy(), nib.orientations.apply_orientation(x[1].numpy(), ornt))
    assert torch.equal(from_ras(ras, ornt), x)


def test_resampled_grid_matches_world_coordinates():
    """Resampling a field that is linear in world x gives, at each grid voxel, its centre's x."""
    affine = AFFINES["oblique_aniso"]
    shape = (20, 24, 18)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world_x = (ijk @ affine[:3, :3].T + affine[:3, 3])[..., 0]
    gshape, gaff, ratios = grid_for(shape, affine, 1.0)
    out = resample(torch.as_tensor(world_x, dtype=torch.float64)[None], ratios, gshape)[0].numpy()
    gijk = np.stack(np.meshgrid(*[np.arange(n) for n in gshape], indexing="ij"), -1)
    expected = (gijk @ gaff[:3, :3].T + gaff[:3, 3])[..., 0]
    inner = tuple(slice(2, n - 2) for n in gshape)  # away from the clamped border
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-6)
    assert np.allclose(np.sqrt((gaff[:3, :3] ** 2).sum(0)), 1.0)


@pytest.mark.parametrize("name", list(AFFINES))
def test_segmentation_lands_on_the_input_grid(name):
    data, affine = _phantom(), AFFINES[name]
    predictor = Predictor([ThresholdNet()], _meta(), tta="flip")
    pred = segment_volume(
        data, affine, predictor, InferenceOptions(save_posteriors=True), torch.device("cpu")
    )
    assert pred.labels.shape == data.shape
    truth = data > 50
    if name == "oblique_aniso":  # resampled to 1 mm and back: boundary voxels may differ
        assert _dice(pred.labels == 1, truth) > 0.93
    else:  # permutations and flips only: exact
        assert np.array_equal(pred.labels == 1, truth)
    np.testing.assert_allclose(pred.posteriors.sum(0), 1, atol=1e-5)
    voxel = abs(np.linalg.det(affine[:3, :3]))
    assert pred.volumes_mm3.sum() == pytest.approx(data.size * voxel, rel=1e-5)
    assert pred.volumes_mm3[1] == pytest.approx(truth.sum() * voxel, rel=0.1)


@pytest.mark.parametrize("name", list(AFFINES))
def test_written_segmentation_has_input_shape_and_affine(tmp_path, name):
    model = save_model(tmp_path / "m.pt", _tiny_net(0), _meta(patch=(16, 16, 16)))
    scan = tmp_path / "in" / f"scan_{name}.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(_phantom()[..., None], AFFINES[name]), str(scan))  # 4D with one volume
    opts = InferenceOptions(tta="none", save_qc=False, progress=False, roi_size=[32, 32, 32])
    (result,) = segment_scans(scan, tmp_path / "out", model, opts)
    assert result.error is None
    seg = nib.load(str(result.outputs["seg"]))
    assert seg.shape == (30, 26, 22)
    np.testing.assert_allclose(seg.affine, AFFINES[name], atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    header = (tmp_path / "out" / "volumes.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["subject", "qc_score", "qc_flag"]
    assert {"GM_mm3", "WM_mm3", "CSF_mm3", "total_intracranial_mm3"} <= set(header)


def test_mgz_input_gives_mgz_output_on_its_grid(tmp_path):
    model = save_model(tmp_path / "m.pt", _tiny_net(0), _meta(patch=(32, 32, 32)))
    scan = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(_phantom(), AFFINES["LIA"]), str(scan))
    opts = InferenceOptions(tta="none", save_qc=False, progress=False, save_posteriors=True)
    (result,) = segment_scans(scan, tmp_path / "out", model, opts)
    seg = nib.load(str(result.outputs["seg"]))
    assert result.outputs["seg"].name == "scan_seg.mgz" and seg.shape == (30, 26, 22)
    np.testing.assert_allclose(seg.affine, AFFINES["LIA"], atol=1e-4)
    post = nib.load(str(result.outputs["posteriors"]))
    assert post.shape == (30, 26, 22, 4)


def test_flip_tta_keeps_left_and_right_labels():
    table = LabelTable.create("synthseg")
    meta = ModelMeta(TINY, table, 1.0, (16, 8, 8), {})
    net = SideNet(table)
    image = torch.full((1, 1, 16, 8, 8), 0.8)
    p_none = Predictor([net], meta, tta="none")(image)
    for tta in ("flip", "mirror"):
        p = Predictor([net], meta, tta=tta)(image)
        torch.testing.assert_close(p, p_none)
    labels = p.argmax(1)[0]
    assert (labels[:8] == net.left).all() and (labels[8:] == net.right).all()
    # Without the channel swap the flipped pass would put "left" on the right: check it matters.
    flipped = torch.softmax(net(image.flip(2)), 1).flip(2)
    assert (flipped.argmax(1)[0, :8] == net.right).all()


def test_fold_ensemble_is_the_mean_of_the_fold_probabilities(tmp_path):
    meta = _meta(patch=(16, 16, 16))
    for fold in (0, 1):
        save_model(tmp_path / "run" / f"fold_{fold}.pt", _tiny_net(fold), meta)
    nets, loaded = load_ensemble(tmp_path / "run")
    assert len(nets) == 2 and loaded.spacing_mm == meta.spacing_mm
    image = torch.rand(1, 1, 16, 16, 32, generator=torch.Generator().manual_seed(0))
    kw = {"tta": "flip", "overlap": 0.5, "sw_batch_size": 3}  # 3 overlapping windows per pass
    both = Predictor(nets, loaded, **kw)(image)
    single = [Predictor([n], loaded, **kw)(image) for n in nets]
    torch.testing.assert_close(both, (single[0] + single[1]) / 2)
    assert not torch.allclose(single[0], single[1])


def _lightning_ckpt(path, seed):
    net, meta = _tiny_net(seed), _meta()
    hp = {
        "unet": meta.unet.to_dict(),
        "label_table": meta.label_table.to_dict(),
        "spacing_mm": 1.0,
        "patch_size": [32, 32, 32],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "hyper_parameters": hp,
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        },
        path,
    )
    return path


def test_find_checkpoints_rule(tmp_path):
    run = tmp_path / "run"
    best0 = _lightning_ckpt(run / "0_fold0" / "checkpoints" / "best.ckpt", 0)
    _lightning_ckpt(run / "0_fold0" / "checkpoints" / "last.ckpt", 1)
    last1 = _lightning_ckpt(run / "1_fold1" / "checkpoints" / "last.ckpt", 2)
    _lightning_ckpt(run / ".hidden" / "best.ckpt", 3)
    assert find_checkpoints(run) == [best0, last1]
    assert find_checkpoints(last1) == [last1]
    nets, meta = load_ensemble(run)
    assert len(nets) == 2 and meta.label_table.target.n_classes == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model file"):
        find_checkpoints(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such model"):
        find_checkpoints(tmp_path / "missing")


def test_ensemble_of_incompatible_models_is_refused(tmp_path):
    save_model(tmp_path / "run" / "a.pt", _tiny_net(0), _meta())
    save_model(tmp_path / "run" / "b.pt", _tiny_net(0, 32), _meta("synthseg"))
    with pytest.raises(ValueError, match="identical targets"):
        load_ensemble(tmp_path / "run")


def test_keep_largest_component():
    probs = torch.zeros(3, 12, 12, 12)
    probs[0] = 1
    probs[:, 1:6, 1:6, 1:6] = torch.tensor([0.1, 0.8, 0.1]).view(3, 1, 1, 1)  # big blob, class 1
    probs[:, 8:10, 8:10, 8:10] = torch.tensor([0.2, 0.3, 0.5]).view(
        3, 1, 1, 1
    )  # small blob, class 2
    assert torch.equal(keep_largest_component(probs, "none"), probs)
    kept = keep_largest_component(probs, "brain").argmax(0)
    assert (kept[1:6, 1:6, 1:6] == 1).all() and (kept[8:10, 8:10, 8:10] == 0).all()
    # per label: a stray class-2 island inside the brain goes to the next best class
    probs2 = probs.clone()
    probs2[:, 8:10, 8:10, 8:10] = probs[:, 0:1, 0:1, 0:1]
    probs2[:, 2:4, 2:4, 2:4] = torch.tensor([0.1, 0.3, 0.6]).view(3, 1, 1, 1)
    probs2[:, 3, 5, 5] = torch.tensor([0.1, 0.2, 0.7])  # one isolated class-2 voxel
    cleaned = keep_largest_component(probs2, "labels")
    assert cleaned.argmax(0)[3, 5, 5] == 1 and (cleaned.argmax(0)[2:4, 2:4, 2:4] == 2).all()
    torch.testing.assert_close(cleaned.sum(0), torch.ones(12, 12, 12))
    with pytest.raises(ValueError, match="keep_largest"):
        keep_largest_component(probs, "all")


def test_preprocess_pads_to_divisor_and_rescales():
    data = torch.as_tensor(_phantom())
    image, geom = preprocess(data, AFFINES["LIA"], 1.0, 8)
    assert all(s % 8 == 0 for s in image.shape[2:]) and image.shape[2:] == geom.padded_shape
    assert image.min() >= 0 and image.max() <= 1
    assert all(b - a <= n for (a, b), n in zip(geom.box, geom.grid_shape))
    with pytest.raises(ValueError, match="constant"):
        preprocess(torch.full((8, 8, 8), 3.0), np.eye(4), 1.0, 8)


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_bad_inputs_are_skipped_with_one_line_reasons(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    good = _write(scans / "good.nii.gz", _phantom((16, 16, 16), (8, 8, 8), 5))
    (scans / "garbage.nii.gz").write_bytes(b"not an image")
    _write(scans / "flat2d.nii.gz", np.ones((16, 16), np.float32))
    _write(scans / "series4d.nii.gz", np.ones((8, 8, 8, 2), np.float32))
    inf = _phantom((16, 16, 16), (8, 8, 8), 5)
    inf[0, 0, 0] = np.inf  # (a NaN is read as no signal, with a warning)
    _write(scans / "inf.nii.gz", inf)
    _write(scans / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32))
    _write(scans / "zeros.nii.gz", np.zeros((8, 8, 8), np.float32))
    _write(scans / "constant.nii.gz", np.full((8, 8, 8), 7, np.float32))
    _write(
        scans / "good_seg.nii.gz", np.zeros((4, 4, 4), np.uint8)
    )  # would be overwritten by good's output
    digest = hashlib.sha256((scans / "good_seg.nii.gz").read_bytes()).hexdigest()
    model = save_model(tmp_path / "m.pt", _tiny_net(0), _meta(patch=(16, 16, 16)))
    opts = InferenceOptions(tta="none", save_qc=False, progress=False)
    with pytest.raises(ValueError, match="good_seg.nii.gz exists and was not written"):
        segment_scans(scans, scans, model, opts)  # refused before any scan: a user's file
    results = {r.input.name: r for r in segment_scans(scans, tmp_path / "study", model, opts)}
    expected = {
        "garbage.nii.gz": "unreadable",
        "flat2d.nii.gz": "3D",
        "series4d.nii.gz": "3D",
        "inf.nii.gz": "Inf",
        "nan.nii.gz": "every voxel is NaN",
        "zeros.nii.gz": "empty",
        "constant.nii.gz": "constant",
    }
    for name, phrase in expected.items():
        error = results[name].error
        assert error is not None and phrase in error and name in error and "\n" not in error, (
            name,
            error,
        )
    assert hashlib.sha256((scans / "good_seg.nii.gz").read_bytes()).hexdigest() == digest
    # elsewhere, the good scan goes through
    (ok,) = segment_scans(good, tmp_path / "out", model, opts)
    assert ok.error is None and ok.outputs["seg"].is_file()
    with pytest.raises(ValueError, match="no scans found"):
        segment_scans(tmp_path / "out" / "*.mgz", tmp_path / "out2", model, opts)


def test_options_and_default_model_errors():
    with pytest.raises(ValueError, match="tta"):
        InferenceOptions(tta="all")
    with pytest.raises(ValueError, match="roi_size"):
        Predictor([ThresholdNet()], _meta(), roi_size=[30, 32, 32])
    try:
        default_model_path()
    except ValueError as exc:
        assert "model=" in str(exc)


@pytest.mark.gpu
def test_predictor_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    net, meta = _tiny_net(0), _meta(patch=(16, 16, 16))
    image = torch.rand(1, 1, 16, 16, 32, generator=torch.Generator().manual_seed(0))
    cpu = Predictor([net], meta)(image)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 on both (an H200 differs by 2e-3 in TF32)
    try:
        gpu = Predictor([net.cuda()], meta)(image.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.mark.parametrize("name", ["LIA", "oblique_aniso"])
@pytest.mark.parametrize("output_mm", [1.0, 0.5])
def test_output_mm_writes_an_isotropic_ras_grid_over_the_scan(name, output_mm):
    """output_mm: the segmentation on an isotropic RAS grid of that size over the scan's field of
    view; the ball lands where it is in the world, with its volume, whatever the scan's grid."""
    data, affine = _phantom(), AFFINES[name]
    predictor = Predictor([ThresholdNet()], _meta(), tta="none")
    native = segment_volume(data, affine, predictor, InferenceOptions(), torch.device("cpu"))
    pred = segment_volume(
        data, affine, predictor, InferenceOptions(output_mm=output_mm, save_posteriors=True),
        torch.device("cpu"),
    )
    spacing = np.sqrt((pred.affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(spacing, output_mm)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(
        nib.as_closest_canonical(nib.Nifti1Image(data, affine)).affine
    ) == ("R", "A", "S")
    extent = np.asarray(data.shape) * np.sqrt((affine[:3, :3] ** 2).sum(0))  # mm, on-disk axes
    assert sorted(np.asarray(pred.labels.shape) * output_mm) == pytest.approx(
        sorted(extent), abs=output_mm)
    # the same ball in world coordinates, with the same volume
    truth = data > 50
    voxel = abs(np.linalg.det(affine[:3, :3]))
    np.testing.assert_allclose(
        _world_centroid(pred.labels == 1, pred.affine), _world_centroid(truth, affine), atol=0.3
    )
    assert (pred.labels == 1).sum() * output_mm**3 == pytest.approx(truth.sum() * voxel, rel=0.08)
    # soft volumes: the network's integral on either grid; background: the rest of each grid
    np.testing.assert_allclose(pred.volumes_mm3[1:], native.volumes_mm3[1:], rtol=1e-6)
    assert pred.volumes_mm3.sum() == pytest.approx(np.prod(pred.labels.shape) * output_mm**3)
    assert pred.posteriors.shape[1:] == pred.labels.shape
    np.testing.assert_allclose(pred.posteriors.sum(0), 1, atol=1e-5)
    assert np.array_equal(pred.posteriors.argmax(0), pred.labels)
    assert np.array_equal(pred.labels_ras, pred.labels)  # written in RAS order


def test_output_mm_at_the_model_spacing_is_the_network_grid():
    """On a 1 mm RAS scan, output_mm=1 (the model's) is the scan's grid: the same labels."""
    data = _phantom()
    predictor = Predictor([ThresholdNet()], _meta(), tta="none")
    native = segment_volume(data, np.eye(4), predictor, InferenceOptions(), torch.device("cpu"))
    grid = segment_volume(
        data, np.eye(4), predictor, InferenceOptions(output_mm=1.0), torch.device("cpu")
    )
    assert np.array_equal(grid.labels, native.labels)
    np.testing.assert_allclose(grid.affine, np.eye(4))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_output_mm_must_be_a_voxel_size(bad):
    with pytest.raises(ValueError, match="output_mm"):
        InferenceOptions(output_mm=bad)


def test_field_of_view_too_large_for_the_network_grid_is_refused_before_resampling():
    """A header claiming 40 mm voxels (a wrong unit: a 1.3 m head) resamples to a grid far larger
    than the scan: one ValueError naming the file and max_voxels, not an out-of-memory kill."""
    predictor = Predictor([ThresholdNet()], _meta(), tta="none")
    data = _phantom()
    affine = np.diag([40.0, 40.0, 40.0, 1.0])
    opts = InferenceOptions(max_voxels=50 * data.size)
    with pytest.raises(ValueError, match=r"huge\.nii\.gz: its field of view .* max_voxels"):
        segment_volume(data, affine, predictor, opts, torch.device("cpu"), name="huge.nii.gz")
    # the same scan at its real voxel size is segmented
    pred = segment_volume(data, np.eye(4), predictor, opts, torch.device("cpu"))
    assert pred.labels.shape == data.shape


def test_output_mm_grid_larger_than_max_voxels_is_refused():
    predictor = Predictor([ThresholdNet()], _meta(), tta="none")
    opts = InferenceOptions(output_mm=0.05, max_voxels=10**6)
    with pytest.raises(ValueError, match="max_voxels"):
        segment_volume(_phantom(), np.eye(4), predictor, opts, torch.device("cpu"))


def test_merge_classes_groups_labels_and_sums_probabilities_and_volumes():
    """A structure prediction written as tissue: each label becomes its group, probabilities and
    soft volumes are summed within a group (still summing to 1), QC and pose are kept."""
    from synthseg_lite.inference.native import NativePrediction, merge_classes

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(4, 3, 2)).transpose(3, 0, 1, 2).astype(np.float32)
    labels = probs.argmax(0)
    pred = NativePrediction(
        labels, labels[::-1].copy(), np.array([10.0, 1.0, 2.0, 3.0, 4.0]), np.eye(4), probs,
        qc={"qc_score": 0.8}, pose={"degrees": 3.0},
    )
    group = np.array([0, 1, 2, 1, 3])  # background, GM, WM, GM, CSF
    merged = merge_classes(pred, group, 4)
    np.testing.assert_array_equal(merged.labels, group[labels])
    np.testing.assert_array_equal(merged.labels_ras, group[labels[::-1]])
    np.testing.assert_allclose(merged.volumes_mm3, [10.0, 4.0, 2.0, 4.0])
    np.testing.assert_allclose(merged.posteriors[1], probs[1] + probs[3], rtol=1e-6)
    np.testing.assert_allclose(merged.posteriors.sum(0), 1.0, atol=1e-5)
    assert merged.posteriors.shape == (4, 4, 3, 2) and merged.qc == pred.qc
    assert merged.pose == pred.pose and pred.labels is labels  # the input is left as it was
    no_post = merge_classes(NativePrediction(labels, labels, pred.volumes_mm3, np.eye(4)), group, 4)
    assert no_post.posteriors is None
