"""Offline export of synthetic (image, target) pairs, as the lab2im-based thesis pipeline did.

Writes ``n`` samples of :class:`~synthseg_lite.synth.SynthGenerator` to disk:

* ``layout="nifti"``: ``images/NAME.nii.gz`` (float32 in [0, 1]) and ``labels/NAME.nii.gz``
  (uint8, or int16 beyond 255, the target's label *values*); RAS affine with ``synth.voxel_mm`` voxels, the
  volume centred on the origin.
* ``layout="nnunet"``: an nnU-Net v2 raw dataset, ``imagesTr/NAME_0000.nii.gz``,
  ``labelsTr/NAME.nii.gz`` (class *indices* 0..K-1, as nnU-Net requires consecutive labels) and
  ``dataset.json``. Name the output ``$nnUNet_raw/DatasetXXX_Name`` to train nnU-Net on it.
* ``png2d=True``: also the central axial slice of each sample, centre-padded/cropped to
  ``png2d_size`` squared, as 8-bit PNGs in ``png2d/`` (same two layouts, ``file_ending`` ".png").
* ``montage=True``: ``montage.png``, middle axial/coronal/sagittal slices of the first samples,
  plain and with the target overlaid.
* always: ``export.json`` (settings, for provenance) and ``samples.csv`` (per-sample parameters).

Sample ``i`` is element ``i % batch_size`` of the batch drawn with
``make_generator(device, seed, step=i // batch_size)``: the files are a pure function of
(label maps, settings, seed, batch_size, device type) and do not depend on ``n``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from synthseg_lite.data import (
    DataConfig,
    PhantomConfig,
    make_label_table,
    phantom_label_maps,
    resolve_paths,
)
from synthseg_lite.data import load_label_maps as load_maps
from synthseg_lite.io import atomic_write, save_volume
from synthseg_lite.runtime import resolve_device
from synthseg_lite.labels import LabelTable
from synthseg_lite.synth import SynthConfig, SynthGenerator, make_generator

__all__ = ["ExportConfig", "export_dataset", "load_label_maps", "resolve_device", "voxel_affine"]

log = logging.getLogger(__name__)

LAYOUTS = ("nifti", "nnunet")
PREFIX = "synth"
_MANAGED_TOP = ("dataset.json", "export.json", "samples.csv", "montage.png")
_MANAGED_FILE = re.compile(rf"^{PREFIX}_\d+(_0000)?\.(nii\.gz|png)$")


@dataclass
class ExportConfig:
    """What to export and where (``conf/export.yaml`` mirrors these defaults).

    Attributes:
        output: destination folder (created; must be empty unless ``overwrite``).
        n: number of samples.
        label_maps: folder, glob pattern or file of label maps; None uses ``n_phantoms``
            embedded phantoms of ``phantom_shape`` voxels.
        labels: label protocol, as ``data.labels`` in training: ``freesurfer``, ``auto`` (every
            value found in the maps) or a YAML/TSV protocol file.
        target: target preset name (``tissue``, ``tissue_ventricular``, ``synthseg``), a
            mapping {label: class index}, or None (``tissue`` for ``freesurfer``, else the
            protocol file's target or every label itself).
        seed: random seed.
        batch_size: samples generated per call.
        device: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``...
        layout: ``nifti`` or ``nnunet``.
        png2d: also write central axial slices as PNG (the 2D variant).
        png2d_size: side of the square PNGs, voxels.
        montage: write ``montage.png``.
        montage_samples: rows of the montage (first samples).
        overwrite: allow a non-empty output (files of an earlier export there are replaced).
        n_phantoms: number of embedded phantoms when ``label_maps`` is None.
        phantom_shape: phantom size, voxels (1 mm).
    """

    output: str
    n: int = 20
    label_maps: str | None = None
    labels: str = "freesurfer"
    target: str | dict | None = None
    seed: int = 0
    batch_size: int = 2
    device: str = "auto"
    layout: str = "nifti"
    png2d: bool = False
    png2d_size: int = 256
    montage: bool = True
    montage_samples: int = 6
    overwrite: bool = False
    n_phantoms: int = 4
    phantom_shape: list[int] = field(default_factory=lambda: [160, 192, 160])

    def __post_init__(self) -> None:
        for name in ("n", "batch_size", "png2d_size", "n_phantoms", "seed", "montage_samples"):
            v, low = getattr(self, name), 0 if name in ("seed", "montage_samples") else 1
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")  # noqa: TRY004
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if len(self.phantom_shape) != 3 or min(self.phantom_shape) < 8:
            raise ValueError(f"phantom_shape must be 3 ints >= 8, got {list(self.phantom_shape)}")


def voxel_affine(shape: tuple[int, ...], voxel_mm: float) -> np.ndarray:
    """(4, 4) RAS affine with isotropic ``voxel_mm`` voxels, the volume centred on the origin."""
    aff = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = [-(s - 1) / 2 * voxel_mm for s in shape]
    return aff


def load_label_maps(spec: str | None, table: LabelTable, n_phantoms: int = 4,
                    phantom_shape: tuple[int, int, int] = (160, 192, 160),
                    seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Names and a stacked (N, X, Y, Z) uint8 array of generation indices (RAS, 1 mm).

    Args:
        spec: a folder, a glob or a file (:func:`synthseg_lite.data.resolve_paths`); None builds
            ``n_phantoms`` phantoms instead.
        table: label table used to encode the values.
    """
    if spec is None:
        return phantom_label_maps(PhantomConfig(n_phantoms, list(phantom_shape), seed), table)
    return load_maps(resolve_paths(spec), table)


def _prepare_output(out: Path, overwrite: bool, create: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; with ``create``, clean and create it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output={str(out)!r} is not empty (set overwrite=true to replace "
                             "an earlier export)")
        for f in list(out.rglob("*")) if create else []:  # only files this module writes
            ours = (_MANAGED_FILE.match(f.name) or (f.parent == out and f.name in _MANAGED_TOP)
                    or (f.parent.name == "png2d" and f.name == "dataset.json"))
            if ours and f.is_file():
                f.unlink()
    if create:
        out.mkdir(parents=True, exist_ok=True)


def _pad_crop_2d(a: np.ndarray, size: int) -> np.ndarray:
    """Centre-pad (zeros) or centre-crop a 2D array to (size, size)."""
    out = np.zeros((size, size), a.dtype)
    src, dst = [], []
    for n in a.shape:
        k = min(n, size)
        src.append(slice((n - k) // 2, (n - k) // 2 + k))
        dst.append(slice((size - k) // 2, (size - k) // 2 + k))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _write_csv(records: list[dict], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)

    atomic_write(path, write)


def _dataset_json(table: LabelTable, n: int, file_ending: str, extra: dict) -> dict:
    """nnU-Net v2 ``dataset.json`` (labels are class indices: nnU-Net needs them consecutive)."""
    return {"channel_names": {"0": "MRI"},
            "labels": {name: i for i, name in enumerate(table.target.names)},
            "numTraining": n, "file_ending": file_ending, "name": "synthseg_lite synthetic",
            "description": "SynthSeg-style synthetic MRI", **extra}


def _views(vol: np.ndarray) -> list[np.ndarray]:
    """Middle axial, coronal, sagittal slices of an (X, Y, Z) RAS volume, oriented for display."""
    x, y, z = (s // 2 for s in vol.shape)
    return [np.rot90(vol[:, :, z]), np.rot90(vol[:, y, :]), np.rot90(vol[x, :, :])]


def _save_montage(rows: list[tuple[str, np.ndarray, np.ndarray]], n_classes: int,
                  path: Path) -> None:
    """One row per sample: 3 image views, then the same views with the target overlaid.

    Args:
        rows: (title, image (X, Y, Z) in [0, 1], target (X, Y, Z) class indices) per sample.
        n_classes: number of target classes (overlay colours).
    """
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    base = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    cmap = ListedColormap([base(i % base.N) for i in range(max(n_classes, 2))])
    n = len(rows)
    fig = Figure(figsize=(12, 2.15 * n))
    axes = fig.subplots(n, 6, squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - 0.12 / n, wspace=0.02,
                        hspace=0.14)
    for r, (title, image, target) in enumerate(rows):
        for c, (im, tg) in enumerate(zip(_views(image), _views(target))):
            for k, ax in enumerate((axes[r, c], axes[r, c + 3])):
                ax.imshow(im, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if k:
                    ax.imshow(np.ma.masked_equal(tg, 0), cmap=cmap, vmin=0, vmax=cmap.N - 1,
                              alpha=0.4, interpolation="nearest")
                ax.set_axis_off()
        axes[r, 0].text(0, 1.02, title, transform=axes[r, 0].transAxes, fontsize=8, va="bottom")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def _describe(p: dict[str, float]) -> str:
    res = ("native" if p["res_spacing_mm"] == 0
           else f"{p['res_spacing_mm']:.1f} mm iso" if p.get("res_iso", 0)
           else f"{p['res_spacing_mm']:.1f} mm axis {int(p['res_axis'])}")
    bias = f"{p['bias_std']:.2f}" if p["bias_std"] > 0 else "off"
    return (f"res {res} | bias {bias} | bg {p.get('background_mean', 0):.0f} | "
            f"gamma {p['gamma']:.2f} | scale {p['scale_mean']:.2f} | flip {int(p['flip'])} "
            f"strip {int(p['skull_strip'])}")


@dataclass
class SampleWriter:
    """Where and how one sample's files are written."""

    out: Path
    nnunet: bool
    lut: np.ndarray  # class index -> value written in the label files (uint8 or int16)
    affine: np.ndarray
    png2d_size: int | None  # None: no PNGs

    def dirs(self, root: Path) -> tuple[Path, Path]:
        if self.nnunet:
            return root / "imagesTr", root / "labelsTr"
        return root / "images", root / "labels"

    def write(self, name: str, image: np.ndarray, target: np.ndarray) -> None:
        """image (X, Y, Z) float32 in [0, 1]; target (X, Y, Z) uint8 class indices."""
        img_name = f"{name}_0000" if self.nnunet else name
        img_dir, lab_dir = self.dirs(self.out)
        labels = self.lut[target]
        save_volume(image, self.affine, img_dir / f"{img_name}.nii.gz", dtype=np.float32)
        save_volume(labels, self.affine, lab_dir / f"{name}.nii.gz", dtype=self.lut.dtype)
        if self.png2d_size:
            z, size = image.shape[2] // 2, self.png2d_size
            img_dir, lab_dir = self.dirs(self.out / "png2d")
            grey = np.round(np.clip(np.rot90(image[:, :, z]), 0, 1) * 255).astype(np.uint8)
            _save_png(_pad_crop_2d(grey, size), img_dir / f"{img_name}.png")
            _save_png(_pad_crop_2d(np.rot90(labels[:, :, z]), size), lab_dir / f"{name}.png")


def export_dataset(cfg: ExportConfig, synth: SynthConfig) -> dict:
    """Generate and write ``cfg.n`` samples (see the module docstring for the layout).

    Returns:
        Summary: ``output``, ``n``, ``seconds``, ``samples_per_s``, ``device``.

    Raises:
        ValueError: bad settings, unreadable label maps, non-empty output without ``overwrite``.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device, mps=False)
    out = Path(cfg.output).expanduser()
    _prepare_output(out, cfg.overwrite, create=False)  # fail early, before loading the maps
    if cfg.label_maps is not None:  # overwrite=true never touches an input
        inside = [p for p in resolve_paths(cfg.label_maps)
                  if out.resolve() in Path(p).resolve().parents]
        if inside:
            raise ValueError(f"output={str(out)!r} holds the input label map {inside[0]}; choose "
                             "another output folder")
    table = make_label_table(DataConfig(
        label_maps=cfg.label_maps, labels=cfg.labels, target=cfg.target,
        phantoms=PhantomConfig(cfg.n_phantoms, list(cfg.phantom_shape), cfg.seed)))
    values = np.asarray(table.target.values)
    nnunet = cfg.layout == "nnunet"
    lut = np.arange(len(values)) if nnunet else values
    if lut.min() < 0 or lut.max() > 32767:
        raise ValueError(
            f"target label values {lut.min()}..{lut.max()} do not fit int16 label files"
        )
    lut = lut.astype(np.uint8 if lut.max() <= 255 else np.int16)
    map_names, maps = load_label_maps(cfg.label_maps, table, cfg.n_phantoms, cfg.phantom_shape,
                                      cfg.seed)
    _prepare_output(out, cfg.overwrite, create=True)
    log.info("%d label map(s), %d samples of %s voxels at %g mm on %s -> %s (%s layout)",
             len(maps), cfg.n, list(synth.patch_shape), synth.voxel_mm, device, out, cfg.layout)
    if nnunet and not re.match(r"^Dataset\d{3}_", out.name):
        log.warning("nnU-Net expects the dataset folder to be named DatasetXXX_Name, not %s",
                    out.name)

    gen = SynthGenerator(synth, table).to(device)
    affine = voxel_affine(tuple(synth.patch_shape), synth.voxel_mm)
    writer = SampleWriter(out, nnunet, lut, affine,
                     cfg.png2d_size if cfg.png2d else None)
    width = max(5, len(str(cfg.n - 1)))
    rows, records, bs = [], [], cfg.batch_size
    with tqdm(total=cfg.n, unit="sample", desc="export", disable=None) as bar:
        for step in range((cfg.n + bs - 1) // bs):
            # Full batches always (sample i must not depend on n); extra samples are dropped.
            choice = np.random.default_rng([cfg.seed, step]).integers(len(maps), size=bs)
            labels = torch.from_numpy(maps[choice][:, None]).to(device)
            batch = gen(labels, make_generator(device, cfg.seed, step))
            images = batch.image[:, 0].float().cpu().numpy()
            targets = batch.target.cpu().numpy()  # class indices
            params = {k: v.float().cpu().numpy() for k, v in batch.params.items()}
            for b in range(min(bs, cfg.n - step * bs)):  # file writing only; synthesis is batched
                i = step * bs + b
                name, source = f"{PREFIX}_{i:0{width}d}", map_names[choice[b]]
                writer.write(name, images[b], targets[b])
                p = {k: float(v[b]) for k, v in params.items()}
                records.append({"name": name, "label_map": source, **p})
                if cfg.montage and i < cfg.montage_samples:
                    rows.append((f"{name} ({source}): {_describe(p)}", images[b], targets[b]))
                bar.update(1)

    extra = {"synthseg_lite": {"target": list(table.target.names),
                               "label_values": values.tolist(), "seed": cfg.seed,
                               "voxel_mm": synth.voxel_mm}}
    if nnunet:
        _write_json(_dataset_json(table, cfg.n, ".nii.gz", extra), out / "dataset.json")
        if cfg.png2d:
            _write_json(_dataset_json(table, cfg.n, ".png", extra), out / "png2d" / "dataset.json")
    _write_json({"export": asdict(cfg), "synth": asdict(synth), "device": str(device),
                 "label_maps": map_names, "target_names": list(table.target.names),
                 "label_values_in_files": lut.tolist(), "affine": affine.tolist()},
                out / "export.json")
    _write_csv(records, out / "samples.csv")
    if rows:
        _save_montage(rows, table.target.n_classes, out / "montage.png")
    sec = time.perf_counter() - t0
    log.info("wrote %d samples to %s in %.1f s (%.2f samples/s)", cfg.n, out, sec, cfg.n / sec)
    return {"output": str(out), "n": cfg.n, "seconds": sec, "samples_per_s": cfg.n / sec,
            "device": str(device)}
