"""Surfaces and per-block labelling with the libraries that replaced hand-written code
(benchmarks/results/mesh.json).

Meshes: analytic organelle-sized objects (balls, ellipsoids, cylinders, tori; scales of 60, 120 and 240 nm, voxels
of 5 x 5 x 5 and 8 x 5 x 5 nm, z y x) each meshed on its `crop_box` crop, through
- `before`: scikit-image marching cubes + Taubin smoothing, the code of incasem_like/ops/surfaces.py at 056c849
  (copied below, `before_object_mesh`: it is no longer in the package);
- `after_areas`: `object_mesh` with its defaults (zmesh marching cubes + the same smoothing): the surfaces `objects`
  takes its areas from;
- `after_mesh`: `object_mesh` as `incasem-like mesh` calls it by default (+ simplification, reduction 4, errors up to
  0.25 voxels).
Seconds per 10^6 object voxels (the median over `--repeats` passes over all the objects, the three implementations
taking turns), triangles, and each surface's area against the shape's analytic one (4 pi r^2, the ellipsoid's
elliptic integrals, 2 pi r h + 2 pi r^2, 4 pi^2 R r), and that of the raw (unsmoothed) marching cubes.

Labelling: a 256^3 block of organelle-sized blobs (random ellipsoids with semi-axes of 6-30 voxels, 18% foreground)
labelled with face connectivity by `scipy.ndimage.label` and by cc3d (`cc3d.connected_components`, what
`block_fragments` uses), checked equal, and the whole `block_fragments` of the block (labels + statistics), medians
over `--repeats` taken in turns. The 1-minute load average before and after is recorded (the machine is shared).

    python benchmarks/mesh.py
"""

import argparse
import datetime
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.special import ellipeinc, ellipkinc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from convert import machine, source_digest, write_result  # noqa: E402  (shared helpers)

from incasem_like.ops.components import block_fragments  # noqa: E402
from incasem_like.ops.morphology import FACE_CONNECTIVITY  # noqa: E402
from incasem_like.ops.surfaces import MAX_ERROR, crop_box, object_mesh, signed_volume, surface_area  # noqa: E402
from incasem_like.stages.mesh import SIMPLIFY  # noqa: E402

KINDS = ("ball", "ellipsoid", "cylinder", "torus")
SCALES_NM = (60, 120, 240)
VOXEL_SIZES = ((5.0, 5.0, 5.0), (8.0, 5.0, 5.0))
BLOCK, BLOBS, SEMI_AXES, SEED = 256, 160, (6, 30), 0


# --- the code this benchmark compares against (incasem_like/ops/surfaces.py at 056c849) ---------------------------
def before_object_mesh(mask: np.ndarray, voxel_size: np.ndarray, corner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    vertices, triangles, _, _ = marching_cubes(mask.astype(np.float32), level=0.5, spacing=tuple(voxel_size))
    vertices = before_taubin_smooth(vertices.astype(np.float64), triangles, 10)
    vertices += np.asarray(corner, dtype=np.float64) + voxel_size / 2
    triangles = triangles.astype(np.int64)
    if signed_volume(vertices, triangles) > 0:
        triangles = triangles[:, ::-1]
    return vertices, triangles


def before_taubin_smooth(vertices: np.ndarray, triangles: np.ndarray, iterations: int) -> np.ndarray:
    count = len(vertices)
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    neighbour_mean = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    for _ in range(iterations):
        for factor in (0.5, -0.53):
            vertices = vertices + factor * (neighbour_mean @ vertices - vertices)
    return vertices


# --- the objects -----------------------------------------------------------------------------------------------
def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of an ellipsoid with semi-axes a, b, c (Legendre's form with incomplete elliptic integrals)."""
    a, b, c = sorted((a, b, c), reverse=True)
    phi = math.acos(c / a)
    k2 = a * a * (b * b - c * c) / (b * b * (a * a - c * c))
    s = math.sin(phi)
    return 2 * math.pi * c * c + 2 * math.pi * a * b / s * (
        ellipeinc(phi, k2) * s * s + ellipkinc(phi, k2) * c**2 / a**2
    )


def analytic_object(kind: str, scale: float, voxel_size: np.ndarray) -> tuple[np.ndarray, float]:
    """(bool crop with one voxel of background around the object, analytic surface area in nm^2); `scale` (nm) is
    the ball's radius, the ellipsoid's longest semi-axis (z; the others 0.7 and 0.45 of it), the cylinder's length
    / 2 (along z; radius scale / 2), the torus's R + r (R = 0.7 scale, r = 0.3 scale, around z)."""
    extent = {"ball": (scale,) * 3, "ellipsoid": (scale, 0.7 * scale, 0.45 * scale)}.get(kind, (scale,) * 3)
    if kind == "cylinder":
        extent = (scale, scale / 2, scale / 2)
    if kind == "torus":
        extent = (0.3 * scale, scale, scale)
    shape = np.ceil(2 * np.array(extent) / voxel_size).astype(int) + 2
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5 - n / 2) * v for n, v in zip(shape, voxel_size)], indexing="ij")
    if kind in ("ball", "ellipsoid"):
        mask = (z / extent[0]) ** 2 + (y / extent[1]) ** 2 + (x / extent[2]) ** 2 <= 1
        area = 4 * math.pi * scale**2 if kind == "ball" else ellipsoid_area(*extent)
    elif kind == "cylinder":
        radius = scale / 2
        mask = (np.abs(z) <= scale) & (y * y + x * x <= radius**2)
        area = 2 * math.pi * radius * 2 * scale + 2 * math.pi * radius**2
    else:
        big, small = 0.7 * scale, 0.3 * scale
        mask = (np.sqrt(y * y + x * x) - big) ** 2 + z * z <= small**2
        area = 4 * math.pi**2 * big * small
    begin, end = crop_box(np.argwhere(mask).min(axis=0), np.argwhere(mask).max(axis=0) + 1)
    padded = np.pad(mask, 1)[tuple(slice(b + 1, e + 1) for b, e in zip(begin, end))]
    return padded, area


def blobs(shape: tuple[int, int, int], count: int, semi_axes: tuple[int, int], seed: int) -> np.ndarray:
    """A bool volume of `count` random axis-aligned ellipsoids (semi-axes in voxels, uniform in `semi_axes`)."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, bool)
    for _ in range(count):
        centre, radii = rng.uniform(0, shape), rng.uniform(*semi_axes, 3)
        low = np.maximum((centre - radii).astype(int), 0)
        high = np.minimum((centre + radii).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        grid = np.ogrid[box]
        volume[box] |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    return volume


# --- the measurements ------------------------------------------------------------------------------------------
def median_seconds(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of `runs` (name -> callable), taken in turns so that the load of a shared machine
    falls on all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mesh_case(voxel_size: tuple[float, float, float], repeats: int) -> dict:
    size = np.array(voxel_size)
    objects = {f"{kind}_{scale}": analytic_object(kind, scale, size) for kind in KINDS for scale in SCALES_NM}
    voxels = sum(int(mask.sum()) for mask, _ in objects.values())
    implementations = {
        "before": lambda mask: before_object_mesh(mask, size, np.zeros(3)),
        "after_areas": lambda mask: object_mesh(mask, size, np.zeros(3)),
        "after_mesh": lambda mask: object_mesh(mask, size, np.zeros(3), reduction=SIMPLIFY, max_error=MAX_ERROR),
    }
    case: dict = {"voxel_size_nm_zyx": list(voxel_size), "objects": len(objects), "object_voxels": voxels}
    seconds = median_seconds(
        {
            name: lambda mesh=mesh: [mesh(mask) for mask, _ in objects.values()]
            for name, mesh in implementations.items()
        },
        repeats,
    )
    for name, mesh in implementations.items():
        errors, triangles = {}, 0
        for key, (mask, area) in objects.items():
            vertices, faces = mesh(mask)
            errors[key] = round(surface_area(vertices, faces) / area - 1, 4)
            triangles += len(faces)
        case[name] = {
            "seconds": round(seconds[name], 4),
            "seconds_per_million_object_voxels": round(seconds[name] / voxels * 1e6, 4),
            "triangles": triangles,
            "area_error_mean_abs": round(float(np.mean(np.abs(list(errors.values())))), 4),
            "area_error_max_abs": round(float(np.max(np.abs(list(errors.values())))), 4),
            "area_error_by_object": errors,
        }
    raw = {
        key: surface_area(*object_mesh(mask, size, np.zeros(3), smooth_iterations=0)) / area - 1
        for key, (mask, area) in objects.items()
    }
    case["raw_marching_cubes_area_error"] = {
        "mean": round(float(np.mean(list(raw.values()))), 4),
        "min": round(min(raw.values()), 4),
        "max": round(max(raw.values()), 4),
    }
    for name in ("after_areas", "after_mesh"):
        case[name]["speedup_vs_before"] = round(case["before"]["seconds"] / case[name]["seconds"], 2)
    return case


def labelling_case(repeats: int) -> dict:
    import cc3d

    volume = blobs((BLOCK,) * 3, BLOBS, SEMI_AXES, SEED)
    expected, count = ndimage.label(volume, structure=FACE_CONNECTIVITY)
    labels = cc3d.connected_components(volume, connectivity=6, out_dtype=np.uint32)
    local, _ = block_fragments(volume, np.zeros(3, np.int64), volume.shape)
    seconds = median_seconds(
        {
            "scipy": lambda: ndimage.label(volume, structure=FACE_CONNECTIVITY),
            "cc3d": lambda: cc3d.connected_components(volume, connectivity=6, out_dtype=np.uint32),
            "block_fragments": lambda: block_fragments(volume, np.zeros(3, np.int64), volume.shape),
        },
        repeats,
    )
    return {
        "block": [BLOCK] * 3,
        "blobs": BLOBS,
        "semi_axes_voxels": list(SEMI_AXES),
        "seed": SEED,
        "foreground_fraction": round(float(volume.mean()), 4),
        "components": int(count),
        "cc3d_ids_equal_scipy": bool((labels == expected).all()),
        "block_fragments_ids_equal_scipy": bool((local == expected).all()),
        "scipy_label_seconds": round(seconds["scipy"], 4),
        "cc3d_seconds": round(seconds["cc3d"], 4),
        "cc3d_speedup": round(seconds["scipy"] / seconds["cc3d"], 2),
        "block_fragments_seconds": round(seconds["block_fragments"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="repeats of every measurement (medians reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mesh.json")
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.timezone.utc)
    digest, load_before = source_digest(), os.getloadavg()[0]
    meshes = {"x".join(f"{v:g}" for v in size): mesh_case(size, args.repeats) for size in VOXEL_SIZES}
    labelling = labelling_case(args.repeats)
    targets = {
        "mesh_areas_as_accurate": {
            key: {
                name: case[name]["area_error_max_abs"] <= case["before"]["area_error_max_abs"] + 0.005
                for name in ("after_areas", "after_mesh")
            }
            for key, case in meshes.items()
        },
        "seconds_per_million_object_voxels": {
            key: {
                name: case[name]["seconds_per_million_object_voxels"]
                for name in ("before", "after_areas", "after_mesh")
            }
            for key, case in meshes.items()
        },
        "cc3d_faster_and_equal": labelling["cc3d_speedup"] > 1 and labelling["block_fragments_ids_equal_scipy"],
    }
    result = {
        "benchmark": "meshes (zmesh vs scikit-image marching cubes + Taubin) and block labelling (cc3d vs scipy)",
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()),
        "machine": machine(("incasem-like", "numpy", "scipy", "scikit-image", "zmesh", "connected-components-3d")),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "repeats": args.repeats,
            "kinds": list(KINDS),
            "scales_nm": list(SCALES_NM),
            "simplify": SIMPLIFY,
            "max_error_voxels": MAX_ERROR,
        },
        "meshes": meshes,
        "labelling": labelling,
        "targets": targets,
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
