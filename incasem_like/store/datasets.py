"""The data model: cells in zarr containers, datasets as OME-Zarr multiscale groups.

A cell lives in one container (`cell_6.zarr`); a dataset is addressed as `cell_6.zarr/volumes/raw`. Each
dataset is an OME-Zarr (NGFF 0.5) multiscale group whose full-resolution array is `s0` (pyramids add s1..sN),
with axes z, y, x in nanometres and the voxel size / offset as scale / translation (any positive float: 4 x 4 x 3.2,
0.03925), so neuroglancer and napari open it as is. The `s0` array also carries funlib's attributes (voxel_size,
offset, axis_names, units) in the integer world unit (fm, `core.geometry`), so
`funlib.persistence.open_ds("cell_6.zarr/volumes/raw/s0")` round-trips it. Our own bookkeeping (whether the
dataset is complete, what wrote it) lives under the group attribute `incasem_like`.

Stages read and write through `Volume`, a zarr array indexed by `funlib.geometry.Roi` in world units (the same
interface as funlib's `Array` for `[roi]` and `to_ndarray`, without its dask layer, whose import alone costs
each worker process a second).
"""

import collections
import itertools
import shutil
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore

from incasem_like.core.bounds import MAX_OFFSET_NM, MAX_VOXEL_NM
from incasem_like.core.errors import UserError, shortened
from incasem_like.core.geometry import AXES, UNIT, WORLD_PER_NM, Coordinate, Roi, nm_text, to_nm, world_length

#: the OME-Zarr length units read, in nm (this tool writes nanometer)
NM_PER_UNIT = {"angstrom": 0.1, "picometer": 1e-3, "nanometer": 1.0, "micrometer": 1e3}

RAW = "volumes/raw"
RAW_CLAHE = "volumes/raw_clahe"
CELL_MASK = "volumes/masks/cell"


def labels_name(organelle: str) -> str:
    return f"volumes/labels/{organelle}"


def metric_mask_name(organelle: str) -> str:
    return f"volumes/metric_masks/{organelle}"


def prediction_names(run: str, organelle: str) -> tuple[str, str]:
    """(probabilities, segmentation) dataset names of one prediction run."""
    base = f"volumes/predictions/{run}/{organelle}"
    return f"{base}/probabilities", f"{base}/segmentation"


FULL_RESOLUTION = "s0"
OME_VERSION = "0.5"
META_KEY = "incasem_like"
DEFAULT_CHUNK = 128
#: a dataset's run folder: the blockwise progress, logs and the lock of the run writing it
RUN_DIR = ".incasem_run"
#: what reading a chunk raises when its bytes are damaged (codec errors) or cannot be read
UNREADABLE_CHUNK_ERRORS = (RuntimeError, ValueError, OSError)
#: what opening zarr metadata raises when it is missing, not JSON or not valid zarr
DAMAGED_METADATA_ERRORS = (OSError, ValueError, KeyError, TypeError)


class StrictLocalStore(LocalStore):
    """zarr's local store, but a chunk path that is a folder (or runs through a file) is damage, not a missing chunk
    read as the fill value (checked only when a chunk is missing, so reads cost nothing more)."""

    async def get(self, key: str, prototype: BufferPrototype | None = None, byte_range=None) -> Buffer | None:
        found = await super().get(key, prototype, byte_range)
        if found is None:
            self._check_missing(key)
        return found

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None, byte_range=None) -> Buffer | None:
        found = super().get_sync(key, prototype=prototype, byte_range=byte_range)
        if found is None:
            self._check_missing(key)
        return found

    def _check_missing(self, key: str) -> None:
        root = Path(self.root)
        path = root / key
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder where a chunk file belongs")
        for parent in path.relative_to(root).parents:
            if (root / parent).is_file():
                raise NotADirectoryError(f"{root / parent} is a file where a folder of chunks belongs")


def open_array(path: Path, mode: str = "r") -> zarr.Array:
    """The zarr array at `path` through `StrictLocalStore`."""
    return zarr.open_array(StrictLocalStore(path, read_only=mode == "r"), mode=mode)


#: zstd level 1 with byte shuffle: ~850 MB/s per core on FIB-SEM uint8 at the best ratio we measured (1.17);
#: bitshuffle is 2.3x slower and compresses EM intensities worse
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


@dataclass(frozen=True)
class DatasetPath:
    """`path/to/cell.zarr/volumes/raw`, split into the container and the dataset name inside it."""

    container: Path
    name: str

    @classmethod
    def parse(cls, text: str | Path) -> "DatasetPath":
        parts = Path(text).parts
        for i, part in enumerate(parts):
            if part.endswith(".zarr"):
                name = "/".join(parts[i + 1 :])
                if not name:
                    break
                return cls(Path(*parts[: i + 1]), name)
        raise UserError(f"{text}: not a dataset path; write it as CONTAINER.zarr/DATASET, e.g. cell_6.zarr/{RAW}")

    @property
    def group_path(self) -> Path:
        return self.container / self.name

    @property
    def array_path(self) -> Path:
        return self.group_path / FULL_RESOLUTION

    def exists(self) -> bool:
        """Whether anything is at the dataset's path; a bare run folder (which a run's lock creates before the
        dataset) does not count."""
        if not self.group_path.is_dir():
            return self.group_path.exists()
        return any(entry.name != RUN_DIR for entry in self.group_path.iterdir())

    def __str__(self) -> str:
        return str(self.group_path)


def ome_multiscales(name: str, voxel_size: Sequence[int], offset: Sequence[int], levels: int = 1) -> dict:
    """NGFF 0.5 `multiscales` metadata for levels s0..s{levels-1}, each 2x coarser than the last.

    `voxel_size` and `offset` are world units (written in nm); `offset` is funlib's: the world position of the first
    voxel's corner, shared by all levels. NGFF maps voxel *centres* (integer array indices) to the world, as
    neuroglancer and napari read it, so the translation of level k is the centre of its first voxel:
    offset + scale_k / 2.
    """
    datasets = []
    for level in range(levels):
        level_voxel = [v * 2**level for v in voxel_size]
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(to_nm(level_voxel))},
                    {
                        "type": "translation",
                        "translation": [(2 * o + v) / (2 * WORLD_PER_NM) for o, v in zip(offset, level_voxel)],
                    },
                ],
            }
        )
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": axis, "type": "space", "unit": UNIT} for axis in AXES],
                "datasets": datasets,
            }
        ],
    }


def create_dataset(
    path: DatasetPath,
    shape: Sequence[int],
    voxel_size: Sequence[int],
    offset: Sequence[int],
    dtype: npt.DTypeLike,
    chunk_shape: Sequence[int] = (DEFAULT_CHUNK,) * 3,
    attrs: dict[str, Any] | None = None,
) -> "Volume":
    """Create an empty, incomplete dataset (s0) with OME-Zarr and funlib metadata; returns it opened r+.

    `voxel_size` and `offset` are world units; the offset must be a multiple of the voxel size. An existing dataset at
    `path` is an error: callers decide about overwriting (see `remove_dataset`).
    """
    voxel_size, offset = Coordinate(voxel_size), Coordinate(offset)
    if len(shape) != 3 or len(voxel_size) != 3 or len(offset) != 3:
        raise UserError(f"{path}: shape, voxel size and offset need 3 values (z, y, x)")
    if any(v <= 0 for v in voxel_size):
        raise UserError(f"{path}: voxel size {nm_text(voxel_size)} must be positive")
    if offset % voxel_size != Coordinate((0, 0, 0)):
        raise UserError(
            f"{path}: offset {nm_text(offset)} is not a multiple of the voxel size {nm_text(voxel_size)}; "
            "choose an offset on the voxel grid"
        )
    if path.exists():
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    try:
        root = zarr.open_group(path.container, mode="a")
        group = root.require_group(path.name)
    except DAMAGED_METADATA_ERRORS as error:
        raise UserError(
            f"{path}: cannot create it in {path.container} ({type(error).__name__}: {error}); the container's "
            "metadata is damaged: restore it, or write to another container"
        ) from None
    array_record: dict[str, Any] = {"shape": [int(v) for v in shape], "dtype": np.dtype(dtype).name}
    group.attrs.update(
        {
            "ome": ome_multiscales(path.name, voxel_size, offset),
            META_KEY: {"complete": False, "array": array_record, **(attrs or {})},
        }
    )
    _create_level_array(group, FULL_RESOLUTION, shape, dtype, chunk_shape, voxel_size, offset)
    return open_dataset(path, mode="r+", require_complete=False)


def _create_level_array(group, name, shape, dtype, chunk_shape, voxel_size, offset) -> zarr.Array:
    """An empty level array of a dataset group, with funlib's attributes (voxel size and offset in world units)."""
    array = group.create_array(
        name,
        shape=tuple(int(s) for s in shape),
        chunks=tuple(int(min(c, s)) for c, s in zip(chunk_shape, shape)),
        dtype=np.dtype(dtype),
        compressors=COMPRESSOR,
        fill_value=0,
        dimension_names=AXES,
        overwrite=True,
    )
    array.attrs.update(
        {
            "voxel_size": list(voxel_size),
            "offset": list(offset),
            "axis_names": list(AXES),
            "units": ["fm"] * 3,
            "types": ["space"] * 3,
        }
    )
    return array


@dataclass
class Volume:
    """A dataset's full-resolution zarr array in world units: ROIs in world units (`core.geometry`), axis order
    z, y, x."""

    data: zarr.Array
    voxel_size: Coordinate
    offset: Coordinate
    #: the dataset's name in messages
    name: str = ""
    #: our bookkeeping attributes, as opened
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def voxel_size_nm(self) -> tuple[float, ...]:
        return to_nm(self.voxel_size)

    @property
    def offset_nm(self) -> tuple[float, ...]:
        return to_nm(self.offset)

    @property
    def chunk_shape(self) -> Coordinate:
        return Coordinate(self.data.chunks)

    @property
    def roi(self) -> Roi:
        return Roi(self.offset, Coordinate(self.shape) * self.voxel_size)

    def _slices(self, roi: Roi) -> tuple[slice, ...]:
        if not self.roi.contains(roi):
            raise IndexError(f"ROI {roi} is not inside the dataset's {self.roi}")
        begin = (roi.begin - self.offset) / self.voxel_size
        end = (roi.end - self.offset) / self.voxel_size
        return tuple(slice(b, e) for b, e in zip(begin, end))

    def __getitem__(self, roi: Roi) -> np.ndarray:
        return self.read(self._slices(roi))

    def read(self, selection: tuple[slice, ...]) -> np.ndarray:
        """`data[selection]` (voxel indices); a chunk that cannot be decoded or read is a `UserError` naming the
        dataset and the voxels."""
        try:
            return np.asarray(self.data[selection])
        except UNREADABLE_CHUNK_ERRORS as error:
            voxels = ", ".join(f"{s.start}:{s.stop}" for s in selection)
            raise UserError(
                f"{self.name or self.data.store_path}: cannot read voxels [{voxels}] ({type(error).__name__}: "
                f"{error}); the stored data are damaged: restore them or rerun the command that wrote them"
            ) from None

    def __setitem__(self, roi: Roi, value: np.ndarray | int) -> None:
        self.data[self._slices(roi)] = value

    def to_ndarray(self, roi: Roi, fill_value: int | float = 0) -> np.ndarray:
        """The data in `roi`, which may reach outside the dataset: voxels outside are `fill_value`."""
        result = np.full(roi.shape / self.voxel_size, fill_value, dtype=self.dtype)
        inside = roi.intersect(self.roi)
        if not inside.empty:
            target = inside - roi.offset
            result[tuple(slice(b, e) for b, e in zip(target.begin / self.voxel_size, target.end / self.voxel_size))] = (
                self[inside]
            )
        return result


@dataclass
class ChunkCachedVolume(Volume):
    """A read-only `Volume` that keeps its `capacity` most recently read chunks decoded: overlapping reads (the
    context that rows of passes and neighbouring blocks share) decode each chunk once. The chunks a read misses are
    decoded in parallel on `decoders` where given. Thread-safe.

    >>> import zarr
    >>> array = zarr.create_array(store={}, shape=(4, 4, 4), chunks=(2, 2, 2), dtype="uint8")
    >>> array[:] = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    >>> cached = ChunkCachedVolume(array, Coordinate(1, 1, 1), Coordinate(0, 0, 0), capacity=2)
    >>> bool((cached.read((slice(1, 3), slice(0, 4), slice(3, 4))) == array[1:3, 0:4, 3:4]).all())
    True
    """

    capacity: int = 64
    decoders: ThreadPoolExecutor | None = None
    _chunks: collections.OrderedDict = field(default_factory=collections.OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, selection: tuple[slice, ...]) -> np.ndarray:
        chunks = self.data.chunks
        result = np.empty([s.stop - s.start for s in selection], dtype=self.dtype)
        indices = list(
            itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(selection, chunks)))
        )
        mapped = self.decoders.map if self.decoders else map
        for index, chunk in zip(indices, mapped(self._chunk, indices)):
            source, target = [], []
            for i, s, c in zip(index, selection, chunks):
                begin, end = max(s.start, i * c), min(s.stop, (i + 1) * c)
                source.append(slice(begin - i * c, end - i * c))
                target.append(slice(begin - s.start, end - s.start))
            result[tuple(target)] = chunk[tuple(source)]
        return result

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            if index in self._chunks:
                self._chunks.move_to_end(index)
                return self._chunks[index]
        chunks = self.data.chunks
        chunk = super().read(tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, self.shape)))
        with self._lock:
            self._chunks[index] = chunk
            while len(self._chunks) > self.capacity:
                self._chunks.popitem(last=False)
        return chunk


def open_dataset(path: DatasetPath | str, mode: str = "r", require_complete: bool = True) -> Volume:
    """Open a dataset's full-resolution array in world units.

    Voxel size and offset come from the group's OME-Zarr metadata, so datasets written by other OME-Zarr tools
    open too. With `require_complete`, a dataset whose writing run has not finished is refused.
    """
    path = path if isinstance(path, DatasetPath) else DatasetPath.parse(path)
    if not path.array_path.exists():
        hint = "; did you mean the dataset group above it?" if path.name.endswith(FULL_RESOLUTION) else ""
        raise UserError(f"{path}: no such dataset (expected an OME-Zarr group with {FULL_RESOLUTION}/){hint}")
    try:
        attrs = zarr.open_group(path.group_path, mode="r").attrs.asdict()
        array = open_array(path.array_path, mode=mode)
    except DAMAGED_METADATA_ERRORS as error:
        raise UserError(
            f"{path}: its zarr metadata is missing or damaged ({type(error).__name__}: {error}); restore it or "
            "rerun the command that wrote the dataset"
        ) from None
    voxel_size, offset = _ome_scale_and_translation(path, attrs)
    _check_record(path, array, _our_attributes_of(attrs).get("array"))
    if require_complete and not is_complete(path):
        raise UserError(f"{path} is incomplete (its writing run did not finish); rerun the command that writes it")
    return Volume(array, voxel_size, offset, str(path), _our_attributes_of(attrs))


def _check_record(path: DatasetPath, array: zarr.Array, record: dict | None) -> None:
    """The array's metadata must still say what the writer recorded (shape, dtype): edited metadata would make every
    chunk read wrong."""
    if not record:
        return
    now = {"shape": list(array.shape), "dtype": array.dtype.name}
    changed = [
        f"{key} {now[key]} (written as {record[key]})" for key in now if key in record and record[key] != now[key]
    ]
    if changed:
        raise UserError(
            f"{path}: its zarr metadata was changed since it was written: {', '.join(changed)}; restore the metadata "
            "or rerun the command that wrote the dataset"
        )


def _ome_scale_and_translation(path: DatasetPath, attrs: dict) -> tuple[Coordinate, Coordinate]:
    try:
        multiscale = attrs["ome"]["multiscales"][0]
        s0 = next(d for d in multiscale["datasets"] if d["path"] == FULL_RESOLUTION)
        transforms = {t["type"]: t for t in s0["coordinateTransformations"]}
        scale = list(transforms["scale"]["scale"])
        translation = list(transforms.get("translation", {"translation": [0] * len(scale)})["translation"])
        units = [axis.get("unit") for axis in multiscale.get("axes", [])]
    except (KeyError, IndexError, StopIteration, TypeError, AttributeError) as error:  # missing, or of another shape
        raise UserError(
            f"{path}: no readable OME-Zarr multiscales metadata for {FULL_RESOLUTION} ({type(error).__name__}: "
            f"{shortened(repr(error))}); write datasets with incasem-like convert or another OME-Zarr 0.5 writer"
        ) from None
    if units and (len(units) != 3 or any(not isinstance(unit, str) or unit not in NM_PER_UNIT for unit in units)):
        raise UserError(
            f"{path}: axis units {shortened(repr(units))} in its OME-Zarr metadata are not lengths this tool reads "
            f"({', '.join(NM_PER_UNIT)}); restore the metadata"
        )
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in [*scale, *translation])
    if numbers and units:
        scale = [v * NM_PER_UNIT[unit] for v, unit in zip(scale, units)]
        translation = [v * NM_PER_UNIT[unit] for v, unit in zip(translation, units)]
    if len(scale) != 3 or not numbers or any(not 0 < v <= MAX_VOXEL_NM for v in scale):
        raise UserError(
            f"{path}: voxel size {shortened(repr(scale))} in its OME-Zarr metadata must be 3 positive numbers up to "
            f"{MAX_VOXEL_NM:g} (nm); restore the metadata"
        )
    if len(translation) != 3 or any(abs(v) > MAX_OFFSET_NM for v in translation):
        raise UserError(
            f"{path}: translation {shortened(repr(translation))} in its OME-Zarr metadata must be 3 numbers within "
            f"+-{MAX_OFFSET_NM:g} (nm); restore the metadata"
        )
    try:
        voxel_size = Coordinate(map(world_length, scale))
    except ValueError as error:
        raise UserError(f"{path}: voxel size {shortened(repr(scale))} in its OME-Zarr metadata: {error}") from None
    if 0 in voxel_size:
        raise UserError(
            f"{path}: voxel size {shortened(repr(scale))} nm is below 1e-6 nm (the internal unit); restore the metadata"
        )
    return voxel_size, Coordinate(map(_corner_offset, translation, voxel_size))


def _corner_offset(translation_nm: float, voxel_size: int) -> int:
    """funlib offset (world units: first voxel's corner, on the voxel grid) of an NGFF translation (nm: first voxel's
    centre).

    Writers that store the corner as the translation (off the centre grid by half a voxel) are taken at
    their word rather than shifted off the voxel grid.
    """
    in_voxels = translation_nm * WORLD_PER_NM / voxel_size
    first_corner = in_voxels - 0.5
    voxels = round(first_corner) if abs(first_corner - round(first_corner)) < 1e-6 else round(in_voxels)
    return int(voxels * voxel_size)


def dataset_meta(path: DatasetPath) -> dict[str, Any]:
    """Our bookkeeping attributes of a dataset (empty for datasets written by other tools)."""
    return _our_attributes(zarr.open_group(path.group_path, mode="r"))


def _our_attributes(group: zarr.Group) -> dict[str, Any]:
    return _our_attributes_of(group.attrs.asdict())


def _our_attributes_of(attrs: Mapping[str, Any]) -> dict[str, Any]:
    value = attrs.get(META_KEY, {})
    return dict(value) if isinstance(value, Mapping) else {}


#: the parameters of each preprocessing step that a model's input must share with its training data
PREPROCESSING_PARAMETERS = {
    "clahe": ("kernel", "clip_limit", "nbins", "intensity_range"),
    "rescale": ("dtype", "percentiles", "value_range"),
}


#: bit depths raw data may use of a 16-bit dtype (cameras write 10, 12 or 14 bits into uint16)
BIT_DEPTHS = (8, 10, 12, 14, 16)


def bit_depth(largest: int, dtype: npt.DTypeLike) -> int:
    """The fewest of `BIT_DEPTHS` bits that hold `largest` in an unsigned `dtype` (its own bits for uint8).

    >>> bit_depth(4000, np.uint16), bit_depth(60000, np.uint16), bit_depth(100, np.uint8)
    (12, 16, 8)
    """
    bits = np.iinfo(np.dtype(dtype)).bits
    return bits if bits <= 8 else next(b for b in BIT_DEPTHS if largest < 2**b or b >= bits)


def value_max(volume: "Volume") -> int:
    """The value that normalizes a raw volume to 1: 2^bits - 1 of the bit depth its converter recorded, else of the
    largest value in a few chunk-thick slabs spread over it (so 12-bit data in uint16 is not read as nearly black).
    The same for every block, worker and run of a dataset."""
    if volume.dtype.itemsize == 1:
        return 255
    recorded = volume.meta.get("source", {}).get("value_bits")
    if recorded is None:
        depth = max(1, volume.data.chunks[0])
        starts = sorted({int(z) for z in np.linspace(0, max(0, volume.shape[0] - depth), 8)})
        slabs = (volume.read((slice(z, z + depth), slice(None), slice(None))) for z in starts)
        recorded = bit_depth(max(int(slab.max()) for slab in slabs), volume.dtype)
    return 2**recorded - 1


def recorded_preprocessing(path: DatasetPath) -> dict[str, Any]:
    """The image preprocessing a dataset's provenance records, following its sources back (a CLAHE of a rescaled
    tomogram): {"clahe": its parameters, "rescale": its rule}, each only where it happened; {} for raw data. The
    rule, not the values it gave on one volume: a model trained on one tomogram expects the next rescaled alike."""
    found: dict[str, Any] = {}
    seen: set[DatasetPath] = set()
    while path not in seen and len(seen) < 16:
        seen.add(path)
        source = dataset_meta(path).get("source", {}) if path.exists() else {}
        for step, parameters in PREPROCESSING_PARAMETERS.items():
            if step in source and step not in found:
                found[step] = {key: source[step][key] for key in parameters if key in source[step]}
        recorded = recorded_source(source["dataset"], path) if "dataset" in source else None
        if recorded is None:
            break
        path = recorded
    return found


def recorded_source(recorded: str, derived: DatasetPath) -> DatasetPath | None:
    """The dataset a writer recorded as `derived`'s source (`source.dataset`): an absolute path as recorded, else (a
    path relative to the writing command's working directory) the same name in `derived`'s container, else relative
    to ours; None when none of those exists."""
    as_recorded = DatasetPath.parse(recorded)
    candidates = [as_recorded] if as_recorded.container.is_absolute() else []
    candidates += [DatasetPath(derived.container, as_recorded.name), as_recorded]
    return next((candidate for candidate in candidates if candidate.exists()), None)


def update_dataset_meta(path: DatasetPath, **values: Any) -> None:
    group = zarr.open_group(path.group_path, mode="r+")
    group.attrs[META_KEY] = {**_our_attributes(group), **values}


def is_complete(path: DatasetPath) -> bool:
    """Datasets written by other tools (without our bookkeeping) count as complete."""
    return bool(dataset_meta(path).get("complete", True))


def remove_dataset(path: DatasetPath) -> None:
    """Delete a dataset group and everything in it (its pyramid levels and run state)."""
    if path.group_path.exists():
        shutil.rmtree(path.group_path)


def create_level(
    path: DatasetPath, level: int, shape: Sequence[int], dtype: np.dtype | str, chunk_shape: Sequence[int]
) -> zarr.Array:
    """Create (or replace) the empty pyramid level array `s{level}` in a dataset group, with funlib's attributes
    (voxel size 2**level times s0's, s0's offset). The group's multiscales metadata lists it only after
    `set_levels`, so an unfinished level stays invisible to OME-Zarr readers."""
    group = zarr.open_group(path.group_path, mode="r+")
    voxel_size, offset = _ome_scale_and_translation(path, group.attrs.asdict())
    return _create_level_array(group, f"s{level}", shape, dtype, chunk_shape, voxel_size * 2**level, offset)


def set_levels(path: DatasetPath, levels: int) -> None:
    """List levels s0..s{levels-1} (each 2x coarser than the last) in the group's OME multiscales metadata."""
    group = zarr.open_group(path.group_path, mode="r+")
    voxel_size, offset = _ome_scale_and_translation(path, group.attrs.asdict())
    group.attrs["ome"] = ome_multiscales(path.name, voxel_size, offset, levels)
