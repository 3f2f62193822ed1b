"""WiSE-FT weight interpolation of a model and its fine-tuning (``interpolate_weights`` and
``python -m synthseg_lite.commands.artifact --interpolate BASE WEIGHT``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthseg_lite.commands import artifact
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import ModelMeta, interpolate_weights, load_model, save_model
from synthseg_lite.model.unet import UNetConfig, build_unet

CFG = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)


def _net(seed: int, cfg: UNetConfig = CFG) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(cfg, 4)


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_the_ends_are_the_two_networks_and_the_middle_is_their_mean() -> None:
    base, tuned = _net(0), _net(1)
    a, b = _weights(base), _weights(tuned)
    assert all(torch.equal(v, a[k]) for k, v in interpolate_weights(base, _net(1), 0.0)
               .state_dict().items())
    assert all(torch.equal(v, b[k]) for k, v in interpolate_weights(base, _net(1), 1.0)
               .state_dict().items())
    mid = interpolate_weights(base, tuned, 0.5).state_dict()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(mid[k], (a[k] + b[k]) / 2)
    assert not torch.equal(a["input_block.conv1.conv.weight"], b["input_block.conv1.conv.weight"])


def test_another_network_or_weight_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="same network"):
        interpolate_weights(_net(0), _net(1, UNetConfig(n_stages=3, base_features=8,
                                                        deep_supervision=False)), 0.5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            interpolate_weights(_net(0), _net(1), bad)


def test_command_writes_the_blend_and_records_it(tmp_path: Path) -> None:
    meta = ModelMeta(CFG, LabelTable.create("tissue"), 2.0, (32,) * 3, {})
    base = save_model(tmp_path / "base.pt", _net(0), meta)
    tuned = save_model(tmp_path / "tuned.pt", _net(1), meta)
    out = tmp_path / "blend.pt"
    artifact.main([str(tuned), str(out), "--precision", "float32",
                   "--interpolate", str(base), "0.3"])
    net, got = load_model(out)
    a, b = load_model(base)[0].state_dict(), load_model(tuned)[0].state_dict()
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.7 * a[k] + 0.3 * b[k])
    assert got.extra["interpolated"] == f"0.7 x {base} + 0.3 x {tuned}"
    with pytest.raises(SystemExit) as exc:  # a word for the weight: one line, exit 2
        artifact.main([str(tuned), str(tmp_path / "x.pt"), "--interpolate", str(base), "half"])
    assert exc.value.code == 2
