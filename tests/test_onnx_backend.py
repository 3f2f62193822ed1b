"""``backend=onnx``: ONNX Runtime gives torch's probabilities and labels (2D and 3D networks), stays
on the CPU, and says which extra it needs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import _head
from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference import onnx_backend
from synthseg_lite.inference.segment import build_predictor, load_predictor
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.unet import UNetConfig, build_unet

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _net(spatial_dims: int, target: str = "synthseg"):
    context = 3 if spatial_dims == 2 else 1
    cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False,
                     spatial_dims=spatial_dims, in_channels=context)
    table = LabelTable.create(target)
    torch.manual_seed(0)
    net = build_unet(cfg, table.target.n_classes).eval()
    slices = {"axes": [1, 2], "context": context, "batch_size": 5} if spatial_dims == 2 else None
    return net, ModelMeta(cfg, table, 1.0, (16, 16, 16), {}, slices)


def _image(shape=(20, 24, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    image = torch.zeros(1, 1, *shape)
    image[0, 0, 3:17, 4:20, 2:14] = torch.rand(14, 16, 12, generator=g) * 0.6 + 0.2
    return image


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_onnx_probabilities_equal_torchs(spatial_dims: int) -> None:
    net, meta = _net(spatial_dims)
    image = _image()
    ref = build_predictor([net], meta, InferenceOptions(tta="flip", precision="float32"))(image)
    onnx = build_predictor([net], meta, InferenceOptions(tta="flip", backend="onnx"))
    assert isinstance(onnx.nets[0], onnx_backend.OnnxNet)
    got = onnx(image)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert torch.allclose(got.sum(1), torch.ones(()), atol=1e-4)
    assert (got - ref).abs().max() < 1e-4
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_onnx_session_follows_the_input_sizes() -> None:
    """One export serves every batch and grid size (dynamic axes), and matches torch on each."""
    net, _ = _net(2)
    onnx_net = onnx_backend.OnnxNet(net)
    for shape in ((1, 3, 16, 24), (7, 3, 32, 8)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape)))
        with torch.inference_mode():
            assert (onnx_net(x) - net(x)).abs().max() < 1e-4
    assert onnx_backend._SESSIONS.get(net) is not None


def test_study_labels_equal_between_backends(tmp_path: Path, tiny_model: Path) -> None:
    scan = tmp_path / "in" / "s.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(_head(), np.diag([2.0, 2.0, 2.0, 1.0])), str(scan))
    segs = {}
    for backend in ("torch", "onnx"):
        opts = InferenceOptions(
            backend=backend, precision="float32", progress=False, save_qc=False, threads=1
        )
        (res,) = segment_scans(scan, tmp_path / backend, tiny_model, opts)
        assert res.error is None, res.error
        segs[backend] = np.asarray(nib.load(res.outputs["seg"]).dataobj)
    assert np.mean(segs["torch"] == segs["onnx"]) > 0.9999


def test_onnx_runs_on_the_cpu_only(monkeypatch, tiny_model: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_predictor(tiny_model, InferenceOptions(backend="onnx", device="cuda"))
    predictor, _, device, _ = load_predictor(tiny_model, InferenceOptions(backend="onnx"))
    assert device.type == "cpu"  # auto means the CPU for this backend
    with pytest.raises(ValueError, match="runs on the CPU"):
        predictor.nets[0].to("cuda")


def test_missing_extra_is_one_clear_error(monkeypatch) -> None:
    net, meta = _net(3)
    monkeypatch.setattr(onnx_backend, "onnx_available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'synthseg_lite\[onnx\]'"):
        build_predictor([net], meta, InferenceOptions(backend="onnx"))
    with pytest.raises(ValueError, match="backend must be one of"):
        InferenceOptions(backend="tensorrt")
