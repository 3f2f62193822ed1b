"""Label tables: generation labels, Gaussian classes, left/right pairs, target presets.

A label map is stored as ``uint8`` *indices* into :attr:`LabelTable.generation_labels` (index 0 is
always background, value 0). Every per-label quantity is then a small lookup table indexed by that
index, so the generator never loops over labels:

* ``classes[i]``        generation class (labels that share one Gaussian, e.g. left/right twins)
* ``lr_swap[i]``        index of the contralateral twin (itself for midline labels)
* ``extracerebral[i]``  dropped to background by the skull-stripping simulation
* ``target_lut[i]``     class index in the target preset (0 = background)

Label numbers follow the FreeSurfer colour table (aseg), plus SynthSeg's extra-cerebral labels
502-530 and its extra ventricle labels 136/137 (left) and 163/164 (right).

Any other label protocol (non-brain anatomy, infant or animal atlases, lesions) is an *open* table:
:func:`build_label_table` with ``labels="auto"`` (every value found in the training maps, each its
own Gaussian class, the target every label itself) or with a YAML/TSV protocol file
(:func:`read_label_protocol`: generation labels, Gaussian classes, left/right pairs, target
mapping and names, per-class intensity priors as lab2im's ``prior_means``/``prior_stds``).
Indices are ``uint8`` up to 256 labels, ``int16`` beyond.
"""

from synthseg_lite.labels.lut import (
    FREESURFER_COLORS,
    LABEL_CONVENTIONS,
    OutputLabels,
    class_colors,
    colors_rgba,
    label_dtype,
    lut_text,
    output_labels,
    read_lut,
    tissue_view,
    write_dseg_tsv,
    write_lut,
)
from synthseg_lite.labels.mapping import label_mapping, map_labels
from synthseg_lite.labels.presets import (
    CSF_LABEL,
    EXTRACEREBRAL,
    FREESURFER_NAMES,
    LR_PAIRS,
    REFERENCE_PRESETS,
    STRUCTURE_GROUPS,
    TOPOLOGY_GROUPS,
    TARGET_PRESETS,
    TargetPreset,
    identity_target,
    target_preset,
)
from synthseg_lite.labels.protocol import read_label_protocol
from synthseg_lite.labels.table import LabelTable, build_label_table

__all__ = [
    "CSF_LABEL",
    "EXTRACEREBRAL",
    "FREESURFER_COLORS",
    "FREESURFER_NAMES",
    "LABEL_CONVENTIONS",
    "LR_PAIRS",
    "REFERENCE_PRESETS",
    "STRUCTURE_GROUPS",
    "TOPOLOGY_GROUPS",
    "TARGET_PRESETS",
    "LabelTable",
    "OutputLabels",
    "TargetPreset",
    "build_label_table",
    "class_colors",
    "colors_rgba",
    "identity_target",
    "label_dtype",
    "label_mapping",
    "lut_text",
    "map_labels",
    "output_labels",
    "read_label_protocol",
    "read_lut",
    "target_preset",
    "tissue_view",
    "write_dseg_tsv",
    "write_lut",
]
