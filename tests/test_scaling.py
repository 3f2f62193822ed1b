"""Scaling out (README "Scaling out"): the launcher presets (submitit's SLURM and local executors),
the Optuna sweep of the generator's ranges, train.py's return value for sweepers, DDP ranks under
multirun, a study split into parts that share one output folder, report_only. CPU, no cluster:
``hydra/launcher=local`` runs submitit's code path on this machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONF = ROOT / "synthseg_lite" / "conf"
REAL = ROOT.parent / "shared" / "data" / "real"

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="extra [cluster] absent")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="extra [sweep] absent")

from synthseg_lite.commands import train as train_script
from synthseg_lite.commands import infer as infer_command
from synthseg_lite.safety import read_record
from helpers import read_digests, write_toy_maps

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HYDRA_FULL_ERROR": "0",
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
}
LAUNCHER_KEYS = ("partition", "gpus_per_node", "tasks_per_node", "nodes", "cpus_per_task",
                 "mem_gb", "timeout_min", "array_parallelism")


def _compose(conf_dir: Path, name: str, overrides: list[str], hydra: bool = True):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=hydra)


def _run(*args: str, cwd: Path = ROOT, timeout: int = 420) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
            timeout=timeout, check=False, start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:  # a hung rendezvous fails the test, not the job
        pytest.fail(f"{args[:3]} did not finish in {exc.timeout} s")


def _best_score(ckpt: Path) -> tuple[str, float]:
    """(monitor, best score) of the monitored ModelCheckpoint stored in ``ckpt``."""
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    (key,) = [k for k in state if k.startswith("ModelCheckpoint") and "'monitor': None" not in k]
    return re.search(r"'monitor': '([^']+)'", key).group(1), float(state[key]["best_model_score"])


@pytest.fixture(scope="module")
def toy_maps(tmp_path_factory) -> str:
    return write_toy_maps(tmp_path_factory.mktemp("toy_maps"))


# ---------------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "overrides, devices, nodes",
    [([], 1, 1), (["trainer=ddp"], 2, 1), (["trainer=ddp", "trainer.num_nodes=2"], 2, 2)],
)
def test_slurm_preset_composes_for_train_with_one_task_per_device(overrides, devices, nodes):
    cfg = _compose(CONF, "train", ["hydra/launcher=slurm", *overrides])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == devices and launcher.nodes == nodes
    assert launcher.partition is None and launcher.timeout_min == 2880
    from hydra.utils import instantiate

    params = instantiate(launcher).params  # what submitit gets: every key known to the plugin
    assert {k: params[k] for k in ("tasks_per_node", "nodes", "array_parallelism")} == {
        "tasks_per_node": devices, "nodes": nodes, "array_parallelism": 16}


def test_presets_compose_for_infer_one_task_per_part_in_the_output_folder(tmp_path):
    for name, target in (("slurm", "SlurmLauncher"), ("local", "LocalLauncher")):
        cfg = _compose(CONF / "cli", "infer", [f"hydra/launcher={name}", f"output={tmp_path}",
                                                "input=x", "part_id=3"])
        assert cfg.hydra.launcher._target_.endswith(target)
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 1
        subdir = OmegaConf.to_container(cfg.hydra.sweep)["subdir"]  # job.num: set per job
        assert cfg.hydra.sweep.dir == str(tmp_path) and subdir.endswith("_part${part_id}")
    local = _compose(CONF, "train", ["hydra/launcher=local", "trainer=ddp"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.tasks_per_node == 2


def test_cfg_hydra_shows_the_slurm_launcher_and_every_preset_key_is_documented():
    res = _run("train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg",
               "hydra", "--package", "hydra.launcher")
    assert res.returncode == 0, res.stderr[-2000:]
    shown = yaml.safe_load(res.stdout)
    assert shown["_target_"].endswith("SlurmLauncher") and shown["partition"] == "gpu"
    assert shown["tasks_per_node"] == "${oc.select:trainer.devices,1}"  # resolved per sweep
    assert set(LAUNCHER_KEYS) <= set(shown)
    lines = (CONF / "scaling" / "hydra" / "launcher" / "slurm.yaml").read_text().splitlines()
    for i, line in enumerate(lines):  # each key has its comment line above it
        m = re.match(r"^(\w+):", line)
        if m and m.group(1) != "defaults":
            assert lines[i - 1].startswith("# "), f"slurm.yaml: {m.group(1)} is not documented"
            assert m.group(1) in shown


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
          "trainer.num_nodes=2", "fold=0,1,2,3,4"],
         ["--array=0-4%5", "--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2",
          "--partition=gpu", "--time=2880", "--job-name=train"]),
        (["infer.py", "-m", "hydra/launcher=slurm", "input=study", "output={out}", "num_parts=8",
          "part_id=range(8)"],
         ["--array=0-7%8", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1",
          "--output={out}/.submitit/%A_%a/%A_%a_0_log.out"]),
    ],
    ids=["train-5-folds-2-nodes", "infer-8-parts"],
)
def test_slurm_launcher_submits_one_array_with_the_preset_resources(args, expected, tmp_path):
    """What SLURM would get: a stand-in ``sbatch`` records submitit's script (and refuses it)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_RECORD"\nexit 1\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it
    for f in bin_.iterdir():
        f.chmod(0o755)
    record, out = tmp_path / "sbatch.sh", tmp_path / "out"
    env = {**ENV, "PATH": f"{bin_}{os.pathsep}{ENV['PATH']}", "SBATCH_RECORD": str(record)}
    res = subprocess.run(
        [sys.executable, str(ROOT / args[0]), *(a.format(out=out) for a in args[1:]),
         f"hydra.sweep.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert res.returncode != 0 and record.is_file(), res.stderr[-2000:]
    script = record.read_text()
    for line in expected:
        assert f"#SBATCH {line.format(out=out)}\n" in script, script
    assert "srun" in script and "submitit.core._submit" in script


def test_sweep_generator_tunes_real_keys_against_real_scan_dice():
    cfg = _compose(CONF, "train", ["experiment=smoke", "sweep=generator",
                                   "ranges.gmm_std_max=20", "ranges.spacing_max_mm=4"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert cfg.callbacks.best.monitor == "val_real/ibsr/dice"
    assert cfg.data.real_val[0].name == "ibsr"
    for key in sweeper.params:  # every tuned key exists in the job's config
        assert OmegaConf.select(cfg, key) is not None, key
    synth = OmegaConf.to_object(cfg.synth)  # the tuned upper ends reach the generator's config
    assert list(synth.gmm.std) == [0.0, 20.0] and list(synth.resolution.spacing_mm) == [1.0, 4.0]
    assert synth.patch_shape == [32, 32, 32]  # the recipe's own settings stay


def test_missing_plugin_names_the_extra():
    from hydra.errors import MissingConfigException

    from synthseg_lite.commands.common import describe

    exc = MissingConfigException(
        "In 'hydra/launcher/slurm': Could not find 'hydra/launcher/submitit_slurm'\n\n"
        "Available options in 'hydra/launcher':\n\tbasic", missing_cfg_file="submitit_slurm")
    assert describe(exc).endswith("pip install 'synthseg_lite[cluster]'")


# ------------------------------------------------------------------- train.py's return value


def test_train_returns_the_configured_monitored_metric(toy_maps, tmp_path):
    """The value a sweeper optimises is the best value of callbacks.best.monitor (here val/loss,
    minimised), as stored in best.ckpt; not another metric."""
    cfg = _compose(CONF, "train", [
        "experiment=smoke", f"data.label_maps={toy_maps}", f"paths.output_dir={tmp_path}",
        "logger=none", "trainer.max_epochs=2", "trainer.limit_train_batches=1", "threads=1",
        "callbacks.best.monitor=val/loss", "callbacks.best.mode=min",
    ], hydra=False)
    value = train_script.run(cfg)
    monitor, best = _best_score(tmp_path / "checkpoints" / "best.ckpt")
    assert monitor == "val/loss" and isinstance(value, float) and value == pytest.approx(best)
    assert value > 0.1  # a loss (Dice + CE of an untrained net), not a Dice near 0


def test_report_only_rebuilds_the_report_from_volumes_csv(tmp_path):
    from synthseg_lite.inference.outputs import DERIVATIVES, merge_volumes
    from synthseg_lite.safety import record_written

    root = tmp_path / "out" / DERIVATIVES  # a BIDS study's table
    rows = [{"subject": f"sub-{i}", "qc_score": 0.8, "qc_flag": 0, "GM_mm3": 500.0 + i}
            for i in range(3)]
    merge_volumes(root / "volumes.csv", rows)
    record_written([root / "volumes.csv"])  # as the parts' runs record it
    res = _run("infer.py", f"output={tmp_path / 'out'}", "report_only=true")  # no input=
    assert res.returncode == 0, res.stderr[-2000:]
    page = (root / "report.html").read_text()
    assert all(f"sub-{i}" in page for i in range(3))
    again = _run("infer.py", f"output={tmp_path / 'out'}", "report_only=true")  # its own page
    assert again.returncode == 0, again.stderr[-2000:]
    (root / "report.html").write_text("<p>my notes</p>")  # a user's page is never replaced
    res = _run("infer.py", f"output={tmp_path / 'out'}", "report_only=true")
    assert res.returncode == 2 and "report.html exists and was not written" in res.stderr
    assert (root / "report.html").read_text() == "<p>my notes</p>"
    with pytest.raises(ValueError, match="no volumes.csv"):
        infer_command.rebuild_report(tmp_path / "empty", 0.7)


# --------------------------------------------------------------- multirun (slow: processes)


@pytest.mark.slow
def test_local_launcher_two_folds_each_in_its_own_folder(toy_maps, tmp_path):
    sweep = tmp_path / "sweep"
    res = _run("train.py", "-m", "hydra/launcher=local", "experiment=smoke", "fold=0,1",
               f"data.label_maps={toy_maps}", "trainer.max_epochs=1", "threads=1",
               f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path / 'logs'}")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if not p.name.startswith("."))
    assert jobs == ["0_fold0", "1_fold1", "multirun.yaml"], jobs
    for fold, job in enumerate(jobs[:2]):
        run = sweep / job
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert stored["hyper_parameters"]["config"]["fold"] == fold
        assert stored["hyper_parameters"]["config"]["paths"]["output_dir"] == str(run)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs
    assert not (tmp_path / "logs").exists()  # no run folder outside the sweep


@pytest.mark.slow
def test_study_in_two_parts_segments_every_scan_once_into_one_folder(
    tiny_model, tmp_path  # noqa: F811
):
    import nibabel as nib
    import numpy as np

    scans, out = tmp_path / "scans", tmp_path / "out"
    (scans / "site2").mkdir(parents=True)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in (40, 36, 32)], indexing="ij"))
    ball = (grid**2).sum(0) <= 144
    names = ["a", "b", "c", "site2/d", "site2/e"]
    for name in names:
        img = (ball * 80 + 5 + rng.normal(0, 3, ball.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 2.0, 1.0])), str(scans / f"{name}.nii.gz"))
    res = _run("infer.py", "-m", "hydra/launcher=local", f"input={scans}", f"output={out}",
               f"model={tiny_model}", "tta=none", "threads=1", "progress=false", "num_parts=2",
               "part_id=0,1")
    assert res.returncode == 0, res.stderr[-3000:]
    logs = sorted((out / "logs").glob("*/infer.log"))
    assert [p.parent.name for p in logs] == ["0_part0", "1_part1"]
    done = [m for p in logs for m in re.findall(r"\] (\S+): [\d.]+ s, QC", p.read_text())]
    assert sorted(done) == sorted(names)  # each scan segmented once, by one part
    text = (out / "volumes.csv").read_text().splitlines()
    assert len(text) == 1 + len(names)
    assert sorted(row.split(",")[0] for row in text[1:]) == sorted(names)
    for name in names:
        assert (out / f"{name}_seg.nii.gz").is_file()
    page = (out / "report.html").read_text()  # rebuilt after both parts (StudyReport)
    assert all(name in page for name in names)
    record = read_record(out)  # both parts' files in the folder's write-ahead record, finished
    assert all(record[f"{n}_seg.nii.gz"]["state"] == "done" for n in "abc")
    assert all(read_record(out / "site2")[f"{n}_seg.nii.gz"]["state"] == "done" for n in "de")


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="shared data absent")
def test_optuna_two_trials_on_smoke_report_the_best_real_scan_dice(toy_maps, tmp_path):
    sweep = tmp_path / "sweep"
    res = _run("train.py", "-m", "experiment=smoke", "sweep=generator",
               "hydra.sweeper.n_trials=2", f"data.label_maps={toy_maps}", "logger=none",
               "data.real_val.0.max_cases=1", "trainer.max_epochs=1", "threads=1",
               f"hydra.sweep.dir={sweep}", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = {}
    for job in sorted(sweep.glob("*_fold0")):
        monitor, scores[job.name] = _best_score(job / "checkpoints" / "best.ckpt")
        assert monitor == "val_real/ibsr/dice"
        config = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)[
            "hyper_parameters"]["config"]
        tuned = dict(o.split("=", 1) for o in yaml.safe_load(
            (job / ".hydra" / "overrides.yaml").read_text()) if o.startswith("ranges."))
        assert config["synth"]["gmm"]["std"][1] == pytest.approx(float(tuned["ranges.gmm_std_max"]))
    assert len(scores) == 2 and len(set(scores.values())) == 2  # two different trials
    assert result["best_value"] == pytest.approx(max(scores.values()))
    print("optuna:", scores, result)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_under_multirun(toy_maps, tmp_path):
    """Basic launcher (Lightning starts rank 1 with the job's command, not the sweep's) for two
    folds in one process, submitit's local executor (its two tasks are the ranks), and two
    processes with SLURM's variables (Lightning's SLURMEnvironment, trainer.num_nodes=2)."""
    common = ["experiment=smoke", "trainer.devices=2", "trainer.strategy=ddp",
              f"data.label_maps={toy_maps}", "trainer.max_epochs=1", "threads=1",
              f"paths.log_dir={tmp_path / 'logs'}",
              "+callbacks.digest._target_=test_training.BatchDigest"]
    runs = {}
    for launcher, folds in (("basic", "0,1"), ("local", "0")):
        sweep = tmp_path / launcher
        res = _run("train.py", "-m", f"hydra/launcher={launcher}", f"fold={folds}", *common,
                   f"+callbacks.digest.path={tmp_path}/{launcher}_${{fold}}",
                   f"hydra.sweep.dir={sweep}")
        assert res.returncode == 0, f"{launcher}: {res.stderr[-3000:]}"
        jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit")
        assert jobs == [f"{i}_fold{f}" for i, f in enumerate(folds.split(","))], jobs
        for job in jobs:
            run = sweep / job
            assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt",
                                                                              "last.ckpt"]
            assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        for fold in folds.split(","):
            r0, r1 = (read_digests(tmp_path / f"{launcher}_{fold}", r) for r in (0, 1))
            assert [r["step"] for r in r0] == [r["step"] for r in r1] == [0, 1, 2]
            assert all(a["digest"] != b["digest"] for a, b in zip(r0, r1))
            runs[launcher, fold] = (r0, r1)
    # two "nodes" of one device each, ranks from SLURM's variables (as srun sets them) through
    # Lightning's SLURMEnvironment: trainer.num_nodes=2 under SLURM, emulated on this machine
    run, procs = tmp_path / "slurm", []
    for rank in (0, 1):
        env = {**ENV, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2",
               "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "localhost",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank),
               "MASTER_PORT": str(29500 + os.getpid() % 1000)}
        cmd = [sys.executable, "train.py", *common[:1], "trainer.strategy=ddp",
               "trainer.num_nodes=2", *common[3:], "fold=0", f"hydra.run.dir={run}",
               f"+callbacks.digest.path={tmp_path}/slurm_0"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    except subprocess.TimeoutExpired:  # a hung rendezvous fails the test, not the job
        for p in procs:
            p.kill()
        pytest.fail("the two SLURM-emulated ranks did not finish in 300 s")
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    runs["slurm", "0"] = tuple(read_digests(tmp_path / "slurm_0", r) for r in (0, 1))
    assert not (tmp_path / "logs").exists()  # no doubled run folders from rank 1
    # the same streams, whoever starts the ranks
    assert runs["basic", "0"] == runs["local", "0"] == runs["slurm", "0"]
    assert runs["basic", "0"] != runs["basic", "1"]
