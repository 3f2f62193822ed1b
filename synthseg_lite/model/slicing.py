"""2D training and inference on slices of 3D volumes (nnU-Net's ``2d`` configuration).

Training: each synthetic batch of 3D volumes (synthesised on the device as usual) is cut into
slices along the RAS axes in :attr:`SliceConfig.axes`; :func:`sample_slices` picks, with an
explicit ``torch.Generator``, ``per_step`` slices among those with enough foreground, and
:func:`extract_slices` gathers them (with ``context`` neighbouring slices as channels for 2.5D
input) in one indexing operation, without a loop over the batch.

Inference: :func:`predict_slicewise` segments a volume slice by slice along each axis and averages
the softmax over the axes (SynthSeg-like TTA over the three orientations);
:func:`accumulate_slicewise` does the same for one (possibly flipped) pass, adding each batch's
softmax in place into a preallocated (K, X, Y, Z) sum (what the inference pipeline uses: no
full-size temporary per axis or per flip). Slices without any
signal (constant, e.g. the empty slices around a skull-stripped brain) are background without a
network pass: training only shows slices with labelled tissue, and a network's answer to a blank
input is arbitrary (it drifts during training).

Orientation convention, shared by training and inference: the slice of axis ``a`` keeps the other
two RAS axes in their order (axis 0 -> (Y, Z), axis 1 -> (X, Z), axis 2 -> (X, Y)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "SliceConfig",
    "accumulate_slicewise",
    "class_presence",
    "extract_slices",
    "predict_slicewise",
    "sample_slices",
]


@dataclass
class SliceConfig:
    """How a 2D network (``model.unet.spatial_dims=2``) is fed slices of synthetic volumes.

    Attributes:
        per_step: slices per training step and device (the 2D batch size).
        axes: RAS axes slices are cut across (0 sagittal, 1 coronal, 2 axial); with more than one
            axis the synthetic patch must be a cube. Inference averages over the same axes.
        min_foreground: a slice is eligible when at least this fraction of it is labelled.
        context: slices given as input channels (odd; 1 = plain 2D, 3 = 2.5D); must equal
            ``model.unet.in_channels``.
        batch_size: slices per network call at inference and real-scan validation.
        class_prob: fraction of each step's slices chosen class-first (nnU-Net's foreground
            oversampling, per class): a target class present in the volumes is drawn uniformly,
            then a slice that contains it, so small structures (accumbens, pallidum) are seen as
            often as large ones; the other slices are drawn uniformly among eligible ones.
    """

    per_step: int = 8
    axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    min_foreground: float = 0.02
    context: int = 1
    batch_size: int = 16
    class_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.per_step < 1:
            raise ValueError(f"slices.per_step must be >= 1, got {self.per_step}")
        if (
            not self.axes
            or len(set(self.axes)) != len(self.axes)
            or not set(self.axes) <= {0, 1, 2}
        ):
            raise ValueError(f"slices.axes must be distinct values of 0, 1, 2, got {self.axes}")
        if self.context < 1 or self.context % 2 == 0:
            raise ValueError(f"slices.context must be odd and >= 1, got {self.context}")
        if not 0 <= self.min_foreground < 1:
            raise ValueError(f"slices.min_foreground must be in [0, 1), got {self.min_foreground}")
        if not 0 <= self.class_prob <= 1:
            raise ValueError(f"slices.class_prob must be in [0, 1], got {self.class_prob}")


def _stack_axes(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (A, B, C, S, H, W): the volume with each slicing axis moved first."""
    return torch.stack([x.movedim(2 + a, 2) for a in axes])


def class_presence(target: torch.Tensor, axes: Sequence[int], n_classes: int) -> torch.Tensor:
    """Which classes each slice contains.

    Args:
        target: (B, X, Y, Z) int64 class indices in [0, n_classes); a cube when ``len(axes) > 1``.
        axes: RAS axes to slice across.
        n_classes: number of classes K.

    Returns:
        (A, B, S, K) bool: ``[a, b, s, k]`` is True when slice ``s`` across ``axes[a]`` of sample
        ``b`` has a voxel of class ``k``. One ``bincount`` per axis, no loop over the batch.
    """
    b_ = target.shape[0]
    out = []
    for a in axes:
        t = target.movedim(1 + a, 1)  # (B, S, H, W)
        s_ = t.shape[1]
        row = torch.arange(b_ * s_, device=t.device).view(b_, s_, 1, 1) * n_classes
        counts = torch.bincount((row + t).flatten(), minlength=b_ * s_ * n_classes)
        out.append(counts.view(b_, s_, n_classes) > 0)
    return torch.stack(out)


def sample_slices(
    target: torch.Tensor,
    n: int,
    axes: Sequence[int],
    min_foreground: float,
    generator: torch.Generator,
    class_prob: float = 0.0,
    presence: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``n`` slices: ``round(n * class_prob)`` class-first, the rest uniformly among those
    with enough foreground.

    Args:
        target: (B, X, Y, Z) class indices (0 = background); a cube when ``len(axes) > 1``.
        n: slices to draw (without replacement while enough are eligible).
        axes: RAS axes to slice across.
        min_foreground: minimum labelled fraction of an eligible slice.
        generator: source of randomness (on ``target``'s device).
        class_prob: fraction of slices drawn class-first: a foreground class present in the
            batch uniformly, then uniformly a slice containing it.
        presence: (A, B, S, K) from :func:`class_presence` (computed when None and needed).

    Returns:
        (axis position in ``axes``, sample, slice index), three (n,) int64 tensors.
    """
    fg = _stack_axes((target > 0)[:, None].float(), axes)[:, :, 0].mean((-1, -2))  # (A, B, S)
    _, b_, s_ = fg.shape
    n_cls = round(n * class_prob)
    picks = []
    if n_cls > 0:
        if presence is None:
            presence = class_presence(target, axes, int(target.max().item()) + 1)
        per_slice = presence[..., 1:].flatten(0, 2).T.float()  # (K - 1, A * B * S)
        present = per_slice.sum(1) > 0
        if present.any():
            cls = torch.multinomial(present.float(), n_cls, replacement=True, generator=generator)
            picks.append(torch.multinomial(per_slice[cls], 1, generator=generator)[:, 0])
        else:
            n_cls = 0
    n_uni = n - n_cls
    if n_uni > 0:
        weights = (fg > min_foreground).float().flatten()
        if weights.sum() == 0:  # nothing labelled: any slice (keeps the step shape)
            weights = torch.ones_like(weights)
        k = int(weights.sum().item())
        picks.append(torch.multinomial(weights, n_uni, replacement=k < n_uni, generator=generator))
    flat = torch.cat(picks)
    return flat // (b_ * s_), (flat // s_) % b_, flat % s_


def extract_slices(
    image: torch.Tensor,
    target: torch.Tensor,
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    axes: Sequence[int],
    context: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather slices (and their neighbours, replicated at the borders) from a batch of volumes.

    Args:
        image: (B, 1, X, Y, Z) float. target: (B, X, Y, Z) class indices.
        index: (axis position, sample, slice) from :func:`sample_slices`.
        axes: the axes ``index`` refers to. context: odd number of input channels.

    Returns:
        images (n, context, H, W) and targets (n, H, W) of the centre slices.
    """
    a, b, s = index
    vol = _stack_axes(image, axes)[:, :, 0]  # (A, B, S, H, W)
    lab = _stack_axes(target[:, None], axes)[:, :, 0]
    h = context // 2
    offsets = torch.arange(-h, h + 1, device=s.device)
    neigh = (s[:, None] + offsets).clamp(0, vol.shape[2] - 1)  # (n, context)
    return vol[a[:, None], b[:, None], neigh], lab[a, b, s]


def pad_for_network(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``image`` (N, C, X, Y, Z) at the end of each spatial axis to a multiple of
    ``divisor`` that is at least ``2 * divisor``, so that the network's coarsest level has two
    voxels or more per axis (instance normalisation needs more than one); unchanged if it has.
    """
    pad = [max(-(-n // divisor), 2) * divisor - n for n in image.shape[2:]]
    if not any(pad):
        return image
    return F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))


@torch.no_grad()
def predict_slicewise(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    axes: Sequence[int] = (0, 1, 2),
    context: int = 1,
    batch_size: int = 16,
    divisor: int = 1,
    empty_class: int | None = 0,
) -> torch.Tensor:
    """Class probabilities of a volume from a 2D network, averaged over slicing axes.

    Args:
        net: maps (N, context, H, W) to (N, K, H, W) logits.
        image: (1, 1, X, Y, Z) float; zero-padded at the end of each axis for the passes
            (:func:`pad_for_network`, ``divisor``: the network's), cropped back after.
        axes: RAS axes to slice across; the softmax of each is averaged.
        context: input channels (odd), neighbouring slices replicated at the borders.
        batch_size: slices per network call.
        empty_class: class given to blank inputs, windows of ``context`` slices that are one
            constant value (padding, the air around a skull-stripped brain); the network is not
            run on them. None: the network sees every slice.

    Returns:
        (1, K, X, Y, Z) float32 probabilities.
    """
    h = context // 2
    shape = image.shape[2:]
    image = pad_for_network(image, divisor)
    total = None
    for axis in axes:
        vol = image[0, 0].movedim(axis, 0)  # (S, H, W)
        n_slices = vol.shape[0]
        padded = F.pad(vol[None, None], (0, 0, 0, 0, h, h), mode="replicate")[0, 0] if h else vol
        offsets = torch.arange(context, device=vol.device)
        if empty_class is None:
            blank = torch.zeros(n_slices, dtype=torch.bool, device=vol.device)
        else:  # a window is blank when its min and max over all its slices are equal
            flat = padded.flatten(1)
            lo, hi = flat.amin(1).unfold(0, context, 1), flat.amax(1).unfold(0, context, 1)
            blank = lo.amin(1) == hi.amax(1)  # (S,)
        todo = torch.nonzero(~blank).flatten()
        probs = None
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            out = torch.softmax(net(padded[idx[:, None] + offsets]).float(), 1)  # (n, K, H, W)
            if probs is None:
                probs = out.new_zeros((n_slices, *out.shape[1:]))
            probs[idx] = out
        if probs is None:  # every window blank: one call only to learn the class count
            k = net(padded[:context][None]).shape[1]
            probs = torch.zeros((n_slices, k, *vol.shape[1:]), device=vol.device)
        if blank.any():
            probs[blank, empty_class] = 1.0
        probs = probs.movedim(0, 1).movedim(1, 1 + axis)[None]  # (1, K, X, Y, Z)
        total = probs if total is None else total.add_(probs)
    return (total / len(axes))[..., : shape[0], : shape[1], : shape[2]]


#: Slices gathered before they are added across the sum's innermost axis (16 float32 values:
#: one 64-byte cache line of the sum per voxel row; structure network, 2 threads: the 2 passes
#: across the last axis add in 0.21 s instead of 0.58 s each).
STAGE_SLICES = 16


def _add_slices(target: torch.Tensor, where: torch.Tensor, values: torch.Tensor) -> None:
    """``target[where] += values`` along dim 0, in place: one strided add over a block of
    consecutive slices (the usual case; a slice across the last axis is scattered in memory,
    and a block of them covers whole cache lines), ``index_add_`` otherwise."""
    n = len(where)
    lo, hi = int(where.min()), int(where.max())
    if hi - lo + 1 == n and n > 1 and bool((where.diff() == where[1] - where[0]).all()):
        target[lo : hi + 1].add_(values if int(where[1]) > int(where[0]) else values.flip(0))
    elif n == 1:
        target[lo].add_(values[0])
    else:
        target.index_add_(0, where, values)


@torch.inference_mode()
def accumulate_slicewise(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    out: torch.Tensor,
    axes: Sequence[int] = (0, 1, 2),
    context: int = 1,
    batch_size: int = 16,
    divisor: int = 1,
    flip: Sequence[int] = (),
    swap: torch.Tensor | None = None,
    empty_class: int | None = 0,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Add the softmax of a 2D network over every slice along each of ``axes`` into ``out``.

    The same sum as ``predict_slicewise(net, image.flip(flip)).flip(flip)[:, swap] * len(axes)``
    (up to float rounding), computed batch by batch: each batch's (n, K, H, W) softmax is flipped
    back, its classes permuted and added in place at its slices of ``out``.

    Args:
        net: maps (N, context, H, W) to (N, K, H, W) logits (any float dtype).
        image: (1, 1, X, Y, Z) float; padded at the end for the passes (:func:`pad_for_network`).
        out: (K, X, Y, Z) float32 running sum, same device (modified in place and returned).
        axes, context, batch_size, empty_class: see :func:`predict_slicewise`.
        flip: spatial axes (0 = X) the network sees mirrored (test-time augmentation).
        swap: (K,) int64 class permutation applied to the mirrored prediction (left/right classes),
            or None.
        max_pixels: fewer slices per network call where ``batch_size`` slices would hold more
            pixels than this (None: always ``batch_size``); the probabilities do not change.

    Returns:
        ``out``.
    """
    h = context // 2
    shape = image.shape[2:]
    dims = [2 + a for a in flip]
    x = image.flip(dims) if dims else image
    x = pad_for_network(x, divisor)
    offsets = torch.arange(context, device=image.device)
    for axis in axes:
        vol = x[0, 0].movedim(axis, 0)  # (S, H, W), padded
        n_slices = shape[axis]
        inplane = [a for a in range(3) if a != axis]
        hw = [shape[a] for a in inplane]
        back = [2 + i for i, a in enumerate(inplane) if a in flip]  # dims of (n, K, H, W)
        padded = F.pad(vol[None, None], (0, 0, 0, 0, h, h), mode="replicate")[0, 0] if h else vol
        if empty_class is None:
            blank = torch.zeros(vol.shape[0], dtype=torch.bool, device=vol.device)
        else:
            flat = padded.flatten(1)
            lo, hi = flat.amin(1).unfold(0, context, 1), flat.amax(1).unfold(0, context, 1)
            blank = lo.amin(1) == hi.amax(1)
        blank = blank[:n_slices]
        todo = torch.nonzero(~blank).flatten()
        target = out.movedim(1 + axis, 0)  # (S, K, H, W) view of the sum
        n = batch_size
        if max_pixels is not None:
            n = max(1, min(batch_size, max_pixels // (padded.shape[1] * padded.shape[2])))
        # slices across the sum's innermost axis are scattered in memory: gather STAGE_SLICES of
        # them in a buffer laid out like the sum (slice axis innermost) and add them in one
        # pass, so every cache line of the sum is read and written once, not once per batch
        block, stage = n, None
        transpose = target.stride(2) < target.stride(3)
        if target.stride(0) == 1 and len(todo) > n:
            block = max(n, STAGE_SLICES // n * n)
            k = out.shape[0]
            stage = torch.empty((k, *hw, block), device=out.device).movedim(-1, 0)
        for first in range(0, len(todo), block):
            where = todo[first : first + block]
            dest = None if stage is None else stage[: len(where)]
            for start in range(0, len(where), n):
                idx = where[start : start + n]
                # crop, flip and class swap on the logits in the network's dtype (half the bytes
                # under bfloat16; softmax commutes with all three), then softmax in float32
                logits = net(padded[idx[:, None] + offsets])[..., : hw[0], : hw[1]]
                if back:
                    logits = logits.flip(back)
                if swap is not None:
                    logits = logits.index_select(1, swap)
                if transpose:  # the sum's rows run along H: softmax in that layout
                    logits = logits.transpose(2, 3).contiguous()
                probs = torch.softmax(logits, 1, dtype=torch.float32)
                if transpose:
                    probs = probs.transpose(2, 3)
                del logits
                if dest is None:
                    _add_slices(target, n_slices - 1 - idx if axis in flip else idx, probs)
                else:
                    dest[start : start + len(idx)] = probs
            if dest is not None:
                _add_slices(target, n_slices - 1 - where if axis in flip else where, dest)
        if empty_class is not None and bool(blank.any()):
            where = torch.nonzero(blank).flatten()
            if axis in flip:
                where = n_slices - 1 - where
            target[where, empty_class] += 1.0
    return out
