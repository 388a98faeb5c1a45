"""The coordinate vocabulary every stage shares.

World coordinates are integers of one unit, the femtometre (`WORLD_PER_NM` = 10^6 of them per nm), axis order
z, y, x; a region is a `funlib.geometry.Roi` and a point or size a `funlib.geometry.Coordinate` (the integer types
daisy and funlib.persistence use). A unit that fine holds the voxel sizes microscopes write (4 x 4 x 3.2 nm, 9.8 nm,
0.03925 nm) exactly, so ROIs stay integers and block grids exact. Nanometres are what users read and write: options,
configs, OME-Zarr metadata, checkpoints, tables, meshes and viewer states convert with `to_world` / `to_nm`. Voxel
quantities (command-line ROIs, TIFF slices) convert with `roi_from_voxels` / `roi_to_voxels`.
"""

from collections.abc import Iterable, Sequence

from funlib.geometry import Coordinate, Roi

AXES = ("z", "y", "x")
UNIT = "nanometer"
#: world units per nm (the world unit is the femtometre)
WORLD_PER_NM = 10**6
#: rounding tolerated when a length in nm becomes world units: the rounding of 32-bit floats (MRC headers), 6e-8
RELATIVE_TOLERANCE = 1e-7

__all__ = [
    "AXES",
    "UNIT",
    "WORLD_PER_NM",
    "Coordinate",
    "Roi",
    "nm_text",
    "per_axis",
    "roi_from_voxels",
    "roi_text",
    "roi_to_voxels",
    "to_nm",
    "to_world",
    "voxel_box_text",
    "world_length",
]


def per_axis(value: int | Sequence[int]) -> tuple[int, int, int]:
    """One value for every axis, or (z, y, x) values, as (z, y, x) values (radii, kernels, factors).

    >>> per_axis(2), per_axis((1, 2, 2))
    ((2, 2, 2), (1, 2, 2))
    """
    return (value,) * 3 if isinstance(value, int) else (int(value[0]), int(value[1]), int(value[2]))


def world_length(nm: float) -> int:
    """A length in nm as an integer of world units; `ValueError` when it has more precision than the unit holds.

    >>> world_length(3.2), world_length(0.03925), world_length(-5)
    (3200000, 39250, -5000000)
    """
    world = nm * WORLD_PER_NM
    rounded = round(world)
    if abs(world - rounded) > max(RELATIVE_TOLERANCE * abs(world), 1e-3):
        raise ValueError(f"{nm!r} nm has more precision than 1e-6 nm (the internal unit); round it")
    return int(rounded)


def to_world(nm: Iterable[float]) -> Coordinate:
    """Lengths in nm as a world `Coordinate` (see `world_length`)."""
    return Coordinate(world_length(value) for value in nm)


def to_nm(world: Iterable[int]) -> tuple[float, ...]:
    """World lengths in nm, as floats that print as the nm values they came from.

    >>> to_nm((3200000, 4000000, 39250))
    (3.2, 4.0, 0.03925)
    """
    return tuple(value / WORLD_PER_NM for value in world)


def nm_text(world: Iterable[int]) -> str:
    """World lengths for messages, in nm: `(50, 4.6, 4.6) nm`.

    >>> nm_text((50000000, 4600000, 4600000))
    '(50, 4.6, 4.6) nm'
    """
    return "(" + ", ".join(f"{value:.9g}" for value in to_nm(world)) + ") nm"


def roi_text(roi: Roi) -> str:
    """A world ROI for messages, in nm: `offset (0, 0, 0) nm, shape (500, 46, 46) nm`."""
    return f"offset {nm_text(roi.offset)}, shape {nm_text(roi.shape)}"


def voxel_box_text(roi: Roi, voxel_size: Sequence[int], origin: Sequence[int] = (0, 0, 0)) -> str:
    """A world ROI for messages as the voxel box it covers from `origin`: `voxels [8:12, 0:37, 0:45]`."""
    begin = (roi.begin - Coordinate(origin)) / Coordinate(voxel_size)
    end = (roi.end - Coordinate(origin)) / Coordinate(voxel_size)
    return "voxels [" + ", ".join(f"{b}:{e}" for b, e in zip(begin, end)) + "]"


def roi_from_voxels(
    offset_voxels: Sequence[int],
    shape_voxels: Sequence[int],
    voxel_size: Sequence[int],
    origin: Sequence[int] = (0, 0, 0),
) -> Roi:
    """World ROI of a voxel box given relative to `origin` (a world coordinate, e.g. a dataset's offset)."""
    voxel_size = Coordinate(voxel_size)
    return Roi(Coordinate(origin) + Coordinate(offset_voxels) * voxel_size, Coordinate(shape_voxels) * voxel_size)


def roi_to_voxels(
    roi: Roi, voxel_size: Sequence[int], origin: Sequence[int] = (0, 0, 0)
) -> tuple[Coordinate, Coordinate]:
    """(offset, shape) in voxels of a world ROI relative to `origin`; the ROI must lie on the voxel grid."""
    voxel_size = Coordinate(voxel_size)
    relative = roi - Coordinate(origin)
    if relative.snap_to_grid(voxel_size, mode="grow") != relative:
        raise ValueError(f"ROI {roi} is not aligned to the voxel grid {nm_text(voxel_size)}")
    return relative.offset / voxel_size, relative.shape / voxel_size
