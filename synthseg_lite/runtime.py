"""Where the work runs: the device a ``device=`` setting names, and the CPU threads torch uses.

The one place that turns ``device=auto|cpu|cuda[:N]|mps`` into a ``torch.device``, the one
place that sets torch's thread count, for every command and the Python API, and NumPy's
huge-page requests for processes that segment scans.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["resolve_device", "set_threads", "numpy_hugepages"]


def resolve_device(device: str, mps: bool = True) -> torch.device:
    """``"auto"`` -> CUDA when available, else Apple's MPS when torch has it (and ``mps``), else
    CPU; anything else is passed to ``torch.device`` and checked.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        mps: whether ``auto`` may choose MPS (the generator's 3D resampling is not on MPS).

    Raises:
        ValueError: an unknown device, or a GPU that is not there.
    """
    backend = getattr(torch.backends, "mps", None)
    has_mps = backend is not None and backend.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps and mps else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: no CUDA GPU available (use device=cpu or auto)")
    if dev.type == "mps" and not has_mps:
        raise ValueError(f"device={device}: Apple's MPS is not available (use device=cpu or auto)")
    return dev


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (``None`` or 0: leave them) and return the previous count.

    Raises:
        ValueError: a negative count.
    """
    previous = torch.get_num_threads()
    if threads is not None and int(threads) < 0:
        raise ValueError(f"threads must be >= 1 (or null), got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
    return previous


def numpy_hugepages(enabled: bool) -> bool | None:
    """Turn NumPy's transparent-huge-page requests for large arrays on or off; returns the
    previous setting (None where this NumPy has no such switch).

    NumPy ``madvise``s every new array of 4 MiB or more for huge pages. Where the kernel then
    compacts memory on the page fault (``/sys/kernel/mm/transparent_hugepage/defrag`` =
    ``madvise``, Ubuntu's default), the first touch of such an array can stall: reorienting a
    64 MB scan took 1.07 s instead of 0.15 s here. Inference turns the requests off; results do
    not change, only where the pages come from.
    """
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    getter = getattr(multiarray, "_get_madvise_hugepage", None)
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if getter is None or setter is None:
        return None
    previous = bool(getter())
    setter(bool(enabled))
    return previous
