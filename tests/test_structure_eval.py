"""Per-structure evaluation on hand-made asegs with known answers, pairing of the usual layouts,
the ventricles-only aseg preset and the evaluation figures."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.labels import STRUCTURE_GROUPS, TARGET_PRESETS
from synthseg_lite.evaluation.metrics import label_mapping, map_labels
from synthseg_lite.evaluation.pairing import case_key, find_cases, pair_cases
from synthseg_lite.evaluation.plots import box_plots
from synthseg_lite.evaluation.structure_metrics import (
    STRUCTURES,
    describe_errors,
    evaluate_structures,
    write_structure_report,
)

SPACING = (1.5, 1.0, 1.0)


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    cls = nib.MGHImage if path.name.endswith(".mgz") else nib.Nifti1Image
    nib.save(cls(np.asarray(data, dtype=np.int32), affine), str(path))
    return path


def _box(vol, start, size, value):
    vol[tuple(slice(s, s + n) for s, n in zip(start, size))] = value


def _pair():
    """A reference aseg and a prediction whose per-structure scores are known exactly."""
    ref = np.zeros((40, 36, 36), np.int32)
    _box(ref, (4, 4, 4), (10, 10, 10), 10)  # Left-Thalamus
    _box(ref, (20, 4, 4), (8, 8, 8), 17)  # Left-Hippocampus
    _box(ref, (4, 20, 4), (6, 6, 6), 1002)  # a cortical parcel: folds into Left-Cerebral-Cortex
    _box(ref, (20, 20, 4), (4, 4, 4), 24)  # CSF
    _box(ref, (30, 20, 20), (5, 5, 5), 16)  # Brain-Stem, missed by the prediction
    pred = np.zeros_like(ref)
    _box(pred, (6, 4, 4), (10, 10, 10), 10)  # shifted 2 voxels (3 mm) along x
    _box(pred, (20, 4, 4), (10, 8, 8), 17)  # 2 extra slices: 25 % too large
    _box(pred, (4, 20, 4), (6, 6, 6), 3)  # the cortex, in SynthSeg's value
    _box(pred, (20, 20, 4), (4, 4, 4), 24)
    _box(pred, (4, 4, 20), (3, 3, 3), 18)  # Left-Amygdala: not in the reference
    return pred, ref


def test_per_structure_metrics_of_a_known_pair(tmp_path):
    pred, ref = _pair()
    pairs = [("c1", _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref))]
    s = evaluate_structures(pairs)
    case = s["metric_per_case"][0]
    m, status = case["metrics"], case["status"]
    assert m[10]["Dice"] == pytest.approx(0.8)  # 8 of 10 slices overlap
    assert m[10]["HD95"] == pytest.approx(3.0) and m[10]["volume_diff_mm3"] == 0
    assert m[17]["Dice"] == pytest.approx(2 * 512 / (512 + 640))
    assert m[17]["volume_diff_mm3"] == pytest.approx(128 * 1.5)
    assert m[17]["volume_diff_pct"] == pytest.approx(25.0)
    assert m[3]["Dice"] == 1.0 and m[3]["HD95"] == 0.0  # parcels folded into the cortex
    assert m[16]["Dice"] == 0.0 and m[16]["HD95"] == math.inf  # a miss counts
    assert status[16] == "scored" and status[18] == "absent_from_reference"
    assert status[53] == "absent_from_both" and math.isnan(m[53]["Dice"])
    assert math.isnan(m[18]["Dice"]) and m[18]["pred_volume_mm3"] == pytest.approx(27 * 1.5)
    scored = {10: 0.8, 17: 2 * 512 / 1152, 3: 1.0, 16: 0.0}
    assert s["n_structures_scored"] == 4
    assert s["structure_mean"]["Dice"] == pytest.approx(np.mean(list(scored.values())))
    assert s["structure_mean"]["HD95"] == math.inf  # never averaged away
    assert s["group_mean"]["deep GM"]["Dice"] == pytest.approx(0.8)
    assert s["group_mean"]["hippocampus+amygdala"]["Dice"] == pytest.approx(scored[17])
    assert math.isnan(s["group_mean"]["cerebral WM"]["Dice"])
    assert s["csf"]["Dice"] == 1.0 and s["csf"]["n_cases"] == 1  # CSF apart, not in the mean
    absent = {(a["name"], a["absent_from"]) for a in s["absent"]}
    assert ("Left-Amygdala", "reference") in absent and ("Right-Thalamus", "both") in absent
    assert len(s["absent"]) == len(STRUCTURES) - 4
    assert "Left-Amygdala" in s["not_scored"] and "Left-Thalamus" not in s["not_scored"]

    files = write_structure_report(s, tmp_path / "out")
    data = json.loads(files["summary"].read_text())
    assert data["mean"]["10"]["Dice"] == pytest.approx(0.8)
    assert set(data) >= {"structure_mean", "group_mean", "absent", "not_scored", "csf"}
    rows = files["csv"].read_text().splitlines()
    assert rows[0].startswith("case,label,name,group,status,Dice")
    assert len(rows) == 1 + len(STRUCTURES) + 1  # + the CSF row
    assert files["boxplot"].stat().st_size > 10_000


def test_groups_cover_the_31_structures_once():
    members = [v for vs in STRUCTURE_GROUPS.values() for v in vs]
    assert sorted(members) == sorted(STRUCTURES) and len(STRUCTURES) == 31


def test_tissue_prediction_scored_per_structure_is_refused(tmp_path):
    _, ref = _pair()
    tissue = map_labels(ref, label_mapping("aseg_ventricular"))  # 1 GM, 2 WM, 3 CSF
    pairs = [("c", _save(tmp_path / "p.nii.gz", tissue), _save(tmp_path / "r.nii.gz", ref))]
    with pytest.raises(ValueError, match="tissue segmentation"):
        evaluate_structures(pairs)


def test_structure_prediction_scored_as_tissue_is_refused(tmp_path):
    from synthseg_lite.evaluation.metrics import LabelConventionError, evaluate_pairs

    pred, ref = _pair()
    pred[22:30, 4:12, 4:12] = 42  # right cortex: values the tissue preset does not know
    pairs = [("c", _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref))]
    with pytest.raises(LabelConventionError, match="pred_labels=aseg_ventricular"):
        evaluate_pairs(pairs, "tissue", "aseg_ventricular")
    summary = evaluate_pairs(pairs, "aseg_ventricular", "aseg_ventricular")  # the tissue view
    assert summary["n_cases"] == 1


def test_evaluate_command_structures_mode(tmp_path):
    from synthseg_lite.commands.evaluate import EvaluateConfig, run

    pred, ref = _pair()
    for case in ("a", "b"):
        _save(tmp_path / "pred" / f"{case}_seg.nii.gz", pred)
        _save(tmp_path / "ref" / case / "mri" / "aseg.mgz", ref)
    cfg = EvaluateConfig(
        mode="structures", pred=str(tmp_path / "pred"), ref=str(tmp_path / "ref"),
        output=str(tmp_path / "out"),
    )
    assert run(cfg) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["mean"]["10"]["Dice"] == pytest.approx(0.8)
    assert (tmp_path / "out" / "structures_boxplot.png").stat().st_size > 0


def test_aseg_ventricular_preset_drops_label_24():
    aseg = np.array([2, 3, 4, 24, 14, 31, 1001])
    assert map_labels(aseg, label_mapping("aseg_ventricular")).tolist() == [2, 1, 3, 0, 3, 3, 1]
    assert map_labels(aseg, label_mapping("aseg")).tolist() == [2, 1, 3, 3, 3, 3, 1]
    assert label_mapping("aseg_ventricular") == {
        0: 0, **TARGET_PRESETS["tissue_ventricular"].mapping
    }


# ---- pairing without a pattern -------------------------------------------------------------

def _touch(path):
    return _save(path, np.zeros((2, 2, 2)))


def test_pairing_nnunet_layout(tmp_path):
    for case in ("case_001", "case_002"):
        _touch(tmp_path / "pred" / f"{case}.nii.gz")
        _touch(tmp_path / "ds" / "labelsTr" / f"{case}.nii.gz")
        _touch(tmp_path / "ds" / "imagesTr" / f"{case}_0000.nii.gz")  # images: skipped
    pairs = pair_cases(tmp_path / "pred", tmp_path / "ds")
    assert [(c, r.parent.name) for c, _, r in pairs] == [
        ("case_001", "labelsTr"), ("case_002", "labelsTr")
    ]


def test_pairing_seg_suffix_next_to_scans(tmp_path):
    for case in ("IBSR_01", "IBSR_02"):
        _touch(tmp_path / "pred" / f"{case}_seg.nii.gz")
        _touch(tmp_path / "pred" / f"{case}_posteriors.nii.gz")  # probabilities: skipped
        _touch(tmp_path / "pred" / f"{case}_resampled.nii.gz")  # infer's scan on its grid: skipped
        _touch(tmp_path / "ref" / case / f"{case}.nii.gz")  # the scan: passed over
        _touch(tmp_path / "ref" / case / f"{case}_seg.nii.gz")
    _touch(tmp_path / "ref" / "IBSR_03" / "IBSR_03.nii.gz")  # a scan without reference: not one
    pairs = pair_cases(tmp_path / "pred", tmp_path / "ref")
    assert [(c, p.name, r.name) for c, p, r in pairs] == [
        ("IBSR_01", "IBSR_01_seg.nii.gz", "IBSR_01_seg.nii.gz"),
        ("IBSR_02", "IBSR_02_seg.nii.gz", "IBSR_02_seg.nii.gz"),
    ]
    pred = tmp_path / "pred"
    assert case_key(pred / "IBSR_01_resampled.nii.gz", pred) is None
    assert case_key(pred / "IBSR_01.nii.gz", pred) == ("IBSR_01", 0)  # a plain name is a case


def test_pairing_freesurfer_subjects(tmp_path):
    subjects = tmp_path / "subjects"
    for subj in ("bert", "ernie"):
        for name in ("T1.mgz", "norm.mgz", "aparc+aseg.mgz", "aseg.mgz"):
            _touch(subjects / subj / "mri" / name)
    _touch(subjects / "fsaverage" / "mri" / "aparc+aseg.mgz")  # no aseg: aparc+aseg counts
    _touch(tmp_path / "out" / "bert_seg.nii.gz")  # flat predictions
    _touch(tmp_path / "out" / "fsaverage_seg.nii.gz")
    _touch(tmp_path / "mirror" / "ernie" / "mri" / "T1_seg.mgz")  # a mirrored subject tree
    pairs = pair_cases(tmp_path / "out", subjects)
    assert [(c, r.parts[-3:]) for c, _, r in pairs] == [
        ("bert", ("bert", "mri", "aseg.mgz")), ("fsaverage", ("fsaverage", "mri", "aparc+aseg.mgz"))
    ]
    pairs = pair_cases(tmp_path / "mirror", subjects)
    assert [(c, p.name, r.name) for c, p, r in pairs] == [("ernie", "T1_seg.mgz", "aseg.mgz")]
    _touch(tmp_path / "oasis" / "t1.nii.gz")  # an aseg beside its scan (no mri/ folder)
    aseg = _touch(tmp_path / "oasis" / "aseg.nii.gz")
    assert find_cases(tmp_path / "oasis") == {"oasis": aseg}  # the scan is never a reference


def test_pairing_bids_derivatives(tmp_path):
    bids = tmp_path / "study"
    fs = bids / "derivatives" / "freesurfer"
    for sub, ses in (("01", "1"), ("01", "2"), ("02", None)):
        ent = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        anat = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "anat"
        _touch(bids / anat / f"{ent}_T1w.nii.gz")  # raw scans: not segmentations
        _touch(fs / anat / f"{ent}_desc-aseg_dseg.nii.gz")
        _touch(fs / anat / f"{ent}_desc-aparcaseg_dseg.nii.gz")  # aseg wins
        _touch(tmp_path / "out" / f"{ent}_T1w_seg.nii.gz")  # infer.py's flat outputs
        _touch(tmp_path / "deriv" / anat / f"{ent}_space-orig_desc-aseg_dseg.nii.gz")
    expected = ["sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    for pred in ("out", "deriv"):
        pairs = pair_cases(tmp_path / pred, bids)  # the whole BIDS tree as the reference
        assert [c for c, _, _ in pairs] == expected
        assert all(r.name.endswith("_desc-aseg_dseg.nii.gz") for _, _, r in pairs)
        assert all("derivatives" in r.parts for _, _, r in pairs)


def test_pairing_follows_linked_folders(tmp_path):
    _touch(tmp_path / "store" / "IBSR_01" / "IBSR_01_seg.nii.gz")
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "IBSR_01").symlink_to(tmp_path / "store" / "IBSR_01")
    assert list(find_cases(tmp_path / "refs")) == ["IBSR_01"]


def test_pairing_conflicts_and_explicit_patterns(tmp_path):
    _touch(tmp_path / "ref" / "x" / "a_seg.nii.gz")
    _touch(tmp_path / "ref" / "y" / "a_seg.nii.gz")
    with pytest.raises(ValueError, match="same case id 'a'"):
        find_cases(tmp_path / "ref")
    assert set(find_cases(tmp_path / "ref" / "x", r"(?P<id>.)_seg")) == {"a"}


# ---- figures -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_cases", [3, 15])
def test_box_plots_label_cases(tmp_path, n_cases):
    rng = np.random.default_rng(0)
    values = {
        "Dice": {
            "GM": rng.uniform(0.6, 0.9, n_cases).tolist(),
            "WM": [0.1] + [0.9] * (n_cases - 1),
        },
        "HD95": {"GM": [math.inf] + rng.uniform(1, 3, n_cases - 1).tolist(), "WM": [1.0] * n_cases},
    }
    path = box_plots(values, tmp_path / "b.png", cases=[f"case{i}" for i in range(n_cases)])
    assert path.stat().st_size > 10_000


def test_errors_say_where_a_structure_went(tmp_path):
    """A horn whose upper half the prediction calls lateral ventricle, and which reaches into the
    amygdala: its missed volume is the ventricle's, its extra volume the amygdala's, in mm³."""
    ref = np.zeros((30, 30, 30), np.int32)
    _box(ref, (4, 4, 4), (8, 8, 8), 4)  # Left-Lateral-Ventricle
    _box(ref, (12, 4, 4), (6, 8, 8), 5)  # Left-Inf-Lat-Vent
    _box(ref, (18, 4, 4), (6, 8, 8), 18)  # Left-Amygdala
    pred = ref.copy()
    pred[12:15, 4:12, 4:12] = 4  # the horn's first 3 slices called ventricle: 192 voxels
    pred[18:20, 4:12, 4:12] = 5  # 2 amygdala slices called horn: 128 voxels
    pairs = [("c", _save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref))]
    s = evaluate_structures(pairs, surface=False)
    voxel = float(np.prod(SPACING))
    horn = s["errors"][5]
    assert horn["missed_mm3"] == pytest.approx(192 * voxel)
    assert [(d["label"], d["mm3"]) for d in horn["missed_as"]] == [(4, pytest.approx(192 * voxel))]
    assert horn["extra_from"][0]["name"] == "Left-Amygdala"
    assert horn["extra_mm3"] == pytest.approx(128 * voxel)
    assert s["errors"][4]["missed_mm3"] == 0 and s["errors"][4]["extra_from"][0]["label"] == 5
    cm = np.asarray(s["confusion"]["mm3"])
    labels = s["confusion"]["labels"]
    assert labels[0] == 0 and labels[-1] == 24 and len(labels) == len(STRUCTURES) + 2
    for v, n in ((4, 512), (5, 384), (18, 384)):  # rows are the reference volumes
        assert cm[labels.index(v)].sum() == pytest.approx(n * voxel)
    assert cm[:, labels.index(4)].sum() == pytest.approx((512 + 192) * voxel)  # columns: predicted
    assert "missed 288 mm³ (as Left-Lateral-Ventricle 288)" in describe_errors(s["errors"][5])

    files = write_structure_report(s, tmp_path / "out")
    rows = files["confusion_csv"].read_text().splitlines()
    assert rows[0] == ("reference_label,reference_name,predicted_label,predicted_name,mm3,"
                       "fraction_of_reference")
    assert "5,Left-Inf-Lat-Vent,4,Left-Lateral-Ventricle,288,0.5" in rows
    assert files["confusion"].stat().st_size > 10_000


def test_errors_sum_over_cases_in_mm3(tmp_path):
    """Two cases with different voxel sizes add up in mm³, not voxels."""
    ref = np.zeros((20, 20, 20), np.int32)
    _box(ref, (2, 2, 2), (6, 6, 6), 10)
    pred = ref.copy()
    pred[2:4, 2:8, 2:8] = 49  # 72 voxels of Left-Thalamus called Right-Thalamus
    pairs = []
    for case, zoom in (("a", 1.0), ("b", 2.0)):
        aff = np.diag([zoom, 1.0, 1.0, 1.0])
        for side, data in (("p", pred), ("r", ref)):
            path = tmp_path / f"{case}_{side}.nii.gz"
            nib.save(nib.Nifti1Image(data, aff), str(path))
        pairs.append((case, tmp_path / f"{case}_p.nii.gz", tmp_path / f"{case}_r.nii.gz"))
    s = evaluate_structures(pairs, surface=False)
    assert s["errors"][10]["missed_as"] == [
        {"label": 49, "name": "Right-Thalamus", "mm3": pytest.approx(72 * 3.0)}
    ]
