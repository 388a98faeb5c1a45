"""`incasem-like report`: what a cell's results say, dataset by dataset, as an HTML page (its images beside it) and
a JSON file.

Reported: every complete segmentation, label or object-id dataset of the container (layer kind `labels`; or the
datasets named). For each: foreground voxels and volume (nm^3) and, with a cell mask, the volume fraction of the
cell inside it, counted slab by slab (a whole cell never sits in memory); for an object-id dataset written by
`objects` (its table beside it) also the object count, total and mean object volume, surface-to-volume ratio
(total surface / total volume) and histograms of the per-object measures the table holds (volume,
surface-to-volume, sphericity, equivalent diameter, axis lengths, skeleton length, distance to the cell
boundary); and a slice overlay of raw and labels through the dataset's middle slice.
The page is written into a new folder and moved into place when complete (an interrupted report leaves nothing
that looks finished).
"""

import csv
import html
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Roi, nm_text, to_nm
from incasem_like.review.view import find_datasets, layer_kind
from incasem_like.stages.objects import TABLE_FILE
from incasem_like.store.datasets import DatasetPath, Volume, is_complete, open_dataset
from incasem_like.store.object_table import ObjectTable

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
#: raw datasets the overlay looks for, in order, when none is named
RAW_CANDIDATES = ("volumes/raw_clahe", "volumes/raw")
#: the per-object measures plotted where the table has them (CSV column -> axis label)
PLOTTED = {
    "volume_nm3": "volume (nm^3)",
    "surface_to_volume_per_nm": "surface-to-volume (1/nm)",
    "sphericity": "sphericity",
    "equivalent_diameter_nm": "equivalent diameter (nm)",
    "axis_major_nm": "major axis (nm)",
    "axis_middle_nm": "middle axis (nm)",
    "axis_minor_nm": "minor axis (nm)",
    "skeleton_length_nm": "skeleton length (nm)",
    "distance_to_mask_boundary_nm": "distance to the cell boundary (nm)",
}


@dataclass
class DatasetReport:
    """One dataset's summary (JSON-ready numbers) and the images made for it (file names in the report folder)."""

    name: str
    summary: dict[str, Any]
    images: list[str] = field(default_factory=list)


def foreground_counts(volume: Volume, mask: Volume | None) -> tuple[int, int | None, int | None]:
    """Foreground voxels of `volume`, and with `mask` (same grid) the cell's voxels and the foreground inside it;
    read in chunk-deep z slabs."""
    depth = volume.chunk_shape[0] * volume.voxel_size[0]
    foreground, cell, inside = 0, 0, 0
    for z in range(volume.roi.begin[0], volume.roi.end[0], depth):
        slab = volume.roi.intersect(Roi((z, *volume.roi.begin[1:]), (depth, *volume.roi.shape[1:])))
        labels = volume[slab] > 0
        foreground += int(np.count_nonzero(labels))
        if mask is not None:
            cell_voxels = mask.to_ndarray(slab) > 0
            cell += int(np.count_nonzero(cell_voxels))
            inside += int(np.count_nonzero(labels & cell_voxels))
    return (foreground, cell, inside) if mask is not None else (foreground, None, None)


def object_columns(table: ObjectTable) -> dict[str, np.ndarray]:
    """The object table's CSV columns as float arrays (a measure not asked for, left empty: NaN)."""
    rows = list(csv.DictReader(io.StringIO(table.csv_text())))
    return {key: np.array([_float(row[key]) for row in rows]) for key in (rows[0] if rows else {})}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def summarize(volume: Volume, mask: Volume | None, table: ObjectTable | None) -> dict[str, Any]:
    """The numbers of one dataset (see the module docstring)."""
    voxel_nm3 = float(np.prod(to_nm(volume.voxel_size)))
    foreground, cell, inside = foreground_counts(volume, mask)
    summary: dict[str, Any] = {
        "voxel_size_nm": list(to_nm(volume.voxel_size)),
        "shape": list(volume.shape),
        "foreground_voxels": foreground,
        "volume_nm3": foreground * voxel_nm3,
    }
    if cell is not None and inside is not None:
        summary["cell_volume_nm3"] = cell * voxel_nm3
        summary["volume_fraction_of_cell"] = inside / cell if cell else None
    if table is not None:
        columns = object_columns(table)
        volumes = columns.get("volume_nm3", np.zeros(0))
        surfaces = columns.get("surface_area_nm2", np.zeros(0))
        summary |= {
            "objects": len(table),
            "object_volume_total_nm3": float(volumes.sum()),
            "object_volume_mean_nm3": float(volumes.mean()) if len(volumes) else None,
            "object_volume_median_nm3": float(np.median(volumes)) if len(volumes) else None,
            "surface_to_volume_per_nm": float(surfaces.sum() / volumes.sum()) if volumes.sum() else None,
        }
        if "sphericity" in columns and np.isfinite(columns["sphericity"]).any():
            summary["sphericity_median"] = float(np.nanmedian(columns["sphericity"]))
    return summary


def histograms(columns: dict[str, np.ndarray], out: Path, stem: str) -> list[str]:
    """One histogram PNG per plotted measure the table has; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for column, label in PLOTTED.items():
        values = columns.get(column)
        if values is None or not np.isfinite(values).any():
            continue
        values = values[np.isfinite(values)]
        figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
        axes.hist(values, bins=min(40, max(5, len(values) // 3)), color="#4477aa")
        axes.set_xlabel(label)
        axes.set_ylabel("objects")
        figure.tight_layout()
        name = f"{stem}_{column}.png"
        figure.savefig(out / name)
        plt.close(figure)
        written.append(name)
    return written


def covers(raw: Volume, volume: Volume) -> bool:
    """Whether `raw` lies on `volume`'s grid and covers it (an overlay can be drawn)."""
    return raw.voxel_size == volume.voxel_size and raw.roi.contains(volume.roi)


def overlay(volume: Volume, name: str, raw: Volume | None, out: Path, stem: str) -> str | None:
    """A PNG of the dataset's middle z slice over the raw image (objects in colours, a mask in red); None where
    the raw image does not cover the dataset."""
    if raw is None or not covers(raw, volume):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roi = volume.roi
    middle = roi.begin[0] + (roi.shape[0] // volume.voxel_size[0] // 2) * volume.voxel_size[0]
    plane = Roi((middle, *roi.begin[1:]), (volume.voxel_size[0], *roi.shape[1:]))
    image, labels = raw[plane][0].astype(np.float32), volume[plane][0]
    colours = np.random.default_rng(0).uniform(0.2, 1.0, (int(labels.max()) + 1, 3))
    colours[1] = (1.0, 0.2, 0.2)  # a binary segmentation in red
    tinted = np.zeros((*labels.shape, 4))
    tinted[..., :3] = colours[np.minimum(labels, len(colours) - 1).astype(np.int64)]
    tinted[..., 3] = np.where(labels > 0, 0.45, 0.0)
    figure, axes = plt.subplots(figsize=(6, 6 * labels.shape[0] / max(labels.shape[1], 1)), dpi=100)
    aspect = volume.voxel_size[1] / volume.voxel_size[2]  # y over x: anisotropic pixels drawn to scale
    axes.imshow(image, cmap="gray", aspect=aspect)
    axes.imshow(tinted, aspect=aspect)
    axes.set_axis_off()
    axes.set_title(f"{name}, slice z = {(middle - volume.offset[0]) // volume.voxel_size[0]}", fontsize=8)
    figure.tight_layout()
    name = f"{stem}_overlay.png"
    figure.savefig(out / name)
    plt.close(figure)
    return name


def reported_datasets(container: Path, names: list[str]) -> list[str]:
    """The named datasets, else every complete dataset of kind labels in the container."""
    if names:
        return names
    found = []
    for name in find_datasets(container):
        path = DatasetPath(container, name)
        if is_complete(path) and layer_kind(path, open_dataset(path).dtype) == "labels":
            found.append(name)
    return found


def find_raw(container: Path, raw: str | None) -> Volume | None:
    if raw is not None:
        return open_dataset(DatasetPath(container, raw))
    for candidate in RAW_CANDIDATES:
        path = DatasetPath(container, candidate)
        if path.array_path.exists() and is_complete(path):
            return open_dataset(path)
    return None


def build_report(
    container: Path, out: Path, names: list[str], mask: str | None, raw: str | None
) -> list[DatasetReport]:
    """Summaries and images of the container's datasets, written into the folder `out` (which exists)."""
    cell = open_dataset(DatasetPath(container, mask)) if mask else None
    raw_volume = find_raw(container, raw)
    reports = []
    for index, name in enumerate(reported_datasets(container, names)):
        path = DatasetPath(container, name)
        volume = open_dataset(path)
        if volume.dtype.kind not in "iub":
            raise UserError(f"{path}: dtype {volume.dtype} is not a segmentation or label dataset; report those")
        if cell is not None and cell.voxel_size != volume.voxel_size:
            raise UserError(
                f"{cell.name}: voxel size {nm_text(cell.voxel_size)} differs from {path}'s "
                f"{nm_text(volume.voxel_size)}; give a mask on the datasets' grid (incasem-like downsample)"
            )
        table_path = path.group_path / TABLE_FILE
        table = ObjectTable.load(table_path) if table_path.is_file() else None
        stem = f"{index:02d}_{name.replace('/', '_')}"
        report = DatasetReport(name, summarize(volume, cell, table))
        if table is not None:
            report.images += histograms(object_columns(table), out, stem)
        if raw is not None and raw_volume is not None and not covers(raw_volume, volume):
            raise UserError(
                f"{raw_volume.name}: voxel size {nm_text(raw_volume.voxel_size)} and ROI {raw_volume.roi} do not cover "
                f"{path} ({nm_text(volume.voxel_size)}, {volume.roi}); give --raw on the datasets' grid"
            )
        picture = overlay(volume, name, raw_volume, out, stem)
        if picture:
            report.images.append(picture)
        reports.append(report)
    return reports


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " x ".join(_number(v) for v in value)
    return html.escape(str(value))


def render_html(container: Path, reports: list[DatasetReport], mask: str | None) -> str:
    sections = []
    for report in reports:
        rows = "".join(
            f"<tr><th>{html.escape(key)}</th><td>{_number(value)}</td></tr>" for key, value in report.summary.items()
        )
        images = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in report.images)
        sections.append(
            f'<section class="dataset"><h2>{html.escape(report.name)}</h2><table>{rows}</table>'
            f'<div class="images">{images}</div></section>'
        )
    cell = f"cell mask: {html.escape(mask)}" if mask else "no cell mask given"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>incasem-like report: "
        f"{html.escape(container.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "img{max-width:45%;margin:4px}</style></head><body>"
        f"<h1>{html.escape(str(container))}</h1><p>{len(reports)} dataset(s); {cell}.</p>"
        + "".join(sections)
        + "</body></html>"
    )


def write_report(
    container: Path, out: Path, names: list[str], mask: str | None, raw: str | None, overwrite: bool
) -> list[DatasetReport]:
    """The report of `container` in the folder `out` (report.html, report.json, images), written aside and moved
    into place when complete; an existing `out` needs `overwrite`."""
    if not container.is_dir():
        raise UserError(f"{container}: no such container")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        reports = build_report(container, partial, names, mask, raw)
        document = {
            "container": str(container),
            "mask": mask,
            "datasets": [{"name": r.name, **r.summary, "images": r.images} for r in reports],
        }
        (partial / REPORT_JSON).write_text(json.dumps(document, indent=1) + "\n")
        (partial / REPORT_HTML).write_text(render_html(container, reports, mask))
        os.chmod(partial, 0o755)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return reports
