"""An optional ONNX Runtime backend for CPU inference (``backend=onnx``, extra ``[onnx]``).

The network is exported from the loaded torch module **in memory**, on its first call, with
dynamic batch and spatial sizes (PyTorch's TorchScript-based exporter, opset 17); nothing is
written to disk and the model file stays the only format. ONNX Runtime then runs every call on the
CPU with as many threads as torch was given (``threads=``). Outputs equal torch's to float
tolerance (``tests/test_onnx_backend.py``); the gain is measured by
``python benchmarks/inference.py --backends torch onnx``.
"""

from __future__ import annotations

import io
import logging
import warnings
import weakref

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "OnnxNet", "onnx_available"]

log = logging.getLogger(__name__)

#: Values of ``InferenceOptions.backend``.
BACKENDS = ("torch", "onnx")

#: ONNX Runtime sessions of networks already exported in this process (one per torch module).
_SESSIONS: weakref.WeakKeyDictionary[nn.Module, object] = weakref.WeakKeyDictionary()


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` (the ``[onnx]`` extra) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _session(net: nn.Module, example: torch.Tensor, threads: int) -> object:
    """Export ``net`` for inputs shaped like ``example`` (any batch and spatial sizes) and open
    an ONNX Runtime session on the CPU."""
    import onnxruntime as ort

    names = {0: "batch", **{d: f"s{d}" for d in range(2, example.dim())}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notices
        torch.onnx.export(
            net.eval(), (example.float().cpu(),), buf, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": names, "y": names}, opset_version=17, dynamo=False,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    log.info("network exported to ONNX Runtime (%.1f MB in memory, %d thread(s))",
             buf.tell() / 1e6, max(1, threads))
    return session


def _run_options() -> object:
    """Each call hands its arena memory back afterwards (measured on the tissue network, 16 slices
    of 256^2 on 2 threads: peak +462 MB instead of +798 MB, 3 % slower; no arena at all: +302 MB,
    21 % slower)."""
    import onnxruntime as ort

    run = ort.RunOptions()
    run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return run


class OnnxNet:
    """A torch network run by ONNX Runtime on the CPU, called like the network.

    Args:
        net: the loaded network (eval mode; kept for its export and its session cache).

    Raises:
        ValueError: the ``[onnx]`` extra is not installed.
    """

    def __init__(self, net: nn.Module) -> None:
        if not onnx_available():
            raise ValueError(
                "backend=onnx needs ONNX Runtime: pip install 'synthseg_lite[onnx]' "
                "(or backend=torch)"
            )
        self.net, self.run_options = net, _run_options()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) float tensor on the CPU -> (B, K, *S) float32 logits."""
        session = _SESSIONS.get(self.net)
        if session is None:
            session = _SESSIONS[self.net] = _session(self.net, x, torch.get_num_threads())
        x_np = np.ascontiguousarray(x.detach().float().cpu().numpy())
        y = session.run(None, {"x": x_np}, self.run_options)[0]
        return torch.from_numpy(y)

    def to(self, device: torch.device | str) -> OnnxNet:
        """Stay on the CPU (the only device of this backend).

        Raises:
            ValueError: another device.
        """
        if torch.device(device).type != "cpu":
            raise ValueError(f"backend=onnx runs on the CPU, not {device} (use backend=torch)")
        return self
