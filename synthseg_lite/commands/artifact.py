"""``python -m synthseg_lite.commands.artifact``: convert a training checkpoint (or a model file) to
a model file (:mod:`synthseg_lite.model.artifact`: weights, topology, label table, no pickled
code), optionally in float16 or int8 and with extra metadata (the training command, ...).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from synthseg_lite.commands.common import fail
from synthseg_lite.model.artifact import PRECISIONS, load_model, save_model

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """``python -m synthseg_lite.commands.artifact CHECKPOINT OUT.pt [--precision int8]
    [--extra KEY=VALUE ...]``."""
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = Path(args.output)
        if out.exists():
            raise ValueError(f"{out} exists; not overwritten")
        net, meta = load_model(args.checkpoint)
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
