"""Stage `convert`: a TIFF stack (a directory of 2D slices or one multi-page TIFF) or a tomogram (one MRC, REC,
MAP or ST file, optionally .gz/.bz2) -> an OME-Zarr dataset.

Workers read slabs of z slices (one output chunk thick, the full y-x extent) and write whole chunks, so the
stack is never loaded at once and peak memory does not grow with the number of slices (an uncompressed MRC file is
memory-mapped; a compressed one is decompressed into each worker's memory). Images keep their dtype: uint8, uint16,
int8, int16 or float32 (float data must be finite: NaN and infinity are refused before anything is written). The
voxel size is given in nm, or read from an MRC header (Å); a header that disagrees with the given one is a warning.
"""

import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property, reduce
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from daisy import Block
from natsort import natsorted

from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage
from incasem_like.core.bounds import Edges, Nanometres, VoxelOffsets, Voxels, WorldOffset
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import WORLD_PER_NM, Coordinate, Roi, nm_text, roi_from_voxels, to_world
from incasem_like.store.datasets import DEFAULT_CHUNK, DatasetPath, bit_depth, create_dataset, open_dataset
from incasem_like.store.mrc import MrcVolume, is_mrc_path, open_mrc

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_DTYPES = tuple(np.dtype(name) for name in ("uint8", "uint16", "int8", "int16", "float32"))
#: z slices per read when a whole source is scanned (unique values, non-finite values)
SCAN_SLICES = 16
LabelMode = Literal["image", "binary_labels", "labels"]


def _kind_of(entry: Path) -> str:
    return "a folder" if entry.is_dir() else "a special file (FIFO, socket or device)"


def check_numbering(files: list[Path]) -> None:
    """Slices numbered in their names must number every slice once: the last number in each name, consecutive,
    none twice (slice_0010.tif and slice_010.tif are one slice twice). Names without a number are not checked."""
    numbers = [int(found[-1]) for path in files if (found := re.findall(r"\d+", path.stem))]
    if len(numbers) != len(files):
        return
    seen: dict[int, Path] = {}
    for number, path in zip(numbers, files):
        if number in seen:
            raise UserError(
                f"{path}: slice number {number} twice (also {seen[number].name}); keep one of them in the folder"
            )
        seen[number] = path
    gaps = sorted(set(range(min(numbers), max(numbers) + 1)) - set(numbers))
    if gaps:
        more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
        raise UserError(
            f"{files[0].parent}: slice number {gaps[0]}{more} is missing between {min(numbers)} and {max(numbers)}; "
            "every z would shift: restore the slice or crop the stack with --roi after converting it whole"
        )


@dataclass
class TiffStack:
    """The z slices of a TIFF source, in z order: either one file per slice or the pages of one file."""

    source: Path
    files: list[Path]

    @classmethod
    def locate(cls, source: str | Path) -> "TiffStack":
        """List the slices (natural sort of the file names: slice_2 before slice_10) without reading them."""
        source = Path(source)
        if source.is_dir():
            visible = sorted(p for p in source.iterdir() if not p.name.startswith("."))
            for entry in visible:
                if not entry.is_file() or entry.is_symlink() and not entry.exists():
                    what = "a dangling link" if entry.is_symlink() and not entry.exists() else _kind_of(entry)
                    raise UserError(
                        f"{entry}: {what}, not a slice file, among the slices; move it out of the folder, so no slice "
                        "is missing or left over unnoticed"
                    )
            files = natsorted((p for p in visible if p.suffix.lower() in TIFF_SUFFIXES), key=lambda p: p.name)
            if not files:
                raise UserError(f"{source}: no .tif/.tiff files in this directory; point SRC at the slice folder")
            others = sorted(p.name for p in visible if p.suffix.lower() not in TIFF_SUFFIXES)
            if others:
                raise UserError(
                    f"{source / others[0]}: not a TIFF slice, among the slices"
                    f"{f' (and {len(others) - 1} more such files)' if len(others) > 1 else ''}; "
                    "move it out of the folder, so no slice is missing or left over unnoticed"
                )
            check_numbering(files)
            return cls(source, files)
        if source.is_file():
            if source.suffix.lower() not in TIFF_SUFFIXES:
                raise UserError(f"{source}: not a TIFF file (.tif/.tiff); pass a slice folder or a multi-page TIFF")
            return cls(source, [source])
        raise UserError(f"{source}: no such file or directory")

    @property
    def multipage(self) -> bool:
        return self.source.is_file()

    @property
    def depth(self) -> int:
        """The number of z slices (not checked)."""
        return len(self._multipage_file.pages) if self.multipage else len(self.files)

    #: a TIFF records no voxel size this tool trusts (give it in nm)
    header_voxel_size_nm = None

    @cached_property
    def _multipage_file(self) -> tifffile.TiffFile:
        return tifffile.TiffFile(self.source)

    def close(self) -> None:
        """Close the multi-page file, if it was opened."""
        if "_multipage_file" in self.__dict__:
            self._multipage_file.close()

    def check(self) -> tuple[tuple[int, int, int], np.dtype]:
        """Check every slice's header (readable, complete, one grayscale plane, same shape and dtype as the
        first) and return the stack's (z, y, x) shape and dtype. Raises `UserError` naming the first bad slice."""
        if self.multipage:
            pages = list(_checked_pages(self.source))
            names = [f"{self.source} page {i}" for i in range(len(pages))]
            headers = [(name, page.shape, page.dtype) for name, page in zip(names, pages)]
        else:
            headers = []
            for path in self.files:
                pages = list(_checked_pages(path))
                if len(pages) != 1:
                    raise UserError(
                        f"{path}: has {len(pages)} pages in a folder of slices; "
                        "pass a multi-page TIFF on its own as SRC"
                    )
                headers.append((str(path), pages[0].shape, pages[0].dtype))
        first_name, shape, dtype = headers[0]
        for name, page_shape, page_dtype in headers:
            if len(page_shape) != 2:
                raise UserError(f"{name}: slice of shape {page_shape} is not a 2D grayscale image; export grayscale")
            if page_shape != shape:
                raise UserError(
                    f"{name}: shape {page_shape} differs from {first_name} {shape}; all slices must have the same shape"
                )
            if page_dtype != dtype:
                raise UserError(
                    f"{name}: dtype {page_dtype} differs from {first_name} {dtype}; all slices must have the same dtype"
                )
        return (len(headers), *shape), np.dtype(dtype)

    def read(self, z_begin: int, z_end: int, yx: tuple[slice, slice]) -> np.ndarray:
        """Slices z_begin..z_end-1, cropped to `yx`, stacked; uncropped slices are decoded in place."""
        first = self._read_slice(z_begin)
        slab = np.empty((z_end - z_begin, *first[yx].shape), dtype=first.dtype)
        slab[0] = first[yx]
        uncropped = slab.shape[1:] == first.shape
        for i, z in enumerate(range(z_begin + 1, z_end), start=1):
            if uncropped:
                self._read_slice(z, out=slab[i])
            else:
                slab[i] = self._read_slice(z)[yx]
        return slab

    def _read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        name = f"{self.source} page {z}" if self.multipage else str(self.files[z])
        try:
            if self.multipage:
                return self._multipage_file.pages[z].asarray(out=out)
            return tifffile.imread(self.files[z], out=out)
        except Exception as error:
            raise RuntimeError(f"{name}: cannot decode slice {z} ({type(error).__name__}: {error})") from error


@dataclass
class MrcSource:
    """The z slices of a tomogram in one MRC/REC/MAP/ST file (`store.mrc`), opened once per process and kept open
    (memory-mapped) for its reads. `voxel_size_nm` (z y x) overrides the header's."""

    source: Path
    voxel_size_nm: tuple[float, float, float] | None = None

    @cached_property
    def _opened(self) -> MrcVolume:
        self._files = ExitStack()
        return self._files.enter_context(open_mrc(self.source, voxel_size_nm=self.voxel_size_nm))

    def close(self) -> None:
        if "_opened" in self.__dict__:
            self._files.close()

    @cached_property
    def header_voxel_size_nm(self) -> tuple[float, float, float] | None:
        """The header's voxel size (nm, z y x); None when it has none, or when an unusable one is overridden."""
        if self.voxel_size_nm is None:
            return self._opened.voxel_size_nm
        try:
            with open_mrc(self.source) as unchanged:
                return unchanged.voxel_size_nm
        except UserError:
            return None

    @property
    def depth(self) -> int:
        return self._opened.data.shape[0]

    def check(self) -> tuple[tuple[int, int, int], np.dtype]:
        """The tomogram's (z, y, x) shape and dtype (in the machine's byte order); header quirks are warnings."""
        for quirk in self._opened.warnings:
            warn_once(quirk)
        data = self._opened.data
        return (int(data.shape[0]), int(data.shape[1]), int(data.shape[2])), data.dtype.newbyteorder("=")

    def read(self, z_begin: int, z_end: int, yx: tuple[slice, slice]) -> np.ndarray:
        data = self._opened.data
        return np.asarray(data[z_begin:z_end, yx[0], yx[1]], dtype=data.dtype.newbyteorder("="))


Source = TiffStack | MrcSource


def locate_source(source: str | Path, voxel_size_nm: Sequence[float] | None = None) -> Source:
    """The slices of `source`: an MRC-family file (by its name), else a TIFF slice folder or multi-page TIFF."""
    if is_mrc_path(Path(source)) and Path(source).is_file():
        return MrcSource(Path(source), tuple(voxel_size_nm) if voxel_size_nm else None)  # type: ignore[arg-type]
    return TiffStack.locate(source)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A warning printed once per process, however often the stage is rebuilt."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def slabs(source: Source) -> Iterator[tuple[int, np.ndarray]]:
    """(first z, slab) over the whole source, `SCAN_SLICES` slices at a time."""
    for z in range(0, source.depth, SCAN_SLICES):
        yield z, source.read(z, min(z + SCAN_SLICES, source.depth), (slice(None), slice(None)))


def unique_values(source: Source) -> np.ndarray:
    """All values in the source, read a slab at a time."""
    return reduce(np.union1d, (np.unique(slab) for _, slab in slabs(source)))


def check_finite(source: Source) -> None:
    """Float data must be finite: the first NaN or infinity is a `UserError` naming its voxel."""
    for z, slab in slabs(source):
        bad = ~np.isfinite(slab)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise UserError(
                f"{source.source}: {slab[tuple(where)]} at voxel (z y x) {(z + int(where[0]), *map(int, where[1:]))} "
                f"({int(bad.sum())} such voxels in slices {z}..{z + len(slab) - 1} alone); float data must be finite: "
                "replace NaN and infinity (e.g. by the mean) before converting"
            )


def _checked_pages(path: Path):
    """The pages of one TIFF file, refusing unreadable, truncated or empty files and headers that claim more
    pixels than the file holds (tifffile would pad them with zeros). tifffile's own warnings about a damaged header
    are kept out of the one-line error (the check names the damage)."""
    tifffile_logger = logging.getLogger("tifffile")
    level = tifffile_logger.level
    tifffile_logger.setLevel(logging.ERROR)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise UserError(f"{path}: not a readable TIFF (it holds no image); re-export or remove it")
            size = os.path.getsize(path)
            for page in tif.pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
                if ends and max(ends) > size:
                    raise UserError(f"{path}: truncated (image data runs past the end of the file); re-export it")
                layout = page if isinstance(page, tifffile.TiffPage) else page.keyframe  # a frame: its key page's
                claimed = math.prod(page.shape) * np.dtype(page.dtype).itemsize
                if layout is not None and layout.compression == 1 and sum(page.databytecounts) < claimed:
                    raise UserError(
                        f"{path}: its header declares {' x '.join(map(str, page.shape))} pixels ({claimed} bytes) but "
                        f"the file holds {sum(page.databytecounts)} bytes of image data; re-export it"
                    )
                samples = layout.samplesperpixel if layout is not None else 1
                if samples != 1:
                    raise UserError(f"{path}: {samples} samples per pixel (RGB?); export single-channel grayscale")
                yield page
    except (tifffile.TiffFileError, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable TIFF ({error}); re-export or remove it") from None
    finally:
        tifffile_logger.setLevel(level)


def label_mode_for(stack: Source) -> LabelMode:
    """`binary_labels` when the stack holds only 0 and 255 (a 0/255 mask, written as 0/1), else `labels`."""
    _, dtype = stack.check()
    if not np.issubdtype(dtype, np.integer):
        raise UserError(f"{stack.source}: labels must be integers, found {dtype}; export integer label slices")
    values = unique_values(stack)
    return "binary_labels" if set(values.tolist()) <= {0, 255} else "labels"


def to_output_values(slab: np.ndarray, label_mode: LabelMode) -> np.ndarray:
    """Per-block value rule: images and integer labels pass unchanged, 0/255 masks become 0/1 uint8."""
    if label_mode == "binary_labels":
        return (slab > 0).astype(np.uint8)
    return slab


class ConvertStage(BlockwiseStage):
    """TIFF stack or MRC tomogram -> OME-Zarr dataset, optionally cropped (`roi_offset`/`roi_shape` in voxels, z y x).
    `voxel_size` (nm, z y x) is needed for TIFF; for MRC it overrides the header's."""

    task_name = "convert"

    source: str
    output: str
    voxel_size: tuple[Nanometres, Nanometres, Nanometres] | None = None
    offset: tuple[WorldOffset, WorldOffset, WorldOffset] = (0, 0, 0)
    chunk: Voxels = DEFAULT_CHUNK
    label_mode: LabelMode = "image"
    roi_offset: VoxelOffsets | None = None
    roi_shape: Edges | None = None

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput.parse(self.output)]

    def _crop(self, stack_shape: Sequence[int]) -> tuple[Coordinate, Coordinate]:
        """Crop (offset, shape) in voxels; the whole stack when no ROI was given."""
        if (self.roi_offset is None) != (self.roi_shape is None):
            raise FieldError("{roi_offset} and {roi_shape} go together (6 numbers: z y x z y x, in voxels)")
        if self.roi_offset is None:
            return Coordinate(0, 0, 0), Coordinate(stack_shape)
        offset, shape = Coordinate(self.roi_offset), Coordinate(self.roi_shape)
        if (
            any(s <= 0 for s in shape)
            or any(o < 0 for o in offset)
            or any(o + s > n for o, s, n in zip(offset, shape, stack_shape))
        ):
            raise FieldError(
                f"{{roi}} offset {tuple(offset)} shape {tuple(shape)} lies outside the stack of shape "
                f"{tuple(stack_shape)} (z y x voxels); choose a crop inside it"
            )
        return offset, shape

    @cached_property
    def stack(self) -> Source:
        """The source, located once per stage object (a worker's reads share its open files)."""
        return locate_source(self.source, self.voxel_size)

    @cached_property
    def _stack_checked(self) -> tuple[tuple[int, int, int], np.dtype]:
        """The source's shape and dtype; every slice header (and float data, for finiteness) is checked once per
        stage object."""
        stack = self.stack
        shape, dtype = stack.check()
        if self.label_mode == "image" and dtype not in IMAGE_DTYPES:
            raise UserError(
                f"{self.source}: slices are {dtype}; images must be uint8, uint16, int8, int16 or float32 "
                "(convert them to one of those, or pass --labels for a label stack)"
            )
        if dtype.kind == "f":
            check_finite(stack)
        return shape, dtype

    @cached_property
    def world_voxel_size(self) -> Coordinate:
        """The voxel size in world units: the one given, else the MRC header's (rounded to the world unit)."""
        header = self.stack.header_voxel_size_nm
        if header is None:
            if self.voxel_size is None:
                raise FieldError(
                    f"{{voxel_size}} is missing: {self.source} records no voxel size; give it in nm (z y x), e.g. "
                    "{voxel_size} 5 5 5"
                )
            return to_world(self.voxel_size)
        rounded = Coordinate(round(v * WORLD_PER_NM) for v in header)
        if self.voxel_size is None:
            try:
                to_world(header)  # exact up to the rounding of the header's 32-bit floats
            except ValueError:
                warn_once(f"{self.source}: header voxel size {header} nm rounded to {nm_text(rounded)}")
            return rounded
        given = to_world(self.voxel_size)
        if rounded != given:
            warn_once(
                f"{self.source}: its header says voxel size {tuple(round(v, 6) for v in header)} nm, but "
                f"{nm_text(given)} was given and is used"
            )
        return given

    def layout(self) -> BlockLayout:
        shape, _ = self._stack_checked
        crop_offset, crop_shape = self._crop(shape)
        voxel_size = self.world_voxel_size
        total = roi_from_voxels(crop_offset, crop_shape, voxel_size, origin=to_world(self.offset))
        chunks = Coordinate(min(self.chunk, s) for s in crop_shape)
        # one chunk of z slices, the whole y-x extent rounded up to whole chunks (clipped at the border)
        block_voxels = Coordinate(chunks[0], *(-(-s // c) * c for s, c in zip(crop_shape[1:], chunks[1:])))
        return BlockLayout(total, block_voxels * voxel_size, Coordinate(0, 0, 0), voxel_size, chunks * voxel_size)

    def create_outputs(self, layout: BlockLayout) -> None:
        shape, dtype = self._stack_checked
        crop_offset, crop_shape = self._crop(shape)
        create_dataset(
            DatasetPath.parse(self.output),
            shape=crop_shape,
            voxel_size=layout.voxel_size,
            offset=layout.total_write_roi.offset,
            dtype=np.uint8 if self.label_mode == "binary_labels" else dtype,
            chunk_shape=(self.chunk,) * 3,
            attrs={
                "kind": "image" if self.label_mode == "image" else "labels",
                "source": {
                    "path": str(Path(self.source).resolve()),
                    "shape_voxels": list(shape),
                    "crop_offset_voxels": list(crop_offset),
                    "crop_shape_voxels": list(crop_shape),
                    "frame_offset_nm": list(self.offset),
                    "label_mode": self.label_mode,
                    **(
                        {"value_bits": self._value_bits(dtype)}
                        if self.label_mode == "image" and dtype.kind == "u"
                        else {}
                    ),
                    **({"header_voxel_size_nm": list(header)} if (header := self.stack.header_voxel_size_nm) else {}),
                },
            },
        )

    def _value_bits(self, dtype: np.dtype) -> int:
        """The bit depth the image uses (`bit_depth` of the largest value in 8 slices spread over the stack): 12-bit
        camera data in uint16 is normalized by 4095, not 65535, wherever it is read."""
        stack = self.stack
        slices = sorted({int(z) for z in np.linspace(0, stack.depth - 1, 8)})
        return bit_depth(max(int(stack.read(z, z + 1, (slice(None), slice(None))).max()) for z in slices), dtype)

    @contextmanager
    def worker(self) -> Iterator[Callable[[Block], None]]:
        try:
            yield self.block_processor()
        finally:
            self.stack.close()

    def block_processor(self) -> Callable[[Block], None]:
        stack = self.stack
        output = open_dataset(DatasetPath.parse(self.output), mode="r+", require_complete=False)
        voxel_size, frame_origin = output.voxel_size, to_world(self.offset)

        def process(block: Block) -> None:
            roi: Roi = block.write_roi
            begin = (roi.begin - frame_origin) / voxel_size
            end = (roi.end - frame_origin) / voxel_size
            yx = (slice(begin[1], end[1]), slice(begin[2], end[2]))
            output[roi] = to_output_values(stack.read(begin[0], end[0], yx), self.label_mode)

        return process
