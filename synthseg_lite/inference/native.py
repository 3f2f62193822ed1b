"""From the network's grid back to the scan's own grid.

:func:`to_native` puts the probabilities back into the full resampled grid, resamples them (not
the labels) linearly onto the RAS grid of the scan, takes the argmax there and reorients the
result to the on-disk voxel order, so it shares the input's shape and affine (a
:class:`NativePrediction`); :func:`merge_classes` writes a prediction in merged classes (a
structure model's tissue view).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from synthseg_lite.data.preprocess import Geometry, from_ras, resample_window
from synthseg_lite.inference.postprocess import _argmax, _box

__all__ = ["NativePrediction", "merge_classes", "to_native"]


@dataclass
class NativePrediction:
    """A prediction on the scan's grid.

    Attributes:
        labels: (X, Y, Z) int64 class indices, on-disk voxel order.
        labels_ras: (X, Y, Z) int64 class indices in RAS order (for QC figures).
        volumes_mm3: (K,) float64 soft volume of each class: the sum of its probabilities on the
            network grid x that grid's voxel volume (the same on any output grid); background:
            the rest of the output grid's field of view.
        affine: (4, 4) voxel -> world affine of ``labels`` and ``posteriors``: the scan's, or
            that of the grid they were written on (:func:`~synthseg_lite.data.preprocess.
            output_geometry`).
        posteriors: (K, X, Y, Z) float32 probabilities in on-disk order, or None.
        qc: QC scores in [0, 1] (see :func:`qc_scores`), filled by the caller.
        pose: the brain's pose read by :mod:`~synthseg_lite.inference.pose` (``Pose.record``),
            or None (not read), filled by the caller.
        fov_cut: the side where the field of view cuts the segmented brain
            (:func:`~synthseg_lite.inference.pose.cut_side`), ``""`` where it does not, filled
            by the caller.
    """

    labels: np.ndarray
    labels_ras: np.ndarray
    volumes_mm3: np.ndarray
    affine: np.ndarray
    posteriors: np.ndarray | None = None
    qc: dict[str, float] = field(default_factory=dict)
    pose: dict | None = None
    fov_cut: str = ""


def _sums(probs: torch.Tensor) -> np.ndarray:
    """(K,) float64 sum of each class of a (K, ...) tensor, class by class (a float64 copy of
    one class at a time, never of all of them)."""
    return np.array([float(p.sum(dtype=torch.float64)) for p in probs])


def to_native(
    probs: torch.Tensor,
    geom: Geometry,
    keep_posteriors: bool = False,
    chunk: int = 4,
    labels: torch.Tensor | None = None,
    group: np.ndarray | None = None,
    n_groups: int | None = None,
) -> NativePrediction:
    """Map probabilities on the (cropped, padded) network grid back to the scan's grid (or to
    the grid of :func:`~synthseg_lite.data.preprocess.output_geometry`).

    Args:
        probs: (K, *geom.padded_shape) float probabilities.
        geom: from :func:`~synthseg_lite.data.preprocess.preprocess`.
        keep_posteriors: also return the resampled probabilities (K x the scan's size in memory).
        chunk: classes resampled at a time (bounds memory for many-class models).
        labels: (*geom.padded_shape) int64 argmax of ``probs`` when the caller has it (used when
            the network grid is the scan's grid).
        group: (K,) int64 in [0, ``n_groups``): write the prediction in these merged classes
            (:func:`merge_classes`); the posteriors are summed per group as each chunk is
            resampled, so only ``n_groups`` channels of the scan's size are ever held (a
            structure model written as tissue: 4 instead of 32).
        n_groups: merged classes (with ``group``).

    Returns:
        :class:`NativePrediction` (in the classes of ``group`` when given).
    """
    n_classes = probs.shape[0]
    if group is not None and (n_groups is None or np.shape(group) != (n_classes,)):
        raise ValueError(f"group must give each of the {n_classes} classes a merged class, "
                         "and n_groups their number")
    inner = tuple(slice(0, b - a) for a, b in geom.box)  # the network grid without its padding
    crop = probs[(slice(None), *inner)]
    box = tuple(slice(a, b) for a, b in geom.box)
    voxel_mm3 = float(abs(np.linalg.det(geom.ras_affine[:3, :3])))
    # soft volumes: the network's integral on its own grid, whatever grid the labels are written
    # on (resampled probabilities would be point samples at the output's voxel centres: on a
    # 5 mm grid, the cortex 8 % low); background: the rest of the output's field of view
    soft = _sums(crop[1:]) * float(abs(np.linalg.det(geom.grid_affine[:3, :3])))
    volumes = np.concatenate([[np.prod(geom.ras_shape) * voxel_mm3 - soft.sum()], soft])
    if all(r == 1.0 for r in geom.ratios) and not keep_posteriors:
        # the network grid is the RAS grid: the argmax of the crop is the label volume, no
        # K-channel volume of the scan's size is ever made
        best_k = torch.zeros(geom.ras_shape, dtype=torch.long, device=probs.device)
        best_k[box] = _argmax(crop) if labels is None else labels[inner]
        labels = from_ras(best_k, geom.ornt).contiguous()  # on-disk order, C-contiguous
        pred = NativePrediction(
            labels.cpu().numpy(), best_k.cpu().numpy(), volumes, geom.native_affine
        )
        return pred if group is None else merge_classes(pred, group, n_groups)
    # only the output voxels the crop reaches are resampled: elsewhere the full grid is background
    back_ratios = tuple(1.0 / r for r in geom.ratios)
    ras_shape = tuple(geom.ras_shape)

    def window(start: int, stop: int, win: tuple[slice, ...]) -> torch.Tensor:
        """Classes [start, stop) of the full grid over ``win``: the crop, background around."""
        full = torch.zeros(
            (stop - start, *(w.stop - w.start for w in win)), dtype=probs.dtype,
            device=probs.device,
        )
        if start == 0:
            full[0] = 1  # outside the crop: background
        inside = [(max(a, w.start), min(b, w.stop)) for (a, b), w in zip(geom.box, win)]
        if all(lo < hi for lo, hi in inside):  # the part of the crop the window holds
            to = tuple(slice(lo - w.start, hi - w.start) for (lo, hi), w in zip(inside, win))
            of = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inside, geom.box))
            full[(slice(None), *to)] = crop[(slice(start, stop), *of)]
        return full

    def resampled(
        start: int, stop: int, box: tuple[tuple[int, int], ...]
    ) -> tuple[tuple[slice, ...], torch.Tensor]:
        return resample_window(functools.partial(window, start, stop), back_ratios,
                               geom.grid_shape, ras_shape, box)

    posteriors = None
    if not keep_posteriors:
        out_win, best_k = _resampled_argmax(crop, geom.box, resampled)
    else:  # every class everywhere, a chunk at a time, filled in on-disk order: never a copy
        table = None if group is None else torch.as_tensor(np.asarray(group), dtype=torch.long)
        native_shape = tuple(ras_shape[int(geom.ornt[i, 0])] for i in range(3))
        n_out = n_classes if group is None else n_groups
        posteriors = torch.zeros((n_out, *native_shape), dtype=torch.float32)
        best_p = best_k = None
        for start in range(0, n_classes, chunk):
            stop = min(start + chunk, n_classes)
            out_win, ras = resampled(start, stop, geom.box)
            p, k = ras.max(0)
            if best_p is None:
                best_p, best_k = p, k.add_(start)
            else:
                better = p > best_p
                best_p = torch.where(better, p, best_p)
                best_k = torch.where(better, k.add_(start), best_k)
            post = torch.zeros((stop - start, *ras_shape), dtype=ras.dtype, device=ras.device)
            if start == 0:
                post[0] = 1
            post[(slice(None), *out_win)] = ras
            native = from_ras(post, geom.ornt).float().cpu()
            if table is None:
                posteriors[start:stop] = native
            else:
                posteriors.index_add_(0, table[start:stop], native)
            del post, native, ras, p, k
    labels_ras = torch.zeros(ras_shape, dtype=torch.long, device=probs.device)
    labels_ras[out_win] = best_k
    labels = from_ras(labels_ras, geom.ornt).contiguous()
    pred = NativePrediction(labels.cpu().numpy(), labels_ras.cpu().numpy(), volumes,
                            geom.native_affine)
    if group is not None:
        pred = merge_classes(pred, group, n_groups)
    return replace(pred, posteriors=None if posteriors is None else posteriors.numpy())


def _resampled_argmax(
    crop: torch.Tensor,
    box: tuple[tuple[int, int], ...],
    resampled: Callable[..., tuple[tuple[slice, ...], torch.Tensor]],
) -> tuple[tuple[slice, ...], torch.Tensor]:
    """The argmax of the K classes of ``crop`` resampled back (background 1 around the crop),
    without resampling every class everywhere.

    Linear interpolation never exceeds its inputs, and the largest of K probabilities that sum
    to 1 is at least 1/K: so a class below 1/K at every input voxel an output voxel reads cannot
    be that voxel's argmax. Each class but the background is resampled only over the output
    voxels that read its voxels at or above half of 1/K (a margin for sums a little under 1):
    the labels of resampling all K classes everywhere (``keep_posteriors``'s), ties to the
    lower class as there, at the cost of the structures' own boxes (a structure model on a
    0.7 mm scan: 32 whole-volume classes cost 4-5).

    Args:
        crop: (K, *sizes) probabilities on the network grid's crop.
        box: (3, 2) where the crop lies on the network grid.
        resampled: ``(start, stop, box) -> (output window, (stop - start, *window sizes))``,
            classes [start, stop) resampled over the output voxels reading ``box``.

    Returns:
        (output window, its (*sizes) int64 argmax).
    """
    out_win, ras = resampled(0, 1, box)
    best_p = ras[0]
    best_k = torch.zeros(best_p.shape, dtype=torch.long, device=best_p.device)
    floor = 0.5 / crop.shape[0]
    for k in range(1, crop.shape[0]):
        reach = _box(crop[k] >= floor)
        if reach is None:
            continue
        win, ras = resampled(k, k + 1, tuple((a + r.start, a + r.stop)
                                             for (a, _), r in zip(box, reach)))
        at = tuple(slice(w.start - o.start, w.stop - o.start) for w, o in zip(win, out_win))
        better = ras[0] > best_p[at]
        best_p[at] = torch.where(better, ras[0], best_p[at])
        best_k[at] = best_k[at].masked_fill(better, k)
    return out_win, best_k


def merge_classes(pred: NativePrediction, group: np.ndarray, n: int) -> NativePrediction:
    """The prediction with its classes merged into ``n`` (e.g. structures into background, GM,
    WM, CSF: :func:`~synthseg_lite.labels.lut.tissue_view`): class k becomes ``group[k]``.

    Labels are merged class by class (the merged label is the group of the argmax, as the tissue
    view of a structure segmentation is written); probabilities and soft volumes are summed
    within each group. QC scores and the pose are kept (they score the classes predicted).
    :func:`to_native` with ``group`` gives the same without ever holding the K unmerged
    probability channels at the scan's size.

    Args:
        pred: a prediction over K classes.
        group: (K,) int64 in [0, n): the merged class of each class.
        n: merged classes.
    """
    group = np.asarray(group, dtype=np.int64)
    table = torch.from_numpy(group)
    posteriors = None
    if pred.posteriors is not None:
        post = torch.from_numpy(pred.posteriors)
        merged = torch.zeros((n, *post.shape[1:]), dtype=post.dtype)
        merged.index_add_(0, table, post)
        posteriors = merged.numpy()
    return replace(
        pred,
        labels=table[torch.from_numpy(pred.labels)].numpy(),
        labels_ras=table[torch.from_numpy(pred.labels_ras)].numpy(),
        volumes_mm3=np.bincount(group, weights=pred.volumes_mm3, minlength=n),
        posteriors=posteriors,
    )
