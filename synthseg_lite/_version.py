"""The installed package's version (a leaf: imports nothing of the package)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("synthseg_lite")  # single source: pyproject.toml
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
