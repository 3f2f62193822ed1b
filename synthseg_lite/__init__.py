"""synthseg_lite: train brain-MRI segmentation from label maps alone."""

__version__ = "0.1.0"
