"""A study survives anything (issue 18): stopped at any write, out of disk space, run twice at
once, it resumes to the outputs of an uninterrupted run, and files the tool did not write are
never changed.

Faults are injected around :func:`synthseg_lite.io.atomic_write` (every file the study writes goes
through it): a ``Killed`` exception (a ``BaseException``, as ``kill -9`` gives no handler a
chance) at the n-th write, at one of three points: just after the record claimed the file, after
the temporary file was written (the temporary is left behind, as a kill leaves it), and after the
rename, before the record says ``done``. A real ``kill -9`` loop runs in the slow test.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg_lite import io as sio
from synthseg_lite.inference import InferenceOptions, segment_scans
from synthseg_lite.inference.record import StudyLease
from synthseg_lite.safety import read_record
from helpers import BandNet, OPTS, TINY, _bids, _head, _save, _use_net, _write, run_in_process

ROOT = Path(__file__).resolve().parents[1]
POINTS = ("claimed", "temporary", "renamed")


class Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` handler sees it."""


def _state(out: Path) -> dict[str, str]:
    """Every output file's bytes (hash), but hidden files (record, locks), logs and Hydra's config;
    ``report.html`` without its generation time, sidecars without the ``overwrite`` option and
    the output folder's name."""
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.suffix == ".log" or ".hydra" in str(p):
            continue  # (temporaries: checked apart)
        data = p.read_bytes()
        if p.name == "report.html":
            data = re.sub(rb"Generated [0-9: -]+", b"", data)
        if p.suffix == ".json":  # the sidecar lists the options (overwrite) and the command
            data = re.sub(rb'"overwrite": (true|false)', b"", data)
            data = data.replace(str(out).encode(), b"<output>")
        files[str(p.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return files


@contextmanager
def _fault(n: int, point: str, exc: BaseException):
    """Raise ``exc`` at the ``n``-th (0-based) file the study writes, at ``point``: just after
    its ``pending`` claim, before the rename (temporary written), or after the rename before its
    ``done`` entry. Yields the count of writes so far."""
    from synthseg_lite.inference import record

    count = {"n": -1}
    real_append, real_replace = record.append_record, os.replace

    def append(folder, entries, lock_fd=None):
        entries = list(entries)
        state = entries[0]["state"] if entries else ""
        if state == "pending":
            count["n"] += 1
        if state == "done" and count["n"] == n and point == "renamed":
            raise exc
        real_append(folder, entries, lock_fd)
        if state == "pending" and count["n"] == n and point == "claimed":
            raise exc

    def replace(src, dst, *a, **k):
        if count["n"] == n and point == "temporary":
            if isinstance(exc, Killed):  # a kill leaves the temporary file behind
                os.link(src, str(src).replace(sio.TMP_MARK, sio.TMP_MARK + "k"))
            raise exc
        return real_replace(src, dst, *a, **k)

    record.append_record, os.replace = append, replace
    try:
        yield count
    finally:
        record.append_record, os.replace = real_append, real_replace


@pytest.fixture
def study(monkeypatch, tmp_path):
    model = _use_net(monkeypatch, tmp_path, "tissue")
    _write(tmp_path / "in" / "a.nii.gz")
    _write(tmp_path / "in" / "b.nii.gz", seed=1)
    return tmp_path / "in", model


def _run(inp, out, model, **kw):
    return segment_scans(inp, out, model, InferenceOptions(**(OPTS | {"save_qc": False} | kw)))


def _writes(inp, out, model) -> int:
    with _fault(-1, "claimed", Killed()) as count:
        _run(inp, out, model)
    return count["n"] + 1


#: Writes of the 2-scan study: per scan seg, lut, tsv, volumes.csv, json; then report.html.
N_WRITES = 11
#: The default suite's sample of (point, write): the first segmentation, the sidecar (the write
#: that marks a scan done), the report; the slow tests try every point of every write.
SAMPLE = [("claimed", 0), ("renamed", 4), ("temporary", 10)]


def _stop_then_resume(inp, model, out, point, k, expected) -> None:
    with pytest.raises(Killed), _fault(k, point, Killed()):
        _run(inp, out, model)
    overwrite = k % 2 == 1  # resumes with and without overwrite
    results = _run(inp, out, model, overwrite=overwrite)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert _state(out) == expected, (point, k)
    leftovers = [p.name for p in out.rglob(f"*{sio.TMP_MARK}*")]
    assert not leftovers, (point, k, leftovers)
    states = {e["state"] for e in read_record(out).values()}
    assert states <= {"done", "log"}, (point, k, states)


def _reference(inp, model, out) -> dict[str, str]:
    with _fault(-1, "claimed", Killed()) as count:
        _run(inp, out, model)
    assert count["n"] + 1 == N_WRITES
    return _state(out)


def test_stop_at_write_points_then_rerun_gives_identical_outputs(study, tmp_path):
    inp, model = study
    expected = _reference(inp, model, tmp_path / "ref")
    for point, k in SAMPLE:
        _stop_then_resume(inp, model, tmp_path / f"out_{point}_{k}", point, k, expected)


@pytest.mark.slow  # 66 runs of a 2-scan study: ~1-3 min
def test_stop_at_every_write_point_then_rerun_gives_identical_outputs(study, tmp_path):
    inp, model = study
    expected = _reference(inp, model, tmp_path / "ref")
    for point in POINTS:
        for k in range(N_WRITES):
            _stop_then_resume(inp, model, tmp_path / f"out_{point}_{k}", point, k, expected)


def _full_disk_then_resume(inp, model, out, k, expected) -> None:
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with _fault(k, "temporary", enospc):
        results = _run(inp, out, model)  # never raises: a scan or the report is left out
    failed = [r for r in results if r.error is not None]
    assert len(failed) + len(results.problems) == 1, (k, failed, results.problems)
    assert all("No space left" in r.error for r in failed) and (
        not results.problems or "No space left" in results.problems[0]
    )
    for r in failed:  # none of a skipped scan's files stay
        assert not list(out.glob(f"{r.case}_*")), (k, sorted(p.name for p in out.iterdir()))
    assert not list(out.rglob(f"*{sio.TMP_MARK}*"))
    _run(inp, out, model)
    assert _state(out) == expected, k


def test_full_disk_skips_with_reason_then_rerun_resumes(study, tmp_path):
    """Defect 2, at the segmentation and at the report."""
    inp, model = study
    expected = _reference(inp, model, tmp_path / "ref")
    for k in (0, 10):
        _full_disk_then_resume(inp, model, tmp_path / f"full_{k}", k, expected)


@pytest.mark.slow
def test_full_disk_at_each_write_skips_with_reason_then_rerun_resumes(study, tmp_path):
    inp, model = study
    expected = _reference(inp, model, tmp_path / "ref")
    for k in range(N_WRITES):
        _full_disk_then_resume(inp, model, tmp_path / f"full_{k}", k, expected)


def test_full_disk_exit_code_is_1(study, tmp_path, capfd):
    """Defect 2 through the command: one ``skipped`` line with the reason, exit 1, no bare
    ``error:`` line; the rerun exits 0."""

    inp, _ = study
    args = [f"input={inp}", f"output={tmp_path / 'out'}", "model=tissue", "progress=false",
            "tta=none", "save_qc=false", "keep_largest=none", "roi_size=[32,32,32]"]
    with _fault(0, "temporary", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))):
        assert run_in_process("infer", args) == 1
    err = capfd.readouterr().err
    assert "error:" not in err and "No space left on device" in err
    assert run_in_process("infer", args) == 0


def test_stale_temporaries_are_cleaned_and_only_the_tools_own(study, tmp_path):
    inp, model = study
    out = tmp_path / "out"
    out.mkdir()
    stale = [
        out / f".a_seg.nii.gz{sio.TMP_MARK}ab12cd34.nii.gz",  # this version's
        out / ".volumes.csv.ab12cd34.csv",  # an earlier version's, named after an output
        out / ".a_seg_lut.txt.x_y1z2w3.txt",
    ]
    users = [out / ".notes.txt", out / ".mine.abcdefgh.txt", out / "a.sslt-tmp-12345678.txt"]
    for p in stale + users:
        p.write_text("x")
    _run(inp, out, model)
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "x" for p in users)


def test_a_second_run_on_the_same_folder_is_told_apart_from_a_users_files(
    study, tmp_path, monkeypatch
):
    """Defect 13 (second part): a run started while another writes is told so, with its pid."""
    from synthseg_lite.inference import record

    monkeypatch.setattr(record, "PART_WAIT_S", 0.3)
    inp, model = study
    out = tmp_path / "out"
    with StudyLease(out):  # a first run, still writing
        with pytest.raises(ValueError, match=f"another synthseg_lite run .*pid {os.getpid()}"):
            _run(inp, out, model)
        with pytest.raises(ValueError, match="being written by another"):
            _run(inp, out, model, num_parts=2, part_id=1)
    with StudyLease(out, num_parts=2, part_id=0) as lease:  # part 0 of 2: part 1 runs beside
        lease.clean_done()
        (res,) = _run(inp, out, model, num_parts=2, part_id=1)
        assert res.error is None and res.case == "b"
        with pytest.raises(ValueError, match="part 0 of 2"):
            _run(inp, out, model, num_parts=2, part_id=0)
        with pytest.raises(ValueError, match="this output folder"):
            _run(inp, out, model)  # the whole study
        with pytest.raises(ValueError, match="split another way"):
            _run(inp, out, model, num_parts=3, part_id=1)
    assert [r.case for r in _run(inp, out, model) if not r.done] == ["a"]


def test_kill_between_write_and_record_is_not_foreign_even_with_overwrite(study, tmp_path):
    """Defect 1: the files of a scan stopped right after its segmentation (or sidecar) appeared
    are the tool's own: the rerun, with or without overwrite, finishes the study."""
    inp, model = study
    for k, overwrite in ((0, True), (4, False)):  # a_seg.nii.gz; a_seg.json
        out = tmp_path / f"out{k}"
        with pytest.raises(Killed), _fault(k, "renamed", Killed()):
            _run(inp, out, model)
        assert read_record(out)[["a_seg.nii.gz", "x", "y", "z", "a_seg.json"][k]]["state"] == (
            "pending")
        results = _run(inp, out, model, overwrite=overwrite)
        assert [r.error for r in results] == [None, None]


def test_outputs_never_leave_the_output_folder(study, tmp_path):
    """Defect 4: a scan named ``..nii.gz``, ``..`` in a glob, a symlinked sub-folder."""
    inp, model = study
    odd = tmp_path / "odd"
    _write(odd / "..nii.gz")
    with pytest.raises(ValueError, match="outside the output folder"):
        _run(odd / "..nii.gz", tmp_path / "o1", model)
    assert not (tmp_path / "o1_seg.nii.gz").exists()
    _write(tmp_path / "x" / "s.nii.gz")
    (tmp_path / "in" / "a" / "b").mkdir(parents=True)
    pattern = f"{tmp_path}/in/a/*/../../../x/*.nii.gz"
    (res,) = _run(pattern, tmp_path / "deep" / "out", model)
    assert res.outputs["seg"] == tmp_path / "deep" / "out" / "s_seg.nii.gz"
    assert not list((tmp_path / "x").glob("*_seg*"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inp / "site").mkdir()
    _write(inp / "site" / "c.nii.gz")
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "site").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="outside the output folder"):
        _run(inp, tmp_path / "o3", model)
    assert not list(elsewhere.iterdir())


def test_label_values_beyond_int16_are_written_exactly(monkeypatch, tmp_path):
    """Defect 8: classes 40000 and 70000 (uint16 would wrap 70000: int32)."""
    import torch

    from synthseg_lite.inference import pipeline
    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta

    table = LabelTable.create(None, [0, 40000, 70000], lr_pairs=(), names={40000: "x", 70000: "y"})
    assert table.target.values == (0, 40000, 70000)
    meta = ModelMeta(TINY, table, 1.0, (32, 32, 32), {})
    torch.manual_seed(0)
    monkeypatch.setattr(pipeline, "load_ensemble", lambda p, d: ([BandNet(3)], meta))
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    (res,) = _run(_write(tmp_path / "s.nii.gz"), tmp_path / "out", model)
    img = nib.load(res.outputs["seg"])
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.int32
    assert set(np.unique(data)) <= {0, 40000, 70000} and {40000, 70000} & set(np.unique(data))


def test_long_file_name_and_dollar_sign(study, tmp_path):
    """Defects 3 and 12: a 240-character name and ``a$_$b`` are segmented, QC figure included."""
    _, model = study
    names = ["x" * 233 + ".nii.gz", "a$_$b.nii.gz"]
    for name in names:
        _write(tmp_path / "odd" / name)
    results = segment_scans(tmp_path / "odd", tmp_path / "out", model,
                            InferenceOptions(**OPTS))
    assert [r.error for r in results] == [None, None]
    assert all(r.outputs["qc"].is_file() for r in results)


@pytest.mark.slow  # a subprocess per run: ~2 min
def test_kill_9_at_random_moments_then_rerun_gives_identical_outputs(tmp_path, tiny_model):
    """Real ``kill -9`` of ``infer.py`` at random moments of a 3-scan study, then a rerun."""

    for i in range(3):
        _save(_head(seed=i), tmp_path / "in" / f"s{i}.nii.gz")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))

    def infer(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "infer.py"), f"input={tmp_path / 'in'}", f"output={out}",
             f"model={tiny_model}", "progress=false", "threads=1", "tta=none"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    start = time.perf_counter()
    ref = infer(tmp_path / "ref")
    assert ref.wait(300) == 0, ref.stderr.read().decode()[-2000:]
    full = time.perf_counter() - start
    rng = random.Random(0)
    for k in range(6):
        out = tmp_path / f"out{k}"
        p = infer(out)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        p.send_signal(signal.SIGKILL)
        p.wait()
        again = infer(out)
        assert again.wait(300) == 0, (k, again.stderr.read().decode()[-2000:])
        assert _state(out) == _state(tmp_path / "ref"), k
        assert not list(out.rglob(f"*{sio.TMP_MARK}*"))





def test_bids_dataset_gets_nothing_but_its_derivatives(monkeypatch, tmp_path):
    """Without ``output=``, the record and the lock live in ``derivatives/synthseg_lite``."""

    model = _use_net(monkeypatch, tmp_path, "tissue")
    root = _bids(tmp_path / "ds")
    before = {p for p in root.rglob("*") if "derivatives" not in p.parts}
    results = segment_scans(root, None, model, InferenceOptions(**OPTS, save_qc=False))
    assert results and all(r.error is None for r in results)
    after = {p for p in root.rglob("*") if "derivatives" not in p.parts}
    assert after == before

