"""Launcher presets shared by ``train.py`` and ``infer.py`` (``pkg://synthseg_lite.conf.scaling``,
on both commands' ``hydra.searchpath``): ``hydra/launcher=slurm`` and ``hydra/launcher=local``."""
