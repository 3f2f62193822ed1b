"""From network probabilities back to a segmentation on the scan's own grid.

* :func:`keep_largest_component` (SynthSeg / nnU-Net post-processing) works on the network grid:
  voxels outside the largest connected component of the brain (argmax != background) become
  background; with ``topology`` (SynthSeg's rule) each group of classes that must form one piece
  (a topological class) keeps only the largest component of its voxels above probability 0.25,
  with ``labels`` each class keeps the largest component of its argmax voxels; a class's
  probability outside its component goes to the other classes. ``topology`` also gives white
  matter what it encloses of grey matter and background (:func:`enclosed_by`): a lesion inside
  the white matter, as dark as grey matter, is white matter, as FreeSurfer and SynthSeg count it.
* :func:`to_native` puts the probabilities back into the full resampled grid, resamples them (not
  the labels) linearly onto the RAS grid of the scan, takes the argmax there and reorients the
  result to the on-disk voxel order, so it shares the input's shape and affine.
* :func:`qc_scores` rates a prediction from its own probabilities (automated QC, see the README's
  "Outputs").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage as ndi

from synthseg_lite.data.preprocess import Geometry, from_ras, resample_window

__all__ = [
    "KEEP_LARGEST",
    "TOPOLOGY_THRESHOLD",
    "NativePrediction",
    "enclosed_by",
    "keep_largest_component",
    "merge_classes",
    "qc_scores",
    "to_native",
]

#: Allowed values of ``keep_largest``.
KEEP_LARGEST = ("none", "brain", "labels", "topology")

#: A voxel belongs to a topological class's mask above this probability (SynthSeg's 0.25).
TOPOLOGY_THRESHOLD = 0.25


def _box(mask: torch.Tensor) -> tuple[slice, slice, slice] | None:
    """Bounding box of the True voxels of a 3D bool tensor (None when there are none), in two
    passes, the first over the innermost axis (3x faster than one reduction per axis)."""
    ab = mask.any(-1)
    a = torch.nonzero(ab.any(1))
    if not len(a):
        return None
    b, c = torch.nonzero(ab.any(0)), torch.nonzero(mask.any(0).any(0))
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in (a, b, c))


def _largest(mask: torch.Tensor, back: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Largest 26-connected component of a 3D bool tensor (empty stays empty).

    Components are searched in the mask's bounding box only (a small structure's box is a
    few thousand voxels of a 5 M-voxel volume) and numbered in the axis order of
    ``mask.permute(back)`` (X, Y, Z for a view in memory order), so that a tie between equally
    large components is broken as on a contiguous (X, Y, Z) volume."""
    box = _box(mask)
    if box is None:
        return mask
    order = [list(back).index(d) for d in range(3)]
    out = torch.zeros_like(mask)
    found = get_largest_connected_component_mask(mask[box].permute(*back)[None], connectivity=3)
    out[box] = found[0].bool().permute(*order)
    return out


def enclosed_by(mask: torch.Tensor) -> torch.Tensor:
    """Voxels enclosed by a 3D bool mask: the components of its complement (26-connected, so a
    shell must be face-tight to enclose) that do not reach the border of the mask's bounding box
    padded by one voxel. Computed on the CPU (scipy) in that box; returned on ``mask``'s device.
    """
    box = _box(mask)
    out = torch.zeros_like(mask)
    if box is None:
        return out
    inside = np.pad(~mask[box].cpu().numpy(), 1, constant_values=True)
    comp, _ = ndi.label(inside, structure=np.ones((3, 3, 3), bool))
    outer = np.unique(np.concatenate([comp[0].ravel(), comp[-1].ravel(), comp[:, 0].ravel(),
                                      comp[:, -1].ravel(), comp[:, :, 0].ravel(),
                                      comp[:, :, -1].ravel()]))
    holes = (comp > 0) & ~np.isin(comp, outer)
    out[box] = torch.from_numpy(np.ascontiguousarray(holes[1:-1, 1:-1, 1:-1])).to(mask.device)
    return out


def _memory_order(probs: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """A view of (K, X, Y, Z) ``probs`` with its spatial dims in memory order (the predictor's
    sum keeps an unsliced axis innermost), the spatial permutation that made it, and the one
    that takes a spatial result of the view back to (X, Y, Z). Reductions over K run on the
    view at full memory speed."""
    order = sorted(range(3), key=lambda d: -probs.stride(1 + d))
    back = [order.index(d) for d in range(3)]
    return probs.permute(0, *(1 + d for d in order)), order, back


def _argmax(probs: torch.Tensor) -> torch.Tensor:
    """(K, ...) -> (...) int64 index of the first largest class: ``max(0)``'s indices equal
    ``argmax(0)``'s and come from a vectorised kernel (5x faster on 32 x 5.6 M voxels)."""
    return probs.max(0).indices


def keep_largest_component(
    probs: torch.Tensor,
    mode: str = "brain",
    inplace: bool = False,
    return_labels: bool = False,
    groups: Sequence[Sequence[int]] = (),
    enclosures: Sequence[tuple[int, Sequence[int]]] = (),
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Connected-component clean-up of class probabilities.

    Args:
        probs: (K, X, Y, Z) float probabilities (sum 1 over K); class 0 is background.
        mode: ``"none"``; ``"brain"``: keep the largest component of the foreground;
            ``"labels"``: ``"brain"``, then each class keeps the largest component of its
            argmax voxels; ``"topology"``: ``"brain"``, then each group of ``groups`` keeps
            the largest component of the voxels where one of its classes has probability
            above :data:`TOPOLOGY_THRESHOLD`, and its classes' probabilities are zero outside
            it (SynthSeg); with no groups and no enclosures it is ``"brain"``.
        inplace: modify ``probs`` itself (no second K-channel volume in memory).
        return_labels: also return the argmax of the cleaned probabilities, (X, Y, Z) int64,
            so that callers need no second pass over the K channels.
        groups: class indices (>= 1) of each topological class, for ``"topology"``
            (:func:`synthseg_lite.inference.segment.topology_groups`).
        enclosures: for ``"topology"``, after the groups: ``(host, classes)`` pairs; voxels
            enclosed by the host's argmax voxels (:func:`enclosed_by`) whose argmax is one of
            ``classes`` give the host those classes' probability (white matter encloses no grey
            matter and no background: what it encloses of them is a lesion;
            :func:`synthseg_lite.inference.segment.white_matter_enclosures`).

    Returns:
        (K, X, Y, Z) probabilities (``probs`` itself when ``inplace`` or ``mode == "none"``), and
        with ``return_labels`` their argmax.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in KEEP_LARGEST:
        raise ValueError(f"keep_largest must be one of {KEEP_LARGEST}, got {mode!r}")
    if mode == "none" and not return_labels:
        return probs
    if mode != "none" and not inplace:
        probs = probs.clone()  # keeps the memory layout
    view, _, back = _memory_order(probs)  # every step below on the memory-order view

    def largest(mask: torch.Tensor) -> torch.Tensor:
        # the box is found in memory order, components in (X, Y, Z) order, so that a tie
        # between equally large ones is broken as for a contiguous volume
        return _largest(mask, back)

    labels = _argmax(view)
    if mode == "none":
        return probs, labels.permute(back).contiguous()
    brain = largest(labels > 0)
    outside = ~brain
    if bool(outside.any()):
        view.mul_(brain.to(view.dtype))  # (K, ...) * (...): zero outside the brain
        view[0].add_(outside.to(view.dtype))  # outside: background with probability 1
    if mode == "labels":
        for k in range(1, view.shape[0]):  # loop over classes (a handful), not voxels
            mask = labels == k
            stray = mask & ~largest(mask)
            view[k][stray] = 0
    elif mode == "topology":
        for group in groups:  # loop over topological classes, not voxels
            mask = view[group[0]] > TOPOLOGY_THRESHOLD
            for k in group[1:]:
                mask |= view[k] > TOPOLOGY_THRESHOLD
            keep = largest(mask).to(view.dtype)
            for k in group:
                view[k].mul_(keep)
        if enclosures:
            labels = _argmax(view)
        for host, classes in enclosures:  # a handful of hosts, not voxels
            holes = enclosed_by(labels == host)
            moved = holes & torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
            if not bool(moved.any()):
                continue
            for k in classes:
                view[host][moved] += view[k][moved]
                view[k][moved] = 0
    if mode == "labels" or (mode == "topology" and (groups or enclosures)):
        view.div_(view.sum(0, keepdim=True).clamp(min=1e-8))
        if return_labels:
            labels = _argmax(view)
    else:
        labels.mul_(brain)  # inside the brain the argmax is unchanged; outside: background
    return (probs, labels.permute(back).contiguous()) if return_labels else probs


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
    """

    labels: np.ndarray
    labels_ras: np.ndarray
    volumes_mm3: np.ndarray
    affine: np.ndarray
    posteriors: np.ndarray | None = None
    qc: dict[str, float] = field(default_factory=dict)
    pose: dict | None = None


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
        over = [(max(a, w.start), min(b, w.stop)) for (a, b), w in zip(geom.box, win)]
        if all(lo < hi for lo, hi in over):
            full[(slice(None), *(slice(lo - w.start, hi - w.start) for (lo, hi), w in
                                 zip(over, win)))] = crop[(slice(start, stop), *(
                slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(over, geom.box)))]
        return full

    def resampled(
        start: int, stop: int, box: tuple[tuple[int, int], ...]
    ) -> tuple[tuple[slice, ...], torch.Tensor]:
        return resample_window(functools.partial(window, start, stop), back_ratios,
                               geom.grid_shape, ras_shape, box)

    posteriors = None
    if not keep_posteriors:
        out_win, best_p, best_k = _resampled_argmax(crop, geom.box, resampled)
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
) -> tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]:
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
        (output window, its (*sizes) float highest probability, its int64 argmax).
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
    return out_win, best_p, best_k


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


def qc_scores(
    probs: torch.Tensor, groups: Mapping[str, Sequence[int]], labels: torch.Tensor | None = None
) -> dict[str, float]:
    """Confidence of a prediction per group of classes, in [0, 1].

    For each group (e.g. a structure group, or a tissue class), the mean over the voxels whose
    argmax is a class of the group of the maximum class probability there: 1 when the network
    (averaged over folds and test-time passes) is certain everywhere, lower where classes compete
    (boundaries, unfamiliar contrast, artefacts). A group with no voxel scores 0.

    Args:
        probs: (K, X, Y, Z) float class probabilities (sum 1 over K).
        groups: group name -> class indices (no background).
        labels: (X, Y, Z) int64 argmax of ``probs`` when the caller has it.

    Returns:
        group name -> score, plus ``"qc_score"``: the lowest group score (the scan's score).
    """
    n_classes = probs.shape[0]
    group_of = torch.full((n_classes,), -1, dtype=torch.long, device=probs.device)
    for g, classes in enumerate(groups.values()):
        group_of[torch.as_tensor(list(classes), dtype=torch.long, device=probs.device)] = g
    if labels is None:
        top, labels = probs.max(0)
    else:
        top = probs.gather(0, labels[None])[0]
    gid = group_of[labels]
    valid = gid >= 0
    n = len(groups)
    counts = torch.bincount(gid[valid], minlength=n).double()
    sums = torch.zeros(n, dtype=torch.float64, device=probs.device)
    sums.index_add_(0, gid[valid], top[valid].double())
    score = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    out = {name: float(v) for name, v in zip(groups, score.cpu())}
    out["qc_score"] = min(out.values()) if out else 0.0
    return out
