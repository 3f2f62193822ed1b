"""A proxy for a scan with a skull: a skull-stripped T1 wrapped in a synthetic head.

``../shared/data`` holds no real scan with a skull (OASIS and IBSR are skull-stripped), so
``benchmarks/structures.py``'s ``thick3_head`` condition ("3 mm scan with skull, no mask") uses
:func:`head_proxy`. A synthetic head is not a real one (no eyes, neck, fat-suppression or coil
shading): it shows what extra-cerebral signal does to a model, not what a real head scan gives.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def head_proxy(
    t1: Path, aseg: Path, folder: Path, pad: int = 16, seed: int = 0
) -> tuple[Path, Path]:
    """A skull-stripped T1 wrapped in a synthetic head (see the module docstring).

    The scan and its aseg are padded by ``pad`` voxels per side (the affine shifted, so world
    positions are kept); around the brain mask (``t1 > 0``), by distance in mm: 0-2 CSF (0.2 x
    the WM median), 2-7 skull (0.05 x), 7-12 scalp (0.9 x), Gaussian noise of SD 0.03 x in the
    shells (seeded). Returns the new (t1, aseg) files in ``folder``.
    """
    from scipy.ndimage import distance_transform_edt

    img, ref = nib.load(str(t1)), nib.load(str(aseg))
    data = np.pad(np.asarray(img.dataobj, dtype=np.float32), pad)
    labels = np.pad(np.asarray(ref.dataobj), pad)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    brain = data > 0
    wm = float(np.median(data[np.isin(labels, (2, 41))])) if np.isin(labels, (2, 41)).any() else (
        float(np.percentile(data[brain], 90)))
    dist = distance_transform_edt(~brain, sampling=spacing)
    rng = np.random.default_rng(seed)
    for lo, hi, level in ((0, 2, 0.2), (2, 7, 0.05), (7, 12, 0.9)):
        shell = (dist > lo) & (dist <= hi)
        data[shell] = level * wm + rng.normal(0, 0.03 * wm, int(shell.sum()))
    data = np.clip(data, 0, None)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(folder / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine, ref.header), str(folder / "aseg.nii.gz"))
    return folder / "t1.nii.gz", folder / "aseg.nii.gz"
