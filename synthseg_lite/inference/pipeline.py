"""Segment scans end to end: read, preprocess, predict, post-process, write.

Per scan the output folder receives the segmentation (values: see
:mod:`synthseg_lite.labels.lut`), its FreeSurfer colour table and BIDS ``dseg.tsv``, for a
structure model the tissue view (GM / WM / CSF) with its own tables, optionally the posteriors and
the scan on the segmentation's grid (``save_resampled``, with ``output_mm``), a QC PNG and a
provenance JSON (written last: a scan with one is done and skipped on the next run unless
``overwrite``). Every file is claimed in the output folder's record before it is written
(:mod:`synthseg_lite.inference.record`), so a study stopped at any point resumes, and files the
tool did not write are never changed. File names:
:func:`synthseg_lite.inference.outputs.output_paths` (BIDS derivatives for BIDS datasets, the
input tree mirrored otherwise). ``volumes.csv`` gets one row per scan (merged with earlier runs)
and ``report.html`` summarises the study. A scan that cannot be processed is skipped with a
one-line reason; the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from synthseg_lite.inference.predictor import (
    Predictor,
    find_checkpoints,
    load_ensemble,
)
from synthseg_lite.data.preprocess import resample_to_grid, to_ras
from synthseg_lite.inference.record import (
    StudyLease,
    StudyRecord,
    StudyResults,
    check_study_files,
    check_study_outputs,
    clean_temporaries,
    scan_finished,
)
from synthseg_lite.inference.segment import (
    QC_THRESHOLD,
    InferenceOptions,
    build_predictor,
    load_predictor,
    segment_volume,
)
from synthseg_lite.inference.study import ScanReader, StudyProgress
from synthseg_lite.io import Volume, load_volume, save_volume
from synthseg_lite.labels.lut import (
    OutputLabels,
    label_dtype,
    output_labels,
    tissue_view,
    write_dseg_tsv,
    write_lut,
)
from synthseg_lite.model.artifact import ensemble_qc_threshold
from synthseg_lite.inference.outputs import (
    DERIVATIVES,
    Scan,
    find_scans,
    merge_volumes,
    output_paths,
    provenance,
    select_part,
    write_dataset_description,
    write_json,
)
from synthseg_lite.inference.figures import qc_figure
from synthseg_lite.validate import check_scan

__all__ = [
    "InferenceOptions",
    "ScanResult",
    "build_predictor",
    "expand_inputs",
    "output_paths",
    "segment_scans",
    "segment_volume",
]

log = logging.getLogger(__name__)

VOLUMES_CSV = "volumes.csv"
REPORT_HTML = "report.html"
@dataclass
class ScanResult:
    """Outcome for one scan.

    Attributes:
        input: the scan.
        outputs: written files by kind (see
            :func:`~synthseg_lite.inference.outputs.output_paths`); for a scan left as it was
            (``done``), its existing files.
        volumes_mm3: class name -> soft volume (mm^3).
        seconds: wall time for this scan.
        error: why the scan was skipped (one line), or None.
        case: case id (``subject`` in ``volumes.csv``).
        qc: QC scores (``qc_score`` and one per group), in [0, 1].
        done: its outputs existed already and were kept (``overwrite=false``).
    """

    input: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    volumes_mm3: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    case: str = ""
    qc: dict[str, float] = field(default_factory=dict)
    done: bool = False


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Scans named by files, folders (searched recursively) and glob patterns, as absolute paths
    (see :func:`synthseg_lite.inference.outputs.find_scans`).

    Raises:
        ValueError: nothing matches.
    """
    return [s.path.resolve() for s in find_scans(inputs).scans]


@dataclass
class StudyContext:
    """What every scan of a run shares: model, label conventions, provenance."""

    predictor: Predictor
    opts: InferenceOptions
    device: torch.device
    labels: OutputLabels
    tissue: tuple[np.ndarray, OutputLabels] | None
    provenance: dict
    root: Path
    reader: ScanReader | None = None


def _save_labels(lut: np.ndarray, labels: np.ndarray, affine: np.ndarray, path: Path,
                 oriented: bool = True) -> None:
    """Write ``lut[labels]`` in the smallest integer dtype that holds the LUT's values."""
    save_volume(_lookup(lut.astype(label_dtype(lut)), labels), affine, path, oriented=oriented)


def _lookup(table: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``table[labels]`` for a (X, Y, Z) class-index volume, computed by torch: NumPy's large
    fresh arrays are madvised for transparent huge pages, whose first touch stalled for up to 2 s
    per array on a fragmented-memory Linux machine (measured here)."""
    if table.dtype == np.uint16:  # torch indexes few ops in uint16: look up in int32
        return _lookup(table.astype(np.int32), labels).astype(np.uint16)
    return torch.from_numpy(table)[torch.from_numpy(labels)].numpy()


def _counts(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) float64 voxel count of each class index of ``labels`` (torch, as :func:`_lookup`)."""
    return torch.bincount(torch.from_numpy(labels).flatten(), minlength=n).double().numpy()


def _read_scan(scan: Scan, max_voxels: int | None) -> Volume:
    """A scan to segment, on its own voxel grid; NaN voxels read as no signal (with a warning)."""
    return load_volume(scan.path, canonical=False, max_voxels=max_voxels, nan="fill")


def _segment_one(scan: Scan, out: dict[str, Path], w: StudyContext) -> ScanResult:
    """Segment ``scan`` and write its files; ``volumes.csv`` row and provenance last."""
    vol = w.reader.read(scan) if w.reader else _read_scan(scan, w.opts.max_voxels)
    for warning in check_scan(vol.data, vol.affine, scan.path):  # a label map, a few voxels...
        log.warning(warning)
    pred = segment_volume(vol.data, vol.affine, w.predictor, w.opts, w.device, str(scan.path))
    names = w.predictor.target.names
    written = {"seg": out["seg"], "lut": out["lut"], "tsv": out["tsv"]}
    # a scan without qform/sform: outputs on its grid without them too (io.has_orientation)
    oriented = vol.oriented or not np.array_equal(pred.affine, vol.affine)
    _save_labels(w.labels.lut(), pred.labels, pred.affine, out["seg"], oriented)
    write_lut(out["lut"], w.labels, f"{scan.case}: {w.labels.desc} labels (synthseg_lite)")
    write_dseg_tsv(out["tsv"], w.labels)
    voxel_mm3 = float(abs(np.linalg.det(pred.affine[:3, :3])))
    hard = _counts(pred.labels, len(names)) * voxel_mm3
    soft = np.asarray(pred.volumes_mm3, dtype=float)
    qc = pred.qc
    row: dict[str, object] = {
        "subject": scan.case,
        "qc_score": qc["qc_score"],
        "qc_flag": qc["qc_score"] < w.opts.qc_threshold,
        "total_intracranial_mm3": hard[1:].sum(),
        "total_intracranial_soft_mm3": soft[1:].sum(),
    }
    for k in range(1, len(names)):
        row[f"{names[k]}_mm3"] = hard[k]
        row[f"{names[k]}_soft_mm3"] = soft[k]
    if w.tissue is not None:
        group, tissue = w.tissue
        _save_labels(tissue.lut()[group], pred.labels, pred.affine, out["tissue"], oriented)
        write_lut(out["tissue_lut"], tissue, f"{scan.case}: tissue view (synthseg_lite)")
        write_dseg_tsv(out["tissue_tsv"], tissue)
        written |= {k: out[k] for k in ("tissue", "tissue_lut", "tissue_tsv")}
        t_hard = np.bincount(group, weights=hard, minlength=4)
        t_soft = np.bincount(group, weights=soft, minlength=4)
        for t in range(1, 4):
            row[f"{tissue.names[t]}_mm3"] = t_hard[t]
            row[f"{tissue.names[t]}_soft_mm3"] = t_soft[t]
    row |= {f"qc_{g}": v for g, v in qc.items() if g != "qc_score"}
    if pred.pose is not None:  # a structure model's reading of the head's tilt
        row["qc_pose_deg"] = pred.pose["degrees"]
        row["qc_pose_upright"] = pred.pose["segmented_upright"]
    row["qc_fov_cut"] = pred.fov_cut
    if pred.fov_cut:
        log.warning(
            "%s: the field of view cuts the brain (%s): the volumes there, and "
            "total_intracranial_mm3, are partial (qc_fov_cut in %s)", scan.case, pred.fov_cut,
            VOLUMES_CSV,
        )
    if pred.posteriors is not None:
        save_volume(np.moveaxis(pred.posteriors, 0, -1), pred.affine, out["posteriors"],
                    oriented=oriented)
        written["posteriors"] = out["posteriors"]
    # the scan on the segmentation's grid (RAS), for the resampled file and the QC figure
    if w.opts.output_mm is not None and (w.opts.save_qc or w.opts.save_resampled):
        image, ras_affine = resample_to_grid(
            torch.as_tensor(vol.data), vol.affine, w.opts.output_mm
        )
        ras_image = image.numpy()
    elif w.opts.save_qc:
        ornt = nib.orientations.io_orientation(vol.affine)
        ras_image = to_ras(torch.as_tensor(vol.data), ornt).numpy()
        ras_affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    if w.opts.save_resampled:
        save_volume(ras_image, ras_affine, out["resampled"])
        written["resampled"] = out["resampled"]
    if w.opts.save_qc:
        qc_figure(
            ras_image, pred.labels_ras, ras_affine, w.labels.names, out["qc"],
            title=f"{scan.case}   QC {qc['qc_score']:.2f}", colors=w.labels.colors,
        )
        written["qc"] = out["qc"]
    row["seg_file"] = _rel(out["seg"], w.root)
    row["qc_png"] = _rel(out["qc"], w.root) if w.opts.save_qc else ""
    merge_volumes(w.root / VOLUMES_CSV, [row])
    sources = (
        {"Sources": [f"bids:raw:{scan.path.relative_to(_bids_root(scan)).as_posix()}"]}
        if scan.bids is not None and _bids_root(scan) is not None
        else {}
    )
    write_json(
        out["json"],
        w.provenance | sources | {
            "input": str(scan.path.resolve()),
            "case": scan.case,
            "labels": {"convention": w.opts.labels, "desc": w.labels.desc},
            "qc": qc,
            "pose": pred.pose,
            "fov_cut": pred.fov_cut or None,
            "outputs": {k: _rel(v, out["json"].parent) for k, v in written.items()},
        },
    )
    written["json"] = out["json"]
    result = ScanResult(scan.path, written, case=scan.case, qc=qc)
    result.volumes_mm3 = {n: float(v) for n, v in zip(names, soft)}
    return result


def _rel(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


def _bids_root(scan: Scan) -> Path | None:
    """The dataset folder of a BIDS scan (the parent of ``sub-*``)."""
    for parent in scan.path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return None


def segment_scans(
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path | None,
    model: str | Path | None = None,
    options: InferenceOptions | None = None,
) -> list[ScanResult]:
    """Segment every scan named by ``inputs`` into ``output_dir``.

    Args:
        inputs: files, folders (searched recursively), BIDS datasets or glob patterns (see
            :func:`synthseg_lite.inference.outputs.find_scans`).
        output_dir: created if needed; None for a BIDS dataset: its own ``derivatives/``. Outputs
            never replace an input file; existing outputs are kept unless ``options.overwrite``.
        model: a run directory (fold checkpoints, see
            :func:`~synthseg_lite.inference.predictor.find_checkpoints`), a ``.ckpt`` or a ``.pt``
            file, or a shipped model's name (``tissue``, ``structures``; None: ``tissue``), see
            :func:`~synthseg_lite.inference.predictor.resolve_model`.
        options: see :class:`InferenceOptions`.

    Returns:
        One :class:`ScanResult` per scan of this part, skipped scans included (``error`` set) and
        scans already done (``done`` set).

    Raises:
        ValueError: no scans, bad options or no usable model (scan-level problems do not raise).
    """
    opts = options or InferenceOptions()
    study = find_scans(inputs, output_dir)
    if output_dir is None:
        if len(study.bids_roots) != 1:
            raise ValueError("output=... is required (it may be left out for one BIDS dataset)")
        output_dir = study.bids_roots[0]
    output_dir = Path(output_dir)
    scans = select_part(study.scans, opts.num_parts, opts.part_id)
    predictor, meta, device, model_path = load_predictor(model, opts, load_ensemble)
    if opts.qc_threshold is None:  # the model's own threshold
        qc = ensemble_qc_threshold(meta, find_checkpoints(model_path)[1:], QC_THRESHOLD)
        opts = replace(opts, qc_threshold=qc)
        log.info("QC threshold %.2f (the model's; qc_threshold= to choose another)", qc)
    target = predictor.target
    root = study.root(output_dir)
    w = StudyContext(
        predictor, opts, device, output_labels(target, opts.labels),
        tissue_view(target, opts.labels),
        provenance(find_checkpoints(model_path), asdict(opts), model=str(model_path)), root,
    )
    log.info(
        "%d scan(s) (part %d of %d: %d) -> %s (device %s, %s per scan, %.2f mm)",
        len(study.scans), opts.part_id, opts.num_parts, len(scans), output_dir / (
            DERIVATIVES if root != output_dir else ""), device, predictor.passes_text,
        meta.spacing_mm,
    )
    inputs_set = {s.path.resolve() for s in study.scans} | study.protected
    results = StudyResults()
    with StudyLease(root, opts.num_parts, opts.part_id) as lease, \
            StudyRecord(output_dir) as record:
        check_study_outputs(scans, study.scans, output_dir, w.labels.desc)
        check_study_files([root / VOLUMES_CSV] + ([root / REPORT_HTML] if opts.report else []))
        if lease.alone:  # no other run writes here: an earlier run's temporaries are stale
            outs = [output_paths(s, output_dir, w.labels.desc) for s in study.scans]
            clean_temporaries(
                [root, *(p.parent for o in outs for p in o.values())],
                [VOLUMES_CSV, REPORT_HTML, *(p.name for o in outs for p in o.values())],
            )
        lease.clean_done()
        if any(s.bids is not None for s in study.scans):
            write_dataset_description(output_dir, study.bids_roots)
        _run_scans(scans, output_dir, w, inputs_set, record, results)
        if opts.report and (root / VOLUMES_CSV).is_file():
            from synthseg_lite.inference.report import write_report

            try:
                write_report(root, opts.qc_threshold)
            except OSError as exc:  # a full disk: the scans are done, the rerun writes it
                results.problems.append(f"{root / REPORT_HTML}: not written ({exc})")
                log.warning("%s", results.problems[-1])
    return results


def _run_scans(
    scans: Sequence[Scan], output_dir: Path, w: StudyContext, inputs_set: set[Path],
    record: StudyRecord, results: list[ScanResult],
) -> None:
    """Segment each scan in turn; a scan that fails is skipped with its reason, and none of the
    files it wrote stay."""
    opts = w.opts
    seen: set[Path] = set()

    def pending(scan: Scan) -> bool:  # read ahead only scans that will be segmented
        return opts.overwrite or not scan_finished(output_paths(scan, output_dir, w.labels.desc))

    reader = ScanReader(scans, lambda s: _read_scan(s, opts.max_voxels), pending)
    w.reader = reader
    with logging_redirect_tqdm(), reader:
        bar = StudyProgress(scans, disable=not opts.progress)
        for scan in bar:
            out = output_paths(scan, output_dir, w.labels.desc)
            if not opts.overwrite and scan_finished(out):
                log.info("%s: outputs exist, kept (overwrite=true to segment it again)", scan.case)
                kept = {k: p for k, p in out.items() if p.is_file()}
                results.append(ScanResult(scan.path, kept, case=scan.case, done=True))
                bar.done(0.0, segmented=False)
                continue
            result = ScanResult(scan.path, case=scan.case)
            start = time.perf_counter()
            record.start_scan()
            try:
                ours = out["json"].is_file()  # earlier outputs of this tool may be replaced
                clash = [
                    p for p in out.values()
                    if p in seen or (p.resolve() in inputs_set and not ours)
                ]
                if clash:
                    raise ValueError(
                        f"{scan.path}: output {clash[0]} would replace an input or another scan's"
                        " output"
                    )
                seen.update(out.values())
                result = _segment_one(scan, out, w)
            except (ValueError, OSError, RuntimeError, MemoryError) as exc:  # scan, disk, memory
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                result.error = msg if str(scan.path) in msg else f"{scan.path}: {msg}"
                log.warning("skipped %s", result.error)
                log.debug("details", exc_info=True)
                record.discard_scan(out.values())
            result.seconds = time.perf_counter() - start
            results.append(result)
            bar.done(result.seconds)
            if result.error is None:
                log.info("%s: %.1f s, QC %.2f", scan.case, result.seconds, result.qc["qc_score"])
