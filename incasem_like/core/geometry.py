"""The coordinate vocabulary every stage shares.

World coordinates are nanometres, axis order z, y, x; a region is a `funlib.geometry.Roi` and a point or
size a `funlib.geometry.Coordinate` (the types daisy and funlib.persistence use). Voxel quantities appear
only at the edges (command-line ROIs, TIFF slices) and are converted here.
"""

from collections.abc import Sequence

from funlib.geometry import Coordinate, Roi

AXES = ("z", "y", "x")
UNIT = "nanometer"

__all__ = ["AXES", "UNIT", "Coordinate", "Roi", "roi_from_voxels", "roi_to_voxels"]


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
        raise ValueError(f"ROI {roi} is not aligned to the voxel grid {tuple(voxel_size)}")
    return relative.offset / voxel_size, relative.shape / voxel_size
