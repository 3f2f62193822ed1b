"""benchmarks/volume_consistency.py: left/right ratios of a study's volumes.csv and of reference
asegs; each structure's volume against another study of the same subjects."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.volume_consistency import main
from synthseg_lite.inference.report import paired_structures

ROOT = Path(__file__).resolve().parents[1]


def _study(path: Path) -> Path:
    cols = ["subject", "qc_score", "Left-Hippocampus_mm3", "Left-Hippocampus_soft_mm3",
            "Right-Hippocampus_mm3", "Right-Hippocampus_soft_mm3", "Left-Inf-Lat-Vent_mm3",
            "Left-Inf-Lat-Vent_soft_mm3", "Right-Inf-Lat-Vent_mm3", "Right-Inf-Lat-Vent_soft_mm3",
            "3rd-Ventricle_mm3", "Left-Lesion_mm3"]
    rows = [  # hippocampus: ratios 0.8, 1.0, 1.25; horn: 0.5, both empty (left out), 2.0
        ["s1", 0.9, 4000, 3999, 5000, 4999, 100, 99, 200, 199, 900, 0],
        ["s2", 0.9, 4000, 3999, 4000, 3999, 0, 1, 0, 1, 900, 0],
        ["s3", 0.9, 5000, 4999, 4000, 3999, 300, 299, 150, 149, 900, 0],
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return path


def test_pairs_are_the_left_right_columns_of_hard_volumes():
    cols = ["Left-A_mm3", "Left-A_soft_mm3", "Right-A_mm3", "Right-A_soft_mm3", "Left-B_mm3",
            "3rd-Ventricle_mm3"]
    assert paired_structures(cols) == ["A"]  # B has no right column; soft volumes are not structures


def test_ratios_medians_and_the_reference(tmp_path, capsys):
    aseg = np.zeros((20, 20, 20), np.int16)
    aseg[0:4, 0:5, 0:5] = 17   # Left-Hippocampus: 100 voxels
    aseg[10:14, 0:5, 0:10] = 53  # Right-Hippocampus: 200 voxels
    aseg[0:2, 10:12, 10:13] = 5  # Left-Inf-Lat-Vent: 12 voxels, no right one
    ref = tmp_path / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(aseg, np.diag([2.0, 1.0, 1.0, 1.0])), str(ref))
    out = tmp_path / "sym"
    main(["--volumes", str(_study(tmp_path / "volumes.csv")), "--aseg", str(ref),
          "--output", str(out)])
    record = json.loads((out / "volume_consistency.json").read_text())
    hip, horn = record["pairs"]["Hippocampus"], record["pairs"]["Inf-Lat-Vent"]
    assert hip["scans"] == 3 and hip["ratios"] == [0.8, 1.0, 1.25] and hip["median"] == 1.0
    assert hip["median_left_mm3"] == 4000 and hip["median_right_mm3"] == 4000
    assert horn["scans"] == 2 and horn["ratios"] == [0.5, 2.0] and horn["median"] == 1.25
    assert set(record["pairs"]) == {"Hippocampus", "Inf-Lat-Vent"}  # Lesion: no right column
    assert record["aseg"]["Hippocampus"]["ratios"] == [0.5]
    assert record["aseg"]["Hippocampus"]["median_left_mm3"] == 200.0  # 2 mm^3 voxels
    assert record["aseg"]["Inf-Lat-Vent"]["median"] is None  # nothing on the right: inf
    assert "| Inf-Lat-Vent | 2 | 1.25 | 0.50–2.00 | 200, 175 | inf | inf–inf |" in (
        out / "volume_consistency.md").read_text()
    table = (out / "volume_consistency.md").read_text()
    assert "| Hippocampus | 3 | 1.00 | 0.80–1.25 | 4,000, 4,000 | 0.50 | 0.50–0.50 |" in table
    assert table in capsys.readouterr().out


def test_a_study_without_pairs_is_one_error_line(tmp_path):
    bad = tmp_path / "volumes.csv"
    bad.write_text("subject,GM_mm3,WM_mm3\ns1,1,2\n")
    res = subprocess.run([sys.executable, "-m", "benchmarks.volume_consistency", "--volumes", str(bad),
                          "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {bad}: no Left-X_mm3 / Right-X_mm3 columns (a structure model's study?)"
    ]
    assert not (tmp_path / "o").exists()


def test_an_aseg_pattern_that_matches_nothing_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--volumes", str(_study(tmp_path / "v.csv")), "--aseg", str(tmp_path / "none_*.nii"),
              "--output", str(tmp_path / "o")])
    assert exc.value.code == 2


def test_against_another_study_pairs_subjects_and_gives_each_structures_ratio(tmp_path):
    base = _study(tmp_path / "t1.csv")
    other = tmp_path / "flair.csv"
    with open(base, newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    scaled = []
    for r in body:  # s1 doubled, s3 halved, s2 missing; a new subject s4 with no partner
        if r[0] == "s2":
            continue
        f = 2.0 if r[0] == "s1" else 0.5
        scaled.append([r[0], r[1]] + [float(v) * f for v in r[2:]])
    scaled.append(["s4", 0.9] + [1.0] * (len(head) - 2))
    with open(other, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(scaled)
    out = tmp_path / "vc"
    main(["--volumes", str(other), "--against", str(base), "--output", str(out)])
    against = json.loads((out / "volume_consistency.json").read_text())["against"]
    hip = against["Left-Hippocampus"]
    assert hip["subjects"] == 2 and hip["ratios"] == [2.0, 0.5] and hip["within_10pct"] == 0
    assert against["3rd-Ventricle"]["median"] == pytest.approx(1.25)  # unpaired structures too
    assert "Left-Lesion" not in against  # empty in the other study: no ratio
    assert not any(k.endswith("_soft") for k in against)
    assert "| Left-Hippocampus | 2 | 1.25 | 0.50–2.00 | 0/2 |" in (
        out / "volume_consistency.md").read_text()
