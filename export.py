"""Write synthetic (image, target) pairs to disk (NIfTI, nnU-Net v2 raw dataset, 2D PNGs, montage).

    python export.py output=/tmp/synth n=100 label_maps=../shared/data/label_maps
    python export.py output=$nnUNet_raw/Dataset500_Synth layout=nnunet target=synthseg n=1000
    python export.py output=/tmp/synth2d png2d=true synth.patch_shape=[256,256,1]

Settings: conf/export.yaml (export) and conf/synth/ (generator). Bad input: one line on stderr and
exit code 2. Hydra writes nothing (no outputs/ folder, no log file): see conf/export.yaml.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from synthseg_lite.export import ExportConfig, export_dataset
from synthseg_lite.synth.config import register_configs

log = logging.getLogger("export")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        synth = OmegaConf.to_object(cfg.synth)
        args = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        args.pop("synth")
        export_dataset(ExportConfig(**args), synth)
    except MissingMandatoryValue as exc:
        print(f"error: missing required setting ({exc.full_key}=...)", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
