"""The commands as installed tools: --help tells every option and its real default, --version, the
shipped-model names, and the Python API (synthseg_lite.segment)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import synthseg_lite
from synthseg_lite.commands import evaluate, export, infer, train  # noqa: F401  (register configs)
from synthseg_lite.commands.common import _format, describe, field_docs
from synthseg_lite.inference.predictor import SHIPPED_MODELS, default_model_path, resolve_model

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "synthseg_lite" / "conf"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}

# command -> (config dir, config name, keys of the composed config the help leaves to config groups)
COMMANDS = {
    "infer": (CONF / "cli", "infer", ()),
    "evaluate": (CONF / "cli", "evaluate", ()),
    "export": (CONF, "export", ()),
    "train": (
        CONF,
        "train",
        ("paths", "trainer", "logger", "callbacks", "data.real_val", "model.optimizer",
         "model.scheduler"),
    ),
}


def _template(command: str) -> str:
    node = ConfigStore.instance().load(f"hydra/help/synthseg_lite_{command}.yaml").node
    return str(node.template).replace("\\${", "${").replace("$$", "$")


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_option_with_its_composed_default(command):
    """Each leaf of the configuration the command really composes is a help line
    ``key=<that default>  <description>``, so the help cannot drift from the configs."""
    conf_dir, name, grouped = COMMANDS[command]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(name), resolve=False)
    text = _template(command)
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ") and "=" in ln}
    checked = 0
    for key, value in _leaves(cfg):
        if any(key == g or key.startswith(g + ".") for g in grouped):
            continue
        opt = f"{key}={_format(value)}"
        assert opt in lines, f"--help of {command} lacks {opt}"
        description = lines[opt][len("  ") + len(opt):].strip()
        assert description, f"--help of {command}: {key} has no description"
        checked += 1
    assert checked >= 10
    assert f"synthseg-lite-{command}" in text and "--version" in text


def test_field_docs_reads_attributes_sections_with_continuations():
    docs = field_docs(infer.InferConfig)  # its own fields and those of InferenceOptions
    assert docs["tta"].startswith("test-time augmentation") and "nnU-Net" in docs["tta"]
    assert "shipped" in docs["model"] and docs["input"]


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def test_infer_script_help_and_version():
    """The in-tree entry point: --help (Hydra's help with the generated page) and --version
    (the installed commands: tests/test_wheel.py)."""
    res = _run("infer.py", "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage: synthseg-lite-infer" in res.stdout
    assert "  tta=flip " in res.stdout and "  input=??? " in res.stdout
    res = _run("infer.py", "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"synthseg-lite-infer {synthseg_lite.__version__}"


def test_resolve_model_names():
    assert resolve_model(None) == resolve_model("tissue") == default_model_path()
    assert resolve_model("runs/x") == Path("runs/x")
    assert resolve_model(Path("m.pt")) == Path("m.pt")
    assert set(SHIPPED_MODELS) == {"tissue", "tissue_fast", "structures"}
    if not (Path(synthseg_lite.__file__).parent / SHIPPED_MODELS["structures"][0]).is_file():
        with pytest.raises(ValueError, match="^the structure model is not shipped"):
            resolve_model("structures")


def test_import_is_light():
    code = "import sys, synthseg_lite; print(synthseg_lite.__version__, 'torch' in sys.modules)"
    res = _run("-c", code)
    assert res.returncode == 0 and res.stdout.split() == [synthseg_lite.__version__, "False"]


def _head(shape=(36, 40, 36), vox=2.0, seed=0):
    """A (X, Y, Z) float32 ellipsoid 'head': WM core, GM rim, dark ventricle; and its affine."""
    g = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij")) * vox
    r = np.sqrt(sum((g[i] / a) ** 2 for i, a in enumerate((30, 36, 30))))
    img = np.where(r < 1, 60.0, 0.0)
    img[r < 0.8] = 110.0
    img[r < 0.25] = 20.0
    img += np.random.default_rng(seed).normal(0, 3, shape) * (r < 1)
    affine = np.diag([-vox, vox, vox, 1.0])  # LAS, not RAS
    affine[:3, 3] = [40, -40, -30]
    return img.astype(np.float32), affine


def test_segment_api(tmp_path):
    """synthseg_lite.segment: labels on the scan's grid with the output values, probabilities
    that sum to 1, volumes = voxel count x voxel volume, the scan's affine; a path, a nibabel
    image and a (data, affine) pair give the same result."""
    data, affine = _head()
    res = synthseg_lite.segment((data, affine), tta="none", threads=1)
    assert isinstance(res, synthseg_lite.SegmentationResult)
    assert res.labels.shape == data.shape and res.labels.dtype == np.uint8
    assert set(np.unique(res.labels)) <= set(res.values) and res.values[0] == 0
    assert res.probabilities.shape == (len(res.values), *data.shape)
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(res.affine, affine)
    for name, value in zip(res.names[1:], res.values[1:]):
        assert res.volumes[name] == pytest.approx((res.labels == value).sum() * 8.0)
    assert 0 <= res.qc["qc_score"] <= 1 and res.model == str(default_model_path())
    scan = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(scan))
    for same in (scan, str(scan), nib.load(str(scan))):
        np.testing.assert_array_equal(
            synthseg_lite.segment(same, tta="none", threads=1).labels, res.labels
        )
    out = res.save(tmp_path / "head_seg.nii.gz")
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), res.labels)
    np.testing.assert_allclose(img.affine, affine)
    with pytest.raises(ValueError, match="exists"):
        res.save(out)
    with pytest.raises(ValueError, match="unknown option"):
        synthseg_lite.segment((data, affine), bogus=1)
    with pytest.raises(ValueError, match="empty"):
        synthseg_lite.segment((np.zeros_like(data), affine))
    with pytest.raises(ValueError, match="constant"):
        synthseg_lite.segment((np.full_like(data, 7.5), affine))
    spm = np.where(data == 0, np.nan, data)  # NaN outside the head: no signal, as 0
    np.testing.assert_array_equal(
        synthseg_lite.segment((spm, affine), tta="none", threads=1).labels, res.labels
    )
    np.testing.assert_array_equal(  # one volume of a 4D array, as a 4D file with one volume
        synthseg_lite.segment((data[..., None], affine), tta="none", threads=1).labels, res.labels
    )
    # a flipped view (negative strides, as nibabel.as_closest_canonical gives) is the same scan
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    np.testing.assert_array_equal(
        synthseg_lite.segment((data[::-1], affine @ flip), tta="none", threads=1).labels,
        res.labels[::-1],
    )
    # labels only (no K-channel volume at the scan's size): the same labels and volumes
    lean = synthseg_lite.segment((data, affine), tta="none", threads=1, save_posteriors=False)
    assert lean.probabilities is None
    np.testing.assert_array_equal(lean.labels, res.labels)
    assert lean.volumes == res.volumes and lean.soft_volumes == pytest.approx(res.soft_volumes)


def _rgb(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z) grey levels as NIfTI's RGB24 voxels (a structured uint8 triplet)."""
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for channel in "RGB":
        rgb[channel] = np.clip(data, 0, 255).astype(np.uint8)
    return rgb


def test_segment_api_checks_a_scan_as_the_command_does(caplog, tmp_path):
    """A pair in memory is refused or warned about where ``synthseg-lite-infer`` would skip or
    warn about the same scan in a file (:func:`synthseg_lite.validate.check_scan`)."""
    data, affine = _head()
    for bad, match in [
        ((data, np.diag([2.0, 0.0, 2.0, 1.0])), "singular"),
        ((data, np.full((4, 4), np.nan)), "not finite"),
        (((data > 80).astype(np.int16) * 2, affine), "label map"),
        ((data > 80, affine), "label map"),
        ((data[:, :, :5], affine), "only"),
        ((data.astype(np.complex64), affine), "complex voxels"),
        ((data.astype(np.float64) * 1e300, affine), "float64 values up to .* exceed the float32"),
        (nib.Nifti1Image(_rgb(data), affine), "RGB or structured voxels"),
        (tmp_path, "a folder, not an image file"),
    ]:  # as a file's header or values are refused (read_image, load_volume)
        with pytest.raises(ValueError, match=match):
            synthseg_lite.segment(bad, tta="none", threads=1)
    coarse = affine.copy()
    coarse[2, 2] = 12.0  # 12 mm slices: segmented, with the command's warning
    with caplog.at_level(logging.WARNING):  # the fast network: a 432 mm tall field of view
        res = synthseg_lite.segment((data, coarse), model="tissue_fast", tta="none", threads=1)
    assert res.labels.shape == data.shape
    assert any("coarser than any training resolution" in r.getMessage() for r in caplog.records)


def test_an_error_in_a_configured_class_names_the_setting_and_its_cause():
    """Hydra's first line ("Error in call to target 'X':") alone tells a user nothing."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"_target_": "datetime.timedelta", "weeks": "many"}})
    with pytest.raises(Exception) as info:
        instantiate(cfg.trainer)
    line = describe(info.value)
    assert "\n" not in line and line.startswith("trainer: Error in call to target")
    assert line.endswith("TypeError: unsupported type for timedelta weeks component: str")


def test_a_log_file_that_cannot_be_opened_is_named_with_its_reason(tmp_path):
    """logging says only "Unable to configure handler 'file'" (an output folder that cannot be
    written, say): the line names the log file and the system's reason. In a child process, as
    logging's configuration closes every handler of the process it runs in."""
    log_file = tmp_path / "missing" / "infer.log"
    code = (
        "import logging.config\n"
        "from synthseg_lite.commands.common import describe\n"
        "try:\n"
        "    logging.config.dictConfig({'version': 1, 'handlers': {'file': {\n"
        f"        'class': 'logging.FileHandler', 'filename': {str(log_file)!r}}}}}}})\n"
        "except ValueError as exc:\n"
        "    print(str(exc).splitlines()[0]); print(describe(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    raw, line = out.stdout.splitlines()
    assert raw == "Unable to configure handler 'file'"
    assert line == f"{log_file}: No such file or directory"


def test_an_interrupted_study_says_so_in_one_line_and_goes_on(tiny_model, tmp_path):
    """SIGTERM (``scancel``, a SLURM time limit) mid-study: exit 143 and one logged line, no
    traceback, no half-written file; the same command then segments only the scans not done."""
    import signal

    from synthseg_lite.io import TMP_MARK

    data, affine = _head()
    for i in range(12):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"s{i:02d}.nii.gz")
    out = tmp_path / "out"
    args = [str(ROOT / "infer.py"), f"input={tmp_path}/*.nii.gz", f"output={out}",
            f"model={tiny_model}", "tta=none", "progress=false", "report=false", "threads=1"]
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_seg.json")) and time.monotonic() < deadline:  # a scan done
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].endswith(
        f"interrupted (SIGTERM): the scans finished so far are kept in {out}; the same command "
        "goes on from there"
    )
    segs = sorted(out.glob("*_seg.nii.gz"))
    assert 1 <= len(segs) < 12 and not [p for p in out.iterdir() if TMP_MARK in p.name]
    for seg in segs:
        assert nib.load(seg).get_fdata().shape == data.shape  # whole files
    done = len((out / "volumes.csv").read_text().splitlines()) - 1  # rows: scans finished
    res = _run(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert done >= 1 and f"kept the outputs of {done} scan(s)" in res.stderr
    assert len(list(out.glob("*_seg.nii.gz"))) == 12


def test_until_interrupted_turns_ctrl_c_and_sigterm_into_one_line_and_128_plus_the_signal(caplog):
    """And puts SIGTERM's handler back; a handler someone else installed (submitit's) stays."""
    import signal

    from synthseg_lite.commands.common import until_interrupted

    def ctrl_c():
        raise KeyboardInterrupt

    def term():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler raises at the next bytecode)

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with caplog.at_level(logging.ERROR, logger="synthseg_lite"):
        for fn, code, name in ((ctrl_c, 130, "SIGINT"), (term, 143, "SIGTERM")):
            with pytest.raises(SystemExit) as info:
                until_interrupted(fn, "what is kept")
            assert info.value.code == code
            assert caplog.records[-1].getMessage() == f"interrupted ({name}): what is kept"
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert until_interrupted(lambda: 7, "") == 7

    def theirs(signum, frame):
        raise RuntimeError("their handler")

    signal.signal(signal.SIGTERM, theirs)
    try:
        with pytest.raises(RuntimeError, match="their handler"):
            until_interrupted(term, "what is kept")
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
