"""Classical baseline: a 3-class Gaussian mixture on intensities inside the brain mask.

Classes are named by intensity order as on a T1-weighted scan (darkest CSF, then GM, brightest WM),
which is exactly where such a baseline breaks: other contrasts, scans with skull, low resolution.
It is the reference point the trained networks have to beat (issue 5). Output labels follow the
``tissue`` preset (0 background, 1 GM, 2 WM, 3 CSF) on the scan's own grid, so ``evaluate.py``
scores it like any prediction::

    python -m synthseg_lite.commands.baseline ../shared/data/real/ibsr/*/IBSR_??.nii.gz --output base/
    python evaluate.py pred=base/ ref=../shared/data/real/ibsr ref_labels=ibsr output=base_eval/
"""

from __future__ import annotations


import numpy as np


__all__ = ["fit_gmm", "gmm_tissue"]

#: Tissue class of the k-th darkest Gaussian on a T1-weighted scan: CSF, GM, WM.
T1_ORDER = (3, 1, 2)


def fit_gmm(x: np.ndarray, k: int = 3, iters: int = 100, tol: float = 1e-6
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1D Gaussian mixture.

    Args:
        x: (N,) intensities. k: components. iters: max EM iterations. tol: stop when the mean
            log-likelihood improves less than this.

    Returns:
        means, variances, weights, each (k,), sorted by increasing mean.
    """
    x = np.asarray(x, np.float64)
    if x.size < k:
        raise ValueError(f"need at least {k} voxels to fit {k} Gaussians, got {x.size}")
    mu = np.percentile(x, np.linspace(100 / (k + 1), 100 * k / (k + 1), k))
    var = np.full(k, x.var() / k + 1e-6)
    w = np.full(k, 1 / k)
    prev = -np.inf
    for _ in range(iters):
        ll = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
        top = ll.max(1, keepdims=True)
        r = np.exp(ll - top)
        total = r.sum(1, keepdims=True)
        r /= total
        score = float((np.log(total) + top).mean())
        nk = r.sum(0) + 1e-12
        w, mu = nk / x.size, (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + 1e-6
        if score - prev < tol:
            break
        prev = score
    order = np.argsort(mu)
    return mu[order], var[order], w[order]


def gmm_tissue(image: np.ndarray, mask: np.ndarray | None = None, max_samples: int = 200_000,
               seed: int = 0) -> np.ndarray:
    """Segment a T1-weighted scan into GM/WM/CSF with a 3-class mixture.

    Args:
        image: (X, Y, Z) intensities, any scale.
        mask: brain mask (default: ``image > 0``, i.e. a skull-stripped scan).
        max_samples: voxels used to fit the mixture (a random subset); all are then labelled.

    Returns:
        (X, Y, Z) uint8 labels: 0 background, 1 GM, 2 WM, 3 CSF.
    """
    mask = image > 0 if mask is None else mask.astype(bool)
    values = image[mask].astype(np.float64)
    rng = np.random.default_rng(seed)
    fit = values if values.size <= max_samples else rng.choice(values, max_samples, replace=False)
    mu, var, w = fit_gmm(fit)
    ll = -0.5 * (values[:, None] - mu) ** 2 / var - 0.5 * np.log(var) + np.log(w)
    out = np.zeros(image.shape, np.uint8)
    out[mask] = np.asarray(T1_ORDER, np.uint8)[ll.argmax(1)]
    return out
