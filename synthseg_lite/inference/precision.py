"""The arithmetic the network runs in at inference (``precision=``).

``auto`` runs the network in bfloat16 (autocast) on a CPU with Intel AMX's bfloat16 tiles
(Sapphire Rapids and later Xeons), where oneDNN makes the 2D U-Nets' convolutions 2.5-2.7x faster
than float32 (``benchmarks/inference.py --precisions float32 bfloat16``), and in float16 autocast on
CUDA (as nnU-Net predicts); elsewhere (CPUs without AMX, where bfloat16 is emulated, and MPS) it
stays float32. Only the network runs in the low precision: its logits are cast back to float32
before the softmax, and every probability is summed in float32. The labels this costs are measured
on the shared real scans (README "Speed": Dice within 0.002 of float32).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PRECISIONS", "AutocastNet", "amx_bf16", "network_dtype"]

#: Values of ``InferenceOptions.precision``.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def amx_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 tiles (torch's CPU capability report; False if torch
    does not report it)."""
    try:
        return bool(torch._C._cpu._get_cpu_capability().get("amx_bf16", False))
    except (AttributeError, RuntimeError):
        return False


def network_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the network computes in for ``precision`` on ``device``'s type.

    float16 is CUDA's: elsewhere (a scan moved to the CPU after an out-of-memory error) it is
    ``auto``'s choice for that device.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto" or (precision == "float16" and kind != "cuda"):
        if kind == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and amx_bf16() else torch.float32
    return getattr(torch, precision)


class AutocastNet:
    """A network run under autocast in the dtype :func:`network_dtype` gives for each input's
    device (so a scan moved to the CPU after a CUDA out-of-memory error gets the CPU's choice),
    called like the network.

    Args:
        net: the loaded network (eval mode).
        precision: one of :data:`PRECISIONS`.
    """

    def __init__(self, net: nn.Module, precision: str) -> None:
        network_dtype(precision, "cpu")  # validates
        self.net, self.precision = net, precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) float tensor -> (B, K, *S) logits in the network's dtype (the caller
        flips, permutes and crops them there, then takes the softmax in float32)."""
        dtype = network_dtype(self.precision, x.device)
        if dtype == torch.float32:
            return self.net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            return self.net(x)

    def to(self, device: torch.device | str) -> AutocastNet:
        """Move the network (in place); returns self."""
        self.net = self.net.to(device)
        return self
