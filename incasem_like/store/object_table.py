"""The object table that `objects` writes beside its object ids and `mesh` reads: per-object statistics in voxels
of the object-id dataset, saved as one .npz; and the statistics CSV in physical units."""

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from incasem_like.core.files import atomic_file
from incasem_like.ops.morphometrics import SECTION_KEYS, ellipsoid_fit, equivalent_diameter, sphericity
from incasem_like.ops.surfaces import crop_box

#: voxels past its far faces that a block reads to cut the crops of the objects starting in it
CROP_REACH = 64

#: what the relabel step measures on each object's crop, columns of `ObjectTable.measures`
MEASURE_KEYS = (*SECTION_KEYS, "skeleton_length_nm", "skeleton_branches", "distance_to_other_nm",
                "distance_to_mask_boundary_nm")  # fmt: skip
#: integer columns among them
INTEGER_MEASURES = ("section_count", "skeleton_branches")

CSV_COLUMNS = (
    "object_id",
    "voxel_count",
    "volume_nm3",
    "surface_area_nm2",
    "centroid_z_nm",
    "centroid_y_nm",
    "centroid_x_nm",
    "bbox_offset_z_nm",
    "bbox_offset_y_nm",
    "bbox_offset_x_nm",
    "bbox_shape_z_nm",
    "bbox_shape_y_nm",
    "bbox_shape_x_nm",
    "axis_major_nm",
    "axis_middle_nm",
    "axis_minor_nm",
    "touches_border",
    "surface_to_volume_per_nm",
    "sphericity",
    "equivalent_diameter_nm",
    "axis_major_direction_z",
    "axis_major_direction_y",
    "axis_major_direction_x",
    *MEASURE_KEYS,
)


def save_npz(path: Path, **arrays: Any) -> None:
    """Write arrays to an .npz atomically: readers see the old file or the complete new one."""
    with atomic_file(path) as file:
        np.savez_compressed(file, **arrays)


@dataclass(frozen=True)
class ObjectTable:
    """Per-object statistics in voxels of the object-id dataset; row i is object id i + 1."""

    voxel_size: np.ndarray  # (3,) nm
    offset: np.ndarray  # (3,) nm, the dataset's first voxel corner
    shape: np.ndarray  # (3,) voxels, the dataset's
    voxel_count: np.ndarray  # (n,)
    centroid: np.ndarray  # (n, 3) mean voxel index
    covariance: np.ndarray  # (n, 3, 3) voxel index covariance
    bbox_begin: np.ndarray  # (n, 3)
    bbox_end: np.ndarray  # (n, 3), exclusive
    surface_area_nm2: np.ndarray  # (n,), NaN until the surfaces are computed
    measures: np.ndarray  # (n, len(MEASURE_KEYS)), NaN until measured; distances: NaN not asked, inf beyond reach

    def __len__(self) -> int:
        return len(self.voxel_count)

    def save(self, path: Path) -> None:
        save_npz(path, **{field.name: getattr(self, field.name) for field in fields(self)})

    @classmethod
    def load(cls, path: Path) -> "ObjectTable":
        """`KeyError` naming the first field the file lacks (a table of an older version)."""
        with np.load(path) as data:
            missing = [field.name for field in fields(cls) if field.name not in data.files]
            if missing:
                raise KeyError(missing[0])
            return cls(**{field.name: data[field.name] for field in fields(cls)})

    def starting_in(self, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Rows of the objects whose bounding box starts in the voxel box [begin, end)."""
        return np.flatnonzero(((self.bbox_begin >= begin) & (self.bbox_begin < end)).all(axis=1))

    def crops(self, rows: np.ndarray, begin: np.ndarray, end: np.ndarray, step: int, read: Callable):
        """(row, bool mask, crop begin) of each object in `rows`, which start in the block [begin, end) (voxels),
        on its `crop_box`. `read(begin, end)` gives the ids in a voxel box (0 outside the dataset); one read
        covers the block and the crops up to `CROP_REACH` voxels past it, objects reaching further are read on
        their own (reading each object alone would decompress whole chunks per object)."""
        if len(rows) == 0:
            return
        boxes = [crop_box(self.bbox_begin[row], self.bbox_end[row], step) for row in rows]
        region_begin = np.asarray(begin) - step
        region_end = np.minimum(np.max([box_end for _, box_end in boxes], axis=0), np.asarray(end) + CROP_REACH)
        region = read(region_begin, region_end)
        for row, (box_begin, box_end) in zip(rows, boxes):
            if (box_end <= region_end).all():
                ids = region[tuple(slice(b, e) for b, e in zip(box_begin - region_begin, box_end - region_begin))]
            else:
                ids = read(box_begin, box_end)
            yield row, ids == row + 1, box_begin

    def principal_axes_nm(self) -> np.ndarray:
        """(n, 3) full axis lengths 2 sqrt(5 lambda), largest first, from the covariance in nm^2."""
        scale = np.diag(self.voxel_size.astype(np.float64))
        eigenvalues = np.linalg.eigvalsh(scale @ self.covariance @ scale) if len(self) else np.zeros((0, 3))
        return 2 * np.sqrt(5 * np.clip(eigenvalues[:, ::-1], 0, None))

    def csv_text(self) -> str:
        """The statistics table: one row per object, physical units (nm) named in the header; a distance not
        asked for is empty, one farther than the largest asked for is `inf`."""
        voxel_size, offset = self.voxel_size.astype(np.float64), self.offset.astype(np.float64)
        centroid = offset + (self.centroid + 0.5) * voxel_size
        bbox_offset = offset + self.bbox_begin * voxel_size
        bbox_shape = (self.bbox_end - self.bbox_begin) * voxel_size
        axes = self.principal_axes_nm()
        border = (self.bbox_begin == 0).any(axis=1) | (self.bbox_end == self.shape).any(axis=1)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        scale = np.diag(voxel_size)
        for i in range(len(self)):
            volume, area = self.voxel_count[i] * np.prod(voxel_size), self.surface_area_nm2[i]
            _, direction = ellipsoid_fit(scale @ self.covariance[i] @ scale)
            measures = [
                ""
                if key.startswith("distance") and np.isnan(self.measures[i, k])
                else _measure(key, self.measures[i, k])
                for k, key in enumerate(MEASURE_KEYS)
            ]
            writer.writerow(
                [i + 1, int(self.voxel_count[i]), _number(volume)]
                + [_number(v) for v in (area, *centroid[i], *bbox_offset[i], *bbox_shape[i])]
                + [_number(v) for v in axes[i]]
                + [int(border[i])]
                + [_number(v) for v in (area / volume, sphericity(volume, area), equivalent_diameter(volume))]
                + [_number(v) for v in direction]
                + measures
            )
        return text.getvalue()


def _number(value: float) -> str:
    return f"{value:.10g}"


def _measure(key: str, value: float) -> str:
    return str(int(value)) if key in INTEGER_MEASURES and np.isfinite(value) else _number(value)
