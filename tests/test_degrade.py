"""Degraded scans for robustness checks: contrast inversion, thick slices, and the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.commands.degrade import main
from synthseg_lite.evaluation.degrade import (
    CONTRASTS, degrade_scans, invert_contrast, plane_axis, remap_contrast, slab_size,
    thick_slab_grid, thick_slices, through_plane_axis, tissue_modes)
from synthseg_lite.evaluation.bias import bias_field
from synthseg_lite.evaluation.metrics import labels_on_grid
from synthseg_lite.io import Volume

ROOT = Path(__file__).resolve().parents[1]

#: LIA-like and anisotropic: voxel axes 0, 1, 2 -> Left 1.2 mm, Inferior 2 mm, Anterior 1 mm.
LIA = np.array([[-1.2, 0, 0, 10.0], [0, 0, 1.0, -20.0], [0, -2.0, 0, 30.0], [0, 0, 0, 1]])


def _t1_phantom(shape=(30, 30, 30)):
    """Tissue map (1 GM, 2 WM, 3 CSF) and a skull-stripped T1-like image with noise."""
    rng = np.random.default_rng(0)
    tissue = np.zeros(shape, np.uint8)
    tissue[3:-3, 3:-3, 3:-3] = 1
    tissue[8:-8, 8:-8, 8:-8] = 2
    tissue[13:17, 13:17, 3:-3] = 3
    means = np.array([0.0, 100.0, 150.0, 40.0])
    image = means[tissue] + rng.normal(0, 5, shape) * (tissue > 0)
    return tissue, np.where(tissue > 0, np.maximum(image, 1.0), 0.0)


def test_inversion_swaps_tissue_order_and_keeps_background_and_range():
    tissue, image = _t1_phantom()
    out = invert_contrast(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    before = [image[tissue == c].mean() for c in (3, 1, 2)]  # CSF, GM, WM
    after = [out[tissue == c].mean() for c in (3, 1, 2)]
    assert before[0] < before[1] < before[2]
    assert after[0] > after[1] > after[2]  # CSF now brightest, WM darkest
    assert np.all(out[tissue == 0] == 0)
    lo, hi = np.percentile(image[image > 0], [0.5, 99.5])
    inside = out[image > 0]
    assert inside.min() >= np.float32(lo) and inside.max() <= np.float32(hi)
    assert np.isclose(inside.min(), lo, rtol=1e-6) and np.isclose(inside.max(), hi, rtol=1e-6)
    assert np.array_equal(out > 0, image > 0)  # brain mask preserved
    # Away from the clipped tails it is an exact mirror.
    mid = (image > lo) & (image < hi)
    np.testing.assert_allclose(out[mid], lo + hi - image[mid], rtol=1e-5)


def test_inversion_with_explicit_mask_and_bad_input():
    _, image = _t1_phantom()
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20, 10:20] = True
    out = invert_contrast(image, mask.astype(np.uint8))
    assert np.all(out[~mask] == 0) and np.all(out[mask] > 0)
    with pytest.raises(ValueError, match="no voxels"):
        invert_contrast(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        invert_contrast(image, mask[:-1])


def test_thick_slices_exact_copy_when_slices_are_not_thicker():
    data = np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float64)
    for slice_mm in (0.5, 1.0, 1.4):  # slab of one voxel at 1 mm spacing
        out = thick_slices(data, (2.0, 1.0, 3.0), slice_mm, axis=1)
        assert out.dtype == np.float32 and np.array_equal(out, data.astype(np.float32))
    assert thick_slices(data, (2.0, 1.0, 3.0), 1.0, axis=1) is not data


def test_thick_slices_keeps_constants_and_slab_values():
    const = np.full((5, 9, 4), 7.0)
    assert np.array_equal(thick_slices(const, (1, 1, 1), 3, axis=1), const)
    # Constant within each 3-voxel slab along axis 2 (last slab partial): slab centres keep it.
    values = np.array([1.0, 5.0, -2.0, 4.0])
    data = np.broadcast_to(np.repeat(values, 3)[:11], (4, 5, 11)).copy()
    out = thick_slices(data, (1.0, 1.0, 0.5), 1.5, axis=2)
    assert slab_size((1.0, 1.0, 0.5), 1.5, 2) == 3
    np.testing.assert_allclose(out[..., [1, 4, 7]], data[..., [1, 4, 7]])
    np.testing.assert_allclose(out[..., 0], 1.0)  # held constant before the first centre
    np.testing.assert_allclose(out[..., 10], 4.0)  # the partial last slab (9..10) has centre 9.5
    np.testing.assert_allclose(out[..., 8], 0.6 * -2.0 + 0.4 * 4.0)  # lerp between centres 7, 9.5
    # Slabs of full length reproduce a linear ramp between the first and last centres.
    ramp = np.broadcast_to(np.arange(12.0)[:, None, None], (12, 3, 3)).copy()
    out = thick_slices(ramp, (1, 1, 1), 3, axis=0)
    np.testing.assert_allclose(out[1:11], ramp[1:11], atol=1e-5)


def test_thick_slices_removes_high_frequencies_along_axis_only():
    alt = (-1.0) ** np.arange(10)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = 10
        pattern = np.broadcast_to(alt.reshape(shape), (10, 10, 10)).copy()
        for smooth_axis in range(3):
            out = thick_slices(pattern, (1.0, 1.0, 1.0), 2.0, axis=smooth_axis)
            assert out.shape == pattern.shape
            if smooth_axis == axis:
                np.testing.assert_allclose(out, 0.0, atol=1e-7)  # flattened
            else:
                assert np.array_equal(out, pattern)  # untouched


def test_thick_slices_validates_input():
    data = np.zeros((4, 4, 4))
    for kwargs, match in [({"axis": 3}, "axis"), ({"axis": -1}, "axis"),
                          ({"slice_mm": 0.0}, "positive"), ({"slice_mm": float("nan")}, "positive"),
                          ({"spacing_mm": (1, 1)}, "spacing")]:
        args = {"spacing_mm": (1.0, 1.0, 1.0), "slice_mm": 3.0, "axis": 0} | kwargs
        with pytest.raises(ValueError, match=match):
            thick_slices(data, **args)
    with pytest.raises(ValueError, match="3D"):
        thick_slices(np.zeros((4, 4)), (1, 1, 1), 3, 0)


def test_through_plane_axis_picks_largest_spacing_first_on_ties():
    assert through_plane_axis((0.9375, 1.5, 0.9375)) == 1
    assert through_plane_axis((1.0, 1.0, 1.0)) == 0
    assert through_plane_axis((0.8, 3.0, 3.0)) == 1
    assert through_plane_axis((1.0, 0.99999994, 1.00000003)) == 0  # float noise is a tie
    assert through_plane_axis((1.0, 1.0, 5.0)) == 2
    with pytest.raises(ValueError):
        through_plane_axis((1.0, 0.0, 1.0))


def test_plane_axis_follows_the_affine_not_the_voxel_order():
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    assert [plane_axis(ras, p) for p in ("sagittal", "coronal", "axial")] == [0, 1, 2]
    # LIA (FreeSurfer's conformed order): axial slices are stacked along voxel axis 1
    assert [plane_axis(LIA, p) for p in ("sagittal", "coronal", "axial")] == [0, 2, 1]
    # a coronal acquisition stored LSP-like (IBSR's order) and tilted 20 degrees about x
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    tilt = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    lsp = np.eye(4)
    lsp[:3, :3] = tilt @ np.array([[-1.0, 0, 0], [0, 0, -1.5], [0, 1.0, 0]])
    assert plane_axis(lsp, "coronal") == 2 and plane_axis(lsp, "axial") == 1
    for bad, match in ((np.zeros((4, 4)), "singular"), (np.full((4, 4), np.nan), "singular")):
        with pytest.raises(ValueError, match=match):
            plane_axis(bad, "axial")
    with pytest.raises(ValueError, match="plane must be"):
        plane_axis(ras, "transverse")


def test_cli_plane_picks_the_axial_axis_of_a_lia_scan(tmp_path, capsys):
    scan = tmp_path / "in" / "scan.nii.gz"
    data = _write_scan(scan)
    out_dir = tmp_path / "out"
    # axial on this LIA scan is voxel axis 1 (2 mm): slabs of 3 voxels for 6 mm slices
    assert main([str(scan), "--output", str(out_dir), "--slice-mm", "6", "--plane", "axial"]) == 0
    out = np.asanyarray(nib.load(out_dir / scan.name).dataobj)
    np.testing.assert_allclose(out, thick_slices(data, (1.2, 2.0, 1.0), 6, axis=1))
    assert main([str(scan), "--output", str(tmp_path / "cor"), "--slice-mm", "3",
                 "--plane", "coronal"]) == 0
    out = np.asanyarray(nib.load(tmp_path / "cor" / scan.name).dataobj)
    np.testing.assert_allclose(out, thick_slices(data, (1.2, 2.0, 1.0), 3, axis=2))
    assert not np.allclose(out, data)


def _write_scan(path: Path, shape=(8, 6, 10)) -> np.ndarray:
    """A LIA, 4D-singleton int16 scan: alternating along axis 1 (the 2 mm axis), ramps elsewhere."""
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    data = (100 + 10 * (j % 2) + i + k).astype(np.int16)[..., None]
    assert nib.aff2axcodes(LIA) == ("L", "I", "A")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, LIA), path)
    return data[..., 0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_round_trip_keeps_grid_and_refuses_to_overwrite(tmp_path, capsys):
    scan = tmp_path / "in" / "IBSR_99.nii.gz"
    data = _write_scan(scan)
    before = _digest(scan)
    out_dir = tmp_path / "out"

    assert main([str(scan), "--output", str(out_dir), "--slice-mm", "4"]) == 0
    img = nib.load(out_dir / scan.name)
    assert img.shape == data.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, LIA)
    out = np.asanyarray(img.dataobj)
    # Default axis: the 2 mm one (voxel axis 1, not reoriented); slabs of 2 flatten the alternation.
    np.testing.assert_allclose(out, thick_slices(data, (1.2, 2.0, 1.0), 4, axis=1))
    assert np.ptp(out, axis=1).max() < 1e-4
    assert _digest(scan) == before

    # Second run without --overwrite: one error line, exit code 2, output untouched.
    written = _digest(out_dir / scan.name)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "synthseg_lite.commands.degrade", str(scan),
                          "--output", str(out_dir), "--invert"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error:")
    assert "already exists" in res.stderr and _digest(out_dir / scan.name) == written

    assert main([str(scan), "--output", str(out_dir), "--invert", "--overwrite"]) == 0
    inv = np.asanyarray(nib.load(out_dir / scan.name).dataobj)
    np.testing.assert_allclose(inv, invert_contrast(data))
    assert _digest(scan) == before


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_tissue_modes_finds_the_three_tissues_of_a_t1():
    tissue, image = _t1_phantom()
    csf, gm, wm = tissue_modes(image[tissue > 0])
    assert abs(csf - 40) < 2 and abs(gm - 100) < 2 and abs(wm - 150) < 2
    with pytest.raises(ValueError, match="no tissue contrast"):
        tissue_modes(np.ones(100))


@pytest.mark.parametrize("contrast", sorted(CONTRASTS))
def test_remap_contrast_puts_each_tissue_at_its_level_and_keeps_the_background(contrast):
    tissue, image = _t1_phantom()
    out = remap_contrast(image, contrast)
    assert out.dtype == np.float32 and np.array_equal(out > 0, image > 0)
    hi = np.percentile(image[image > 0], 99.5)
    medians = [np.median(out[tissue == t]) / hi for t in (3, 1, 2)]  # CSF, GM, WM
    np.testing.assert_allclose(medians, CONTRASTS[contrast], atol=0.03)
    # not a monotone map of the T1: GM is brighter than both CSF and WM in both contrasts
    assert medians[1] > medians[0] and medians[1] > medians[2]
    # the texture within a tissue is kept (the end segments go on), not flattened
    assert out[tissue == 2].std() > 0.5 * image[tissue == 2].std() * abs(
        (CONTRASTS[contrast][2] - CONTRASTS[contrast][1]) * hi / 50)
    with pytest.raises(ValueError, match="contrast must be one of"):
        remap_contrast(image, "t2star")


def test_cli_contrast_writes_the_remapped_scan(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    _, image = _t1_phantom()
    nib.save(nib.Nifti1Image(image.astype(np.float32), LIA), scan)
    assert main([str(scan), "--output", str(tmp_path / "out"), "--contrast", "flair"]) == 0
    img = nib.load(tmp_path / "out" / "scan.nii.gz")
    np.testing.assert_allclose(img.affine, LIA, atol=1e-6)
    np.testing.assert_allclose(img.get_fdata(), remap_contrast(image, "flair"), rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        degrade_scans([scan], tmp_path / "x", invert=True, contrast="pd")
    code, _ = _exit_code([str(scan), "--output", str(tmp_path / "y"), "--contrast", "t2"], capsys)
    assert code == 2 and not (tmp_path / "y").exists()


@pytest.mark.parametrize("mode", [[], ["--invert", "--slice-mm", "3"], ["--invert", "--contrast", "pd"]])
def test_cli_needs_exactly_one_transform(tmp_path, capsys, mode):
    scan = tmp_path / "scan.nii.gz"
    _write_scan(scan)
    code, err = _exit_code([str(scan), "--output", str(tmp_path / "out"), *mode], capsys)
    assert code == 2 and "error:" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_bad_inputs_before_writing(tmp_path, capsys):
    scan = tmp_path / "a" / "scan.nii.gz"
    _write_scan(scan)
    _write_scan(tmp_path / "b" / "scan.nii.gz")
    four_d = tmp_path / "c" / "multi.nii.gz"
    four_d.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), LIA), four_d)
    out = ["--output", str(tmp_path / "o")]
    cases = [
        ([str(scan), "--output", str(scan.parent), "--invert", "--overwrite"],
         "overwrite the input"),
        ([str(scan), str(tmp_path / "b" / "scan.nii.gz"), *out, "--invert"], "share the file name"),
        ([str(scan), str(four_d), *out, "--invert"], "3D"),
        ([str(scan), *out, "--invert", "--axis", "1"], "--axis"),
        ([str(scan), *out, "--slice-mm", "-1"], "positive"),
        ([str(scan), *out, "--slice-mm", "3", "--axis", "3"], "axis"),
        ([str(scan), *out, "--slice-mm", "3", "--axis", "1", "--plane", "axial"], "not both"),
        ([str(scan), *out, "--invert", "--plane", "axial"], "--plane only applies"),
        ([str(tmp_path / "missing.nii.gz"), *out, "--invert"], "no such file"),
    ]
    for argv, match in cases:
        code, err = _exit_code(argv, capsys)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), (argv, err)
        assert match in err, (argv, err)
    assert not (tmp_path / "o").exists()  # nothing written by any refused run


def test_slab_grid_is_the_thick_slices_stored_on_their_own_grid(tmp_path):
    """--slab-grid: the slab means on an n-times coarser grid whose voxel centres are the slab
    centres in the world; a last, partial slab is dropped; thick_slices interpolates exactly
    these means back (at the slab centres)."""
    rng = np.random.default_rng(1)
    data = rng.normal(100, 10, (12, 23, 9)).astype(np.float32)
    means, affine = thick_slab_grid(data, LIA, 6.0, axis=1)  # 2 mm voxels: slabs of 3
    assert means.shape == (12, 7, 9)  # 23 // 3 whole slabs
    np.testing.assert_allclose(means[:, 2], data[:, 6:9].mean(1), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), (1.2, 6.0, 1.0))
    centre = LIA @ [0, 7.0, 0, 1]  # slab 2 holds voxels 6, 7, 8
    np.testing.assert_allclose(affine @ [0, 2, 0, 1], centre)
    back = thick_slices(data[:, :21], (1.2, 2.0, 1.0), 6.0, axis=1)
    np.testing.assert_allclose(back[:, 1::3], means, rtol=1e-5)
    with pytest.raises(ValueError, match="voxels along axis"):
        thick_slab_grid(data[:, :2], LIA, 6.0, axis=1)
    # the CLI writes it, refuses --slab-grid without --slice-mm, keeps the input
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(data, LIA), scan)
    assert main([str(scan), "--output", str(tmp_path / "o"), "--slice-mm", "6", "--axis", "1",
                 "--slab-grid"]) == 0
    img = nib.load(tmp_path / "o" / "scan.nii.gz")
    assert img.shape == (12, 7, 9) and img.header.get_zooms() == pytest.approx((1.2, 6.0, 1.0))
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    with pytest.raises(SystemExit):
        main([str(scan), "--output", str(tmp_path / "p"), "--invert", "--slab-grid"])


def test_labels_on_grid_follows_world_coordinates():
    """Nearest-neighbour resampling of labels onto another grid: a coarse (LIA, 2 mm) label
    volume taken onto a 1 mm RAS grid keeps each label where it is in the world, never blends
    values, and fills outside its field of view with 0."""
    labels = np.zeros((10, 8, 6), np.int64)
    labels[2:5, 1:4, 1:3] = 17
    labels[6:9, 4:7, 2:5] = 53
    src = Volume(labels, LIA)
    grid = Volume(np.zeros((40, 40, 40)), np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array(
        [[1, 0, 0, -20.0], [0, 1, 0, -30.0], [0, 0, 1, 0.0], [0, 0, 0, 1]]))
    out = labels_on_grid(src, grid)
    assert out.data.shape == (40, 40, 40) and set(np.unique(out.data)) <= {0, 17, 53}
    for value in (17, 53):
        world_src = LIA[:3, :3] @ np.argwhere(labels == value).mean(0) + LIA[:3, 3]
        world_out = grid.affine[:3, :3] @ np.argwhere(out.data == value).mean(0) + grid.affine[:3, 3]
        np.testing.assert_allclose(world_out, world_src, atol=0.6)
        voxel_src = abs(np.linalg.det(LIA[:3, :3]))
        assert (out.data == value).sum() == pytest.approx((labels == value).sum() * voxel_src,
                                                          rel=0.25)


def test_bias_field_spans_its_strength_and_is_smooth_and_seeded():
    field = bias_field((40, 36, 30), (1.0, 1.0, 1.0), 0.3, seed=3)
    assert field.shape == (40, 36, 30) and field.dtype == np.float32
    lo, hi = 1 / 1.3, 1.3
    assert field.min() >= lo - 1e-6 and field.max() <= hi + 1e-6
    assert np.isclose(field.min(), lo, rtol=1e-5) or np.isclose(field.max(), hi, rtol=1e-5)
    assert field.max() / field.min() > 1.3  # it does vary across the field of view
    # smooth: no more than a few per cent between face neighbours at 1 mm
    assert max(np.abs(np.diff(np.log(field), axis=a)).max() for a in range(3)) < 0.05
    np.testing.assert_array_equal(field, bias_field((40, 36, 30), (1, 1, 1), 0.3, seed=3))
    assert not np.allclose(field, bias_field((40, 36, 30), (1, 1, 1), 0.3, seed=4))
    np.testing.assert_array_equal(bias_field((8, 8, 8), (1, 1, 1), 0.0), np.ones((8, 8, 8)))


def test_bias_field_varies_in_millimetres_not_voxels():
    """The same head at 1 mm and at 2 mm gets the same field where their voxels coincide."""
    fine = bias_field((120, 100, 80), (1.0, 1.0, 1.0), 0.4, seed=1)
    coarse = bias_field((60, 50, 40), (2.0, 2.0, 2.0), 0.4, seed=1)
    corr = np.corrcoef(np.log(fine[::2, ::2, ::2]).ravel(), np.log(coarse).ravel())[0, 1]
    assert corr > 0.98


@pytest.mark.parametrize("strength", [-0.1, 10.0, float("nan"), "strong"])
def test_bias_field_refuses_a_bad_strength(strength):
    with pytest.raises(ValueError, match="bias strength"):
        bias_field((4, 4, 4), (1, 1, 1), strength)


def test_cli_bias_multiplies_the_scan_by_the_seeded_field(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    _, image = _t1_phantom()
    nib.save(nib.Nifti1Image(image.astype(np.float32), LIA), scan)
    assert main([str(scan), "--output", str(tmp_path / "out"), "--bias", "0.3", "--seed", "5"]) == 0
    img = nib.load(tmp_path / "out" / "scan.nii.gz")
    np.testing.assert_allclose(img.affine, LIA, atol=1e-6)
    expected = image * bias_field(image.shape, (1.2, 2.0, 1.0), 0.3, seed=5)
    np.testing.assert_allclose(img.get_fdata(), expected, rtol=1e-5)
    assert (img.get_fdata()[image == 0] == 0).all()  # the background stays empty
    capsys.readouterr()  # the successful run's log lines are not the refusals' stderr
    for argv, match, one_line in (
        (["--bias", "-1"], "bias strength", True),
        (["--invert", "--seed", "2"], "--seed only applies", True),
        (["--bias", "0.3", "--invert"], "not allowed with", False),  # argparse: usage, then error
    ):
        code, err = _exit_code([str(scan), "--output", str(tmp_path / "o"), *argv], capsys)
        assert code == 2 and match in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 or not one_line, (argv, err)
    assert not (tmp_path / "o").exists()
