"""Benchmarks (JSON output, ratios measured side by side in one run); see ``benchmarks/README.md``.

Most run as scripts (``python benchmarks/<name>.py``); those that import a sibling run as modules
from the checkout's root (``python -m benchmarks.structures``, ``python -m benchmarks.gpu_check``).
"""
