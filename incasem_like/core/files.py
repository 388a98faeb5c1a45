"""Files that readers see whole or not at all, and their checksums."""

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that appears under `path` only once complete and on disk (creating its folder).

    It is written as `<path>.partial`, flushed to disk, then renamed into place and the folder's entry flushed: a
    crash or kill at any moment leaves the previous file or the complete new one, never a part of it. An exception
    while writing leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path) as file:
        file.write(data.encode() if isinstance(data, str) else data)


def file_digest(path: str | Path) -> str:
    """sha256 of a file (checkpoints and configs: a few MB at most, read at once)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
