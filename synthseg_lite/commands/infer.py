"""Segment brain MRI scans with a trained synthseg_lite model (fold ensemble, test-time augmentation).

    python infer.py input=SCAN_OR_FOLDER_OR_GLOB output=DIR [model=RUN_DIR_OR_CKPT] [tta=none] ...

Every option is a field of :class:`synthseg_lite.inference.InferenceOptions` (``python infer.py
--cfg job`` prints them). Outputs go to ``output``, with Hydra's log (``infer.log``) and the
resolved config (``.hydra/``). Exit codes: 0 all scans segmented, 1 some scans skipped (one line
each on stderr), 2 bad arguments.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from synthseg_lite.cli import hydra_main, require, user_errors
from synthseg_lite.commands.common import option_rows, register_help, with_version
from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference.record import OwnedLogHandler, check_study_files

log = logging.getLogger("infer")


@dataclass
class InferConfig(InferenceOptions):
    """``infer.py`` arguments: the inference options plus what to segment, where, with what.

    Attributes:
        input: a scan, a folder of scans, a glob pattern, or a list of them.
        output: output folder.
        model: ``tissue`` (GM, WM, ventricular CSF) or ``structures`` (SynthSeg's structures):
            a model shipped in the package; or a run directory with fold checkpoints, a ``.ckpt``
            or a ``.pt`` file. None: ``tissue``.
    """

    input: Any = MISSING
    output: str = MISSING
    model: str | None = None


ConfigStore.instance().store(name="infer_schema", node=InferConfig)
register_help("synthseg-lite-infer", __doc__, option_rows(InferConfig))


@with_version("synthseg-lite-infer")
@hydra_main(config_path="../conf/cli", config_name="infer")
def main(cfg: DictConfig) -> None:
    require(OmegaConf.missing_keys(cfg))
    if OwnedLogHandler.refused is not None:  # a user's infer.log: Hydra's log went nowhere
        user_errors(lambda: check_study_files([OwnedLogHandler.refused]))
    args = OmegaConf.to_container(cfg, resolve=True)
    inputs = args["input"] if isinstance(args["input"], list) else str(args["input"])
    results = user_errors(lambda: segment_scans(
        inputs, args["output"], args["model"],
        InferenceOptions(**{f.name: args[f.name] for f in fields(InferenceOptions)})))
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
