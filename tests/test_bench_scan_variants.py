"""benchmarks/scan_variants.py: each way of storing a scan keeps what the scan shows; the
artefacts are seeded and leave the labels alone."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scan_variants import VARIANTS, main, table


def _world(labels: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    """World (mm) centroid of the voxels of ``value``."""
    idx = np.argwhere(labels == value).mean(0)
    return affine[:3, :3] @ idx + affine[:3, 3]


@pytest.fixture
def scan():
    rng = np.random.default_rng(0)
    image = rng.uniform(10, 200, (20, 24, 28)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[5:8, 3:6, 9:12] = 17  # superior in LIA storage (the second index low)
    labels[12:15, 18:21, 20:23] = 4  # inferior
    affine = np.array([[-1.0, 0, 0, 10], [0, 0, 1, -14], [0, -1, 0, 12], [0, 0, 0, 1]])  # LIA
    return image, labels, affine


@pytest.mark.parametrize("name", ["stored", "permuted", "ct_int16", "tiny_scale", "off_centre"])
def test_a_variant_that_only_stores_differently_keeps_every_voxel_where_it_was(scan, name):
    image, labels, affine = scan
    im, lab, aff = VARIANTS[name](image, labels, affine)
    assert im.shape == lab.shape and set(np.unique(lab)) == set(np.unique(labels))
    for value in (17, 4):
        np.testing.assert_allclose(_world(lab, aff, value), _world(labels, affine, value))
    if name in ("ct_int16", "tiny_scale"):  # a monotone map of the intensities, in place
        np.testing.assert_array_equal(lab, labels)
        assert np.all(np.diff(im.ravel()[np.argsort(image.ravel(), kind="stable")]) >= 0)
        assert len(np.unique(im)) >= 500  # contrast kept (int16: about 1,000 levels here)
    else:  # the same voxels, moved
        np.testing.assert_array_equal(np.sort(im[lab == 17]), np.sort(image[labels == 17]))

def test_oblique_turns_the_header_not_the_voxels(scan):
    image, labels, affine = scan
    im, lab, aff = VARIANTS["oblique"](image, labels, affine)
    assert im is image and lab is labels
    assert np.degrees(np.arccos((np.trace(aff[:3, :3] @ affine[:3, :3].T) - 1) / 2)) == (
        pytest.approx(20)
    )


def test_fine_keeps_the_field_of_view_and_cut_keeps_the_top(scan):
    image, labels, affine = scan
    im, lab, aff = VARIANTS["fine"](image, labels, affine)
    assert im.shape == tuple(round(n / 0.7) for n in image.shape)
    for value in (17, 4):  # nearest-neighbour labels: within a fine voxel of where they were
        assert np.abs(_world(lab, aff, value) - _world(labels, affine, value)).max() < 0.7
    im, lab, aff = VARIANTS["cut"](image, labels, affine)
    assert im.shape == (20, 13, 28)  # 55 % of the inferior-superior axis (the second, LIA)
    assert 17 in lab and 4 not in lab  # the superior structure kept, the inferior one cut away
    np.testing.assert_allclose(_world(lab, aff, 17), _world(labels, affine, 17))


def test_bad_arguments_are_one_error_line(tmp_path, capsys):
    for args in (["--scan", str(tmp_path / "none.nii.gz")], ["--variants", "rotated"]):
        with pytest.raises(SystemExit) as e:
            main(["--output", str(tmp_path / "o"), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "not found" in err or "unknown ['rotated']" in err


def test_the_table_has_a_row_per_variant():
    row = {"variant": "cut", "shape": [160, 105, 224], "tissue": {"GM": 0.88, "WM": 0.942,
           "CSF": 0.918}, "qc": 0.548, "pose": {"degrees": 21.3}, "fov_cut": "inferior",
           "seconds": 15.3}
    lines = table([row])
    assert lines[2] == (
        "| cut | 160 x 105 x 224 | 0.880 / 0.942 / 0.918 | 0.548 | 21.3 | inferior | 15.3 |"
    )


@pytest.mark.parametrize("name", ["motion_mild", "motion_strong", "ghosting", "spikes"])
def test_an_artefact_is_seeded_changes_the_image_and_keeps_the_labels(scan, name):
    image, labels, affine = scan
    a, lab, aff = VARIANTS[name](image, labels, affine)
    b, _, _ = VARIANTS[name](image, labels, affine)
    np.testing.assert_array_equal(a, b)  # same seed, same artefact
    assert lab is labels and aff is affine and a.shape == image.shape and a.dtype == np.float32
    assert np.abs(a - image).mean() > 0.01 * np.abs(image).mean()  # it did something
    assert np.corrcoef(a.ravel(), image.ravel())[0, 1] > 0.2  # and the scan is still there
