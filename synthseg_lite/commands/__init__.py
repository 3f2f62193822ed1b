"""Command-line entry points (``synthseg-lite-{train,infer,evaluate,export}``, also ``python
{train,infer,evaluate,export}.py`` from a checkout). Each is a thin ``@hydra.main`` whose configs
ship in the package (``synthseg_lite/conf``)."""
