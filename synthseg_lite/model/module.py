"""The LightningModule: synthesis on the training device, U-Net, loss, validation and TensorBoard.

Batches of label maps arrive from :mod:`synthseg_lite.data`;
:meth:`SynthSegModule.on_after_batch_transfer` turns them into (image, target) pairs with
:class:`~synthseg_lite.synth.SynthGenerator` on the device they were moved to, with a
``torch.Generator`` seeded from (seed, step, rank): training batch ``s`` of rank ``r`` is the same
in every run, interrupted or not. Validation batches are seeded from their index, so validation
curves are comparable across epochs and runs. Real scans (batches that already hold an ``image``)
pass through unchanged and are segmented with a sliding window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from monai.inferers import sliding_window_inference
from torch.utils.tensorboard.summary import hparams as hparams_summary

from synthseg_lite.labels import LabelTable
from synthseg_lite.model.loss import LossConfig, SegLoss
from synthseg_lite.model.overlay import overlay_grid, overlay_slices
from synthseg_lite.model.real_validation import (
    RealValidation,
    confusion,
    dice_from_confusion,
    tissue_lut,
)
from synthseg_lite.model.slicing import (
    SliceConfig,
    class_presence,
    extract_slices,
    predict_slicewise,
    sample_slices,
)
from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.labels.lut import class_colors
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator

__all__ = [
    "ModelConfig",
    "SynthSegModule",
    "confusion",
    "overlay_grid",
    "overlay_slices",
    "tissue_lut",
]

log = logging.getLogger(__name__)

@dataclass
class ModelConfig:
    """The ``model`` config group.

    Attributes:
        unet: network topology (:class:`UNetConfig`).
        loss: loss settings.
        optimizer: Hydra ``_partial_`` optimizer (instantiated by ``train.py``).
        scheduler: Hydra ``_partial_`` LR scheduler taking ``total_iters`` (None: constant LR).
        scheduler_interval: step the scheduler every ``step`` or ``epoch``.
        image_every_n_steps: TensorBoard image grid period (0: never).
        val_seed: seed of the synthetic validation batches.
        sw_overlap: sliding-window overlap for real validation scans.
        sw_batch_size: windows per forward pass for real validation scans.
        slices: how a 2D network (``unet.spatial_dims=2``) is fed slices of the synthetic volumes
            and segments volumes (ignored by 3D networks).
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: Any = None
    scheduler: Any = None
    scheduler_interval: str = "step"
    image_every_n_steps: int = 250
    val_seed: int = 1
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    slices: SliceConfig = field(default_factory=SliceConfig)


#: ``worker`` id of the generator that picks training slices (apart from DataLoader workers).
SLICE_STREAM = 1_000_003


class SynthSegModule(pl.LightningModule):
    """Generator + U-Net + loss.

    Args:
        cfg: model settings (``cfg.unet`` may be a :class:`UNetConfig` or its schema mirror).
        table: label table (generation labels, target classes).
        synth: generator settings (its ``patch_shape`` and ``voxel_mm`` are the training patch).
        optimizer: ``optimizer(params) -> torch.optim.Optimizer``.
        scheduler: ``scheduler(optimizer, total_iters=...) -> LRScheduler`` or None.
        seed: seed of the synthetic training stream.
        real_val_names: names of the real validation sets (dataloaders 1, 2, ...).
        config: the resolved run configuration, stored in checkpoints.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        table: LabelTable,
        synth: SynthConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        seed: int = 0,
        real_val_names: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        unet = cfg.unet if isinstance(cfg.unet, UNetConfig) else UNetConfig(**dict(cfg.unet))
        slices = cfg.slices if isinstance(cfg.slices, SliceConfig) else SliceConfig(**cfg.slices)
        divisor = unet.divisor
        if any(int(p) % divisor or int(p) < 2 * divisor for p in synth.patch_shape):
            raise ValueError(
                f"synth.patch_shape {list(synth.patch_shape)} must be a multiple of "
                f"2**(n_stages-1) = {divisor}, and at least {2 * divisor}, per axis"
            )
        if unet.spatial_dims == 2:
            if len(slices.axes) > 1 and len(set(synth.patch_shape)) > 1:
                raise ValueError(
                    f"2D training across axes {slices.axes} needs a cubic synth.patch_shape, "
                    f"got {list(synth.patch_shape)}"
                )
            if unet.in_channels != slices.context:
                raise ValueError(
                    f"model.unet.in_channels={unet.in_channels} must equal "
                    f"model.slices.context={slices.context} (slices given as channels)"
                )
        elif unet.spatial_dims != 3:
            raise ValueError(f"model.unet.spatial_dims must be 2 or 3, got {unet.spatial_dims}")
        self.slices = slices
        self.cfg, self.unet_cfg, self.table, self.synth_cfg = cfg, unet, table, synth
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.seed, self.real_val_names = int(seed), list(real_val_names)
        self.class_names = list(table.target.names)
        self.save_hyperparameters(
            {
                "unet": unet.to_dict(),
                "label_table": table.to_dict(),
                "spacing_mm": float(synth.voxel_mm),
                "patch_size": [int(p) for p in synth.patch_shape],
                "slices": asdict(slices) if unet.spatial_dims == 2 else {},
                "seed": self.seed,
                "config": dict(config or {}),
            },
            logger=False,
        )
        self.generator = SynthGenerator(synth, table)
        self.net = build_unet(unet, table.target.n_classes)
        self.loss_fn = SegLoss(cfg.loss, unet.n_stages)
        self.real_val = RealValidation(self.real_val_names, table.target, float(synth.voxel_mm))
        colors = np.asarray(class_colors(table.target.n_classes))[:, :3]
        self.register_buffer("colors", torch.tensor(colors, dtype=torch.float32), persistent=False)
        self._params: dict[str, list[torch.Tensor]] = {}
        self._stream_checked = False
        self._cache: tuple[int, dict[str, Any]] | None = None  # (group, synthesised volumes)

    # ----------------------------------------------------------------------------- synthesis
    def synthesize(self, labels: torch.Tensor, seed: int, step: int, rank: int) -> dict[str, Any]:
        """(B, 1, X, Y, Z) uint8 maps -> {"image", "target", "params"} on the maps' device."""
        g = make_generator(labels.device, seed, step, rank)
        out = self.generator(labels, g)
        return {"image": out.image, "target": out.target, "params": out.params, "step": step}

    def on_before_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        for key in ("step", "val_index"):  # plain ints: no device round trip to read them back
            if key in batch:
                batch[key] = int(batch[key])
        return batch

    def to_slices(self, out: dict[str, Any], seed: int, step: int, rank: int) -> dict[str, Any]:
        """For a 2D network: replace the volumes of ``out`` by ``slices.per_step`` slices (image
        (n, context, H, W), target (n, H, W)) picked with a generator seeded from (seed, step,
        rank); 3D networks get ``out`` unchanged."""
        if self.unet_cfg.spatial_dims == 3:
            return out
        c = self.slices
        g = make_generator(out["target"].device, seed, step, rank, SLICE_STREAM)
        if c.class_prob > 0 and "presence" not in out:  # once per synthesis (kept in the cache)
            out["presence"] = class_presence(out["target"], c.axes, self.table.target.n_classes)
        index = sample_slices(
            out["target"], c.per_step, c.axes, c.min_foreground, g, c.class_prob, out.get("presence")
        )
        image, target = extract_slices(out["image"], out["target"], index, c.axes, c.context)
        return {**out, "image": image, "target": target}

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if "val_index" in batch:  # fixed validation stream, rank-independent
            seed, i = self.cfg.val_seed, int(batch["val_index"])
            return self.to_slices(self.synthesize(batch["labels"], seed, i, 0), seed, i, 0)
        if "step" not in batch:
            return batch  # real scans pass through
        step = int(batch["step"])
        group = int(batch.get("group", step))
        expected = self.global_step * self.trainer.accumulate_grad_batches
        if not self._stream_checked and step != expected:
            log.warning(
                "synthetic stream out of step: batch %d at trainer step %d (a resumed run will "
                "not repeat the uninterrupted one exactly)",
                step,
                expected,
            )
        self._stream_checked = True
        rank = self.global_rank
        if "image" in batch:  # a fixed, pre-generated training set (data.fixed_set)
            out = {"image": batch["image"], "target": batch["target"], "params": {}, "step": step}
        elif self._cache is not None and self._cache[0] == group:  # volumes shared by the group
            out = {**self._cache[1], "params": {}, "step": step}
        else:
            out = self.synthesize(batch["labels"], self.seed, group, rank)
            self._cache = (group, out)
        return self.to_slices(out, self.seed, step, rank)

    # ------------------------------------------------------------------------------- training
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        loss = self.loss_fn(logits, batch["target"])
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log(
            "train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True
        )
        for k, v in batch["params"].items():
            self._params.setdefault(k, []).append(v.detach().float())
        every = self.cfg.image_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            main = logits[:, 0] if logits.dim() == batch["image"].dim() + 1 else logits
            if self.unet_cfg.spatial_dims == 2:  # centre channel of the first slices
                c = batch["image"].shape[1] // 2
                view = (batch["image"][:, c], batch["target"], main.argmax(1))
            else:  # the first volume
                view = (batch["image"][0, 0], batch["target"][0], main[0].argmax(0))
            self._log_image("train/synthetic", *view)
        return loss

    def _tensorboard(self):
        return next(
            (lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None
        )

    def _log_image(
        self, tag: str, image: torch.Tensor, target: torch.Tensor, pred: torch.Tensor
    ) -> None:
        """image/target/pred: one (X, Y, Z) volume, or (N, H, W) 2D slices."""
        tb = self._tensorboard()
        if tb is not None:
            draw = overlay_grid if self.unet_cfg.spatial_dims == 3 else overlay_slices
            tb.add_image(tag, draw(image.detach(), target, pred, self.colors), self.global_step)

    def on_train_epoch_end(self) -> None:
        tb = self._tensorboard()
        if tb is not None and self.trainer.is_global_zero:
            for k, vals in self._params.items():
                tb.add_histogram(f"synth/{k}", torch.cat(vals).cpu(), self.global_step)
        self._params = {}

    def on_fit_start(self) -> None:
        tb = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is not None and self.trainer.is_global_zero:
            flat = _flatten(self.hparams.get("config") or {"seed": self.seed})
            tb.log_hyperparams(flat)  # hparams.yaml
            # TensorBoard's HPARAMS tab, tied to the val/dice curve (no placeholder value logged)
            writer = tb.experiment._get_file_writer()
            for summary in hparams_summary(flat, {"val/dice": math.nan}):
                writer.add_summary(summary)

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_fn(params=self.net.parameters())
        if self.scheduler_fn is None:
            return opt
        epochs, steps = _schedule_length(self.trainer)
        total = steps if self.cfg.scheduler_interval == "step" else epochs
        sched = self.scheduler_fn(opt, total_iters=total)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": self.cfg.scheduler_interval},
        }

    # ----------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        k = self.table.target.n_classes
        self._val_cm = torch.zeros(k, k, dtype=torch.long, device=self.device)
        self.real_val.reset(self.device)

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == 0:
            logits = self.net(batch["image"])
            loss = self.loss_fn(logits, batch["target"])
            self.log(
                "val/loss",
                loss,
                on_epoch=True,
                batch_size=batch["image"].shape[0],
                add_dataloader_idx=False,
                sync_dist=True,
            )
            self._val_cm += confusion(logits.argmax(1), batch["target"], self._val_cm.shape[0])
            return
        draw = batch_idx == 0 and self.trainer.is_global_zero
        self.real_val.update(dataloader_idx - 1, batch, self.predict_volume(batch["image"]), draw)

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 1, X, Y, Z) real scan -> (1, K, X, Y, Z) class scores (slice-wise for 2D networks,
        sliding window for 3D ones)."""
        if self.unet_cfg.spatial_dims == 2:  # probabilities (same argmax as logits)
            c = self.slices
            return predict_slicewise(
                self.net, image, c.axes, c.context, c.batch_size, self.unet_cfg.divisor
            )
        return sliding_window_inference(
            image,
            tuple(self.synth_cfg.patch_shape),
            self.cfg.sw_batch_size,
            self.net,
            overlap=self.cfg.sw_overlap,
            mode="gaussian",
        )

    def on_validation_epoch_end(self) -> None:
        reduce = self.trainer.strategy.reduce
        dice = dice_from_confusion(reduce(self._val_cm, reduce_op="sum"))
        for name, d in zip(self.class_names[1:], dice[1:]):
            self.log(f"val/dice_{name}", float(d), sync_dist=True)
        self.log("val/dice", float(torch.nanmean(dice[1:])), prog_bar=True, sync_dist=True)
        if not self.real_val_names:
            return
        tb = self._tensorboard() if self.trainer.is_global_zero else None
        for name, res in zip(
            self.real_val_names, self.real_val.results(lambda t: reduce(t, reduce_op="sum"))
        ):
            for key, value in res.scalars.items():
                self.log(key, value, sync_dist=True)
            if tb is not None and res.table is not None:
                tb.add_text(f"val_real/{name}/structures", res.table, self.global_step)
            if tb is not None and res.overlay is not None:
                tb.add_image(f"val_real/{name}/overlay", res.overlay, self.global_step)


def _schedule_length(trainer: pl.Trainer) -> tuple[int, int]:
    """(epochs, optimizer steps) of a run: ``max_steps`` or ``max_epochs x limit_train_batches``.

    Deliberately not ``trainer.estimated_stepping_batches``: it would create the training iterator
    before a checkpoint is restored, and the synthetic stream would restart at step 0 on resume.
    """
    limit, acc = trainer.limit_train_batches, trainer.accumulate_grad_batches
    per_epoch = limit // acc if isinstance(limit, int) and limit > 0 else None
    candidates = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
    if per_epoch and trainer.max_epochs and trainer.max_epochs > 0:
        candidates.append(trainer.max_epochs * per_epoch)
    if not candidates:
        raise ValueError(
            "the synthetic stream is endless: set trainer.limit_train_batches (iterations "
            "per epoch, an int) and trainer.max_epochs, or trainer.max_steps"
        )
    steps = max(1, min(candidates))
    return max(
        1, math.ceil(steps / per_epoch) if per_epoch else int(trainer.max_epochs or 1)
    ), steps


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a/b/c": scalar}; lists and None become strings (TensorBoard hparams)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def register_configs() -> None:
    """Register :class:`ModelConfig` as ``model/schema`` in Hydra's ConfigStore (``conf/model/*.yaml``
    start from it, so the dataclass defaults are the only defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="model", name="schema", node=ModelConfig)


register_configs()  # on import: the YAML presets start from the schema
