"""What a training run starts from: a checkpoint to resume (the same run, its synthetic stream
and schedule) or a model file whose network starts a new run (``init_weights``, fine-tuning)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from synthseg_lite.labels.presets import hemispheres_merged
from synthseg_lite.model.artifact import load_model
from synthseg_lite.model.widen import stage_widths, widen_state
from synthseg_lite.safety import load_torch_file

__all__ = ["check_resume_compatible", "config_differences", "init_weights", "read_resume"]

log = logging.getLogger(__name__)


def read_resume(path: str | Path) -> dict[str, Any]:
    """The training-relevant contents of a checkpoint: ``seed``, ``global_step``, ``config``.

    Raises:
        ValueError: missing or foreign file.
    """
    path = Path(path)
    try:  # weights_only: a crafted checkpoint cannot run code
        ckpt = load_torch_file(path, "cpu", "checkpoint")
    except ValueError as exc:
        raise ValueError(f"resume={exc}") from exc
    try:
        hp = ckpt["hyper_parameters"]
        return {
            "seed": int(hp["seed"]),
            "global_step": int(ckpt.get("global_step", 0)),
            "config": dict(hp.get("config") or {}),
            "shapes": {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()},
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"resume={path}: not a synthseg_lite training checkpoint (no {exc})"
        ) from exc


def check_resume_compatible(module: torch.nn.Module, info: Mapping[str, Any], path: str) -> None:
    """Fail before any training when the checkpoint's weights do not fit the configured network.

    Args:
        module: the LightningModule built from the current configuration.
        info: :func:`read_resume`'s result (``shapes``: state-dict key -> tensor shape).
        path: the checkpoint, for the message.

    Raises:
        ValueError: missing, unexpected or differently shaped weights (the first one is named).
    """
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = dict(info.get("shapes") or {})
    missing = sorted(set(have) - set(want))
    extra = sorted(set(want) - set(have))
    shaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if missing or extra or shaped:
        what = (
            f"{shaped[0]} is {list(want[shaped[0]])} there, {list(have[shaped[0]])} here"
            if shaped
            else f"weights {'missing' if missing else 'unexpected'}: {(missing or extra)[0]}"
        )
        raise ValueError(
            f"resume={path}: checkpoint from an incompatible configuration ({what}; "
            f"{len(missing) + len(extra) + len(shaped)} mismatch(es)); resume with the run's own "
            "settings (model.*, data.target)"
        )


def init_weights(module: torch.nn.Module, path: str | Path, seed: int = 0) -> dict[str, Any]:
    """Start ``module.net`` from the network weights of a model file (fine-tuning).

    Two changes of network start exactly as the file's network (same logits): a wider slice
    context (``model.slices.context``, the new outer slices at weight 0) and wider stages
    (``model.unet.base_features`` / ``max_features``: Net2WiderNet,
    :mod:`synthseg_lite.model.widen`). A third starts near it: the file's classes with each
    left/right pair merged (``data.target=<its target>_hemispheres``, FastSurfer's sagittal
    view), whose output layer averages each pair's two rows (:func:`_merge_pairs`).

    Args:
        module: the LightningModule built from the current configuration (``.net``,
            ``.table``).
        path: a ``.pt`` model file or a training ``.ckpt`` (read with ``weights_only=True``).
        seed: seeds which channels a wider network's new channels copy.

    Returns:
        The file's recorded ``extra`` metadata (step, config), for the run's log.

    Raises:
        ValueError: unreadable file, another topology, or other target classes.
    """
    try:
        net, meta = load_model(path)
    except ValueError as exc:
        raise ValueError(f"init_weights={exc}") from exc
    want = list(module.table.target.names)
    state, target = net.state_dict(), module.net.state_dict()
    if list(meta.label_table.target.names) != want:
        merged, index = hemispheres_merged(meta.label_table.target)
        if merged != module.table.target:
            raise ValueError(
                f"init_weights={path}: predicts {list(meta.label_table.target.names)[:4]}..., the "
                f"configured target is {want[:4]}... (data.target must match the model's, or be "
                "it with the hemispheres merged)"
            )
        try:
            state = _merge_pairs(state, torch.as_tensor(index))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"init_weights={path}: cannot merge the classes ({exc})") from exc
        log.info(
            "init_weights: %d classes -> %d (each left/right pair one class: its output row "
            "the mean of the pair's)",
            len(index),
            len(merged.names),
        )
    have = {k: tuple(v.shape) for k, v in target.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if have != got and set(have) == set(got) and stage_widths(got) != stage_widths(have):
        try:
            state = _widen_features(state, target, seed)
        except ValueError as exc:
            raise ValueError(f"init_weights={path}: {exc}") from exc
        log.info(
            "init_weights: stage features %s -> %s (Net2WiderNet: the new channels copy "
            "existing ones, so the network starts as the file's)",
            stage_widths(got),
            stage_widths(have),
        )
        got = {k: tuple(v.shape) for k, v in state.items()}
    if have != got:
        bad = sorted(k for k in set(have) | set(got) if have.get(k) != got.get(k))
        wide = _widen_context(state, have, bad, int(meta.slices.get("context", 0)))
        if wide is None:
            raise ValueError(
                f"init_weights={path}: another network ({bad[0]} is {got.get(bad[0])} there, "
                f"{have.get(bad[0])} here); set model.unet and model.slices as the model was "
                "trained"
            )
        state = wide
        log.info(
            "init_weights: slice context %d -> %d (%s: the new outer slices start at weight 0, "
            "so the network starts as the file's)",
            got[bad[0]][1],
            have[bad[0]][1],
            bad[0],
        )
    module.net.load_state_dict(state)
    return dict(meta.extra)


def _merge_pairs(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """A network's weights with its classes merged by ``index`` ((K,) int64, merged class of each
    class): each merged class's row of the output layer (1x1 convolution weight and bias) is the
    mean of its classes' rows, plus log(count) on the bias, so that where the classes' logits
    agree the merged logit is their log-sum-exp. The rest of the network is unchanged."""
    count = torch.bincount(index)
    out = dict(state)
    for key in ("output_block.conv.conv.weight", "output_block.conv.conv.bias"):
        w = state[key]
        if w.shape[0] != index.numel():
            raise ValueError(f"{key} has {w.shape[0]} classes, the file's target {index.numel()}")
        sums = w.new_zeros((len(count), *w.shape[1:])).index_add_(0, index, w)
        out[key] = sums / count.view(-1, *[1] * (w.ndim - 1)).to(w.dtype)
        if w.ndim == 1:
            out[key] = out[key] + count.to(w.dtype).log()
    return out


def _widen_features(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """:func:`widen_state` that keeps the file's slice context (the input convolution, listed
    twice by DynUNet), so that :func:`_widen_context` can widen that afterwards."""
    first = ("input_block.conv1.conv.weight", "skip_layers.downsample.conv1.conv.weight")
    like = {k: v[:, : state[k].shape[1]] if k in first else v for k, v in target.items()}
    return widen_state(state, like, torch.Generator().manual_seed(seed))


def _widen_context(
    state: dict[str, torch.Tensor],
    have: Mapping[str, tuple[int, ...]],
    bad: list[str],
    context: int,
) -> dict[str, torch.Tensor] | None:
    """A 2.5D network's weights for a wider slice context, or None where that is not the change.

    The only difference allowed is the input channels of the first convolution (slices given as
    channels, ``model.slices.context``; MONAI's DynUNet lists that module under two names), from
    the file's odd ``context`` to a larger odd number. The file's weights go to the centre
    channels and the new outer slices get weight 0: the widened network computes exactly what the
    file's does, and training then learns what the outer slices add (FastSurfer's 7-slice context
    from a 3-slice network).
    """
    if not bad or context < 1 or context % 2 == 0:
        return None
    out = dict(state)
    for key in bad:
        w, want = state.get(key), have.get(key)
        if w is None or want is None or w.ndim != len(want) or w.ndim < 3:
            return None
        if w.shape[1] != context or w.shape[0] != want[0] or tuple(w.shape[2:]) != want[2:]:
            return None
        extra = want[1] - context
        if extra <= 0 or extra % 2:
            return None
        out[key] = w.new_zeros(want)
        out[key][:, extra // 2 : extra // 2 + context] = w
    return out


def config_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    sections: tuple[str, ...] = ("data", "synth", "model", "seed", "fold"),
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (within ``sections``)."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")

    for s in sections:
        if s in old or s in new:
            walk(old.get(s), new.get(s), s)
    return diffs
