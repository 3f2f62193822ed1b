"""Configs of ``synthseg-lite-infer`` and ``synthseg-lite-evaluate`` (``pkg://synthseg_lite.conf.cli``)."""
