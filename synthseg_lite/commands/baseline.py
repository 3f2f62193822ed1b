"""``python -m synthseg_lite.commands.baseline``: segment scans with the classical 3-class
Gaussian-mixture baseline (:func:`synthseg_lite.evaluation.baseline.gmm_tissue`); writes
``<name>_seg.nii.gz`` per scan.

    python -m synthseg_lite.commands.baseline ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output base/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from synthseg_lite.evaluation.baseline import gmm_tissue
from synthseg_lite.io import load_volume, save_volume, strip_suffix

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """CLI: segment scans with the mixture baseline; writes ``<name>_seg.nii.gz`` per scan."""
    parser = argparse.ArgumentParser(
        prog="python -m synthseg_lite.commands.baseline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("scans", nargs="+", help="NIfTI/MGZ scans (skull-stripped unless --mask-threshold)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--mask-threshold", type=float, default=0.0,
                        help="brain mask = intensity > this (default 0: skull-stripped scans)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    out, failed = Path(args.output), 0
    for scan in args.scans:
        try:
            vol = load_volume(scan, canonical=False, nan="fill")
            seg = gmm_tissue(vol.data, vol.data > args.mask_threshold)
            save_volume(seg, vol.affine, out / f"{strip_suffix(scan)}_seg.nii.gz")
            log.info("%s: done", scan)
        except ValueError as exc:
            log.error("skipped %s", str(exc).splitlines()[0])
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
