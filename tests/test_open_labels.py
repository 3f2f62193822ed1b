"""Open label system: data.labels=auto / protocol files, >255 labels, priors, voxel sizes,
flip TTA."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from synthseg_lite.data import DataConfig, load_label_maps, make_label_table, resolve_paths
from synthseg_lite.inference.predictor import Predictor
from synthseg_lite.labels import LabelTable, build_label_table, read_label_protocol
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator
from synthseg_lite.synth.config import FlipConfig, SpatialConfig

PROTOCOL = """
labels: {1: myocardium, 2: LV-blood, 3: RV-blood, 4: left-lung, 5: right-lung, 300: lesion}
classes: {blood: [2, 3]}
lr_pairs: [[4, 5]]
target: {1: 1, 2: 2, 3: 2, 4: 4, 5: 5}
target_names: {2: blood}
priors:
  blood: {mean: [200, 220], std: [0, 2]}
  1: {mean: [40, 50]}
drop_labels: [300]
"""


def nested_map(shape=(40, 44, 36), values=(5, 17, 40, 99, 300), seed=0) -> np.ndarray:
    """Nested ellipsoids (outer to inner: values[0], values[1], ...) with a random centre shift."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(shape) * 0.42 * rng.uniform(0.9, 1.1, 3)
    out = np.zeros(shape, np.int32)
    for k, v in enumerate(values):
        r = radii * (1 - k / (len(values) + 0.5))
        out[(((grid - centre) / r) ** 2).sum(-1) <= 1] = v
    return out


def test_auto_table_every_value_its_own_class_and_identity_target():
    t = build_label_table("auto", values=[0, 5, 17, 300, 1000])
    assert t.generation_labels == (0, 5, 17, 300, 1000)
    assert t.classes == (0, 1, 2, 3, 4) and t.lr_swap == (0, 1, 2, 3, 4)
    assert t.target.values == (0, 5, 17, 300, 1000) and t.target_lut == (0, 1, 2, 3, 4)
    assert not any(t.extracerebral) and t.csf_index == 0 and t.priors == ()
    assert t.index_dtype == np.uint8 and t.flip_consistent
    # a user target still applies
    u = build_label_table("auto", target={5: 1, 17: 1, 300: 2}, values=[0, 5, 17, 300])
    assert u.target.n_classes == 3 and u.target_lut == (0, 1, 1, 2)
    rt = LabelTable.from_dict(t.to_dict())
    assert rt == t and rt.protocol == t.protocol
    # FreeSurfer tables are stored exactly as before (old checkpoints keep loading)
    assert "protocol" not in LabelTable.create("tissue").to_dict()


def test_more_than_255_labels_use_int16_through_the_generator():
    values = list(range(0, 600))
    t = build_label_table("auto", values=values)
    assert t.n_labels == 600 and t.index_dtype == np.int16
    raw = np.arange(16 * 16 * 16).reshape(16, 16, 16) % 600
    enc = t.encode(raw)
    assert enc.dtype == np.int16 and np.array_equal(t.decode(enc), raw)
    cfg = SynthConfig(patch_shape=[16, 16, 16],
                      spatial=SpatialConfig(enabled=False, crop_jitter=False),
                      flip=FlipConfig(prob=0.0))
    gen = SynthGenerator(cfg, t)
    out = gen(torch.from_numpy(enc)[None, None], make_generator("cpu", 0, 0))
    assert out.labels.dtype == torch.int16 and int(out.target.max()) > 255
    assert torch.equal(out.labels[0, 0], torch.from_numpy(enc))  # identity warp keeps every label


def test_protocol_file_classes_pairs_target_priors(tmp_path):
    path = tmp_path / "heart.yaml"
    path.write_text(PROTOCOL)
    t = build_label_table(str(path))
    idx = {v: i for i, v in enumerate(t.generation_labels)}
    assert t.classes[idx[2]] == t.classes[idx[3]]  # blood group: one Gaussian
    assert t.classes[idx[4]] == t.classes[idx[5]]  # left/right twins share one
    assert len(set(t.classes)) == 5  # background, myocardium, blood, lungs, lesion
    assert t.lr_swap[idx[4]] == idx[5] and t.extracerebral[idx[300]] and not t.extracerebral[idx[1]]
    assert t.target.values == (0, 1, 2, 4, 5) and t.target.names[2] == "blood"
    assert t.target.names[3] == "left-lung" and t.target_lut[idx[300]] == 0
    assert t.target.lr_pairs == ((3, 4),) and t.flip_consistent  # derived from the label pair
    assert t.priors[t.classes[idx[2]]] == ((200.0, 220.0), (0.0, 2.0))
    assert t.priors[t.classes[idx[1]]] == ((40.0, 50.0), None)
    assert LabelTable.from_dict(t.to_dict()) == t
    # the same protocol as TSV
    tsv = tmp_path / "heart.tsv"
    tsv.write_text(
        "value\tname\tclass\ttwin\ttarget\ttarget_name\tmean\tstd\n"
        "1\tmyocardium\t\t\t1\t\t40,50\t\n2\tLV-blood\tblood\t\t2\tblood\t200,220\t0,2\n"
        "3\tRV-blood\tblood\t\t2\tblood\t200,220\t0,2\n4\tleft-lung\t\t5\t4\t\t\t\n"
        "5\tright-lung\t\t4\t5\t\t\t\n300\tlesion\t\t\t\t\t\t\n"
    )
    t2 = build_label_table(str(tsv))
    for key in ("classes", "lr_swap", "target", "priors"):
        assert getattr(t2, key) == getattr(t, key)


@pytest.mark.parametrize(
    "text, match",
    [
        ("classes: {a: [1]}", "'labels'"),
        ("labels: [1, 2]\nlr_pairs: [[1, 7]]", "pair"),
        ("labels: [1, 2]\npriors: {1: {mean: [9, 3]}}", "low <= high"),
        ("labels: [1, 2]\nbogus: 1", "unknown keys"),
        ("labels: [1, 2]\npriors: {nope: {mean: [1, 3]}}", "class name"),
    ],
)
def test_bad_protocol_files_are_refused(tmp_path, text, match):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        build_label_table(str(path))
    with pytest.raises(ValueError, match="no such file"):
        read_label_protocol(tmp_path / "missing.yaml")


def test_class_priors_bound_the_generated_intensities(tmp_path):
    path = tmp_path / "heart.yaml"
    path.write_text(PROTOCOL)
    t = build_label_table(str(path))
    cfg = SynthConfig(patch_shape=[16, 16, 16])
    gen = SynthGenerator(cfg, t)
    raw = nested_map((24, 24, 24), values=(1, 2, 3))
    lab = torch.from_numpy(t.encode(raw))[None, None].expand(8, 1, -1, -1, -1).contiguous()
    p = gen.sample(lab, make_generator("cpu", 1, 0))
    blood, myo = t.classes[t.generation_labels.index(2)], t.classes[t.generation_labels.index(1)]
    assert ((p.means[:, blood] >= 200) & (p.means[:, blood] <= 220)).all()
    assert (p.stds[:, blood] <= 2).all()
    assert ((p.means[:, myo] >= 40) & (p.means[:, myo] <= 50)).all()
    other = t.classes[t.generation_labels.index(4)]
    assert p.means[:, other].max() > 50  # no prior: the global U(0, 255)


def test_label_maps_of_any_voxel_size_are_resampled_to_1mm(tmp_path, caplog):
    raw = nested_map((30, 30, 20), values=(5, 17, 40))
    for name, zooms in (("a", [1.0, 1.0, 2.0, 1.0]), ("b", [2.0, 2.0, 2.0, 1.0])):
        nib.save(nib.Nifti1Image(raw.astype(np.int16), np.diag(zooms)), tmp_path / f"{name}.nii.gz")
    cfg = DataConfig(label_maps=str(tmp_path), labels="auto")
    table = make_label_table(cfg)
    assert table.generation_labels == (0, 5, 17, 40)
    with caplog.at_level(logging.INFO):
        ids, maps = load_label_maps(resolve_paths(str(tmp_path)), table, margin=0)
    assert "resampled (nearest neighbour) to 1 mm" in caplog.text
    assert ids == ["a", "b"] and maps.dtype == np.uint8
    # b is twice as large in mm: its labelled box is twice as large on the common 1 mm grid
    extent = [np.ptp(np.nonzero(m)[0]) + 1 for m in maps]
    box = np.nonzero(raw)[0]
    assert extent[0] == np.ptp(box) + 1 and abs(extent[1] - 2 * extent[0]) <= 2
    assert set(np.unique(maps)) == {0, 1, 2, 3}  # nearest neighbour: no new labels


def _meta(table: LabelTable) -> ModelMeta:
    return ModelMeta(UNetConfig(n_stages=3, base_features=2, deep_supervision=False), table, 2.0,
                     (16, 16, 16), {})


def test_flip_tta_follows_declared_pairs_and_is_off_without_them(caplog):
    net = build_unet(UNetConfig(n_stages=3, base_features=2, deep_supervision=False), 3).eval()
    lateral = LabelTable.create({2: 1, 41: 2})  # left/right classes: pairs derived from the twins
    assert lateral.target.lr_pairs == ((1, 2),)
    assert len(Predictor([net], _meta(lateral), tta="flip").flips) == 2
    undeclared = LabelTable.from_dict(  # e.g. an older checkpoint without target pairs
        {**lateral.to_dict(), "target": {**lateral.to_dict()["target"], "lr_pairs": []}})
    assert not undeclared.flip_consistent
    with caplog.at_level(logging.WARNING):
        pred = Predictor([net], _meta(undeclared), tta="mirror")
    assert "flip test-time augmentation turned off" in caplog.text
    assert "tta=mirror also flips front/back and up/down" in caplog.text
    assert pred.flips == [(), (1,), (2,), (1, 2)]
    assert LabelTable.create("synthseg").flip_consistent
    assert LabelTable.create("tissue").flip_consistent
