"""Training: configs, loss, planning, smoke runs of every preset, exact resume, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

from synthseg_lite.commands import train as train_script
from synthseg_lite.data import DataConfig
from synthseg_lite.labels import LabelTable
from synthseg_lite.model.artifact import load_model
from synthseg_lite.model.loss import LossConfig, SegLoss, deep_supervision_weights
from synthseg_lite.model.module import ModelConfig, overlay_grid, tissue_lut
from synthseg_lite.training.planning import estimate_memory_gb, plan_patch_and_batch
from synthseg_lite.model.unet import UNetConfig, build_unet
from synthseg_lite.synth import SynthConfig
from helpers import compose, read_digests, write_toy_maps, run_training as _run

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


class BatchDigest(pl.Callback):
    """Appends {rank, step, global_step, digest of the synthetic image} per training batch to
    ``<path>.rank<r>.jsonl`` (used in-process and by the DDP subprocess test)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha1(batch["image"].detach().cpu().numpy().tobytes()).hexdigest()[:16]
        rec = {
            "rank": trainer.global_rank,
            "step": int(batch["step"]),
            "global_step": trainer.global_step,
            "digest": digest,
        }
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


class Interrupt(pl.Callback):
    """Raises before training batch ``at_step`` (a crash after the last checkpoint)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated interrupt")


class Kill(pl.Callback):
    """Sends this process ``signum`` before training batch ``at_step`` (Ctrl-C, ``scancel``)."""

    def __init__(self, at_step: int, signum: int) -> None:
        self.at_step, self.signum = at_step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)






@pytest.fixture(scope="module")
def toy_maps(tmp_path_factory) -> str:
    return write_toy_maps(tmp_path_factory.mktemp("toy_maps"))




# tiny sizes for any preset (still its network topology family, optimiser, schedule)
TINY = [
    "gpu_memory_gb=null",
    "data.batch_size=2",
    "data.val_batches=1",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.check_val_every_n_epoch=1",
    "data.n_folds=5",
]


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_preset_composes(experiment: str | None, tmp_path: Path) -> None:
    cfg = compose(
        [f"paths.output_dir={tmp_path}"] + ([f"experiment={experiment}"] if experiment else [])
    )
    data, synth, model = (OmegaConf.to_object(cfg[k]) for k in ("data", "synth", "model"))
    assert (
        isinstance(data, DataConfig)
        and isinstance(synth, SynthConfig)
        and isinstance(model, ModelConfig)
    )
    unet = UNetConfig(**OmegaConf.to_container(cfg.model.unet))
    assert all(p % unet.divisor == 0 for p in synth.patch_shape)
    assert isinstance(cfg.trainer.limit_train_batches, int)
    from hydra.utils import instantiate

    assert callable(instantiate(cfg.model.optimizer)) and callable(instantiate(cfg.model.scheduler))
    for c in cfg.callbacks.values():
        assert isinstance(instantiate(c), pl.Callback)


@pytest.mark.parametrize("experiment", ["structures_gpu", "structures_3d"])
def test_gpu_presets_train_the_shipped_structure_recipe(experiment: str, tmp_path: Path) -> None:
    """A GPU lease trains what is shipped: the generator, the target and (2.5D) the slice context
    of the shipped structure model's recipe, only the step's size, the schedule and (3D) the
    network differ."""
    from synthseg_lite.inference.predictor import resolve_model

    gpu, cpu = (
        compose([f"paths.output_dir={tmp_path}", f"experiment={e}"])
        for e in (experiment, "structures_fov160")
    )
    scale = {"patch_shape"}  # the 3D job plans its patch for the GPU's memory
    a, b = (
        {k: v for k, v in OmegaConf.to_container(c.synth).items() if k not in scale}
        for c in (gpu, cpu)
    )
    assert a == b and gpu.data.target == cpu.data.target
    _, meta = load_model(resolve_model("structures"))
    assert LabelTable.create(gpu.data.target).target == meta.label_table.target
    assert gpu.init_weights is None  # from scratch
    if experiment == "structures_gpu":
        assert gpu.model.unet.spatial_dims == 2
        assert gpu.model.slices.context == meta.slices["context"] == gpu.model.unet.in_channels
        assert gpu.model.slices.class_prob == meta.slices["class_prob"]
        assert gpu.synth.patch_shape == cpu.synth.patch_shape
    else:
        assert gpu.model.unet.spatial_dims == 3 and gpu.model.unet.in_channels == 1
        assert gpu.gpu_memory_gb == 12 and gpu.model.unet.deep_supervision


def test_defaults_are_defined_once(tmp_path: Path) -> None:
    cfg = compose([f"paths.output_dir={tmp_path}"])
    assert OmegaConf.to_object(cfg.data) == DataConfig()
    assert UNetConfig(**OmegaConf.to_container(cfg.model.unet)) == UNetConfig()
    assert OmegaConf.to_object(cfg.model).loss == LossConfig()
    assert OmegaConf.to_object(cfg.synth) == SynthConfig()


# ------------------------------------------------------------------------- network and loss


def test_deep_supervision_shapes_and_loss() -> None:
    cfg = UNetConfig(n_stages=4, base_features=4, max_features=16, deep_supr_num=2)
    net = build_unet(cfg, 4)
    x = torch.rand(2, 1, 16, 24, 16)
    out = net.train()(x)
    assert out.shape == (2, 3, 4, 16, 24, 16)  # (B, 1 + deep_supr_num, K, *S)
    loss = SegLoss(LossConfig(), cfg.n_stages)(out, torch.randint(0, 4, (2, 16, 24, 16)))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    assert net.eval()(x).shape == (2, 4, 16, 24, 16)


def test_deep_supervision_weights_follow_nnunet() -> None:
    w = deep_supervision_weights(5, n_stages=6)  # every decoder output: lowest gets 0
    assert np.allclose(w, np.array([1, 0.5, 0.25, 0.125, 0]) / 1.875)
    assert np.allclose(
        deep_supervision_weights(4, n_stages=6), np.array([1, 0.5, 0.25, 0.125]) / 1.875
    )
    assert deep_supervision_weights(1, 6) == [1.0]


def test_loss_is_small_for_a_perfect_prediction() -> None:
    target = torch.randint(0, 3, (2, 8, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 20
    for cfg in (
        LossConfig(),
        LossConfig(ce_weight=0, include_background=True),
        LossConfig(batch_dice=True),
    ):
        assert float(SegLoss(cfg, 3)(logits, target)) < 1e-3
        assert float(SegLoss(cfg, 3)(-logits, target)) > 0.5


def test_planning_fits_budget_and_counts_the_generator() -> None:
    unet = UNetConfig()
    plan = plan_patch_and_batch(12, unet, 4, (160, 160, 160), (180, 220, 190), 1.0)
    assert plan.batch_size >= 2 and plan.estimated_gb <= 12
    assert all(p % unet.divisor == 0 and p <= 160 for p in plan.patch_size)
    big = plan_patch_and_batch(40, unet, 4, (160, 160, 160), (180, 220, 190), 1.0)
    assert np.prod(big.patch_size) * big.batch_size > np.prod(plan.patch_size) * plan.batch_size
    p8 = plan_patch_and_batch(8, unet, 4, (256, 256, 256), (180, 220, 190), 1.0)
    assert p8.patch_size == (128, 128, 128) and p8.batch_size == 2  # nnU-Net's classic 8 GB plan
    small_map = estimate_memory_gb(unet, (128,) * 3, 2, 4, (100, 100, 100))
    assert estimate_memory_gb(unet, (128,) * 3, 2, 4, (256, 256, 256)) > small_map
    with pytest.raises(ValueError, match="fits"):
        plan_patch_and_batch(0.1, unet, 4, (160, 160, 160), (180, 220, 190), 1.0)


def test_tissue_lut_and_overlay() -> None:
    assert tissue_lut(LabelTable.create("tissue").target) == [0, 1, 2, 3]
    lut = tissue_lut(LabelTable.create("synthseg").target)
    values = LabelTable.create("synthseg").target.values
    assert lut[values.index(2)] == 2 and lut[values.index(3)] == 1 and lut[values.index(4)] == 3
    img = overlay_grid(
        torch.rand(8, 10, 12),
        torch.randint(0, 4, (8, 10, 12)),
        torch.zeros(8, 10, 12),
        torch.rand(4, 3),
    )
    assert img.shape[0] == 3 and 0 <= float(img.min()) and float(img.max()) <= 1


# ---------------------------------------------------------------------------- training runs




@pytest.mark.parametrize(
    "experiment",
    ["default", "cpu", "structures", "structures_gpu", "structures_3d", "structures_sagittal",
     "structures_context7",
     "structures_rim", "structures_tie", "structures_wide", "structures_broad",
     "structures_broad_keepres", "structures_cortex", "structures_white_rim", "structures_texture",
     "structures_fov160", "structures_fov192", "structures_sagittal192"],
)
def test_presets_train_at_tiny_size(experiment: str, toy_maps: str, tmp_path: Path) -> None:
    exp = [] if experiment == "default" else [f"experiment={experiment}"]
    tiny = [
        "model.unet.n_stages=4",
        "model.unet.deep_supr_num=2",
        "model.unet.base_features=4",
        "model.unet.max_features=16",
        "synth.patch_shape=[32,32,32]",
        "synth.voxel_mm=4.0",
    ]
    cfg, module, trainer = _run(
        [*exp, "trainer=cpu", f"data.label_maps={toy_maps}", *TINY, *tiny], tmp_path
    )
    assert trainer.global_step == 2
    structures = experiment.startswith("structures")
    k = 32 if structures else 4  # SynthSeg 1.0's 31 structures + background
    first = "Left-Cerebral-White-Matter" if structures else "GM"
    if experiment.startswith("structures_sagittal"):  # hemispheres merged: 17 + background
        k, first = 18, "Cerebral-White-Matter"
    assert {"train/loss", "val/dice", f"val/dice_{first}"} <= set(trainer.callback_metrics)
    net, meta = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert meta.patch_size == tuple(cfg.synth.patch_shape) and meta.spacing_mm == cfg.synth.voxel_mm
    assert meta.unet.n_stages == module.unet_cfg.n_stages and meta.label_table.target.n_classes == k
    shape = meta.patch_size[: meta.unet.spatial_dims]  # 2D networks take slices
    with torch.no_grad():
        x = torch.rand(1, meta.unet.in_channels, *shape)
        assert net(x).shape == (1, k, *shape)
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)[
        "hyper_parameters"
    ]["config"]
    assert (tmp_path / "splits.json").is_file()


def test_resume_after_interrupt_repeats_the_uninterrupted_run(
    toy_maps: str, tmp_path: Path
) -> None:
    here = "test_training"
    common = [
        "experiment=smoke",
        f"data.label_maps={toy_maps}",
        "callbacks.last.every_n_epochs=0",
        "+callbacks.last.every_n_train_steps=2",
        f"+callbacks.digest._target_={here}.BatchDigest",
    ]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _run([*common, f"+callbacks.digest.path={a}/dig"], a)
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        _run(
            [
                *common,
                f"+callbacks.digest.path={b}/dig",
                f"+callbacks.stop._target_={here}.Interrupt",
                "+callbacks.stop.at_step=3",
            ],
            b,
        )
    _run([*common, f"+callbacks.digest.path={c}/dig", f"resume={b}/checkpoints/last.ckpt"], c)
    full, resumed = read_digests(a / "dig"), read_digests(c / "dig")
    assert [r["step"] for r in full] == list(range(6))
    assert [r["step"] for r in resumed] == [2, 3, 4, 5]  # resumed mid-epoch at step 2
    assert resumed == full[2:]
    sa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    sc = torch.load(c / "checkpoints" / "last.ckpt", weights_only=True)
    assert sa["global_step"] == sc["global_step"] == 6
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sc["state_dict"][k]), k


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_where_it_goes_on_from(toy_maps, tmp_path, caplog, signum):
    """Lightning stops the run itself and says nothing of resuming; the log gets one line with the
    step and the last checkpoint's ``resume=`` (which is on disk)."""
    here = "test_training"
    sigint = signal.getsignal(signal.SIGINT)  # Lightning leaves SIGINT ignored after a Ctrl-C
    try:
        with caplog.at_level("ERROR", logger="synthseg_lite"), pytest.raises(SystemExit):
            _run(["experiment=smoke", f"data.label_maps={toy_maps}",
                  "callbacks.last.every_n_epochs=0", "+callbacks.last.every_n_train_steps=2",
                  f"+callbacks.kill._target_={here}.Kill", "+callbacks.kill.at_step=3",
                  f"+callbacks.kill.signum={int(signum)}"], tmp_path)
    finally:
        signal.signal(signal.SIGINT, sigint)
    last = tmp_path / "checkpoints" / "last.ckpt"
    which = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    # SIGTERM: Lightning ends the step first (and writes its step-4 checkpoint)
    step, saved = (3, 2) if signum == signal.SIGINT else (4, 4)
    assert [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()] == [(
        f"interrupted ({which}) at step {step}: the same command with resume={last} goes on "
        "from its last checkpoint"
    )]
    assert torch.load(last, weights_only=True)["global_step"] == saved


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "real").is_dir(), reason="shared data absent"
)
def test_real_scan_validation_logs_dice_per_class(toy_maps: str, tmp_path: Path) -> None:
    _, _, trainer = _run(
        [
            "experiment=smoke",
            f"data.label_maps={toy_maps}",
            "data/real_val=shared",
            "data.real_val.0.max_cases=1",
            "trainer.max_epochs=1",
            "callbacks.best.monitor=val_real/oasis/dice",
        ],
        tmp_path,
    )
    m = trainer.callback_metrics
    for name in ("ibsr", "oasis"):
        assert all(0 <= float(m[f"val_real/{name}/dice_{c}"]) <= 1 for c in ("GM", "WM", "CSF"))
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    with pytest.raises(ValueError, match="not logged"):
        train_script.build(
            compose(
                [
                    f"paths.output_dir={tmp_path}",
                    "experiment=smoke",
                    f"data.label_maps={toy_maps}",
                    "callbacks.best.monitor=val_real/nope/dice",
                ]
            )
        )


# ------------------------------------------------------------------------------------- CLI


def test_cli_smoke_writes_tensorboard_and_checkpoints(tmp_path: Path) -> None:
    """What CI runs: ``python train.py experiment=smoke`` (embedded phantoms, default logger)."""
    t0 = time.time()
    cmd = [sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.time() - t0 < 120
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {
        "train/loss",
        "val/dice",
        "val/dice_GM",
        "val/dice_WM",
        "val/dice_CSF",
        "val/loss",
    } <= set(tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"])
    assert "train/synthetic" in tags["images"] and any(
        t.startswith("synth/") for t in tags["histograms"]
    )
    assert ea.PluginTagToContent("hparams")  # hyper-parameters
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert json.loads((tmp_path / "splits.json").read_text())[0]["val"]


def test_cli_multirun_gives_each_fold_its_own_directory(toy_maps: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=smoke",
        "fold=0,1",
        "logger=none",
        f"data.label_maps={toy_maps}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    res = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0_fold0", "1_fold1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / job / "splits.json").is_file()
    cfg1 = torch.load(tmp_path / "1_fold1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert cfg1["hyper_parameters"]["config"]["fold"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_default_job_without_gpu_says_so_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(
        cmd,
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "experiment=cpu" in err[0]


def test_init_weights_starts_from_a_model_file_and_refuses_another_network(
    toy_maps: str, tmp_path: Path
) -> None:
    from synthseg_lite.model.artifact import save_model
    from synthseg_lite.training.start import init_weights

    tiny = [
        "experiment=cpu",
        f"data.label_maps={toy_maps}",
        *TINY,
        "model.unet.n_stages=3",
        "model.unet.base_features=4",
        "model.unet.max_features=8",
        "synth.patch_shape=[32,32,32]",
        "synth.voxel_mm=4.0",
    ]
    _run(tiny, tmp_path / "a")
    trained, meta = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt")
    pt = save_model(tmp_path / "a.pt", trained, meta, precision="float16")
    _, fresh, _ = train_script.build(compose([f"paths.output_dir={tmp_path / 'b'}", *tiny]))
    assert not torch.equal(fresh.net.state_dict()["input_block.conv1.conv.weight"],
                           trained.state_dict()["input_block.conv1.conv.weight"])
    init_weights(fresh, pt)
    for k, v in trained.state_dict().items():  # float16 storage: equal to its rounding
        torch.testing.assert_close(fresh.net.state_dict()[k], v, atol=1e-2, rtol=1e-3)
    # wider stages start from the file's function (Net2WiderNet); another depth is refused
    wider = train_script.build(
        compose([f"paths.output_dir={tmp_path / 'c'}", *tiny, "model.unet.base_features=8"])
    )[1]
    init_weights(wider, pt)
    channels = fresh.net.state_dict()["input_block.conv1.conv.weight"].shape[1]
    x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))  # 2D slices
    with torch.no_grad():
        torch.testing.assert_close(wider.net.eval()(x), fresh.net.eval()(x), atol=1e-4, rtol=1e-4)
    deeper = compose([f"paths.output_dir={tmp_path / 'e'}", *tiny, "model.unet.n_stages=4"])
    with pytest.raises(ValueError, match="init_weights=.*another network"):
        init_weights(train_script.build(deeper)[1], pt)
    other = compose([f"paths.output_dir={tmp_path / 'd'}", *tiny, "data.target=synthseg"])
    with pytest.raises(ValueError, match="init_weights=.*data.target must match"):
        init_weights(train_script.build(other)[1], pt)


def test_init_weights_merges_the_hemispheres_of_the_shipped_structure_model(
    toy_maps: str, tmp_path: Path
) -> None:
    """The sagittal view starts from the shipped structure model: every layer as the file's and
    each merged class's logit the mean of its left/right pair's plus log 2 (their log-sum-exp
    where they agree), so the function is the file's up to the pairs' disagreement."""
    from synthseg_lite.inference.predictor import resolve_model
    from synthseg_lite.labels.presets import TARGET_PRESETS, hemispheres_merged
    from synthseg_lite.training.start import init_weights

    over = [f"paths.output_dir={tmp_path}", "experiment=structures_sagittal192",
            "init_weights=structures",
            f"data.label_maps={toy_maps}", "logger=none"]
    module = train_script.build(compose(over))[1]
    shipped, meta = load_model(resolve_model("structures"))
    merged, index = hemispheres_merged(meta.label_table.target)
    assert module.table.target == merged == TARGET_PRESETS["synthseg_fs_hemispheres"]
    init_weights(module, resolve_model("structures"))
    x = torch.randn(2, 7, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, half = shipped.eval()(x), module.net.eval()(x)
    idx = torch.as_tensor(index)
    count = torch.bincount(idx).float()
    want = torch.zeros(2, len(count), 64, 48).index_add_(1, idx, full) / count.view(1, -1, 1, 1)
    torch.testing.assert_close(half, want + count.log().view(1, -1, 1, 1), atol=1e-4, rtol=1e-4)
    assert half.shape[1] == 18 and (count == 2).sum() == 14


@pytest.mark.slow  # a training subprocess: ~20 s
def test_train_script_killed_by_sigterm_exits_143(tmp_path: Path) -> None:
    """Lightning ends a run on SIGTERM with exit code 0; a killed run is not a finished one (a job
    array or a sweep must see it), so ``train.py`` exits 143 (128 + SIGTERM), as a shell reports."""
    cmd = [sys.executable, "train.py", "experiment=smoke", "trainer.max_epochs=500",
           f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM) at step" in out + err
