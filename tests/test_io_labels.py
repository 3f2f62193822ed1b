"""NIfTI/MGZ reading in any orientation, documented errors, label tables, phantoms."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.io import load_label_map, load_volume, save_volume
from synthseg_lite.labels import LR_PAIRS, REFERENCE_PRESETS, LabelTable, target_preset
from synthseg_lite.data.phantom import make_phantom_label_maps

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _lia_affine() -> np.ndarray:
    # FreeSurfer conformed orientation: x -> Left, y -> Inferior, z -> Anterior
    return np.array([[-1, 0, 0, 10], [0, 0, 1, -20], [0, -1, 0, 30], [0, 0, 0, 1]], float)


def test_reorients_lia_to_ras(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, _lia_affine()), tmp_path / "lia.nii.gz")
    vol = load_volume(tmp_path / "lia.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # same world coordinate for the same value
    i, j, k = 1, 2, 3
    world = _lia_affine() @ [i, j, k, 1]
    ijk = np.linalg.solve(vol.affine, world).round().astype(int)[:3]
    assert vol.data[tuple(ijk)] == data[i, j, k]


def test_mgz_and_4d_singleton(tmp_path):
    data = np.zeros((6, 6, 6, 1), np.float32)
    data[2:4, 2:4, 2:4] = 3
    nib.save(nib.MGHImage(data[..., 0], np.eye(4)), tmp_path / "a.mgz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "b.nii")
    for name in ("a.mgz", "b.nii"):
        lab = load_label_map(tmp_path / name)
        assert lab.data.shape == (6, 6, 6) and lab.data.dtype == np.int32 and lab.data.max() == 3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: np.full((4, 4, 4), np.nan, np.float32), "NaN or Inf"),
        (lambda: np.full((4, 4, 4), 1.5, np.float32), "non-integer"),
        (lambda: np.zeros((4, 4, 4), np.int16), "empty"),
        (lambda: np.ones((4, 4, 4, 2), np.int16), "3D volume"),
    ],
)
def test_bad_label_maps_are_rejected_naming_the_file(tmp_path, make, match):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(make(), np.eye(4)), path)
    with pytest.raises(ValueError, match=match) as err:
        load_label_map(path)
    assert "bad.nii.gz" in str(err.value)


def test_fill_nan_treats_nan_as_no_signal_and_refuses_inf():
    """SPM's NaN background becomes 0, no signal (the lowest value of data below 0); finite data
    is returned untouched."""
    from synthseg_lite.validate import fill_nan

    data = np.full((6, 6, 6), np.nan, np.float32)
    data[1:5, 1:5, 1:5] = np.arange(64, dtype=np.float32).reshape(4, 4, 4) - 3.0
    out, warning = fill_nan(data, "spm.nii")
    assert np.isfinite(out).all() and out.dtype == np.float32
    np.testing.assert_array_equal(out[1:5, 1:5, 1:5], data[1:5, 1:5, 1:5])
    assert (out[0] == -3.0).all() and np.isnan(data[0]).all()  # the input is not changed
    n = 6**3 - 4**3
    assert warning.startswith(f"spm.nii: {n} NaN voxel(s)") and "set to -3," in warning
    positive = np.where(np.isnan(data), np.nan, 50.0 + np.nan_to_num(data))
    assert (fill_nan(positive)[0][0] == 0).all()  # a magnitude image: 0, not its darkest tissue
    finite = data[1:5, 1:5, 1:5].copy()
    assert fill_nan(finite)[0] is finite and fill_nan(finite)[1] is None
    ints = np.zeros((4, 4, 4), np.int16)
    assert fill_nan(ints)[0] is ints
    with pytest.raises(ValueError, match="spm.nii: contains Inf"):
        fill_nan(np.where(np.isnan(data), np.inf, data), "spm.nii")
    with pytest.raises(ValueError, match="every voxel is NaN"):
        fill_nan(np.full((4, 4, 4), np.nan))


def test_load_volume_fills_nan_only_when_asked(tmp_path, caplog):
    data = np.ones((8, 8, 8), np.float32)
    data[:2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="nan.nii.gz: contains NaN"):
        load_volume(tmp_path / "nan.nii.gz")
    with caplog.at_level(logging.WARNING):
        vol = load_volume(tmp_path / "nan.nii.gz", nan="fill")
    assert (vol.data[:2] == 0).all() and (vol.data[2:] == 1).all()
    assert "128 NaN voxel(s) (25 % of the image) set to 0" in caplog.text
    with pytest.raises(ValueError, match="nan must be"):
        load_volume(tmp_path / "nan.nii.gz", nan="zero")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="unreadable"):
        load_label_map(tmp_path / "junk.nii.gz")
    with pytest.raises(ValueError, match="no such file"):
        load_label_map(tmp_path / "missing.nii.gz")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a NIfTI"):
        load_volume(tmp_path / "x.txt")


def test_a_4d_singleton_is_read_lazily_and_checked_before_reading(tmp_path):
    # scaling kept through the lazy reshape
    data = np.random.default_rng(0).integers(0, 1000, (6, 7, 8, 1)).astype(np.int16)
    img = nib.Nifti1Image(data, _lia_affine())
    img.header.set_slope_inter(0.5, 3.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = load_volume(tmp_path / "scaled.nii.gz", canonical=False)
    assert vol.data.shape == (6, 7, 8)
    np.testing.assert_allclose(vol.data, data[..., 0] * 0.5 + 3.0)
    # a header that claims 10^9 voxels over a few bytes: refused on its size, nothing read
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1000, 1000, 1000, 1))
    hdr.set_data_dtype(np.uint8)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match="max_voxels"):
        load_volume(path)
    # cut short: one ValueError naming the file, in the stored and in the RAS orientation
    noise = np.random.default_rng(1).random((30, 31, 32)).astype(np.float32)  # the header stays
    nib.save(nib.Nifti1Image(noise, _lia_affine()), tmp_path / "cut.nii.gz")
    raw = (tmp_path / "cut.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    for canonical in (False, True):
        with pytest.raises(ValueError, match="cut.nii.gz: unreadable image data"):
            load_volume(tmp_path / "cut.nii.gz", canonical=canonical)


def test_save_is_atomic_and_round_trips(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    aff = _lia_affine()
    out = save_volume(data, aff, tmp_path / "sub" / "x.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    assert [p.name for p in out.parent.iterdir()] == ["x.nii.gz"]  # no temporary left behind


def test_label_table_structure():
    t = LabelTable.create("tissue")
    idx = {v: i for i, v in enumerate(t.generation_labels)}
    swap = np.asarray(t.lr_swap)
    assert np.array_equal(swap[swap], np.arange(t.n_labels))  # an involution
    for a, b in LR_PAIRS:
        assert swap[idx[a]] == idx[b] and t.classes[idx[a]] == t.classes[idx[b]]
    assert swap[idx[16]] == idx[16]  # brainstem is midline
    assert t.classes[0] == 0 and t.extracerebral[idx[507]] and not t.extracerebral[idx[24]]
    assert [t.target_lut[idx[v]] for v in (0, 3, 2, 4, 24, 507, 30)] == [0, 1, 2, 3, 3, 0, 0]
    tv = LabelTable.create("tissue_ventricular")
    assert tv.target_lut[idx[24]] == 0 and tv.target_lut[idx[4]] == 3
    s = LabelTable.create("synthseg")
    assert s.target.n_classes == 32
    perm = s.target.class_swap()
    assert sorted(perm) == list(range(32)) and perm[s.target.values.index(2)] == s.target.values.index(41)
    assert LabelTable.from_dict(s.to_dict()) == s
    assert REFERENCE_PRESETS["ibsr"] == {0: 0, 1: 3, 2: 1, 3: 2}


def test_unknown_labels_warn_or_raise(caplog):
    values = np.array([0, 2, 9999, 41])
    with caplog.at_level(logging.WARNING):
        enc = LabelTable.create("tissue").encode(values, source="m.nii.gz")
    assert "9999" in caplog.text and enc[2] == 0 and enc[1] != 0
    with pytest.raises(ValueError, match="9999"):
        LabelTable.create("tissue", unknown="error").encode(values, source="m.nii.gz")
    with pytest.raises(ValueError, match="unknown target preset"):
        target_preset("nope")
    custom = LabelTable.create({2: 1, 41: 1, 3: 2, 42: 2})
    assert custom.target.n_classes == 3


def test_phantoms_are_valid_label_maps():
    maps = make_phantom_label_maps(2, shape=(96, 112, 96))
    table = LabelTable.create("tissue", unknown="error")
    a = table.encode(maps[0])
    assert a.dtype == np.uint8 and not np.array_equal(maps[0], maps[1])
    vals = set(np.unique(maps[0]).tolist())
    assert {2, 41, 3, 42, 4, 43, 24, 507} <= vals
    # left structures lie on the left (RAS: small x)
    x = np.nonzero(maps[0] == 2)[0].mean(), np.nonzero(maps[0] == 41)[0].mean()
    assert x[0] < x[1]


@pytest.mark.skipif(not (SHARED / "label_maps").is_dir(), reason="shared data absent")
def test_shared_label_maps_load():
    table = LabelTable.create("tissue", unknown="error")
    for path in sorted((SHARED / "label_maps").glob("*.nii.gz"))[:2]:
        vol = load_label_map(path)
        assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
        enc = table.encode(vol.data, source=str(path))
        assert enc.max() > 0 and len(np.unique(enc)) >= 50
        # left hemisphere WM lies at smaller x than right (RAS)
        assert np.nonzero(vol.data == 2)[0].mean() < np.nonzero(vol.data == 41)[0].mean()


def test_hemispheres_merged_joins_each_left_right_pair():
    from synthseg_lite.labels.presets import TARGET_PRESETS, hemispheres_merged

    full = TARGET_PRESETS["synthseg"]
    merged, index = hemispheres_merged(full)
    assert merged == TARGET_PRESETS["synthseg_hemispheres"]
    assert merged.n_classes == 18 and merged.lr_pairs == () and len(index) == full.n_classes
    for left, right in full.lr_pairs:  # a pair is one class, named and valued as its left
        assert index[left] == index[right]
        assert merged.names[index[left]] == full.names[left].removeprefix("Left-")
        assert merged.values[index[left]] == full.values[left]
    paired = {k for pair in full.lr_pairs for k in pair}
    alone = [k for k in range(full.n_classes) if k not in paired]  # background, 3rd/4th, stem
    assert [merged.names[index[k]] for k in alone] == [full.names[k] for k in alone]
    assert sorted(set(index)) == list(range(merged.n_classes))
    # FreeSurfer labels: both hemispheres' cortex parcels and white matter land together
    assert merged.mapping[3] == merged.mapping[42] == merged.mapping[1035] == merged.mapping[2035]
    assert merged.mapping[2] == merged.mapping[41] != merged.mapping[3]
    assert merged.mapping[16] == index[full.mapping[16]]


def test_synthseg_fs_counts_the_temporal_choroid_plexus_in_the_lateral_ventricle():
    from synthseg_lite.labels.presets import TARGET_PRESETS

    synthseg, fs = TARGET_PRESETS["synthseg"], TARGET_PRESETS["synthseg_fs"]
    assert fs.values == synthseg.values and fs.names == synthseg.names  # same outputs
    assert fs.lr_pairs == synthseg.lr_pairs
    changed = {k for k in synthseg.mapping if synthseg.mapping[k] != fs.mapping[k]}
    assert changed == {137, 164}  # only the temporal horn's choroid plexus moves
    cls = {v: i for i, v in enumerate(fs.values)}
    assert (synthseg.mapping[137], synthseg.mapping[164]) == (cls[5], cls[44])  # SynthSeg's
    assert (fs.mapping[137], fs.mapping[164]) == (cls[4], cls[43])  # left stays left
    # as FreeSurfer's own choroid plexus and the maps' other choroid labels are counted
    assert fs.mapping[137] == fs.mapping[31] == fs.mapping[136]
    assert fs.mapping[164] == fs.mapping[63] == fs.mapping[163]
