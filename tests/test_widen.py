"""Net2WiderNet: a trained U-Net's weights in a wider U-Net that computes the same function."""

from __future__ import annotations

import pytest
import torch

from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.model.widen import stage_widths, widen_state


def _net(dims: int, base: int, top: int, classes: int = 5, seed: int | None = None):
    net = build_unet(
        UNetConfig(
            n_stages=4,
            base_features=base,
            max_features=top,
            deep_supervision=False,
            spatial_dims=dims,
            in_channels=3,
        ),
        classes,
    )
    if seed is not None:  # away from the initialisation: InstanceNorm affine terms too
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


@pytest.mark.parametrize(("dims", "shape"), [(2, (3, 3, 32, 24)), (3, (2, 3, 16, 16, 8))])
def test_wider_network_gives_the_same_logits(dims: int, shape: tuple[int, ...]) -> None:
    narrow, wide = _net(dims, 4, 16, seed=0), _net(dims, 6, 20)
    wide.load_state_dict(
        widen_state(narrow.state_dict(), wide.state_dict(), torch.Generator().manual_seed(1))
    )
    assert stage_widths(wide.state_dict()) == [6, 12, 20, 20]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = narrow(x), wide(x)
    assert ref.abs().max() > 1  # not a trivial network
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_copies_are_split_unevenly_so_that_training_can_separate_them() -> None:
    narrow, wide = _net(2, 4, 16, seed=0), _net(2, 8, 16)
    state = widen_state(narrow.state_dict(), wide.state_dict(), torch.Generator().manual_seed(1))
    old = narrow.state_dict()["input_block.conv2.conv.weight"]  # reads stage 0: 4 -> 8 channels
    new = state["input_block.conv2.conv.weight"]
    # the first 4 output rows are the old filters; their columns over an old channel and its
    # copies sum to the old column, in proportions that differ between the copies
    filters = narrow.state_dict()["input_block.conv1.conv.weight"]
    new_filters = state["input_block.conv1.conv.weight"]
    assert torch.equal(new_filters[:4], filters)
    for j in range(4):  # which new channels copy old channel j
        copies = [j] + [c for c in range(4, 8) if torch.equal(new_filters[c], filters[j])]
        torch.testing.assert_close(new[:4, copies].sum(1), old[:, j], atol=1e-6, rtol=1e-5)
        if len(copies) > 1:
            assert not torch.allclose(new[:4, copies[0]], new[:4, copies[1]])


def test_same_seed_same_weights_and_the_seed_matters() -> None:
    narrow, wide = _net(2, 4, 16, seed=0), _net(2, 6, 16)
    a, b, c = (
        widen_state(narrow.state_dict(), wide.state_dict(), torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_equal_widths_is_the_identity() -> None:
    narrow = _net(2, 4, 16, seed=0)
    state = widen_state(narrow.state_dict(), _net(2, 4, 16).state_dict(), torch.Generator())
    assert all(torch.equal(state[k], v) for k, v in narrow.state_dict().items())


def test_refuses_narrower_stages_and_other_networks() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="cannot widen stages"):
        widen_state(_net(2, 6, 16).state_dict(), _net(2, 4, 16).state_dict(), g)
    with pytest.raises(ValueError, match="more than width"):  # other classes
        widen_state(_net(2, 4, 16).state_dict(), _net(2, 6, 16, classes=7).state_dict(), g)
    with pytest.raises(ValueError, match="more than width"):  # 2D into 3D
        widen_state(_net(2, 4, 16).state_dict(), _net(3, 6, 16).state_dict(), g)
    with pytest.raises(ValueError, match="not a U-Net"):
        stage_widths({"conv.weight": torch.zeros(2, 2)})


def test_refuses_deep_supervision_heads() -> None:
    def net(base: int):
        cfg = UNetConfig(n_stages=4, base_features=base, max_features=16, deep_supr_num=1)
        return build_unet(cfg, 3).state_dict()

    with pytest.raises(ValueError, match="deep-supervision"):
        widen_state(net(4), net(6), torch.Generator())
