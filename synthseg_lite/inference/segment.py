"""One scan in memory: the inference options, the device, the predictor, and
:func:`segment_volume` (preprocess -> network -> post-process -> the scan's own grid). The study
around it (files, record, ``volumes.csv``) is :mod:`synthseg_lite.inference.pipeline`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch

from synthseg_lite.inference.native import NativePrediction, to_native
from synthseg_lite.inference.postprocess import (
    KEEP_LARGEST,
    keep_largest_component,
    qc_scores,
)
from synthseg_lite.inference.refine import (
    REFINE,
    guard_voxels,
    interior_means,
    refine_with_intensities,
    shared_classes,
)
from synthseg_lite.inference.pose import FOV_SIGNAL, field_of_view_cut
from synthseg_lite.inference.upright import POSE_MAX_DEG, segment_in_pose
from synthseg_lite.inference.smooth import default_sigma_vox, smooth_probabilities_
from synthseg_lite.inference.onnx_backend import BACKENDS, OnnxNet
from synthseg_lite.inference.precision import PRECISIONS, AutocastNet, network_dtype
from synthseg_lite.inference.predictor import (
    TTA_MODES,
    Predictor,
    load_ensemble,
    resolve_model,
    tissue_output,
    with_oom_fallback,
)
from synthseg_lite.data.preprocess import grid_for, output_geometry, preprocess
from synthseg_lite.labels import STRUCTURE_GROUPS, TOPOLOGY_GROUPS, TargetPreset
from synthseg_lite.labels.lut import LABEL_CONVENTIONS, is_tissue_target
from synthseg_lite.inference.outputs import select_part
from synthseg_lite.model.artifact import ModelMeta
from synthseg_lite.runtime import numpy_hugepages, resolve_device, set_threads
from synthseg_lite.validate import MAX_VOXELS

__all__ = [
    "QC_THRESHOLD",
    "InferenceOptions",
    "build_predictor",
    "load_predictor",
    "qc_groups",
    "segment_volume",
    "white_matter_enclosures",
]

log = logging.getLogger(__name__)

#: QC threshold of a model file that carries none of its own (``qc_threshold=null``): a scan
#: whose score (lowest group confidence) is below it is flagged. Measured with the shipped tissue
#: model without intensity refinement (README "Outputs", ``benchmarks/qc_calibration.py``): 11
#: real T1 scans 0.80-0.84; degraded versions of IBSR_01 that keep Dice >= 0.74 (inverted, noisy,
#: 5 mm) 0.77-0.81; a blurred one (GM Dice 0.54) 0.68; random intensities in a brain mask
#: 0.30-0.43. The shipped models carry their own (with ``refine=gmm``: tissue 0.78, structures
#: 0.68); calibrate a model of your own the same way.
QC_THRESHOLD = 0.70


@dataclass
class InferenceOptions:
    """How scans are segmented (the defaults of ``infer.py``).

    Attributes:
        device: ``"auto"`` (CUDA when available, else Apple's MPS, else CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:1"``, ``"mps"``...
        tta: test-time augmentation, one of ``none``, ``flip`` (left/right, SynthSeg), ``mirror``
            (all 8 axis flips, nnU-Net; orientations this package's models never see in
            training, so lower Dice: a warning says so).
        fast: fast mode for huge studies: no test-time augmentation (whatever ``tta`` says) and,
            for a 2D model, one slicing axis (the model's first) instead of all; its Dice cost is
            in the README.
        backend: what runs the network: ``torch``, or ``onnx`` (ONNX Runtime on the CPU, the
            network exported in memory at the first scan; extra ``[onnx]``).
        precision: what the network computes in: ``auto`` (bfloat16 on a CPU with AMX, float16
            on CUDA, else float32; :mod:`synthseg_lite.inference.precision`), ``float32``,
            ``bfloat16`` or ``float16`` (CUDA). Probabilities are always summed in float32.
        overlap: sliding-window overlap fraction in [0, 1).
        sw_batch_size: windows per network call.
        roi_size: sliding-window size in voxels (None: the model's training patch).
        keep_largest: connected-component clean-up: ``topology`` (SynthSeg's: the brain's
            largest component, then, for a structure model, that of each topological class;
            then white matter takes the grey matter and background it encloses:
            :func:`white_matter_enclosures`),
            ``brain``, ``labels`` (each class's largest component) or ``none``
            (:func:`~synthseg_lite.inference.postprocess.keep_largest_component`).
        refine: ``gmm``: the network's probabilities are refined by a Gaussian intensity model
            fitted to each scan (:mod:`synthseg_lite.inference.refine`; the background
            probability is kept; a label moves at most ``refine.GUARD_MM`` from where the
            network has it; a white-matter lesion as dark as grey matter becomes grey matter
            where the network hesitates, unless white matter encloses it and
            ``keep_largest=topology`` gives it back: ``benchmarks/refine_checks.py``);
            ``none``: used as they are.
        smooth_sigma_vox: the network's probabilities are smoothed with a Gaussian of this
            many voxels of the model's grid before the refinement and the clean-up
            (:mod:`synthseg_lite.inference.smooth`); 0: not smoothed; None: the model's default
            (SynthSeg's 0.5 for a structure model, none for a tissue model:
            :func:`~synthseg_lite.inference.smooth.default_sigma_vox`).
        percentiles: intensity percentiles mapped to 0 and 1.
        crop_foreground: run the network on the bounding box of the non-zero voxels only.
        save_posteriors: also write the class probabilities on the input grid.
        save_resampled: also write the scan itself on the segmentation's grid (``<name>_resampled``,
            its own intensities, linear and anti-aliased; ``mri_synthseg --resample``), to view a
            thick-slice scan under its ``output_mm`` segmentation voxel for voxel; needs
            ``output_mm`` (without it the segmentation is on the scan's own grid already).
        save_qc: write a QC PNG per scan.
        threads: CPU threads for torch (None: torch's default).
        progress: show a progress bar over scans.
        labels: output values: ``native`` (structures: FreeSurfer aseg values; tissue: 1 GM,
            2 WM, 3 CSF) or ``fast`` (FSL FAST's 1 CSF, 2 GM, 3 WM for tissue outputs, including
            the tissue view of a structure model).
        overwrite: segment scans again whose outputs exist (default: skip them, so an interrupted
            study resumes).
        num_parts: split the study into this many parts (array jobs).
        part_id: which part (0-based) this run segments: every ``num_parts``-th scan of the
            sorted study, starting at ``part_id``.
        qc_threshold: scans whose QC score is below it get ``qc_flag=1`` in ``volumes.csv``
            (None: the model's own, stored in its file by ``benchmarks/qc_calibration.py``; 0.70,
            :data:`QC_THRESHOLD`, for a model without one; an ensemble: the lowest of its members').
        report: write ``report.html`` for the study (all rows of ``volumes.csv``).
        max_voxels: a scan whose header declares more voxels is skipped before it is read
            (default 2**28: twice a 0.5 mm 512^3 head); also the largest ``output_mm`` grid.
        output_mm: voxel size (mm) of the written segmentation: ``None`` (the default) writes it
            on the scan's own grid; a number writes it on an isotropic grid of that size over the
            scan's field of view, in RAS voxel order, as SynthSeg writes 1 mm whatever the scan
            (``output_mm=1``: a 5 mm clinical scan gets a 1 mm segmentation, its thin structures
            and volumes as the network saw them; the posteriors and QC figure follow).
        pose_max_deg: a brain tilted more than this (degrees) from the training maps' mean pose,
            read from the first pass's structures, is segmented again turned into that pose and
            its probabilities turned back (:mod:`synthseg_lite.inference.upright`; one more set of
            network passes for such a scan); null: never. Structure networks only, so also the
            default ``model=tissue`` (a tissue network's classes, ``tissue_fast``, carry no pose).
    """

    device: str = "auto"
    tta: str = "flip"
    fast: bool = False
    backend: str = "torch"
    precision: str = "auto"
    overlap: float = 0.5
    sw_batch_size: int = 1
    roi_size: list[int] | None = None
    keep_largest: str = "topology"
    refine: str = "gmm"
    smooth_sigma_vox: float | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    crop_foreground: bool = True
    save_posteriors: bool = False
    save_resampled: bool = False
    save_qc: bool = True
    threads: int | None = None
    progress: bool = True
    labels: str = "native"
    overwrite: bool = False
    num_parts: int = 1
    part_id: int = 0
    qc_threshold: float | None = None
    report: bool = True
    max_voxels: int = MAX_VOXELS
    output_mm: float | None = None
    pose_max_deg: float | None = POSE_MAX_DEG

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend == "onnx" and self.precision not in ("auto", "float32"):
            raise ValueError(
                f"backend=onnx runs in float32, not precision={self.precision} "
                "(use backend=torch, or precision=auto)"
            )
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.keep_largest not in KEEP_LARGEST:
            raise ValueError(
                f"keep_largest must be one of {KEEP_LARGEST}, got {self.keep_largest!r}"
            )
        if self.refine not in REFINE:
            raise ValueError(f"refine must be one of {REFINE}, got {self.refine!r}")
        sigma = self.smooth_sigma_vox
        if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(
                f"smooth_sigma_vox must be a number of voxels >= 0 (0: no smoothing), "
                f"got {self.smooth_sigma_vox}"
            )
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(
                f"percentiles must be [low, high] in [0, 100], got {list(self.percentiles)}"
            )
        if self.labels not in LABEL_CONVENTIONS:
            raise ValueError(f"labels must be one of {LABEL_CONVENTIONS}, got {self.labels!r}")
        if self.qc_threshold is not None and not 0 <= self.qc_threshold <= 1:
            raise ValueError(f"qc_threshold must be in [0, 1], got {self.qc_threshold}")
        select_part([], self.num_parts, self.part_id)  # validates num_parts / part_id
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or null), got {self.threads}")
        if self.max_voxels < 1:
            raise ValueError(f"max_voxels must be >= 1, got {self.max_voxels}")
        mm = self.output_mm
        if mm is not None and not (math.isfinite(mm) and mm > 0):
            raise ValueError(
                f"output_mm must be a voxel size > 0 in mm (or null: the scan's grid), got {mm}"
            )
        deg = self.pose_max_deg
        if deg is not None and not (math.isfinite(deg) and deg >= 0):
            raise ValueError(
                f"pose_max_deg must be an angle >= 0 in degrees (or null: never turn a scan), "
                f"got {deg}"
            )
        if self.save_resampled and mm is None:
            raise ValueError(
                "save_resampled=true writes the scan on the segmentation's grid, which without "
                "output_mm is the scan's own: add output_mm=1 (as mri_synthseg --resample)"
            )


def build_predictor(
    nets: Sequence[torch.nn.Module], meta, opts: InferenceOptions,
    tissue_group: np.ndarray | None = None,
) -> Predictor:
    """The :class:`Predictor` of ``opts`` (its ``fast`` mode: no TTA, one slicing axis; its
    ``onnx`` backend: each network run by ONNX Runtime; its ``precision``: each torch network run
    under autocast, the dtype chosen per call from the input's device; ``tissue_group``: a
    structure model written as tissue, :func:`~synthseg_lite.inference.predictor.tissue_output`)."""
    if opts.backend == "onnx":
        nets = [OnnxNet(net) for net in nets]
    elif opts.precision != "float32":
        nets = [AutocastNet(net, opts.precision) for net in nets]
    return Predictor(
        nets, meta, "none" if opts.fast else opts.tta, opts.roi_size, opts.overlap,
        opts.sw_batch_size, views=1 if opts.fast else None, tissue_group=tissue_group,
    )


def load_predictor(
    model: str | Path, opts: InferenceOptions, load: Callable = load_ensemble
) -> tuple[Predictor, ModelMeta, torch.device, Path]:
    """The one place that turns options into a ready predictor: the device (``opts.device``), the
    CPU threads (``opts.threads``), the model (a shipped name, a file or a run folder) and its
    networks (``load(path, device)``: :func:`~synthseg_lite.inference.predictor.load_ensemble`
    or a cached version of it).

    Returns:
        (predictor, the first member's metadata, device, resolved model path). The classes
        written are ``predictor.target`` (the tissue preset for ``model=tissue``).

    Raises:
        ValueError: bad device (``backend=onnx``: the CPU only), missing or unusable model.
    """
    onnx = opts.backend == "onnx"
    device = torch.device("cpu") if onnx and opts.device == "auto" else resolve_device(opts.device)
    if onnx and device.type != "cpu":
        raise ValueError(f"backend=onnx runs on the CPU, not device={opts.device} (use device=cpu)")
    if opts.precision == "float16" and device.type != "cuda":
        raise ValueError(
            f"precision=float16 is for CUDA, not {device.type} (use bfloat16, float32 or auto)"
        )
    set_threads(opts.threads)
    numpy_hugepages(False)  # first touches of large arrays stalled for up to 1 s
    path = resolve_model(model)
    nets, meta = load(path, device)
    if not onnx:
        log.info("network precision: %s", str(network_dtype(opts.precision, device))[6:])
    group = tissue_output(model, meta)
    if group is not None:
        log.info("model=tissue: the structure network, its structures written as GM, WM, CSF "
                 "(model=tissue_fast: the dedicated tissue network, faster, less accurate)")
    return build_predictor(nets, meta, opts, group), meta, device, path


def _structure_index(target: TargetPreset) -> dict[int, int] | None:
    """``{FreeSurfer value: class index}`` of a target's foreground classes when every one is a
    structure of ``labels.STRUCTURE_GROUPS``; None otherwise (e.g. GM, WM, CSF)."""
    index = {v: k for k, v in enumerate(target.values) if k}
    structures = {v for values in STRUCTURE_GROUPS.values() for v in values}
    return index if index and set(index) <= structures else None


def qc_groups(target: TargetPreset) -> dict[str, list[int]]:
    """Class groups scored by QC: the structure groups (``labels.STRUCTURE_GROUPS``) when they
    cover every class of the target, else one group per class (e.g. GM, WM, CSF)."""
    index = _structure_index(target)
    if index is None:
        return {target.names[k]: [k] for k in range(1, target.n_classes)}
    groups = {
        name: [index[v] for v in values if v in index] for name, values in STRUCTURE_GROUPS.items()
    }
    return {name: classes for name, classes in groups.items() if classes}


def topology_groups(target: TargetPreset) -> list[list[int]]:
    """Class indices of each topological class of a structure target (SynthSeg's
    ``labels.TOPOLOGY_GROUPS``, every other structure alone), for ``keep_largest=topology``;
    none for a target that is not all FreeSurfer structures (e.g. GM, WM, CSF, whose CSF is
    many pieces), so that its clean-up is ``brain``'s and :func:`white_matter_enclosures`'."""
    index = _structure_index(target)
    if index is None:
        return []
    groups = [[index[v] for v in values if v in index] for values in TOPOLOGY_GROUPS]
    grouped = {v for values in TOPOLOGY_GROUPS for v in values}
    groups += [[k] for v, k in index.items() if v not in grouped]  # in class order
    return [group for group in groups if group]


def white_matter_enclosures(target: TargetPreset) -> list[tuple[int, list[int]]]:
    """``(host, classes)`` of ``keep_largest=topology``'s enclosure rule: white matter takes the
    grey matter and background it encloses (a white-matter lesion as dark as grey matter, or
    darker, that the network or the intensity refinement called grey matter or background;
    FreeSurfer labels it WM-hypointensities, SynthSeg white matter).

    * A FreeSurfer structure target: each cerebral hemisphere's white matter (2, 41) takes the
      cortex (3, 42) and background it encloses. Cortex lies at the brain's surface, so no real
      cortex is enclosed by white matter alone.
    * A tissue target (background, GM, WM, CSF): WM takes GM and background. Deep grey matter
      is not enclosed by white matter alone either: it reaches the ventricles, and through the
      amygdala, hippocampus and basal forebrain the cortex (on the 7 real scans checked, the
      shipped tissue model's WM enclosed 3-204 GM voxels per scan, no component over 47).

    None for other targets."""
    if is_tissue_target(target):
        return [(2, [0, 1])]
    index = _structure_index(target)
    if index is None:
        return []
    fills = [0] + [index[v] for v in (3, 42) if v in index]
    return [(index[v], fills) for v in (2, 41) if v in index and len(fills) > 1]


def segment_volume(
    data: np.ndarray,
    affine: np.ndarray,
    predictor: Predictor,
    opts: InferenceOptions,
    device: torch.device,
    name: str = "",
) -> NativePrediction:
    """Segment one volume held in memory.

    On an out-of-memory error the volume is segmented again with a smaller network batch, then
    on the CPU (:func:`~synthseg_lite.inference.predictor.with_oom_fallback`, one warning line).

    Args:
        data: (X, Y, Z) array in the on-disk voxel order.
        affine: (4, 4) its voxel -> world affine.
        predictor: the ensemble.
        opts: options (percentiles, cropping, connected components, posteriors).
        device: where to compute.
        name: the scan, for the out-of-memory warning.

    Returns:
        :class:`~synthseg_lite.inference.native.NativePrediction` in the classes of
        ``predictor.target`` (a structure model written as tissue: merged after the clean-up),
        with its QC scores (:func:`~synthseg_lite.inference.postprocess.qc_scores` over
        :func:`qc_groups` of the model's own classes).

    Raises:
        ValueError: empty or constant image; a network grid (the field of view at the model's
            voxel size) or an ``output_mm`` grid of more than ``opts.max_voxels`` voxels.
    """
    meta = predictor.meta
    affine64 = np.asarray(affine, dtype=np.float64)
    # both grids are resampled over the whole field of view: too large is refused, not an OOM kill
    grids = [(meta.spacing_mm, "at the model's", "check the voxel sizes in its header")]
    if opts.output_mm is not None:
        grids.append((opts.output_mm, "at output_mm =", "choose a larger output_mm"))
    for mm, at, fix in grids:
        grid, _, _ = grid_for(data.shape, affine64, mm)
        if math.prod(grid) > opts.max_voxels:
            fov = np.asarray(data.shape[:3]) * np.sqrt((affine64[:3, :3] ** 2).sum(0))
            raise ValueError(
                f"{name or 'scan'}: its field of view ({' x '.join(f'{f:.0f}' for f in fov)} mm) "
                f"makes a {'x'.join(map(str, grid))} grid {at} {mm:g} mm, more than "
                f"max_voxels={opts.max_voxels}: {fix}"
            )

    @torch.inference_mode()
    def attempt(dev: torch.device) -> NativePrediction:
        # contiguous: a flipped view (nibabel.as_closest_canonical) has negative strides
        x = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32), device=dev)
        # a 2D network's slices are padded pass by pass: the volume, and the K-channel sum over
        # it, keep the box's own size (structures, OASIS: 28 % fewer voxels than padded)
        divisor = meta.unet.divisor if predictor.slices is None else 1
        image, geom = preprocess(
            x, affine, meta.spacing_mm, divisor, tuple(opts.percentiles), opts.crop_foreground
        )
        del x
        target = meta.label_table.target
        probs, pose = segment_in_pose(
            lambda im: predictor(im)[0], image, predictor(image)[0], target, meta.spacing_mm,
            opts.pose_max_deg, divisor, name,
        )
        sigma = opts.smooth_sigma_vox
        smooth_probabilities_(probs, default_sigma_vox(target) if sigma is None else sigma)
        if opts.refine == "gmm":
            refine_with_intensities(
                probs,
                image[0, 0],
                shared_classes(target),
                interior_mean=interior_means(target),
                guard=guard_voxels(meta.spacing_mm),
            )
        signal = image[0, 0] >= FOV_SIGNAL  # for the field-of-view check after the clean-up
        del image
        # one argmax over the K channels serves the clean-up, the QC scores and the labels
        probs, labels = keep_largest_component(
            probs,
            opts.keep_largest,
            inplace=True,
            return_labels=True,
            groups=topology_groups(meta.label_table.target),
            enclosures=white_matter_enclosures(meta.label_table.target),
        )
        qc = qc_scores(probs, qc_groups(meta.label_table.target), labels)
        fov_cut = field_of_view_cut(labels, signal, geom, meta.spacing_mm)
        del signal
        if opts.output_mm is not None:
            geom = output_geometry(geom, opts.output_mm)
        # a structure model written as tissue is merged here, after the clean-up and the QC
        # (they work on its own classes), as its posteriors are resampled
        pred = to_native(probs, geom, keep_posteriors=opts.save_posteriors, labels=labels,
                         group=predictor.tissue_group, n_groups=predictor.target.n_classes)
        pred.qc, pred.fov_cut = qc, fov_cut
        pred.pose = None if pose is None else pose.record()
        return pred

    return with_oom_fallback(attempt, predictor, device, name)
