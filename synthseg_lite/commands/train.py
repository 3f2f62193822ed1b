"""Train a segmentation network from label maps alone (synthesis on the training device).

    python train.py fold=0                      # nnU-Net-size job for one 12 GB GPU
    python train.py -m fold=0,1,2,3,4           # 5-fold cross-validation, one directory per fold
    python train.py -m hydra/launcher=slurm fold=0,1,2,3,4   # the same as one SLURM job array
    python train.py experiment=cpu              # small 2 mm model for a CPU
    python train.py data.label_maps='../shared/data/label_maps/*.nii.gz' data/real_val=ibsr
    python train.py resume=outputs/train/runs/<run>/checkpoints/last.ckpt

The only place a Hydra DictConfig lives: it is turned into typed objects here.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synthseg_lite.commands.common import hydra_main, user_errors
from synthseg_lite.commands.common import (
    config_groups,
    option_rows,
    register_help,
    with_version,
    yaml_key_docs,
)
from synthseg_lite.data import DataConfig
from synthseg_lite.runtime import set_threads
from synthseg_lite.model.module import ModelConfig
from synthseg_lite.model.real_validation import structure_lut
from synthseg_lite.synth.config import SynthConfig

log = logging.getLogger("train")


def build(cfg: DictConfig):
    """Typed objects of a run: (datamodule, module, trainer). Plans patch/batch and writes the
    planned values back into ``cfg`` so the stored configuration is the one that ran."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from synthseg_lite.data import SynthDataModule, make_label_table
    from synthseg_lite.model.module import SynthSegModule
    from synthseg_lite.model.unet import UNetConfig
    from synthseg_lite.training import (
        AtomicCheckpointIO,
        InterruptNote,
        check_accelerator,
        check_optimizer,
        check_trainer_args,
        plan_guard,
    )

    check_accelerator(cfg.trainer.accelerator)
    check_trainer_args(cfg.trainer)
    optimizer = instantiate(cfg.model.optimizer)
    check_optimizer(optimizer)
    if cfg.trainer.accelerator == "cpu" and str(cfg.trainer.precision).startswith("16"):
        log.warning("fp16 mixed precision is CUDA-only: training in float32 on the CPU")
        cfg.trainer.precision = "32-true"
    set_threads(cfg.get("threads"))
    pl.seed_everything(int(cfg.seed), workers=True)
    data_cfg = OmegaConf.to_object(cfg.data)
    synth_cfg = OmegaConf.to_object(cfg.synth)
    model_cfg = OmegaConf.to_object(cfg.model)
    table = make_label_table(data_cfg)
    out_dir = Path(cfg.paths.output_dir)
    dm = SynthDataModule(
        data_cfg,
        table,
        cfg.fold,
        batch_size=1,
        seed=int(cfg.seed),
        spacing_mm=synth_cfg.voxel_mm,
        splits_path=out_dir / "splits.json",
    )
    _, maps = dm.load_maps()
    plan, record = plan_for(cfg, table, maps.shape[1:])
    cfg.synth.patch_shape, cfg.data.batch_size = list(plan.patch_size), plan.batch_size
    synth_cfg.patch_shape, dm.batch_size = list(plan.patch_size), plan.batch_size
    guard = plan_guard(  # memory figures at the first step; smaller plan if it runs out
        plan,
        cfg.gpu_memory_gb,
        UNetConfig(**OmegaConf.to_container(cfg.model.unet)),
        table.target.n_classes,
        maps.shape[1:],
        synth_cfg.voxel_mm,
        synth_cfg.partial_volume_factor,
        out_dir / "plan.json",
    )
    guard.fake = record
    sched = cfg.model.scheduler
    module = SynthSegModule(
        model_cfg,
        table,
        synth_cfg,
        optimizer=optimizer,
        scheduler=instantiate(sched) if sched is not None else None,
        seed=int(cfg.seed),
        real_val_names=[s.name for s in data_cfg.real_val],
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    metrics = {"val/dice", "val/loss", *(f"val/dice_{n}" for n in table.target.names[1:])}
    structures = structure_lut(table.target) is not None
    for s in data_cfg.real_val:
        metrics |= {
            f"val_real/{s.name}/dice",
            *(f"val_real/{s.name}/dice_{n}" for n in ("GM", "WM", "CSF")),
        }
        if structures and s.reference_preset == "aseg":  # per-structure validation
            metrics.add(f"val_real/{s.name}/structure_mean")
    for name, c in (cfg.get("callbacks") or {}).items():
        if c and c.get("monitor") and c.monitor not in metrics:
            raise ValueError(
                f"callbacks.{name}.monitor={c.monitor} is not logged; choose from {sorted(metrics)}"
            )
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c
    ]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    if not loggers:  # nothing to report the learning rate to
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, guard, InterruptNote()],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    return dm, module, trainer


def plan_for(cfg: DictConfig, table, map_shape) -> tuple:
    """The run's (plan, record): measured on a fake training step for ``gpu_memory_gb``
    (:mod:`synthseg_lite.training.plan_measure`), or the sizes as given (record None)."""
    from hydra.utils import instantiate

    from synthseg_lite.training.memory import StepJob
    from synthseg_lite.training.plan_measure import plan_measured
    from synthseg_lite.model.unet import UNetConfig
    from synthseg_lite.training import check_optimizer, plan_sizes

    synth_cfg, model_cfg = OmegaConf.to_object(cfg.synth), OmegaConf.to_object(cfg.model)
    unet = UNetConfig(**OmegaConf.to_container(cfg.model.unet))
    if cfg.gpu_memory_gb is None:
        args = (unet, table.target.n_classes, list(synth_cfg.patch_shape), cfg.data.batch_size)
        return plan_sizes(None, *args, tuple(map_shape), synth_cfg.voxel_mm), None
    acc = str(cfg.trainer.accelerator).lower()
    cuda = acc in ("gpu", "cuda") or (acc == "auto" and __import__("torch").cuda.is_available())
    optimizer = instantiate(cfg.model.optimizer)
    check_optimizer(optimizer)
    job = StepJob(unet, table.target.n_classes, synth_cfg, table, tuple(map_shape),
                  model_cfg.loss, optimizer, str(cfg.trainer.precision),
                  cfg.trainer.get("gradient_clip_val"), "cuda" if cuda else "cpu")
    plan, record = plan_measured(float(cfg.gpu_memory_gb), job, list(synth_cfg.patch_shape),
                                 cfg.data.batch_size)
    log.info("planned for %.1f GB (%s): patch %s, batch %d (%.2f GB with allowance)",
             cfg.gpu_memory_gb, record["method"], list(plan.patch_size), plan.batch_size,
             plan.estimated_gb)
    return plan, record


def plan_only(cfg: DictConfig) -> None:
    """``plan_only=true``: print the plan's JSON line (measured peak by kind, allowance, formula,
    seconds) and stop; nothing trains."""
    import json
    import sys

    from synthseg_lite.data import SynthDataModule, make_label_table

    set_threads(cfg.get("threads"))
    data_cfg = OmegaConf.to_object(cfg.data)
    table = make_label_table(data_cfg)
    dm = SynthDataModule(data_cfg, table, cfg.fold, batch_size=1, seed=int(cfg.seed),
                         spacing_mm=float(cfg.synth.voxel_mm),
                         splits_path=Path(cfg.paths.output_dir) / "splits.json")
    _, maps = dm.load_maps()
    plan, record = plan_for(cfg, table, maps.shape[1:])
    record = record or {"method": "given", "patch_size": list(plan.patch_size),
                        "batch_size": plan.batch_size}
    sys.stdout.write(json.dumps(record) + "\n")


def run(cfg: DictConfig) -> float | None:
    """Train; returns the best value of the monitored metric (for sweepers)."""
    from synthseg_lite.training.planning import Plan
    from synthseg_lite.training.start import (
        check_resume_compatible,
        config_differences,
        init_weights,
        read_resume,
    )
    from synthseg_lite.training import fit_with_oom_fallback

    if cfg.get("plan_only"):
        return plan_only(cfg)
    if cfg.resume:
        info = read_resume(cfg.resume)
        if int(cfg.seed) != info["seed"]:
            log.warning(
                "resume: using the checkpoint's seed %d (config has %s)", info["seed"], cfg.seed
            )
            cfg.seed = info["seed"]
    dm, module, trainer = build(cfg)
    if cfg.get("init_weights"):
        if cfg.resume:
            raise ValueError("init_weights and resume exclude each other: resume continues a run")
        from synthseg_lite.inference.predictor import resolve_model

        extra = init_weights(module, resolve_model(str(cfg.init_weights)), seed=int(cfg.seed))
        log.info("init_weights: network from %s (step %s)", cfg.init_weights,
                 extra.get("global_step", extra.get("step", "?")))
    if cfg.resume:
        check_resume_compatible(module, info, cfg.resume)
        for d in config_differences(info["config"], OmegaConf.to_container(cfg, resolve=True))[:20]:
            log.warning("resume: config differs from the checkpoint's: %s", d)

    def rebuild(plan: Plan):  # the planner keeps a plan that fits; the stored config gets it
        cfg.synth.patch_shape, cfg.data.batch_size = list(plan.patch_size), plan.batch_size
        return build(cfg)

    dm, module, trainer = fit_with_oom_fallback(
        (dm, module, trainer),
        lambda dm, module, trainer: trainer.fit(
            module, datamodule=dm, ckpt_path=cfg.resume, weights_only=True
        ),
        rebuild,
    )
    best = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    if best is None or best.best_model_score is None:
        return None
    log.info("best %s: %.4f (the value this job returns to a sweeper)", best.monitor,
             float(best.best_model_score))
    return float(best.best_model_score)


@with_version("synthseg-lite-train")
@hydra_main(config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from synthseg_lite.commands.launch import launched_ranks

    with launched_ranks(cfg.trainer):  # DDP under multirun and submitit (README "Scaling out")
        try:
            return user_errors(lambda: run(cfg))
        except SIGTERMException:  # Lightning's stop on SIGTERM exits 0: a killed run is not done
            sys.exit(128 + int(signal.SIGTERM))


register_help(
    "synthseg-lite-train",
    __doc__,
    [
        *yaml_key_docs(Path(__file__).parents[1] / "conf" / "train.yaml"),
        *option_rows(DataConfig, "data.", skip=["data.real_val"]),
        *option_rows(SynthConfig, "synth."),
        *option_rows(ModelConfig, "model.", skip=["model.optimizer", "model.scheduler"]),
    ],
    groups=config_groups(Path(__file__).parents[1] / "conf"),
)
# synthesis lives in the module's on_after_batch_transfer on purpose (it needs the device)
warnings.filterwarnings("ignore", message=r".*overridden `on_(before|after)_batch_transfer`.*")

if __name__ == "__main__":
    main()
