"""Validation on real scans: tissue Dice for every model, and for a structure model a
per-structure table (Dice, predicted and reference volumes) and an overlay image.

Every validation, each real set (``data.real_val``) is segmented on the training grid and scored:

* **tissue** (every model): the prediction grouped into GM / WM / CSF (:func:`tissue_lut`) against
  the reference's tissue classes: ``val_real/<name>/dice_{GM,WM,CSF}`` and ``val_real/<name>/dice``;
* **structures** (a model predicting SynthSeg 1.0's 31 structures in FreeSurfer values, e.g.
  ``data.target=synthseg``, on a set with FreeSurfer references, ``reference_preset: aseg``):
  Dice per structure (mean over the cases whose reference has it), the mean over the structures
  present (``val_real/<name>/structure_mean``, monitorable), per group
  (:data:`synthseg_lite.labels.STRUCTURE_GROUPS`), the mean predicted and reference volume of each
  structure (mm^3, on the validation grid) and their ratio; structures absent from every reference
  are listed, never averaged. Scalars ``val_real/<name>/structure/<FreeSurfer name>`` (Dice) and
  ``val_real/<name>/volume_ratio/<FreeSurfer name>``, and a Markdown table (TensorBoard TEXT tab,
  :func:`structure_table`);
* an **overlay** of each set's first case (:func:`~synthseg_lite.model.overlay.overlay_real`: image |
  reference | prediction; structures in FreeSurfer's LUT colours, else tissue colours).

Accumulators are sums, reduced across ranks before the means; only rank 0 draws the overlay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from synthseg_lite.labels import (
    FREESURFER_NAMES,
    REFERENCE_PRESETS,
    STRUCTURE_GROUPS,
    TARGET_PRESETS,
    TargetPreset,
)
from synthseg_lite.labels.lut import FREESURFER_COLORS, output_labels
from synthseg_lite.model.overlay import overlay_real

__all__ = [
    "STRUCTURES",
    "VOLUME_TOLERANCE",
    "RealValResult",
    "RealValidation",
    "confusion",
    "dice_from_confusion",
    "structure_lut",
    "structure_table",
    "tissue_lut",
]

TISSUE_NAMES = TARGET_PRESETS["tissue"].names
#: SynthSeg 1.0's 31 structures (FreeSurfer values), in the ``synthseg`` preset's order: the
#: ``structures`` item of a real validation batch holds indices 1..31 into it (0 background).
STRUCTURES: tuple[int, ...] = tuple(TARGET_PRESETS["synthseg"].values[1:])
#: Predicted / reference volume within 1 +- this for structures of >= 1,000 mm^3 (issue 16).
VOLUME_TOLERANCE, VOLUME_CHECK_MM3 = 0.35, 1000.0


def tissue_lut(target: TargetPreset) -> list[int]:
    """Target class -> tissue class (0 bg, 1 GM, 2 WM, 3 CSF), for Dice against real references."""
    if tuple(target.names[:4]) == TISSUE_NAMES or (
        target.n_classes == 4 and target.values == (0, 1, 2, 3)
    ):
        return list(range(target.n_classes))
    aseg = REFERENCE_PRESETS["aseg"]
    return [int(aseg.get(int(v), 0)) for v in target.values]


def structure_lut(target: TargetPreset) -> list[int] | None:
    """Target class -> structure index (0 background, 1..31 into :data:`STRUCTURES`), or None for
    a model that does not predict all 31 structures in FreeSurfer values (e.g. a tissue model)."""
    if tuple(target.names[:4]) == TISSUE_NAMES or not set(STRUCTURES) <= set(target.values):
        return None
    index = {v: i for i, v in enumerate(STRUCTURES, start=1)}
    return [index.get(int(v), 0) for v in target.values]


def confusion(pred: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) int64 confusion matrix, rows = target, columns = prediction (any equal shapes)."""
    idx = target.reshape(-1).long() * n + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=n * n).view(n, n)


def dice_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class Dice from a confusion matrix (NaN where the class is absent from both)."""
    tp = cm.diag().double()
    denom = cm.sum(0).double() + cm.sum(1).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, math.nan))


@dataclass
class RealValResult:
    """One real set's scores of one validation.

    Attributes:
        scalars: metric name -> value (``val_real/<name>/...``).
        table: Markdown per-structure table (None without structure scores).
        overlay: (3, H, W) RGB overlay of the first case (None when none was drawn).
        structures: per structure value: ``dice``, ``pred_mm3``, ``ref_mm3``, ``ratio`` (NaN
            where undefined); empty without structure scores.
        absent: FreeSurfer names of the structures absent from every reference.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    table: str | None = None
    overlay: torch.Tensor | None = None
    structures: dict[int, dict[str, float]] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)


def _fmt(x: float, spec: str) -> str:
    return "–" if math.isnan(x) else format(x, spec)


def structure_table(
    structures: dict[int, dict[str, float]], groups: dict[str, float], mean: float,
    absent: Sequence[str],
) -> str:
    """Markdown table: one row per structure (FreeSurfer name, Dice, predicted and reference
    volume in mm^3, their ratio, ``out`` when a structure of >= 1,000 mm^3 is off by more than
    35 %), then the group means, the mean and the absent structures."""
    lines = [
        "| structure | Dice | predicted mm³ | reference mm³ | ratio | ±35 % |",
        "|---|---|---|---|---|---|",
    ]
    for v, s in structures.items():
        check = ""
        if s["ref_mm3"] >= VOLUME_CHECK_MM3:
            check = "ok" if abs(s["ratio"] - 1) <= VOLUME_TOLERANCE else "**out**"
        lines.append(
            f"| {FREESURFER_NAMES[v]} | {_fmt(s['dice'], '.3f')} | {_fmt(s['pred_mm3'], ',.0f')} "
            f"| {_fmt(s['ref_mm3'], ',.0f')} | {_fmt(s['ratio'], '.2f')} | {check} |"
        )
    for g, d in groups.items():
        lines.append(f"| *{g}* | {_fmt(d, '.3f')} | | | | |")
    n = sum(1 for s in structures.values() if not math.isnan(s["dice"]))
    lines.append(f"| **mean ({n})** | **{_fmt(mean, '.3f')}** | | | | |")
    if absent:
        lines.append("\nabsent from the reference (not averaged): " + ", ".join(absent))
    return "\n".join(lines)


class RealValidation:
    """Accumulators of the real sets over one validation epoch.

    Args:
        names: the real sets' names (dataloaders 1, 2, ...).
        target: the model's target classes.
        spacing_mm: voxel size of the validation grid (volumes in mm^3).
    """

    def __init__(self, names: Sequence[str], target: TargetPreset, spacing_mm: float) -> None:
        self.names = list(names)
        self.voxel_mm3 = float(spacing_mm) ** 3
        self.tissue_of = torch.tensor(tissue_lut(target))
        lut = structure_lut(target)
        self.structure_of = None if lut is None else torch.tensor(lut)
        self.tissue_colors = _colors(output_labels(TARGET_PRESETS["tissue"]).colors)
        self.structure_colors = _colors([(0, 0, 0), *(FREESURFER_COLORS[v] for v in STRUCTURES)])
        self.reset(torch.device("cpu"))

    def reset(self, device: torch.device) -> None:
        """Empty the accumulators (start of a validation epoch)."""
        n, k = max(len(self.names), 1), len(STRUCTURES) + 1
        self.tissue_of = self.tissue_of.to(device)
        self.structure_of = None if self.structure_of is None else self.structure_of.to(device)
        self.tissue_sum = torch.zeros(n, 4, dtype=torch.float64, device=device)
        self.tissue_cnt = torch.zeros_like(self.tissue_sum)
        # per structure: Dice sum, cases scored, predicted voxels, reference voxels
        self.struct_acc = torch.zeros(n, k, 4, dtype=torch.float64, device=device)
        self.struct_cases = torch.zeros(n, dtype=torch.float64, device=device)
        self.overlays: dict[int, torch.Tensor] = {}

    def update(
        self, s: int, batch: dict, scores: torch.Tensor, draw: bool = False
    ) -> None:
        """Score one case of set ``s``.

        Args:
            batch: ``image`` (1, 1, X, Y, Z), ``target`` (1, X, Y, Z) tissue classes, optionally
                ``structures`` (1, X, Y, Z) structure indices.
            scores: (1, K, X, Y, Z) logits or probabilities of the model's classes.
            draw: keep this case's overlay for the set.
        """
        pred = scores.argmax(1)
        d = dice_from_confusion(confusion(self.tissue_of[pred], batch["target"], 4))
        ok = ~torch.isnan(d)
        self.tissue_sum[s] += torch.where(ok, d, 0)
        self.tissue_cnt[s] += ok.double()
        has_structures = self.structure_of is not None and "structures" in batch
        if has_structures:
            ref = batch["structures"]
            cm = confusion(self.structure_of[pred], ref, len(STRUCTURES) + 1).double()
            ref_n, pred_n = cm.sum(1), cm.sum(0)
            scored = ref_n > 0
            dice = torch.where(scored, 2 * cm.diag() / (ref_n + pred_n).clamp(min=1), 0)
            self.struct_acc[s] += torch.stack([dice, scored.double(), pred_n, ref_n], 1)
            self.struct_cases[s] += 1
        if draw and s not in self.overlays:
            if has_structures:
                tgt, prd, colors = batch["structures"][0], self.structure_of[pred[0]], self.structure_colors
            else:
                tgt, prd, colors = batch["target"][0], self.tissue_of[pred[0]], self.tissue_colors
            self.overlays[s] = overlay_real(batch["image"][0, 0].detach(), tgt, prd, colors)

    def results(self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> list[
        RealValResult
    ]:
        """Per set, the epoch's scores (``reduce`` sums a tensor across ranks)."""
        t_sum, t_cnt = reduce(self.tissue_sum), reduce(self.tissue_cnt)
        acc, cases = reduce(self.struct_acc), reduce(self.struct_cases)
        out = []
        for s, name in enumerate(self.names):
            res = RealValResult(overlay=self.overlays.get(s))
            mean = torch.where(t_cnt[s] > 0, t_sum[s] / t_cnt[s].clamp(min=1), math.nan)
            for c, tissue in enumerate(TISSUE_NAMES[1:], start=1):
                res.scalars[f"val_real/{name}/dice_{tissue}"] = float(mean[c])
            res.scalars[f"val_real/{name}/dice"] = float(torch.nanmean(mean[1:]))
            if self.structure_of is not None and cases[s] > 0:
                self._structures(res, name, acc[s], float(cases[s]))
            out.append(res)
        return out

    def _structures(self, res: RealValResult, name: str, acc: torch.Tensor, cases: float) -> None:
        nan = float("nan")
        for i, v in enumerate(STRUCTURES, start=1):
            dsum, n, pred, ref = (float(x) for x in acc[i])
            pred_mm3, ref_mm3 = pred / cases * self.voxel_mm3, ref / cases * self.voxel_mm3
            res.structures[v] = {
                "dice": dsum / n if n else nan,
                "pred_mm3": pred_mm3,
                "ref_mm3": ref_mm3,
                "ratio": pred_mm3 / ref_mm3 if ref_mm3 > 0 else nan,
            }
            if not n:
                res.absent.append(FREESURFER_NAMES[v])
        dice = {v: s["dice"] for v, s in res.structures.items()}
        groups = {g: _nanmean(dice[v] for v in vs) for g, vs in STRUCTURE_GROUPS.items()}
        mean = _nanmean(dice.values())
        res.scalars[f"val_real/{name}/structure_mean"] = mean
        for g, d in groups.items():
            res.scalars[f"val_real/{name}/group/{_tag(g)}"] = d
        for v, s in res.structures.items():
            if not math.isnan(s["dice"]):
                res.scalars[f"val_real/{name}/structure/{FREESURFER_NAMES[v]}"] = s["dice"]
                res.scalars[f"val_real/{name}/volume_ratio/{FREESURFER_NAMES[v]}"] = s["ratio"]
        res.table = structure_table(res.structures, groups, mean, res.absent)


def _nanmean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def _tag(group: str) -> str:
    """A structure group's name as a TensorBoard tag part (``cerebral WM`` -> ``cerebral_WM``)."""
    return group.replace(" ", "_").replace("+", "_")


def _colors(rgb: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 255
