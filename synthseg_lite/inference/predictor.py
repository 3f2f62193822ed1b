"""Fold ensemble x test-time augmentation over MONAI's Gaussian-weighted sliding window (3D
networks) or slice-by-slice prediction averaged over the training axes (2D networks).

For each model and each flip of the TTA set, the flipped image goes through
``monai.inferers.sliding_window_inference`` (logits blended with a Gaussian importance map), the
softmax is flipped back and, when the flip mirrors left and right (RAS axis 0), its channels are
permuted with ``label_table.target.class_swap()`` (SynthSeg's flip TTA). The probabilities of all
passes are averaged.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from synthseg_lite.labels import TARGET_PRESETS, TargetPreset
from synthseg_lite.labels.lut import tissue_view
from synthseg_lite.model.artifact import ModelMeta, load_model
from synthseg_lite.model.slicing import SliceConfig, accumulate_slicewise

__all__ = [
    "SHIPPED_MODELS",
    "TTA_MODES",
    "Predictor",
    "default_model_path",
    "find_checkpoints",
    "load_ensemble",
    "resolve_model",
    "tissue_output",
    "tta_flips",
    "with_oom_fallback",
]

log = logging.getLogger(__name__)

#: Test-time augmentation modes: no TTA, left/right flip (SynthSeg), all 8 axis mirrorings (nnU-Net,
#: whose training mirrors every axis; this package's generator flips left/right only).
TTA_MODES = ("none", "flip", "mirror")

#: The files of the models shipped in the package.
TISSUE_FAST_MODEL = "resources/model_cpu.pt"
STRUCTURES_MODEL = "resources/model_structures.pt"

#: Shipped model names (``model=``) -> the files that serve it, in order of preference (the
#: first one this installation has). ``tissue``, the default, is the structure network written as
#: GM / WM / CSF (its tissue view: :func:`tissue_output`), which beats the dedicated tissue
#: network on 35 of 36 class-and-condition figures on the shared real scans (README "Results on
#: real scans") at about 2.6x its time; ``tissue_fast`` is that dedicated network.
SHIPPED_MODELS: dict[str, tuple[str, ...]] = {
    "tissue": (STRUCTURES_MODEL, TISSUE_FAST_MODEL),
    "tissue_fast": (TISSUE_FAST_MODEL,),
    "structures": (STRUCTURES_MODEL,),
}

#: Shipped names whose structure segmentation is written as tissue (GM, WM, CSF).
TISSUE_OUTPUT = ("tissue",)


def _name(model: str | Path | None) -> str:
    """The name ``model=`` gives (None: the default, ``tissue``)."""
    return "tissue" if model is None else str(model)


def _shipped(file: str) -> Path | None:
    path = Path(str(resources.files("synthseg_lite").joinpath(file)))
    return path if path.is_file() else None


def default_model_path() -> Path:
    """Path of the model file behind the default ``model=tissue``.

    Raises:
        ValueError: the package has no shipped model.
    """
    return resolve_model("tissue")


def resolve_model(model: str | Path | None = None) -> Path:
    """Where the model named by ``model=`` is: the one rule of ``infer.py`` and
    :func:`synthseg_lite.segment`.

    Args:
        model: ``"tissue"`` (also None: the default), ``"tissue_fast"`` or ``"structures"``: a
            model shipped in the package (:data:`SHIPPED_MODELS`; a folder of that name is
            written ``./tissue``); anything else: a run directory, a ``.ckpt`` or a ``.pt`` file
            (checked by :func:`find_checkpoints`).

    Raises:
        ValueError: a shipped model that this installation does not have.
    """
    name = _name(model)
    if name not in SHIPPED_MODELS:
        return Path(model)
    for file in SHIPPED_MODELS[name]:
        path = _shipped(file)
        if path is not None:
            return path
    what = "structure model" if name == "structures" else f"model {name!r}"
    raise ValueError(f"the {what} is not shipped in this installation")


def tissue_output(model: str | Path | None, meta: ModelMeta) -> np.ndarray | None:
    """(K,) int64 tissue class (0 background, 1 GM, 2 WM, 3 CSF) of each of the model's classes
    when ``model`` names a shipped model written as tissue (:data:`TISSUE_OUTPUT`) and its file
    is a structure model; None: its classes are written as they are."""
    if _name(model) not in TISSUE_OUTPUT:
        return None
    view = tissue_view(meta.label_table.target)
    return None if view is None else view[0]


def find_checkpoints(path: str | Path) -> list[Path]:
    """The model files of a run: one per fold.

    Rule: a file (``.ckpt`` or ``.pt``) is used as is. In a directory, every ``*.ckpt`` / ``*.pt``
    below it (recursively, hidden folders skipped) is grouped by its folder; in each folder the
    newest ``best*.ckpt`` is taken, else the newest ``last*.ckpt``, else every model file there
    (e.g. ``fold_0.pt ... fold_4.pt`` side by side). So ``<run>/fold_k/checkpoints/{best,last}.ckpt``
    gives one checkpoint per fold.

    Raises:
        ValueError: missing path or no model file found.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such model file or run directory")
    by_dir: dict[Path, list[Path]] = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found = [
            Path(root) / f for f in files if f.endswith((".ckpt", ".pt")) and not f.startswith(".")
        ]
        if found:
            by_dir[Path(root)] = found
    chosen: list[Path] = []
    for folder in sorted(by_dir):
        files = by_dir[folder]
        for prefix in ("best", "last"):
            cands = [f for f in files if f.name.startswith(prefix) and f.suffix == ".ckpt"]
            if cands:
                chosen.append(max(cands, key=lambda f: (f.stat().st_mtime, f.name)))
                break
        else:
            chosen.extend(sorted(files))
    if not chosen:
        raise ValueError(f"{path}: no model file (*.ckpt, *.pt) found below this directory")
    return chosen


def load_ensemble(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[list[nn.Module], ModelMeta]:
    """Load every fold model of ``path`` (see :func:`find_checkpoints`) onto ``device``.

    Raises:
        ValueError: no model found, or models that disagree on classes or voxel size.
    """
    paths = find_checkpoints(path)
    nets, metas = [], []
    for p in paths:
        net, meta = load_model(p, map_location="cpu")
        nets.append(net.to(device))
        metas.append(meta)
    ref = metas[0]
    for p, meta in zip(paths[1:], metas[1:]):
        if meta.label_table.target != ref.label_table.target or meta.spacing_mm != ref.spacing_mm:
            raise ValueError(
                f"{p}: predicts other classes or works at another voxel size than {paths[0]};"
                " an ensemble needs identical targets and spacing_mm"
            )
        if (meta.unet.spatial_dims, meta.slices) != (ref.unet.spatial_dims, ref.slices):
            raise ValueError(
                f"{p}: a {meta.unet.spatial_dims}D model beside the {ref.unet.spatial_dims}D "
                f"model {paths[0]} (or other slicing); an ensemble needs models of one kind: "
                "move one of them to another folder"
            )
    log.info("loaded %d model(s): %s", len(paths), ", ".join(str(p) for p in paths))
    return nets, ref


def tta_flips(mode: str) -> list[tuple[int, ...]]:
    """Spatial axes (0 = left/right in RAS) flipped by each pass of a TTA mode."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
    if mode == "none":
        return [()]
    if mode == "flip":
        return [(), (0,)]
    return [axes for r in range(4) for axes in itertools.combinations(range(3), r)]


#: Pixels per network call of a 2D network on the CPU: oneDNN's bfloat16 U-Nets run fastest when a
#: batch's activations stay small (structure network, 176 x 208 slices, 2 threads: 10.4 ms per
#: slice at 4 slices per call, 17.8 at 16; tissue network, 112 x 144: 4.3 ms at 8, 4.8 at 16).
CPU_SLICE_PIXELS = 2**17


class Predictor:
    """Averaged class probabilities of an ensemble of networks with test-time augmentation.

    Args:
        nets: networks in eval mode mapping (B, 1, *S) to (B, K, *S) logits, on one device.
        meta: their shared metadata (classes, left/right pairs, patch size).
        tta: one of :data:`TTA_MODES`.
        roi_size: sliding-window size (voxels; default ``meta.patch_size``); each side is capped
            at the image's and must be a multiple of the network divisor.
        overlap: window overlap fraction in [0, 1).
        sw_batch_size: windows per network call (3D networks; 2D networks take
            ``meta.slices["batch_size"]`` slices per call, on the CPU no more than
            :data:`CPU_SLICE_PIXELS` pixels).
        views: 2D networks: slice along only the first ``views`` of the model's slicing axes
            (None: all of them; the fast mode takes 1).
        tissue_group: (K,) tissue class (0 background, 1 GM, 2 WM, 3 CSF) of each class, when a
            structure model's segmentation is written as tissue (:func:`tissue_output`): the
            predictor still predicts, and is post-processed as, the model's own classes;
            :attr:`target` is then the tissue preset. None: written as the model's classes.
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        meta: ModelMeta,
        tta: str = "flip",
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        views: int | None = None,
        tissue_group: np.ndarray | None = None,
    ):
        if not nets:
            raise ValueError("at least one network is needed")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.flips = tta_flips(tta)
        if tta == "mirror":
            log.warning(
                "tta=mirror also flips front/back and up/down, which synthseg_lite's models never "
                "see in training (their generator flips left/right only): on the OASIS T1 it "
                "lowered the structure model's mean Dice from 0.822 (tta=flip) to 0.789"
            )
        if not meta.label_table.flip_consistent and any(0 in axes for axes in self.flips):
            # a left/right flip would average left and right classes into 0.5 / 0.5
            log.warning(
                "left/right flip test-time augmentation turned off: the model's target has "
                "left/right classes without declared pairs (declare lr_pairs in the label protocol)"
            )
            self.flips = [axes for axes in self.flips if 0 not in axes]
        self.roi_size = tuple(int(v) for v in (roi_size or meta.patch_size))
        div = meta.unet.divisor
        self.slices = SliceConfig(**meta.slices) if meta.unet.spatial_dims == 2 else None
        if self.slices is None and (
            len(self.roi_size) != 3 or any(v <= 0 or v % div for v in self.roi_size)
        ):
            raise ValueError(
                f"roi_size must be 3 positive multiples of {div}, got {list(self.roi_size)}"
            )
        self.nets, self.meta = list(nets), meta
        self.overlap, self.sw_batch_size = overlap, sw_batch_size
        self.swap = meta.label_table.target.class_swap()
        if views is not None and views < 1:
            raise ValueError(f"views must be >= 1 (or null), got {views}")
        self.axes = list(self.slices.axes[:views]) if self.slices is not None else []
        k = meta.label_table.target.n_classes
        if tissue_group is not None and np.shape(tissue_group) != (k,):
            raise ValueError(f"tissue_group must give one tissue class per class ({k})")
        self.tissue_group = None if tissue_group is None else np.asarray(tissue_group, np.int64)

    @property
    def target(self) -> TargetPreset:
        """The classes written: the model's own, or the tissue preset's (:attr:`tissue_group`)."""
        return self.meta.label_table.target if self.tissue_group is None else TARGET_PRESETS[
            "tissue"]

    @property
    def n_passes(self) -> int:
        """Predictions averaged per image (models x TTA flips)."""
        return len(self.nets) * len(self.flips)

    @property
    def passes_text(self) -> str:
        """What runs per image, for the log: e.g. ``6 network passes (1 model x 2 TTA flips x 3
        slicing axes)``; a 2D network goes over the volume once per slicing axis."""
        axes = len(self.axes) if self.slices is not None else 1
        parts = [f"{len(self.nets)} model(s)", f"{len(self.flips)} TTA flip(s)"]
        if self.slices is not None:
            parts.append(f"{axes} slicing axes")
        return f"{self.n_passes * axes} network passes ({' x '.join(parts)})"

    @property
    def batch_size(self) -> int:
        """Slices (2D networks) or windows (3D networks) per network call."""
        return self.slices.batch_size if self.slices is not None else self.sw_batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if self.slices is not None:
            self.slices.batch_size = int(value)
        else:
            self.sw_batch_size = int(value)

    def to(self, device: torch.device | str) -> Predictor:
        """Move the networks to ``device`` (in place); returns self."""
        self.nets = [net.to(device) for net in self.nets]
        return self

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Predict class probabilities.

        Every pass (model x flip x slicing axis) adds its softmax in place into one preallocated
        float32 (K, X, Y, Z) sum, divided once at the end: the only full-size tensor.

        Args:
            image: (1, 1, X, Y, Z) float tensor on the networks' device, RAS order; for a 3D
                network each side a multiple of the network divisor (a 2D network's slices are
                padded pass by pass).

        Returns:
            (1, K, X, Y, Z) float32 probabilities (sum 1 over K), on the image's device; for a 2D
            network laid out by :func:`_sum_buffer` (an unsliced axis innermost: not contiguous).
        """
        k = self.meta.label_table.target.n_classes
        total = _sum_buffer(k, image.shape[2:], self.axes, image.device)
        swap = torch.as_tensor(self.swap, dtype=torch.long, device=image.device)
        roi = tuple(min(r, s) for r, s in zip(self.roi_size, image.shape[2:]))
        for net in self.nets:
            for axes in self.flips:
                if self.slices is not None:
                    c = self.slices
                    accumulate_slicewise(
                        net, image, total, self.axes, c.context, c.batch_size,
                        self.meta.unet.divisor, flip=axes, swap=swap if 0 in axes else None,
                        max_pixels=CPU_SLICE_PIXELS if image.device.type == "cpu" else None,
                    )
                    continue
                dims = [2 + a for a in axes]
                x = image.flip(dims) if dims else image
                logits = sliding_window_inference(
                    x, roi, self.sw_batch_size, net, overlap=self.overlap, mode="gaussian",
                    sigma_scale=0.125,
                )
                probs = torch.softmax(logits.float(), dim=1)[0]
                if dims:
                    probs = probs.flip([d - 1 for d in dims])
                total.add_(probs.index_select(0, swap) if 0 in axes else probs)
                del logits, probs
        n_axes = len(self.axes) if self.slices is not None else 1
        return total.div_(self.n_passes * n_axes)[None]


def _sum_buffer(
    k: int, shape: Sequence[int], axes: Sequence[int], device: torch.device
) -> torch.Tensor:
    """A zeroed (K, X, Y, Z) float32 sum whose innermost axis in memory is one the slices do not
    cross (the last such axis; the last axis when every axis is sliced or for 3D networks), so
    that a slice's (K, H, W) block is made of long contiguous runs, not scattered values."""
    free = [a for a in range(3) if a not in axes]
    inner = free[-1] if free and axes else 2
    order = [a for a in range(3) if a != inner] + [inner]
    buf = torch.zeros((k, *(shape[a] for a in order)), dtype=torch.float32, device=device)
    return buf.permute(0, *(1 + order.index(a) for a in range(3)))


T = TypeVar("T")


def with_oom_fallback(
    attempt: Callable[[torch.device], T], predictor: Predictor, device: torch.device, name: str = ""
) -> T:
    """Run ``attempt(device)``; on an out-of-memory error retry it with half the network batch
    (down to 1), then on the CPU with the full batch, and say so in one warning line.

    The predictor is moved back to ``device`` with its batch restored afterwards, so the next scan
    starts on the GPU again.

    Args:
        attempt: segments one scan on the given device (the predictor is already there).
        predictor: its networks and batch size are changed for the retries.
        device: where to try first.
        name: the scan, for the warning.

    Raises:
        torch.OutOfMemoryError: out of memory on the CPU with a batch of 1.
    """
    batch, current, tried = predictor.batch_size, device, []
    try:
        while True:
            try:
                result = attempt(current)
                break
            except torch.OutOfMemoryError:
                if current.type == "cuda":
                    torch.cuda.empty_cache()
                if predictor.batch_size > 1:
                    predictor.batch_size = max(1, predictor.batch_size // 2)
                    tried.append(f"batch {predictor.batch_size}")
                elif current.type != "cpu":
                    current = torch.device("cpu")
                    predictor.to(current).batch_size = batch
                    tried.append(f"the CPU (batch {batch})")
                else:
                    raise
    finally:
        if tried:
            predictor.to(device).batch_size = batch
    if tried:
        log.warning(
            "%s: out of memory on %s; retried with %s", name or "scan", device, ", then ".join(tried)
        )
    return result
