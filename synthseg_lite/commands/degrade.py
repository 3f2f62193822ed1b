"""``python -m synthseg_lite.commands.degrade``: degraded copies of real scans (inverted contrast
inside the brain, FLAIR- or PD-like contrast, thick slices, or a bias field), on the same grid so
their references still apply.

    python -m synthseg_lite.commands.degrade ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output inv --invert
    python -m synthseg_lite.commands.degrade ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output 5mm \
        --slice-mm 5
    python -m synthseg_lite.commands.degrade t1.nii.gz --output 5mm_file --slice-mm 5 --slab-grid
    python -m synthseg_lite.commands.degrade t1.nii.gz --output axial5 --slice-mm 5 --plane axial
    python -m synthseg_lite.commands.degrade t1.nii.gz --output flair --contrast flair
    python -m synthseg_lite.commands.degrade t1.nii.gz --output bias --bias 0.3

The work is :func:`synthseg_lite.evaluation.degrade.degrade_scans`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from synthseg_lite.commands.common import user_errors
from synthseg_lite.evaluation.degrade import CONTRASTS, PLANES, degrade_scans

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """CLI: write degraded copies of scans; bad input: one ``error:`` line, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m synthseg_lite.commands.degrade",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("scans", nargs="+", help="NIfTI/MGZ scans (skull-stripped for --invert)")
    parser.add_argument("--output", required=True, help="output folder; files keep their names")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--invert", action="store_true",
                      help="mirror intensities inside the brain (T2-like)")
    kind.add_argument("--slice-mm", type=float, metavar="MM",
                      help="simulate slices this thick (mm)")
    kind.add_argument("--contrast", choices=sorted(CONTRASTS),
                      help="remap a skull-stripped T1 to a FLAIR- or PD-like contrast "
                           "(non-monotonic, through its three tissue modes)")
    kind.add_argument("--bias", type=float, metavar="S",
                      help="multiply by a smooth random bias field within [1/(1+S), 1+S] "
                           "(an uncorrected scan; 0.3: a 1.69x brightest-to-darkest ratio)")
    parser.add_argument("--axis", type=int, metavar="N",
                        help="voxel axis of the thick slices (default: largest spacing)")
    parser.add_argument("--plane", choices=sorted(PLANES),
                        help="instead of --axis: anatomical plane of the thick slices, whatever "
                             "the scan's voxel order (axial: stacked inferior-superior)")
    parser.add_argument("--slab-grid", action="store_true",
                        help="with --slice-mm: write the slices on their own grid (a real "
                             "low-resolution file) instead of interpolated back")
    parser.add_argument("--seed", type=int,
                        help="with --bias: the field's seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    user_errors(lambda: degrade_scans(args.scans, args.output, invert=args.invert,
                                      slice_mm=args.slice_mm, axis=args.axis,
                                      slab_grid=args.slab_grid, overwrite=args.overwrite,
                                      contrast=args.contrast, plane=args.plane,
                                      bias=args.bias, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
