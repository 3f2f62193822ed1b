"""Hydra configs of the commands (a package so Hydra finds them as ``pkg://synthseg_lite.conf``)."""
