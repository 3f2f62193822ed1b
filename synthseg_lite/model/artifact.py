"""Self-describing model files: what inference needs, and nothing from training.

Two forms are read by :func:`load_model`:

* a Lightning checkpoint (``*.ckpt``) written by training, whose ``hyper_parameters`` hold
  ``unet`` (a :class:`UNetConfig` dict), ``label_table`` (:meth:`LabelTable.to_dict`),
  ``spacing_mm`` and ``patch_size``, and whose ``state_dict`` holds the network under ``net.``;
* a compact model file (``*.pt``) written by :func:`save_model` (optionally fp16 weights), e.g. the
  model shipped in the package.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from synthseg_lite.io import atomic_write
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.unet import UNetConfig, build_unet

__all__ = ["FORMAT", "ModelMeta", "load_model", "save_model"]

FORMAT = "synthseg_lite.model/1"


@dataclass
class ModelMeta:
    """What a trained network expects and predicts.

    Attributes:
        unet: network topology.
        label_table: generation labels and target classes (``label_table.target``).
        spacing_mm: isotropic voxel size the network was trained at (mm).
        patch_size: training patch (voxels), the default sliding-window size.
        extra: anything else worth keeping (fold, step, config).
        slices: for 2D networks, :class:`~synthseg_lite.model.slicing.SliceConfig` as a dict
            (slicing axes and context of inference); empty for 3D networks.
    """

    unet: UNetConfig
    label_table: LabelTable
    spacing_mm: float
    patch_size: tuple[int, ...]
    extra: dict
    slices: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "label_table": self.label_table.to_dict(),
                "spacing_mm": float(self.spacing_mm), "patch_size": list(self.patch_size),
                "extra": dict(self.extra), "slices": dict(self.slices)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        return cls(UNetConfig(**d["unet"]), LabelTable.from_dict(d["label_table"]),
                   float(d["spacing_mm"]), tuple(int(v) for v in d["patch_size"]), dict(d.get("extra", {})),
                   dict(d.get("slices") or {}))


def save_model(path: str | Path, net: nn.Module, meta: ModelMeta, half: bool = False) -> Path:
    """Write a compact, self-describing model file atomically (fp16 weights when ``half``)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "meta": meta.to_dict(), "state_dict": state}, buf)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Load a network (eval mode, float32) and its metadata from a ``.pt`` model or ``.ckpt``.

    Raises:
        ValueError: missing file or a file that is neither form.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from exc
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        meta = ModelMeta.from_dict(ckpt["meta"])
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and "hyper_parameters" in ckpt and "label_table" in ckpt["hyper_parameters"]:
        hp = ckpt["hyper_parameters"]
        meta = ModelMeta.from_dict({**hp, "extra": {"epoch": ckpt.get("epoch"),
                                                    "global_step": ckpt.get("global_step")}})
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    else:
        raise ValueError(f"{path}: not a synthseg_lite model or training checkpoint")
    net = build_unet(meta.unet, meta.label_table.target.n_classes)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval(), meta
