"""MRC/REC/MAP/ST files (tomograms, maps, image stacks), read and written with `mrcfile`.

Reading is permissive about harmless header quirks (reported as warnings) and strict about anything that would
give wrong voxels (a `UserError` naming the file, the problem and the fix). Arrays are (z, y, x); voxel sizes are
in nm in (z, y, x) order, while the header holds them in Å in (x, y, z) order.
"""

import bz2
import gzip
import io
import math
import os
import re
import secrets
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import mrcfile
import numpy as np
import numpy.typing as npt
from mrcfile import utils
from mrcfile.mrcinterpreter import MrcInterpreter

from incasem_like.core.errors import UserError

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st")
COMPRESSED_SUFFIXES = (".gz", ".bz2")

HEADER_BYTES = 1024
NSYMBT_OFFSET = 92  # the int32 size of the extended header
MAP_ID_OFFSET = 208
SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16"}
OTHER_MODES = {3: "complex int16", 4: "complex float32", 12: "float16", 101: "4-bit"}
READ_ERRORS = (OSError, EOFError, zlib.error)  # what a damaged or cut compressed stream raises
VOXEL_SIZE_FIX = "pass --voxel-size Z Y X (in nm)"


def is_mrc_path(path: Path) -> bool:
    """Whether the name ends in an MRC suffix, optionally followed by .gz or .bz2 (case-insensitive)."""
    name = Path(path).name.lower()
    for compressed in COMPRESSED_SUFFIXES:
        name = name.removesuffix(compressed)
    return name.endswith(MRC_SUFFIXES)


@dataclass(frozen=True)
class MrcVolume:
    """An open MRC file.

    `data` is (z, y, x) in the file's dtype and byte order, read-only: a memory map (`np.memmap`) of an
    uncompressed file, so memory stays flat in the volume size; a .gz/.bz2 file is decompressed into memory.
    `voxel_size_nm` is (z, y, x) in nm, None when the header has none (all zero). `warnings` are the header
    quirks tolerated, one sentence each naming the file.
    """

    data: np.ndarray
    voxel_size_nm: tuple[float, float, float] | None
    warnings: tuple[str, ...]


@contextmanager
def open_mrc(path: Path, *, voxel_size_nm: Sequence[float] | None = None) -> Iterator[MrcVolume]:
    """Open an MRC file read-only (`mrcfile.mmap`, or `mrcfile.open` when compressed; permissive), validate it, yield
    it, close it. A 2D image is a (1, y, x) volume, an image stack (space group 0) a volume of its images.
    `voxel_size_nm` (z, y, x; the convert command's --voxel-size) replaces the header's, which is then not checked.
    """
    path = Path(path)
    opener = _opener(path)
    header, nsymbt, quirks = _read_header(path, opener)
    _check_header(path, header, nsymbt)
    shape = (int(header.nz), int(header.ny), int(header.nx))
    expected = math.prod(shape) * utils.data_dtype_from_header(header).itemsize
    compressed = opener is not open
    if not compressed:
        _check_size(path, header, nsymbt, expected, path.stat().st_size - HEADER_BYTES - nsymbt)
    if voxel_size_nm is None:
        voxel, voxel_warnings = _voxel_size(path, header)
    else:
        voxel, voxel_warnings = (float(voxel_size_nm[0]), float(voxel_size_nm[1]), float(voxel_size_nm[2])), []
    with _mrcfile_warnings() as caught:
        try:
            mrc = mrcfile.open(path, permissive=True) if compressed else mrcfile.mmap(path, permissive=True)
        except READ_ERRORS as error:
            raise UserError(f"{path}: cannot be decompressed ({error}); the file is damaged: copy it again") from error
    with mrc:
        if compressed:
            _check_size(path, header, nsymbt, expected, _data_bytes_read(caught, expected))
        yield MrcVolume(mrc.data.reshape(shape), voxel, tuple(quirks + voxel_warnings))


def write_mrc(
    path: Path,
    shape: Sequence[int],
    dtype: npt.DTypeLike,
    voxel_size_nm: Sequence[float],
    slabs: Iterable[tuple[int, np.ndarray]],
) -> None:
    """Write a (z, y, x) volume as an uncompressed MRC file from z-slabs `(z_start, array of shape (n, y, x))`, each
    z written once, in any order, through a memory map (no second copy of the volume). The voxel size goes into
    the header in Å (x, y, z), the data statistics too. The file appears atomically (a temporary file in the same
    folder, renamed at the end, removed on any error).

    The mode follows `dtype`: int8 -> 0, int16 -> 1, float32 -> 2, uint16 -> 6; bool -> 0, uint8 -> 6 (widened to
    uint16 as mrcfile does: mode 0 is signed); float16/float64 -> 2; wider ints -> 1 (signed) or 6 (unsigned), each
    slab checked to fit.
    """
    path = Path(path)
    if path.name.lower().endswith(COMPRESSED_SUFFIXES):
        raise UserError(f"{path}: MRC files are written uncompressed; name it without {path.suffix}, compress later")
    target = _file_dtype(path, np.dtype(dtype))
    if len(voxel_size_nm) != 3 or not all(0 < float(size) < math.inf for size in voxel_size_nm):
        raise UserError(f"{path}: voxel size {tuple(voxel_size_nm)} nm: give three positive numbers (z y x)")
    nz, ny, nx = (int(size) for size in shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"{path}: cannot write an empty volume of shape {tuple(shape)}")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with mrcfile.new_mmap(temporary, (nz, ny, nx), mrc_mode=utils.mode_from_dtype(target)) as mrc:
            written = np.zeros(nz, dtype=bool)
            low, high, total, squares = math.inf, -math.inf, 0.0, 0.0
            for z, slab in slabs:
                end = z + len(slab)
                if slab.ndim != 3 or slab.shape[1:] != (ny, nx) or not 0 <= z < end <= nz or written[z:end].any():
                    raise ValueError(f"{path}: slab {slab.shape} at z {z} is outside {(nz, ny, nx)} or written twice")
                _check_fits(path, slab, target)
                mrc.data[z:end] = slab
                written[z:end] = True
                values = mrc.data[z:end]
                low, high = min(low, float(values.min())), max(high, float(values.max()))
                total += float(values.sum(dtype=np.float64))
                squares += float(np.square(values, dtype=np.float64).sum())
            if not written.all():
                raise ValueError(
                    f"{path}: z {int(np.argmin(written))} and {int((~written).sum()) - 1} more not written"
                )
            mean = total / written.size / ny / nx
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = low, high, mean
            mrc.header.rms = math.sqrt(max(squares / written.size / ny / nx - mean**2, 0.0))
            mrc.voxel_size = tuple(float(size) * 10 for size in reversed(voxel_size_nm))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_mrc_array(path: Path, data: np.ndarray, voxel_size_nm: Sequence[float]) -> None:
    """`write_mrc` for a whole (z, y, x) array."""
    if data.ndim != 3:
        raise ValueError(f"{path}: a (z, y, x) array is needed, not shape {data.shape}")
    write_mrc(path, data.shape, data.dtype, voxel_size_nm, [(0, data)])


def _opener(path: Path) -> Callable[..., IO[Any]]:
    """How to read the file's bytes: `open`, or `gzip.open` / `bz2.open` as mrcfile tells compressed files apart
    (by magic bytes, unless the map id is in place)."""
    try:
        with open(path, "rb") as file:
            start = file.read(MAP_ID_OFFSET + 4)
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); check the path") from error
    if start[MAP_ID_OFFSET:] != b"MAP ":
        if start.startswith(b"\x1f\x8b"):
            return gzip.open
        if start.startswith(b"BZ"):
            return bz2.open
    return open


def _read_header(path: Path, opener: Callable[..., IO[Any]]) -> tuple[np.recarray, int, list[str]]:
    """The header as mrcfile interprets it (byte order included), the extended header size, and the quirks."""
    try:
        with opener(path, "rb") as stream:
            start = stream.read(HEADER_BYTES)
    except READ_ERRORS as error:
        raise UserError(f"{path}: cannot be decompressed ({error}); the file is damaged: copy it again") from error
    if len(start) < HEADER_BYTES:
        raise UserError(f"{path}: {len(start)} bytes, shorter than an MRC header ({HEADER_BYTES}): not an MRC file")
    # mrcfile allocates the extended header before checking it: hide its size, which may be garbage, from it
    blanked = start[:NSYMBT_OFFSET] + bytes(4) + start[NSYMBT_OFFSET + 4 :]
    with _mrcfile_warnings() as caught:
        header = MrcInterpreter(io.BytesIO(blanked), permissive=True, header_only=True).header
    nsymbt = int(np.frombuffer(start, dtype=header.dtype, count=1)["nsymbt"][0])
    return header, nsymbt, [_quirk(path, str(warning.message), header) for warning in caught]


@contextmanager
def _mrcfile_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record mrcfile's RuntimeWarnings (its permissive-mode complaints); other warnings from it are dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", RuntimeWarning)
        yield caught


def _quirk(path: Path, message: str, header: np.recarray) -> str:
    """One sentence for a header quirk that mrcfile tolerated."""
    if message.startswith("Map ID string not found"):
        return f"{path}: the header lacks the 'MAP ' id"
    if message.startswith("Unrecognised machine stamp"):
        return f"{path}: the header lacks a machine stamp; read as little-endian"
    if message.startswith("Machine stamp"):
        order = "big" if header.mode.dtype.byteorder == ">" else "little"
        return f"{path}: the machine stamp contradicts the header's byte order; read as {order}-endian"
    return f"{path}: {' '.join(message.split())}"


def _check_header(path: Path, header: np.recarray, nsymbt: int) -> None:
    """Refuse sizes, modes and layouts that cannot be read as one volume; without the map id, as no MRC at all."""
    nx, ny, nz, mode, ispg = (int(header[field]) for field in ("nx", "ny", "nz", "mode", "ispg"))
    problem: tuple[str, str] | None = None
    if min(nx, ny, nz) < 1:
        problem = f"the header declares {nx} x {ny} x {nz} voxels (x y z)", "the header is corrupt: export it again"
    elif nsymbt < 0:
        problem = f"the header declares a {nsymbt}-byte extended header", "the header is corrupt: export it again"
    elif mode not in SUPPORTED_MODES:
        kind = f" ({OTHER_MODES[mode]})" if mode in OTHER_MODES else ""
        supported = ", ".join(f"{number} {name}" for number, name in SUPPORTED_MODES.items())
        fix = "convert it, e.g. with IMOD's `newstack -mode 2 IN OUT`"
        problem = f"MRC mode {mode}{kind} is not supported (only {supported})", fix
    elif utils.spacegroup_is_volume_stack(ispg):
        problem = f"a stack of volumes (space group {ispg}), not one volume", "split it into single volumes"
    if problem is None:
        return
    if bytes(header.map)[:3] != b"MAP":
        raise UserError(f"{path}: not an MRC file: no 'MAP ' id, and {problem[0]}; pass an MRC, REC, MAP or ST file")
    raise UserError(f"{path}: {problem[0]}; {problem[1]}")


def _check_size(path: Path, header: np.recarray, nsymbt: int, expected: int, held: int) -> None:
    """Refuse a data block shorter (truncated) or longer (wrong dimensions) than the header declares; `held` is
    what the file has after the header and extended header (negative: the extended header is cut)."""
    if held == expected:
        return
    dtype = utils.data_dtype_from_header(header).name
    extended = f" after a {nsymbt}-byte extended header" if nsymbt else ""
    holds = f"{held} bytes of data" if held >= 0 else f"only {held + nsymbt} bytes after the header"
    declared = (
        f"{path}: the header declares {header.nx} x {header.ny} x {header.nz} (x y z) {dtype} voxels ({expected} "
        f"bytes{extended}) but the file holds {holds}"
    )
    if held < expected:
        raise UserError(f"{declared}; the file is truncated: copy it again")
    raise UserError(f"{declared}; the header's dimensions are wrong: export it again or fix them (IMOD alterheader)")


def _data_bytes_read(caught: list[warnings.WarningMessage], expected: int) -> int:
    """How many data bytes mrcfile found in a compressed file, from its complaints (none: as many as expected)."""
    for warning in caught:
        message = str(warning.message)
        if short := re.match(r"Expected \d+ bytes in data block but (?:could only read|limit is) (-?\d+)", message):
            return int(short[1])
        if long := re.match(r"MRC file is (\d+) bytes larger than expected", message):
            return expected + int(long[1])
    return expected


def _voxel_size(path: Path, header: np.recarray) -> tuple[tuple[float, float, float] | None, list[str]]:
    """The header's voxel size in nm (z, y, x) as mrcfile computes it in Å (cell length / sampling, float32); an
    unusable z (zero or infinite, as in 2D images) becomes x, with a warning."""
    cell = np.array(header.cella.item(), dtype=np.float64)
    grid = np.array([header.mx, header.my, header.mz], dtype=np.float64)
    x, y, z = (float(size) for size in np.divide(cell, grid, out=np.zeros(3), where=grid != 0).astype(np.float32))
    shown = f"{x:g} x {y:g} x {z:g} Å (x y z)"
    if any(math.isnan(size) or size < 0 for size in (x, y, z)):
        raise UserError(f"{path}: the header's voxel size {shown} is negative or NaN; {VOXEL_SIZE_FIX}")
    if x == y == z == 0:
        return None, []
    if not (0 < x < math.inf and 0 < y < math.inf):
        raise UserError(f"{path}: the header's voxel size {shown} is zero or infinite; {VOXEL_SIZE_FIX}")
    if 0 < z < math.inf:
        return (z / 10, y / 10, x / 10), []
    return (x / 10, y / 10, x / 10), [f"{path}: the header's z voxel size is {z:g} Å; using the x one, {x / 10:g} nm"]


def _file_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    """The MRC dtype that `dtype` is written as (see `write_mrc`)."""
    if dtype.name in SUPPORTED_MODES.values():
        return dtype.newbyteorder("=")
    if dtype.kind == "b":
        return np.dtype(np.int8)
    if dtype.kind in "iuf":
        return np.dtype({"i": np.int16, "u": np.uint16, "f": np.float32}[dtype.kind])
    raise UserError(f"{path}: {dtype} data cannot be written as MRC (int8, int16, uint16 or float32); convert it")


def _check_fits(path: Path, slab: np.ndarray, target: np.dtype) -> None:
    """Refuse integer values that the file's integer mode cannot hold."""
    if slab.dtype.kind not in "iu" or target.kind not in "iu" or np.can_cast(slab.dtype, target) or not slab.size:
        return
    low, high, limits = int(slab.min()), int(slab.max()), np.iinfo(target)
    if low < limits.min or high > limits.max:
        raise UserError(
            f"{path}: values {low}..{high} do not fit the widest MRC integer type, {target} ({limits.min}.."
            f"{limits.max}); relabel them into that range"
        )
