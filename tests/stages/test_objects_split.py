"""`objects --split`: instances that separate touching objects, equal for every block size and worker count."""

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.cli.main import main
from incasem_like.ops.instances import CORE, UNREACHED, grow_seeds, reach_steps, seed_classes
from incasem_like.stages.objects import find_objects
from tests.conftest import read_dataset
from tests.stages.test_objects import read_csv, write_volume


def touching_balls(shape=(40, 48, 56), seed=5) -> np.ndarray:
    """Balls of radius 4-8 voxels that overlap in pairs and chains, some cut by the volume's faces (uint8 0/1)."""
    rng = np.random.default_rng(seed)
    centres = np.indices(shape).reshape(3, -1).T
    volume = np.zeros(int(np.prod(shape)), bool)
    for _ in range(30):
        centre, radius = rng.uniform(0, shape), rng.uniform(4, 8)
        volume |= (((centres - centre) * (1.0, 1.0, 1.0)) ** 2).sum(axis=1) <= radius**2
    return volume.reshape(shape).astype(np.uint8)


def one_pass(volume: np.ndarray, voxel_size, seed_distance: float, reach: float) -> np.ndarray:
    """The rule of incasem_like.ops.instances over the whole volume at once, ids by first voxel."""
    foreground = volume > 0
    steps = reach_steps(reach, np.array(voxel_size, float))
    classes = seed_classes(foreground, np.array(voxel_size, float), seed_distance, steps)
    components, _ = ndimage.label(classes > 0)
    grown = grow_seeds(np.where(classes == CORE, components, 0), foreground, steps)
    grown = np.where(classes == UNREACHED, components, grown)
    present, first = np.unique(grown.ravel(), return_index=True)
    renumber = np.zeros(int(present.max()) + 1, np.int64)
    renumber[present[np.argsort(first)]] = np.arange(len(present))  # 0 comes first: background stays 0
    return renumber[grown]


def test_split_equals_one_pass_for_every_block_size_and_worker_count(tmp_path):
    volume = touching_balls()
    voxel_size = (6, 5, 5)
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", volume, voxel_size=voxel_size, chunk=8)
    expected = one_pass(volume, voxel_size, 18.0, 30.0)
    components = ndimage.label(volume)[1]
    assert expected.max() >= components + 6  # touching balls were split

    for block, workers in ((16, 2), (64, 1)):
        out = f"{seg}_{block}"
        result = find_objects(
            str(seg), tmp_path / f"o{block}.csv", out, block=block, chunk=8, workers=workers,
            seed_distance=18.0, reach=30.0,
        )  # fmt: skip
        np.testing.assert_array_equal(read_dataset(result.labels), expected)
        rows = read_csv(result.csv)
        assert len(rows) == expected.max() == result.objects
        assert [int(r["voxel_count"]) for r in rows] == np.bincount(expected.ravel())[1:].tolist()
        if block == 16:
            first = (tmp_path / "o16.csv").read_text()
        assert (tmp_path / f"o{block}.csv").read_text() == first


def test_two_touching_balls_become_two_objects(tmp_path):
    z, y, x = np.indices((24, 24, 40))
    volume = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 64) | (
        (z - 12) ** 2 + (y - 12) ** 2 + (x - 27) ** 2 <= 64
    )
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", volume.astype(np.uint8))
    split = find_objects(str(seg), tmp_path / "b.csv", str(seg) + "_b", block=16, chunk=16, seed_distance=30.0)
    assert ndimage.label(volume)[1] == 1 and split.objects == 2
    ids = read_dataset(split.labels)
    assert ids[12, 12, 8] != ids[12, 12, 30] and (ids > 0).sum() == volume.sum()


def test_a_seed_distance_below_a_voxel_is_refused_in_one_line(tmp_path, capsys):
    seg = write_volume(tmp_path / "c.zarr/volumes/seg", np.ones((8, 8, 8), np.uint8), voxel_size=(8, 5, 5))
    code = main(["objects", str(seg), str(tmp_path / "o.csv"), "--split", "--seed-distance", "6", "--chunk", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "--seed-distance 6 nm is smaller than a voxel" in err and "8 nm" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("seed_distance", [10.0, 40.0])
def test_split_keeps_every_foreground_voxel(tmp_path, seed_distance):
    volume = touching_balls(shape=(24, 24, 24), seed=int(seed_distance))
    expected = one_pass(volume, (5, 5, 5), seed_distance, 10.0)
    assert ((expected > 0) == (volume > 0)).all()


def test_split_refuses_a_label_volume_in_one_line(tmp_path, capsys):
    seg = write_volume(tmp_path / "c.zarr/volumes/ids", np.arange(512, dtype=np.uint32).reshape(8, 8, 8))
    code = main(["objects", str(seg), str(tmp_path / "o.csv"), "--split", "--chunk", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "dtype uint32 holds labels, not a binary segmentation (0/1)" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()
