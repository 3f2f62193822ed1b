"""Patch and batch size for a GPU memory budget (nnU-Net-style estimate, plus the generator).

nnU-Net v2's planner (``ExperimentPlanner``) counts the feature-map elements of the U-Net for one
sample (``compute_conv_feature_map_size``) and compares them with a reference measured on its own
trainer: 5.6e8 elements fit 8 GB at batch size 2. While the estimate is too large it shrinks the
patch axis that is largest relative to the data, by the network's divisor; the batch size then
fills the remaining budget (at least 2). Here the same reference is turned into bytes per element,
and the synthesis buffers of each sample (the input label map on the device and the generator's
float32 volumes at patch size) are added, since the generator runs on the training GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from synthseg_lite.model.unet import UNetConfig

__all__ = [
    "Plan",
    "estimate_memory_gb",
    "generator_bytes",
    "network_elements",
    "plan_patch_and_batch",
    "shrink_plan",
]

#: nnU-Net v2 ``ExperimentPlanner.UNet_reference_val_3d``: feature-map elements (one sample) that
#: fit ``REFERENCE_GB`` at batch size ``REFERENCE_BATCH`` with its default trainer.
REFERENCE_ELEMENTS = 560_000_000
REFERENCE_GB = 8.0
REFERENCE_BATCH = 2
#: GPU bytes per feature-map element implied by the reference (activations, gradients, AMP copies).
BYTES_PER_ELEMENT = REFERENCE_GB * 2**30 / (REFERENCE_ELEMENTS * REFERENCE_BATCH)
#: generator bytes per input label-map voxel (uint8 map, int64 lookups, float grid-sample input).
GEN_BYTES_PER_MAP_VOXEL = 13
#: generator bytes per patch voxel (sampling grid, warped labels, GMM, noise, bias, resolution).
GEN_BYTES_PER_PATCH_VOXEL = 64


@dataclass(frozen=True)
class Plan:
    """Planned training sizes.

    Attributes:
        patch_size: patch (voxels at the training spacing).
        batch_size: samples per step and GPU.
        estimated_gb: estimated peak GPU memory (GiB).
    """

    patch_size: tuple[int, int, int]
    batch_size: int
    estimated_gb: float


def network_elements(unet: UNetConfig, patch: Sequence[int], n_classes: int) -> int:
    """Feature-map elements of one sample (nnU-Net's ``compute_conv_feature_map_size``).

    Encoder: two convolutions per stage. Decoder: transposed convolution + two convolutions per
    stage, plus a segmentation head (``n_classes``) at every supervised decoder stage.
    """
    feats = [min(unet.base_features * 2**i, unet.max_features) for i in range(unet.n_stages)]
    voxels = [math.prod(max(1, p // 2**i) for p in patch) for i in range(unet.n_stages)]
    n_heads = 1 + (unet.deep_supr_num if unet.deep_supervision else 0)
    total = sum(2 * f * v for f, v in zip(feats, voxels))
    for s in range(unet.n_stages - 1):
        total += 3 * feats[s] * voxels[s] + (n_classes * voxels[s] if s < n_heads else 0)
    if unet.deep_supervision:  # DynUNet upsamples the heads to full size and stacks them
        total += n_heads * n_classes * voxels[0]
    return int(total)


def generator_bytes(
    patch: Sequence[int], map_shape: Sequence[int], partial_volume_factor: int = 1
) -> int:
    """Bytes the synthesis of one sample holds on the device (estimate)."""
    return int(
        GEN_BYTES_PER_MAP_VOXEL * math.prod(map_shape)
        + GEN_BYTES_PER_PATCH_VOXEL * math.prod(patch) * partial_volume_factor**3
    )


def estimate_memory_gb(
    unet: UNetConfig,
    patch: Sequence[int],
    batch_size: int,
    n_classes: int,
    map_shape: Sequence[int],
    partial_volume_factor: int = 1,
) -> float:
    """Estimated peak GPU memory (GiB) of a training step."""
    per_sample = network_elements(unet, patch, n_classes) * BYTES_PER_ELEMENT + generator_bytes(
        patch, map_shape, partial_volume_factor
    )
    return batch_size * per_sample / 2**30


def plan_patch_and_batch(
    gpu_memory_gb: float,
    unet: UNetConfig,
    n_classes: int,
    max_patch: Sequence[int],
    map_shape: Sequence[int],
    voxel_mm: float,
    partial_volume_factor: int = 1,
    batch_size: int | None = None,
) -> Plan:
    """Largest patch (up to ``max_patch``) and batch that fit ``gpu_memory_gb``.

    Args:
        gpu_memory_gb: GPU memory to plan for (GiB).
        unet: network topology (the patch must be a multiple of ``unet.divisor``).
        n_classes: output classes.
        max_patch: starting patch (voxels), e.g. ``synth.patch_shape``; also clipped to the extent
            of the label maps at ``voxel_mm``.
        map_shape: (X, Y, Z) of the stacked label maps (1 mm voxels).
        voxel_mm: training voxel size (mm).
        partial_volume_factor: the generator's supersampling factor.
        batch_size: fixed batch size (only the patch is planned); None plans it too (>= 2).

    Raises:
        ValueError: nothing fits (even the smallest patch at the smallest batch).
    """
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
    div = unet.divisor
    extent = [s / voxel_mm for s in map_shape]
    patch = [
        max(2 * div, min(div * (int(p) // div), div * math.ceil(e / div)))
        for p, e in zip(max_patch, extent)
    ]
    min_batch = batch_size or REFERENCE_BATCH

    def fits(p: Sequence[int], b: int) -> bool:
        return (
            estimate_memory_gb(unet, p, b, n_classes, map_shape, partial_volume_factor)
            <= gpu_memory_gb
        )

    while not fits(patch, min_batch):
        shrinkable = [i for i in range(3) if patch[i] > 2 * div]
        if not shrinkable:
            if batch_size is None and min_batch > 1:
                min_batch = 1
                continue
            raise ValueError(
                f"no patch of at least {2 * div} voxels fits gpu_memory_gb={gpu_memory_gb}; "
                "use a smaller network, a larger voxel size or set gpu_memory_gb=null"
            )
        axis = max(shrinkable, key=lambda i: patch[i] / extent[i])
        patch[axis] -= div
    if batch_size is None:
        per = estimate_memory_gb(unet, patch, 1, n_classes, map_shape, partial_volume_factor)
        batch_size = max(min_batch, int(gpu_memory_gb // per))
    gb = estimate_memory_gb(unet, patch, batch_size, n_classes, map_shape, partial_volume_factor)
    return Plan(tuple(patch), int(batch_size), round(gb, 4))


def shrink_plan(
    failed: Plan,
    unet: UNetConfig,
    n_classes: int,
    map_shape: Sequence[int],
    voxel_mm: float,
    partial_volume_factor: int = 1,
) -> Plan:
    """The next plan after ``failed`` ran out of memory: the planner's own rules, for a budget just
    below ``failed``'s estimate.

    Starting from ``failed.patch_size``, the patch axis that is largest relative to the data shrinks
    by the network divisor until the estimate at batch size 2 is below what failed; the batch then
    fills that budget. So a batch the planner had grown above 2 comes down first, then the patch
    shrinks one divisor step per failure, and once the patch is at its minimum (2 divisors per
    axis) the batch drops to 1. A failed batch of 1 stays 1 (only the patch shrinks).

    Raises:
        ValueError: nothing smaller than ``failed`` exists (minimum patch at batch size 1).
    """
    failed_gb = estimate_memory_gb(
        unet, failed.patch_size, failed.batch_size, n_classes, map_shape, partial_volume_factor
    )
    try:
        return plan_patch_and_batch(
            failed_gb * (1 - 1e-9),
            unet,
            n_classes,
            failed.patch_size,
            map_shape,
            voxel_mm,
            partial_volume_factor,
            1 if failed.batch_size <= 1 else None,
        )
    except ValueError:
        raise ValueError(
            f"out of memory with patch {list(failed.patch_size)} and batch size "
            f"{failed.batch_size}, the smallest plan for this network: use a smaller network "
            "(model.unet.*) or a larger voxel size (synth.voxel_mm)"
        ) from None
