"""Schemas of the files users hand to the tool: label protocols and model-file settings.

Every field's type and range is checked before it is used; a problem is one ``ValueError`` line
naming the file and the field (``heart.yaml: classes: expected {name: [label values]}, got
[2, 3]``), never a traceback from deeper code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

__all__ = ["check_model_meta", "check_protocol"]

#: Label values are stored as int32 on the way through.
MAX_LABEL = 2**31 - 1


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _label(v: object) -> bool:
    if isinstance(v, str):
        v = v.strip()
        if not v.lstrip("-").isdigit():
            return False
        v = int(v)
    return _is_int(v) and 0 <= v <= MAX_LABEL  # type: ignore[operator]


def _fail(path: str | Path, key: str, expected: str, got: object) -> ValueError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ValueError(f"{path}: {key}: expected {expected}, got {shown}")


def _label_list(v: object) -> bool:
    return isinstance(v, list) and all(_label(x) for x in v)


def _range(v: object) -> bool:
    if v is None or v == "":
        return True
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    try:
        lo, hi = (float(x) for x in v)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return False
    return math.isfinite(lo) and math.isfinite(hi)


def check_protocol(spec: Mapping, path: str | Path) -> None:
    """Check the fields of a label protocol (see :func:`synthseg_lite.labels.read_label_protocol`).

    Raises:
        ValueError: a field of the wrong type or out of range (label values are integers in
            [0, 2**31 - 1]), naming the file and the field.
    """
    labels = spec.get("labels")
    if isinstance(labels, Mapping):
        if not labels or not all(_label(k) for k in labels):
            raise _fail(path, "labels", "{label value: name} with integer values >= 0", labels)
        if not all(isinstance(n, (str, int, float)) for n in labels.values()):
            raise _fail(path, "labels", "a name (text) per label value", labels)
    elif not (_label_list(labels) and labels):
        raise _fail(path, "labels", "{label value: name} or a list of label values", labels)
    classes = spec.get("classes") or {}
    if not isinstance(classes, Mapping) or not all(_label_list(v) for v in classes.values()):
        raise _fail(path, "classes", "{class name: [label values]}", classes)
    pairs = spec.get("lr_pairs") or []
    if not isinstance(pairs, list) or not all(_label_list(p) and len(p) == 2 for p in pairs):
        raise _fail(path, "lr_pairs", "a list of [left, right] label values", pairs)
    target = spec.get("target") or {}
    if not isinstance(target, Mapping) or not all(
        _label(k) and _label(v) for k, v in target.items()
    ):
        raise _fail(path, "target", "{label value: output value} (integers >= 0)", target)
    names = spec.get("target_names") or {}
    if not isinstance(names, Mapping) or not all(_label(k) for k in names):
        raise _fail(path, "target_names", "{output value: name}", names)
    priors = spec.get("priors") or {}
    if not isinstance(priors, Mapping):
        raise _fail(path, "priors", "{class name or label value: {mean: [lo, hi], std: [lo, hi]}}",
                    priors)
    for key, pr in priors.items():
        if not isinstance(pr, Mapping) or not all(_range(v) for v in pr.values()):
            raise _fail(path, f"priors.{key}", "{mean: [low, high], std: [low, high]}", pr)
    drop = spec.get("drop_labels") or []
    if not _label_list(drop):
        raise _fail(path, "drop_labels", "a list of label values", drop)


#: UNet settings of a model file: field -> (type, low, high).
_UNET = {
    "n_stages": (int, 2, 10),
    "base_features": (int, 1, 4096),
    "max_features": (int, 1, 65536),
    "deep_supervision": (bool, None, None),
    "deep_supr_num": (int, 0, 10),
    "spatial_dims": (int, 2, 3),
    "in_channels": (int, 1, 64),
}


def _number(v: object, low: float, high: float) -> bool:
    return (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and low <= v <= high
    )


def check_model_meta(meta: object, path: str | Path) -> None:
    """Check the settings of a model file or checkpoint before a network is built from them:
    ``spacing_mm`` (finite, in (0, 20] mm), ``patch_size`` (2 or 3 positive sizes, at most 1024),
    ``unet`` (known fields, integer ranges, ``spatial_dims`` 2 or 3), ``label_table`` and
    ``slices`` (mappings).

    Raises:
        ValueError: one line naming the file and the field.
    """
    if not isinstance(meta, Mapping):
        raise _fail(path, "meta", "a mapping of model settings", meta)
    for key in ("unet", "label_table", "spacing_mm", "patch_size"):
        if key not in meta:
            raise ValueError(f"{path}: model settings: missing field {key!r}")
    sp = meta["spacing_mm"]
    if not (_number(sp, 0, 20) and sp > 0):
        raise _fail(path, "spacing_mm", "a voxel size in (0, 20] mm", sp)
    unet = meta["unet"]
    if not isinstance(unet, Mapping):
        raise _fail(path, "unet", "a mapping of network settings", unet)
    for key, v in unet.items():
        if key not in _UNET:
            raise ValueError(f"{path}: unet: unknown field {key!r}; known: {sorted(_UNET)}")
        kind, low, high = _UNET[key]
        if kind is bool:
            ok = isinstance(v, bool)
        else:
            ok = _is_int(v) and low <= v <= high
        if not ok:
            expected = "true or false" if kind is bool else f"an integer in [{low}, {high}]"
            raise _fail(path, f"unet.{key}", expected, v)
    dims = unet.get("spatial_dims", 3)
    patch = meta["patch_size"]
    if not (
        isinstance(patch, (list, tuple)) and len(patch) in (2, 3)
        and all(_is_int(n) and 1 <= n <= 1024 for n in patch)
    ):
        raise _fail(path, "patch_size", f"{dims} sizes in [1, 1024] voxels", patch)
    for key in ("label_table",):
        if not isinstance(meta[key], Mapping):
            raise _fail(path, key, "a mapping", meta[key])
    for key in ("slices", "extra"):
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            raise _fail(path, key, "a mapping", meta[key])
