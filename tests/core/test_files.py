import pytest

from incasem_like.core.files import atomic_file, write_atomically


def test_a_write_shows_the_old_file_or_the_whole_new_one(tmp_path):
    path = tmp_path / "folder" / "result.json"
    write_atomically(path, "old")
    with atomic_file(path) as file:
        file.write(b"ne")
        assert path.read_text() == "old"  # nothing of the new file shows before it is complete
        file.write(b"w")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_a_failed_write_leaves_the_old_file_and_no_part_of_the_new(tmp_path):
    path = tmp_path / "result.json"
    write_atomically(path, "old")
    with pytest.raises(RuntimeError), atomic_file(path) as file:
        file.write(b"half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
