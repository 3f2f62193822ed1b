"""``python -m synthseg_lite.commands.artifact``: convert a training checkpoint (or a model file) to
a model file (:mod:`synthseg_lite.model.artifact`: weights, topology, label table, no pickled
code), optionally in float16 or int8, with extra metadata (the training command, ...), and
optionally interpolated with the model it was fine-tuned from (``--interpolate BASE WEIGHT``,
WiSE-FT: :func:`~synthseg_lite.model.artifact.interpolate_weights`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from synthseg_lite.commands.common import fail
from synthseg_lite.inference.predictor import resolve_model
from synthseg_lite.model.artifact import PRECISIONS, interpolate_weights, load_model, save_model

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """``python -m synthseg_lite.commands.artifact CHECKPOINT OUT.pt [--precision int8]
    [--extra KEY=VALUE ...] [--interpolate BASE WEIGHT]``."""
    parser = argparse.ArgumentParser(description="Convert a training checkpoint to a model file.")
    parser.add_argument("checkpoint", help="training checkpoint (.ckpt) or model file (.pt)")
    parser.add_argument("output", help="model file to write (.pt); must not exist")
    parser.add_argument("--precision", choices=PRECISIONS, default="float16")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stored in the model's metadata (e.g. the training command); repeatable",
    )
    parser.add_argument(
        "--interpolate",
        nargs=2,
        metavar=("BASE", "WEIGHT"),
        help="write (1 - WEIGHT) x BASE + WEIGHT x CHECKPOINT (BASE: the model file, .ckpt or "
        "shipped name the checkpoint was fine-tuned from; WEIGHT in [0, 1]); the metadata is "
        "the checkpoint's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = Path(args.output)
        if out.exists():
            raise ValueError(f"{out} exists; not overwritten")
        net, meta = load_model(args.checkpoint)
        if args.interpolate:
            base_path, weight = args.interpolate
            try:
                w = float(weight)
            except ValueError:
                raise ValueError(f"--interpolate weight must be a number, got {weight!r}") from None
            base, _ = load_model(resolve_model(base_path))
            net = interpolate_weights(base, net, w)
            meta.extra["interpolated"] = f"{1 - w:g} x {base_path} + {w:g} x {args.checkpoint}"
        for item in args.extra:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--extra {item!r}: expected KEY=VALUE")
            meta.extra[key] = value
        save_model(out, net, meta, args.precision)
    except ValueError as exc:
        fail(exc)
    log.info(
        "%s -> %s (%s, %.2f MiB)", args.checkpoint, out, args.precision, out.stat().st_size / 2**20
    )


if __name__ == "__main__":
    main()
