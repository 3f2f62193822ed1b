"""The built wheel alone, installed in a fresh virtual environment, is a working tool: configs and
model inside, the four commands on PATH (--help, --version), and synthseg-lite-infer segments a
small BIDS dataset in a folder outside the checkout (derivatives, volumes.csv, report.html).

The venv sees the machine's packages (``--system-site-packages``: torch and the dependencies are
not downloaded) but gets the project only from the wheel (``pip install --no-deps``); the test
checks that the package imported there is the wheel's, not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "infer", "evaluate", "export")
SKIP = shutil.ignore_patterns(
    ".git", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv",
    "multirun", "runs", "lightning_logs", "*.ckpt", "*.nii", "*.nii.gz", "*.mgz",
)


def _run(cmd, cwd, env, timeout=300):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.mark.slow
def test_wheel_in_fresh_venv_segments_a_scan(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    # build from a copy of the working tree (no build/ or egg-info left in the checkout)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    _run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "dist")],
        src, env,
    )
    (wheel,) = (tmp_path / "dist").glob("synthseg_lite-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "synthseg_lite/conf/train.yaml" in names and "synthseg_lite/conf/cli/infer.yaml" in names
    assert "synthseg_lite/resources/model_cpu.pt" in names
    assert "synthseg_lite/conf/scaling/hydra/launcher/slurm.yaml" in names  # README "Scaling out"
    assert "synthseg_lite/conf/sweep/generator.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env)
    bin_ = venv / "bin"
    _run([str(bin_ / "python"), "-m", "pip", "install", "--no-deps", str(wheel)], tmp_path, env)
    work = tmp_path / "study"  # outside the checkout, nothing of it on sys.path
    work.mkdir()
    code = "import synthseg_lite; print(synthseg_lite.__file__)"
    res = _run([str(bin_ / "python"), "-c", code], work, env)
    assert Path(res.stdout.strip()).is_relative_to(venv), res.stdout
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    from synthseg_lite._version import __version__

    for name in COMMANDS:
        exe = shutil.which(f"synthseg-lite-{name}", path=str(bin_))
        assert exe, f"synthseg-lite-{name} not installed"
        res = _run([exe, "--version"], work, env)
        assert res.stdout.strip() == f"synthseg-lite-{name} {__version__}"
        res = _run([exe, "--help"], work, env)
        assert f"Usage: synthseg-lite-{name}" in res.stdout and "Options (KEY=DEFAULT" in res.stdout
    # a small BIDS dataset made here (two subjects), segmented with the shipped model by the
    # installed command: BIDS derivatives, one volumes.csv row per scan, report.html
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in (40, 44, 40)], indexing="ij")) * 2
    r = np.sqrt((g[0] / 30) ** 2 + (g[1] / 36) ** 2 + (g[2] / 30) ** 2)
    img = np.where(r < 1, 60.0, 0.0) + np.where(r < 0.8, 50.0, 0.0) - np.where(r < 0.25, 90.0, 0)
    bids = work / "bids"
    for sub in ("01", "02"):
        anat = bids / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        scan = np.clip(img + rng.normal(0, 3, img.shape) * (r < 1), 0, None).astype(np.float32)
        path = anat / f"sub-{sub}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(scan, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    (bids / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    _run(["synthseg-lite-infer", "input=bids", "output=out", "tta=none", "threads=1"], work, env)
    deriv = work / "out" / "derivatives" / "synthseg_lite"
    assert (deriv / "dataset_description.json").is_file()
    for sub in ("01", "02"):
        (seg_path,) = (deriv / f"sub-{sub}" / "anat").glob("*_dseg.nii.gz")
        seg = nib.load(str(seg_path))
        assert seg.shape == img.shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    rows = (deriv / "volumes.csv").read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + one row per scan
    assert (deriv / "report.html").is_file()
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"):  # extra [cluster]
        for name in ("train", "infer"):
            res = _run([f"synthseg-lite-{name}", "hydra/launcher=slurm", "--cfg", "hydra",
                        "--package", "hydra.launcher"], work, env)
            assert "SlurmLauncher" in res.stdout and "array_parallelism: 16" in res.stdout
        # the study in two parts through submitit's local executor, then report_only
        _run(["synthseg-lite-infer", "-m", "hydra/launcher=local", "input=bids", "output=parts",
              "tta=none", "threads=1", "num_parts=2", "part_id=0,1"], work, env)
        table = work / "parts" / "derivatives" / "synthseg_lite" / "volumes.csv"
        assert len(table.read_text().strip().splitlines()) == 3
        (table.parent / "report.html").unlink()
        _run(["synthseg-lite-infer", "output=parts", "report_only=true"], work, env)
        assert (table.parent / "report.html").is_file()
    (sub01,) = (bids / "sub-01" / "anat").glob("*.nii.gz")
    res = subprocess.run(
        ["synthseg-lite-infer", f"input={sub01}", "output=out2", "model=structures"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    site = venv / "lib"
    if not any(site.glob("python*/site-packages/synthseg_lite/resources/model_structures.pt")):
        assert res.returncode == 2
        not_shipped = "error: the structure model is not shipped in this installation"
        assert res.stderr.strip() == not_shipped
