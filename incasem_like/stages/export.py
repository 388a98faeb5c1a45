"""Export a dataset as a folder of 2D TIFF slices, one per z, optionally back in its original (pre-crop) frame.

Slabs one chunk deep (the dataset's whole y-x extent) are read by a thread pool and written slice by slice, so
memory is bounded by the slab size whatever the number of slices. The slices go to a hidden temporary folder
that is renamed to OUT_DIR only once every slice is written: an interrupted export never looks complete.

The original frame is the TIFF stack a dataset was converted from: `convert` records the stack's shape and the
world position of its first voxel (`source.shape_voxels`, `source.frame_offset_nm`). A dataset derived from
another (a prediction of a cropped raw, a cleaned label set, ...) records that dataset as `source.dataset`, and
its own offset in nm places it in the same frame, so `--uncrop` follows those records back to the conversion.
"""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from tqdm import tqdm

from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import Coordinate, Roi, nm_text, roi_text, to_world
from incasem_like.stages.convert import TIFF_SUFFIXES
from incasem_like.store.datasets import DatasetPath, Volume, dataset_meta, open_dataset, recorded_source
from incasem_like.store.mrc import is_mrc_path, write_mrc

#: kinds whose uint8 0/1 data are written as 0/255, Fiji's binary convention (convert --labels reads it back as 0/1)
BINARY_KINDS = ("labels", "mask")
MIN_DIGITS = 4
#: zlib level 1 (Fiji reads it) for all but images: labels, masks and probability maps are mostly 0 and shrink
#: ~10-100x, while EM intensities shrink to only ~0.85x at a tenth of the writing speed (34 vs 318 M voxels/s)
COMPRESSION: dict[str, Any] = {"compression": "zlib", "compressionargs": {"level": 1}}


def slice_names(count: int) -> list[str]:
    """`slice_0000.tif` ..: the z index zero-padded to at least 4 digits, so names sort in z order."""
    width = max(MIN_DIGITS, len(str(count - 1)))
    return [f"slice_{z:0{width}d}.tif" for z in range(count)]


@dataclass(frozen=True)
class ExportPlan:
    """What to write: the dataset, the world ROI of the exported stack, whether 0/1 becomes 0/255 and whether
    slices are compressed."""

    volume: Volume
    frame: Roi
    scale_binary: bool
    compress: bool

    @property
    def frame_shape(self) -> Coordinate:
        return self.frame.shape / self.volume.voxel_size

    @property
    def placement(self) -> Coordinate:
        """The dataset's first voxel in the exported stack (voxels, z y x)."""
        return (self.volume.offset - self.frame.offset) / self.volume.voxel_size

    def z_pieces(self) -> list[tuple[int, int]]:
        """Ranges of exported slices, cut on the dataset's z chunk grid (zero slices outside it likewise)."""
        depth, first, count = self.volume.chunk_shape[0], self.placement[0], self.frame_shape[0]
        cuts = sorted({0, count, *range(first % depth, count, depth)})
        return list(zip(cuts, cuts[1:]))


def plan_export(dataset: str, uncrop: bool, keep_values: bool, threads: int) -> ExportPlan:
    """Open and check the dataset, find the frame to export (`uncrop`: the original one) and the value rule."""
    path = DatasetPath.parse(dataset)
    volume = open_dataset(path)
    frame = original_frame(path, volume) if uncrop else volume.roi
    kind = dataset_meta(path).get("kind")
    scale_binary = (
        not keep_values
        and kind in BINARY_KINDS
        and volume.dtype == np.uint8
        and _max_value(volume, threads) <= 1  # uint8 instance labels keep their values
    )
    return ExportPlan(volume, frame, scale_binary, compress=kind != "image")


def _max_value(volume: Volume, threads: int) -> int:
    """The dataset's largest value, read in slabs one chunk deep."""
    depth = volume.chunk_shape[0]
    with ThreadPoolExecutor(threads) as pool:
        return max(pool.map(lambda z: int(volume.read((slice(z, z + depth),)).max()), range(0, volume.shape[0], depth)))


def original_frame(path: DatasetPath, volume: Volume) -> Roi:
    """World ROI of the TIFF stack `path` was converted from, following recorded `source.dataset`s back to
    the conversion; checked to hold the dataset on its voxel grid."""
    current, seen = path, {path}
    while "shape_voxels" not in (source := dataset_meta(current).get("source", {})):
        if "dataset" not in source:
            raise FieldError(
                f"{{uncrop}}: {current} records neither the crop of a conversion nor the dataset it was derived from "
                "(written by another tool?); export it without {uncrop}"
            )
        current = _recorded_dataset(source["dataset"], current)
        if current in seen:
            raise FieldError(
                f"{{uncrop}}: the recorded sources of {path} form a loop at {current}; export without {{uncrop}}"
            )
        seen.add(current)
    converted_voxel_size = open_dataset(current, require_complete=False).voxel_size
    frame = Roi(to_world(source["frame_offset_nm"]), Coordinate(source["shape_voxels"]) * converted_voxel_size)
    voxel_size = volume.voxel_size
    if any((*((frame.offset - volume.offset) % voxel_size), *(frame.shape % voxel_size))):
        raise FieldError(
            f"{{uncrop}}: the original frame of {path} ({roi_text(frame)}, recorded by {current}) is not a whole "
            f"number of its {nm_text(voxel_size)} voxels; export the full-resolution dataset, or without {{uncrop}}"
        )
    if not frame.contains(volume.roi):
        raise FieldError(
            f"{{uncrop}}: {path} ({roi_text(volume.roi)}) reaches outside its original frame ({roi_text(frame)}, "
            f"recorded by {current}); its offset does not match the conversion, export it without {{uncrop}}"
        )
    return frame


def _recorded_dataset(recorded: str, derived: DatasetPath) -> DatasetPath:
    """The dataset `derived` was made from (`recorded_source`); a `FieldError` when it is gone."""
    source = recorded_source(recorded, derived)
    if source is not None:
        return source
    raise FieldError(
        f"{{uncrop}}: {derived} was derived from {recorded}, which is gone (looked in {derived.container} too); "
        "export without {uncrop}, or restore that dataset"
    )


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """An existing OUT_DIR is replaced only with `overwrite`, and only if it holds nothing but TIFF files."""
    if not out_dir.exists():
        return
    if not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite to replace it")
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a folder of slices; choose another OUT_DIR")
    others = sorted(p.name for p in out_dir.iterdir() if not (p.is_file() and p.suffix.lower() in TIFF_SUFFIXES))
    if others:
        raise UserError(
            f"{out_dir} holds {others[0]!r}, which is no TIFF slice; --overwrite only replaces a folder of slices, "
            "so choose another OUT_DIR"
        )


def export(plan: ExportPlan, out_dir: Path, threads: int = 2, progress: bool = False) -> dict:
    """Write the plan's slices into `out_dir` (replacing a folder that `check_output_dir` accepted). A slice that
    cannot be read or written is a `UserError`; `out_dir` is then left as it was."""
    start = time.perf_counter()
    partial_dir = out_dir.with_name(f".{out_dir.name}.incomplete")
    names = slice_names(plan.frame_shape[0])
    pieces = plan.z_pieces()
    try:
        if partial_dir.exists():  # left by an interrupted export
            shutil.rmtree(partial_dir)
        partial_dir.mkdir(parents=True)
        with ThreadPoolExecutor(threads) as pool:
            written = pool.map(partial(_write_slices, plan, partial_dir, names), pieces)
            for _ in tqdm(written, total=len(pieces), unit="slab", disable=not progress, leave=False):
                pass
    except OSError as error:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise UserError(
            f"{out_dir}: cannot write the slices ({error.strerror or error}: {error.filename}); "
            "choose a writable location with enough space"
        ) from None
    except UserError:  # damaged data
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    if out_dir.exists():
        replaced = out_dir.with_name(f".{out_dir.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        out_dir.rename(replaced)
        partial_dir.rename(out_dir)
        shutil.rmtree(replaced)
    else:
        partial_dir.rename(out_dir)
    return {"names": names, "seconds": round(time.perf_counter() - start, 3)}


def frame_slab(plan: ExportPlan, piece: tuple[int, int]) -> np.ndarray:
    """Slices piece[0]..piece[1]-1 of the exported stack: the dataset's data where it lies, zeros elsewhere, 0/1
    as 0/255 where the plan says so."""
    volume = plan.volume
    (z0, y0, x0), (depth, height, width) = plan.placement, volume.shape
    slab = np.zeros((piece[1] - piece[0], *plan.frame_shape[1:]), volume.dtype)
    begin, end = max(piece[0], z0), min(piece[1], z0 + depth)
    if begin < end:
        slab[begin - piece[0] : end - piece[0], y0 : y0 + height, x0 : x0 + width] = volume.read(
            (slice(begin - z0, end - z0),)
        )
    if plan.scale_binary:
        slab *= 255
    return slab


def _write_slices(plan: ExportPlan, folder: Path, names: list[str], piece: tuple[int, int]) -> None:
    for z, plane in enumerate(frame_slab(plan, piece), start=piece[0]):
        tifffile.imwrite(folder / names[z], plane, **(COMPRESSION if plan.compress else {}))


def check_output_file(path: Path, overwrite: bool) -> None:
    """An MRC output: a new file, or with `overwrite` an existing MRC file (never a folder)."""
    if not is_mrc_path(path) or path.name.lower().endswith((".gz", ".bz2")):
        raise UserError(f"{path}: name the MRC file .mrc, .rec, .map or .st (uncompressed)")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the name of the MRC file to write")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")


def export_mrc(plan: ExportPlan, path: Path, threads: int = 2, progress: bool = False) -> dict:
    """Write the plan's stack as one MRC file with the dataset's voxel size (`store.mrc.write_mrc`: atomic, slab
    by slab; uint8 becomes mode 6, uint16)."""
    start = time.perf_counter()
    pieces = plan.z_pieces()
    try:
        with ThreadPoolExecutor(threads) as pool:
            slabs = zip((piece[0] for piece in pieces), pool.map(partial(frame_slab, plan), pieces))
            shown = tqdm(slabs, total=len(pieces), unit="slab", disable=not progress, leave=False)
            write_mrc(path, tuple(plan.frame_shape), plan.volume.dtype, plan.volume.voxel_size_nm, shown)
    except OSError as error:
        raise UserError(
            f"{path}: cannot write it ({error.strerror or error}); choose a writable location with enough space"
        ) from None
    return {"seconds": round(time.perf_counter() - start, 3)}
