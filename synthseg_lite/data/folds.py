"""Cross-validation folds of the label maps: k-fold splits stored once in ``splits.json`` (nnU-Net's
``splits_final.json`` layout) and the training / validation ids of a fold."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from synthseg_lite.io import atomic_write

__all__ = ["fold_ids", "kfold_splits", "load_or_create_splits"]

log = logging.getLogger(__name__)


def kfold_splits(
    ids: Sequence[str], n_folds: int = 5, seed: int = 12345
) -> list[dict[str, list[str]]]:
    """nnU-Net's split: ``KFold(n_folds, shuffle=True, random_state=seed)`` over the sorted ids.

    Reimplemented without scikit-learn, with the same result: the indices of the sorted ids are
    shuffled by ``np.random.RandomState(seed)`` and cut into contiguous folds, the first
    ``n % n_folds`` folds one larger.

    Raises:
        ValueError: fewer ids than folds, or fewer than 2 folds.
    """
    keys = sorted(ids)
    if n_folds < 2 or len(keys) < n_folds:
        raise ValueError(
            f"{n_folds}-fold cross-validation needs at least {max(n_folds, 2)} label maps "
            f"and n_folds >= 2, got {len(keys)} maps; use fold=all or fewer data.n_folds"
        )
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(keys) // n_folds)
    sizes[: len(keys) % n_folds] += 1
    splits, start = [], 0
    for size in sizes:
        val = order[start : start + size]
        train = np.setdiff1d(np.arange(len(keys)), val)  # sorted, as KFold returns them
        splits.append({"train": [keys[i] for i in train], "val": [keys[i] for i in val]})
        start += size
    return splits


def load_or_create_splits(
    path: str | Path, ids: Sequence[str], n_folds: int = 5, seed: int = 12345, write: bool = True
) -> list[dict[str, list[str]]]:
    """Read ``path`` if it exists (any number of folds), else compute :func:`kfold_splits` and
    write it (atomically, when ``write``).

    Raises:
        ValueError: an existing file that is not a list of train/val splits over known ids.
    """
    path = Path(path)
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
            known = set(ids)
            bad = sorted({k for s in splits for k in (*s["train"], *s["val"])} - known)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: not a splits file (list of {{'train': [...], 'val': [...]}})"
            ) from exc
        if bad:
            raise ValueError(
                f"{path}: names {bad[:5]} are not among the label maps; "
                "delete the file to recompute the splits"
            )
        log.info("using the folds in %s", path)
        return splits
    splits = kfold_splits(ids, n_folds, seed)
    if write:
        text = json.dumps(splits, indent=2)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        log.info("wrote %d-fold splits to %s", n_folds, path)
    return splits


def fold_ids(
    splits: Sequence[Mapping[str, Sequence[str]]], fold: int | str, ids: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of ``fold`` (an index, or ``"all"``: train and validate on all).

    Raises:
        ValueError: unknown fold.
    """
    if str(fold) == "all":
        return list(ids), list(ids)
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold must be 0..{len(splits) - 1} or 'all', got {fold!r}") from None
    if not 0 <= k < len(splits):
        raise ValueError(f"fold must be 0..{len(splits) - 1} or 'all', got {fold!r}")
    return list(splits[k]["train"]), list(splits[k]["val"])
