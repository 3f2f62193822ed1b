"""The output folder's write-ahead record: a study resumes after any interruption, and the tool
changes no file it did not write.

* :class:`StudyLease` holds a lock on the output folder for the whole run (``flock``: released
  by the kernel when the process dies, even by ``kill -9``): a second run on the same folder, or
  on the same part of a study split with ``num_parts``, is refused with its ``host:pid``;
  parallel parts share the folder.
* :class:`StudyRecord` is registered around :func:`synthseg_lite.io.atomic_write` while a study
  runs: every file is claimed ``pending`` in its folder's record
  (:data:`synthseg_lite.safety.RECORD`) before its temporary file is created, and marked
  ``done`` with its size and mtime after the rename, under the record's lock. Whatever
  instruction a kill lands on, every file of the tool in the folder is claimed, so the next run
  (``overwrite`` or not) replaces or finishes it; a file changed by a user since is not ours.
  It also refuses any path outside the output folder (after resolving ``..`` and symlinks).
* :func:`check_study_files` refuses, before any work, a study-level file (``volumes.csv``,
  ``report.html``) that exists and was not written by the tool; :class:`OwnedLogHandler` does the
  same for Hydra's log (``infer.log``), which Hydra opens before the program runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from synthseg_lite.io import add_write_hook, remove_write_hook
from synthseg_lite.inference.outputs import Scan, output_paths
from synthseg_lite.safety import (
    append_record,
    check_outputs,
    entry,
    open_record,
    record_state,
    remove_stale_temporaries,
    written_by_tool,
)

__all__ = [
    "OwnedLogHandler",
    "StudyLease",
    "StudyRecord",
    "StudyResults",
    "check_inside",
    "check_study_files",
    "check_study_outputs",
    "clean_temporaries",
    "scan_finished",
]

log = logging.getLogger(__name__)

LOCK = ".synthseg_lite.lock"
#: Seconds a part waits for another part that is cleaning the folder (holding it exclusively).
PART_WAIT_S = 10.0


def check_inside(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved (``..`` and symlinks); it must lie inside ``root`` (also resolved).

    Raises:
        ValueError: it does not.
    """
    resolved = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    if resolved != base and base not in resolved.parents:
        raise ValueError(
            f"output {path} would be written outside the output folder {root} (it resolves to "
            f"{resolved}); rename the scan or choose another output folder"
        )
    return resolved


class StudyLease:
    """This run's hold on an output folder, for as long as the ``with`` block lasts.

    A run of the whole study (``num_parts=1``) holds the folder exclusively; a part holds it
    shared plus its own part exclusively, so the parts of one split run side by side. Stale
    temporaries are removed only by a run that found the folder free (:attr:`alone`).

    Args:
        folder: the output folder (created).
        num_parts, part_id: the split of the study (see ``InferenceOptions``).

    Raises:
        ValueError (on entering): another live run holds the folder or this part, or splits the
            study differently; the message names its host, pid and start time.
    """

    def __init__(self, folder: str | Path, num_parts: int = 1, part_id: int = 0):
        self.folder = Path(folder)
        self.num_parts, self.part_id = num_parts, part_id
        self.alone = False
        self._fds: list[int] = []

    def _info(self) -> str:
        part = f", part {self.part_id} of {self.num_parts}" if self.num_parts > 1 else ""
        return (f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}{part}")

    def _open(self, name: str) -> int:
        fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o666)
        self._fds.append(fd)
        return fd

    def _tell(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (self._info() + "\n").encode(), 0)

    def _live(self) -> list[str]:
        """Who holds the folder now: the lock files' contents that a lock still guards."""
        who = []
        for f in sorted(self.folder.glob(".synthseg_lite*.lock")):
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                text = f.read_text(errors="replace").strip()
                if text:
                    who.append(text)
            finally:
                os.close(fd)
        return who

    def _busy(self, what: str) -> ValueError:
        who = "; ".join(self._live()) or "another process"
        return ValueError(
            f"{self.folder}: {what} is being written by another synthseg_lite run ({who}); wait "
            "for it to finish, or split the study with num_parts=N part_id=i in every run"
        )

    def __enter__(self) -> StudyLease:
        self.folder.mkdir(parents=True, exist_ok=True)
        study = self._open(LOCK)
        try:
            fcntl.flock(study, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.alone = True
        except BlockingIOError:
            if self.num_parts == 1:
                self.__exit__()
                raise self._busy("this output folder") from None
        if self.num_parts == 1:
            self._tell(study)
            return self
        for f in self.folder.glob(".synthseg_lite.part-*-of-*.lock"):
            if not f.name.endswith(f"-of-{self.num_parts}.lock") and not self.alone:
                fd = os.open(f, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except BlockingIOError:
                    self.__exit__()
                    raise self._busy("a study split another way") from None
                finally:
                    os.close(fd)
        part = self._open(f".synthseg_lite.part-{self.part_id}-of-{self.num_parts}.lock")
        try:
            fcntl.flock(part, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.__exit__()
            raise self._busy(f"part {self.part_id} of {self.num_parts}") from None
        self._tell(part)
        if self.alone:
            os.ftruncate(study, 0)  # the parts name themselves in their own lock files
            return self  # downgraded to shared by clean_done()
        deadline = time.monotonic() + PART_WAIT_S
        while True:  # another part may hold the folder for a moment while it cleans it
            try:
                fcntl.flock(study, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise self._busy("this output folder") from None
                time.sleep(0.1)

    def clean_done(self) -> None:
        """After the stale temporaries were removed: let the other parts in."""
        if self.alone and self.num_parts > 1 and self._fds:
            fcntl.flock(self._fds[0], fcntl.LOCK_SH)

    def __exit__(self, *exc) -> None:
        for fd in self._fds:
            os.close(fd)  # releases the locks
        self._fds = []


class StudyRecord:
    """Claims every file that :func:`synthseg_lite.io.atomic_write` writes while registered
    (``with StudyRecord(root):``): ``pending`` before, ``done`` after, in the record of the file's
    folder and under its lock. Paths outside ``root`` are refused.

    Attributes:
        written: files written (or claimed) since the last :meth:`start_scan`.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.written: list[Path] = []

    @contextmanager
    def __call__(self, path: Path) -> Iterator[None]:
        check_inside(path, self.root)
        fd = open_record(path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            append_record(path.parent, [entry(path, "pending")], lock_fd=fd)
            self.written.append(path)
            yield
            append_record(path.parent, [entry(path, "done")], lock_fd=fd)
        finally:
            os.close(fd)

    def __enter__(self) -> StudyRecord:
        add_write_hook(self)
        return self

    def __exit__(self, *exc) -> None:
        remove_write_hook(self)

    def start_scan(self) -> None:
        self.written = []

    def discard_scan(self, outputs: Iterable[Path]) -> list[Path]:
        """Remove the scan's ``outputs`` written since :meth:`start_scan` (a scan that failed
        half-way: none of its files stay) and release their claims; study-level files are kept.
        Errors (a full disk) are ignored."""
        removed = []
        outputs = set(outputs)
        for p in dict.fromkeys(q for q in self.written if q in outputs):
            try:
                p.unlink(missing_ok=True)
                append_record(p.parent, [entry(p, "released")])
                removed.append(p)
            except OSError:
                pass
        self.written = []
        return removed


class StudyResults(list):
    """The :class:`ScanResult` list of :func:`segment_scans`, plus ``problems``: study-level files
    that could not be written (one line each; the rerun writes them)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.problems: list[str] = []


def _listed_in_sidecar(path: Path, sidecar: Path) -> bool:
    """Whether an earlier run's provenance sidecar lists ``path`` as one of its outputs."""
    try:
        listed = json.loads(sidecar.read_text()).get("outputs", {}).values()
    except (OSError, ValueError, AttributeError):
        return False
    return any((sidecar.parent / rel).resolve() == path.resolve() for rel in listed)


def check_study_outputs(
    scans: Sequence[Scan], all_scans: Sequence[Scan], output_dir: Path, desc: str = "aseg"
) -> None:
    """Before any scan is segmented: no output may lie outside ``output_dir`` (after resolving
    ``..`` and symlinks), replace a scan of this study, or a file that this tool did not claim in
    the folder's record (a reference segmentation next to the scans).

    Raises:
        ValueError: the first such output (``overwrite`` does not lift this).
    """
    inputs = [s.path for s in all_scans]
    for scan in scans:
        out = output_paths(scan, output_dir, desc)
        for p in out.values():
            check_inside(p, output_dir)
        check_outputs(
            out.values(), inputs, ours=lambda p, j=out["json"]: _listed_in_sidecar(p, j)
        )


def scan_finished(out: dict[str, Path]) -> bool:
    """Whether a scan's outputs are complete: its segmentation and its provenance sidecar (written
    last) exist and their last record entries say ``done`` (not a claim cut by a kill)."""
    return all(out[k].is_file() and record_state(out[k]) == "done" for k in ("seg", "json"))


def check_study_files(files: Iterable[Path]) -> None:
    """Refuse, before any work, study-level files (``volumes.csv``, ``report.html``) that exist
    and that this tool did not write (or that were changed since).

    Raises:
        ValueError: the first such file, with the way out.
    """
    for f in files:
        if (f.exists() or f.is_symlink()) and not (f.is_file() and written_by_tool(f)):
            raise ValueError(
                f"{f} exists and was not written by synthseg_lite (or was changed since); it is "
                "never modified: move it away, or choose another output folder"
            )


def clean_temporaries(folders: Iterable[Path], names: Iterable[str]) -> int:
    """Remove stale temporaries of this tool in ``folders`` (see
    :func:`synthseg_lite.safety.remove_stale_temporaries`; ``names``: the study's output names,
    for the temporaries of earlier versions). Returns how many were removed."""
    names = sorted(set(names))
    return sum(len(remove_stale_temporaries(f, names=names)) for f in dict.fromkeys(folders))


def _our_log_format(path: Path) -> bool:
    """A log of an earlier version (not in the record): it starts like this tool's log lines."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith((b"[INFO] ", b"[WARNING] ", b"[ERROR] ", b"[DEBUG] "))


class OwnedLogHandler(logging.FileHandler):
    """Hydra's log file (``infer.log``), appended only when it is this tool's own: a new file, one
    recorded as its log, or one that starts like its log lines (written by an earlier version). A user's file of that name is left alone (nothing is written) and
    :attr:`refused` names it, so the command can stop with one line before any work."""

    refused: Path | None = None

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None,
                 delay: bool = False, **kwargs) -> None:
        path = Path(filename)
        OwnedLogHandler.refused = None
        if path.exists() and record_state(path) != "log" and not _our_log_format(path):
            OwnedLogHandler.refused = path
            super().__init__(os.devnull, mode, encoding, delay=True)
            return
        super().__init__(filename, mode, encoding, delay, **kwargs)
        try:
            path.touch()
            append_record(path.parent, [{**entry(path, "log")}])
        except OSError:
            pass
