"""Inference: segment real scans with a fold ensemble and test-time augmentation.

``segment_scans(inputs, output_dir, model, options)`` is the entry point (``infer.py`` wraps it).
The steps live in :mod:`.preprocess` (RAS, resampling, intensity rescaling, cropping),
:mod:`.predictor` (ensemble x TTA over MONAI's sliding window) and :mod:`.postprocess`
(connected components, back to the scan's grid).
"""

from synthseg_lite.inference.pipeline import (
    InferenceOptions,
    ScanResult,
    expand_inputs,
    output_paths,
    resolve_device,
    segment_scans,
    segment_volume,
)
from synthseg_lite.inference.predictor import (
    Predictor,
    default_model_path,
    find_checkpoints,
    load_ensemble,
)

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
