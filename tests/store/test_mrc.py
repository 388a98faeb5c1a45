import bz2
import gzip
import struct
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from incasem_like.core.errors import UserError
from incasem_like.store.mrc import is_mrc_path, open_mrc, write_mrc, write_mrc_array
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA / "mrc"
FILES = sorted(path.name for path in DATA.glob("*") if is_mrc_path(path)) if DATA.is_dir() else []
QUIRKY = {"mrc3D.mrc", "rec3D.rec", "mrc2D.mrc"}  # no 'MAP ' id, no machine stamp

pytestmark = [
    pytest.mark.skipif(not DATA.is_dir(), reason=f"the real MRC files are not at {DATA}"),
    # mrcfile 1.5 sets a header's dtype in place when reading, which numpy 2.5 deprecates
    pytest.mark.filterwarnings("ignore:Setting the dtype on a NumPy array:DeprecationWarning"),
]


def reference(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The data and voxel size (Å, x y z) as mrcfile reads them (its complaints about quirks silenced)."""
    with warnings.catch_warnings(action="ignore"), mrcfile.open(path, permissive=True) as mrc:
        return mrc.data.copy(), tuple(float(size) for size in mrc.voxel_size.item())


def patched(tmp_path: Path, source: str, offset: int, fmt: str, *values, name: str | None = None) -> Path:
    """A copy of a real file with the header bytes at `offset` replaced."""
    content = bytearray((DATA / source).read_bytes())
    struct.pack_into(fmt, content, offset, *values)
    path = tmp_path / (name or source)
    path.write_bytes(content)
    return path


def refused(path: Path, *words: str) -> str:
    """Opening `path` raises a one-line UserError naming the file and `words`."""
    with pytest.raises(UserError) as error:
        with open_mrc(path):
            pass
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.mrc", True),
        ("A.REC", True),
        ("b.map.gz", True),
        ("c.st.BZ2", True),
        ("d.Map", True),
        ("e.tif", False),
        ("f.gz", False),
        ("mrc", False),
        ("g.mrc.zip", False),
    ],
)
def test_mrc_paths_are_told_by_suffix(name, expected):
    assert is_mrc_path(Path(name)) is expected


def test_the_real_files_are_all_there():
    assert set(FILES) >= {"EMD-3197.map", "emd_3197.map.gz", "EMD-3197.map.bz2", "EMD-3001.map", "emd_3001.map.gz"}
    assert set(FILES) >= QUIRKY


@pytest.mark.parametrize("name", FILES)
def test_every_real_file_reads_as_mrcfile_reads_it(name):
    path = DATA / name
    expected, (x, y, z) = reference(path)
    with open_mrc(path) as volume:
        assert volume.data.ndim == 3 and volume.data.dtype == expected.dtype
        np.testing.assert_array_equal(volume.data, expected.reshape(volume.data.shape))
        assert volume.data.shape[-expected.ndim :] == expected.shape
        assert not volume.data.flags.writeable
        assert isinstance(volume.data, np.memmap) is not name.endswith((".gz", ".bz2"))
        z = z if 0 < z < np.inf else x
        assert volume.voxel_size_nm == (z / 10, y / 10, x / 10)
        quirks = " ".join(volume.warnings)
        if name in QUIRKY:
            assert "lacks the 'MAP ' id" in quirks and "machine stamp" in quirks
            assert all(warning.startswith(f"{path}: ") for warning in volume.warnings)
        else:
            assert volume.warnings == ()


def test_anisotropic_sub_nm_voxels_are_the_header_values():
    for name in ("EMD-3001.map", "emd_3001.map.gz"):
        with open_mrc(DATA / name) as volume:
            assert volume.data.shape == (25, 43, 73)
            z, y, x = (float(np.float32(size)) / 10 for size in (0.45874998, 0.3925, 0.44825))
            assert volume.voxel_size_nm == (z, y, x)


def test_a_2d_image_is_one_slice_and_borrows_the_x_voxel_size_for_z():
    with open_mrc(DATA / "mrc2D.mrc") as volume:
        assert volume.data.shape == (1, 64, 32)
        assert volume.voxel_size_nm == pytest.approx((2.32, 2.32, 2.32), rel=1e-5)
        assert any("z voxel size is inf" in warning for warning in volume.warnings)


def test_a_zero_voxel_size_is_none_and_an_override_skips_the_header(tmp_path):
    zero = patched(tmp_path, "EMD-3197.map", 40, "<3f", 0, 0, 0)
    with open_mrc(zero) as volume:
        assert volume.voxel_size_nm is None and volume.warnings == ()
    negative = patched(tmp_path, "EMD-3197.map", 40, "<3f", -228, 228, 228, name="negative.map")
    with open_mrc(negative, voxel_size_nm=(50, 4.6, 4.6)) as volume:
        assert volume.voxel_size_nm == (50, 4.6, 4.6)


def test_byte_order_follows_the_machine_stamp_or_else_the_mode(tmp_path):
    data = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    path = tmp_path / "big.mrc"
    with warnings.catch_warnings(action="ignore"), mrcfile.new(path, data) as mrc:
        mrc.voxel_size = 10
    with open_mrc(path) as volume:
        assert volume.data.dtype == ">f4" and volume.warnings == () and volume.voxel_size_nm == (1, 1, 1)
        np.testing.assert_array_equal(volume.data, data)
    wrong = tmp_path / "wrong.mrc"
    wrong.write_bytes(path.read_bytes()[:212] + b"\x44\x44\x00\x00" + path.read_bytes()[216:])  # little-endian
    with open_mrc(wrong) as volume:
        np.testing.assert_array_equal(volume.data, data)
        assert volume.warnings == (
            f"{wrong}: the machine stamp contradicts the header's byte order; read as big-endian",
        )


def test_an_image_stack_is_a_volume_of_its_images(tmp_path):
    stack = patched(tmp_path, "EMD-3197.map", 88, "<i", 0, name="stack.st")  # ispg 0
    with open_mrc(stack) as volume:
        np.testing.assert_array_equal(volume.data, reference(DATA / "EMD-3197.map")[0])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("voxel_size", [(50.0, 4.6, 4.6), (0.045875, 0.03925, 0.044825)])
def test_written_volumes_read_back(tmp_path, dtype, voxel_size):
    low, high = (np.iinfo(dtype).min, np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else (-1e3, 1e3)
    data = np.random.default_rng(0).uniform(low, high, (7, 5, 3)).astype(dtype)
    path = tmp_path / "out.mrc"
    write_mrc(path, data.shape, data.dtype, voxel_size, [(4, data[4:]), (0, data[:4])])
    with open_mrc(path) as volume:
        assert volume.data.dtype == dtype and volume.warnings == ()
        np.testing.assert_array_equal(volume.data, data)
        assert volume.voxel_size_nm == pytest.approx(voxel_size, rel=1e-6)
    with mrcfile.open(path) as mrc:  # strict: a well-formed file
        assert mrc.voxel_size.item() == pytest.approx([size * 10 for size in reversed(voxel_size)], rel=1e-6)
        assert (mrc.header.dmin, mrc.header.dmax) == (data.min(), data.max())
        assert mrc.header.dmean == pytest.approx(data.mean(dtype=np.float64), rel=1e-5)
        assert mrc.header.rms == pytest.approx(data.std(dtype=np.float64), rel=1e-5)
    assert [child.name for child in tmp_path.iterdir()] == ["out.mrc"]


@pytest.mark.parametrize(
    "dtype, mode, stored",
    [(np.uint8, 6, np.uint16), (np.bool_, 0, np.int8), (np.int64, 1, np.int16), (np.float64, 2, np.float32)],
)
def test_other_dtypes_are_written_in_a_mode_that_holds_them(tmp_path, dtype, mode, stored):
    data = (np.arange(24).reshape(2, 3, 4) % (2 if dtype is np.bool_ else 255)).astype(dtype)
    path = tmp_path / "out.mrc"
    write_mrc_array(path, data, (1, 1, 1))
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == mode and mrc.data.dtype == stored
        np.testing.assert_array_equal(mrc.data, data)


def test_values_beyond_the_widest_integer_mode_are_refused(tmp_path):
    path = tmp_path / "labels.mrc"
    with pytest.raises(UserError, match=r"labels\.mrc: values 0\.\.70000 do not fit .*uint16"):
        write_mrc_array(path, np.array([[[0, 70000]]], dtype=np.uint64), (1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_slab_stream_leaves_no_file_and_the_old_one_untouched(tmp_path):
    path = tmp_path / "out.mrc"
    path.write_bytes(b"old")

    def slabs():
        yield 0, np.zeros((2, 3, 4), np.float32)
        raise RuntimeError("zarr read failed")

    with pytest.raises(RuntimeError, match="zarr read failed"):
        write_mrc(path, (4, 3, 4), np.float32, (1, 1, 1), slabs())
    with pytest.raises(ValueError, match="not written"):
        write_mrc(path, (4, 3, 4), np.float32, (1, 1, 1), [(0, np.zeros((2, 3, 4), np.float32))])
    assert [child.name for child in tmp_path.iterdir()] == ["out.mrc"] and path.read_bytes() == b"old"


def test_bad_output_requests_are_refused(tmp_path):
    data = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(UserError, match="written uncompressed"):
        write_mrc_array(tmp_path / "out.mrc.gz", data, (1, 1, 1))
    with pytest.raises(UserError, match="three positive numbers"):
        write_mrc_array(tmp_path / "out.mrc", data, (1, 0, 1))
    with pytest.raises(UserError, match="complex64 data cannot be written"):
        write_mrc_array(tmp_path / "out.mrc", data.astype(np.complex64), (1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "x.mrc"
    path.write_bytes((DATA / "EMD-3197.map").read_bytes()[: 1024 + 1200])
    message = refused(path, "truncated", "copy it again")
    assert "20 x 20 x 20 (x y z) float32 voxels (32000 bytes) but the file holds 1200 bytes" in message
    packed = tmp_path / "x.mrc.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    refused(packed, "holds 1200 bytes", "truncated")
    cut = tmp_path / "cut.map.bz2"
    cut.write_bytes((DATA / "EMD-3197.map.bz2").read_bytes()[:20000])
    refused(cut, "cannot be decompressed")
    short = tmp_path / "short.mrc"
    short.write_bytes(b"\0" * 500)
    refused(short, "shorter than an MRC header")


def test_a_file_longer_than_its_header_declares_is_refused(tmp_path):
    path = tmp_path / "x.mrc"
    path.write_bytes((DATA / "mrc3D.mrc").read_bytes() + bytes(100))
    refused(path, "holds 159844 bytes", "dimensions are wrong")
    packed = tmp_path / "x.map.bz2"
    packed.write_bytes(bz2.compress((DATA / "EMD-3197.map").read_bytes() + bytes(8)))
    refused(packed, "holds 32008 bytes", "dimensions are wrong")


@pytest.mark.parametrize("mode, kind", [(3, "complex int16"), (4, "complex float32"), (101, "4-bit"), (7, "")])
def test_unsupported_modes_are_refused(tmp_path, mode, kind):
    message = refused(patched(tmp_path, "EMD-3197.map", 12, "<i", mode), f"MRC mode {mode}", "2 float32", "convert it")
    assert kind in message


@pytest.mark.parametrize("cell, word", [((-228, 228, 228), "negative"), ((228, float("nan"), 228), "NaN")])
def test_negative_or_nan_voxel_sizes_are_refused(tmp_path, cell, word):
    refused(patched(tmp_path, "EMD-3197.map", 40, "<3f", *cell), word, "--voxel-size")


def test_corrupt_sizes_are_refused(tmp_path):
    refused(patched(tmp_path, "EMD-3197.map", 0, "<i", -20), "-20 x 20 x 20", "corrupt")
    refused(patched(tmp_path, "EMD-3197.map", 92, "<i", -5, name="x.map"), "-5-byte extended header")
    cut = patched(tmp_path, "EMD-3197.map", 92, "<i", 10**9, name="cut.map")
    refused(cut, "after a 1000000000-byte extended header) but the file holds only 32000 bytes after", "truncated")
    refused(patched(tmp_path, "EMD-3197.map", 88, "<i", 401, name="y.map"), "stack of volumes")


def test_a_text_file_is_no_mrc(tmp_path):
    path = tmp_path / "x.mrc"
    path.write_text("this is a text file, not a tomogram\n" * 60)
    refused(path, "not an MRC file", "no 'MAP ' id")
