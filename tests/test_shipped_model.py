"""The models shipped in the package: small, self-describing, the default of infer.py, and good on
a real scan they never saw (the shared IBSR data, when present)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite.inference import predictor as predictor_module
from synthseg_lite.inference.precision import amx_bf16
from synthseg_lite.inference.predictor import default_model_path, resolve_model, tissue_output
from synthseg_lite.model.artifact import load_model

ROOT = Path(__file__).resolve().parents[1]
IBSR = ROOT.parent / "shared" / "data" / "real" / "ibsr" / "IBSR_01"


def test_shipped_fast_tissue_model_is_small_and_describes_itself() -> None:
    path = resolve_model("tissue_fast")
    assert path.stat().st_size <= 2 * 2**20  # <= 2 MiB
    _, meta = load_model(path)
    assert meta.unet.spatial_dims == 2 and meta.slices["axes"] == [0, 1, 2]
    assert meta.label_table.target.names == ("background", "GM", "WM", "CSF")
    assert meta.spacing_mm == 1.5
    assert meta.extra.get("command"), "the command that trained it is recorded"


def test_default_tissue_model_is_the_structure_network_written_as_tissue() -> None:
    """model=tissue (the default) runs the structure network and writes its tissue view; a
    file's own classes are never merged, nor those of model=structures / tissue_fast."""
    assert default_model_path() == resolve_model(None) == resolve_model("structures")
    _, meta = load_model(resolve_model("tissue"))
    group = tissue_output("tissue", meta)
    values = meta.label_table.target.values
    by_value = dict(zip(values, group.tolist()))
    # cortex and deep grey matter -> GM, white matter and brainstem -> WM, ventricles -> CSF
    assert [by_value[v] for v in (0, 3, 42, 17, 10, 8, 2, 41, 16, 7, 4, 43, 14, 15)] == [
        0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert tissue_output(None, meta) is not None
    for name in ("structures", "tissue_fast", resolve_model("structures")):
        assert tissue_output(name, meta) is None
    _, fast = load_model(resolve_model("tissue_fast"))
    assert tissue_output("tissue", fast) is None  # a tissue network is written as it is


def test_tissue_falls_back_to_the_fast_network_where_structures_are_not_shipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = predictor_module._shipped
    monkeypatch.setattr(
        predictor_module, "_shipped",
        lambda f: None if f == predictor_module.STRUCTURES_MODEL else real(f),
    )
    assert resolve_model("tissue") == resolve_model("tissue_fast")
    with pytest.raises(ValueError, match="structure model is not shipped"):
        resolve_model("structures")


@pytest.mark.skipif(not IBSR.is_dir(), reason="shared data absent")
@pytest.mark.parametrize("model", [None, "tissue_fast"])
def test_infer_with_the_default_model_segments_a_real_scan(tmp_path: Path, model) -> None:
    """infer.py without model= (and with the fast tissue network) on IBSR_01, then Dice against
    its manual labels (1 CSF, 2 GM, 3 WM): the thresholds are below the measured values (README)
    and well above the mixture baseline's CSF."""
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "infer.py",
            f"input={IBSR / 'IBSR_01.nii.gz'}",
            f"output={out}",
            "tta=none",
            *([f"model={model}"] if model else []),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    seg = np.asarray(nib.load(out / "IBSR_01_seg.nii.gz").dataobj)
    ref = np.asarray(nib.load(IBSR / "IBSR_01_seg.nii.gz").dataobj).reshape(seg.shape)
    dice = {}
    for name, ours, theirs in (("GM", 1, 2), ("WM", 2, 3), ("CSF", 3, 1)):
        a, b = seg == ours, ref == theirs
        dice[name] = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice["GM"] > 0.8 and dice["WM"] > 0.8 and dice["CSF"] > 0.5, dice


# ------------------------------------------------------------------ the shipped structure model
OASIS = ROOT.parent / "shared" / "data" / "real" / "oasis_vxm"


def test_shipped_structure_model_is_safe_small_and_writes_aseg_values() -> None:
    import torch

    from synthseg_lite.inference.predictor import resolve_model
    from synthseg_lite.labels import TARGET_PRESETS

    path = resolve_model("structures")
    assert path.stat().st_size <= 4 * 2**20  # <= 4 MiB (int8)
    torch.load(path, weights_only=True)  # plain tensors and containers only
    _, meta = load_model(path)
    target = meta.label_table.target
    assert target.values == TARGET_PRESETS["synthseg"].values  # FreeSurfer aseg values
    assert len(target.values) == 32 and target.values[:4] == (0, 2, 3, 4)
    assert meta.spacing_mm == 1.0 and meta.slices["axes"] == [1, 2]
    assert target.class_swap() != list(range(32))  # flip TTA swaps left and right
    assert meta.extra.get("command") and meta.extra.get("training")


@pytest.mark.slow
@pytest.mark.skipif(not OASIS.is_dir(), reason="shared data absent")
def test_structure_model_on_the_oasis_scan(tmp_path: Path) -> None:
    """model=structures on the OASIS T1, scored per structure against its FreeSurfer aseg; the
    thresholds are below the measured values (README, "Structures")."""
    from synthseg_lite.labels import TARGET_PRESETS

    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "infer.py", f"input={OASIS / 't1.nii.gz'}", f"output={out}",
         "model=structures", "tta=none"],
        cwd=ROOT, check=True, capture_output=True,
    )
    seg = np.asarray(nib.load(out / "t1_seg.nii.gz").dataobj)
    ref = np.asarray(nib.load(OASIS / "aseg.nii.gz").dataobj)
    assert set(np.unique(seg)) <= set(TARGET_PRESETS["synthseg"].values)
    dice = {}
    for v in (2, 3, 4, 10, 16, 41, 42, 43, 49):  # WM, cortex, ventricles, thalamus, brainstem
        a, b = seg == v, ref == v
        dice[v] = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert min(dice.values()) > 0.6, dice


@pytest.mark.slow
@pytest.mark.skipif(not (OASIS.is_dir() and IBSR.is_dir()), reason="shared data absent")
@pytest.mark.skipif(not amx_bf16(), reason="precision=auto is float32 on this CPU (no AMX)")
def test_bfloat16_costs_no_dice_on_real_scans() -> None:
    """precision=auto (bfloat16 on this AMX CPU) against float32, both shipped models, flip TTA:
    mean Dice within 0.002 of float32's (OASIS: the 31 structures; IBSR_01: GM, WM, CSF)."""
    from synthseg_lite.api import segment
    from synthseg_lite.labels import TARGET_PRESETS

    def dice(seg: np.ndarray, ref: np.ndarray, pairs) -> float:
        return float(np.mean([2 * ((seg == a) & (ref == b)).sum()
                              / max(1, (seg == a).sum() + (ref == b).sum()) for a, b in pairs]))

    cases = (
        (OASIS / "t1.nii.gz", OASIS / "aseg.nii.gz", "structures",
         [(v, v) for v in TARGET_PRESETS["synthseg"].values if v not in (0, 24)]),
        (IBSR / "IBSR_01.nii.gz", IBSR / "IBSR_01_seg.nii.gz", "tissue", [(1, 2), (2, 3), (3, 1)]),
    )
    for scan, ref_path, model, pairs in cases:
        ref = np.asarray(nib.load(ref_path).dataobj).squeeze()
        scores = {
            p: dice(segment(scan, model=model, precision=p, threads=2).labels.squeeze(), ref, pairs)
            for p in ("float32", "auto")
        }
        assert abs(scores["auto"] - scores["float32"]) < 0.002, (model, scores)


@pytest.mark.slow
@pytest.mark.skipif(not OASIS.is_dir(), reason="shared data absent")
def test_a_tilted_head_is_segmented_upright() -> None:
    """The OASIS T1 and its aseg rolled 30 degrees in their grid (a head tilted in the scanner):
    the structure model reads the roll and segments the brain upright, and its mean Dice over
    the 31 structures comes back near that of the scan as it lies (benchmarks/tilt.py: 0.835
    and 0.841; without the pose step 0.72)."""
    from benchmarks.tilt import padded_ras, tilt
    from synthseg_lite.api import segment
    from synthseg_lite.evaluation.structure_metrics import STRUCTURES

    scan, affine = padded_ras(OASIS / "t1.nii.gz", np.float32)
    aseg, _ = padded_ras(OASIS / "aseg.nii.gz", np.int32)
    result = segment((tilt(scan, "roll", 30, 1), affine), model="structures", tta="none")
    ref = tilt(aseg, "roll", 30, 0)
    assert result.pose["segmented_upright"] and abs(result.pose["roll"]) > 20
    dice = [2 * ((result.labels == v) & (ref == v)).sum() / ((result.labels == v).sum()
            + (ref == v).sum()) for v in STRUCTURES]
    assert np.mean(dice) > 0.80, np.mean(dice)
