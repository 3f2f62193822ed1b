"""benchmarks/structures.py end to end on a tiny fake data folder, with inference replaced by a
known segmentation (the benchmark's own logic: degrading, pairing, evaluation, tables, curves)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_structures", ROOT / "benchmarks" / "structures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(tmp_path: Path) -> tuple[Path, np.ndarray]:
    aseg = np.zeros((24, 24, 24), np.int32)
    aseg[4:20, 4:20, 4:20] = 2
    aseg[6:12, 6:12, 6:18] = 3
    aseg[14:18, 6:12, 6:12] = 10
    aseg[14:18, 14:18, 6:12] = 17
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    folder = tmp_path / "real" / "oasis_vxm"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t1 = (aseg > 0) * rng.uniform(0.2, 1.0, aseg.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(t1, affine), str(folder / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(aseg, affine), str(folder / "aseg.nii.gz"))
    return tmp_path / "real", aseg


def _fake_tools(monkeypatch, bench, aseg):
    """infer: writes a known structure segmentation; evaluate: runs in this process."""
    from synthseg_lite.commands.evaluate import EvaluateConfig, run

    pred = aseg.copy()
    pred[14:18, 6:12, 6:12] = 0
    pred[15:19, 6:12, 6:12] = 10  # thalamus shifted one voxel: Dice 0.75

    def infer(self, scans, folder, model):
        for s in scans:
            img = nib.load(s)
            folder.mkdir(parents=True, exist_ok=True)
            pad = (np.array(img.shape) - np.array(pred.shape)) // 2  # the head proxy is padded
            out = np.pad(pred, [(p, p) for p in pad])
            if model == "tissue":  # a tissue model: 1 GM, 2 WM, 3 CSF
                out = np.select([np.isin(out, (3, 10, 17)), out == 2], [1, 2], 0)
            name = Path(s).name.replace(".nii.gz", "_seg.nii.gz")
            nib.save(nib.Nifti1Image(out.astype(np.int16), img.affine), str(folder / name))
        return 0.1

    def evaluate(self, pred_path, ref, folder, *options):
        kw = dict(o.split("=", 1) for o in options)
        run(EvaluateConfig(pred=str(pred_path), ref=str(ref), output=str(folder), **kw))
        return folder / "summary.json"

    monkeypatch.setattr(bench.Bench, "infer", infer)
    monkeypatch.setattr(bench.Bench, "evaluate", evaluate)


def test_structures_benchmark_tables(tmp_path, monkeypatch, bench):
    data, aseg = _data(tmp_path)
    _fake_tools(monkeypatch, bench, aseg)
    out = tmp_path / "out"
    bench.main(["--output", str(out), "--data", str(data), "--conditions", "original,thick3",
                "--ibsr-conditions", "", "--tissue-model", ""])
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "structures"
    r = record["oasis"]["original"]
    assert r["structures"]["Left-Thalamus"] == pytest.approx(0.75)
    assert r["structures"]["Left-Hippocampus"] == 1.0
    assert r["weakest"] == ["Left-Thalamus", 0.75]
    assert r["groups"]["deep GM"] == pytest.approx(0.75)
    assert len(r["structures"]) == 4  # WM, cortex, thalamus, hippocampus: the others not scored
    assert r["structure_mean"] == pytest.approx(np.mean(list(r["structures"].values())), abs=1e-4)
    assert "Right-Thalamus" in r["not_scored"]
    assert set(r["tissue"]) == {"GM", "WM", "CSF"} and 0.99 < r["tissue"]["WM"] < 1
    assert (out / "scans" / "thick3" / "oasis" / "t1.nii.gz").is_file()  # degraded for real
    table = (out / "results.md").read_text()
    assert "| Left-Thalamus | 0.750 | 0.750 |" in table and "**mean (31)**" in table


def test_structures_benchmark_head_proxy_volumes_and_tissue_model(tmp_path, monkeypatch, bench):
    """The 3 mm head proxy (padded OASIS in a synthetic head, scored against the padded aseg),
    per-structure volumes with the +-35 % check, and the tissue model beside the tissue view."""
    data, aseg = _data(tmp_path)
    _fake_tools(monkeypatch, bench, aseg)
    out = tmp_path / "out"
    bench.main(["--output", str(out), "--data", str(data), "--conditions", "original,thick3_head",
                "--ibsr-conditions", ""])
    record = json.loads((out / "results.json").read_text())
    head = nib.load(str(out / "scans" / "thick3_head" / "head" / "t1.nii.gz"))
    assert head.shape == tuple(n + 32 for n in aseg.shape)
    t1 = np.asarray(head.dataobj)
    brain = np.pad(aseg, 16) > 0
    assert t1[~brain].max() > 0.5 * np.median(t1[brain])  # a bright scalp around the brain
    assert (out / "scans" / "thick3_head" / "oasis" / "t1.nii.gz").is_file()  # then 3 mm slabs
    r = record["oasis"]["thick3_head"]
    assert r["structures"] == record["oasis"]["original"]["structures"]  # same padded segmentation
    vol = record["oasis"]["original"]["volumes"]
    assert vol["Left-Thalamus"] == {"pred_mm3": 144.0, "ref_mm3": 144.0, "ratio": 1.0,
                                    "within_35pct": None}  # < 1,000 mm3: not checked
    wm = vol["Left-Cerebral-White-Matter"]
    assert wm["ref_mm3"] > 1000 and wm["within_35pct"] is True
    assert record["oasis"]["original"]["volume_check"]["n_checked"] == 1
    assert record["tissue_model"]["model"] == "tissue"
    assert record["tissue_model"]["oasis"]["WM"] == pytest.approx(r["tissue"]["WM"], abs=0.02)
    table = (out / "results.md").read_text()
    assert "| Left-Thalamus | 144 | 144 | 1.00 |  |" in table
    assert "| Left-Cerebral-White-Matter | 3,388 | 3,424 | 0.99 | ok |" in table
    assert "| tissue (tissue model) | original | oasis |" in table
    assert "| volumes within ±35 % (≥ 1,000 mm³) | 1/1 | 1/1 |" in table


def test_structures_benchmark_learning_curve(tmp_path, monkeypatch, bench):
    data, aseg = _data(tmp_path)
    _fake_tools(monkeypatch, bench, aseg)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (1500, 500):
        (ckpts / f"step={step}.ckpt").write_bytes(b"")
    out = tmp_path / "curves"
    bench.main(["--output", str(out), "--data", str(data),
                "--checkpoints", str(ckpts / "step*.ckpt")])
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [500, 1500]
    assert curve["points"][0]["groups"]["deep GM"] == pytest.approx(0.75)
    assert (out / "learning_curve.png").stat().st_size > 10_000


def test_structures_benchmark_refuses_a_non_empty_output(tmp_path, bench):
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--output", str(tmp_path), "--data", str(tmp_path)])
    assert exc.value.code == 2
