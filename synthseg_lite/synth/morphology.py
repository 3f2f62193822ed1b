"""Structure-size stage: the ventricular system shrunk or grown by whole voxels, per sample.

The training label maps are 20 adults, most of them older: the lateral ventricles' median is
16.5 cm^3 a side, the inferior horns' 880 mm^3 (with their choroid plexus), the 4th ventricle's
1.7 cm^3. A network that has only seen such ventricles carries their size as a shape prior and
draws a young adult's thin inferior horn or 4th ventricle too large (on the shared OASIS scan:
1.75x and 1.60x). SynthSeg's deformations scale the whole head smoothly and do not change one
structure's size against its neighbours. This stage does, on a fraction of the samples: ``k``
rounds of 6-connected erosion (each boundary voxel of the chosen labels takes the label of a
neighbour outside them) or dilation (each brain voxel beside them takes their label). The
image is then drawn from the changed map and the target follows it, so the network learns the
size from the image, not from the prior. Groups of labels (``synth.morph.groups``) each draw their
own rounds: resized together (one group), a large lateral ventricle still tells the network that
the inferior horn or the 4th ventricle is large; resized apart, it does not. A group may be held
to some neighbours (``synth.morph.into``), and a round may move only part of a group's border, in
patches a smooth random field chooses (``synth.morph.fraction``): the cerebral white matter eroded
or dilated against the cortex only, over part of its border (one whole voxel is a third of its
volume), thickens or thins the cortex region by region (the maps' cortex-to-white-matter ratio
spans 0.92-1.19, another subject's aseg can lie beyond it) and leaves the deep grey matter and the
ventricles it touches alone. Beyond SynthSeg.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["morph_into", "morph_lut", "resize_structures"]


def morph_lut(n_labels: int, groups: list[list[int]], growable: list[int]) -> torch.Tensor:
    """(L,) int64 table over generation indices: ``g + 1`` for the labels of group ``g`` (resized
    by the group's rounds), 0 for labels they may grow into, -1 for the others (background,
    outside the brain).

    Args:
        n_labels: number of generation indices L.
        groups: generation indices of the structures to resize, one list per group.
        growable: generation indices they may grow into (resized ones are ignored here).
    """
    if not groups or not all(groups):
        raise ValueError("the structure-size stage needs at least one label to resize per group")
    lut = torch.full((n_labels,), -1, dtype=torch.long)
    lut[torch.tensor(growable, dtype=torch.long)] = 0
    for g, group in enumerate(groups):
        lut[torch.tensor(group, dtype=torch.long)] = g + 1
    return lut


def morph_into(lut: torch.Tensor, into: list[list[int]]) -> torch.Tensor:
    """(G, L) bool: may group ``g`` grow into (and give way to) generation index ``l``?

    Args:
        lut: (L,) from :func:`morph_lut` (G groups).
        into: per group, the generation indices it grows into (an empty list: every growable
            label); only growable labels (``lut == 0``) can be listed, others are ignored.
    """
    growable = lut == 0
    labels = torch.arange(lut.numel())
    return torch.stack([growable & torch.isin(labels, torch.tensor(group, dtype=torch.long))
                        if group else growable for group in into])


def _neighbours(x: torch.Tensor) -> list[torch.Tensor]:
    """The 6 face neighbours of every voxel of (B, 1, *S) ``x``, the edge voxel standing for its
    missing neighbour (so the patch border changes nothing)."""
    out = []
    for dim in (2, 3, 4):
        n = x.shape[dim]
        if n < 2:
            continue
        first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
        out.append(torch.cat([first, x.narrow(dim, 0, n - 1)], dim))  # neighbour at -1
        out.append(torch.cat([x.narrow(dim, 1, n - 1), last], dim))  # neighbour at +1
    return out


def _voxel_steps(kind: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B, 1, *S) rounds of each voxel's group (0 outside the resized labels) from (B, 1, *S)
    ``kind`` (the lut's values) and (B, G) ``steps``."""
    table = torch.cat([torch.zeros_like(steps[:, :1]), steps], 1)  # column 0: not resized
    flat = kind.clamp(min=0).flatten(1)
    return table.gather(1, flat).view_as(kind)


def _gate(field: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, *shape) values in (0, 1), about uniform over each sample's voxels, smooth in space:
    coarse normal ``field`` (B, 1, *n) upsampled, standardised per sample, through the normal
    CDF; below 1 (a fraction of 1 moves every candidate)."""
    dense = F.interpolate(field, size=shape, mode="trilinear", align_corners=True)
    flat = dense.flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return (0.5 * (1 + torch.erf(z / math.sqrt(2)))).clamp(max=1 - 1e-6).view_as(dense)


def resize_structures(
    labels: torch.Tensor,
    steps: torch.Tensor,
    lut: torch.Tensor,
    into: torch.Tensor | None = None,
    fraction: torch.Tensor | None = None,
    field: torch.Tensor | None = None,
) -> torch.Tensor:
    """Erode (``steps < 0``) or dilate (``steps > 0``) each group of labels by ``|steps|`` voxels.

    One round of erosion gives every voxel of an eroding group with a face neighbour of a
    growable label that neighbour's label (the first in the order -x, +x, -y, +y, -z, +z); one
    round of dilation gives every growable voxel with a face neighbour of a dilating group that
    neighbour's label (the first such). Two resized groups that touch do not eat each other.
    Voxels of the other labels (background, extracerebral) never change and are never copied.
    The work is done in the batch's bounding box of the resized labels, grown by the rounds (the
    ventricles are a small part of a head).

    Args:
        labels: (B, 1, *S) integer generation indices (after the warp, flip and skull stripping).
        steps: (B, G) int64 rounds per sample and group, 0 = unchanged.
        lut: (L,) int64 from :func:`morph_lut` (G groups).
        into: (G, L) bool from :func:`morph_into`: the growable labels each group may take from
            and give way to (None: all of them, for every group).
        fraction: (B, G) float in [0, 1], the fraction of each group's candidates a round
            changes: a voxel changes only where the smooth gate drawn from ``field`` is below the
            fraction of the group that erodes it or grows into it, so the same patches move in
            every round (None or an empty ``field``: every candidate).
        field: (B, 1, *n) standard normal coarse field of that gate.

    Returns:
        (B, 1, *S) labels, same dtype; identical to ``labels`` for samples whose steps are all 0.
    """
    rounds = int(steps.abs().max()) if steps.numel() else 0
    if rounds == 0:
        return labels
    lut, steps = lut.to(labels.device), steps.to(labels.device)
    allowed = None  # (G + 1) * L flat table: row g + 1 is group g's, row 0 never allows
    if into is not None:
        allowed = torch.cat([torch.zeros_like(into[:1]), into]).to(labels.device).flatten()
    chosen = _voxel_steps(lut[labels.long()], steps) != 0
    if not bool(chosen.any()):
        return labels
    box = []
    for dim in (2, 3, 4):  # bounding box over the batch, grown by the rounds + 1 for the neighbours
        hit = chosen.any(dim=tuple(d for d in range(5) if d != dim)).nonzero()[:, 0]
        box.append(slice(max(int(hit[0]) - rounds - 1, 0), int(hit[-1]) + rounds + 2))
    out = labels[(slice(None), slice(None), *box)].long()
    gate = None  # (B, 1, *box) smooth U(0, 1) values; a voxel moves where below its fraction
    if fraction is not None and field is not None and field.numel():
        gate = _gate(field.to(labels.device), tuple(labels.shape[2:]))[
            (slice(None), slice(None), *box)]
        fraction = fraction.to(labels.device, gate.dtype)
    n_labels = lut.numel()
    for r in range(rounds):  # loop over rounds, not samples
        kind = lut[out]
        own = _voxel_steps(kind, steps)
        eroding, growable = own <= -(r + 1), kind == 0
        if gate is not None:  # an eroding voxel moves where the gate is below its group's fraction
            eroding = eroding & (gate < _voxel_steps(kind, fraction))
        new, done = out, torch.zeros_like(eroding)
        for nb, nb_kind, nb_own in zip(_neighbours(out), _neighbours(kind), _neighbours(own)):
            if allowed is None:
                gives, grows = nb_kind == 0, growable
            else:  # the eroding voxel's group may give way to nb; nb's group may grow into it
                gives = allowed[kind.clamp(min=0) * n_labels + nb]
                grows = allowed[nb_kind.clamp(min=0) * n_labels + out]
            if gate is not None:  # a grown voxel: below the fraction of the group growing into it
                grows = grows & (gate < _voxel_steps(nb_kind, fraction))
            take = ~done & ((eroding & gives) | (grows & (nb_own >= r + 1)))
            new = torch.where(take, nb, new)
            done = done | take
        out = new
    result = labels.clone()
    result[(slice(None), slice(None), *box)] = out.to(labels.dtype)
    return result
