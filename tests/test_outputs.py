"""Outputs other tools read (values, LUT, dseg.tsv, volumes.csv, provenance), whole studies (BIDS,
mirrored trees, resume, parts) and study QC (scores, report.html)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference.postprocess import qc_scores
from synthseg_lite.labels import TARGET_PRESETS
from synthseg_lite.labels.lut import FREESURFER_COLORS, output_labels, read_lut
from synthseg_lite.inference.outputs import find_scans, merge_volumes, read_volumes, select_part
from synthseg_lite.inference.report import asymmetry, robust_z, write_report
from helpers import ANISO, _small_head, OPTS, _bids, _use_net, _write

ANISO = np.array([[1.2, 0, 0, -20], [0, 0.9, 0, -15], [0, 0, 1.5, -10], [0, 0, 0, 1.0]])


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {r["subject"]: r for r in read_volumes(path)[1]}


def test_structure_outputs_use_aseg_values_named_in_lut_and_dseg(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "synthseg")
    scan = _write(tmp_path / "in" / "case1.nii.gz")
    (res,) = segment_scans(scan, tmp_path / "out", model, InferenceOptions(**OPTS, save_qc=False))
    assert res.error is None, res.error
    seg = np.asarray(nib.load(res.outputs["seg"]).dataobj)
    present = set(np.unique(seg).tolist())
    assert len(present) > 20 and present <= set(TARGET_PRESETS["synthseg"].values)
    lut = read_lut(res.outputs["lut"])
    with open(res.outputs["tsv"], newline="") as f:
        tsv = {int(r["index"]): r["name"] for r in csv.DictReader(f, delimiter="\t")}
    for v in present:
        assert v in lut and v in tsv and lut[v][0] == tsv[v]
    assert lut[3] == ("Left-Cerebral-Cortex", FREESURFER_COLORS[3]) == (
        "Left-Cerebral-Cortex", (205, 62, 78))
    assert lut[17][1] == (220, 216, 20) and tsv[60] == "Right-VentralDC"
    # tissue view: the project's grouping of the same voxels, 1 GM 2 WM 3 CSF
    tissue = np.asarray(nib.load(res.outputs["tissue"]).dataobj)
    grouping = TARGET_PRESETS["tissue"].mapping
    expected = np.vectorize(lambda v: grouping.get(v, 0) if v else 0)(seg)
    assert np.array_equal(tissue, expected) and set(np.unique(tissue)) <= {0, 1, 2, 3}
    assert read_lut(res.outputs["tissue_lut"])[1][0] == "GM"


def test_a_tilted_scan_is_segmented_again_and_its_pose_recorded(monkeypatch, tmp_path):
    """A structure model whose pose reading says 20 degrees: the scan goes through the network a
    second time, turned, and comes back on its own grid (the stand-in network's foreground is
    its intensity voxel by voxel, so the head is where the first pass has it, but at the edges);
    volumes.csv and the sidecar record the pose."""
    from scipy.spatial.transform import Rotation

    from synthseg_lite.inference import upright as pose_module

    model = _use_net(monkeypatch, tmp_path, "synthseg")
    scan = _write(tmp_path / "case1.nii.gz")
    (flat,) = segment_scans(scan, tmp_path / "flat", model, InferenceOptions(**OPTS, save_qc=False))
    tilt = pose_module.Pose(Rotation.from_euler("x", 20, degrees=True).as_matrix(), 2.0, 31)
    upright = pose_module.Pose(np.eye(3), 2.0, 31)  # what the upright pass reads
    readings = iter([tilt, upright])
    monkeypatch.setattr(
        pose_module, "estimate_pose", lambda probs, target, spacing, **k: next(readings)
    )
    seen = []
    turn = pose_module.turn
    monkeypatch.setattr(
        pose_module, "turn", lambda *a, **k: seen.append(a[0].shape) or turn(*a, **k)
    )
    (res,) = segment_scans(scan, tmp_path / "out", model, InferenceOptions(**OPTS, save_qc=False))
    assert len(seen) == 2 and seen[0][1] == 1  # the image turned upright, the probabilities back
    row = _rows(tmp_path / "out" / "volumes.csv")["case1"]
    assert row["qc_pose_deg"] == "20.0" and row["qc_pose_upright"] == "1"
    assert json.loads(res.outputs["json"].read_text())["pose"]["segmented_upright"]
    assert "segmented again upright" in (tmp_path / "out" / "report.html").read_text()
    a = np.asarray(nib.load(res.outputs["seg"]).dataobj)
    b = np.asarray(nib.load(flat.outputs["seg"]).dataobj)
    assert a.shape == b.shape == _small_head().shape
    assert 2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum()) > 0.9
    assert "qc_pose_deg" not in read_volumes(tmp_path / "flat" / "volumes.csv")[0] or (
        _rows(tmp_path / "flat" / "volumes.csv")["case1"]["qc_pose_upright"] == "0"
    )
    assert row["qc_fov_cut"] == ""  # the brain lies inside the field of view


@pytest.mark.parametrize("target", ["synthseg", "tissue"])
def test_a_brain_cut_by_the_field_of_view_is_named_in_volumes_csv_and_the_log(
    monkeypatch, tmp_path, caplog, target
):
    """A head whose lower half the field of view cuts away (any model): volumes.csv says on
    which side (qc_fov_cut), the sidecar too, and the log warns once that the volumes there are
    partial; the whole head beside it is not cut."""
    model = _use_net(monkeypatch, tmp_path, target)
    head = _small_head()  # RAS (ANISO): the third axis runs inferior to superior
    _write(tmp_path / "in" / "whole.nii.gz")
    nib.save(nib.Nifti1Image(head[:, :, 18:], ANISO), str(tmp_path / "in" / "cut.nii.gz"))
    with caplog.at_level("WARNING"):
        results = segment_scans(tmp_path / "in", tmp_path / "out", model,
                                InferenceOptions(**OPTS, save_qc=False))
    rows = _rows(tmp_path / "out" / "volumes.csv")
    assert rows["cut"]["qc_fov_cut"] == "inferior" and rows["whole"]["qc_fov_cut"] == ""
    said = [r.getMessage() for r in caplog.records if "field of view cuts" in r.getMessage()]
    assert len(said) == 1 and "cut" in said[0] and "inferior" in said[0]
    sidecars = {r.case: json.loads(r.outputs["json"].read_text()) for r in results}
    assert sidecars["cut"]["fov_cut"] == "inferior" and sidecars["whole"]["fov_cut"] is None
    assert "qc_fov_cut" in (tmp_path / "out" / "report.html").read_text()


def test_volumes_are_voxel_counts_times_voxel_volume(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "synthseg")
    scan = _write(tmp_path / "case1.nii.gz")
    (res,) = segment_scans(scan, tmp_path / "out", model, InferenceOptions(**OPTS, save_qc=False))
    img = nib.load(res.outputs["seg"])
    seg = np.asarray(img.dataobj)
    voxel = abs(np.linalg.det(img.affine[:3, :3]))
    assert voxel == pytest.approx(1.2 * 0.9 * 1.5)
    row = _rows(tmp_path / "out" / "volumes.csv")["case1"]
    target = TARGET_PRESETS["synthseg"]
    for value, name in zip(target.values[1:], target.names[1:]):
        assert float(row[f"{name}_mm3"]) == pytest.approx((seg == value).sum() * voxel, abs=0.06)
        assert float(row[f"{name}_soft_mm3"]) >= 0
    assert float(row["total_intracranial_mm3"]) == pytest.approx((seg > 0).sum() * voxel, abs=0.1)
    # soft volumes: probabilities sum to one per voxel, so foreground + background = the image
    soft_fg = float(row["total_intracranial_soft_mm3"])
    assert 0 < soft_fg < seg.size * voxel
    gm = sum(float(row[f"{n}_mm3"]) for v, n in zip(target.values, target.names)
             if TARGET_PRESETS["tissue"].mapping.get(v) == 1)
    assert float(row["GM_mm3"]) == pytest.approx(gm, abs=0.5)


def test_labels_fast_writes_fsl_fast_values(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "tissue")
    scan = _write(tmp_path / "scan.nii.gz")
    (native,) = segment_scans(scan, tmp_path / "a", model, InferenceOptions(**OPTS))
    (fast,) = segment_scans(scan, tmp_path / "b", model, InferenceOptions(**OPTS, labels="fast"))
    a = np.asarray(nib.load(native.outputs["seg"]).dataobj)
    b = np.asarray(nib.load(fast.outputs["seg"]).dataobj)
    assert set(np.unique(a)) == {0, 1, 2, 3}
    assert np.array_equal(b, np.array([0, 2, 3, 1])[a])  # GM 1->2, WM 2->3, CSF 3->1
    assert {v: n for v, (n, _) in read_lut(fast.outputs["lut"]).items()} == {
        0: "Unknown", 1: "CSF", 2: "GM", 3: "WM"}
    assert "tissue" not in native.outputs  # a tissue model has no second view
    with pytest.raises(ValueError, match="labels"):
        InferenceOptions(labels="fsl")


def test_volumes_csv_merges_runs_and_resume_skips_done_scans(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "tissue")
    a = _write(tmp_path / "in" / "a.nii.gz")
    b = _write(tmp_path / "in2" / "b.nii.gz", seed=1)
    out = tmp_path / "out"
    opts = InferenceOptions(**OPTS, save_qc=False)
    segment_scans(a, out, model, opts)
    segment_scans(b, out, model, opts)
    rows = _rows(out / "volumes.csv")
    assert set(rows) == {"a", "b"}
    seg_a = out / "a_seg.nii.gz"
    stamp = seg_a.stat().st_mtime_ns
    (again,) = segment_scans(a, out, model, opts)  # resume: kept as it is
    assert again.done and seg_a.stat().st_mtime_ns == stamp
    (redo,) = segment_scans(a, out, model, InferenceOptions(**OPTS, save_qc=False, overwrite=True))
    assert not redo.done and redo.error is None  # segmented again: its row replaced, b kept
    rows2 = _rows(out / "volumes.csv")
    assert set(rows2) == {"a", "b"} and rows2 == rows
    rows["a"]["GM_mm3"] = "1"  # changed by someone else since: never modified again
    merge_volumes(out / "volumes.csv", [rows["a"]])
    with pytest.raises(ValueError, match="volumes.csv exists and was not written"):
        segment_scans(a, out, model, InferenceOptions(**OPTS, save_qc=False, overwrite=True))
    assert _rows(out / "volumes.csv")["a"]["GM_mm3"] == "1"


def test_merge_volumes_keeps_rows_and_adds_columns(tmp_path):
    path = tmp_path / "volumes.csv"
    merge_volumes(path, [{"subject": "x", "GM_mm3": 1.5}, {"subject": "y", "GM_mm3": 2.0}])
    merge_volumes(path, [{"subject": "z", "GM_mm3": 3.0, "WM_mm3": 4.0}])
    merge_volumes(path, [{"subject": "x", "GM_mm3": 9.0}])
    header, rows = read_volumes(path)
    assert header == ["subject", "GM_mm3", "WM_mm3"]
    assert [(r["subject"], r["GM_mm3"], r["WM_mm3"]) for r in rows] == [
        ("x", "9.0", ""), ("y", "2.0", ""), ("z", "3.0", "4.0")]
    # no temporary file left (only the lock shared by parallel parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".volumes.csv.lock", "volumes.csv"]


def test_provenance_sidecar(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "tissue")
    scan = _write(tmp_path / "scan.nii.gz")
    (res,) = segment_scans(scan, tmp_path / "out", model, InferenceOptions(**OPTS, save_qc=False))
    prov = json.loads(res.outputs["json"].read_text())
    assert prov["models"][0]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert prov["package_version"] and prov["command"] and prov["options"]["tta"] == "none"
    assert prov["input"] == str(scan.resolve()) and 0 <= prov["qc"]["qc_score"] <= 1
    assert prov["pose"] is None  # a tissue model's classes carry no pose


def test_mirrored_tree_keeps_scans_with_the_same_name_apart(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "tissue")
    _write(tmp_path / "in" / "site1" / "scan.nii.gz")
    _write(tmp_path / "in" / "site2" / "scan.nii.gz", seed=1)
    _write(tmp_path / "in" / "site2" / "scan_seg.nii.gz")  # a reference: not a scan
    results = segment_scans(tmp_path / "in", tmp_path / "out", model, InferenceOptions(**OPTS))
    assert sorted(r.case for r in results) == ["site1/scan", "site2/scan"]
    for site in ("site1", "site2"):
        assert (tmp_path / "out" / site / "scan_seg.nii.gz").is_file()
        assert (tmp_path / "out" / site / "scan_qc.png").is_file()
    assert set(_rows(tmp_path / "out" / "volumes.csv")) == {"site1/scan", "site2/scan"}
    # the output folder inside the input folder is not searched on the next run
    study = find_scans(tmp_path / "in", tmp_path / "in" / "out")
    assert [s.case for s in study.scans] == ["site1/scan", "site2/scan"]


def test_bids_dataset_gives_bids_derivatives(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "synthseg")
    root = _bids(tmp_path / "ds")
    results = segment_scans(root, tmp_path / "out", model, InferenceOptions(**OPTS))
    assert all(r.error is None for r in results) and len(results) == 3
    deriv = tmp_path / "out" / "derivatives" / "synthseg_lite"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "synthseg_lite"
    anat = deriv / "sub-02" / "ses-1" / "anat"
    for name in ("sub-02_ses-1_space-orig_desc-aseg_dseg.nii.gz",
                 "sub-02_ses-1_space-orig_desc-aseg_dseg.tsv",
                 "sub-02_ses-1_space-orig_desc-asegT2w_dseg.nii.gz",  # T2w beside T1w
                 "sub-02_ses-1_space-orig_desc-tissue_dseg.nii.gz",
                 "sub-02_ses-1_space-orig_desc-aseg_qc.png"):
        assert (anat / name).is_file(), name
    assert (deriv / "sub-01" / "anat" / "sub-01_space-orig_desc-aseg_dseg.nii.gz").is_file()
    sidecar = json.loads((anat / "sub-02_ses-1_space-orig_desc-aseg_dseg.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"]
    assert set(_rows(deriv / "volumes.csv")) == {
        "sub-01_T1w", "sub-02_ses-1_T1w", "sub-02_ses-1_T2w"}
    assert (deriv / "report.html").is_file() and not (tmp_path / "out" / "volumes.csv").exists()
    # without output=: the dataset's own derivatives folder; its scans are not searched again
    segment_scans(root, None, model, InferenceOptions(**OPTS, save_qc=False, report=False))
    assert (root / "derivatives" / "synthseg_lite" / "volumes.csv").is_file()
    assert len(find_scans(root).scans) == 3


def test_parts_split_a_study_without_overlap(monkeypatch, tmp_path):
    study = [p for p in find_scans(_bids(tmp_path / "ds")).scans]
    parts = [select_part(study, 2, k) for k in range(2)]
    cases = [s.case for p in parts for s in p]
    assert sorted(cases) == sorted(s.case for s in study) and len(set(cases)) == len(cases)
    assert [s.case for s in select_part(list(reversed(study)), 2, 1)] == [s.case for s in parts[1]]
    for bad in ({"num_parts": 0}, {"num_parts": 2, "part_id": 2}, {"part_id": -1}):
        with pytest.raises(ValueError, match="num_parts|part_id"):
            InferenceOptions(**bad)
    model = _use_net(monkeypatch, tmp_path, "tissue")
    out = tmp_path / "out"
    for k in range(2):
        segment_scans(tmp_path / "ds", out, model,
                      InferenceOptions(**OPTS, save_qc=False, num_parts=2, part_id=k))
    rows = _rows(out / "derivatives" / "synthseg_lite" / "volumes.csv")
    assert set(rows) == {s.case for s in study}


def test_qc_scores():
    probs = torch.zeros(4, 6, 6, 6)
    probs[0] = 1
    probs[:, :3] = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(4, 1, 1, 1)  # certain class 1
    probs[:, 3:5] = torch.tensor([0.1, 0.2, 0.6, 0.1]).view(4, 1, 1, 1)  # unsure class 2
    q = qc_scores(probs, {"one": [1], "two": [2], "three": [3]})
    assert q["one"] == pytest.approx(1) and q["two"] == pytest.approx(0.6)
    assert q["three"] == 0 and q["qc_score"] == 0  # a group with no voxel: worst
    q2 = qc_scores(probs, {"one+two": [1, 2]})
    assert q2["qc_score"] == pytest.approx((108 * 1 + 72 * 0.6) / 180)


def test_robust_z_marks_the_outlier():
    z = robust_z([100, 102, 98, 101, 99, 100, 160])
    assert abs(z[-1]) > 3 and np.all(np.abs(z[:-1]) < 3)
    assert np.all(robust_z([5, 5, 5]) == 0)
    tight = [0.001, -0.001, 0.0, 0.002, -0.002, 0.001, 0.03]  # all within 3 % of each other
    assert abs(robust_z(tight)[-1]) > 3 and abs(robust_z(tight, min_sd=0.05)[-1]) < 1


def _study_csv(root: Path, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        score = 0.9 - 0.01 * i if i != 4 else 0.31
        rows.append({"subject": f"case{i:02d}", "qc_score": score, "qc_flag": score < 0.65,
                     "GM_mm3": 600000 + rng.normal(0, 5000) + (250000 if i == 7 else 0),
                     "GM_soft_mm3": 600000.0, "qc_png": f"case{i:02d}_qc.png"})
    merge_volumes(root / "volumes.csv", rows)


def test_report_html_content(tmp_path):
    _study_csv(tmp_path)
    page = write_report(tmp_path, 0.65).read_text()
    for i in range(12):
        assert f"case{i:02d}" in page
    qc_section = page[page.index("Quality control"):page.index("Volumes across scans")]
    order = re.findall(r"<tr(?: class=\"flag\")?><td>(case\d\d)</td>", qc_section)
    assert order[0] == "case04" and order[-1] == "case00"  # worst first
    assert '<tr class="flag"><td>case04</td>' in qc_section
    outliers = page[page.index("<h3>Outliers"):page.index("QC images")]
    assert "case07" in outliers and "GM_mm3" in outliers and "case03" not in outliers
    assert 'src="data:image/png;base64,' in page and 'src="case04_qc.png"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from elsewhere
    assert "1 flagged" in page


def test_report_lists_left_right_asymmetry_outliers(tmp_path):
    """A hippocampus drawn 30 % smaller on one side of one scan: its volume is within the study's
    spread, its asymmetry index is not."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        size = rng.normal(4000, 400)  # subjects differ in size, both sides alike
        left, right = size * rng.normal(1, 0.01), size * rng.normal(1, 0.01)
        if i == 5:
            left *= 0.7
        rows.append({"subject": f"case{i:02d}", "qc_score": 0.9, "qc_flag": False,
                     "Left-Hippocampus_mm3": left, "Right-Hippocampus_mm3": right,
                     "Left-Hippocampus_soft_mm3": left, "3rd-Ventricle_mm3": 900.0})
    merge_volumes(tmp_path / "volumes.csv", rows)
    header, read = read_volumes(tmp_path / "volumes.csv")
    ai = asymmetry(read, header)
    assert list(ai) == ["Hippocampus"]  # pairs of hard volumes only
    assert ai["Hippocampus"][5] == pytest.approx(-0.3 / 0.85, abs=0.03)
    page = write_report(tmp_path, 0.65).read_text()
    volume_outliers = page[page.index("<h3>Outliers"):page.index("<h3>Left/right")]
    assert "case05" not in volume_outliers
    section = page[page.index("<h3>Left/right"):page.index("QC images")]
    assert re.findall(r"<tr><td>(case\d\d)</td><td>Hippocampus</td>", section) == ["case05"]
    assert "1 left/right asymmetry outlier(s)" in page
    _study_csv(tmp_path / "tissue")  # a tissue study has no pairs: no such section
    assert "Left/right" not in write_report(tmp_path / "tissue", 0.65).read_text()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium absent")
    _study_csv(tmp_path)
    import matplotlib.pyplot as plt

    for i in range(12):
        plt.imsave(tmp_path / f"case{i:02d}_qc.png", np.random.default_rng(i).random((40, 52)))
    page = write_report(tmp_path, 0.65)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    img = plt.imread(shot)
    assert img.shape[0] == 2400 and img.shape[1] == 1280
    assert img[..., :3].std() > 0.05  # something was drawn


def test_qc_figure_legend_lists_present_labels_and_grows_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    from synthseg_lite.inference.figures import qc_figure

    target = TARGET_PRESETS["synthseg"]
    labels_out = output_labels(target)
    image = _small_head((24, 24, 24))
    few = np.where(image > 0, 1, 0)
    many = np.where(image > 0, (np.arange(24)[:, None, None] % 31 + 1) * np.ones((24, 24, 24), int),
                    0)
    heights = []
    for name, lab in (("few", few), ("many", many)):
        path = qc_figure(image, lab, np.eye(4), labels_out.names, tmp_path / f"{name}.png",
                         colors=labels_out.colors)
        heights.append(plt.imread(path).shape[0])
    assert heights[1] > heights[0] >= 1000  # 24 labels present: more legend rows, taller figure


def test_save_resampled_writes_the_scan_on_the_segmentation_grid(monkeypatch, tmp_path):
    """save_resampled=true (mri_synthseg --resample) with output_mm=1 on a 1.2 x 0.9 x 1.5 mm
    LIA-like scan: the scan itself, float32, on the segmentation's RAS grid, its intensities
    those of the scan at the same world points (nibabel's linear resampling as the reference),
    listed in the sidecar; a rerun on the output folder takes it for no scan; the BIDS name."""
    from nibabel.processing import resample_from_to

    from synthseg_lite.inference.outputs import output_paths

    model = _use_net(monkeypatch, tmp_path, "synthseg")
    lia = np.array([[-1.2, 0, 0, 20], [0, 0, 1.5, -30], [0, -0.9, 0, 25], [0, 0, 0, 1.0]])
    scan = _write(tmp_path / "in" / "case1.nii.gz", affine=lia)
    opts = InferenceOptions(**OPTS, save_qc=False, output_mm=1.0, save_resampled=True)
    (res,) = segment_scans(scan, tmp_path / "out", model, opts)
    assert res.error is None, res.error
    seg, image = nib.load(res.outputs["seg"]), nib.load(res.outputs["resampled"])
    assert res.outputs["resampled"] == tmp_path / "out" / "case1_resampled.nii.gz"
    assert image.shape == seg.shape and np.allclose(image.affine, seg.affine)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S") and image.get_data_dtype() == np.float32
    data = np.asarray(image.dataobj)
    ref = np.asarray(resample_from_to(nib.load(scan), image, order=1).dataobj)
    inside = ref > 0.2 * ref.max()  # away from the field of view's edge
    assert np.corrcoef(data[inside], ref[inside])[0, 1] > 0.95
    assert abs(data[inside].mean() / ref[inside].mean() - 1) < 0.03
    sidecar = json.loads(res.outputs["json"].read_text())
    assert sidecar["outputs"]["resampled"] == "case1_resampled.nii.gz"
    with pytest.raises(ValueError, match="no scans found"):  # the resampled scan is no input
        find_scans(tmp_path / "out")
    bids = find_scans(_bids(tmp_path / "ds")).scans[0]
    assert output_paths(bids, tmp_path / "o")["resampled"].name == (
        "sub-01_space-orig_desc-resampled_T1w.nii.gz")


def test_save_resampled_needs_an_output_grid():
    with pytest.raises(ValueError, match="output_mm=1"):
        InferenceOptions(save_resampled=True)
    assert InferenceOptions(save_resampled=True, output_mm=0.8).save_resampled


def test_output_mm_writes_every_file_on_the_1mm_grid(monkeypatch, tmp_path):
    """infer.py output_mm=1 on a 1.2 x 0.9 x 1.5 mm scan: the segmentation, tissue view and
    posteriors share one 1 mm RAS grid, volumes.csv counts its voxels, the QC figure is drawn;
    the soft volumes are the network's whatever the output grid (1 or 0.5 mm), their total that
    of the scan's own grid."""
    model = _use_net(monkeypatch, tmp_path, "synthseg")
    scan = _write(tmp_path / "in" / "case1.nii.gz")
    runs = {}
    for tag, mm in (("native", None), ("half", 0.5)):
        segment_scans(scan, tmp_path / tag, model,
                      InferenceOptions(**OPTS, save_qc=False, output_mm=mm))
        runs[tag] = _rows(tmp_path / tag / "volumes.csv")["case1"]
    (res,) = segment_scans(scan, tmp_path / "out", model,
                           InferenceOptions(**OPTS, output_mm=1.0, save_posteriors=True))
    assert res.error is None, res.error
    seg = nib.load(res.outputs["seg"])
    assert seg.header.get_zooms()[:3] == (1.0, 1.0, 1.0) and nib.aff2axcodes(seg.affine) == (
        "R", "A", "S")
    assert seg.shape == (round(28 * 1.2), round(24 * 0.9), round(36 * 1.5))
    for key in ("tissue", "posteriors"):
        other = nib.load(res.outputs[key])
        assert other.shape[:3] == seg.shape and np.allclose(other.affine, seg.affine)
    assert res.outputs["qc"].is_file()
    data = np.asarray(seg.dataobj)
    row = _rows(tmp_path / "out" / "volumes.csv")["case1"]
    target = TARGET_PRESETS["synthseg"]
    for value, name in zip(target.values[1:], target.names[1:]):
        assert float(row[f"{name}_mm3"]) == pytest.approx((data == value).sum(), abs=1e-6)
        for other in runs.values():  # the network's sum, whatever grid is written
            assert float(row[f"{name}_soft_mm3"]) == pytest.approx(
                float(other[f"{name}_soft_mm3"]), rel=1e-5, abs=1e-3)


def test_links_to_one_file_are_one_scan_and_said_so(tmp_path, caplog):
    """A file given twice is segmented once, silently; two names linking to one file (a
    git-annex dataset's files of identical content) too, with a warning naming both."""
    scan = tmp_path / "in" / "a.nii.gz"
    _write(scan)
    (tmp_path / "in" / "b.nii.gz").symlink_to(scan)
    with caplog.at_level(logging.WARNING, logger="synthseg_lite.inference.outputs"):
        assert [s.case for s in find_scans([scan, scan]).scans] == ["a"]
        assert not caplog.records
        assert [s.case for s in find_scans(tmp_path / "in").scans] == ["a"]
    [record] = caplog.records
    assert record.getMessage() == (
        f"{tmp_path / 'in' / 'b.nii.gz'} is the same file as {scan}: segmented once, as a"
    )
