"""Intensity refinement of network probabilities (``refine=gmm``).

The network's probabilities serve as a spatial prior, and each scan's own intensities as the
likelihood, the way atlas-based Bayesian segmentation (FreeSurfer's SAMSEG, SPM) combines an atlas
with a Gaussian mixture: every foreground class gets one Gaussian of intensity, fitted to this
scan by expectation-maximisation with the prior held fixed, and

    q_k(v) = (1 - p_0(v)) * p_k(v) N(x_v; mu_k, s_k) / sum_j>0 p_j(v) N(x_v; mu_j, s_j).

The background probability p_0 stays the network's, so the brain mask (skull, neck, an unstripped
head) is untouched; only the split between structures moves, toward what the scan's contrast says
where the network hesitated (a partial-volume rim that a shape prior learnt from the training maps
calls ventricle although it is as bright as the hippocampus beside it). A confident voxel needs a
likelihood ratio of its odds to change. The Gaussians are fitted per scan, so any contrast works.

A structure's mean is fitted on its **interior** (voxels whose most probable class is also their
six face neighbours'), its variance on all of its voxels: a label's border voxels hold partial
volume of its neighbours (the cortex's inner layer part white matter, a ventricle's wall part
tissue), which pulls a mean fitted on every voxel toward the neighbour and moves the boundary
into it; the spread stays the label's own, partial volume included. On the OASIS T1 the cerebral
white matter went from 1.12-1.14x to 1.08-1.09x of its aseg volume and the 4th ventricle from
1.48x to 1.39x (``docs/structures.md``, "Interior means"). Not for the tissue presets
(:func:`interior_means`): their GM pools the cortex, which has hardly an interior at their 1.5 mm,
with the deep nuclei, whose intensity is not the cortex's.

The intensities move boundaries; they do not draw a structure where the network sees none: a voxel
whose refined label is more than :data:`GUARD_MM` (3 mm, city-block) from every voxel where the
network's most probable class is that label keeps the network's probabilities (``guard``). On the
OASIS scan this took the FLAIR-like proxy from 0.802 to 0.809 and the PD-like from 0.777 to
0.781, nothing lower (``docs/structures.md``, "A guard on the refinement").

Its limit: a white-matter lesion as dark as grey matter, where the network hesitates, becomes grey
matter; ``keep_largest=topology`` gives white matter back what it encloses, but not a lesion that
touches a ventricle or the cortex (``benchmarks/refine_checks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from synthseg_lite.labels import TargetPreset
from synthseg_lite.labels.lut import is_tissue_target, tissue_view

__all__ = [
    "REFINE",
    "fit_intensities",
    "guard_voxels",
    "interior",
    "interior_means",
    "most_probable",
    "out_of_reach",
    "refine_with_intensities",
    "shared_classes",
]

#: Allowed values of ``refine``.
REFINE = ("none", "gmm")

#: EM iterations of the Gaussian parameters (the prior is fixed). Not run to convergence: on the
#: OASIS scan with the structure model, 10 iterations move the means by up to 0.007 (of [0, 1]) and
#: one small class's SD by 25 %, and change the argmax of 0.1 % of the box's voxels, for no gain
#: (``benchmarks.structures``: mean Dice 0.817 / 0.814 / 0.803 / 0.762 / 0.795 over the five OASIS
#: conditions against 3's 0.818 / 0.814 / 0.803 / 0.764 / 0.797; IBSR tissue view the same).
ITERATIONS = 3

#: Lowest standard deviation of a class's intensity, as a fraction of the [0, 1] intensity range
#: (a class with near-constant intensity would otherwise claim every voxel of exactly its value).
MIN_STD = 0.01

#: A class whose expected voxel count in the fitting sample is below this keeps the likelihood of
#: the whole brain (too few voxels to fit a Gaussian).
MIN_VOXELS = 20.0

#: A class (or shared group) whose interior holds less expected weight than this in the fitting
#: sample takes the mean of all of its voxels (a thin or small structure with no interior).
MIN_INTERIOR = 200.0

#: How far (mm, city-block) the refinement may move a label from where the network's most
#: probable class has it (:func:`guard_voxels`); a voxel given a label out of reach keeps the
#: network's probabilities. Measured on the OASIS scan's six conditions at 1, 2 and 3 mm and
#: unguarded (``docs/structures.md``, "A guard on the refinement"): 3 mm keeps every gain of
#: the unguarded fit (the left inferior horn, which the refinement rightly moves, included) and
#: takes back most of its loss on the FLAIR-like proxy.
GUARD_MM = 3.0

#: Voxels per slab of the final in-place update (bounds the extra memory to one slab).
SLAB_VOXELS = 1 << 21

#: A class's log-likelihood is kept within this of the voxel's best class (exp(-60) ~ 1e-26), so
#: that a voxel far from every Gaussian keeps its prior's ranking instead of underflowing to 0.
LOG_FLOOR = -60.0

#: The likelihoods are tabulated on this many intensity levels over [0, 1] (a step of 1e-3,
#: a tenth of :data:`MIN_STD`): one table look-up per voxel and class instead of a Gaussian.
LEVELS = 1024


def _likelihood_table(mu: torch.Tensor, var: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(K, LEVELS) Gaussian likelihoods of each intensity level, divided by the best class's
    at that level (floored at exp(:data:`LOG_FLOOR`)); ``mu`` and ``var`` (K,)."""
    levels = torch.linspace(0, 1, LEVELS, dtype=mu.dtype, device=mu.device)
    log_l = -0.5 * torch.log(var)[:, None] - (levels - mu[:, None]) ** 2 / (2 * var[:, None])
    return (log_l - log_l.amax(0)).clamp(min=LOG_FLOOR).exp().to(device, torch.float32)


def _level(x: torch.Tensor) -> torch.Tensor:
    """Index of the nearest tabulated level of intensities ``x`` (clamped to [0, 1]; ``x`` is
    not modified)."""
    return (x * (LEVELS - 1)).round_().clamp_(0, LEVELS - 1).long()


def _posterior_(p: torch.Tensor, level: torch.Tensor, table: torch.Tensor) -> None:
    """In place: ``p`` (K, ...) prior probabilities -> posteriors, background (class 0) fixed;
    ``level`` the intensity levels on ``p``'s grid, ``table`` (K - 1, LEVELS) the foreground
    likelihoods (:func:`_likelihood_table`)."""
    fg = p[1:]
    for k in range(len(fg)):  # a gather from a 4 KiB table per class: no (K, ...) temporary
        fg[k].mul_(table[k][level].to(p.dtype))
    total = fg.sum(0)
    fg.mul_(torch.where(total > 0, (1 - p[0]) / total.clamp_min(1e-30), 1.0))


def _moments(
    q: torch.Tensor, x: torch.Tensor, pool: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight, mean and variance (float64, (K + 1,) each; the last: all foreground) of
    intensities ``x`` (M,) per class of weights ``q`` (K, M), pooled over a row of ``pool``."""
    # float32 sums of intensities in [0, 1] (relative error ~1e-6) on q's device, pooled in
    # float64 on the CPU (Apple's MPS has no float64)
    own = torch.stack([q.sum(1), q @ x, q @ (x * x)], 1).cpu().double()  # (K, 3): n, Σx, Σx²
    stats = torch.cat([pool @ own, own.sum(0, keepdim=True)])
    n = stats[:, 0].clamp_min(1e-12)
    mu = stats[:, 1] / n
    return stats[:, 0], mu, stats[:, 2] / n - mu * mu


def _restore_prior_(
    probs: torch.Tensor, points: torch.Tensor, x: torch.Tensor, table: torch.Tensor
) -> None:
    """In place: ``probs`` (K, X, Y, Z) posteriors of :func:`_posterior_` -> the priors they came
    from at ``points`` (M, 3), by dividing out the likelihoods (``table`` (K - 1, LEVELS) at the
    levels of intensities ``x`` (X, Y, Z)); exact up to float32 rounding for every prior above
    ~1e-18 (a likelihood ratio is floored at exp(:data:`LOG_FLOOR`))."""
    i, j, k = points.unbind(1)
    q = probs[:, i, j, k]  # (K, M)
    fg = q[1:] / table[:, _level(x[i, j, k])].to(q.dtype)
    total = fg.sum(0)
    fg.mul_(torch.where(total > 0, (1 - q[0]) / total.clamp_min(1e-30), 1.0))
    probs[1:, i, j, k] = fg


def _fit(
    q: torch.Tensor,
    x: torch.Tensor,
    inner: torch.Tensor | None,
    floor: torch.Tensor,
    pool: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (float64, (K,)) of intensities ``x`` (M,) per class of weights ``q``
    (K, M), pooled over the classes of a row of ``pool`` (K, K): the mean over the interior
    voxels (``inner`` (M,) bool; None: none) where they weigh :data:`MIN_INTERIOR`, else over
    all; the variance over all. Classes with too little weight get the moments of all foreground."""
    n, mu, var = _moments(q, x, pool)
    if inner is not None:
        n_in, mu_in, _ = _moments(q * inner.to(q.dtype), x, pool)
        mu = torch.where(n_in >= MIN_INTERIOR, mu_in, mu)
    few = n[:-1] < MIN_VOXELS
    all_mu, all_var, mu, var = mu[-1], var[-1], mu[:-1], var[:-1]
    mu = torch.where(few, all_mu, mu)
    var = torch.where(few, all_var, var).clamp_min(floor)
    return mu, var


def most_probable(probs: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) uint8 (int32 beyond 256 classes): the most probable class of ``probs``
    (K, X, Y, Z), the first of a tie, as ``argmax(0)``."""
    # one class at a time: over a 2D model's strided sum, 3x faster than argmax(0)
    label = torch.zeros(
        probs.shape[1:],
        dtype=torch.uint8 if probs.shape[0] <= 256 else torch.int32,
        device=probs.device,
    )
    best = probs[0].clone()
    for k in range(1, probs.shape[0]):
        label.masked_fill_(probs[k] > best, k)  # strictly greater: the first maximum wins
        torch.maximum(best, probs[k], out=best)
    return label


def interior(probs: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
    """(X, Y, Z) bool: voxels whose most probable class of ``probs`` (K, X, Y, Z) is also that
    of their six face neighbours (a neighbour outside the grid agrees); ``label``: that class,
    :func:`most_probable`, where already computed."""
    if label is None:
        label = most_probable(probs)
    inner = torch.ones_like(label, dtype=torch.bool)
    for d in range(3):
        n = label.shape[d]
        same = label.narrow(d, 1, n - 1) == label.narrow(d, 0, n - 1)
        inner.narrow(d, 1, n - 1).logical_and_(same)  # agrees with the voxel before it
        inner.narrow(d, 0, n - 1).logical_and_(same)  # and with the one after it
    return inner


def interior_means(target: TargetPreset) -> bool:
    """Whether :func:`refine_with_intensities` fits a target's class means on their interior: yes
    where a class is one structure, no for the tissue presets (background, GM, WM, CSF), whose GM
    interior is the deep nuclei rather than the cortex (on the shipped tissue model interior
    means cost IBSR WM 0.008 on the T1 and 0.015-0.019 on thick slices: ``docs/structures.md``)."""
    return not is_tissue_target(target)


def shared_classes(target: TargetPreset) -> list[list[int]]:
    """Class indices that share one Gaussian in :func:`refine_with_intensities`: the fluid
    compartments of a FreeSurfer structure target (the CSF of its tissue view: ventricles,
    extra-cerebral CSF), one substance whose intensity a small compartment's own fit would take
    from its partial-volume rim (as SAMSEG shares one CSF model). No group for other targets."""
    view = tissue_view(target)
    if view is None:
        return []
    fluid = [int(k) for k in (view[0] == 3).nonzero()[0]]
    return [fluid] if len(fluid) > 1 else []


def guard_voxels(spacing_mm: float) -> int:
    """The reach of :func:`refine_with_intensities`'s guard on a model's grid of ``spacing_mm``
    (isotropic, mm): :data:`GUARD_MM` in voxels, at least 1."""
    return max(1, round(GUARD_MM / spacing_mm))


def _dilate_(mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``mask`` (X, Y, Z) bool grown by ``steps`` face-neighbour steps (a city-block ball), in
    place."""
    for _ in range(steps):
        before = mask.clone()
        for d in range(3):
            n = mask.shape[d]
            mask.narrow(d, 1, n - 1).logical_or_(before.narrow(d, 0, n - 1))
            mask.narrow(d, 0, n - 1).logical_or_(before.narrow(d, 1, n - 1))
    return mask


def out_of_reach(label: torch.Tensor, reference: torch.Tensor, steps: int) -> torch.Tensor:
    """(M, 3) long: the voxels whose class in ``label`` (X, Y, Z) is nowhere within ``steps``
    face-neighbour steps (city-block distance) in ``reference`` (same grid and dtype)."""
    changed = label != reference
    points = changed.nonzero()
    classes = label[changed]
    far = []
    for k in classes.unique().tolist():
        pts = points[classes == k]
        lo = (pts.amin(0) - steps).clamp_min(0)
        hi = torch.minimum(pts.amax(0) + steps + 1, torch.tensor(label.shape, device=pts.device))
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        reach = _dilate_(reference[box] == k, steps)
        far.append(pts[~reach[(pts - lo).unbind(1)]])
    return torch.cat(far) if far else points


def _check(probs: torch.Tensor, image: torch.Tensor) -> None:
    if probs.dim() != 4 or probs.shape[1:] != image.shape:
        raise ValueError(
            f"probs (K, X, Y, Z) and image (X, Y, Z) must share a grid, got "
            f"{tuple(probs.shape)} and {tuple(image.shape)}"
        )


def fit_intensities(
    probs: torch.Tensor,
    image: torch.Tensor,
    shared: Sequence[Sequence[int]] = (),
    iterations: int = ITERATIONS,
    step: int = 2,
    interior_mean: bool = True,
    label: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-scan Gaussian of each foreground class, fitted by EM with ``probs`` as the prior.

    Args: as :func:`refine_with_intensities` (``probs`` is not modified; at least one
        foreground class); ``label``: the most probable class of ``probs``
        (:func:`most_probable`), where already computed.

    Returns:
        ``(mu, var)``: float64 (K - 1,) mean and variance of foreground classes 1..K-1, in the
        image's intensity units.
    """
    _check(probs, image)
    x = image.to(probs.dtype)
    sub = (slice(None, None, step),) * 3
    brain = probs[(0, *sub)] < 0.5
    prior = probs[(slice(None), *sub)][:, brain]
    xs = x[sub][brain]
    inner = interior(probs, label)[sub][brain] if interior_mean else None
    xs_level = _level(xs)
    floor = torch.tensor(MIN_STD**2, dtype=torch.float64)
    pool = torch.eye(probs.shape[0] - 1, dtype=torch.float64)
    for group in shared:
        if min(group) < 1 or max(group) >= probs.shape[0]:
            raise ValueError(f"shared classes must be foreground indices, got {list(group)}")
        members = torch.as_tensor(list(group)) - 1
        pool[members[:, None], members] = 1.0
    mu, var = _fit(prior[1:], xs, inner, floor, pool)
    for _ in range(iterations):
        q = prior.clone()
        _posterior_(q, xs_level, _likelihood_table(mu, var, probs.device))
        mu, var = _fit(q[1:], xs, inner, floor, pool)
    return mu, var


def refine_with_intensities(
    probs: torch.Tensor,
    image: torch.Tensor,
    shared: Sequence[Sequence[int]] = (),
    iterations: int = ITERATIONS,
    step: int = 2,
    interior_mean: bool = True,
    guard: int = 0,
) -> torch.Tensor:
    """Combine network probabilities with a per-scan Gaussian intensity model, in place.

    Args:
        probs: (K, X, Y, Z) float32 probabilities (sum 1 over K; class 0 background), any
            strides; overwritten with the refined probabilities (still summing to 1).
        image: (X, Y, Z) float intensities on the same grid (the network's input, in [0, 1]).
        shared: groups of foreground class indices that share one Gaussian (one substance in
            several compartments: :func:`shared_classes`); every other class has its own.
        iterations: EM iterations of the Gaussian parameters (0: parameters from the network's
            probabilities only).
        step: the parameters are fitted on every ``step``-th voxel along each axis where the
            background probability is below 1/2 (a 1 mm brain: ~1.8 * 10^5 voxels at 2); the
            update covers every voxel.
        interior_mean: each class's mean fitted on its interior (:func:`interior`) rather than
            on all of its voxels (:func:`interior_means` says which for a target).
        guard: a voxel whose refined most probable class is more than this many face-neighbour
            steps from every voxel where the network's most probable class is that class keeps
            the network's probabilities (0: no guard; :func:`guard_voxels`). The intensities
            move a boundary; they do not put a structure where the network sees none nearby.

    Returns:
        ``probs``, refined.
    """
    _check(probs, image)
    if probs.shape[0] < 3:  # one foreground class: nothing to split
        return probs
    network = most_probable(probs) if guard > 0 or interior_mean else None
    mu, var = fit_intensities(probs, image, shared, iterations, step, interior_mean, network)
    table = _likelihood_table(mu, var, probs.device)
    x = image.to(probs.dtype)
    # slabs along the spatial axis outermost in memory (a 2D model's sum is not (X, Y, Z)-ordered)
    order = sorted(range(3), key=lambda d: -probs.stride(1 + d))
    p_view, x_view = probs.permute(0, *(1 + d for d in order)), x.permute(*order)
    rows = max(1, SLAB_VOXELS // (p_view.shape[2] * p_view.shape[3]))
    for i in range(0, p_view.shape[1], rows):
        _posterior_(p_view[:, i : i + rows], _level(x_view[i : i + rows]), table)
    if guard > 0:
        _restore_prior_(probs, out_of_reach(most_probable(probs), network, guard), x, table)
    return probs
