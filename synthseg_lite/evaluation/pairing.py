"""Which files go together: case ids from file names, and (prediction, reference) pairs.

Without a pattern (the default), a case id is read from where a file is, following the layouts
people have (the rules are the same for predictions and references):

* **BIDS** (a file name starting with ``sub-<label>``): the id is ``sub-<label>[_ses-<label>]``;
  only segmentations count (suffix ``_dseg`` or ``_seg``; ``desc-aseg`` wins over other
  ``desc-``), so ``derivatives/freesurfer/sub-01/ses-1/anat/sub-01_ses-1_desc-aseg_dseg.nii.gz``
  pairs with ``out/sub-01_ses-1_T1w_seg.nii.gz`` or a BIDS-derivative prediction
  ``sub-01_ses-1_space-orig_desc-aseg_dseg.nii.gz``; raw images (``_T1w``) are ignored.
* **FreeSurfer subject folders** (a file in a folder named ``mri``): the id is the subject folder,
  ``subjects/bert/mri/aseg.mgz`` -> ``bert``; there only ``aseg``, ``aparc+aseg`` (if no
  ``aseg``) and ``*_seg`` files count (not ``T1.mgz``, ``norm.mgz``, ...).
* **anything else**: the file name without its suffix and without a trailing ``_seg`` / ``_dseg``
  (``infer.py``'s ``IBSR_01_seg.nii.gz`` -> ``IBSR_01``); an ``aseg`` file elsewhere takes its
  folder's name (``oasis/aseg.nii.gz`` -> ``oasis``); a plain name (nnU-Net's
  ``labelsTr/case.nii.gz`` or its predictions ``case.nii.gz``) is the id as it is.

A segmentation-named file (``_seg``, ``_dseg``, ``aseg``, or any file in a ``labelsTr`` /
``labelsTs`` / ``labels`` folder) wins over a plain-named one with the same id, so
``ref/IBSR_01/IBSR_01.nii.gz`` (the scan) is passed over for ``IBSR_01_seg.nii.gz``; two files of
the same rank with one id are an error; where a folder holds segmentation-named files, its
plain-named files (scans) are left out. Probability maps (``_posteriors``, ``_probseg``), scans
resampled by ``infer.py save_resampled=true`` (``_resampled``) and nnU-Net's ``imagesTr`` /
``imagesTs`` folders are skipped.

With a pattern (``pred_pattern=`` / ``ref_pattern=``): a regular expression matched against the
whole file name without its suffix; the id is its ``id`` group, else its first group, else the
whole match. Two single files are paired as they are.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from synthseg_lite.io import IMAGE_SUFFIXES, strip_suffix

__all__ = ["DEFAULT_PATTERN", "case_key", "find_cases", "pair_cases"]

log = logging.getLogger(__name__)

#: File-name pattern of ``infer.py``'s segmentations: ``<id>_seg`` (quality mode's mask default).
DEFAULT_PATTERN = r"(?P<id>.+)_seg"

_SEG_SUFFIX = re.compile(r"(?P<id>.+?)_d?seg$")
_SKIP_SUFFIX = re.compile(r".*_(posteriors|probseg|resampled|qc)$")
_SKIP_FOLDERS = {"imagestr", "imagests", "imagesval"}
_LABEL_FOLDERS = {"labelstr", "labelsts", "labels"}
_BIDS = re.compile(r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?")


def case_key(path: Path, root: Path) -> tuple[str, int] | None:
    """(case id, rank) of one file under ``root`` by the layout rules above, or None to skip it.

    The rank says how surely the file is a segmentation: 3 named as one (``_seg``, ``_dseg``,
    ``desc-aseg``, FreeSurfer ``aseg``), 2 in a labels folder or another BIDS ``dseg``,
    1 FreeSurfer ``aparc+aseg``, 0 a plain file name.
    """
    name = strip_suffix(path)
    rel = path.relative_to(root).parts if path != root else (path.name,)
    folders = [p.lower() for p in rel[:-1]]
    if _SKIP_SUFFIX.fullmatch(name) or _SKIP_FOLDERS & set(folders):
        return None
    if bids := _BIDS.match(name):
        if not _SEG_SUFFIX.fullmatch(name):
            return None  # a raw BIDS image (_T1w, ...), not a segmentation
        return bids.group(0), 3 if "_desc-aseg_" in name or name.endswith("_seg") else 2
    if path.parent.name == "mri":  # FreeSurfer: <subject>/mri/<file>
        subject = path.parent.parent.name
        if name == "aseg" or _SEG_SUFFIX.fullmatch(name):
            return subject, 3
        return (subject, 1) if name == "aparc+aseg" else None
    if m := _SEG_SUFFIX.fullmatch(name):
        return m.group("id"), 3
    if name in ("aseg", "aparc+aseg"):  # a FreeSurfer aseg outside mri/: its folder is the case
        return path.parent.name, 3 if name == "aseg" else 1
    return name, 2 if folders and folders[-1] in _LABEL_FOLDERS else 0


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():  # symbolic links to folders are followed (linked subject folders)
        files = []
        for folder, dirs, names in os.walk(path, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [
                Path(folder) / n
                for n in names
                if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)
            ]
        return sorted(files)
    raise ValueError(f"{path}: no such file or folder")


def find_cases(path: str | Path, pattern: str | None = None) -> dict[str, Path]:
    """Case id -> file for the NIfTI/MGZ files at ``path`` (a file, or a folder, searched
    recursively).

    Args:
        path: file or folder.
        pattern: None: the layout rules of the module docstring; else a regex matched against
            the whole file name without its suffix (its ``id`` group, else its first group,
            else the whole match is the id; files that do not match are ignored).

    Raises:
        ValueError: missing path, bad pattern or two files with the same id (and rank).
    """
    path = Path(path)
    files = _files(path)
    cases: dict[str, Path] = {}
    if pattern is None:
        root = path if path.is_dir() else path.parent
        ranked: dict[str, tuple[int, Path]] = {}
        for f in files:
            key = case_key(f, root)
            if key is None:
                continue
            case, rank = key
            if case in ranked and ranked[case][0] == rank:
                raise ValueError(
                    f"{f} and {ranked[case][1]} have the same case id {case!r}; "
                    "give pred_pattern= / ref_pattern= to choose"
                )
            if case not in ranked or ranked[case][0] < rank:
                ranked[case] = (rank, f)
        if any(rank > 0 for rank, _ in ranked.values()):  # segmentations here: skip the scans
            ranked = {c: rf for c, rf in ranked.items() if rf[0] > 0}
        return {case: f for case, (_, f) in sorted(ranked.items())}
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad file-name pattern {pattern!r}: {exc}") from exc
    for f in files:
        m = regex.fullmatch(strip_suffix(f))
        if m is None:
            continue
        key = (
            m.group("id")
            if "id" in regex.groupindex
            else (m.group(1) if regex.groups else m.group(0))
        )
        if key in cases:
            raise ValueError(
                f"{f} and {cases[key]} have the same case id {key!r}; refine the pattern"
            )
        cases[key] = f
    return cases


def pair_cases(
    pred: str | Path,
    ref: str | Path,
    pred_pattern: str | None = None,
    ref_pattern: str | None = None,
) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, reference) triples, matched by id; two single files are paired as is.

    Args:
        pred, ref: files or folders.
        pred_pattern, ref_pattern: None for the layout rules (module docstring), else a regex.

    Raises:
        ValueError: nothing to pair.
    """
    if Path(pred).is_file() and Path(ref).is_file():
        key = case_key(Path(pred), Path(pred).parent)  # out/t1_seg.nii.gz -> t1
        return [(key[0] if key else strip_suffix(pred), Path(pred), Path(ref))]
    preds, refs = find_cases(pred, pred_pattern), find_cases(ref, ref_pattern)
    common = sorted(set(preds) & set(refs))
    for side, only in (
        ("prediction", set(preds) - set(refs)),
        ("reference", set(refs) - set(preds)),
    ):
        if only:
            log.warning(
                "%d %s(s) without a partner: %s", len(only), side, ", ".join(sorted(only)[:10])
            )
    if not common:
        how = {p: "layout rules" if p is None else repr(p) for p in (pred_pattern, ref_pattern)}
        raise ValueError(
            f"no case pairs: prediction ids {sorted(preds)[:5]} ({how[pred_pattern]}) in {pred}, "
            f"reference ids {sorted(refs)[:5]} ({how[ref_pattern]}) in {ref}, none in common"
        )
    return [(c, preds[c], refs[c]) for c in common]
