"""Which files go together: case ids from file names, and (prediction, reference) pairs.

A case id is read from a file name (without its NIfTI/MGZ suffix) with a regular expression:
its ``id`` group, else its first group, else the whole match. The default ``(?P<id>.+)_seg``
pairs ``out/IBSR_01_seg.nii.gz`` (``infer.py``'s output) with ``ref/IBSR_01/IBSR_01_seg.nii.gz``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from synthseg_lite.io import IMAGE_SUFFIXES, strip_suffix

__all__ = ["DEFAULT_PATTERN", "find_cases", "pair_cases"]

log = logging.getLogger(__name__)

#: Default file-name pattern of segmentations: ``<id>_seg``.
DEFAULT_PATTERN = r"(?P<id>.+)_seg"


def find_cases(path: str | Path, pattern: str) -> dict[str, Path]:
    """Case id -> file for the NIfTI/MGZ files at ``path`` (a file, or a folder searched recursively).

    The id is the ``id`` group (else the first group, else the whole match) of ``pattern``
    matched against the whole file name without its suffix; files that do not match are ignored.

    Raises:
        ValueError: missing path, bad pattern or two files with the same id.
    """
    path = Path(path)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad file-name pattern {pattern!r}: {exc}") from exc
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.name.lower().endswith(IMAGE_SUFFIXES)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        raise ValueError(f"{path}: no such file or folder")
    cases: dict[str, Path] = {}
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
    pred_pattern: str = DEFAULT_PATTERN,
    ref_pattern: str = DEFAULT_PATTERN,
) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, reference) triples, matched by id; two single files are paired as is.

    Raises:
        ValueError: nothing to pair.
    """
    if Path(pred).is_file() and Path(ref).is_file():
        return [(strip_suffix(pred), Path(pred), Path(ref))]
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
        raise ValueError(
            f"no case pairs: {len(preds)} prediction(s) matching {pred_pattern!r} in {pred}, "
            f"{len(refs)} reference(s) matching {ref_pattern!r} in {ref}, no common ids"
        )
    return [(c, preds[c], refs[c]) for c in common]
