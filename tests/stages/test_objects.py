import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.core.geometry import to_world
from incasem_like.stages.objects import SCRATCH, find_objects, load_object_table, table_path
from incasem_like.store.datasets import DatasetPath, create_dataset, dataset_meta, open_dataset, update_dataset_meta
from incasem_like.store.object_table import CSV_COLUMNS
from tests.conftest import read_dataset, run_cli
from tests.objects_stages import SlowFragmentsStage
from tests.toy_stages import kill_midway


def write_volume(path, volume: np.ndarray, voxel_size=(5, 5, 5), offset=(0, 0, 0), chunk=16) -> DatasetPath:
    """A complete dataset holding `volume` (any voxel size; `voxel_size` and `offset` in nm)."""
    path = DatasetPath.parse(path)
    array = create_dataset(path, volume.shape, to_world(voxel_size), to_world(offset), volume.dtype, (chunk,) * 3)
    array[array.roi] = volume
    update_dataset_meta(path, complete=True)
    return path


def read_csv(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def tangled_volume(shape=(32, 40, 48), seed=3) -> np.ndarray:
    """Blobs of many sizes, plus objects built to cross block borders of 16 (uint8 0/1)."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.56
    volume[:, 30:, :] = False
    volume[10:24, 10:20, 10:36] = False
    volume[0:30, 32, 2] = volume[0:30, 32, 44] = True  # a U whose arms meet only in the last z block
    volume[29, 32, 2:45] = True
    volume[1, 38, :] = True  # a comb spanning every x and z block
    volume[1:31, 38, ::8] = True
    volume[12:16, 12:16, 12:16] = volume[16:20, 16:20, 16:20] = True  # corner to corner: two objects
    volume[12:16, 12:16, 24:28] = volume[16:20, 16:20, 24:28] = True  # edge to edge: two objects
    volume[14:16, 12:16, 30:34] = volume[16:18, 12:16, 30:34] = True  # face to face across z = 16: one object
    return volume.astype(np.uint8)


def test_blockwise_components_equal_one_global_scipy_label_with_their_statistics(tmp_path):
    volume = tangled_volume()
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", volume * 3, voxel_size=(4, 5, 6), offset=(40, 50, 60))
    expected, count = ndimage.label(volume)  # scipy's default structure: face connectivity

    result = find_objects(str(seg), tmp_path / "objects.csv", str(seg) + "_objects", block=16, chunk=8, workers=2)

    ids = open_dataset(result.labels)
    assert ids.dtype == np.uint32 and ids.offset_nm == (40, 50, 60) and ids.voxel_size_nm == (4, 5, 6)
    np.testing.assert_array_equal(read_dataset(result.labels), expected)  # the same ids, not just the same sets
    assert count > 20 and result.objects == count
    assert sum(s["blocks_processed"] for s in result.summaries.values()) == 2 * 2 * 3 * 3
    assert expected[14, 14, 14] != expected[17, 17, 17] and expected[14, 14, 26] != expected[17, 17, 26]
    assert expected[15, 14, 31] == expected[16, 14, 31] and expected[0, 32, 2] == expected[0, 32, 44]
    rows = read_csv(result.csv)
    assert tuple(rows[0]) == CSV_COLUMNS and [int(r["object_id"]) for r in rows] == list(range(1, count + 1))
    voxel_size, offset = np.array([4, 5, 6]), np.array([40, 50, 60])
    labels = range(1, count + 1)
    centroids = offset + (np.array(ndimage.center_of_mass(volume, expected, labels)) + 0.5) * voxel_size
    for row, box, centroid in zip(rows, ndimage.find_objects(expected), centroids):
        voxels = int(np.count_nonzero(expected[box] == int(row["object_id"])))
        assert int(row["voxel_count"]) == voxels and int(row["volume_nm3"]) == voxels * 120
        got = [float(row[f"centroid_{a}_nm"]) for a in "zyx"]
        np.testing.assert_allclose(got, centroid, rtol=0, atol=1e-6)
        begin, end = np.array([s.start for s in box]), np.array([s.stop for s in box])
        assert [float(row[f"bbox_offset_{a}_nm"]) for a in "zyx"] == list(offset + begin * voxel_size)
        assert [float(row[f"bbox_shape_{a}_nm"]) for a in "zyx"] == list((end - begin) * voxel_size)
        assert int(row["touches_border"]) == int((begin == 0).any() or (end == volume.shape).any())
        assert float(row["surface_area_nm2"]) > 0
    assert not (tmp_path / "c.zarr" / SCRATCH).exists() or not any((tmp_path / "c.zarr" / SCRATCH).rglob("*.npz"))


def shapes_volume(shape=(48, 64, 64), voxel_size=(8, 5, 5)) -> np.ndarray:
    """A ball (r = 80 nm), an ellipsoid (semi-axes 48, 100, 70 nm along z, y, x), a box and a box on the border."""
    centres = (np.indices(shape).T + 0.5).T * np.array(voxel_size)[:, None, None, None]  # voxel centres, nm

    def inside(centre, semi_axes):
        return sum(((c - m) / s) ** 2 for c, m, s in zip(centres, centre, semi_axes)) <= 1

    volume = inside((132, 102, 98), (80, 80, 80)) | inside((300, 210, 200), (48, 100, 70))
    volume[2:10, 44:60, 40:62] = True
    volume[40:48, 0:6, 0:6] = True
    return volume.astype(np.uint8)


def test_shapes_in_nm_with_anisotropic_voxels_and_an_offset(tmp_path):
    voxel_size, offset = np.array([8, 5, 5]), np.array([800, -50, 100])
    volume = shapes_volume()
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", volume, voxel_size=voxel_size, offset=offset)
    out = tmp_path / "c.zarr/volumes/objects/seg"

    result = run_cli("objects", seg, tmp_path / "stats/shapes.csv", "--labels-out", out, "--block", 32, "--chunk", 16)

    assert result.returncode == 0, result.stderr
    assert "4 objects" in result.stdout and "0 skipped" in result.stdout
    rows = {int(r["object_id"]): r for r in read_csv(tmp_path / "stats/shapes.csv")}
    expected, _ = ndimage.label(volume)
    np.testing.assert_array_equal(read_dataset(out), expected)
    box, ball, ellipsoid, border = (int(expected[i]) for i in ((2, 44, 40), (16, 20, 19), (37, 42, 40), (47, 0, 0)))

    def values(row, names):
        return np.array([float(row[name]) for name in names])

    def axes(row):
        return values(row, ["axis_major_nm", "axis_middle_nm", "axis_minor_nm"])

    r = 80
    assert float(rows[ball]["volume_nm3"]) == pytest.approx(4 / 3 * math.pi * r**3, rel=0.01)
    assert float(rows[ball]["surface_area_nm2"]) == pytest.approx(4 * math.pi * r**2, rel=0.03)
    np.testing.assert_allclose(values(rows[ball], [f"centroid_{a}_nm" for a in "zyx"]), offset + (132, 102, 98), atol=1)
    np.testing.assert_allclose(axes(rows[ball]), 2 * r, rtol=0.03)
    assert float(rows[ellipsoid]["volume_nm3"]) == pytest.approx(4 / 3 * math.pi * 48 * 100 * 70, rel=0.02)
    np.testing.assert_allclose(axes(rows[ellipsoid]), (200, 140, 96), rtol=0.03)
    assert int(rows[box]["voxel_count"]) == 8 * 16 * 22 and float(rows[box]["volume_nm3"]) == 8 * 16 * 22 * 200
    np.testing.assert_array_equal(values(rows[box], [f"bbox_offset_{a}_nm" for a in "zyx"]), offset + (16, 220, 200))
    np.testing.assert_array_equal(values(rows[box], [f"bbox_shape_{a}_nm" for a in "zyx"]), (64, 80, 110))
    np.testing.assert_allclose(values(rows[box], [f"centroid_{a}_nm" for a in "zyx"]), offset + (48, 260, 255))
    box_area = 2 * (64 * 80 + 64 * 110 + 80 * 110)
    assert 0.9 * box_area < float(rows[box]["surface_area_nm2"]) < box_area  # marching cubes bevels the edges
    assert [int(rows[i]["touches_border"]) for i in (box, ball, ellipsoid, border)] == [0, 0, 0, 1]
    meta = dataset_meta(DatasetPath.parse(out))
    assert meta["complete"] and meta["kind"] == "labels" and meta["objects"] == 4

    again = run_cli("objects", seg, tmp_path / "stats/shapes.csv", "--labels-out", out, "--block", 32, "--chunk", 16)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr


def test_rerun_after_a_kill_skips_finished_blocks(tmp_path):
    volume = tangled_volume()
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", volume)
    labels, table = tmp_path / "c.zarr/volumes/objects", tmp_path / "objects.csv"
    kill_midway(SlowFragmentsStage(segmentation=str(seg), labels=str(labels), block=16, chunk=16), 2, 0.5)
    assert not labels.exists()  # the ids are written in the last step

    result = run_cli("objects", seg, table, "--labels-out", labels, "--block", 16, "--chunk", 16, "--quiet")

    assert result.returncode == 0, result.stderr
    fragments_line = result.stdout.split("fragments: ")[1]
    skipped = int(fragments_line.split(" skipped")[0].split()[-1])
    assert 2 <= skipped < 2 * 3 * 3, result.stdout
    np.testing.assert_array_equal(read_dataset(labels), ndimage.label(volume)[0])
    assert len(read_csv(table)) == ndimage.label(volume)[1]


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("missing", [], "no such dataset"),
        ("float32", [], "dtype float32 is not a segmentation"),
        ("existing csv", [], "objects.csv already exists; pass --overwrite"),
        ("existing labels", [], "was not written by this exact command; pass --overwrite"),
        ("ok", ["--block", 24], "--block 24 must be a positive multiple of --chunk 16"),
        ("ok", ["--labels-out", "SEG"], "the output is the input"),
        ("ok", ["--workers", 0], "--workers 0: need at least one worker"),
    ],
)
def test_bad_input_fails_with_one_line_and_overwrites_nothing(tmp_path, capsys, setup, extra, message):
    seg, labels, table = tmp_path / "c.zarr/volumes/seg", tmp_path / "c.zarr/volumes/ids", tmp_path / "objects.csv"
    if setup != "missing":
        write_volume(seg, np.ones((8, 8, 8), np.float32 if setup == "float32" else np.uint8))
    if setup == "existing csv":
        table.write_text("precious\n")
    if setup == "existing labels":
        write_volume(labels, np.full((8, 8, 8), 7, np.uint32))
    extra = [str(seg) if e == "SEG" else str(e) for e in extra]
    labels_out = [] if "--labels-out" in extra else ["--labels-out", str(labels)]

    code = main(["objects", str(seg), str(table), *labels_out, "--chunk", "16", *extra])

    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    if setup == "existing csv":
        assert table.read_text() == "precious\n"
    else:
        assert not table.exists()
    if setup == "existing labels":
        assert (read_dataset(labels) == 7).all()
    else:
        assert not DatasetPath.parse(labels).exists()


def test_bad_input_exits_with_code_2_from_the_command_line(tmp_path):
    result = run_cli("objects", tmp_path / "c.zarr/volumes/seg", tmp_path / "objects.csv")
    assert (
        result.returncode == 2
        and result.stderr.startswith("incasem-like: error: ")
        and "no such dataset" in result.stderr
    )
    assert not (tmp_path / "objects.csv").exists()


def test_morphometrics_in_the_table_with_distances_to_another_class_and_the_cell_boundary(tmp_path):
    voxel_size = np.array([6.4, 5.0, 5.0])  # anisotropic, non-integer
    shape = (40, 48, 96)
    points = (np.indices(shape).T + 0.5).T * voxel_size[:, None, None, None]
    ball = ((points - np.array([128, 120, 120])[:, None, None, None]) ** 2).sum(axis=0) <= 60**2
    tube = (np.hypot(points[0] - 128, points[1] - 120) <= 30) & (points[2] > 250) & (points[2] < 430)
    other = np.zeros(shape, np.uint8)
    other[:, :, 90:] = 1  # from x = 450 nm: 20 nm beyond the tube, 270 nm beyond the ball
    cell = np.zeros(shape, np.uint8)
    cell[1:-1, 1:-1, 1:-1] = 1
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", (ball | tube).astype(np.uint8), voxel_size=voxel_size)
    write_volume(tmp_path / "c.zarr/volumes/er", other, voxel_size=voxel_size)
    write_volume(tmp_path / "c.zarr/volumes/cell", cell, voxel_size=voxel_size)

    result = run_cli(
        "objects", seg, tmp_path / "m.csv", "--block", 32, "--chunk", 16, "--other", tmp_path / "c.zarr/volumes/er",
        "--mask", tmp_path / "c.zarr/volumes/cell", "--max-distance", 100, "--section-axis", "x",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    ball_row, tube_row = read_csv(tmp_path / "m.csv")
    volume = float(ball_row["volume_nm3"])
    assert float(ball_row["equivalent_diameter_nm"]) == pytest.approx(120, rel=0.01)
    assert float(ball_row["sphericity"]) == pytest.approx(1, abs=0.04)  # the surface within 3%
    assert float(ball_row["surface_to_volume_per_nm"]) == pytest.approx(3 / 60, rel=0.04)
    assert float(ball_row["surface_to_volume_per_nm"]) * volume == pytest.approx(float(ball_row["surface_area_nm2"]))
    assert float(ball_row["distance_to_other_nm"]) == math.inf  # 270 nm: beyond --max-distance
    assert float(ball_row["distance_to_mask_boundary_nm"]) == pytest.approx(120 - 60 - 6.4, abs=6.4)  # the z faces
    assert float(tube_row["distance_to_other_nm"]) == pytest.approx(20, abs=5)
    direction = [float(tube_row[f"axis_major_direction_{a}"]) for a in "zyx"]
    np.testing.assert_allclose(direction, (0, 0, 1), atol=1e-6)
    assert int(tube_row["section_count"]) == 36  # x slices 50..85
    assert float(tube_row["section_perimeter_mean_nm"]) == pytest.approx(2 * math.pi * 30, rel=0.04)
    assert float(tube_row["section_axis1_mean_nm"]) == pytest.approx(60, rel=0.05)
    assert int(tube_row["skeleton_branches"]) == 1
    assert float(tube_row["skeleton_length_nm"]) == pytest.approx(180, abs=30)

    plain = run_cli("objects", seg, tmp_path / "p.csv", "--labels-out", tmp_path / "c.zarr/volumes/ids2")
    assert plain.returncode == 0, plain.stderr
    assert read_csv(tmp_path / "p.csv")[0]["distance_to_other_nm"] == ""  # not asked for


def test_a_mask_on_another_grid_is_refused_in_one_line(tmp_path, capsys):
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", np.ones((8, 8, 8), np.uint8))
    mask = write_volume(tmp_path / "c.zarr/volumes/cell", np.ones((8, 8, 8), np.uint8), voxel_size=(10, 10, 10))
    code = main(["objects", str(seg), str(tmp_path / "o.csv"), "--mask", str(mask), "--chunk", "8"])
    err = capsys.readouterr().err
    assert code == 2 and f"--mask {mask}: voxel size (10.0, 10.0, 10.0) differs" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def test_a_table_of_an_older_version_is_refused_in_one_line(tmp_path):
    ids = write_volume(tmp_path / "c.zarr/volumes/ids", np.zeros((4, 4, 4), np.uint32))
    np.savez(table_path(ids), voxel_size=np.ones(3))
    with pytest.raises(UserError, match="its object table has no 'offset' .* rerun `incasem-like objects`"):
        load_object_table(ids)
