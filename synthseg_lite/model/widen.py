"""A trained U-Net's weights in a wider U-Net that computes the same function (Net2WiderNet).

Chen, Goodfellow & Shlens (2016), "Net2Net: accelerating learning via knowledge transfer": every
new feature channel of a stage copies an existing one (its convolution filters, its InstanceNorm
scale and shift), and every layer that reads the stage splits the weight it gave the original
channel among the original and its copies, so that the sum it computes is unchanged. The wider
network's logits equal the narrow one's for any input; training then has more channels to use.

Where the paper splits a weight evenly and adds noise (which changes the function), the split here
is random and exact: each reading channel draws its own positive proportions that sum to 1 over
the copies. The copies then get different gradients and grow apart, and the function is still the
file's to rounding.

Only the features change: stages, kernels, input channels and classes must be the same. Layer
names are MONAI ``DynUNet``'s as :func:`synthseg_lite.model.unet.build_unet` builds it, without
deep supervision heads (the shipped 2D recipes have none).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["stage_widths", "widen_state"]

#: Proportions of a split weight are drawn from U(1 - SPREAD, 1 + SPREAD), then normalised.
SPREAD = 0.5


def stage_widths(state: Mapping[str, torch.Tensor | tuple[int, ...]]) -> list[int]:
    """Feature channels of each resolution stage (first to bottleneck) of a DynUNet state dict
    (tensors, or their shapes).

    Raises:
        ValueError: not a plain DynUNet (input block, downsamples, bottleneck).
    """

    def rows(key: str) -> int:
        return int(next(iter(getattr(state[key], "shape", state[key]))))

    try:
        widths = [rows("input_block.conv1.conv.weight")]
        j = 0
        while f"downsamples.{j}.conv1.conv.weight" in state:
            widths.append(rows(f"downsamples.{j}.conv1.conv.weight"))
            j += 1
        widths.append(rows("bottleneck.conv1.conv.weight"))
    except KeyError as exc:
        raise ValueError(f"not a U-Net built by build_unet (no {exc})") from exc
    return widths


def widen_state(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``state``'s network in ``target``'s wider shapes, computing the same function.

    Args:
        state: the trained network's state dict (DynUNet; float tensors).
        target: the wider network's state dict (only its keys and shapes are used); every stage
            at least as wide as ``state``'s, the same stages, input channels, kernels and
            classes.
        generator: draws which channel each new one copies and the split proportions (the
            result is reproducible from its seed).

    Returns:
        A state dict with ``target``'s keys and shapes.

    Raises:
        ValueError: the two networks differ in anything but stage widths, or a stage narrows.
    """
    old, new = stage_widths(state), stage_widths(target)
    if len(old) != len(new) or any(n < o for o, n in zip(old, new, strict=True)):
        raise ValueError(f"cannot widen stages {old} to {new} (same stages, none narrower)")
    if set(state) != set(target):
        odd = min(set(state) ^ set(target))
        raise ValueError(f"the networks differ in more than width ({odd})")
    maps = [_copy_map(o, n, generator) for o, n in zip(old, new, strict=True)]
    # DynUNet lists each module twice (``skip_layers...`` aliases the same tensors)
    canonical = {w.data_ptr(): k for k, w in state.items() if not k.startswith("skip_layers.")}
    out: dict[str, torch.Tensor] = {}
    for key in canonical.values():
        writes, reads, transposed = _role(key, len(old) - 1)
        w = state[key]
        if w.ndim == 1:  # InstanceNorm scale / shift, convolution bias
            out[key] = w.clone() if writes is None else w[maps[writes]].clone()
        elif transposed:  # ConvTranspose weight: (in, out, *k)
            out[key] = _remap(w.transpose(0, 1), writes, reads, old, maps, generator).transpose(
                0, 1
            )
        else:
            out[key] = _remap(w, writes, reads, old, maps, generator)
    for key, w in state.items():
        if key.startswith("skip_layers."):
            if w.data_ptr() not in canonical:
                raise ValueError(f"cannot widen {key}: no layer of the U-Net holds it")
            out[key] = out[canonical[w.data_ptr()]]
    for key, w in out.items():
        if tuple(w.shape) != tuple(target[key].shape):
            raise ValueError(
                f"the networks differ in more than width ({key} would be "
                f"{list(w.shape)}, the wider network has {list(target[key].shape)})"
            )
    return out


def _copy_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """Which old channel each new channel is: the old ones first, then random copies."""
    extra = torch.randint(old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), extra])


def _role(key: str, last: int) -> tuple[int | None, list[int] | None, bool]:
    """The stage a layer writes (None: the classes), the stages it reads in order (None: the
    image) and whether its weight is a transposed convolution's, from its DynUNet name."""
    block, _, rest = key.partition(".")
    if block == "output_block":  # 1x1 convolution: reads stage 0, writes the classes
        return None, [0], False
    index, _, rest = (
        rest.partition(".") if block in ("downsamples", "upsamples") else ("", "", rest)
    )
    if block == "upsamples":  # decoder: upsample from the stage below, then read [up, skip]
        stage = last - 1 - int(index)
        if rest.startswith("transp_conv."):
            return stage, [stage + 1], True
        return stage, [stage, stage] if rest.startswith("conv_block.conv1.") else [stage], False
    if block == "input_block":
        stage = 0
    elif block == "downsamples":
        stage = int(index) + 1
    elif block == "bottleneck":
        stage = last
    else:
        raise ValueError(
            f"cannot widen {key}: only the encoder, decoder and output layers of build_unet's "
            "U-Net are widened (no deep-supervision heads)"
        )
    if rest.startswith("conv1."):  # a block's first convolution reads the stage above
        return stage, None if stage == 0 else [stage - 1], False
    return stage, [stage], False


def _remap(
    w: torch.Tensor,
    writes: int | None,
    reads: list[int] | None,
    old: list[int],
    maps: list[torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """A (out, in, *k) weight with widened output rows and split, widened input columns.

    Args:
        writes: the stage whose channels are the output rows (None: unchanged rows).
        reads: the stages concatenated as the input columns, in order (None: unchanged).
    """
    if writes is not None:
        w = w[maps[writes]]
    if reads is None:
        return w.clone()
    cols, offset = [], 0
    for stage in reads:  # a decoder block reads [upsampled, skip]: both of its stage's width
        cols.append(maps[stage] + offset)
        offset += old[stage]
    col = torch.cat(cols)
    if offset != w.shape[1]:
        raise ValueError(f"a weight reads {w.shape[1]} channels, the stages give {offset}")
    w = w[:, col]
    # proportions per (out, new in) channel, normalised to 1 over the copies of each old channel
    r = 1 - SPREAD + 2 * SPREAD * torch.rand(w.shape[0], col.numel(), generator=generator)
    total = torch.zeros(w.shape[0], offset).index_add_(1, col, r)
    share = (r / total[:, col]).to(w.dtype)
    return w * share.reshape(*share.shape, *([1] * (w.ndim - 2)))
