"""Offline export: files, affines, nnU-Net layout, reproducibility, CLI behaviour."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from synthseg_lite.data.export import ExportConfig, export_dataset, voxel_affine
from synthseg_lite.labels import TARGET_PRESETS
from synthseg_lite.data.phantom import make_phantom
from synthseg_lite.synth import SynthConfig

ROOT = Path(__file__).resolve().parents[1]
PATCH = [32, 32, 32]
SMALL = {"n_phantoms": 2, "phantom_shape": [48, 56, 48], "batch_size": 2}


def _export(out: Path, **kw) -> dict:
    args = {"n": 3, **SMALL, **kw}
    voxel = args.pop("voxel_mm", 1.0)
    return export_dataset(ExportConfig(output=str(out), device="cpu", **args),
                          SynthConfig(patch_shape=list(PATCH), voxel_mm=voxel))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".gz", ".png") and p.name != "montage.png"}


def test_nifti_export_files_affines_and_montage(tmp_path):
    out = tmp_path / "synth"
    _export(out, voxel_mm=1.5, png2d=True, png2d_size=40)
    names = [f"synth_{i:05d}" for i in range(3)]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{n}.nii.gz" for n in names]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{n}.nii.gz" for n in names]
    values = set(TARGET_PRESETS["tissue"].values)
    for n in names:
        img = nib.load(out / "images" / f"{n}.nii.gz")
        lab = nib.load(out / "labels" / f"{n}.nii.gz")
        for vol in (img, lab):
            assert vol.shape == tuple(PATCH)
            assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
            np.testing.assert_allclose(vol.header.get_zooms(), [1.5] * 3)
            np.testing.assert_allclose(vol.affine, voxel_affine(PATCH, 1.5))
            assert int(vol.header["sform_code"]) == 1
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        data = np.asarray(img.dataobj)
        assert 0.0 <= data.min() and data.max() <= 1.0 and data.std() > 0
        assert set(np.unique(np.asarray(lab.dataobj)).tolist()) <= values
    # the world centre of the volume is the origin
    np.testing.assert_allclose(voxel_affine(PATCH, 1.5) @ [15.5, 15.5, 15.5, 1], [0, 0, 0, 1])
    montage = out / "montage.png"
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and montage.stat().st_size > 10_000
    from PIL import Image

    png = np.array(Image.open(out / "png2d" / "images" / "synth_00000.png"))
    png_lab = np.array(Image.open(out / "png2d" / "labels" / "synth_00000.png"))
    assert png.shape == png_lab.shape == (40, 40) and png.dtype == png_lab.dtype == np.uint8
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [r["name"] for r in rows] == names and {"res_spacing_mm", "gamma"} <= set(rows[0])
    meta = json.loads((out / "export.json").read_text())
    assert meta["synth"]["voxel_mm"] == 1.5 and meta["export"]["n"] == 3


def test_nnunet_layout(tmp_path):
    out = tmp_path / "Dataset500_Synth"
    _export(out, layout="nnunet", target="synthseg", png2d=True, png2d_size=32, montage=False)
    ds = json.loads((out / "dataset.json").read_text())
    preset = TARGET_PRESETS["synthseg"]
    assert ds["channel_names"] == {"0": "MRI"} and ds["numTraining"] == 3
    assert ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {name: i for i, name in enumerate(preset.names)}  # consecutive
    assert ds["synthseg_lite"]["label_values"] == list(preset.values)
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images == [f"synth_{i:05d}_0000.nii.gz" for i in range(3)]
    cases = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert cases == [f"synth_{i:05d}.nii.gz" for i in range(3)]
    for c in cases:
        assert np.asarray(nib.load(out / "labelsTr" / c).dataobj).max() < preset.n_classes
    assert json.loads((out / "png2d" / "dataset.json").read_text())["file_ending"] == ".png"
    assert (out / "png2d" / "imagesTr" / "synth_00000_0000.png").is_file()
    assert (out / "png2d" / "labelsTr" / "synth_00000.png").is_file()
    assert not (out / "montage.png").exists()


def test_same_seed_same_files_independent_of_n(tmp_path):
    _export(tmp_path / "a", png2d=True, png2d_size=32)
    _export(tmp_path / "b", n=2, png2d=True, png2d_size=32)
    _export(tmp_path / "c", seed=1, montage=False)
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert len(a) == 12 and len(b) == 8
    assert all(a[k] == v for k, v in b.items())  # byte-identical, sample i does not depend on n
    assert a["images/synth_00000.nii.gz"] != c["images/synth_00000.nii.gz"]


def test_refuses_non_empty_output_and_overwrites_own_files(tmp_path):
    out = tmp_path / "synth"
    _export(out, montage=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        _export(out, montage=False)
    _export(out, n=1, overwrite=True, montage=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_00000.nii.gz"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("pattern", ["folder", "glob"])
def test_label_maps_from_files(tmp_path, pattern):
    lab = make_phantom((48, 56, 48), seed=3)
    maps = tmp_path / "maps"
    maps.mkdir()
    lia = np.array([[-1, 0, 0, 47], [0, 0, 1, 0], [0, -1, 0, 55], [0, 0, 0, 1.0]])  # FreeSurfer LIA
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab.transpose(0, 2, 1)[:, :, ::-1]), lia),
             maps / "sub1.nii.gz")
    spec = str(maps) if pattern == "folder" else str(maps / "*.nii.gz")
    out = tmp_path / "synth"
    _export(out, n=2, label_maps=spec, montage=False)
    assert {r["label_map"] for r in csv.DictReader((out / "samples.csv").open())} == {"sub1"}
    assert len(list((out / "labels").iterdir())) == 2


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="layout"):
        ExportConfig(output="x", layout="nnU-Net")
    with pytest.raises(ValueError, match="n must be"):
        ExportConfig(output="x", n=0)
    with pytest.raises(ValueError, match="no NIfTI/MGZ files found"):
        _export(Path("/nonexistent/out"), label_maps="/nonexistent/*.nii.gz")


def test_yaml_defaults_match_dataclass():
    yaml = OmegaConf.load(ROOT / "conf" / "export.yaml")
    for f in fields(ExportConfig):
        if f.name == "output":
            assert OmegaConf.is_missing(yaml, "output")
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert yaml[f.name] == default, f.name


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_only_output_and_bad_input_exits_2(tmp_path):
    small = ["n=2", "n_phantoms=1", "phantom_shape=[48,56,48]", "synth.patch_shape=[32,32,32]",
             "device=cpu", "montage=false"]
    res = _cli(["output=out", *small], tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no outputs/, .hydra/, logs
    assert len(list((tmp_path / "out" / "images").iterdir())) == 2
    res = _cli(["output=out", *small], tmp_path)  # non-empty output: a ValueError
    assert res.returncode == 2 and "not empty" in res.stderr
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
