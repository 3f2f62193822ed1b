"""A catalogue of bad inputs across infer, evaluate, export and train (issue 11).

Every case runs a command the way a user does (``main()`` of :mod:`synthseg_lite.commands` with
``sys.argv`` set; a few also as real subprocesses) on small files built here, and checks:

* the exit code: 2 for a bad argument, 1 when some scans of a study were skipped, 0 when the input
  is only implausible (a warning);
* stderr: exit 2: exactly one line starting with ``error: `` and no ``[WARNING]``/``[ERROR]`` log
  line; exit 1: for each bad scan exactly one ``[WARNING] skipped <file>: <reason>`` line, and the
  other scans segmented; exit 0 with a warning: exactly one ``[WARNING]`` line naming the limit;
  ``[INFO]`` log lines are allowed; never ``Traceback``;
* every input file byte-identical afterwards (SHA-256 of every file under the case's input folder);
* no partial outputs: after exit 2 the output folder holds nothing but Hydra's own log and config
  (``*.log``, ``.hydra/``); after exit 1 only the good scans' outputs;
* crafted model files and checkpoints never run their code (a marker file never appears).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import AFFINE, _head, _save, run_in_process

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
HYDRA_FILES = {"infer.log", "evaluate.log", "train.log", "export.log"}


# ----------------------------------------------------------------------------------- builders
#: FreeSurfer's conformed orientation (x -> left, y -> inferior, z -> anterior), 2 mm voxels.
LIA = np.array([[-2.0, 0, 0, 0], [0, 0, 2, 0], [0, -2, 0, 0], [0, 0, 0, 1]])
#: 12 mm voxels along x (beyond the 9 mm limit), 2 mm in-plane.
COARSE = np.diag([12.0, 2, 2, 1])




def _aseg(shape=(48, 52, 44)) -> np.ndarray:
    """An aseg-like label map (FreeSurfer values 0, 2, 3, 4, 41, 42, 43), int16."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = np.sqrt((((idx - np.array(shape) / 2) / (np.array(shape) / 2.4)) ** 2).sum(-1))
    left = idx[..., 0] < shape[0] / 2
    lab = np.where(r < 1, 3, 0) + np.where(r < 0.7, -1, 0) + np.where(r < 0.3, 2, 0)
    lab = np.where((lab > 0) & ~left, lab + 39, lab)
    return lab.astype(np.int16)






def _evil(path: Path, marker: Path, payload: dict | None = None) -> Path:
    """A torch file whose unpickling would create ``marker`` (``__reduce__`` calls os.system)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**(payload or {}), "x": Evil()}, path)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _annex_link(path: Path) -> Path:
    """A git-annex link whose content is not here (a DataLad dataset not ``datalad get``)."""
    path.symlink_to("../.git/annex/objects/Xq/7k/SHA256E-s12--ab.nii.gz/SHA256E-s12--ab.nii.gz")
    return path


def _truncated(path: Path) -> Path:
    _save(_head(), path)
    raw = path.read_bytes()
    return _bytes(path, raw[: len(raw) // 3])


def _truncated_4d(path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> Path:
    """A (X, Y, Z, 1) file cut short, as FSL writes single volumes: its voxels are read lazily."""
    _save((_head() if data is None else data)[..., None], path, affine=affine)
    raw = path.read_bytes()
    return _bytes(path, raw[: len(raw) // 3])


def _mgz_garbage(path: Path) -> Path:
    import gzip

    return _bytes(path, gzip.compress(b"\x00\x00\x00\x01" + b"\x07" * 200))


def _rgb(path: Path) -> Path:
    rgb = np.zeros((16, 16, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return _save(rgb, path)


def _fourd(path: Path) -> Path:
    return _save(np.stack([_head(), _head(seed=1)], -1), path)


def _bad_affine(path: Path, affine: np.ndarray) -> Path:
    """A NIfTI whose sform is ``affine`` (nibabel refuses to build such an image directly)."""
    hdr = nib.Nifti1Header()
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = affine[:3]
    hdr["sform_code"], hdr["qform_code"] = 2, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_head(), None, header=hdr), str(path))
    return path


def _nan(path: Path, value=np.nan) -> Path:
    img = _head()
    img[10, 10, 10] = value
    return _save(img, path)


def _nan_background(path: Path) -> Path:
    img = _head()
    img[img == 0] = np.nan
    return _save(img, path)


# ----------------------------------------------------------------------------------- fixtures
# tiny_model: a random 3-stage network at 2 mm (predictions meaningless, well-formed), shared
# with the CLI tests.


@dataclass
class Case:
    """One bad input.

    Attributes:
        id: test id.
        command: infer | evaluate | export | train.
        setup: ``setup(inp, out, model) -> args``: builds the inputs under ``inp`` and returns the
            command-line arguments.
        code: expected exit code.
        stderr_has: a substring of the error (or warning) line.
        skipped: exit 1 cases: the names of the scans that must be skipped (the others must have
            a segmentation).
        marker: a crafted file's marker that must not appear.
        needs_cpu_only: skip where CUDA is available.
    """

    id: str
    command: str
    setup: Callable[[Path, Path, Path], list[str]]
    code: int = 2
    stderr_has: str = ""
    skipped: tuple[str, ...] = ()
    needs_cpu_only: bool = False
    warning: bool = False


def _infer_args(extra: list[str]) -> Callable[[Path, Path, Path], list[str]]:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_head(), inp / "good.nii.gz")
        return [f"input={inp}", f"output={out}", f"model={model}", "progress=false",
                "report=false", *extra]

    return setup


def _infer_with(build: Callable[[Path], Path | None], extra: list[str] = ()) -> Callable:
    """A study of one good scan and ``build(inp)`` (a bad file or a model)."""

    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_head(), inp / "good.nii.gz")
        build(inp)
        return [f"input={inp}", f"output={out}", f"model={model}", "progress=false",
                "report=false", *extra]

    return setup


def _infer_model(build: Callable[[Path], Path]) -> Callable:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_head(), inp / "scans" / "good.nii.gz")
        m = build(inp)
        return [f"input={inp / 'scans'}", f"output={out}", f"model={m}", "progress=false"]

    return setup


def _reference_next_to_scan(overwrite: bool) -> Callable:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_head(), inp / "s1.nii.gz")
        _save(_aseg(), inp / "s1_seg.nii.gz")  # the user's manual reference
        return [f"input={inp / 's1.nii.gz'}", f"output={inp}", f"model={model}",
                "progress=false", f"overwrite={str(overwrite).lower()}"]

    return setup


def _eval_args(pred: Callable[[Path], Path] | None, extra: list[str] = ()) -> Callable:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        ref = _save(_aseg(), inp / "refs" / "c1_seg.nii.gz")
        p = pred(inp) if pred else _save(_aseg(), inp / "preds" / "c1_seg.nii.gz")
        return [f"pred={p}", f"ref={ref}", "ref_labels=aseg", "pred_labels=aseg", f"output={out}",
                "plots=false", "surface=false", *extra]

    return setup


def _export_args(extra: list[str], build: Callable[[Path], None] | None = None) -> Callable:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_aseg(), inp / "maps" / "m1.nii.gz")
        if build:
            build(inp)
        return [f"output={out}", "n=1", "batch_size=1", f"label_maps={inp / 'maps'}",
                "montage=false", "device=cpu", "synth.patch_shape=[16,16,16]", *extra]

    return setup


def _train_args(extra: list[str] | Callable[[Path], list[str]]) -> Callable:
    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_aseg(), inp / "maps" / "m1.nii.gz")  # small maps: no phantoms to generate
        more = extra(inp) if callable(extra) else extra
        return ["experiment=smoke", f"hydra.run.dir={out}", "logger=none", "fold=all",
                f"data.label_maps={inp / 'maps'}", "data/real_val=none", *more]

    return setup


def _foreign_ckpt(inp: Path) -> list[str]:
    """A checkpoint of another network (one weight of another shape)."""
    ck = inp / "other.ckpt"
    torch.save({"hyper_parameters": {"seed": 0, "config": {}},
                "state_dict": {"net.input_block.conv1.conv.weight": torch.zeros(2, 1, 3, 3, 3)},
                "global_step": 1}, ck)
    return [f"resume={ck}"]


def _intensity_map(inp: Path) -> None:
    _save(np.round(_head() * 7), inp / "maps" / "m1.nii.gz", dtype=np.int16)


# ------------------------------------------------------------------ builders of issue 18's cases
def _raw_nifti(path: Path, pixdim=None, dims=None, codes=None, gz=True) -> Path:
    """A NIfTI whose stored header has ``pixdim[1:4]``, ``dim[1:4]`` or (qform, sform) codes
    patched (nibabel rewrites them from the affine when it saves)."""
    import gzip
    import struct

    tmp = path.with_name("raw.nii")
    _save(_head(), tmp)
    raw = bytearray(tmp.read_bytes())
    tmp.unlink()
    if pixdim is not None:
        raw[80:92] = struct.pack("<3f", *pixdim)
    if dims is not None:
        raw[42:48] = struct.pack("<3h", *dims)
    if codes is not None:
        raw[252:256] = struct.pack("<2h", *codes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def _user_file(name: str, text: str) -> Callable:
    """A study whose output folder already holds a user's ``name``."""

    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _bytes(out / name, text.encode())
        return _infer_args(["report=true"])(inp, out, model)

    return setup


def _odd_input(build: Callable[[Path], str]) -> Callable:
    """One good scan plus what ``build(inp)`` makes; ``input=`` is what it returns."""

    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        _save(_head(), inp / "good.nii.gz")
        return [f"input={build(inp)}", f"output={out}", f"model={model}", "progress=false",
                "report=false"]

    return setup


def _symlink_loop(inp: Path) -> str:
    (inp / "l1").symlink_to(".")
    return f"{inp}/**/*.nii.gz"


def _glob_dotdot(inp: Path) -> str:
    (inp / "a" / "b").mkdir(parents=True)
    return f"{inp}/a/*/../../*.nii.gz"


def _protocol(text: str) -> Callable:
    def build(inp: Path) -> None:
        _bytes(inp / "proto.yaml", text.encode())

    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        return _export_args([f"labels={inp / 'proto.yaml'}"], build)(inp, out, model)

    return setup


def _model_with(change: Callable[[dict], None]) -> Callable:
    """The tiny model with its settings changed by ``change(meta)``."""

    def setup(inp: Path, out: Path, model: Path) -> list[str]:
        d = torch.load(model, weights_only=True)
        change(d["meta"])
        torch.save(d, inp / "m.pt")
        return _infer_model(lambda i: i / "m.pt")(inp, out, model)

    return setup


def _two_and_three_d(inp: Path) -> Path:
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.unet import UNetConfig, build_unet

    folder = inp / "models"
    folder.mkdir()
    for k, dims in enumerate((3, 2)):
        cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False, spatial_dims=dims)
        meta = ModelMeta(cfg, LabelTable.create("tissue"), 2.0, (64,) * dims, {},
                         {} if dims == 3 else {"axes": [0, 1, 2], "context": 0})
        save_model(folder / f"fold_{k}.pt", build_unet(cfg, 4), meta)
    return folder


CASES: list[Case] = [
    # ---------------------------------------------------------------- infer: bad arguments
    Case("infer-unknown-key", "infer", _infer_args(["colour=red"]), stderr_has="colour"),
    Case("infer-wrong-type", "infer", _infer_args(["overlap=lots"]), stderr_has="overlap"),
    Case("infer-overlap-range", "infer", _infer_args(["overlap=1.5"]), stderr_has="overlap"),
    Case("infer-tta-choice", "infer", _infer_args(["tta=spin"]), stderr_has="tta"),
    Case("infer-percentiles-reversed", "infer", _infer_args(["percentiles=[99,1]"]),
         stderr_has="percentiles"),
    Case("infer-sw-batch-zero", "infer", _infer_args(["sw_batch_size=0"]),
         stderr_has="sw_batch_size"),
    Case("infer-roi-not-divisible", "infer", _infer_args(["roi_size=[30,30,30]"]),
         stderr_has="roi_size"),
    Case("infer-threads-negative", "infer", _infer_args(["threads=-2"]), stderr_has="threads"),
    Case("infer-output-mm-zero", "infer", _infer_args(["output_mm=0"]), stderr_has="output_mm"),
    Case("infer-pose-max-deg-negative", "infer", _infer_args(["pose_max_deg=-3"]),
         stderr_has="pose_max_deg"),
    Case("infer-output-mm-word", "infer", _infer_args(["output_mm=fine"]),
         stderr_has="output_mm"),
    Case("infer-keep-largest", "infer", _infer_args(["keep_largest=maybe"]),
         stderr_has="keep_largest"),
    Case("infer-smooth-negative", "infer", _infer_args(["smooth_sigma_vox=-0.5"]),
         stderr_has="smooth_sigma_vox"),
    Case("infer-parse-error", "infer", _infer_args(["input=[a"]), stderr_has="override"),
    Case("infer-missing-input", "infer",
         lambda i, o, m: [f"output={o}", f"model={m}"], stderr_has="input"),
    Case("infer-no-such-input", "infer",
         lambda i, o, m: [f"input={i}/nothing.nii.gz", f"output={o}", f"model={m}"],
         stderr_has="no such"),
    Case("infer-input-dicom-folder", "infer",  # DICOM, not converted: say how
         lambda i, o, m: [f"input={_bytes(i / 'dicom' / 'IM0001.dcm', b'x' * 132).parent}",
                          f"output={o}", f"model={m}"], stderr_has="dcm2niix"),
    Case("infer-input-broken-link", "infer",  # a DataLad file not fetched, named alone
         lambda i, o, m: [f"input={_annex_link(i / 'sub-01_T1w.nii.gz')}", f"output={o}",
                          f"model={m}"], stderr_has="datalad get"),
    Case("infer-output-is-file", "infer",
         lambda i, o, m: [f"input={_save(_head(), i / 'a.nii.gz')}",
                          f"output={_bytes(i / 'file.txt', b'x')}", f"model={m}"],
         stderr_has="file.txt: File exists: a file where a folder is needed"),
    Case("infer-output-unwritable", "infer",
         lambda i, o, m: [f"input={_save(_head(), i / 'a.nii.gz')}",
                          "output=/proc/synthseg_lite_test/out", f"model={m}"],
         stderr_has="/proc/synthseg_lite_test"),
    Case("infer-device-cuda", "infer", _infer_args(["device=cuda"]), stderr_has="CUDA",
         needs_cpu_only=True),
    Case("infer-device-bogus", "infer", _infer_args(["device=tpu7"]), stderr_has="device"),
    Case("infer-model-missing", "infer", _infer_model(lambda i: i / "none.pt"),
         stderr_has="none.pt"),
    Case("infer-model-evil", "infer",
         _infer_model(lambda i: _evil(i / "evil.pt", i.parent / "PWNED",
                                      {"format": "synthseg_lite.model/1"})),
         stderr_has="could run code"),
    Case("infer-model-evil-ckpt", "infer",
         _infer_model(lambda i: _evil(i / "evil.ckpt", i.parent / "PWNED",
                                      {"hyper_parameters": {"label_table": {}}})),
         stderr_has="could run code"),
    Case("infer-model-garbage", "infer",
         _infer_model(lambda i: _bytes(i / "g.pt", b"\x80\x02junk")),
         stderr_has="g.pt"),
    Case("infer-model-foreign-dict", "infer",
         _infer_model(lambda i: (torch.save({"w": torch.zeros(3)}, i / "f.pt"), i / "f.pt")[1]),
         stderr_has="f.pt"),
    Case("infer-model-empty-folder", "infer",
         _infer_model(lambda i: (i / "run").mkdir() or i / "run"), stderr_has="run"),
    Case("infer-overwrite-reference", "infer", _reference_next_to_scan(False),
         stderr_has="s1_seg.nii.gz"),
    Case("infer-overwrite-reference-forced", "infer", _reference_next_to_scan(True),
         stderr_has="s1_seg.nii.gz"),
    # ---------------------------------------------------------------- infer: per-scan problems
    Case("scan-broken-link", "infer",  # in a folder: skipped with its reason, not left out
         _infer_with(lambda i: _annex_link(i / "sub-01_T1w.nii.gz")),
         code=1, skipped=("sub-01_T1w.nii.gz",)),
    Case("scan-truncated", "infer", _infer_with(lambda i: _truncated(i / "trunc.nii.gz")),
         code=1, skipped=("trunc.nii.gz",)),
    Case("scan-truncated-4d-singleton", "infer",
         _infer_with(lambda i: _truncated_4d(i / "trunc4d.nii.gz")),
         code=1, skipped=("trunc4d.nii.gz",)),
    Case("scan-garbage-nii", "infer", _infer_with(lambda i: _bytes(i / "junk.nii", b"\x00" * 400)),
         code=1, skipped=("junk.nii",)),
    Case("scan-garbage-mgz", "infer", _infer_with(lambda i: _mgz_garbage(i / "junk.mgz")),
         code=1, skipped=("junk.mgz",)),
    Case("scan-4d", "infer", _infer_with(lambda i: _fourd(i / "fourd.nii.gz")),
         code=1, skipped=("fourd.nii.gz",)),
    Case("scan-rgb", "infer", _infer_with(lambda i: _rgb(i / "rgb.nii.gz")),
         code=1, skipped=("rgb.nii.gz",)),
    Case("scan-complex", "infer",
         _infer_with(lambda i: _save(_head().astype(np.complex64), i / "cplx.nii.gz")),
         code=1, skipped=("cplx.nii.gz",)),
    Case("scan-zero-affine", "infer",
         _infer_with(lambda i: _bad_affine(i / "zero.nii.gz", np.zeros((4, 4)))),
         code=1, skipped=("zero.nii.gz",)),
    Case("scan-singular-affine", "infer",
         _infer_with(lambda i: _bad_affine(i / "sing.nii.gz", np.diag([2.0, 2.0, 0.0, 1.0]))),
         code=1, skipped=("sing.nii.gz",)),
    Case("scan-few-voxels", "infer",
         _infer_with(lambda i: _save(_head((3, 3, 3)), i / "tiny.nii.gz")),
         code=1, skipped=("tiny.nii.gz",)),
    Case("scan-inf", "infer", _infer_with(lambda i: _nan(i / "inf.nii.gz", np.inf)),
         code=1, skipped=("inf.nii.gz",), stderr_has="contains Inf values"),
    Case("scan-all-nan", "infer",
         _infer_with(lambda i: _save(np.full((20, 20, 20), np.nan, np.float32), i / "nan.nii.gz")),
         code=1, skipped=("nan.nii.gz",), stderr_has="every voxel is NaN"),
    Case("scan-beyond-float32", "infer",
         _infer_with(lambda i: _save(_head().astype(np.float64) * 1e300, i / "big.nii.gz")),
         code=1, skipped=("big.nii.gz",), stderr_has="exceed the float32 range"),
    Case("scan-is-label-map", "infer", _infer_with(lambda i: _save(_aseg(), i / "aseg.nii.gz")),
         code=1, skipped=("aseg.nii.gz",)),
    Case("scan-empty", "infer",
         _infer_with(lambda i: _save(np.zeros((20, 20, 20), np.float32), i / "empty.nii.gz")),
         code=1, skipped=("empty.nii.gz",)),
    Case("scan-constant", "infer",  # no contrast: not segmented into imagined tissue
         _infer_with(lambda i: _save(np.full((20, 20, 20), 5, np.float32), i / "flat.nii.gz")),
         code=1, skipped=("flat.nii.gz",), stderr_has="image is constant (every voxel 5)"),
    # ---------------------------------------------------------------- infer: implausible, warned
    Case("scan-coarse-voxels", "infer",
         lambda i, o, m: [f"input={_save(_head((12, 52, 44)), i / 'coarse.nii.gz', COARSE)}",
                          f"output={o}", f"model={m}", "progress=false", "report=false"],
         code=0, warning=True, stderr_has="limit 9 mm"),
    Case("scan-nan-background", "infer",  # SPM's "no data" outside a normalised image's FOV
         lambda i, o, m: [f"input={_nan_background(i / 'spm.nii.gz')}", f"output={o}",
                          f"model={m}", "progress=false", "report=false"],
         code=0, warning=True, stderr_has="NaN voxel(s)"),
    Case("scan-small-fov", "infer",
         lambda i, o, m: [f"input={_save(_head(), i / 'fov.nii.gz', np.diag([1.0, 1, 1, 1]))}",
                          f"output={o}", f"model={m}", "progress=false", "report=false"],
         code=0, warning=True, stderr_has="limit 80 mm"),
    # ---------------------------------------------------------------- issue 18: the output folder
    Case("infer-user-report-html", "infer", _user_file("report.html", "<html>mine</html>"),
         stderr_has="report.html exists and was not written by synthseg_lite"),
    Case("infer-user-volumes-csv", "infer",
         _user_file("volumes.csv", "subject,age,diagnosis\ns9,71,AD\n"),
         stderr_has="volumes.csv exists and was not written"),
    Case("infer-user-volumes-no-subject", "infer", _user_file("volumes.csv", "a,b\n1,2\n"),
         stderr_has="volumes.csv"),
    Case("infer-user-log", "infer", _user_file("infer.log", "my notes\n"),
         stderr_has="infer.log exists and was not written"),
    Case("infer-output-dotdot-name", "infer",
         _odd_input(lambda i: _save(_head(), i / "..nii.gz")),
         stderr_has="outside the output folder"),
    Case("infer-glob-dotdot", "infer", _odd_input(_glob_dotdot), code=0),
    Case("infer-glob-symlink-loop", "infer", _odd_input(_symlink_loop), code=0),
    Case("infer-hydra-unicode", "infer", _infer_args(["input=in/\u00fc.nii.gz"]),
         stderr_has="input=\"'in/\u00fc.nii.gz'\""),
    Case("infer-hydra-comma", "infer", _infer_args(["input=in/a,b.nii.gz"]),
         stderr_has="must be quoted"),
    Case("infer-hydra-quote", "infer", _infer_args(["input=in/it's.nii.gz"]),
         stderr_has="must be quoted"),
    Case("scan-dollar-name", "infer", _infer_with(lambda i: _save(_head(), i / "a$_$b.nii.gz")),
         code=0),
    Case("scan-long-name", "infer",
         _infer_with(lambda i: _save(_head(), i / ("x" * 233 + ".nii.gz"))), code=0),
    # ---------------------------------------------------------------- issue 18: headers
    Case("scan-header-10000-cubed", "infer",
         _infer_with(lambda i: _raw_nifti(i / "huge.nii", dims=(10000,) * 3, gz=False)),
         code=1, skipped=("huge.nii",)),
    Case("scan-header-1100-cubed", "infer",
         _infer_with(lambda i: _raw_nifti(i / "big.nii.gz", dims=(1100,) * 3)),
         code=1, skipped=("big.nii.gz",)),
    Case("scan-giant-voxels", "infer",  # 40 mm voxels: a 2 m field of view, refused, not OOM
         _infer_with(lambda i: _save(_head(), i / "giant.nii.gz", np.diag([40.0, 40, 40, 1]))),
         code=1, skipped=("giant.nii.gz",)),
    Case("scan-zero-pixdim", "infer",
         _infer_with(lambda i: _raw_nifti(i / "zero_vox.nii.gz", (2, 0, 2), codes=(0, 0))),
         code=1, skipped=("zero_vox.nii.gz",)),
    Case("scan-negative-pixdim", "infer",
         _infer_with(lambda i: _raw_nifti(i / "neg_vox.nii.gz", (2, -2, 2))),
         code=1, skipped=("neg_vox.nii.gz",)),
    Case("scan-nan-pixdim", "infer",
         _infer_with(lambda i: _raw_nifti(i / "nan_vox.nii.gz", (2, float("nan"), 2))),
         code=1, skipped=("nan_vox.nii.gz",)),
    Case("scan-no-qform-sform", "infer",
         lambda i, o, m: [f"input={_raw_nifti(i / 'noform.nii.gz', codes=(0, 0))}",
                          f"output={o}", f"model={m}", "progress=false", "report=false"],
         code=0, warning=True, stderr_has="no qform or sform"),
    # ---------------------------------------------------------------- issue 18: model settings
    Case("infer-model-spacing-zero", "infer", _model_with(lambda m: m.update(spacing_mm=0.0)),
         stderr_has="spacing_mm"),
    Case("infer-model-spacing-inf", "infer",
         _model_with(lambda m: m.update(spacing_mm=float("inf"))), stderr_has="spacing_mm"),
    Case("infer-model-spacing-nan", "infer",
         _model_with(lambda m: m.update(spacing_mm=float("nan"))), stderr_has="spacing_mm"),
    Case("infer-model-spacing-negative", "infer",
         _model_with(lambda m: m.update(spacing_mm=-2.0)), stderr_has="spacing_mm"),
    Case("infer-model-unet-type", "infer",
         _model_with(lambda m: m["unet"].update(n_stages="three")), stderr_has="unet.n_stages"),
    Case("infer-model-patch-zero", "infer",
         _model_with(lambda m: m.update(patch_size=[0, 0, 0])), stderr_has="patch_size"),
    Case("infer-model-2d-and-3d", "infer", _infer_model(_two_and_three_d), stderr_has="2D"),
    # ---------------------------------------------------------------- issue 18: protocol files
    Case("export-protocol-labels-int", "export", _protocol("labels: 5\n"),
         stderr_has="proto.yaml: labels"),
    Case("export-protocol-labels-nested", "export", _protocol("labels: [[2, 3], [4]]\n"),
         stderr_has="proto.yaml: labels"),
    Case("export-protocol-classes-list", "export",
         _protocol("labels: [2, 3, 4]\nclasses: [2, 3]\n"), stderr_has="proto.yaml: classes"),
    Case("export-protocol-classes-int", "export",
         _protocol("labels: [2, 3, 4]\nclasses: {tissue: 2}\n"),
         stderr_has="proto.yaml: classes"),
    Case("export-protocol-target-list", "export",
         _protocol("labels: [2, 3, 4]\ntarget: [1, 2]\n"), stderr_has="proto.yaml: target"),
    Case("export-protocol-priors-list", "export",
         _protocol("labels: [2, 3, 4]\npriors: [1]\n"), stderr_has="proto.yaml: priors"),
    Case("export-protocol-lr-pairs-int", "export",
         _protocol("labels: [2, 3, 4]\nlr_pairs: 5\n"), stderr_has="proto.yaml: lr_pairs"),
    Case("export-protocol-negative-label", "export",
         _protocol("labels: [2, -3]\n"), stderr_has="proto.yaml: labels"),
    # ---------------------------------------------------------------- evaluate
    Case("eval-unknown-key", "evaluate", _eval_args(None, ["colour=red"]), stderr_has="colour"),
    Case("eval-wrong-type", "evaluate", _eval_args(None, ["bins=many"]), stderr_has="bins"),
    Case("eval-bool", "evaluate", _eval_args(None, ["plots=perhaps"]), stderr_has="plots"),
    Case("eval-mode", "evaluate", _eval_args(None, ["mode=fast"]), stderr_has="mode"),
    Case("eval-ref-labels", "evaluate", _eval_args(None, ["ref_labels=nonsense"]),
         stderr_has="nonsense"),
    Case("eval-pred-missing", "evaluate", _eval_args(lambda i: i / "nothing_seg.nii.gz"),
         stderr_has="nothing_seg"),
    Case("eval-pred-intensity-float", "evaluate",
         _eval_args(lambda i: _save(_head(), i / "preds" / "c1_seg.nii.gz")),
         stderr_has="intensity image"),
    Case("eval-pred-intensity-int", "evaluate",
         _eval_args(lambda i: _save(np.round(_head() * 9), i / "preds" / "c1_seg.nii.gz",
                                    dtype=np.int16)),
         stderr_has="intensity image"),
    Case("eval-ref-missing", "evaluate",
         lambda i, o, m: [a if not a.startswith("ref=") else f"ref={i}/none"
                          for a in _eval_args(None)(i, o, m)],
         stderr_has="none"),
    Case("eval-ref-truncated-lia", "evaluate",  # reoriented to RAS: read while reorienting
         lambda i, o, m: [a if not a.startswith("ref=") else
                          f"ref={_truncated_4d(i / 'cut' / 'c1_seg.nii.gz', _aseg(), LIA)}"
                          for a in _eval_args(None)(i, o, m)],
         stderr_has="c1_seg.nii.gz"),
    Case("eval-other-grid", "evaluate",
         _eval_args(lambda i: _save(_aseg((40, 40, 40)), i / "preds" / "c1_seg.nii.gz")),
         stderr_has="grid"),
    Case("eval-output-is-file", "evaluate",
         lambda i, o, m: _eval_args(None)(i, o, m)[:-4] + [f"output={_bytes(i / 'f.txt', b'x')}"]
         + ["plots=false", "surface=false"],
         stderr_has="f.txt"),
    # ---------------------------------------------------------------- export
    Case("export-wrong-type", "export", _export_args(["n=many"]), stderr_has="n"),
    Case("export-unknown-key", "export", _export_args(["colour=red"]), stderr_has="colour"),
    Case("export-negative-std", "export", _export_args(["synth.gmm.std=[-5,10]"]),
         stderr_has="gmm.std"),
    Case("export-reversed-range", "export", _export_args(["synth.spatial.scaling=[1.2,0.8]"]),
         stderr_has="scaling"),
    Case("export-probability", "export", _export_args(["synth.flip.prob=1.5"]),
         stderr_has="flip.prob"),
    Case("export-negative-gamma", "export", _export_args(["synth.gamma.std=-0.1"]),
         stderr_has="gamma.std"),
    Case("export-n-negative", "export", _export_args(["n=-1"]), stderr_has="n must"),
    Case("export-layout", "export", _export_args(["layout=zip"]), stderr_has="layout"),
    Case("export-patch-zero", "export", _export_args(["synth.patch_shape=[0,16,16]"]),
         stderr_has="patch_shape"),
    Case("export-maps-missing", "export", _export_args(["label_maps=/nonexistent/maps"]),
         stderr_has="/nonexistent/maps"),
    Case("export-maps-intensity", "export", _export_args([], _intensity_map),
         stderr_has="intensity image"),
    Case("export-output-is-file", "export",
         lambda i, o, m: _export_args([f"output={_bytes(i / 'f.txt', b'x')}"])(i, o, m),
         stderr_has="f.txt"),
    Case("export-into-the-maps-folder", "export",
         lambda i, o, m: _export_args([f"output={i}", "overwrite=true"])(i, o, m),
         stderr_has="holds the input label map"),
    Case("export-device-cuda", "export", _export_args(["device=cuda"]), stderr_has="CUDA",
         needs_cpu_only=True),
    # ---------------------------------------------------------------- train
    Case("train-unknown-key", "train", _train_args(["colour=red"]), stderr_has="colour"),
    Case("train-wrong-type", "train", _train_args(["trainer.max_epochs=some"]),
         stderr_has="max_epochs"),
    Case("train-no-experiment", "train", _train_args(["experiment=nope"]), stderr_has="nope"),
    Case("train-negative-std", "train", _train_args(["synth.bias.std=[-1,0.5]"]),
         stderr_has="bias.std"),
    Case("train-probability", "train", _train_args(["synth.skull_strip.prob=2"]),
         stderr_has="skull_strip.prob"),
    Case("train-lr-word", "train", _train_args(["model.optimizer.lr=fast"]),
         stderr_has="model.optimizer.lr must be a number"),
    Case("train-lr-negative", "train", _train_args(["model.optimizer.lr=-1"]),
         stderr_has="model.optimizer"),
    Case("train-resume-missing", "train", _train_args(["resume=/nonexistent/last.ckpt"]),
         stderr_has="last.ckpt"),
    Case("train-resume-folder", "train", _train_args(lambda i: [f"resume={i / 'maps'}"]),
         stderr_has="folder"),
    Case("train-resume-evil", "train",
         _train_args(lambda i: [f"resume={_evil(i / 'evil.ckpt', i.parent / 'PWNED')}"]),
         stderr_has="could run code"),
    Case("train-resume-incompatible", "train", _train_args(_foreign_ckpt),
         stderr_has="incompatible"),
    Case("train-maps-intensity", "train",
         _train_args(lambda i: (_intensity_map(i), [f"data.label_maps={i / 'maps'}"])[1]),
         stderr_has="intensity image"),
    Case("train-patch-not-divisible", "train",
         _train_args(["gpu_memory_gb=null", "synth.patch_shape=[30,30,30]"]),
         stderr_has="patch"),
    Case("train-gpu-job-on-cpu", "train",
         lambda i, o, m: [f"hydra.run.dir={o}", "logger=none"], stderr_has="CUDA",
         needs_cpu_only=True),
]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _leftovers(out: Path) -> list[str]:
    """Files under ``out`` other than Hydra's own log and config and the tool's record and lock
    (``.synthseg_lite*``)."""
    if not out.exists():
        return []
    return [
        str(p.relative_to(out)) for p in out.rglob("*")
        if p.is_file() and p.name not in HYDRA_FILES and ".hydra" not in p.relative_to(out).parts
        and not p.name.startswith(".synthseg_lite")
    ]




def check_case(
    case: Case, code: int, stderr: str, inp: Path, out: Path, before: dict,
    out_before: dict | None = None,
) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    out_before = out_before or {}
    out_after = _hashes(out) if out.exists() else {}
    assert {k: out_after.get(k) for k in out_before} == out_before, "a user's file changed"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == case.code, f"exit {code}, expected {case.code}:\n{stderr[-3000:]}"
    after = _hashes(inp)  # (Hydra may add its own log and config next to the inputs)
    assert {k: after.get(k) for k in before} == before, "an input file changed"
    assert not (inp.parent / "PWNED").exists(), "a crafted file ran its code"
    errors = [ln for ln in lines if ln.startswith("error:")]
    warnings = [ln for ln in lines if "[WARNING]" in ln or "[ERROR]" in ln]
    if case.code == 2:
        assert len(errors) == 1, stderr[-3000:]
        # evaluate logs a refused case's reason before it finds that no case is left: that line
        # repeats the error's reason; no other warning is allowed
        reason = errors[0].split(": ", 1)[-1][-60:]
        assert all(reason in w for w in warnings), stderr[-3000:]
        assert case.stderr_has in errors[0], errors[0]
        assert not [p for p in _leftovers(out) if p not in out_before], _leftovers(out)
    elif case.code == 1:
        assert not errors, stderr[-3000:]
        for name in case.skipped:
            hits = [ln for ln in lines if "[WARNING] skipped" in ln and name in ln]
            assert len(hits) == 1, stderr[-3000:]
        assert (out / "good_seg.nii.gz").is_file()
        assert not [p for p in _leftovers(out) if any(Path(n).stem.split(".")[0] in p
                                                     for n in case.skipped)]
    else:
        assert not errors, stderr[-3000:]
        if case.warning:
            assert len(warnings) == 1 and case.stderr_has in warnings[0], stderr[-3000:]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_model: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    if case.needs_cpu_only and not NO_CUDA:
        pytest.skip("CUDA is available here")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    monkeypatch.chdir(tmp_path)  # (relative inputs of the Hydra cases)
    args = case.setup(inp, out, tiny_model)
    before = _hashes(inp)
    out_before = _hashes(out) if out.exists() else {}
    capfd.readouterr()
    code = run_in_process(case.command, args)
    stderr = capfd.readouterr().err
    check_case(case, code, stderr, inp, out, before, out_before)


SUBPROCESS_CASES = ["infer-unknown-key", "infer-model-evil", "eval-pred-intensity-float",
                    "export-negative-std", "train-resume-evil"]


@pytest.mark.slow  # a subprocess each (torch import): ~5 s per case on an idle machine
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id
)
def test_bad_input_as_a_user_runs_it(case: Case, tiny_model: Path, tmp_path: Path) -> None:
    """The same checks on the real entry scripts (``python infer.py ...``), in a subprocess."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    args = case.setup(inp, out, tiny_model)
    before = _hashes(inp)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, str(ROOT / f"{case.command}.py"), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    check_case(case, res.returncode, res.stderr, inp, out, before)


def test_catalogue_size() -> None:
    """Issue 11 asked for at least 40 bad inputs across the four commands; issue 18 added 33."""
    assert len(CASES) >= 117
    assert {c.command for c in CASES} == {"infer", "evaluate", "export", "train"}
    assert len({c.id for c in CASES}) == len(CASES)
    json.dumps([c.id for c in CASES])


# ------------------------------------------------------------------ the pieces, in process
def test_crafted_files_never_run_code(tmp_path: Path) -> None:
    """Model files and resume checkpoints: a pickled callable is refused in one line, unrun."""
    from synthseg_lite.model.artifact import load_model
    from synthseg_lite.training.start import read_resume
    from synthseg_lite.training import AtomicCheckpointIO

    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "evil.ckpt", marker, {"hyper_parameters": {"seed": 0}})
    for load in (load_model, read_resume, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(ValueError, match="could run code") as err:
            load(evil)
        msg = str(err.value)
        assert "\n" not in msg and str(evil) in msg and "system" in msg, msg
    assert not marker.exists()


def test_checkpoints_load_safely_and_temporaries_go(tmp_path: Path) -> None:
    """A checkpoint written by AtomicCheckpointIO reads back with weights_only=True; a failed
    write leaves no temporary; a killed write's temporary is removed by the next save."""
    from synthseg_lite.training import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    ckpt = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"seed": 3, "config": {}}}
    stale = _bytes(tmp_path / ".last.ckpt.ab12cd34.ckpt", b"")  # a run killed mid-write
    io.save_checkpoint(ckpt, tmp_path / "last.ckpt")
    assert not stale.exists()
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2))
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        io.save_checkpoint({"bad": lambda: 0}, tmp_path / "best.ckpt")  # cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_outputs_never_replace_inputs_or_foreign_files(tmp_path: Path) -> None:
    from synthseg_lite.safety import check_outputs, record_written, written_by_tool

    scan = _bytes(tmp_path / "s.nii.gz", b"scan")
    user = _bytes(tmp_path / "s_seg.nii.gz", b"reference")
    with pytest.raises(ValueError, match="is an input"):
        check_outputs([scan], [scan])
    with pytest.raises(ValueError, match="not written by synthseg_lite"):
        check_outputs([user], [scan])
    ours = _bytes(tmp_path / "out" / "s_seg.nii.gz", b"earlier run")
    record_written([ours])
    assert written_by_tool(ours) and check_outputs([ours], [scan]) == [ours]
    ours.write_bytes(b"changed by the user since")
    assert not written_by_tool(ours)
    assert check_outputs([tmp_path / "out" / "new.nii.gz"], [scan]) == []


def test_a_scan_without_qform_or_sform_gives_outputs_without_them(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """Such a scan's place in the world is unknown (nibabel falls back to LAS, the NIfTI standard's
    method 1 to RAS): its segmentation keeps codes 0 on the same grid, so that any viewer puts both
    where it puts the scan; a scan with an sform gives codes 1 as before."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    inp, out = tmp_path / "in", tmp_path / "out"
    _raw_nifti(inp / "noform.nii.gz", codes=(0, 0))
    _save(_head(), inp / "sform.nii.gz")
    args = [f"input={inp}", f"output={out}", f"model={tiny_model}", "progress=false",
            "report=false", "tta=none", "save_qc=false"]
    assert run_in_process("infer", args) == 0
    for case, code in (("noform", 0), ("sform", 1)):
        scan, seg = nib.load(inp / f"{case}.nii.gz"), nib.load(out / f"{case}_seg.nii.gz")
        assert (int(seg.header["qform_code"]), int(seg.header["sform_code"])) == (code, code)
        np.testing.assert_allclose(seg.affine, scan.affine)
        assert seg.shape == scan.shape
