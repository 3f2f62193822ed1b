"""Self-describing model files: what inference needs, and nothing from training.

Two forms are read by :func:`load_model`:

* a Lightning checkpoint (``*.ckpt``) written by training, whose ``hyper_parameters`` hold
  ``unet`` (a :class:`UNetConfig` dict), ``label_table`` (:meth:`LabelTable.to_dict`),
  ``spacing_mm`` and ``patch_size``, and whose ``state_dict`` holds the network under ``net.``;
* a compact model file (``*.pt``) written by :func:`save_model` (float32, float16 or int8
  weights), e.g. the model shipped in the package; ``python -m synthseg_lite.commands.artifact
  CHECKPOINT OUT.pt --precision int8`` converts a training checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from synthseg_lite.io import atomic_write
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.safety import load_torch_file
from synthseg_lite.schema import check_model_meta

__all__ = [
    "FORMAT",
    "QC_THRESHOLD_KEY",
    "ModelMeta",
    "ensemble_qc_threshold",
    "interpolate_weights",
    "load_model",
    "model_qc_threshold",
    "read_meta",
    "save_model",
    "with_qc_threshold",
]

FORMAT = "synthseg_lite.model/1"
#: ``ModelMeta.extra`` key of a model's own QC threshold (``benchmarks/qc_calibration.py``).
QC_THRESHOLD_KEY = "qc_threshold"


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
        return {
            "unet": self.unet.to_dict(),
            "label_table": self.label_table.to_dict(),
            "spacing_mm": float(self.spacing_mm),
            "patch_size": list(self.patch_size),
            "extra": dict(self.extra),
            "slices": dict(self.slices),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        return cls(
            UNetConfig(**d["unet"]),
            LabelTable.from_dict(d["label_table"]),
            float(d["spacing_mm"]),
            tuple(int(v) for v in d["patch_size"]),
            dict(d.get("extra", {})),
            dict(d.get("slices") or {}),
        )


#: Weight storage of :func:`save_model`.
PRECISIONS = ("float32", "float16", "int8")


def _encode(v: torch.Tensor, precision: str) -> torch.Tensor | dict[str, torch.Tensor]:
    """One tensor as stored: float16, or int8 with one float32 scale per slice of dim 0
    (symmetric, ``v ~ q * scale``) for weights of 2 or more dimensions."""
    v = v.detach().cpu()
    if not v.is_floating_point() or precision == "float32":
        return v
    if precision == "int8" and v.dim() >= 2:
        scale = v.abs().flatten(1).amax(1).clamp(min=1e-12) / 127.0
        shape = (-1,) + (1,) * (v.dim() - 1)
        q = torch.round(v / scale.view(shape)).clamp(-127, 127).to(torch.int8)
        return {"int8": q, "scale": scale.float()}
    return v.half()


def _decode(v: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(v, dict):
        q = v["int8"]
        return q.float() * v["scale"].view((-1,) + (1,) * (q.dim() - 1))
    return v.float() if v.is_floating_point() else v


def save_model(
    path: str | Path, net: nn.Module, meta: ModelMeta, precision: str = "float32"
) -> Path:
    """Write a compact, self-describing model file atomically.

    Args:
        precision: weight storage: ``float32``, ``float16`` or ``int8`` (weight tensors quantised
            per output channel, symmetric; biases and norms in float16). Tensors shared by
            several state-dict keys (MONAI's DynUNet lists its skip path twice) are stored once.

    Raises:
        ValueError: unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    state, aliases, seen = {}, {}, {}
    for k, v in net.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        state[k] = _encode(v, precision)
    buf = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "meta": meta.to_dict(),
            "state_dict": state,
            "aliases": aliases,
            "precision": precision,
        },
        buf,
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def interpolate_weights(base: nn.Module, tuned: nn.Module, weight: float) -> nn.Module:
    """WiSE-FT (Wortsman et al., 2022): ``tuned`` with its weights set to
    ``(1 - weight) * base + weight * tuned``, for a network fine-tuned from ``base``.

    The blend of a model and its own fine-tuning keeps most of what the fine-tuning gained on the
    new conditions (here: contrast) and most of the base's accuracy where the fine-tuning lost.

    Args:
        base: the network the fine-tuning started from (float32, any precision it was stored in).
        tuned: the fine-tuned network: same topology; changed in place and returned.
        weight: in [0, 1]; 0 gives ``base``'s weights, 1 leaves ``tuned`` as it is.

    Raises:
        ValueError: ``weight`` outside [0, 1], or two different networks.
    """
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the interpolation weight must be in [0, 1], got {weight}")
    a, b = base.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("interpolation needs two versions of the same network (other weights)")
    tuned.load_state_dict(
        {k: (1 - w) * a[k].float() + w * b[k].float() if a[k].is_floating_point() else a[k]
         for k in a}
    )
    return tuned


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Load a network (eval mode, float32) and its metadata from a ``.pt`` model or ``.ckpt``.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
    crafted file cannot run code.

    Raises:
        ValueError: missing file, a file that is neither form, a file holding other Python
            objects, or weights that do not fit the described network.
    """
    path = Path(path)
    ckpt = load_torch_file(path, map_location, "model file")  # weights_only: never runs code
    try:
        return _build(ckpt, path)
    except (KeyError, TypeError, AttributeError, RuntimeError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: a damaged or incompatible model file ({msg})") from exc


def _meta(ckpt: object, path: Path) -> ModelMeta:
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        check_model_meta(ckpt.get("meta"), path)
        return ModelMeta.from_dict(ckpt["meta"])
    if isinstance(ckpt, dict) and "label_table" in ckpt.get("hyper_parameters", {}):
        hp = ckpt["hyper_parameters"]
        check_model_meta(hp, path)
        return ModelMeta.from_dict(
            {**hp, "extra": {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}}
        )
    raise ValueError(f"{path}: not a synthseg_lite model or training checkpoint")


def _build(ckpt: object, path: Path) -> tuple[nn.Module, ModelMeta]:
    meta = _meta(ckpt, path)
    if ckpt.get("format") == FORMAT:
        state = {k: _decode(v) for k, v in ckpt["state_dict"].items()}
        state.update({k: state[v] for k, v in ckpt.get("aliases", {}).items()})
    else:
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net = build_unet(meta.unet, meta.label_table.target.n_classes)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval(), meta


def read_meta(path: str | Path) -> ModelMeta:
    """The metadata of a ``.pt`` model file or ``.ckpt`` (no network is built).

    Raises:
        ValueError: as :func:`load_model`.
    """
    path = Path(path)
    try:
        return _meta(load_torch_file(path, "cpu", "model file"), path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: a damaged or incompatible model file ({exc})") from exc


def model_qc_threshold(meta: ModelMeta) -> float | None:
    """A model's own QC threshold (``meta.extra["qc_threshold"]``), None when it has none."""
    value = meta.extra.get(QC_THRESHOLD_KEY)
    return None if value is None else float(value)


def ensemble_qc_threshold(meta: ModelMeta, others: Sequence[Path], default: float) -> float:
    """The QC threshold of an ensemble: the **lowest** of its members' own thresholds, a member
    without one counting as ``default`` (a training checkpoint never has one, so it is not read).

    The lowest, because an ensemble's score (the confidence of averaged probabilities) is at most
    the mean of its members' scores, and a clean scan must not be flagged for the members'
    disagreement alone.

    Args:
        meta: the first member's metadata (already loaded).
        others: the other members' files.
    """
    own = [model_qc_threshold(meta)] + [
        model_qc_threshold(read_meta(p)) if Path(p).suffix == ".pt" else None for p in others
    ]
    return min(default if t is None else t for t in own)


def with_qc_threshold(src: str | Path, dst: str | Path, threshold: float, note: str = "") -> Path:
    """Write a copy of model file ``src`` with its own QC threshold stored (weights unchanged).

    ``src`` is a ``.pt`` model file (its stored tensors are copied as they are) or a training
    checkpoint (converted with :func:`save_model`, float16). ``note`` (how the threshold was
    calibrated) goes to ``extra["qc_calibration"]``. Written atomically; ``dst`` may be ``src``.

    Raises:
        ValueError: threshold outside [0, 1], or an unreadable ``src``.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"qc threshold must be in [0, 1], got {threshold}")
    extra = {QC_THRESHOLD_KEY: float(threshold)} | ({"qc_calibration": note} if note else {})
    src = Path(src)
    ckpt = load_torch_file(src, "cpu", "model file")
    if not (isinstance(ckpt, dict) and ckpt.get("format") == FORMAT):
        net, meta = load_model(src)
        meta.extra.update(extra)
        return save_model(dst, net, meta, "float16")
    ckpt["meta"]["extra"] = dict(ckpt["meta"].get("extra", {})) | extra
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(dst, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
