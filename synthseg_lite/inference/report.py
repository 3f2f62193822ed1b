"""``report.html``: one self-contained page summarising a segmented study (opens offline).

Built from the study's ``volumes.csv`` (every row, earlier runs included): the QC scores sorted
worst first with flags, every scan's QC thumbnail (relative links to the QC PNGs beside the
segmentations), a plot of each volume across scans with outliers (robust z-score
``0.6745 (x - median) / MAD`` beyond :data:`OUTLIER_Z`) labelled by case (inline PNG), the
left/right asymmetry outliers of a structure study (ENIGMA's asymmetry index, the same robust z
with a floor on its scale, :data:`ASYMMETRY_MIN_SD`: a structure drawn smaller on one side of one
scan, which its volumes alone can hide), and the
volumes table. No script, stylesheet or font is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from synthseg_lite._version import __version__
from synthseg_lite.io import atomic_write
from synthseg_lite.inference.outputs import read_volumes

__all__ = [
    "ASYMMETRY_MIN_SD",
    "OUTLIER_Z",
    "REPORT_HTML",
    "asymmetry",
    "outliers",
    "paired_structures",
    "robust_z",
    "volume_plot",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
#: |robust z| above this marks a volume as an outlier.
OUTLIER_Z = 3.0
#: Floor of the asymmetry index's robust standard deviation: with it an outlier differs from the
#: study's median index by more than 0.15 (sides 15 % apart beyond the study's usual), whatever
#: the spread of a small study (healthy subcortical indices spread by about 0.03-0.10).
ASYMMETRY_MIN_SD = 0.05

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
tr.flag td{background:#fdd}
.scroll{max-height:420px;overflow:auto;border:1px solid #ccc;display:inline-block;max-width:100%}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:330px}
figure img{width:330px;border:1px solid #999}
figcaption{font-size:12px}
.bad{color:#b00;font-weight:bold}
img.plot{max-width:100%}
"""


def robust_z(values: Sequence[float], min_sd: float = 0.0) -> np.ndarray:
    """(N,) robust z-scores ``(x - median) / max(MAD / 0.6745, min_sd)`` (NaN stays NaN; 0 when
    the scale is 0).

    Args:
        min_sd: floor of the robust standard deviation, in the values' unit: a study whose scans
            all agree closely (a small MAD) does not flag a difference too small to matter.
    """
    x = np.asarray(values, dtype=float)
    med = np.nanmedian(x) if np.isfinite(x).any() else np.nan
    mad = np.nanmedian(np.abs(x - med)) if np.isfinite(x).any() else np.nan
    scale = max(mad / 0.6745, min_sd) if np.isfinite(mad) else np.nan
    if not scale or not np.isfinite(scale):
        return np.where(np.isfinite(x), 0.0, np.nan)
    return (x - med) / scale


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _volume_columns(header: Sequence[str]) -> list[str]:
    """Hard-volume columns (``<label>_mm3``), in CSV order."""
    return [c for c in header if c.endswith("_mm3") and not c.endswith("_soft_mm3")]


def outliers(
    rows: Sequence[Mapping[str, str]], columns: Sequence[str], z: float = OUTLIER_Z
) -> list[tuple[str, str, float, float]]:
    """``(case, column, volume, robust z)`` for every volume with ``|robust z| > z``."""
    values = {col: [_float(r.get(col, "")) for r in rows] for col in columns}
    return _flag([r["subject"] for r in rows], values, z)


def _flag(
    cases: Sequence[str], values: Mapping[str, Sequence[float]], z: float = OUTLIER_Z,
    min_sd: float = 0.0,
) -> list[tuple[str, str, float, float]]:
    """``(case, name, value, robust z)`` for every value of ``values`` (name -> one value per
    case) with ``|robust z| > z`` (:func:`robust_z` with ``min_sd``), the largest first."""
    found = []
    for name, vals in values.items():
        for case, v, s in zip(cases, vals, robust_z(vals, min_sd)):
            if np.isfinite(s) and abs(s) > z:
                found.append((case, name, float(v), float(s)))
    return sorted(found, key=lambda t: -abs(t[3]))


def paired_structures(header: Sequence[str]) -> list[str]:
    """Structure names ``X`` whose hard volumes ``Left-X_mm3`` and ``Right-X_mm3`` are both
    columns of a ``volumes.csv`` header, in its order."""
    cols = set(_volume_columns(header))
    return [
        c[len("Left-"):-len("_mm3")]
        for c in _volume_columns(header)
        if c.startswith("Left-") and "Right-" + c[len("Left-"):] in cols
    ]


def asymmetry(rows: Sequence[Mapping[str, str]], header: Sequence[str]) -> dict[str, list[float]]:
    """Per left/right pair of hard-volume columns (:func:`paired_structures`), each scan's
    asymmetry index ``(L - R) / ((L + R) / 2)`` (ENIGMA's; NaN where both are empty), by ``X``."""
    out = {}
    for name in paired_structures(header):
        left = np.array([_float(r.get(f"Left-{name}_mm3", "")) for r in rows])
        right = np.array([_float(r.get(f"Right-{name}_mm3", "")) for r in rows])
        mean = (left + right) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(mean > 0, (left - right) / mean, np.nan).tolist()
    return out


def volume_plot(rows: Sequence[Mapping[str, str]], columns: Sequence[str], ncols: int = 4) -> bytes:
    """PNG: one panel per volume column, each scan a point (in case order), outliers in red and
    labelled with their case; the median and the +-3 robust-z band drawn."""
    n = max(len(columns), 1)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.4 * nrows), squeeze=False)
    cases = [r["subject"] for r in rows]
    x = np.arange(len(rows))
    for ax, col in zip(axes.flat, columns):
        v = np.array([_float(r.get(col, "")) for r in rows])
        s = robust_z(v)
        out = np.isfinite(s) & (np.abs(s) > OUTLIER_Z)
        ax.plot(x[~out], v[~out], "o", ms=3, color="#1f77b4")
        ax.plot(x[out], v[out], "o", ms=4, color="#d62728")
        if np.isfinite(v).any():
            med = np.nanmedian(v)
            mad = np.nanmedian(np.abs(v - med))
            ax.axhline(med, color="grey", lw=0.8)
            if mad > 0:
                band = OUTLIER_Z * mad / 0.6745
                ax.axhspan(med - band, med + band, color="grey", alpha=0.12, lw=0)
        for i in np.flatnonzero(out):
            ax.annotate(cases[i], (x[i], v[i]), fontsize=7, color="#d62728", xytext=(3, 2),
                        textcoords="offset points")
        ax.set_title(col.removesuffix("_mm3") + " (mm³)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xticks([])
        ax.set_xlim(-1, max(len(rows), 2))
    for ax in list(axes.flat)[len(columns):]:
        ax.set_axis_off()
    # fixed margins: tight_layout over dozens of panels takes seconds
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2 / (2.4 * nrows),
                        top=1 - 0.35 / (2.4 * nrows), wspace=0.3, hspace=0.35)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], flags: Sequence[bool]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        ('<tr class="flag">' if f else "<tr>") + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
        for r, f in zip(rows, flags)
    )
    return f'<div class="scroll"><table><tr>{head}</tr>\n{body}</table></div>'


def _outlier_table(
    found: Sequence[tuple[str, str, float, float]], heads: Sequence[str], fmt: str, what: str
) -> str:
    """:func:`outliers`' rows as a table (case, ``heads``: what and value, robust z), or one line
    saying that there is no ``what`` outlier."""
    if not found:
        return f"<p>No {what} with |robust z| &gt; {OUTLIER_Z:.0f}.</p>"
    rows = [[html.escape(c), html.escape(col), fmt.format(v), f"{z:+.1f}"]
            for c, col, v, z in found]
    return _table(["case", *heads, "robust z"], rows, [False] * len(found))


def write_report(root: str | Path, qc_threshold: float, csv_name: str = "volumes.csv") -> Path:
    """Write ``<root>/report.html`` from ``<root>/volumes.csv``.

    Args:
        root: the study's output folder (where ``volumes.csv`` is).
        qc_threshold: the QC threshold used for the flags (shown on the page).

    Raises:
        ValueError: no ``volumes.csv`` in ``root``.
    """
    root = Path(root)
    header, rows = read_volumes(root / csv_name)
    if not header:
        raise ValueError(f"{root / csv_name}: no volumes table to report")
    rows = sorted(rows, key=lambda r: r["subject"])
    worst = sorted(rows, key=lambda r: (_float(r.get("qc_score", "")), r["subject"]))
    flagged = [r for r in rows if r.get("qc_flag") == "1"]
    qc_cols = [c for c in header if c.startswith("qc_") and c not in ("qc_png",)]
    esc = html.escape

    def thumb_link(r: Mapping[str, str]) -> str:
        png = r.get("qc_png", "")
        return f'<a href="{esc(png)}">QC image</a>' if png else ""

    qc_rows = [
        [esc(r["subject"])]
        + [esc(r.get(c, "")) for c in qc_cols]
        + [thumb_link(r)]
        for r in worst
    ]
    flags = [r.get("qc_flag") == "1" for r in worst]
    qc_table = _table(["case", *qc_cols, "image"], qc_rows, flags)

    vol_cols = _volume_columns(header)
    found = outliers(rows, vol_cols)
    out_table = _outlier_table(found, ["volume", "mm³"], "{:.1f}", "volume")
    indices = asymmetry(rows, header)
    asym_found = _flag([r["subject"] for r in rows], indices, min_sd=ASYMMETRY_MIN_SD)
    asym_table = _outlier_table(
        asym_found, ["structure", "asymmetry index (L − R) / mean"], "{:+.3f}",
        "left/right asymmetry",
    )
    asym_section = (
        "<h3>Left/right asymmetry outliers</h3>\n<p>Asymmetry index (L &minus; R) / ((L + R) / 2) "
        "of each left/right pair (ENIGMA's), outliers by the same robust z across the study, its "
        f"standard deviation at least {ASYMMETRY_MIN_SD:g}: a structure drawn differently on the "
        f"two sides of one scan, or an asymmetric brain.</p>\n{asym_table}"
        if indices
        else ""
    )
    plot = base64.b64encode(volume_plot(rows, vol_cols)).decode() if vol_cols else ""
    plot_img = (
        f'<img class="plot" alt="volumes across scans" src="data:image/png;base64,{plot}">'
        if plot
        else ""
    )

    def figure(r: Mapping[str, str]) -> str:
        png, case = esc(r["qc_png"]), esc(r["subject"])
        cls = "bad" if r.get("qc_flag") == "1" else ""
        return (
            f'<figure><a href="{png}"><img src="{png}" loading="lazy" alt="QC {case}"></a>'
            f'<figcaption><span class="{cls}">{case}: QC {esc(r.get("qc_score", ""))}</span>'
            "</figcaption></figure>"
        )

    thumbs = "\n".join(figure(r) for r in worst if r.get("qc_png"))
    other = [c for c in header if c not in ("qc_png",)]
    vol_table = _table(
        other, [[esc(r.get(c, "")) for c in other] for r in rows],
        [r.get("qc_flag") == "1" for r in rows],
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>synthseg_lite study report</title>
<style>{_CSS}</style></head>
<body>
<h1>synthseg_lite study report</h1>
<p>{len(rows)} scan(s); <b>{len(flagged)} flagged</b> (QC score &lt; {qc_threshold:.2f});
{len(found)} volume outlier(s) (|robust z| &gt; {OUTLIER_Z:.0f}){
    f"; {len(asym_found)} left/right asymmetry outlier(s)" if indices else ""}.
Generated {time.strftime("%Y-%m-%d %H:%M:%S")} by synthseg_lite {__version__} from
<a href="{esc(csv_name)}">{esc(csv_name)}</a>.</p>
<p>QC score: for each structure group (tissue class for a tissue model), the mean over the voxels
predicted in it of the network's highest class probability (averaged over folds and test-time
passes); the scan's score is its lowest group. Flag: score below the threshold.{
    " qc_pose_deg: the head's tilt from the training maps' mean pose (degrees), read from the "
    "structures; qc_pose_upright = 1: tilted beyond the limit, segmented again upright."
    if "qc_pose_deg" in header else ""}{
    " qc_fov_cut: the side where the field of view cuts the brain (the volumes there partial)."
    if "qc_fov_cut" in header else ""}</p>
<h2>Quality control, worst first</h2>
{qc_table}
<h2>Volumes across scans</h2>
<p>Each point a scan (in case order); grey: median and the |robust z| &le; {OUTLIER_Z:.0f} band;
red: outliers, labelled by case.</p>
{plot_img}
<h3>Outliers</h3>
{out_table}
{asym_section}
<h2>QC images, worst first</h2>
<div class="thumbs">
{thumbs}
</div>
<h2>Volumes (mm³)</h2>
{vol_table}
</body></html>
"""
    path = root / REPORT_HTML
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    log.info("report: %s", path)
    return path
