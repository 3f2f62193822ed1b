"""Each model's own QC threshold: stored in its model file, used by infer when qc_threshold is not
set; the shipped structure model does not flag a clean scan and flags a heavily degraded one."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference.segment import QC_THRESHOLD
from synthseg_lite.inference.predictor import resolve_model
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import (
    ModelMeta,
    ensemble_qc_threshold,
    load_model,
    model_qc_threshold,
    read_meta,
    save_model,
    with_qc_threshold,
)
from synthseg_lite.model.unet import UNetConfig, build_unet

ROOT = Path(__file__).resolve().parents[1]
OASIS = ROOT.parent / "shared" / "data" / "real" / "oasis_vxm" / "t1.nii.gz"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    meta = ModelMeta(cfg, LabelTable.create("tissue"), 2.0, (32,) * 3, {"step": 7})
    return save_model(path, build_unet(cfg, 4), meta, "int8")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (40, 36, 32)], indexing="ij"), -1)
    ball = ((idx - np.array([20, 18, 16])) ** 2).sum(-1) <= 144
    path = tmp_path_factory.mktemp("scan") / "s1.nii.gz"
    nib.save(nib.Nifti1Image((ball * 80 + 5).astype(np.float32), np.eye(4)), str(path))
    return path


def _flags(scan: Path, out: Path, model: Path, **options) -> list[bool]:
    opts = InferenceOptions(tta="none", save_qc=False, progress=False, report=False, **options)
    (result,) = segment_scans(scan, out, model, opts)
    assert result.error is None
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    return [r["qc_flag"] in ("1", "True", "true") for r in rows]


def test_the_threshold_is_read_from_the_model_file(tmp_path, tiny_model, scan) -> None:
    assert model_qc_threshold(read_meta(tiny_model)) is None
    strict = with_qc_threshold(tiny_model, tmp_path / "strict.pt", 1.0, "test: flag everything")
    lenient = with_qc_threshold(tiny_model, tmp_path / "lenient.pt", 0.0)
    meta = read_meta(strict)
    assert model_qc_threshold(meta) == 1.0 and meta.extra["qc_calibration"].startswith("test")
    assert meta.extra["step"] == 7  # the rest of the metadata is kept
    assert _flags(scan, tmp_path / "a", strict) == [True]  # every score < 1.0
    assert _flags(scan, tmp_path / "b", lenient) == [False]
    assert _flags(scan, tmp_path / "c", strict, qc_threshold=0.0) == [False]  # the user's wins
    # an ensemble takes the lowest of its members'; a member without one counts as 0.70
    assert ensemble_qc_threshold(meta, [lenient], QC_THRESHOLD) == 0.0
    assert ensemble_qc_threshold(meta, [tiny_model], QC_THRESHOLD) == QC_THRESHOLD
    assert ensemble_qc_threshold(meta, [], QC_THRESHOLD) == 1.0


def test_storing_a_threshold_keeps_the_weights(tmp_path, tiny_model) -> None:
    out = with_qc_threshold(tiny_model, tmp_path / "with.pt", 0.42)
    raw_in = torch.load(tiny_model, weights_only=True)
    raw_out = torch.load(out, weights_only=True)
    assert raw_in["precision"] == raw_out["precision"] == "int8"
    for k, v in raw_in["state_dict"].items():
        w = raw_out["state_dict"][k]
        same = (
            all(torch.equal(v[n], w[n]) for n in v) if isinstance(v, dict) else torch.equal(v, w)
        )
        assert same, k
    net_a, _ = load_model(tiny_model)
    net_b, meta = load_model(out)
    assert meta.extra["qc_threshold"] == 0.42
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        with_qc_threshold(tiny_model, tmp_path / "bad.pt", 1.5)


def test_options_accept_none_and_refuse_out_of_range() -> None:
    assert InferenceOptions().qc_threshold is None
    with pytest.raises(ValueError, match="qc_threshold"):
        InferenceOptions(qc_threshold=1.2)


def test_the_shipped_models_carry_their_threshold() -> None:
    for name in ("tissue", "structures"):  # calibrated with refine=gmm, stored in the file
        meta = read_meta(resolve_model(name))
        assert "qc_threshold" in meta.extra
        assert 0.5 < model_qc_threshold(meta) == meta.extra["qc_threshold"] < 1


@pytest.mark.slow
@pytest.mark.skipif(not OASIS.is_file(), reason="shared data absent")
def test_structure_model_flags_a_degraded_scan_not_a_clean_one(tmp_path) -> None:
    """model=structures with its own threshold (default options): the clean OASIS T1 passes;
    the same brain with uniform random intensities (benchmarks/qc_calibration.py's ``random``)
    is flagged."""
    spec = importlib.util.spec_from_file_location("qc_cal", ROOT / "benchmarks/qc_calibration.py")
    qc_cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qc_cal)
    img = nib.load(str(OASIS))
    data = np.asarray(img.dataobj, dtype=np.float32)
    bad = tmp_path / "scans" / "random.nii.gz"
    bad.parent.mkdir()
    nib.save(nib.Nifti1Image(qc_cal.degrade(data, (1, 1, 1), "random"), img.affine), str(bad))
    model = resolve_model("structures")
    opts = InferenceOptions(save_qc=False, progress=False, report=False, threads=1)
    (clean,) = segment_scans(OASIS, tmp_path / "clean", model, opts)
    (degraded,) = segment_scans(bad, tmp_path / "degraded", model, opts)
    threshold = model_qc_threshold(read_meta(model))
    assert clean.qc["qc_score"] >= threshold > degraded.qc["qc_score"]
    for out, flag in ((tmp_path / "clean", "False"), (tmp_path / "degraded", "True")):
        (row,) = csv.DictReader((out / "volumes.csv").open())
        assert row["qc_flag"] in ((flag, str(int(flag == "True"))))
