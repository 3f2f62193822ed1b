"""``docs/rim.png``: one synthetic sample without and with the partial-volume rim (``synth.rim``).

A T1-like sample (tissue prior, no warp, bias, gamma, flip or low-resolution step, class spread
3) of a training label map, drawn twice from the same parameters, the second time with every rim
voxel at ``a = 0.8``; a coronal slice through the most lateral ventricle, cropped around it::

    python benchmarks/rim_figure.py --label-map ../shared/data/label_maps/<first map>.nii.gz \
        --output docs/rim.png
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from synthseg_lite.io import read_image
from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import GMMConfig, ResolutionConfig, RimConfig, SpatialConfig

log = logging.getLogger(__name__)


def rim_pair(label_map: Path, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(without, with, lateral-ventricle mask) coronal crops, (W, H) arrays, from a map in
    FreeSurfer's conformed LIA voxel order."""
    table = LabelTable.create("synthseg_fs")
    lab = np.asarray(read_image(label_map).dataobj).astype(np.int64)
    maps = torch.from_numpy(table.encode(lab).astype(np.uint8))[None, None]
    cfg = SynthConfig(patch_shape=[160, 160, 160], spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      gmm=GMMConfig(prior_prob=1.0, std=[3.0, 3.0]),
                      resolution=ResolutionConfig(enabled=False), rim=RimConfig(prob=1.0, fraction=[0.8, 0.8]))
    gen = SynthGenerator(cfg, table)
    p = gen.sample(maps, make_generator("cpu", seed, 0))
    p = dataclasses.replace(p, flip=torch.zeros_like(p.flip), strip=torch.ones_like(p.strip),
                            bias=torch.zeros_like(p.bias), log_gamma=torch.zeros_like(p.log_gamma))
    with_rim = gen.apply(maps, p)
    without = gen.apply(maps, dataclasses.replace(p, rim_fraction=torch.zeros_like(p.rim_fraction)))
    lv = [table.generation_labels.index(v) for v in (4, 43)]
    vent = torch.isin(with_rim.labels[0, 0].long(), torch.tensor(lv))
    z = int(vent.sum((0, 1)).argmax())  # LIA: axis 2 is anterior, a slice across it is coronal
    xs, ys = vent[:, :, z].nonzero(as_tuple=True)
    box = (slice(max(int(xs.min()) - 12, 0), int(xs.max()) + 12),
           slice(max(int(ys.min()) - 12, 0), int(ys.max()) + 12))
    return (without.image[0, 0, :, :, z][box].numpy(), with_rim.image[0, 0, :, :, z][box].numpy(),
            vent[:, :, z][box].numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label-map", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="PNG file (new)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.output.exists():
        raise SystemExit(f"error: {args.output} exists; not overwritten")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    without, with_rim, vent = rim_pair(args.label_map)
    diff = without - with_rim
    lim = float(np.abs(diff).max())
    fig, ax = plt.subplots(1, 3, figsize=(10.5, 3.4))
    for k, (im, title) in enumerate(zip((without, with_rim, diff),
                                        ("without the rim", "with the rim (a = 0.8)", "difference"))):
        ax[k].imshow(im.T, cmap="gray", interpolation="nearest", vmin=0 if k < 2 else -lim,
                     vmax=1 if k < 2 else lim)
        if k < 2:
            ax[k].contour(vent.T.astype(float), levels=[0.5], colors="orange", linewidths=0.7)
        ax[k].set_title(title, fontsize=10)
        ax[k].axis("off")
    fig.suptitle("synth.rim: the voxels just outside a ventricle's label (orange) take part of the "
                 "fluid's intensity; the labels do not change", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
