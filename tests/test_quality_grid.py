"""evaluate.py mode=quality: PSNR on the volume (finite when one slice is identical), same-grid
check."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.evaluation.quality import evaluate_quality, image_quality


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = np.zeros((20, 20, 10), np.float32)
    real[3:17, 3:17, 1:9] = rng.uniform(50, 150, (14, 14, 8))
    synth = real + (real > 0) * rng.normal(0, 20, real.shape).astype(np.float32)
    return synth, real


def test_psnr_is_finite_when_one_slice_is_identical():
    synth, real = _images()
    base = image_quality(synth, real)["PSNR"]
    synth[..., 4] = real[..., 4]  # one identical slice: a per-slice mean would be +inf
    q = image_quality(synth, real)
    assert np.isfinite(q["PSNR"]) and q["PSNR"] > base  # one exact slice lowers the volume's MSE
    # the volume PSNR is 10 log10(1 / MSE) over the slices that contain brain
    assert image_quality(real, real)["PSNR"] == math.inf


def test_images_on_different_grids_are_not_compared(tmp_path):
    synth, real = _images(1)
    (tmp_path / "real").mkdir()
    (tmp_path / "synth").mkdir()
    nib.save(nib.Nifti1Image(real, np.eye(4)), tmp_path / "real" / "a.nii.gz")
    nib.save(nib.Nifti1Image(synth, np.eye(4)), tmp_path / "synth" / "a.nii.gz")
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, 0.0, 0.0]  # same shape, another place in space
    nib.save(nib.Nifti1Image(real, np.eye(4)), tmp_path / "real" / "b.nii.gz")
    nib.save(nib.Nifti1Image(synth, shifted), tmp_path / "synth" / "b.nii.gz")
    summary = evaluate_quality(tmp_path / "synth", tmp_path / "real", tmp_path / "out")
    assert [c["case"] for c in summary["per_case"]] == ["a"]
    skipped = summary["skipped"][0]
    assert skipped["case"] == "b" and "affines differ" in skipped["reason"]
    with pytest.raises(ValueError, match="no case could be compared"):
        evaluate_quality(
            tmp_path / "synth" / "b.nii.gz", tmp_path / "real" / "b.nii.gz", tmp_path / "o2"
        )
