"""Open label protocols: a YAML or TSV file that lists a label map's labels, Gaussian classes,
left/right pairs, target mapping and names, per-class intensity priors and dropped labels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from synthseg_lite.labels.presets import TargetPreset

# ------------------------------------------------------------------------------- open protocols

_PROTOCOL_KEYS = {
    "labels", "classes", "lr_pairs", "target", "target_names", "priors", "drop_labels",
}


def _int_keys(d: Mapping, what: str) -> dict[int, object]:
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: keys must be integer label values ({exc})") from exc


def _range(v: object, what: str) -> tuple[float, float] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        v = [x for x in v.replace(",", " ").split()]
    try:
        lo, hi = (float(x) for x in v)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected [low, high], got {v!r}") from exc
    return lo, hi


def _read_tsv(path: Path) -> dict:
    """One row per generation label; columns ``value`` (required), ``name``, ``class``, ``twin``
    (value of the contralateral label), ``target`` (output value), ``target_name``,
    ``mean`` and ``std`` (``low,high``)."""
    import csv

    with open(path, newline="") as fh:
        lines = (line for line in fh if not line.startswith("#"))
        rows = list(csv.DictReader(lines, delimiter="\t"))
    if not rows or "value" not in rows[0]:
        raise ValueError(f"{path}: a TSV label protocol needs a header with a 'value' column")
    spec: dict = {"labels": {}, "classes": {}, "lr_pairs": [], "priors": {}}
    target, target_names = {}, {}
    for r in rows:
        v = int(r["value"])
        spec["labels"][v] = r.get("name") or f"label_{v}"
        if r.get("class"):
            spec["classes"].setdefault(r["class"], []).append(v)
        if r.get("twin") and int(r["twin"]) > v:
            spec["lr_pairs"].append([v, int(r["twin"])])
        if r.get("target", "") != "":
            target[v] = int(r["target"])
            if r.get("target_name"):
                target_names[int(r["target"])] = r["target_name"]
        if r.get("mean") or r.get("std"):
            spec["priors"][v] = {"mean": r.get("mean") or None, "std": r.get("std") or None}
    if target:
        spec["target"], spec["target_names"] = target, target_names
    return spec


def read_label_protocol(path: str | Path) -> dict:
    """Read a label protocol file (YAML, or TSV with one row per label) into the keyword
    arguments of :meth:`LabelTable.create` plus ``target`` (a :class:`TargetPreset` or None).

    YAML layout (every key but ``labels`` optional)::

        labels: {1: myocardium, 2: LV-blood, 3: RV-blood}  # value: name (or a list of values)
        classes: {blood: [2, 3]}      # labels sharing one Gaussian (others: their own class)
        lr_pairs: [[10, 11]]          # (left, right) values, swapped by flips
        target: {1: 1, 2: 2, 3: 2}    # generation value -> output value (default: itself);
                                      # unlisted labels -> background
        target_names: {1: myo, 2: blood}
        priors:                       # per class name or label value, 0-255 scale, uniform
          blood: {mean: [150, 220], std: [0, 15]}
        drop_labels: [20]             # removed by the skull-strip step

    Raises:
        ValueError: unreadable file, unknown keys, or values that do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.labels={str(path)!r}: no such file (or use freesurfer|auto)")
    if path.suffix.lower() in (".tsv", ".txt"):
        spec = _read_tsv(path)
    else:
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(spec, Mapping) or "labels" not in spec:
        raise ValueError(f"{path}: a label protocol needs a 'labels' entry")
    unknown_keys = set(spec) - _PROTOCOL_KEYS
    if unknown_keys:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown_keys)}; allowed: {sorted(_PROTOCOL_KEYS)}"
        )
    from synthseg_lite.schema import check_protocol

    check_protocol(spec, path)  # every field's type and range, one line naming it
    raw = spec["labels"]
    if isinstance(raw, Mapping):
        names = _int_keys(raw, f"{path}: labels")
    else:
        names = {int(v): f"label_{int(v)}" for v in raw}
    names = {k: str(v) for k, v in names.items()}
    names.setdefault(0, "background")
    groups_by_name = {str(k): [int(x) for x in v] for k, v in (spec.get("classes") or {}).items()}
    priors: dict[int, tuple] = {}
    for key, pr in (spec.get("priors") or {}).items():
        members = groups_by_name.get(str(key))
        if members is None:
            try:
                members = [int(key)]
            except ValueError:
                raise ValueError(
                    f"{path}: prior for {key!r}: not a class name or label value"
                ) from None
        if not isinstance(pr, Mapping) or not set(pr) <= {"mean", "std"}:
            raise ValueError(
                f"{path}: prior for {key!r} must be {{mean: [low, high], std: [low, high]}}"
            )
        rng = (_range(pr.get("mean"), f"{path}: prior mean of {key}"),
               _range(pr.get("std"), f"{path}: prior std of {key}"))
        for m in members:
            priors[m] = rng
    target = None
    if spec.get("target"):
        out = {k: int(v) for k, v in _int_keys(spec["target"], f"{path}: target").items()}
        given = _int_keys(spec.get("target_names") or {}, f"{path}: target_names")
        tnames = {k: str(v) for k, v in given.items()}
        values = [0] + sorted(set(out.values()) - {0})
        by_value = {v: names[k] for k, v in sorted(out.items()) if k in names}
        target = TargetPreset(
            tuple(tnames.get(v, by_value.get(v, "background" if v == 0 else f"label_{v}"))
                  for v in values),
            tuple(values), {k: values.index(v) for k, v in out.items()} | {0: 0},
        )
    return {
        "generation_labels": sorted(names), "names": names, "target": target,
        "lr_pairs": [list(p) for p in spec.get("lr_pairs") or []],
        "class_groups": list(groups_by_name.values()),
        "drop_labels": [int(v) for v in spec.get("drop_labels") or []],
        "priors": priors,
    }


