"""Scoring segmentations against references: tissue metrics (:mod:`.metrics`, nnU-Net's
``summary.json`` layout), per-structure metrics (:mod:`.structure_metrics`), intensity quality
(:mod:`.quality`), prediction/reference pairing (:mod:`.pairing`) and their plots (:mod:`.plots`);
plus what the evaluation of a model uses: degraded scans (:mod:`.degrade`) and the classical
Gaussian-mixture baseline (:mod:`.baseline`). The command is :mod:`synthseg_lite.commands.evaluate`.
"""
