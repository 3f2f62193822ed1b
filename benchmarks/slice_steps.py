"""Speed of a slice (2D) preset's training step at several sizes: how large a step fills a GPU.

The structure recipe's CPU-sized step (2 volumes, 8 slices) ran at 21.7 steps/s on an H200, about
700 slices/s with the chip mostly idle: at that size kernel launches, not arithmetic, set the
pace. This measures, for each ``--slices`` (slices per step) and ``--volumes`` (volumes of the
preset's patch, 160^3 for ``structures_gpu``, synthesised per step), real training steps of the
preset as ``train.py`` builds it (``benchmarks.gpu_steps.train_steps``): s/step, steps/s,
slices/s and the generator's share.

    python -m benchmarks.slice_steps --device cuda --experiment structures_gpu \
        --label-maps '../shared/data/label_maps/*.nii.gz' --slices 32 128 256 512 --volumes 8
    python -m benchmarks.slice_steps --device cpu --tiny            # seconds (used by the tests)

One JSON line per size on stdout (and appended to ``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.gpu_steps import Settings, train_steps

log = logging.getLogger("slice_steps")

#: --tiny: a 3-stage 4-16 feature U-Net on 48^3 volumes at 2 mm from 64^3 phantoms
TINY = [
    "model.unet.n_stages=3",
    "model.unet.base_features=4",
    "model.unet.max_features=16",
    "model.unet.deep_supr_num=1",  # a 3D preset's deep supervision on 3 stages
    "synth.voxel_mm=2.0",
    "synth.patch_shape=[48,48,48]",
    "data.phantoms.n=5",
    "data.phantoms.shape=[64,64,64]",
]


def measure(
    device: str,
    experiment: str,
    slices: int,
    volumes: int,
    precision: str,
    steps: int,
    warmup: int,
    extra: list[str],
    seed: int = 0,
    gpu_memory_gb: float | None = None,
) -> dict[str, Any]:
    """Real training steps of ``experiment`` at one size (from scratch, no validation); with
    ``gpu_memory_gb``, the patch planned for that budget (a 3D preset's, as ``train.py`` plans it)."""
    overrides = [
        f"experiment={experiment}",
        "init_weights=null",
        "fold=all",
        f"model.slices.per_step={slices}",
        f"data.batch_size={volumes}",
        "data.reuse_steps=1",
        "~callbacks.periodic",  # the preset's step checkpoints (no checkpoints in a measurement)
        *extra,
    ]
    s = Settings(device=device, cap_memory=False, seed=seed, overrides=overrides)
    run = train_steps(s, gpu_memory_gb, precision, steps, warmup)
    sec = run["s_per_step"]
    return {
        "experiment": experiment,
        "device": device,
        "precision": run["precision"],
        "slices_per_step": slices,
        "volumes_per_step": volumes,
        "patch_size": run["patch_size"],
        "steps": run["steps"],
        "s_per_step": sec,
        "steps_per_s": round(1 / sec, 3) if sec > 0 else None,
        "slices_per_s": round(slices / sec, 1) if sec > 0 else None,
        "synth_share_of_step": run["synth_share_of_step"],
        "losses_first_last": run["losses_first_last"],
        **{k: v for k, v in run.items() if k.startswith("peak_") and k.endswith("_gb")},
        "params_m": run["params_m"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--experiment", default="structures_gpu",
                   help="a slice preset, or structures_3d (--slices is then ignored: use one)")
    p.add_argument("--label-maps", help="glob of training label maps (default: the phantoms)")
    p.add_argument("--slices", type=int, nargs="+", default=[32, 128, 256, 512])
    p.add_argument("--volumes", type=int, nargs="+", default=[8])
    p.add_argument("--precision", help="Lightning precision (default bf16-mixed; CPU 32-true)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per size")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps per size")
    p.add_argument("--tiny", action="store_true", help="small network and volumes (seconds)")
    p.add_argument("--output", type=Path, help="append the JSON lines to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory-gb", type=float,
                   help="plan the patch for this budget as train.py does (default: the preset's)")
    args = p.parse_args(argv)
    if min(args.slices) < 1 or min(args.volumes) < 1 or args.steps < 2 or args.warmup < 0:
        p.error("--slices and --volumes must be >= 1, --steps >= 2, --warmup >= 0")
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        p.error("--gpu-memory-gb must be > 0")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    precision = args.precision or ("32-true" if args.device == "cpu" else "bf16-mixed")
    extra = list(TINY) if args.tiny else []
    if args.label_maps:
        extra.append(f"data.label_maps={args.label_maps}")
    lines = []
    for volumes in args.volumes:
        for slices in args.slices:
            try:
                rec = measure(args.device, args.experiment, slices, volumes, precision,
                              args.steps, args.warmup, extra, args.seed, args.gpu_memory_gb)
            except Exception as exc:  # one size out of memory does not stop the others
                rec = {"slices_per_step": slices, "volumes_per_step": volumes,
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            line = json.dumps(rec)
            print(line, flush=True)
            if args.output:
                with open(args.output, "a") as f:
                    f.write(line + "\n")
            lines.append(rec)
    return lines


if __name__ == "__main__":
    main()
