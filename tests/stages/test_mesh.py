import csv
import json
import struct

import numpy as np
import pytest
import zmesh

from incasem_like.cli.main import main
from incasem_like.ops.surfaces import signed_volume, surface_area
from incasem_like.review.view import view_state
from incasem_like.stages.mesh import neuroglancer_fragment
from incasem_like.stages.objects import find_objects
from tests.conftest import run_cli
from tests.ops.test_surfaces import is_closed_and_oriented
from tests.stages.test_objects import shapes_volume, write_volume

VOXEL_SIZE, OFFSET = np.array([8, 5, 5]), np.array([800, -50, 100])


def read_fragment(path) -> tuple[np.ndarray, np.ndarray]:
    """A neuroglancer legacy mesh fragment: uint32 n, n x 3 float32 (x, y, z), uint32 triangle indices."""
    data = path.read_bytes()
    (count,) = struct.unpack("<I", data[:4])
    vertices = np.frombuffer(data, "<f4", count=3 * count, offset=4).reshape(count, 3)
    triangles = np.frombuffer(data, "<u4", offset=4 + 12 * count).reshape(-1, 3)
    return vertices, triangles


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"], header
    elements = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    assert "property list uchar int vertex_indices" in header
    vertices = np.frombuffer(data, "<f4", count=3 * elements["vertex"], offset=end).reshape(-1, 3)
    faces = np.frombuffer(data, [("n", "u1"), ("v", "<i4", (3,))], offset=end + vertices.nbytes)
    assert len(faces) == elements["face"] and (faces["n"] == 3).all()
    return vertices, faces["v"]


def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    vertices = np.array([line.split()[1:] for line in lines if line.startswith("v ")], float)
    triangles = np.array([line.split()[1:] for line in lines if line.startswith("f ")], int) - 1
    return vertices, triangles


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """The shapes of test_objects (ball, ellipsoid, box, border box) as object ids, and their CSV rows."""
    folder = tmp_path_factory.mktemp("mesh")
    seg = write_volume(folder / "c.zarr/volumes/seg", shapes_volume(), voxel_size=VOXEL_SIZE, offset=OFFSET)
    result = find_objects(str(seg), folder / "objects.csv", str(seg) + "_ids", block=64, chunk=16, progress=False)
    with open(result.csv, newline="") as file:
        return folder, str(result.labels), {int(row["object_id"]): row for row in csv.DictReader(file)}


def test_meshes_in_every_format_read_back_in_nm(objects):
    folder, labels, rows = objects
    out = folder / "meshes"

    result = run_cli("mesh", labels, out, "--formats", "neuroglancer", "ply", "obj", "--block", 32, "--workers", 2)

    assert result.returncode == 0, result.stderr
    assert "4 meshes of 4 objects" in result.stdout and "precomputed://" in result.stdout
    assert json.loads((out / "neuroglancer/info").read_text()) == {"@type": "neuroglancer_legacy_mesh"}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["objects"], summary["meshes"], summary["units"], summary["vertex_axes"]) == (
        4,
        4,
        "nm",
        list("xyz"),
    )
    for object_id, row in rows.items():
        manifest = json.loads((out / f"neuroglancer/{object_id}:0").read_text())
        assert manifest == {"fragments": [f"{object_id}.frag"]}
        vertices, triangles = read_fragment(out / "neuroglancer" / manifest["fragments"][0])
        ply_vertices, ply_triangles = read_ply(out / f"ply/{object_id}.ply")
        obj_vertices, obj_triangles = read_obj(out / f"obj/{object_id}.obj")
        np.testing.assert_array_equal(ply_vertices, vertices)
        np.testing.assert_array_equal(ply_triangles, triangles)
        np.testing.assert_allclose(obj_vertices, vertices, atol=5e-4)
        np.testing.assert_array_equal(obj_triangles, triangles)
        assert is_closed_and_oriented(triangles)
        # x, y, z in nm: inside the bounding box, which the smoothed surface nearly fills
        begin = np.array([float(row[f"bbox_offset_{a}_nm"]) for a in "xyz"])
        end = begin + np.array([float(row[f"bbox_shape_{a}_nm"]) for a in "xyz"])
        slack = VOXEL_SIZE[::-1] / 4  # smoothing moves a vertex a fraction of a voxel
        assert (vertices.min(axis=0) >= begin - slack).all() and (vertices.max(axis=0) <= end + slack).all()
        assert (vertices.min(axis=0) <= begin + VOXEL_SIZE[::-1]).all()
        assert (vertices.max(axis=0) >= end - VOXEL_SIZE[::-1]).all()
        # simplified (--simplify 4 by default): the area within 0.5% of the CSV's, which is the unsimplified mesh's
        assert surface_area(vertices.astype(float), triangles) == pytest.approx(float(row["surface_area_nm2"]), 5e-3)
        volume = signed_volume(vertices.astype(float), triangles)  # positive: triangles wound outward in x y z
        assert volume == pytest.approx(float(row["volume_nm3"]), rel=0.1)

    again = run_cli("mesh", labels, out, "--formats", "neuroglancer", "ply", "obj", "--block", 32)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr


def test_unsimplified_meshes_have_the_csv_areas_and_simplified_ones_fewer_triangles(objects):
    folder, labels, rows = objects
    full, simplified = folder / "full", folder / "simplified"

    assert run_cli("mesh", labels, full, "--formats", "ply", "--simplify", 1, "--quiet").returncode == 0
    assert run_cli("mesh", labels, simplified, "--formats", "ply", "--simplify", 8, "--max-error", 1).returncode == 0

    summaries = [json.loads((out / "summary.json").read_text()) for out in (full, simplified)]
    assert [(s["simplify"], s["max_error"]) for s in summaries] == [(1, 0.25), (8, 1.0)]
    assert summaries[1]["triangles"] < summaries[0]["triangles"] / 4
    for object_id, row in rows.items():
        vertices, triangles = read_ply(full / f"ply/{object_id}.ply")
        assert surface_area(vertices.astype(float), triangles) == pytest.approx(float(row["surface_area_nm2"]), 1e-4)
        vertices, triangles = read_ply(simplified / f"ply/{object_id}.ply")
        assert is_closed_and_oriented(triangles)
        assert surface_area(vertices.astype(float), triangles) == pytest.approx(float(row["surface_area_nm2"]), 0.03)


def test_raw_coarse_ply_meshes_are_closed_and_in_place(objects, capsys):
    folder, labels, rows = objects
    out = folder / "coarse"

    result = run_cli("mesh", labels, out, "--formats", "ply", "--smooth", 0, "--step-size", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".incasem_run", "ply", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    # simplified (the default --simplify 4) without leaving the box: quadric edge collapse keeps its corners
    assert summary["step_size"] == 2 and summary["smooth_iterations"] == 0 and summary["smaller_than_step_size"] == 0
    ball = max(rows, key=lambda i: float(rows[i]["axis_minor_nm"]))
    vertices, triangles = read_ply(out / f"ply/{ball}.ply")
    assert is_closed_and_oriented(triangles)
    box = next(i for i, row in rows.items() if row["bbox_shape_x_nm"] == "110")
    vertices, _ = read_ply(out / f"ply/{box}.ply")
    begin = np.array([float(rows[box][f"bbox_offset_{a}_nm"]) for a in "xyz"])
    # every other voxel is sampled: faces lie halfway between samples, half a voxel before the voxel faces
    np.testing.assert_allclose(vertices.min(axis=0), begin - VOXEL_SIZE[::-1] / 2, atol=1e-3)
    np.testing.assert_allclose(vertices.max(axis=0), begin + (110, 80, 64) - VOXEL_SIZE[::-1] / 2, atol=1e-3)

    before = snapshot(out)
    code = main(["mesh", labels, str(out), "--formats", "ply", "--smooth", "3", "--step-size", "2"])
    stderr = capsys.readouterr().err
    assert code == 2 and "already exists and was not written by this exact command; pass --overwrite" in stderr
    assert len(stderr.strip().splitlines()) == 1 and snapshot(out) == before


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("binary", [], "no object table"),
        ("foreign folder", [], "already exists and was not written by this exact command; pass --overwrite"),
        ("foreign folder", ["--overwrite"], "a folder incasem-like did not write; --overwrite replaces only folders"),
        ("none", ["--step-size", "0"], "--step-size 0: "),
        ("none", ["--simplify", "0"], "--simplify 0: "),
        ("none", ["--max-error", "0"], "--max-error 0.0: "),
        ("none", ["--workers", "0"], "--workers 0: need at least one worker"),
    ],
)
def test_bad_input_fails_with_one_line_and_touches_nothing(objects, tmp_path, capsys, setup, extra, message):
    folder, labels, _ = objects
    out = tmp_path / "meshes"
    if setup == "binary":
        labels = str(folder / "c.zarr/volumes/seg")
    if setup == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)

    code = main(["mesh", labels, str(out), *extra])

    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert snapshot(tmp_path) == before


def snapshot(folder) -> list:
    """Every path under `folder` with its modification time."""
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_meshes_inside_the_container_become_the_segmentation_layers_mesh_source(objects):
    folder, labels, _ = objects
    out = folder / "c.zarr" / "meshes" / "seg"

    result = run_cli("mesh", labels, out, "--block", 32)

    assert result.returncode == 0, result.stderr
    state, _ = view_state(folder / "c.zarr", ["volumes/seg_ids"], "http://127.0.0.1:8000")
    (layer,) = state["layers"]
    assert layer["type"] == "segmentation"
    assert layer["source"] == [
        "zarr://http://127.0.0.1:8000/volumes/seg_ids",
        "precomputed://http://127.0.0.1:8000/meshes/seg/neuroglancer",
    ]


def test_fragments_are_the_bytes_zmesh_writes_for_neuroglancer():
    vertices = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
    triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)
    assert neuroglancer_fragment(vertices, triangles) == zmesh.Mesh(vertices, triangles, None).to_precomputed()
