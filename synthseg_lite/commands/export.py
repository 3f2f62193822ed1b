"""Write synthetic (image, target) pairs to disk (NIfTI, nnU-Net v2 raw dataset, 2D PNGs, montage).

    python export.py output=/tmp/synth n=100 label_maps=../shared/data/label_maps
    python export.py output=$nnUNet_raw/Dataset500_Synth layout=nnunet target=synthseg n=1000
    python export.py output=/tmp/synth2d png2d=true synth.patch_shape=[256,256,1]

Settings: conf/export.yaml (export) and conf/synth/ (generator). Bad input: one line on stderr and
exit code 2. Hydra writes nothing (no outputs/ folder, no log file): see conf/export.yaml.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from synthseg_lite.commands.common import hydra_main, require, until_interrupted, user_errors
from synthseg_lite.commands.common import option_rows, register_help, with_version
from synthseg_lite.data.export import ExportConfig, export_dataset
from synthseg_lite.synth.config import SynthConfig

log = logging.getLogger("export")
register_help(
    "synthseg-lite-export",
    __doc__,
    option_rows(ExportConfig) + option_rows(SynthConfig, "synth."),
)


@with_version("synthseg-lite-export")
@hydra_main(config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    require(OmegaConf.missing_keys(cfg))
    synth = user_errors(lambda: OmegaConf.to_object(cfg.synth))
    args = OmegaConf.to_container(cfg, resolve=True)
    args.pop("synth")
    until_interrupted(
        lambda: user_errors(lambda: export_dataset(ExportConfig(**args), synth)),
        f"the pairs written so far are kept in {args['output']} (whole files only); "
        "overwrite=true starts the export again",
    )


if __name__ == "__main__":
    main()
