"""Real-scan validation of a structure model: per-structure table, scalars and overlay image."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthseg_lite.commands import train as train_script
from synthseg_lite.labels import FREESURFER_NAMES, TARGET_PRESETS
from synthseg_lite.model.real_validation import STRUCTURES, RealValidation, structure_lut
from helpers import compose, write_toy_maps

SYNTHSEG = TARGET_PRESETS["synthseg"]
WM, AMY = STRUCTURES.index(2) + 1, STRUCTURES.index(18) + 1  # structure indices


def _one_hot(pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred.long(), k).permute(3, 0, 1, 2)[None].float()


def test_structure_lut_only_for_structure_models() -> None:
    assert structure_lut(TARGET_PRESETS["tissue"]) is None
    lut = structure_lut(SYNTHSEG)
    assert lut == list(range(32))  # the synthseg preset is in STRUCTURES' order


def test_table_volumes_ratio_and_absent_on_a_hand_made_case() -> None:
    """3 mm voxels (27 mm^3): WM reference 100 voxels (2,700 mm^3), predicted 150 of which the
    100: ratio 1.50, Dice 0.8, outside +-35 %; amygdala 20 voxels (540 mm^3, not checked),
    predicted 10 inside it: ratio 0.50, Dice 2/3; the 29 other structures are absent."""
    ref = torch.zeros(10, 10, 10, dtype=torch.uint8)
    ref[0, :10, :10] = WM  # 100 voxels
    ref[5, :2, :10] = AMY  # 20 voxels
    pred = ref.clone()
    pred[1, :5, :10] = WM  # +50 voxels
    pred[5, 1, :10] = 0  # amygdala: 10 left
    val = RealValidation(["toy"], SYNTHSEG, spacing_mm=3.0)
    val.reset(torch.device("cpu"))
    batch = {
        "image": torch.rand(1, 1, 10, 10, 10),
        "target": torch.zeros(1, 10, 10, 10, dtype=torch.uint8),
        "structures": ref[None],
    }
    val.update(0, batch, _one_hot(pred, SYNTHSEG.n_classes), draw=True)
    (res,) = val.results()
    wm, amy = res.structures[2], res.structures[18]
    assert wm["ref_mm3"] == 2700 and wm["pred_mm3"] == 4050 and wm["ratio"] == pytest.approx(1.5)
    assert wm["dice"] == pytest.approx(0.8) and amy["dice"] == pytest.approx(2 / 3)
    assert amy["ratio"] == pytest.approx(0.5) and amy["ref_mm3"] == 540
    assert len(res.absent) == 29 and "Left-Amygdala" not in res.absent
    assert math.isnan(res.structures[3]["dice"])  # absent: not averaged as 0 or 1
    assert res.scalars["val_real/toy/structure_mean"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert res.scalars["val_real/toy/structure/Left-Amygdala"] == pytest.approx(2 / 3)
    assert res.scalars["val_real/toy/volume_ratio/Left-Cerebral-White-Matter"] == 1.5
    assert res.scalars["val_real/toy/group/cerebral_WM"] == pytest.approx(0.8)
    assert "val_real/toy/structure/Left-Cerebral-Cortex" not in res.scalars
    rows = res.table.splitlines()
    assert "| Left-Cerebral-White-Matter | 0.800 | 4,050 | 2,700 | 1.50 | **out** |" in rows
    assert "| Left-Amygdala | 0.667 | 540 | 1,080 | 0.50 |  |" not in rows  # sanity of the next
    assert "| Left-Amygdala | 0.667 | 270 | 540 | 0.50 |  |" in rows
    assert "| **mean (2)** | **0.733** | | | | |" in rows
    assert FREESURFER_NAMES[3] in rows[-1] and rows[-1].startswith("absent from the reference")
    assert res.overlay is not None and res.overlay.shape[0] == 3
    assert float(res.overlay.max()) <= 1 and float(res.overlay.min()) >= 0


def test_tissue_model_gets_no_structure_table() -> None:
    val = RealValidation(["toy"], TARGET_PRESETS["tissue"], spacing_mm=1.0)
    val.reset(torch.device("cpu"))
    t = torch.randint(0, 4, (1, 6, 6, 6), dtype=torch.uint8)
    batch = {"image": torch.rand(1, 1, 6, 6, 6), "target": t, "structures": t}
    val.update(0, batch, _one_hot(t[0], 4), draw=True)
    (res,) = val.results()
    assert res.table is None and res.scalars["val_real/toy/dice"] == 1.0
    assert not any("structure" in k for k in res.scalars) and res.overlay is not None


def _toy_scan(folder: Path) -> tuple[Path, Path]:
    """A 1 mm T1-like scan with an aseg: nested spheres of WM, cortex, lateral ventricles and
    amygdalae, left/right by the sign of x."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (48, 56, 48)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    right = grid[0] > 0
    aseg = np.zeros(shape, np.int32)
    for radius, lt, rt in ((19, 3, 42), (13, 2, 41), (4, 4, 43)):
        aseg[r < radius] = np.where(right, rt, lt)[r < radius]
    amy = np.sqrt((np.abs(grid[0]) - 8) ** 2 + (grid[1] + 6) ** 2 + grid[2] ** 2) < 3
    aseg[amy] = np.where(right, 54, 18)[amy]
    intensity = {0: 0, 3: 60, 42: 60, 2: 110, 41: 110, 4: 15, 43: 15, 18: 70, 54: 70}
    t1 = np.vectorize(intensity.get)(aseg).astype(np.float32)
    t1 += np.random.default_rng(0).normal(0, 2, shape).astype(np.float32) * (aseg > 0)
    nib.save(nib.Nifti1Image(t1, np.eye(4)), str(folder / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(aseg, np.eye(4)), str(folder / "aseg.nii.gz"))
    return folder / "t1.nii.gz", folder / "aseg.nii.gz"


def test_training_logs_structure_table_and_overlay_to_tensorboard(tmp_path: Path) -> None:
    """A tiny structure model (data.target=synthseg) validated on a toy scan with an aseg: the
    TensorBoard run holds the per-structure table (TEXT), the overlay (IMAGES) and the scalars,
    and ``val_real/<name>/structure_mean`` can be monitored."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t1, aseg = _toy_scan(tmp_path / "scan")
    maps = write_toy_maps(tmp_path / "maps")
    real = f"[{{name:toy,images:'{t1}',references:'{aseg}',reference_preset:aseg}}]"
    cfg = compose(
        [
            f"paths.output_dir={tmp_path / 'run'}",
            "experiment=smoke",
            f"data.label_maps={maps}",
            "data.target=synthseg",
            f"data.real_val={real}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "callbacks.best.monitor=val_real/toy/structure_mean",
            "callbacks.best.mode=max",
        ]
    )
    dm, module, trainer = train_script.build(cfg)
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    assert 0 <= float(m["val_real/toy/structure_mean"]) <= 1
    ea = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    assert "val_real/toy/overlay" in tags["images"]
    assert {
        "val_real/toy/structure_mean",
        "val_real/toy/structure/Left-Amygdala",
        "val_real/toy/volume_ratio/Right-Cerebral-Cortex",
        "val_real/toy/dice_GM",
    } <= set(tags["scalars"])
    text_tag = next(t for t in tags["tensors"] if t.startswith("val_real/toy/structures"))
    table = ea.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
    assert "| Left-Amygdala |" in table and "absent from the reference" in table
    assert "Left-Thalamus" in table.splitlines()[-1]  # not in the toy aseg: listed as absent
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
