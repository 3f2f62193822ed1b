"""Where a study's outputs go, and the study-level files: ``volumes.csv`` and provenance.

* :func:`find_scans` turns inputs (files, folders searched recursively, glob patterns, BIDS
  datasets) into :class:`Scan` entries with a case id that is unique in the study.
* :func:`output_paths` is the one place that names output files: a BIDS scan goes to
  ``<output>/derivatives/synthseg_lite/sub-X/[ses-Y/]anat/`` as
  ``sub-X_[ses-Y_]..._space-orig_desc-aseg_dseg.nii.gz``;
  any other scan mirrors its folder below the input folder under ``<output>``
  (``<output>/<rel dir>/<name>_seg.nii.gz``), so two scans with the same file name never collide.
* :func:`merge_volumes` adds rows to ``volumes.csv`` (never drops rows of earlier runs; a case
  segmented again replaces its own row), under a file lock and atomically.

One job (a study's file layout) in one module, just over 400 lines: the naming rules, the input
search that decides case ids and the table that lists them change together.
"""

from __future__ import annotations

import csv
import fcntl
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shlex
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from synthseg_lite._version import __version__
from synthseg_lite.io import IMAGE_SUFFIXES, atomic_write, broken_link, strip_suffix

__all__ = [
    "BIDS_SUFFIXES",
    "DERIVATIVES",
    "OUTPUT_SUFFIXES",
    "Scan",
    "Study",
    "file_sha256",
    "find_scans",
    "merge_volumes",
    "output_paths",
    "provenance",
    "read_volumes",
    "select_part",
    "write_dataset_description",
    "write_json",
]

log = logging.getLogger(__name__)

#: Contrasts recognised in a BIDS dataset's ``anat/`` folders.
BIDS_SUFFIXES = ("T1w", "T2w", "FLAIR", "PD")
#: Derivatives folder of this pipeline, below the output folder.
DERIVATIVES = Path("derivatives") / "synthseg_lite"
#: File-name endings of this tool's outputs: such files are not taken as scans in a folder search.
OUTPUT_SUFFIXES = ("_seg", "_tissue", "_posteriors", "_resampled", "_dseg", "_probseg")

_BIDS_NAME = re.compile(
    r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_(?P<suffix>[A-Za-z0-9]+)$"
)


@dataclass(frozen=True)
class Scan:
    """One scan of a study.

    Attributes:
        path: the scan file.
        case: case id, unique in the study (the ``subject`` column of ``volumes.csv``): the path
            below the input folder without suffix (``site1/scan``), the file name for single files,
            the BIDS file name (``sub-01_ses-1_T1w``) for BIDS scans.
        rel_dir: output sub-folder (relative to the output folder) for non-BIDS scans.
        bids: BIDS name parts ``{"entities": "sub-01_ses-1", "suffix": "T1w", "sub": "01",
            "ses": "1"}``; None for other scans.
    """

    path: Path
    case: str
    rel_dir: Path = Path(".")
    bids: Mapping[str, str] | None = None

    @property
    def stem(self) -> str:
        return strip_suffix(self.path)


@dataclass
class Study:
    """Scans to segment and where the study-level files go.

    Attributes:
        scans: sorted by case id.
        bids_roots: the BIDS datasets among the inputs.
        protected: other image files found in the input folders (e.g. reference segmentations
            ``*_seg``), resolved: outputs must not replace them either.
    """

    scans: list[Scan]
    bids_roots: list[Path] = field(default_factory=list)
    protected: set[Path] = field(default_factory=set)

    def root(self, output_dir: Path) -> Path:
        """Folder of ``volumes.csv`` and ``report.html``: the derivatives folder when every scan
        comes from a BIDS dataset, else the output folder."""
        if self.scans and all(s.bids is not None for s in self.scans):
            return output_dir / DERIVATIVES
        return output_dir


def _is_image(p: Path) -> bool:
    """A NIfTI/MGZ file, or a link to nothing named like one (a git-annex / DataLad file not
    fetched): that scan is skipped with its reason, not left out unsaid."""
    return p.name.lower().endswith(IMAGE_SUFFIXES) and (p.is_file() or bool(broken_link(p)))


def is_bids_dataset(folder: Path) -> bool:
    """A folder with ``dataset_description.json`` or ``sub-*/[ses-*/]anat/`` folders."""
    if (folder / "dataset_description.json").is_file():
        return True
    return any(folder.glob("sub-*/anat")) or any(folder.glob("sub-*/ses-*/anat"))


def _bids_parts(path: Path) -> dict[str, str] | None:
    m = _BIDS_NAME.match(strip_suffix(path))
    if m is None or m["suffix"] not in BIDS_SUFFIXES:
        return None
    parts = {"entities": m["entities"], "suffix": m["suffix"]}
    for kv in m["entities"].split("_"):
        key, _, value = kv.partition("-")
        parts[key] = value
    return parts


def _bids_scans(root: Path) -> list[Scan]:
    scans = []
    for pattern in ("sub-*/anat/*", "sub-*/ses-*/anat/*"):
        for p in sorted(root.glob(pattern)):
            parts = _bids_parts(p) if _is_image(p) else None
            if parts is not None:
                scans.append(Scan(p, strip_suffix(p), bids=parts))
    return scans


def _folder_scans(folder: Path, output_dir: Path | None, protected: set[Path]) -> list[Scan]:
    out = output_dir.resolve() if output_dir is not None else None
    scans, left_out = [], 0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not _is_image(p):
            continue
        if strip_suffix(p).endswith(OUTPUT_SUFFIXES) or (
            out is not None and out != folder.resolve() and out in p.resolve().parents
        ):
            left_out += 1
            protected.add(p.resolve())
            continue
        scans.append(Scan(p, (rel.parent / strip_suffix(p)).as_posix(), rel.parent))
    if left_out:
        log.info(
            "%s: %d file(s) named like segmentations (%s) or under the output folder left out",
            folder,
            left_out,
            "|".join(OUTPUT_SUFFIXES),
        )
    return scans


def find_scans(
    inputs: str | Path | Sequence[str | Path], output_dir: str | Path | None = None
) -> Study:
    """The scans named by ``inputs``.

    Args:
        inputs: scan files (taken as they are), folders (searched recursively for NIfTI/MGZ files;
            hidden folders, files named like segmentations ``*_seg``, ``*_dseg``, ... and the
            output folder are left out), BIDS datasets (``sub-*/[ses-*/]anat/*_{T1w,T2w,FLAIR,PD}``,
            ``derivatives/`` not searched) or glob patterns; or a list of them.
        output_dir: the output folder (left out of folder searches).

    Returns:
        :class:`Study`, scans sorted by case id, each scan once.

    Raises:
        ValueError: an input that does not exist, or no scans at all.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out = Path(output_dir) if output_dir is not None else None
    scans: list[Scan] = []
    bids_roots: list[Path] = []
    protected: set[Path] = set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            if is_bids_dataset(p):
                bids_roots.append(p)
                scans += _bids_scans(p)
            else:
                scans += _folder_scans(p, out, protected)
        elif p.exists():
            parts = _bids_parts(p) if p.parent.name == "anat" else None
            scans.append(Scan(p, strip_suffix(p), bids=parts))
        elif glob.has_magic(str(item)):
            base = Path(str(item).split("*")[0].split("?")[0].split("[")[0])
            base = base if str(item).endswith("/") or base.is_dir() else base.parent
            base = Path(os.path.normpath(base))
            for f in sorted(_glob(str(item))):
                f, where = Path(f), Path(os.path.normpath(f))  # (`..` in the pattern)
                if _is_image(f):
                    rel = where.parent.relative_to(base) if base in where.parents else Path(".")
                    scans.append(Scan(f, (rel / strip_suffix(f)).as_posix(), rel))
        else:
            raise ValueError(f"input {item}: {broken_link(p) or 'no such file or folder'}")
    unique: dict[Path, Scan] = {}
    for s in scans:  # a file given twice is one scan; links to one file (git-annex: same
        first = unique.setdefault(s.path.resolve(), s)  # content) too, said once each
        if first.path.absolute() != s.path.absolute():
            log.warning("%s is the same file as %s: segmented once, as %s", s.path, first.path,
                        first.case)
    scans = list(unique.values())
    if not scans:
        dicom = _dicom_hint([Path(i) for i in items if Path(i).is_dir()])
        raise ValueError(f"input {inputs}: no scans found (NIfTI or MGZ files){dicom}")
    # Same case id from different inputs (two folders with the same layout): mirror each path
    # below the scans' common folder instead.
    if len({s.case for s in scans}) < len(scans):
        common = Path(os.path.commonpath([str(s.path.resolve().parent) for s in scans]))
        scans = [s if s.bids is not None else _mirrored(s, common) for s in scans]
        counts = Counter(s.case for s in scans)
        dup = sorted(c for c, n in counts.items() if n > 1)
        if dup:
            raise ValueError(f"several scans have the case id {dup[0]!r}: rename or split them")
    return Study(sorted(scans, key=lambda s: s.case), bids_roots, protected)


def _dicom_hint(folders: Sequence[Path], look: int = 200) -> str:
    """``"; <folder> holds DICOM files: ..."`` for the first of ``folders`` whose first ``look``
    files include a DICOM file, else ``""``."""
    for folder in folders:
        files = itertools.islice((p for p in folder.rglob("*") if p.is_file()), look)
        if any(_is_dicom(f) for f in files):
            return (f"; {folder} holds DICOM files: convert them to NIfTI first (e.g. "
                    f"`dcm2niix -z y -o <folder> {folder}`)")
    return ""


def _is_dicom(path: Path) -> bool:
    """A ``.dcm`` / ``.ima`` file, or one with DICOM's ``DICM`` mark at byte 128."""
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _glob(pattern: str) -> list[str]:
    """``glob`` whose ``**`` never enters a symlinked folder (``ln -s . loop`` would never end):
    pathlib's recursive glob, from the pattern's fixed leading folders."""
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = Path(pattern).parts
    i = next(k for k, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:i]) if i else Path(".")
    return [str(p) for p in base.glob(str(Path(*parts[i:])))]


def _mirrored(scan: Scan, common: Path) -> Scan:
    rel = scan.path.resolve().parent.relative_to(common)
    return Scan(scan.path, (rel / scan.stem).as_posix(), rel)


def select_part(scans: Sequence[Scan], num_parts: int = 1, part_id: int = 0) -> list[Scan]:
    """Part ``part_id`` (0-based) of ``num_parts``: every ``num_parts``-th scan of the sorted list,
    so the parts are disjoint, together cover the study, and do not depend on the machine.

    Raises:
        ValueError: ``num_parts < 1`` or ``part_id`` outside ``[0, num_parts)``.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, {num_parts - 1}] (0-based), got {part_id}")
    ordered = sorted(scans, key=lambda s: s.case)
    return ordered[part_id::num_parts]


def output_paths(scan: Scan, output_dir: str | Path, desc: str = "aseg") -> dict[str, Path]:
    """Every output file of ``scan``, by kind.

    Kinds: ``seg`` (the segmentation), ``lut`` (its FreeSurfer colour table), ``tsv`` (its BIDS
    dseg.tsv), ``json`` (provenance sidecar, written last: its presence marks the scan as done),
    ``tissue`` / ``tissue_lut`` / ``tissue_tsv`` (tissue view of a structure segmentation),
    ``posteriors``, ``resampled`` (the scan on the segmentation's grid) and ``qc`` (PNG).

    Args:
        scan: from :func:`find_scans`.
        output_dir: the output folder.
        desc: what the segmentation holds (``aseg``, ``tissue``, ``labels``), used in BIDS names.
    """
    output_dir = Path(output_dir)
    if scan.bids is not None:
        b = scan.bids
        folder = output_dir / DERIVATIVES / f"sub-{b['sub']}"
        if "ses" in b:
            folder = folder / f"ses-{b['ses']}"
        folder = folder / "anat"
        space = "" if "space" in b else "_space-orig"
        contrast = "" if b["suffix"] == "T1w" else b["suffix"]  # T1w and T2w of one session
        head = f"{b['entities']}{space}"
        main = folder / f"{head}_desc-{desc}{contrast}"
        tissue = folder / f"{head}_desc-tissue{contrast}"
        return {
            "seg": Path(f"{main}_dseg.nii.gz"),
            "lut": Path(f"{main}_dseg_lut.txt"),
            "tsv": Path(f"{main}_dseg.tsv"),
            "json": Path(f"{main}_dseg.json"),
            "tissue": Path(f"{tissue}_dseg.nii.gz"),
            "tissue_lut": Path(f"{tissue}_dseg_lut.txt"),
            "tissue_tsv": Path(f"{tissue}_dseg.tsv"),
            "posteriors": Path(f"{main}_probseg.nii.gz"),
            "resampled": Path(f"{folder / head}_desc-resampled_{b['suffix']}.nii.gz"),
            "qc": Path(f"{main}_qc.png"),
        }
    ext = ".mgz" if scan.path.name.lower().endswith(".mgz") else ".nii.gz"
    base = output_dir / scan.rel_dir / scan.stem
    return {
        "seg": Path(f"{base}_seg{ext}"),
        "lut": Path(f"{base}_seg_lut.txt"),
        "tsv": Path(f"{base}_seg.tsv"),
        "json": Path(f"{base}_seg.json"),
        "tissue": Path(f"{base}_tissue{ext}"),
        "tissue_lut": Path(f"{base}_tissue_lut.txt"),
        "tissue_tsv": Path(f"{base}_tissue.tsv"),
        "posteriors": Path(f"{base}_posteriors{ext}"),
        "resampled": Path(f"{base}_resampled{ext}"),
        "qc": Path(f"{base}_qc.png"),
    }


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(models: Sequence[Path], options: Mapping, **extra) -> dict:
    """What produced an output: package version, model files with SHA-256, command, options."""
    return {
        "GeneratedBy": [{"Name": "synthseg_lite", "Version": __version__}],
        "package_version": __version__,
        "models": [{"path": str(Path(m).resolve()), "sha256": file_sha256(m)} for m in models],
        "command": shlex.join(sys.argv),
        "options": dict(options),
        **extra,
    }


def write_json(path: str | Path, data: Mapping) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_dataset_description(output_dir: str | Path, sources: Sequence[Path]) -> Path:
    """``derivatives/synthseg_lite/dataset_description.json`` (BIDS derivative), if absent."""
    path = Path(output_dir) / DERIVATIVES / "dataset_description.json"
    if path.is_file():
        return path
    return write_json(
        path,
        {
            "Name": "synthseg_lite segmentations",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "synthseg_lite", "Version": __version__}],
            "SourceDatasets": [{"URL": Path(s).resolve().as_uri()} for s in sources],
        },
    )


@contextmanager
def _locked(path: Path):
    """Exclusive lock on ``.<name>.lock`` beside ``path`` (parallel parts share ``volumes.csv``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_volumes(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a ``volumes.csv`` (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def merge_volumes(
    path: str | Path, rows: Sequence[Mapping[str, object]], key: str = "subject"
) -> Path:
    """Add ``rows`` to the CSV at ``path``: earlier rows are kept, a row whose ``key`` is given
    again is replaced, new columns are appended to the header (missing cells left empty).
    Written atomically under a lock, so parallel parts of a study do not lose each other's rows.
    """
    path = Path(path)
    with _locked(path):
        header, old = read_volumes(path)
        if header and key not in header:
            raise ValueError(f"{path}: not a volumes table of this tool (no {key!r} column)")
        for r in rows:
            header += [c for c in r if c not in header]
        merged = {r[key]: r for r in old}
        for r in rows:
            merged[str(r[key])] = {k: _fmt(v) for k, v in r.items()}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        for case in sorted(merged):
            writer.writerow(merged[case])
        atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
    return path


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) <= 1 else f"{v:.1f}"
    return str(v)
