"""``precision=``: which dtype the network runs in on which device, and that bfloat16 gives the
float32 probabilities to within its rounding (labels nearly all equal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthseg_lite.inference import InferenceOptions
from synthseg_lite.inference import precision as prec
from synthseg_lite.inference.segment import build_predictor, load_predictor
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.unet import UNetConfig, build_unet


def _net2d():
    cfg = UNetConfig(n_stages=3, base_features=8, deep_supervision=False, spatial_dims=2,
                     in_channels=3)
    table = LabelTable.create("synthseg")
    torch.manual_seed(0)
    net = build_unet(cfg, table.target.n_classes).eval()
    slices = {"axes": [1, 2], "context": 3, "batch_size": 5}
    return net, ModelMeta(cfg, table, 1.0, (16, 16, 16), {}, slices)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_follows_the_hardware(monkeypatch, amx: bool) -> None:
    monkeypatch.setattr(prec, "amx_bf16", lambda: amx)
    assert prec.network_dtype("auto", "cpu") == (torch.bfloat16 if amx else torch.float32)
    assert prec.network_dtype("auto", "cuda") == torch.float16
    assert prec.network_dtype("auto", "mps") == torch.float32
    # float16 is CUDA's: a scan moved to the CPU (out of memory) gets the CPU's auto choice
    assert prec.network_dtype("float16", "cpu") == prec.network_dtype("auto", "cpu")
    assert prec.network_dtype("float32", "cuda") == torch.float32
    assert prec.network_dtype("bfloat16", "cpu") == torch.bfloat16


def test_bad_precision_is_one_clear_error(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceOptions(precision="int8")
    with pytest.raises(ValueError, match="backend=onnx runs in float32"):
        InferenceOptions(backend="onnx", precision="bfloat16")
    with pytest.raises(ValueError, match="float16 is for CUDA"):
        load_predictor(tiny_model, InferenceOptions(precision="float16", device="cpu"))


def test_float32_leaves_the_network_alone_and_others_wrap_it() -> None:
    net, meta = _net2d()
    assert build_predictor([net], meta, InferenceOptions(precision="float32")).nets[0] is net
    wrapped = build_predictor([net], meta, InferenceOptions(precision="bfloat16")).nets[0]
    assert isinstance(wrapped, prec.AutocastNet) and wrapped.net is net


def test_bfloat16_probabilities_match_float32() -> None:
    """Only the network runs in bfloat16: probabilities sum to 1 in float32 and stay within
    bfloat16's rounding of the float32 ones; the labels agree almost everywhere."""
    net, meta = _net2d()
    g = torch.Generator().manual_seed(1)
    image = torch.zeros(1, 1, 20, 24, 16)
    image[0, 0, 3:17, 4:20, 2:14] = torch.rand(14, 16, 12, generator=g) * 0.6 + 0.2
    ref = build_predictor([net], meta, InferenceOptions(precision="float32"))(image)
    got = build_predictor([net], meta, InferenceOptions(precision="bfloat16"))(image)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.allclose(got.sum(1), torch.ones(()), atol=1e-5)
    diff = (got - ref).abs().max().item()
    assert 0 < diff < 0.05  # it did run in bfloat16, and close
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.97
