"""Evaluate segmentations against references, or synthetic images against real ones.

    python evaluate.py pred=DIR ref=DIR ref_labels=ibsr output=DIR
    python evaluate.py pred=pred_seg.nii.gz ref=aseg.nii.gz ref_labels=aseg output=DIR
    python evaluate.py mode=structures pred=out/t1_seg.nii.gz ref=aseg.nii.gz output=DIR
    python evaluate.py mode=quality pred=SYNTHETIC_DIR ref=REAL_DIR output=DIR [mask=LABEL_DIR]

Segmentation mode writes ``summary.json`` (per case, per-class mean, foreground mean: nnU-Net's
layout, see :mod:`synthseg_lite.evaluation.metrics` for the empty-class policy), ``metrics.csv``,
``boxplots.png`` and ``confusion.png``; structures mode (FreeSurfer aseg values on both sides,
per structure, :mod:`synthseg_lite.evaluation.structure_metrics`) ``summary.json``, ``metrics.csv``,
``confusion.csv``, ``structures_boxplot.png`` and ``structures_confusion.png`` (and logs where the
weakest structures' errors went); quality mode writes ``quality_summary.json``,
``quality.csv`` and ``histograms.png`` (:mod:`synthseg_lite.evaluation.quality`). Hydra's log and config go
to ``output`` too. Exit codes: 0 done, 1 some cases skipped, 2 bad arguments.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from synthseg_lite.commands.common import hydra_main, require, user_errors
from synthseg_lite.commands.common import option_rows, register_help, with_version
from synthseg_lite.evaluation.metrics import evaluate_pairs, label_mapping, write_report
from synthseg_lite.evaluation.pairing import DEFAULT_PATTERN, pair_cases
from synthseg_lite.evaluation.quality import evaluate_quality
from synthseg_lite.evaluation.structure_metrics import (
    describe_errors,
    evaluate_structures,
    write_structure_report,
)

log = logging.getLogger("evaluate")

#: Structures mode logs where the errors of this many lowest-Dice structures went.
WORST_LOGGED = 3


@dataclass
class EvaluateConfig:
    """``evaluate.py`` arguments (the only place their defaults live).

    Attributes:
        mode: ``segmentation`` (classes through ``ref_labels`` / ``pred_labels``), ``structures``
            (SynthSeg's 31 structures, both sides in FreeSurfer aseg values; the label options
            are not used) or ``quality`` (synthetic vs real images).
        pred: predictions (segmentation mode) or synthetic images (quality mode): a file or a
            folder, searched recursively.
        ref: references (segmentation mode) or real images (quality mode): a file or a folder.
        output: output folder.
        ref_labels: label convention of the references: ``tissue``, ``ibsr``, ``aseg``
            (FreeSurfer -> tissue, CSF with label 24), ``aseg_ventricular`` (CSF = ventricles
            only, as the ``tissue_ventricular`` models predict) or a mapping ``{value: class}``
            (e.g. ``'{1:3,2:1,3:2}'``).
        pred_labels: label convention of the predictions (``aseg_ventricular`` gives the tissue
            view of a structure model's aseg values).
        pred_pattern: regex on the file name without suffix; group ``id`` pairs cases (None:
            pairing by layout, see :mod:`synthseg_lite.evaluation.pairing`, in segmentation and structures
            modes; ``(?P<id>.+)`` in quality mode).
        ref_pattern: the same for references / real images.
        surface: compute HD95 / HD / ASSD (segmentation mode).
        resample_pred: a prediction on another grid than its reference (``infer.py
            output_mm=1`` of a thick-slice scan) is taken onto the reference's grid by nearest
            neighbour in world coordinates and scored there (segmentation and structures
            modes); false: another grid skips the case with its reason.
        plots: write the PNG figures (segmentation mode).
        mask: quality mode: label maps (file or folder) whose non-zero voxels are the brain;
            None: the real image's non-zero voxels.
        mask_pattern: pairs mask files by case id.
        bins: quality mode: histogram bins.
    """

    mode: str = "segmentation"
    pred: str = MISSING
    ref: str = MISSING
    output: str = MISSING
    ref_labels: Any = "tissue"
    pred_labels: Any = "tissue"
    pred_pattern: str | None = None
    ref_pattern: str | None = None
    surface: bool = True
    resample_pred: bool = False
    plots: bool = True
    mask: str | None = None
    mask_pattern: str = DEFAULT_PATTERN
    bins: int = 64


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
register_help("synthseg-lite-evaluate", __doc__, option_rows(EvaluateConfig))


def run(cfg: EvaluateConfig) -> int:
    """Evaluate; returns the exit code (1 when some cases were skipped).

    Raises:
        ValueError: bad arguments or nothing could be evaluated.
    """
    if cfg.mode == "quality":
        summary = evaluate_quality(
            cfg.pred,
            cfg.ref,
            cfg.output,
            cfg.pred_pattern or r"(?P<id>.+)",
            cfg.ref_pattern or r"(?P<id>.+)",
            cfg.mask,
            cfg.mask_pattern,
            cfg.bins,
        )
        log.info(
            "%d case(s): %s",
            summary["n_cases"],
            ", ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items()),
        )
    elif cfg.mode == "structures":
        pairs = pair_cases(cfg.pred, cfg.ref, cfg.pred_pattern, cfg.ref_pattern)
        summary = evaluate_structures(pairs, cfg.surface, cfg.resample_pred)
        files = write_structure_report(summary, cfg.output, cfg.plots)
        for group, m in summary["group_mean"].items():
            log.info("%-22s Dice %.3f  HD95 %.2f mm", group, m["Dice"], m["HD95"])
        m = summary["structure_mean"]
        log.info(
            "mean over %d structures: Dice %.3f  HD95 %.2f mm  ASSD %.2f mm",
            summary["n_structures_scored"],
            m["Dice"],
            m["HD95"],
            m["ASSD"],
        )
        scored = {v: m["Dice"] for v, m in summary["mean"].items() if not np.isnan(m["Dice"])}
        for v in sorted(scored, key=scored.get)[:WORST_LOGGED]:
            log.info("weakest: %s Dice %.3f: %s", summary["structures"][v], scored[v],
                     describe_errors(summary["errors"][v]))
        if summary["not_scored"]:
            log.warning(
                "not in any reference (not averaged): %s", ", ".join(summary["not_scored"])
            )
        log.info("%d case(s) -> %s", summary["n_cases"], files["summary"])
    elif cfg.mode == "segmentation":
        (
            label_mapping(cfg.pred_labels),
            label_mapping(cfg.ref_labels),
        )  # fail on bad presets before any work
        pairs = pair_cases(cfg.pred, cfg.ref, cfg.pred_pattern, cfg.ref_pattern)
        summary = evaluate_pairs(
            pairs, cfg.pred_labels, cfg.ref_labels, cfg.surface, cfg.resample_pred
        )
        files = write_report(summary, cfg.output, cfg.plots)
        names = summary["class_names"]
        for k, m in summary["mean"].items():
            log.info(
                "%-10s Dice %.3f  HD95 %.2f mm  ASSD %.2f mm",
                names[k],
                m["Dice"],
                m["HD95"],
                m["ASSD"],
            )
        log.info("%d case(s) -> %s", summary["n_cases"], files["summary"])
    else:
        raise ValueError(
            f"mode must be 'segmentation', 'structures' or 'quality', got {cfg.mode!r}"
        )
    for s in summary["skipped"]:
        log.error("skipped %s: %s", s["case"], s["reason"])
    return 1 if summary["skipped"] else 0


@with_version("synthseg-lite-evaluate")
@hydra_main(config_path="../conf/cli", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    require(OmegaConf.missing_keys(cfg))
    sys.exit(user_errors(lambda: run(OmegaConf.to_object(cfg))))


if __name__ == "__main__":
    main()
