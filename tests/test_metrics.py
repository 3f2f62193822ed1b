"""Golden tests of the evaluation metrics on hand-made volumes, and of evaluate's file handling."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.evaluation.metrics import (
    case_metrics,
    evaluate_pairs,
    label_mapping,
    map_labels,
    summarise,
    write_report,
)
from synthseg_lite.evaluation.pairing import find_cases, pair_cases
from synthseg_lite.evaluation.quality import evaluate_quality, image_quality


def _cube(shape=(40, 40, 40), start=(10, 10, 10), size=(10, 10, 10)) -> np.ndarray:
    out = np.zeros(shape, np.int64)
    out[tuple(slice(s, s + n) for s, n in zip(start, size))] = 1
    return out


def test_dice_iou_precision_recall_of_known_overlap():
    ref = _cube(size=(10, 10, 10))
    pred = _cube(start=(15, 10, 10), size=(10, 10, 10))  # half of each cube overlaps
    m, confusion = case_metrics(pred, ref, (1, 1, 1), 2, surface=False)
    assert m[1]["Dice"] == pytest.approx(0.5)
    assert m[1]["IoU"] == pytest.approx(500 / 1500)
    assert m[1]["precision"] == pytest.approx(0.5) and m[1]["recall"] == pytest.approx(0.5)
    assert (m[1]["TP"], m[1]["FP"], m[1]["FN"]) == (500, 500, 500)
    assert confusion.tolist() == [[40**3 - 1500, 500], [500, 500]]


@pytest.mark.parametrize(
    "axis,shift,spacing",
    [(0, 2, (1.5, 1.0, 1.0)), (2, 3, (1.0, 1.0, 2.5)), (1, 1, (1.0, 0.8, 1.0))],
)
def test_hd95_of_shifted_cube_is_the_shift_in_mm(axis, shift, spacing):
    ref = _cube(size=(16, 16, 16))
    start = [10, 10, 10]
    start[axis] += shift
    pred = _cube(start=tuple(start), size=(16, 16, 16))
    m, _ = case_metrics(pred, ref, spacing, 2)
    expected = shift * spacing[axis]
    assert m[1]["HD95"] == pytest.approx(expected, rel=1e-5)
    assert m[1]["HD"] == pytest.approx(expected, rel=1e-5)
    assert 0 < m[1]["ASSD"] < expected


def test_anisotropic_voxels_scale_volumes_and_distances():
    ref = _cube(size=(8, 8, 8))
    pred = _cube(size=(10, 8, 8))  # 2 extra slices along x
    m_iso, _ = case_metrics(pred, ref, (1, 1, 1), 2)
    m_aniso, _ = case_metrics(pred, ref, (2.0, 1, 1), 2)
    assert m_aniso[1]["ref_volume_mm3"] == pytest.approx(2 * 512)
    assert m_aniso[1]["volume_diff_mm3"] == pytest.approx(2 * 128)
    assert m_aniso[1]["volume_diff_pct"] == pytest.approx(25.0)
    assert m_iso[1]["HD"] == pytest.approx(2.0) and m_aniso[1]["HD"] == pytest.approx(4.0)
    assert m_iso[1]["Dice"] == m_aniso[1]["Dice"]


def test_empty_class_policy():
    ref = np.zeros((12, 12, 12), np.int64)
    ref[2:6, 2:6, 2:6] = 1
    pred = ref.copy()
    # class 2 absent from both, class 1 perfect
    m, _ = case_metrics(pred, ref, (1, 1, 1), 4)
    assert m[2]["Dice"] == 1.0 and m[2]["HD95"] == 0.0 and m[2]["ASSD"] == 0.0
    assert m[1]["Dice"] == 1.0 and m[1]["HD95"] == 0.0
    # class 3 only in the prediction; class 1 missing from the prediction
    pred = np.zeros_like(ref)
    pred[8:10, 8:10, 8:10] = 3
    m, _ = case_metrics(pred, ref, (1, 1, 1), 4)
    assert m[1]["Dice"] == 0.0 and math.isnan(m[1]["precision"]) and m[1]["recall"] == 0.0
    assert m[1]["HD95"] == math.inf and m[1]["ASSD"] == math.inf
    assert m[3]["Dice"] == 0.0 and m[3]["precision"] == 0.0 and math.isnan(m[3]["recall"])
    assert m[3]["HD"] == math.inf


def test_summary_means_skip_nan_and_keep_inf():
    cases = [
        {"metrics": {1: {"Dice": 0.8, "precision": float("nan"), "HD95": 2.0}}},
        {"metrics": {1: {"Dice": 0.6, "precision": 0.5, "HD95": float("inf")}}},
    ]
    # fill the other metrics so summarise sees the full set
    from synthseg_lite.evaluation.metrics import METRICS

    for c in cases:
        c["metrics"][1] = {k: c["metrics"][1].get(k, 1.0) for k in METRICS}
        c["confusion"] = np.eye(2, dtype=int)
    s = summarise(cases, ["background", "x"])
    assert s["mean"][1]["Dice"] == pytest.approx(0.7)
    assert s["mean"][1]["precision"] == pytest.approx(0.5)
    assert s["mean"][1]["HD95"] == math.inf
    assert s["foreground_mean"]["Dice"] == pytest.approx(0.7)
    assert s["confusion"].tolist() == [[2, 0], [0, 2]]


def test_label_presets_and_custom_mapping():
    raw = np.array([0, 1, 2, 3, 7])
    assert map_labels(raw, label_mapping("ibsr")).tolist() == [
        0,
        3,
        1,
        2,
        0,
    ]  # IBSR 1 CSF 2 GM 3 WM
    assert map_labels(raw, label_mapping("tissue")).tolist() == [0, 1, 2, 3, 0]
    aseg = np.array([2, 3, 4, 24, 41, 42, 1001, 30])
    assert map_labels(aseg, label_mapping("aseg")).tolist() == [2, 1, 3, 3, 2, 1, 1, 0]
    assert map_labels(raw, label_mapping({1: 2, 2: 1})).tolist() == [0, 2, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown label preset"):
        label_mapping("nope")


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(
            np.asarray(data), np.diag([1.2, 1.0, 0.9, 1.0]) if affine is None else affine
        ),
        str(path),
    )
    return path


def test_pairing_by_pattern(tmp_path):
    for case in ("a", "b"):
        _save(tmp_path / "pred" / f"{case}_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
        _save(
            tmp_path / "ref" / case / f"{case}.nii.gz", np.zeros((4, 4, 4), np.float32)
        )  # image: ignored
        _save(tmp_path / "ref" / case / f"{case}_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _save(tmp_path / "ref" / "c" / "c_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))  # unpaired
    pairs = pair_cases(tmp_path / "pred", tmp_path / "ref")
    assert [p[0] for p in pairs] == ["a", "b"]
    assert pairs[0][2] == tmp_path / "ref" / "a" / "a_seg.nii.gz"
    assert set(find_cases(tmp_path / "ref", r"(?P<id>[a-z])")) == {"a", "b"}
    with pytest.raises(ValueError, match="same case id"):
        find_cases(tmp_path / "ref", r"(?P<id>[a-z])(_seg)?")
    with pytest.raises(ValueError, match="no case pairs"):
        pair_cases(tmp_path / "pred", tmp_path / "ref", pred_pattern=r"(?P<id>.+)_nothing")


def test_evaluate_pairs_writes_nnunet_style_report(tmp_path):
    ref = np.zeros((20, 20, 20), np.int16)
    ref[4:12, 4:12, 4:12] = 2  # IBSR GM
    ref[12:16, 4:12, 4:12] = 3  # IBSR WM
    pred = np.zeros_like(ref)
    pred[4:12, 4:12, 4:12] = 1  # tissue GM
    pred[12:15, 4:12, 4:12] = 2  # tissue WM, one slice short
    _save(tmp_path / "ref" / "x_seg.nii.gz", ref)
    _save(tmp_path / "pred" / "x_seg.nii.gz", pred)
    _save(tmp_path / "pred" / "y_seg.nii.gz", pred[:10])  # other grid: skipped, not fatal
    _save(tmp_path / "ref" / "y_seg.nii.gz", ref)
    summary = evaluate_pairs(pair_cases(tmp_path / "pred", tmp_path / "ref"), "tissue", "ibsr")
    assert summary["n_cases"] == 1 and summary["skipped"][0]["case"] == "y"
    m = summary["metric_per_case"][0]["metrics"]
    assert m[1]["Dice"] == 1.0 and m[2]["Dice"] == pytest.approx(2 * 3 / 7)
    assert m[2]["HD"] == pytest.approx(1.2)  # one missing slice along x, 1.2 mm voxels
    assert m[3]["Dice"] == 1.0  # CSF absent from both
    files = write_report(summary, tmp_path / "out")
    data = json.loads(files["summary"].read_text())
    assert set(data) >= {"metric_per_case", "mean", "foreground_mean", "confusion", "skipped"}
    assert data["mean"]["2"]["Dice"] == pytest.approx(2 * 3 / 7)
    assert files["csv"].read_text().splitlines()[0].startswith("case,class,name,Dice,IoU")
    assert files["boxplots"].stat().st_size > 0 and files["confusion"].stat().st_size > 0


def test_image_quality_identical_and_different():
    rng = np.random.default_rng(0)
    real = np.zeros((24, 24, 12), np.float32)
    real[4:20, 4:20, 2:10] = rng.uniform(50, 150, (16, 16, 8))
    same = image_quality(
        real * 3.0 + 0.0, real
    )  # another intensity scale: the same after rescaling
    assert same["SSIM"] == pytest.approx(1.0) and same["PSNR"] > 100
    assert image_quality(real, real)["PSNR"] == math.inf
    assert same["hist_intersection"] == pytest.approx(1.0)
    noisy = real + (real > 0) * rng.normal(0, 30, real.shape).astype(np.float32)
    q = image_quality(noisy, real)
    assert 0 < q["SSIM"] < 0.9 and np.isfinite(q["PSNR"]) and q["hist_intersection"] < 1


def test_evaluate_quality_writes_outputs(tmp_path):
    rng = np.random.default_rng(1)
    real = np.zeros((16, 16, 8), np.float32)
    real[3:13, 3:13, 2:6] = rng.uniform(10, 20, (10, 10, 4))
    _save(tmp_path / "real" / "s1.nii.gz", real)
    _save(
        tmp_path / "synth" / "s1.nii.gz",
        real + rng.normal(0, 1, real.shape).astype(np.float32) * (real > 0),
    )
    summary = evaluate_quality(tmp_path / "synth", tmp_path / "real", tmp_path / "out")
    assert summary["n_cases"] == 1 and 0 < summary["mean"]["SSIM"] < 1
    for name in ("quality_summary.json", "quality.csv", "histograms.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_resample_pred_scores_a_prediction_from_another_grid(tmp_path):
    """A 1 mm reference and the same tissue drawn on a 2 mm grid, left-right flipped: without resample_pred the
    pair is refused with the option's name; with it, it is scored on the reference's grid."""
    from synthseg_lite.evaluation.metrics import evaluate_pairs

    ref = np.zeros((40, 40, 40), np.int16)
    ref[8:32, 8:32, 8:32] = 1
    ref[14:26, 14:26, 14:26] = 2
    ref_aff = np.eye(4)
    # 2 mm voxels, x flipped: coarse voxel i covers the 1 mm voxels 2(19 - i) and 2(19 - i) + 1
    lia = np.array([[-2.0, 0, 0, 38.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])
    pred = np.ascontiguousarray(ref[::2, ::2, ::2][::-1])
    nib.save(nib.Nifti1Image(ref, ref_aff), tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(pred, lia), tmp_path / "pred.nii.gz")
    pairs = [("c", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")]
    with pytest.raises(ValueError, match="resample_pred=true"):
        evaluate_pairs(pairs, surface=False)
    summary = evaluate_pairs(pairs, surface=False, resample_pred=True)
    dice = {k: v["Dice"] for k, v in summary["mean"].items()}
    assert dice == {1: 1.0, 2: 1.0, 3: 1.0}  # every cube edge falls on a 2 mm voxel edge
