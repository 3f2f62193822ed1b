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
            if model.startswith("tissue"):  # a tissue model: 1 GM, 2 WM, 3 CSF
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
    assert r["weakest_errors"].startswith("missed 36 mm³ (as background 36), extra 36 mm³")
    assert r["groups"]["deep GM"] == pytest.approx(0.75)
    assert len(r["structures"]) == 4  # WM, cortex, thalamus, hippocampus: the others not scored
    assert r["structure_mean"] == pytest.approx(np.mean(list(r["structures"].values())), abs=1e-4)
    assert "Right-Thalamus" in r["not_scored"]
    assert set(r["tissue"]) == {"GM", "WM", "CSF"} and 0.99 < r["tissue"]["WM"] < 1
    assert (out / "scans" / "thick3" / "oasis" / "t1.nii.gz").is_file()  # degraded for real
    table = (out / "results.md").read_text()
    assert "| Left-Thalamus | 0.750 | 0.750 |" in table and "**mean (31)**" in table
    assert "- original: Left-Thalamus missed 36 mm³" in table


def test_structures_benchmark_plane_and_clinical_conditions(tmp_path, monkeypatch, bench):
    """``axial5`` slices the anatomical axial plane whatever the voxel order; ``pd_axial5``
    chains the PD-like contrast and 5 mm axial slices (each step on the previous output)."""
    from synthseg_lite.evaluation.degrade import remap_contrast, thick_slices

    data, aseg = _data(tmp_path)
    t1_path = data / "oasis_vxm" / "t1.nii.gz"
    lia = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    for name in ("t1", "aseg"):  # the same arrays stored LIA: axial is voxel axis 1
        path = data / "oasis_vxm" / f"{name}.nii.gz"
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), lia), str(path))
    t1 = np.asarray(nib.load(t1_path).dataobj, dtype=np.float32)
    _fake_tools(monkeypatch, bench, aseg)
    out = tmp_path / "out"
    bench.main(["--output", str(out), "--data", str(data), "--conditions", "axial5,pd_axial5",
                "--ibsr-conditions", "", "--tissue-model", ""])
    record = json.loads((out / "results.json").read_text())
    assert set(record["oasis"]) == {"axial5", "pd_axial5"}
    axial = np.asarray(nib.load(out / "scans" / "axial5" / "oasis" / "t1.nii.gz").dataobj)
    np.testing.assert_allclose(axial, thick_slices(t1, (1, 1, 1), 5, axis=1), atol=1e-6)
    pd = np.asarray(nib.load(out / "scans" / "pd" / "oasis_pd_axial5" / "t1.nii.gz").dataobj)
    np.testing.assert_allclose(pd, remap_contrast(t1, "pd"), atol=1e-5)
    chained = out / "scans" / "axial5" / "oasis_pd_axial5" / "t1.nii.gz"
    np.testing.assert_allclose(np.asarray(nib.load(chained).dataobj),
                               thick_slices(pd, (1, 1, 1), 5, axis=1), atol=1e-6)
    with pytest.raises(SystemExit):
        bench.main(["--output", str(tmp_path / "o2"), "--data", str(data),
                    "--conditions", "sagittal9"])


def test_structures_benchmark_bias_condition_is_the_seeded_field(tmp_path, monkeypatch, bench):
    """``bias``: the OASIS scan times ``bias_field`` of strength 0.3, seed 0, on its grid."""
    from synthseg_lite.evaluation.bias import bias_field

    data, aseg = _data(tmp_path)
    t1 = np.asarray(nib.load(data / "oasis_vxm" / "t1.nii.gz").dataobj, dtype=np.float32)
    _fake_tools(monkeypatch, bench, aseg)
    out = tmp_path / "out"
    bench.main(["--output", str(out), "--data", str(data), "--conditions", "bias",
                "--ibsr-conditions", "", "--tissue-model", ""])
    assert set(json.loads((out / "results.json").read_text())["oasis"]) == {"bias"}
    biased = np.asarray(nib.load(out / "scans" / "bias" / "oasis" / "t1.nii.gz").dataobj)
    np.testing.assert_allclose(biased, t1 * bias_field(t1.shape, (1, 1, 1), 0.3, 0), rtol=1e-5)
    assert not np.allclose(biased, t1)


def test_structures_benchmark_ibsr_takes_the_plane_conditions(tmp_path, monkeypatch, bench):
    """IBSR (tissue view) takes the opt-in plane and clinical-style conditions, not the OASIS-only
    head proxy; its coronal acquisition (RAS, 1.5 mm voxel axis 1) is sliced axially on axis 2."""
    from synthseg_lite.evaluation.degrade import thick_slices

    data, aseg = _data(tmp_path)
    folder = data / "ibsr" / "IBSR_01"
    folder.mkdir(parents=True)
    affine = np.diag([1.0, 1.5, 1.0, 1.0])
    t1 = np.asarray(nib.load(data / "oasis_vxm" / "t1.nii.gz").dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(t1, affine), str(folder / "IBSR_01.nii.gz"))
    ibsr = np.select([np.isin(aseg, (3, 10, 17)), aseg == 2], [2, 3], 0).astype(np.int16)
    nib.save(nib.Nifti1Image(ibsr, affine), str(folder / "IBSR_01_seg.nii.gz"))
    _fake_tools(monkeypatch, bench, aseg)
    out = tmp_path / "out"
    bench.main(["--output", str(out), "--data", str(data), "--conditions", "",
                "--ibsr-conditions", "axial5", "--tissue-model", ""])
    record = json.loads((out / "results.json").read_text())
    assert record["ibsr"]["axial5"]["tissue"]["WM"] > 0.99
    assert "| structures (tissue view) | axial5 | ibsr |" in (out / "results.md").read_text()
    sliced = np.asarray(nib.load(out / "scans" / "axial5" / "ibsr" / "IBSR_01.nii.gz").dataobj)
    np.testing.assert_allclose(sliced, thick_slices(t1, (1.0, 1.5, 1.0), 5, axis=2), atol=1e-6)
    with pytest.raises(SystemExit):
        bench.main(["--output", str(tmp_path / "o2"), "--data", str(data),
                    "--ibsr-conditions", "thick3_head"])


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
    assert record["tissue_model"]["model"] == "tissue_fast"
    assert record["tissue_model"]["oasis"]["WM"] == pytest.approx(r["tissue"]["WM"], abs=0.02)
    table = (out / "results.md").read_text()
    assert "| Left-Thalamus | 144 | 144 | 1.00 |  |" in table
    assert "| Left-Cerebral-White-Matter | 3,388 | 3,424 | 0.99 | ok |" in table
    assert "| tissue_fast (tissue model) | original | oasis |" in table
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


def test_learning_curve_of_model_files_counts_their_total_steps(tmp_path, monkeypatch, bench):
    """Shipped model files of successive stages: each point at its total steps (``total_steps``,
    else the leading ``N steps`` of ``training``), marked as a model file; merged with a
    checkpoint curve by step."""
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.unet import UNetConfig, build_unet

    data, aseg = _data(tmp_path)
    _fake_tools(monkeypatch, bench, aseg)
    cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)
    net = build_unet(cfg, 4)
    models = tmp_path / "models"
    extras = {
        "stage_a.pt": {"global_step": 8000, "training": "27000 steps from the label maps: ..."},
        "stage_b.pt": {"global_step": 20000, "total_steps": "81000", "training": "n/a"},
        "stage_c.pt": {"global_step": 5000},
    }
    for name, extra in extras.items():
        meta = ModelMeta(cfg, LabelTable.create("tissue"), 2.0, (32,) * 3, extra)
        save_model(models / name, net, meta)
    from benchmarks.structure_curves import step_of

    assert [step_of(models / n) for n in extras] == [27000, 81000, 5000]
    out = tmp_path / "curves_models"
    bench.main(["--output", str(out), "--data", str(data), "--checkpoints",
                str(models / "*.pt")])
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [5000, 27000, 81000]
    assert all(p["model_file"] for p in curve["points"])
    ckpt_curve = tmp_path / "ckpt.json"
    ckpt_curve.write_text(json.dumps({"points": [dict(curve["points"][0], step=14000,
                                                      model_file=False)]}))
    merged = tmp_path / "merged"
    bench.main(["--output", str(merged), "--merge-curves", str(ckpt_curve),
                str(out / "learning_curve.json")])
    steps = [p["step"] for p in json.loads((merged / "learning_curve.json").read_text())["points"]]
    assert steps == [5000, 14000, 27000, 81000]


def test_structures_benchmark_refuses_a_non_empty_output(tmp_path, bench):
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--output", str(tmp_path), "--data", str(tmp_path)])
    assert exc.value.code == 2


def test_thick_files_benchmark_refuses_a_non_empty_output_and_missing_data(tmp_path, capsys):
    from benchmarks.thick_files import main as thick_main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("mine")
    for argv, says in (
        (["--output", str(tmp_path / "out")], "not empty"),
        (["--output", str(tmp_path / "new"), "--data", str(tmp_path / "nothing")], "OASIS"),
    ):
        with pytest.raises(SystemExit) as exc:
            thick_main(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err
    assert (tmp_path / "out" / "x").read_text() == "mine" and not (tmp_path / "new").exists()


def test_thick_files_benchmark_slices_each_plane_on_its_own_grid(tmp_path, monkeypatch):
    """--planes: one slab file per thickness and plane (degrade --plane P --slab-grid), each
    segmented on its grid and at 1 mm and scored on the aseg's grid; one table row each."""
    import benchmarks.thick_files as thick

    data = tmp_path / "real" / "oasis_vxm"
    data.mkdir(parents=True)
    for name in ("t1.nii.gz", "aseg.nii.gz"):
        (data / name).write_bytes(b"")
    calls = []
    monkeypatch.setattr(thick, "run", lambda cmd, commands: calls.append(cmd))
    canned = {"structure_mean": 0.8, "groups": dict.fromkeys(
        ("ventricles", "deep GM", "hippocampus+amygdala"), 0.7), "weakest": ["x", 0.1],
        "volume_check": {"n_within": 28, "n_checked": 29}, "structures": {"Left-Hippocampus": 0.8}}
    monkeypatch.setattr(thick, "read_structures", lambda path: canned)
    out = tmp_path / "out"
    thick.main(["--output", str(out), "--data", str(tmp_path / "real"), "--thickness", "5",
                "--planes", "sagittal", "coronal"])
    degrade = [c for c in calls if "synthseg_lite.commands.degrade" in c]
    assert [c[c.index("--plane") + 1] for c in degrade] == ["sagittal", "coronal"]
    assert all("--slab-grid" in c for c in degrade)
    infer = [c for c in calls if c[1] == "infer.py"]
    assert sum("output_mm=1" in c for c in infer) == 2 and len(infer) == 4
    assert all("resample_pred=true" in c for c in calls if c[1] == "evaluate.py")
    rows = (out / "results.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| 5mm_sagittal"] * 2 + ["| 5mm_coronal"] * 2
    with pytest.raises(SystemExit):
        thick.main(["--output", str(tmp_path / "o2"), "--planes", "oblique"])
