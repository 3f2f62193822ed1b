"""Label-map loading, folds, and the reproducible label-map streams (synthseg_lite.data)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthseg_lite.data import (
    DataConfig,
    LabelMapStream,
    PhantomConfig,
    StepLoader,
    SynthDataModule,
    SyntheticValSet,
    crop_to_labels,
    fold_ids,
    kfold_splits,
    load_label_maps,
    load_or_create_splits,
    load_real_case,
    resolve_paths,
    stack_maps,
)
from synthseg_lite.labels import LabelTable

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LIA = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)


def _sphere_map(shape=(40, 44, 36), seed=0) -> np.ndarray:
    """RAS FreeSurfer map: skull 507 > CSF 24 > cortex 3/42 > WM 2/41 > ventricles 4/43."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0)) * rng.uniform(0.9, 1.1)
    lab = np.zeros(shape, np.int32)
    right = grid[0] > 0
    for radius, left_label, right_label in (
        (17, 507, 507),
        (15, 24, 24),
        (13, 3, 42),
        (9, 2, 41),
        (3, 4, 43),
    ):
        lab[r < radius] = np.where(right, right_label, left_label)[r < radius]
    return lab


@pytest.fixture(scope="module")
def table() -> LabelTable:
    return LabelTable.create("tissue")


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory) -> Path:
    """Six maps saved in LIA orientation (exercises reorientation to RAS)."""
    d = tmp_path_factory.mktemp("maps")
    for i in range(6):
        ras = _sphere_map(seed=i)
        lia = np.flip(ras, 0).transpose(0, 2, 1)[:, ::-1, :]  # RAS (x, y, z) -> LIA (x, z, y)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(lia), LIA), str(d / f"map_{i:02d}.nii.gz"))
    return d


def test_resolve_paths(map_dir: Path) -> None:
    assert len(resolve_paths(map_dir)) == 6
    assert resolve_paths(str(map_dir / "map_0[12].nii.gz")) == [
        map_dir / "map_01.nii.gz",
        map_dir / "map_02.nii.gz",
    ]
    assert resolve_paths(map_dir / "map_03.nii.gz") == [map_dir / "map_03.nii.gz"]
    with pytest.raises(ValueError, match="no NIfTI"):
        resolve_paths(str(map_dir / "nothing_*.nii.gz"))


def test_load_label_maps_reorients_encodes_and_stacks(map_dir: Path, table: LabelTable) -> None:
    ids, maps = load_label_maps(resolve_paths(map_dir), table, margin=2)
    assert ids == [f"map_{i:02d}" for i in range(6)]
    assert maps.dtype == np.uint8 and maps.ndim == 4 and maps.shape[0] == 6
    ras = table.encode(crop_to_labels(_sphere_map(seed=0), 2))
    o = [(a - b) // 2 for a, b in zip(maps.shape[1:], ras.shape)]
    got = maps[
        0, o[0] : o[0] + ras.shape[0], o[1] : o[1] + ras.shape[1], o[2] : o[2] + ras.shape[2]
    ]
    np.testing.assert_array_equal(got, ras)  # back in RAS, same voxels
    left, right = table.generation_labels.index(3), table.generation_labels.index(42)
    x_left = np.nonzero(maps[0] == left)[0].mean()
    assert x_left < np.nonzero(maps[0] == right)[0].mean()  # left hemisphere at low x (RAS)


def test_crop_and_stack() -> None:
    a = np.zeros((10, 10, 10), np.uint8)
    a[3:5, 4:8, 2:3] = 1
    assert crop_to_labels(a, 1).shape == (4, 6, 3)
    assert crop_to_labels(a, 9).shape == (10, 10, 10)
    s = stack_maps([np.ones((2, 3, 4), np.uint8), np.ones((4, 3, 2), np.uint8)])
    assert s.shape == (2, 4, 3, 4) and s[0].sum() == 24 and s[0, 1:3].all() and not s[0, 0].any()


def test_kfold_splits_partition_and_are_nnunet_like() -> None:
    ids = [f"case_{i:02d}" for i in range(12)][::-1]  # order must not matter: sorted first
    splits = kfold_splits(ids, 5, 12345)
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]
    vals = [k for s in splits for k in s["val"]]
    assert sorted(vals) == sorted(ids)
    for s in splits:
        assert sorted(s["train"] + s["val"]) == sorted(ids) and s["train"] == sorted(s["train"])
    assert splits == kfold_splits(sorted(ids), 5, 12345)
    assert splits != kfold_splits(ids, 5, 1)
    # pinned: KFold(5, shuffle=True, random_state=12345) over 12 sorted ids (what nnU-Net writes)
    order = np.arange(12)
    np.random.RandomState(12345).shuffle(order)
    assert splits[0]["val"] == [sorted(ids)[i] for i in order[:3]]
    with pytest.raises(ValueError, match="at least 5"):
        kfold_splits(ids[:4], 5)


def test_splits_file_written_then_reused(tmp_path: Path) -> None:
    ids = [f"m{i}" for i in range(10)]
    path = tmp_path / "run" / "splits.json"
    first = load_or_create_splits(path, ids)
    assert json.loads(path.read_text()) == first
    custom = [{"train": ids[:8], "val": ids[8:]}]
    path.write_text(json.dumps(custom))
    assert load_or_create_splits(path, ids) == custom  # a user file is honoured
    assert fold_ids(custom, 0, ids) == (ids[:8], ids[8:])
    assert fold_ids(custom, "all", ids) == (ids, ids)
    with pytest.raises(ValueError, match="fold must be"):
        fold_ids(custom, 1, ids)
    path.write_text(json.dumps([{"train": ["zz"], "val": []}]))
    with pytest.raises(ValueError, match="not among the label maps"):
        load_or_create_splits(path, ids)


def _maps(n: int = 7) -> np.ndarray:
    return np.stack([np.full((4, 5, 6), i, np.uint8) for i in range(n)])


def test_stream_is_a_function_of_seed_step_rank() -> None:
    maps = _maps()
    s = LabelMapStream(maps, [1, 2, 3, 4, 5], batch_size=2, seed=3)
    b = s.batch(10)
    assert b["labels"].shape == (2, 1, 4, 5, 6) and b["labels"].dtype == torch.uint8
    assert int(b["step"]) == 10 and set(b["index"].tolist()) <= {1, 2, 3, 4, 5}
    assert len(set(b["index"].tolist())) == 2  # distinct maps within a batch
    assert torch.equal(b["index"], s.batch(10)["index"])
    seq = [tuple(s.batch(k)["index"].tolist()) for k in range(20)]
    other_rank = LabelMapStream(maps, [1, 2, 3, 4, 5], 2, seed=3, rank=1)
    assert seq != [tuple(other_rank.batch(k)["index"].tolist()) for k in range(20)]
    assert seq != [
        tuple(LabelMapStream(maps, [1, 2, 3, 4, 5], 2, seed=4).batch(k)["index"].tolist())
        for k in range(20)
    ]


def test_stream_workers_and_resume_give_the_same_sequence() -> None:
    maps = _maps()
    ref = LabelMapStream(maps, range(7), 3, seed=0, n_steps=8)
    expected = [b["index"].tolist() for b in DataLoader(ref, batch_size=None)]
    par = LabelMapStream(maps, range(7), 3, seed=0, n_steps=8)
    got = [
        (int(b["step"]), b["index"].tolist())
        for b in DataLoader(par, batch_size=None, num_workers=2)
    ]
    assert [g[0] for g in got] == list(range(8)) and [g[1] for g in got] == expected
    resumed = LabelMapStream(maps, range(7), 3, seed=0, n_steps=3)
    loader = StepLoader(resumed, start_fn=lambda: 5)
    assert [b["index"].tolist() for b in loader] == expected[5:8]
    assert loader.state_dict() == {"next_step": 5}  # what Lightning stores in checkpoints


def test_synthetic_val_set_is_fixed() -> None:
    v = SyntheticValSet(_maps(), [0, 6], batch_size=3, n_batches=2, seed=1)
    assert (
        len(v) == 2 and torch.equal(v[1]["labels"], v[1]["labels"]) and int(v[1]["val_index"]) == 1
    )
    assert set(v[0]["labels"].flatten().unique().tolist()) <= {0, 6}


def test_datamodule_folds_and_batches(map_dir: Path, table: LabelTable, tmp_path: Path) -> None:
    cfg = DataConfig(label_maps=str(map_dir / "*.nii.gz"), n_folds=3, val_batches=2)
    dm = SynthDataModule(
        cfg,
        table,
        fold=1,
        batch_size=2,
        seed=0,
        spacing_mm=2.0,
        splits_path=tmp_path / "splits.json",
    )
    dm.setup("fit")
    assert (tmp_path / "splits.json").is_file()
    assert len(dm.train_indices) == 4 and len(dm.val_indices) == 2
    assert not set(dm.train_indices) & set(dm.val_indices)
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape[:2] == (2, 1) and set(batch["index"].tolist()) <= set(
        dm.train_indices
    )
    assert len(dm.val_dataloader()) == 1
    with pytest.raises(ValueError, match="fold must be"):
        SynthDataModule(
            cfg,
            table,
            fold=3,
            batch_size=2,
            seed=0,
            spacing_mm=2.0,
            splits_path=tmp_path / "splits.json",
        ).setup("fit")


def test_phantom_default_set(table: LabelTable, tmp_path: Path) -> None:
    cfg = DataConfig(phantoms=PhantomConfig(n=2, shape=[64, 72, 64]), n_folds=2)
    dm = SynthDataModule(
        cfg,
        table,
        fold="all",
        batch_size=1,
        seed=0,
        spacing_mm=1.0,
        splits_path=tmp_path / "s.json",
    )
    ids, maps = dm.load_maps()
    assert ids == ["phantom_000", "phantom_001"] and maps.dtype == np.uint8 and maps.max() > 0


def test_real_case_resampled_and_mapped(tmp_path: Path) -> None:
    img = np.random.default_rng(0).uniform(0, 100, (20, 10, 20)).astype(np.float32)
    ref = np.zeros((20, 10, 20), np.int16)
    ref[5:15, 2:8, 5:15] = 3  # IBSR WM
    ref[8:12, 4:6, 8:12] = 1  # IBSR CSF
    aff = np.diag([1.0, 2.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(ref, aff), str(tmp_path / "seg.nii.gz"))
    x, t = load_real_case(tmp_path / "t1.nii.gz", tmp_path / "seg.nii.gz", "ibsr", spacing_mm=2.0)
    assert x.shape == (1, 10, 10, 10) and t.shape == (10, 10, 10) and t.dtype == torch.uint8
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(t.unique().tolist()) == {0, 2, 3}  # WM -> 2, CSF -> 3 in the tissue convention
    with pytest.raises(ValueError, match="unknown label preset"):
        load_real_case(tmp_path / "t1.nii.gz", tmp_path / "seg.nii.gz", "nope", 2.0)


@pytest.mark.skipif(
    not (SHARED / "real" / "ibsr" / "IBSR_01").is_dir(), reason="shared data absent"
)
def test_real_ibsr_case() -> None:
    d = SHARED / "real" / "ibsr" / "IBSR_01"
    x, t = load_real_case(d / "IBSR_01.nii.gz", d / "IBSR_01_seg.nii.gz", "ibsr", spacing_mm=2.0)
    assert x.shape[0] == 1 and x.shape[1:] == t.shape and all(90 <= s <= 130 for s in t.shape)
    counts = torch.bincount(t.flatten().long(), minlength=4)
    assert counts[1] > counts[3] and counts[2] > counts[3] > 0  # GM, WM >> ventricular CSF
