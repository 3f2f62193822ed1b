"""Segment brain MRI scans with a trained synthseg_lite model (fold ensemble, test-time augmentation).

    python infer.py input=SCAN_OR_FOLDER_OR_GLOB output=DIR [model=RUN_DIR_OR_CKPT] [tta=none] ...

Every option is a field of :class:`synthseg_lite.inference.InferenceOptions` (``python infer.py
--cfg job`` prints them). Outputs go to ``output``, with Hydra's log (``infer.log``) and the
resolved config (``.hydra/``). Exit codes: 0 all scans segmented, 1 some scans skipped (one line
each on stderr), 2 bad arguments.

A study split over several jobs (``-m num_parts=8 'part_id=range(8)'``, with
``hydra/launcher=slurm`` on a cluster) writes one output folder and one merged ``volumes.csv``;
``report.html`` is rebuilt when the multirun ends, or by ``output=DIR report_only=true``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

from synthseg_lite.commands.common import hydra_main, require, until_interrupted, user_errors
from synthseg_lite.commands.common import (
    config_groups,
    option_rows,
    register_help,
    with_version,
)
from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference.record import (
    OwnedLogHandler,
    StudyLease,
    StudyRecord,
    check_study_files,
)

log = logging.getLogger("infer")


@dataclass
class InferConfig(InferenceOptions):
    """``infer.py`` arguments: the inference options plus what to segment, where, with what.

    Attributes:
        input: a scan, a folder of scans, a glob pattern, or a list of them.
        output: output folder.
        model: ``tissue`` (GM, WM, ventricular CSF, from the structure network),
            ``tissue_fast`` (GM, WM, CSF from the dedicated tissue network: about 2.6x faster,
            less accurate) or ``structures`` (SynthSeg's structures): a model shipped in the
            package; or a run directory with fold checkpoints, a ``.ckpt`` or a ``.pt`` file.
            None: ``tissue``.
        report_only: segment nothing: rebuild ``report.html`` from the ``volumes.csv`` of
            ``output`` (after the parts of a study ran as separate jobs); ``input`` not needed.
    """

    input: Any = MISSING
    output: str = MISSING
    model: str | None = None
    report_only: bool = False


ConfigStore.instance().store(name="infer_schema", node=InferConfig)
register_help(
    "synthseg-lite-infer", __doc__, option_rows(InferConfig),
    groups=config_groups(Path(__file__).parents[1] / "conf" / "scaling", exclude=()),
)


def study_qc_threshold(qc_threshold: float | None, model: str | None) -> float:
    """``qc_threshold=`` as given, else the model's own (an ensemble: its members' lowest; 0.70
    for a model without one), as the segmenting run used it."""
    if qc_threshold is not None:
        return float(qc_threshold)
    from synthseg_lite.inference.predictor import find_checkpoints, resolve_model
    from synthseg_lite.inference.segment import QC_THRESHOLD
    from synthseg_lite.model.artifact import ensemble_qc_threshold, read_meta

    files = find_checkpoints(resolve_model(model))
    return ensemble_qc_threshold(read_meta(files[0]), files[1:], QC_THRESHOLD)


def rebuild_report(output: str | Path, qc_threshold: float) -> Path:
    """Write ``report.html`` beside the study's ``volumes.csv`` in ``output`` (or in its
    ``derivatives/synthseg_lite`` for a BIDS study); returns the page's path.

    Raises:
        ValueError: no ``volumes.csv`` there.
    """
    from synthseg_lite.inference.pipeline import VOLUMES_CSV
    from synthseg_lite.inference.outputs import DERIVATIVES
    from synthseg_lite.inference.report import write_report

    output = Path(output)
    for root in (output, output / DERIVATIVES):
        if (root / VOLUMES_CSV).is_file():
            # the study's lock (no part still writing) and record (the page is the tool's own)
            with StudyLease(root), StudyRecord(root):
                check_study_files([root / VOLUMES_CSV, root / "report.html"])
                return write_report(root, qc_threshold)
    raise ValueError(
        f"report_only: no {VOLUMES_CSV} in {output} or {output / DERIVATIVES} (segment first)"
    )


class StudyReport(Callback):
    """Hydra callback: when a multirun ends (every part of a study done, e.g. all jobs of a
    SLURM array), ``report.html`` is rebuilt from the merged ``volumes.csv``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        output = OmegaConf.select(config, "output", default=None)
        if config.get("report_only") or not config.get("report") or output in (None, MISSING):
            return
        try:
            path = rebuild_report(
                output, study_qc_threshold(config.qc_threshold, config.get("model"))
            )
        except ValueError as exc:  # no part wrote a row
            log.warning("%s", exc)
            return
        log.info("report of all parts -> %s", path)


@with_version("synthseg-lite-infer")
@hydra_main(config_path="../conf/cli", config_name="infer")
def main(cfg: DictConfig) -> None:
    missing = OmegaConf.missing_keys(cfg)
    require(missing - {"input"} if cfg.report_only else missing)
    if OwnedLogHandler.refused is not None:  # a user's infer.log: Hydra's log went nowhere
        user_errors(lambda: check_study_files([OwnedLogHandler.refused]))
    if cfg.report_only:
        path = user_errors(lambda: rebuild_report(
            cfg.output, study_qc_threshold(cfg.qc_threshold, cfg.model)
        ))
        log.info("report -> %s", path)
        return
    args = OmegaConf.to_container(cfg, resolve=True)
    inputs = args["input"] if isinstance(args["input"], list) else str(args["input"])
    opts = user_errors(
        lambda: InferenceOptions(**{f.name: args[f.name] for f in fields(InferenceOptions)})
    )
    results = until_interrupted(
        lambda: user_errors(lambda: segment_scans(inputs, args["output"], args["model"], opts)),
        f"the scans finished so far are kept in {args['output']}; the same command goes on "
        "from there",
    )
    done = [r for r in results if r.error is None and not r.done]
    skipped = [r for r in results if r.error is not None]
    kept = len(results) - len(done) - len(skipped)
    if kept:
        log.info("kept the outputs of %d scan(s) segmented before (overwrite=true to redo)", kept)
    if done:
        log.info(
            "segmented %d scan(s) in %.1f s per scan on average -> %s",
            len(done),
            sum(r.seconds for r in done) / len(done),
            args["output"],
        )
    if skipped:
        log.error("skipped %d of %d scan(s):", len(skipped), len(results))
        for r in skipped:
            log.error("  %s", r.error)
    if skipped or getattr(results, "problems", None):
        sys.exit(1)


if __name__ == "__main__":
    main()
