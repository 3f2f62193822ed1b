"""Label tables that other tools read: FreeSurfer colour tables (LUT) and BIDS ``dseg.tsv``.

Output label conventions (documented once, here and in the README's "Outputs"):

* **structures** (target preset ``synthseg`` or any target whose values are FreeSurfer labels):
  FreeSurfer aseg values (2 Left-Cerebral-White-Matter, 3 Left-Cerebral-Cortex, ... 60
  Right-VentralDC), with FreeSurfer's own names and colours (``FreeSurferColorLUT.txt``).
* **tissue** (the project's convention, ``labels=native``): 0 background, 1 GM, 2 WM, 3 CSF.
* **FSL FAST** (``labels=fast``): 0 background, 1 CSF, 2 GM, 3 WM.

A structure segmentation also gives a tissue view, grouped with the project's tissue grouping
(``labels.TARGET_PRESETS["tissue"].mapping``: the thesis' GM / WM / CSF classes).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthseg_lite.io import atomic_write
from synthseg_lite.labels.presets import FREESURFER_NAMES, TARGET_PRESETS, TargetPreset

__all__ = [
    "FREESURFER_COLORS",
    "LABEL_CONVENTIONS",
    "OutputLabels",
    "class_colors",
    "colors_rgba",
    "is_tissue_target",
    "label_dtype",
    "lut_text",
    "output_labels",
    "read_lut",
    "tissue_view",
    "write_dseg_tsv",
    "write_lut",
]

#: FreeSurfer's standard colours (``FreeSurferColorLUT.txt``, R G B) for the aseg labels the
#: project knows. Labels without a standard colour get a fixed fallback (see :func:`color_of`).
FREESURFER_COLORS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    2: (245, 245, 245), 3: (205, 62, 78), 4: (120, 18, 134), 5: (196, 58, 250),
    7: (220, 248, 164), 8: (230, 148, 34), 10: (0, 118, 14), 11: (122, 186, 220),
    12: (236, 13, 176), 13: (12, 48, 255), 14: (204, 182, 142), 15: (42, 204, 164),
    16: (119, 159, 176), 17: (220, 216, 20), 18: (103, 255, 255), 24: (60, 60, 60),
    25: (255, 165, 0), 26: (255, 165, 0), 28: (165, 42, 42), 30: (160, 32, 240),
    31: (0, 200, 200),
    41: (245, 245, 245), 42: (205, 62, 78), 43: (120, 18, 134), 44: (196, 58, 250),
    46: (220, 248, 164), 47: (230, 148, 34), 49: (0, 118, 14), 50: (122, 186, 220),
    51: (236, 13, 176), 52: (13, 48, 255), 53: (220, 216, 20), 54: (103, 255, 255),
    57: (255, 165, 0), 58: (255, 165, 0), 60: (165, 42, 42), 62: (160, 32, 240),
    63: (0, 200, 221),
    72: (120, 190, 150), 77: (200, 70, 255), 80: (164, 108, 226), 85: (234, 169, 30),
    251: (0, 0, 64), 252: (0, 0, 112), 253: (0, 0, 160), 254: (0, 0, 208), 255: (0, 0, 255),
}

#: Tissue colours: cortex, cerebral white matter and lateral-ventricle colours of FreeSurfer.
_TISSUE_COLORS = {"GM": (205, 62, 78), "WM": (245, 245, 245), "CSF": (120, 18, 134)}

#: ``labels=`` choices: ``native`` (the target preset's values) or ``fast`` (FSL FAST tissue).
LABEL_CONVENTIONS = ("native", "fast")
_FAST_VALUES = {"CSF": 1, "GM": 2, "WM": 3}


def _fallback_color(i: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour for labels without a FreeSurfer colour (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


@dataclass(frozen=True)
class OutputLabels:
    """What the values of a written segmentation mean.

    Attributes:
        values: (K,) value written for class index k (index 0: background, value 0).
        names: (K,) label names (FreeSurfer's for aseg values).
        colors: (K,) RGB colours, 0-255.
        desc: short description used in file names (``aseg``, ``tissue``, ``labels``).
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    desc: str

    def lut(self) -> np.ndarray:
        """(K,) int64 lookup table: class index -> written value."""
        return np.asarray(self.values, dtype=np.int64)


def is_tissue_target(target: TargetPreset) -> bool:
    """True for the tissue presets' classes: background, GM, WM, CSF."""
    return tuple(target.names) == ("background", "GM", "WM", "CSF")


def _is_aseg(target: TargetPreset) -> bool:
    return all(FREESURFER_NAMES.get(v) == n for v, n in zip(target.values[1:], target.names[1:]))


def output_labels(target: TargetPreset, convention: str = "native") -> OutputLabels:
    """The values, names and colours written for a model's target.

    Args:
        target: the model's target preset.
        convention: ``native`` or ``fast`` (FSL FAST's 1 CSF, 2 GM, 3 WM; tissue targets only; for
            a structure target it applies to the tissue view, see :func:`tissue_view`).

    Raises:
        ValueError: unknown convention.
    """
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"labels must be one of {LABEL_CONVENTIONS}, got {convention!r}")
    names = tuple(target.names)
    if is_tissue_target(target):
        fast = convention == "fast"
        values = (0, *(_FAST_VALUES[n] for n in names[1:])) if fast else (0, 1, 2, 3)
        colors = ((0, 0, 0), *(_TISSUE_COLORS[n] for n in names[1:]))
        return OutputLabels(tuple(values), ("Unknown", *names[1:]), colors, "tissue")
    if _is_aseg(target):
        colors = tuple(
            FREESURFER_COLORS.get(v, _fallback_color(i)) for i, v in enumerate(target.values)
        )
        return OutputLabels(tuple(target.values), ("Unknown", *names[1:]), colors, "aseg")
    colors = ((0, 0, 0), *(_fallback_color(i) for i in range(1, len(names))))
    return OutputLabels(tuple(target.values), ("Unknown", *names[1:]), colors, "labels")


def tissue_view(
    target: TargetPreset, convention: str = "native"
) -> tuple[np.ndarray, OutputLabels] | None:
    """Grouping of a structure target into GM / WM / CSF (the project's tissue grouping).

    Returns:
        ``(group, labels)``: ``group`` (K,) int64 maps each structure class to its tissue class
        (0 background, 1 GM, 2 WM, 3 CSF, the index order of the ``tissue`` preset); ``labels``
        the values written for the tissue view. None for targets that are not FreeSurfer
        structures (a tissue model has no second view).
    """
    if is_tissue_target(target) or not _is_aseg(target):
        return None
    tissue = TARGET_PRESETS["tissue"]
    group = np.array([tissue.mapping.get(v, 0) if v else 0 for v in target.values], np.int64)
    return group, output_labels(tissue, convention)


def label_dtype(values: np.ndarray) -> type[np.integer]:
    """The smallest dtype that holds every label value: uint8, uint16, else int32."""
    lo, hi = int(np.min(values, initial=0)), int(np.max(values, initial=0))
    if lo >= 0 and hi < 2**8:
        return np.uint8
    return np.uint16 if lo >= 0 and hi < 2**16 else np.int32


def lut_text(labels: OutputLabels, title: str = "") -> str:
    """FreeSurfer colour-table text: ``value name R G B A`` per line (A 0, as FreeSurfer writes)."""
    lines = [f"# {title}" if title else "# synthseg_lite label table", "#No. Label Name  R G B A"]
    for value, name, (r, g, b) in sorted(zip(labels.values, labels.names, labels.colors)):
        lines.append(f"{value:<4d} {name:<40s} {r:3d} {g:3d} {b:3d} 0")
    return "\n".join(lines) + "\n"


def write_lut(path: str | Path, labels: OutputLabels, title: str = "") -> Path:
    """Write :func:`lut_text` atomically (freeview: ``:colormap=lut:lut=<path>``)."""
    text = lut_text(labels, title)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_dseg_tsv(path: str | Path, labels: OutputLabels) -> Path:
    """BIDS ``dseg.tsv``: columns ``index`` (the value in the image), ``name``, ``color``."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "name", "color"])
    for value, name, (r, g, b) in sorted(zip(labels.values, labels.names, labels.colors)):
        writer.writerow([value, name, f"#{r:02x}{g:02x}{b:02x}"])
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def read_lut(path: str | Path) -> Mapping[int, tuple[str, tuple[int, int, int]]]:
    """Read a FreeSurfer colour table: value -> (name, (R, G, B)). Comment lines are skipped.

    Raises:
        ValueError: a line that is not ``value name R G B [A]``.
    """
    table: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) not in (5, 6):
            raise ValueError(f"{path}:{n}: expected 'value name R G B A', got {line!r}")
        table[int(parts[0])] = (parts[1], (int(parts[2]), int(parts[3]), int(parts[4])))
    return table


def colors_rgba(labels: OutputLabels | Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(K, 4) float RGBA in [0, 1] (matplotlib); index 0 transparent."""
    cols = labels.colors if isinstance(labels, OutputLabels) else labels
    rgba = np.ones((len(cols), 4))
    rgba[:, :3] = np.asarray(cols, dtype=float) / 255
    rgba[0] = 0
    return rgba


def class_colors(n: int) -> np.ndarray:
    """(n, 4) RGBA colours (floats in [0, 1]) for ``n`` classes without a LUT colour; index 0
    (background) transparent: matplotlib's tab10 / tab20, spread hues beyond 21 classes."""
    import matplotlib.pyplot as plt

    base = plt.get_cmap("tab10" if n <= 11 else "tab20")
    cols = np.array([base(i % base.N) for i in range(max(n - 1, 0))]).reshape(-1, 4)
    if n > 21:  # many classes: spread hues instead of cycling
        cols = plt.get_cmap("hsv")(np.linspace(0, 1, n - 1, endpoint=False))
    return np.vstack([[0, 0, 0, 0], cols])
