"""``kill -9`` a real ``infer.py`` study at random moments, rerun it, compare with an uninterrupted run.

    python benchmarks/kill_loop.py --kills 10 --seed 1 --workdir /tmp/killloop

A 3-scan study (the test catalogue's synthetic heads) with a random tiny 3D model (2 mm). Each
kill: start ``infer.py``, ``SIGKILL`` it after ``U(0.35, 1.0)`` x the reference run's wall time,
note what the folder's record holds (``pending`` claims: a write was cut) and which temporaries
are left, rerun it (every third rerun with ``overwrite=true``) and compare every output file
with the reference run's (``report.html`` without its time, sidecars without the command line
and the output folder's name). One JSON line per kill, then a summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def state(out: Path) -> dict[str, str]:
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.suffix == ".log" or ".hydra" in str(p):
            continue
        data = p.read_bytes()
        if p.name == "report.html":
            data = re.sub(rb"Generated [0-9: -]+", b"", data)
        if p.suffix == ".json":
            data = re.sub(rb'"overwrite": (true|false)', b"", data)
            data = re.sub(rb'"command": "[^\n]*', b"", data)
            data = data.replace(str(out).encode(), b"<output>")
        files[str(p.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/killloop"))
    args = parser.parse_args()
    import nibabel as nib
    import numpy as np
    import torch

    from synthseg_lite.labels import LabelTable
    from synthseg_lite.model.artifact import ModelMeta, save_model
    from synthseg_lite.model.unet import UNetConfig, build_unet

    w = args.workdir
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    torch.manual_seed(0)
    cfg = UNetConfig(n_stages=3, base_features=4, deep_supervision=False)
    meta = ModelMeta(cfg, LabelTable.create("tissue"), 2.0, (128,) * 3, {})
    model = save_model(w / "fold_0.pt", build_unet(cfg, 4), meta)
    (w / "in").mkdir()
    for i in range(3):  # head-like scans: an ellipsoid, two tissues, noise; 2 mm voxels
        rng, shape = np.random.default_rng(i), np.array((48, 52, 44))
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        r = np.sqrt((((idx - shape / 2) / (shape / 2.4)) ** 2).sum(-1))
        img = np.where(r < 1, 60 + 50 * (r < 0.6), 0) + rng.normal(0, 3, tuple(shape)) * (r < 1)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(w / "in" / f"s{i}.nii.gz"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))

    def infer(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "infer.py"), f"input={w / 'in'}", f"output={out}",
             f"model={model}", "progress=false", "threads=1", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    t0 = time.perf_counter()
    assert infer(w / "ref").wait() == 0
    full = time.perf_counter() - t0
    expected = state(w / "ref")
    rng = random.Random(args.seed)
    rows = []
    for k in range(args.kills):
        out = w / f"out{k}"
        p = infer(out)
        t = rng.uniform(0.35, 1.0) * full
        time.sleep(t)
        p.send_signal(signal.SIGKILL)
        p.wait()
        entries = {}
        for f in out.rglob(".synthseg_lite_record.jsonl"):
            for line in f.read_text().splitlines():
                try:
                    e = json.loads(line)
                    entries[e["name"]] = e["state"]
                except (ValueError, KeyError):
                    pass
        temporaries = len(list(out.rglob("*sslt-tmp*")))
        rerun = infer(out, *(["overwrite=true"] if k % 3 == 2 else []))
        rc = rerun.wait()
        row = {
            "kill_s": round(t, 1),
            "done_at_kill": sum(s == "done" for s in entries.values()),
            "pending_at_kill": sorted(n for n, s in entries.items() if s == "pending"),
            "temporaries_at_kill": temporaries,
            "rerun_overwrite": k % 3 == 2, "rerun_exit": rc,
            "identical": state(out) == expected,
            "temporaries_after": sorted(q.name for q in out.rglob("*sslt-tmp*")),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({
        "reference_s": round(full, 1), "kills": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "cut_mid_write": sum(bool(r["pending_at_kill"]) for r in rows),
        "rerun_exit_0": sum(r["rerun_exit"] == 0 for r in rows),
        "temporaries_left": sum(len(r["temporaries_after"]) for r in rows),
    }))


if __name__ == "__main__":
    main()
