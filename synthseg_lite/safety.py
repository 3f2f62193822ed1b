"""Trust boundaries: files that cannot run code when read, and outputs that never replace inputs.

* :func:`load_torch_file` reads model files and checkpoints with ``torch.load(weights_only=True)``
  (tensors and plain Python values only: a crafted file cannot run code) and turns every failure
  into one-line ``ValueError``.
* :func:`check_outputs` refuses, before any work, an output path that is an input of the same run
  or an existing file this tool did not write. Each output folder has a record
  (``.synthseg_lite_record.jsonl``, appended): a file is claimed ``pending`` before it is
  written and marked ``done`` with its size and mtime after, so an earlier run's outputs, even
  one killed mid-write, can be skipped or replaced while a user's file never is.
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
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LEDGER",
    "RECORD",
    "append_record",
    "check_outputs",
    "load_torch_file",
    "read_record",
    "record_state",
    "record_written",
    "remove_stale_temporaries",
    "written_by_tool",
]

log = logging.getLogger(__name__)

#: Per output folder: the record of the files this tool claims there (JSON lines, appended:
#: ``pending`` before a write, ``done`` with size and mtime after it).
RECORD = ".synthseg_lite_record.jsonl"
#: The record of earlier versions, ``{name: [size, mtime_ns]}`` (still read).
LEGACY_LEDGER = ".synthseg_lite_written.json"
LEDGER = RECORD


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


def owner_id() -> str:
    """``host:pid`` of this process (who claims an output in a folder's record)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read_record(folder: str | Path) -> dict[str, dict]:
    """The record of ``folder``: file name -> its last entry (``{"state": "pending" | "done" |
    "log" | "released", "size", "mtime_ns", "by"}``). Entries of the earlier ledger
    (:data:`LEGACY_LEDGER`) are read as ``done``; a line cut by a kill is ignored."""
    folder = Path(folder)
    entries: dict[str, dict] = {}
    try:
        legacy = json.loads((folder / LEGACY_LEDGER).read_text())
        for name, stamp in (legacy if isinstance(legacy, dict) else {}).items():
            if isinstance(stamp, list) and len(stamp) == 2:
                entries[name] = {"state": "done", "size": stamp[0], "mtime_ns": stamp[1]}
    except (OSError, ValueError):
        pass
    try:
        text = (folder / RECORD).read_text()
    except OSError:
        return entries
    for line in text.splitlines():
        try:
            e = json.loads(line)
            entries[str(e["name"])] = e
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def append_record(folder: str | Path, entries: Iterable[dict], lock_fd: int | None = None) -> None:
    """Append entries to the record of ``folder`` (one JSON line each, ``O_APPEND``), under an
    exclusive lock on the record file unless the caller holds it (``lock_fd``)."""
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    if not lines:
        return
    if lock_fd is not None:
        os.write(lock_fd, lines.encode())
        return
    fd = open_record(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, lines.encode())
    finally:
        os.close(fd)  # releases the lock


def open_record(folder: str | Path) -> int:
    """A descriptor of ``folder``'s record opened for appending (the folder is created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return os.open(folder / RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)


def entry(path: Path, state: str) -> dict:
    """A record entry for ``path``: ``done`` carries its size and modification time."""
    e = {"name": path.name, "state": state, "by": owner_id()}
    if state == "done":
        e["size"], e["mtime_ns"] = _stamp(path)
    return e


def record_state(path: str | Path) -> str | None:
    """What the record of its folder says about ``path``: ``pending`` (claimed before a write
    that may not have finished: ours, content unchecked), ``done`` (written and unchanged
    since), ``changed`` (written, then changed by someone else), ``log`` (a log this tool
    appends to), or None (not ours, or released)."""
    path = Path(path)
    e = read_record(path.parent).get(path.name)
    if e is None or e.get("state") not in ("pending", "done", "log"):
        return None
    if e["state"] != "done":
        return e["state"]
    try:
        same = [e.get("size"), e.get("mtime_ns")] == _stamp(path)
    except OSError:
        return None
    return "done" if same else "changed"


def written_by_tool(path: str | Path) -> bool:
    """Whether ``path`` is a file this tool wrote or claimed before writing it, and nobody changed
    since (:func:`record_state` is ``pending``, ``done`` or ``log``)."""
    return Path(path).is_file() and record_state(path) in ("pending", "done", "log")


def record_written(paths: Iterable[str | Path]) -> None:
    """Mark existing files as written by this tool (``done`` entries in their folders' records)."""
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            by_folder.setdefault(p.parent, []).append(p)
    for folder, files in by_folder.items():
        append_record(folder, [entry(f, "done") for f in files])


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


def remove_stale_temporaries(
    folder: str | Path, suffix: str = "", names: Iterable[str] = ()
) -> list[Path]:
    """Remove the hidden temporary files that :func:`synthseg_lite.io.atomic_write` leaves in
    ``folder`` when a process is killed mid-write (SIGKILL, power loss: no handler runs):
    ``.<name>.sslt-tmp-<8 characters><suffix>``, and those of earlier versions
    ``.<name>.<8 characters><suffix>`` (any ``<name>`` when ``suffix`` is given, else only the
    ``names`` listed). Nothing else is touched.

    Returns:
        The removed files.
    """
    from synthseg_lite.io import TMP_MARK

    folder = Path(folder)
    if not folder.is_dir():
        return []
    from synthseg_lite.io import IMAGE_SUFFIXES

    ours = re.compile(r"^\..*" + re.escape(TMP_MARK) + r"[A-Za-z0-9_]{8}" + re.escape(suffix))
    legacy = [r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(suffix) + "$"] if suffix else []
    for n in names:  # earlier versions: ".<name>.<8 characters><the name's suffix>"
        ext = next((s for s in IMAGE_SUFFIXES if n.lower().endswith(s)), Path(n).suffix)
        legacy.append(re.escape(f".{n}.") + "[A-Za-z0-9_]{8}" + re.escape(ext) + "$")
    legacy_re = re.compile("|".join(f"(?:{r})" for r in legacy)) if legacy else None
    removed = []
    for f in folder.iterdir():
        stale = ours.match(f.name) or (legacy_re is not None and legacy_re.match(f.name))
        if f.name not in (RECORD, LEGACY_LEDGER) and stale and f.is_file() and not f.is_symlink():
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed
