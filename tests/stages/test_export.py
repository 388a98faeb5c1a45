import numpy as np
import pytest
import tifffile

from incasem_like.cli.main import main
from incasem_like.stages.export import slice_names
from incasem_like.store.datasets import DatasetPath, update_dataset_meta
from tests.conftest import REPO, read_dataset, run_cli, write_dataset, write_slices


def convert(src, out, *extra, cwd=None):
    result = run_cli("convert", src, out, "--voxel-size", 5, 5, 5, "--chunk", 8, "--quiet", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def export(*args):
    """The command line in its own process."""
    return run_cli("export", *args, "--quiet")


def export_in_process(capsys, *args) -> tuple[int, str, str]:
    """The same command line in this process (exit code, stdout, stderr): for the many variations, fast."""
    code = main(["export", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def compression(tiff) -> str:
    with tifffile.TiffFile(tiff) as file:
        return file.pages[0].compression.name


def read_slices(folder) -> tuple[list[str], np.ndarray]:
    names = sorted(p.name for p in folder.iterdir())
    return names, np.stack([tifffile.imread(folder / name) for name in names])


def test_names_sort_in_z_order():
    assert slice_names(3) == ["slice_0000.tif", "slice_0001.tif", "slice_0002.tif"]
    names = slice_names(10001)
    assert names[-1] == "slice_10000.tif" and sorted(names) == names


#: a sparse uint8 stack (85% zeros), so that dilating it gives a mix of 0 and 1
_rng = np.random.default_rng(3)
STACK = (_rng.integers(1, 256, (21, 37, 45)) * (_rng.random((21, 37, 45)) > 0.85)).astype(np.uint8)
#: the crop converted: z 5..15, y 6..25, x 7..36
CROP = (slice(5, 16), slice(6, 26), slice(7, 37))


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    """STACK converted with --roi CROP into a frame moved by --offset, by a command run in the container's folder
    with relative paths (which is what derived datasets then record as their source)."""
    work = tmp_path_factory.mktemp("work")
    write_slices(work / "slices", STACK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO))  # this checkout's code, whatever the working directory
        convert("slices", "cell.zarr/volumes/raw", "--roi", 5, 6, 7, 11, 20, 30, "--offset", 100, 0, 50, cwd=work)
    return work / "cell.zarr/volumes/raw"


def test_convert_export_convert_round_trips_also_uncropped(tmp_path, cropped, capsys):
    """convert -> export -> convert is the identity; a crop exported with --uncrop comes back in the original
    frame (convert --offset moved the frame in the world: only offsets relative to it matter), zeros outside."""
    plain = export(cropped, tmp_path / "plain", "--threads", 3)
    code, out, err = export_in_process(capsys, cropped, tmp_path / "uncropped", "--uncrop")

    assert plain.returncode == 0 and code == 0, plain.stderr + err
    assert "11 slices slice_0000.tif .. slice_0010.tif, 20 x 30 uint8;" in plain.stdout
    assert "original frame (21, 37, 45) voxels: the data fill z 5..15, y 6..25, x 7..36; 0 elsewhere" in out
    expected = np.zeros_like(STACK)
    expected[CROP] = STACK[CROP]
    for folder, data in (("plain", STACK[CROP]), ("uncropped", expected)):
        names, slices = read_slices(tmp_path / folder)
        assert names == slice_names(len(data)) and slices.dtype == np.uint8
        np.testing.assert_array_equal(slices, data, err_msg=folder)
    assert compression(tmp_path / "plain/slice_0000.tif") == "NONE"  # images: EM intensities barely compress
    convert(tmp_path / "uncropped", tmp_path / "again.zarr/volumes/raw")
    np.testing.assert_array_equal(read_dataset(tmp_path / "again.zarr/volumes/raw"), expected)


def test_derived_labels_are_uncropped_by_their_offset_and_written_as_0_255(tmp_path, cropped, monkeypatch, capsys):
    """A dataset derived from the crop in a sub-region, by a command that recorded its source as a relative path:
    --uncrop follows the records back to the conversion and places the result by its own offset."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    work = cropped.parents[2]
    result = run_cli(
        "labels", "dilate", "cell.zarr/volumes/raw", "cell.zarr/volumes/raw_dilated", "--organelle", "mito",
        "--roi", 3, 4, 1, 8, 16, 20, "--chunk", 8, "--block", 8, "--quiet", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    dilated = work / "cell.zarr/volumes/raw_dilated"
    data = read_dataset(dilated)
    assert set(np.unique(data)) == {0, 1} and data.shape == (8, 16, 20)

    scaled = export_in_process(capsys, dilated, tmp_path / "scaled", "--uncrop")
    kept = export_in_process(capsys, dilated, tmp_path / "kept", "--uncrop", "--keep-values")

    assert scaled[0] == 0 and kept[0] == 0, scaled[2] + kept[2]
    assert ", 0/1 written as 0/255;" in scaled[1] and "0/255" not in kept[1]
    assert "the data fill z 8..15, y 10..25, x 8..27" in kept[1]
    expected = np.zeros(STACK.shape, np.uint8)
    expected[8:16, 10:26, 8:28] = data  # the crop's corner (5, 6, 7) + the --roi offset (3, 4, 1)
    np.testing.assert_array_equal(read_slices(tmp_path / "scaled")[1], expected * 255)
    np.testing.assert_array_equal(read_slices(tmp_path / "kept")[1], expected)
    assert compression(tmp_path / "kept/slice_0000.tif") == "ADOBE_DEFLATE"


def test_instance_labels_keep_their_values(tmp_path, rng, capsys):
    labels = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    path = write_dataset(tmp_path / "c.zarr/volumes/labels/instances", labels, chunk=4)
    update_dataset_meta(path, kind="labels")

    code, out, err = export_in_process(capsys, path, tmp_path / "tiffs")

    assert code == 0 and "0/255" not in out, err
    np.testing.assert_array_equal(read_slices(tmp_path / "tiffs")[1], labels)


def test_overwrite_replaces_a_previous_export(tmp_path, volume, capsys):
    raw = write_dataset(tmp_path / "c.zarr/volumes/raw", volume)
    assert export_in_process(capsys, raw, tmp_path / "tiffs")[0] == 0
    smaller = write_dataset(tmp_path / "c.zarr/volumes/small", volume[:3] // 2)

    refused = export(smaller, tmp_path / "tiffs")
    replaced = export_in_process(capsys, smaller, tmp_path / "tiffs", "--overwrite")

    assert refused.returncode == 2 and "tiffs already exists; pass --overwrite" in refused.stderr
    assert replaced[0] == 0, replaced[2]
    names, slices = read_slices(tmp_path / "tiffs")
    assert names == slice_names(3)
    np.testing.assert_array_equal(slices, volume[:3] // 2)
    # no temporary folders left; beside the slices only the hidden record of the step that wrote them
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiffs.incasem_step.json", "c.zarr", "tiffs"]


def test_a_damaged_chunk_fails_the_export_in_one_line_and_keeps_the_old_output(tmp_path, volume):
    raw = write_dataset(tmp_path / "c.zarr/volumes/raw", volume, chunk=8)
    (raw.array_path / "c/2/0/0").write_bytes(b"not a blosc chunk")  # slices 16..20 cannot be read
    (tmp_path / "old").mkdir()
    tifffile.imwrite(tmp_path / "old/slice_0000.tif", np.ones((2, 2), np.uint8))

    result = export(raw, tmp_path / "old", "--overwrite", "--threads", 1)

    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{raw}: cannot read voxels [16:21] (RuntimeError: error during blosc decompression" in result.stderr
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["slice_0000.tif"]
    assert not (tmp_path / ".old.incomplete").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "c.zarr/volumes/missing: no such dataset"),
        ("uncrop without source", "records neither the crop of a conversion nor the dataset it was derived from"),
        ("source gone", "was derived from gone.zarr/volumes/raw_gone, which is gone"),
        ("not slices", "holds 'notes.txt', which is no TIFF slice; --overwrite only replaces a folder of slices"),
        ("threads", "--threads 0: need at least one thread"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, volume, capsys, case, message):
    raw = write_dataset(tmp_path / "c.zarr/volumes/raw", volume)
    out, extra = tmp_path / "tiffs", []
    if case == "missing":
        raw = tmp_path / "c.zarr/volumes/missing"
    elif case in ("uncrop without source", "source gone"):
        extra = ["--uncrop"]
        if case == "source gone":
            update_dataset_meta(raw, source={"dataset": "gone.zarr/volumes/raw_gone"})
    elif case == "not slices":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = ["--overwrite"]
    elif case == "threads":
        extra = ["--threads", 0]

    code, out_text, err = export_in_process(capsys, raw, out, *extra)

    assert code == 2, out_text + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    if case == "not slices":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert DatasetPath.parse(tmp_path / "c.zarr/volumes/raw").exists()
