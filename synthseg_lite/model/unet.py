"""nnU-Net's PlainConvUNet, built with MONAI's ``DynUNet``.

3x3x3 kernels, first stride 1 then 2, features ``base * 2**i`` capped at ``max_features`` (320 in
nnU-Net), two convolutions per stage, InstanceNorm (affine), LeakyReLU(0.01), transposed-conv
upsampling and 1x1 deep-supervision heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from monai.networks.nets import DynUNet
from torch import nn

__all__ = ["UNetConfig", "build_unet"]


@dataclass
class UNetConfig:
    """U-Net topology.

    Attributes:
        n_stages: resolution stages (6 = nnU-Net's 3D full-resolution default for ~128^3 patches);
            the patch size must be divisible by ``2 ** (n_stages - 1)``.
        base_features: features of the first stage (nnU-Net: 32).
        max_features: feature cap (nnU-Net 3D: 320).
        deep_supervision: build the auxiliary heads (training output gets an extra axis).
        deep_supr_num: number of auxiliary heads (nnU-Net uses every stage but the two lowest).
        spatial_dims: 3 (volumes) or 2 (slices).
        in_channels: input channels (1 image; more for 2.5D slice stacks).
    """

    n_stages: int = 6
    base_features: int = 32
    max_features: int = 320
    deep_supervision: bool = True
    deep_supr_num: int = 3
    spatial_dims: int = 3
    in_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def divisor(self) -> int:
        """Every spatial size given to the network must be a multiple of this."""
        return 2 ** (self.n_stages - 1)


def build_unet(cfg: UNetConfig, out_channels: int) -> nn.Module:
    """Build the network.

    In training mode with deep supervision the output is (B, 1 + deep_supr_num, K, *S) (heads
    upsampled to full size by DynUNet); in eval mode it is (B, K, *S) logits.
    """
    if cfg.n_stages < 2:
        raise ValueError(f"n_stages must be >= 2, got {cfg.n_stages}")
    if cfg.deep_supervision and not 1 <= cfg.deep_supr_num <= cfg.n_stages - 2:
        raise ValueError(
            f"deep_supr_num must be in [1, n_stages - 2] = [1, {cfg.n_stages - 2}], got {cfg.deep_supr_num}"
        )
    filters = [min(cfg.base_features * 2**i, cfg.max_features) for i in range(cfg.n_stages)]
    strides = [1] + [2] * (cfg.n_stages - 1)
    return DynUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=out_channels,
        kernel_size=[3] * cfg.n_stages,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=cfg.deep_supr_num if cfg.deep_supervision else 1,
    )
