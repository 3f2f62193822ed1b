"""Inference: segment real scans with a fold ensemble and test-time augmentation.

``segment_scans(inputs, output_dir, model, options)`` is the entry point (``infer.py`` wraps it).
The steps live in :mod:`.preprocess` (RAS, resampling, intensity rescaling, cropping),
:mod:`.predictor` (ensemble x TTA over MONAI's sliding window), :mod:`.postprocess`
(connected components, QC) and :mod:`.native` (back to the scan's grid); :mod:`.segment` runs
them on one scan in memory, :mod:`.pipeline` on a study (files, record, ``volumes.csv``,
report).
"""

from synthseg_lite.inference.pipeline import (
    ScanResult,
    expand_inputs,
    output_paths,
    segment_scans,
)
from synthseg_lite.inference.predictor import (
    Predictor,
    default_model_path,
    find_checkpoints,
    load_ensemble,
)
from synthseg_lite.inference.segment import InferenceOptions, segment_volume
from synthseg_lite.runtime import resolve_device

__all__ = [
    "InferenceOptions",
    "Predictor",
    "ScanResult",
    "default_model_path",
    "expand_inputs",
    "find_checkpoints",
    "load_ensemble",
    "output_paths",
    "resolve_device",
    "segment_scans",
    "segment_volume",
]
