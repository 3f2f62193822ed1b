"""Trust boundaries: files that cannot run code when read, and outputs that never replace inputs.

* :func:`load_torch_file` reads model files and checkpoints with ``torch.load(weights_only=True)``
  (tensors and plain Python values only: a crafted file cannot run code) and turns every failure
  into one-line ``ValueError``.
* :func:`check_outputs` refuses, before any work, an output path that is an input of the same run
  or an existing file this tool did not write; :func:`record_written` marks the files it wrote
  (a ledger ``.synthseg_lite_written.json`` per output folder, with each file's size and mtime),
  so an earlier run's outputs can be skipped or replaced while a user's file never is.
* :func:`remove_stale_temporaries` removes the hidden ``.<name>.*`` files that
  :func:`synthseg_lite.io.atomic_write` leaves when a process is killed mid-write.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LEDGER",
    "check_outputs",
    "load_torch_file",
    "record_written",
    "remove_stale_temporaries",
    "written_by_tool",
]

log = logging.getLogger(__name__)

#: Per output folder: the files this tool wrote there, ``{name: [size, mtime_ns]}``.
LEDGER = ".synthseg_lite_written.json"


def load_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", what: str = "model file"
) -> Any:
    """Read a ``torch.save`` file without ever unpickling code (``weights_only=True``).

    Args:
        path: the file.
        map_location: where tensors go.
        what: how the file is named in error messages (``model file``, ``checkpoint``).

    Returns:
        The stored object (dicts, lists, tensors, numbers, strings).

    Raises:
        ValueError: missing, unreadable, not a torch file, or holding Python objects other than
            tensors and plain values (the message names the object it would have imported).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such {what}")
    if not path.is_file():
        raise ValueError(f"{path}: is a folder, not a {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"unsupported GLOBAL ([\w.]+)|global ([\w.]+)", str(exc), re.IGNORECASE)
        if m:
            name = m.group(1) or m.group(2)
            raise ValueError(
                f"{path}: refused: the {what} holds a Python object ({name}) that could run code "
                "when loaded; only tensors and plain values are read"
            ) from exc
        raise ValueError(f"{path}: not a readable {what} (corrupt or not a torch file)") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    except Exception as exc:  # noqa: BLE001  (torch and pickle raise many types on bad bytes)
        raise ValueError(
            f"{path}: not a readable {what} (truncated, corrupt or not a torch file)"
        ) from exc


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_ledger(folder: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((folder / LEDGER).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def written_by_tool(path: str | Path) -> bool:
    """Whether ``path`` is a file this tool wrote (recorded by :func:`record_written`) and has not
    been changed since (same size and modification time)."""
    path = Path(path)
    if not path.is_file():
        return False
    stamp = _read_ledger(path.parent).get(path.name)
    return stamp is not None and list(stamp) == _stamp(path)


def record_written(paths: Iterable[str | Path]) -> None:
    """Mark files as written by this tool (one ledger per folder, updated atomically)."""
    from synthseg_lite.io import atomic_write

    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            by_folder.setdefault(p.parent, []).append(p)
    for folder, files in by_folder.items():
        # parts of a study run in parallel (infer.py -m part_id=...) share folders: one at a time
        with open(folder / f"{LEDGER}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ledger = _read_ledger(folder)
            ledger.update({f.name: _stamp(f) for f in files})
            text = json.dumps(ledger, indent=0, sort_keys=True)
            atomic_write(folder / LEDGER, lambda tmp, text=text: Path(tmp).write_text(text))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(
    outputs: Iterable[str | Path],
    inputs: Iterable[str | Path],
    ours: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Check, before any work, that writing ``outputs`` replaces nothing it must not.

    Args:
        outputs: every file the run is about to write.
        inputs: every file the run reads (scans, references, label maps, models).
        ours: extra proof that an existing file was written by this tool (e.g. listed in a
            provenance sidecar); :func:`written_by_tool` is always accepted.

    Returns:
        The outputs that already exist and were written by an earlier run (to skip, or to replace
        when the user asks for it).

    Raises:
        ValueError: an output is an input of this run (whatever ``overwrite`` says), an output
            exists and this tool did not write it, or an output path is a folder.
    """
    inputs = [Path(p) for p in inputs]
    resolved = {p.resolve() for p in inputs}
    earlier: list[Path] = []
    for out in (Path(p) for p in outputs):
        if out.resolve() in resolved or any(_same_file(out, i) for i in inputs):
            raise ValueError(f"output {out} is an input of this run; refusing to overwrite it")
        if out.is_dir():
            raise ValueError(f"output {out} is a folder")
        if out.exists() or out.is_symlink():
            if not (written_by_tool(out) or (ours is not None and ours(out))):
                raise ValueError(
                    f"output {out} exists and was not written by synthseg_lite; refusing to "
                    "overwrite it (choose another output folder)"
                )
            earlier.append(out)
    return earlier


def remove_stale_temporaries(folder: str | Path, suffix: str = "") -> list[Path]:
    """Remove the hidden temporary files ``.<name>.<8 random characters><suffix>`` that
    :func:`synthseg_lite.io.atomic_write` leaves in ``folder`` when a process is killed mid-write
    (SIGKILL, power loss: no exception handler runs).

    Returns:
        The removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(suffix) + "$")
    removed = []
    for f in folder.iterdir():
        if f.name != LEDGER and pattern.match(f.name) and f.is_file():
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed
