import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from incasem_like.core.geometry import to_world
from incasem_like.store.datasets import DatasetPath, create_dataset, open_dataset, update_dataset_meta

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INCASEM_SHARED_DATA", REPO.parent / "shared" / "data"))
# worker processes rebuild the test stages (`tests.toy_stages`) from their module names: they import from the repository
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Slow tests need the shared real data: a selected one fails loudly where it is missing."""
    if any("slow" in item.keywords for item in items) and not (SHARED_DATA / "lucchi_pp_train").is_dir():
        raise pytest.UsageError(f"slow tests need the shared data at {SHARED_DATA} (set INCASEM_SHARED_DATA)")


def write_slices(folder: Path, volume: np.ndarray, name: str = "slice_{}.tif", compression="zlib") -> list[Path]:
    """One 2D TIFF per z slice, numbered without zero padding (so lexical order differs from z order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z, plane in enumerate(volume):
        path = folder / name.format(z)
        tifffile.imwrite(path, plane, compression=compression)
        paths.append(path)
    return paths


def interruptible() -> None:
    """`preexec_fn` of a command that a test stops with Ctrl-C (SIGINT): SIGINT's default disposition, as in a
    terminal, even where the test run itself ignores it (a background job of a non-interactive shell ignores
    SIGINT, and so would every command it starts)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `incasem-like` command line in a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "incasem_like", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def run_cli_in_process(capsys, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, for input it refuses before starting workers (saves a start-up each)."""
    from incasem_like.cli.main import main

    capsys.readouterr()
    with contextlib.chdir(cwd or Path.cwd()):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def volume(rng) -> np.ndarray:
    """A small uint8 volume whose slices are all different."""
    return rng.integers(0, 256, size=(21, 37, 45), dtype=np.uint8)


def write_dataset(path, volume: np.ndarray, chunk: int = 16, offset=(0, 0, 0), voxel_size=(5, 5, 5)) -> DatasetPath:
    """A complete dataset holding `volume`; `offset` and `voxel_size` in nm."""
    path = DatasetPath.parse(path)
    array = create_dataset(path, volume.shape, to_world(voxel_size), to_world(offset), volume.dtype, (chunk,) * 3)
    array[array.roi] = volume
    update_dataset_meta(path, complete=True)
    return path


def read_dataset(path) -> np.ndarray:
    """All of a dataset's full-resolution data."""
    array = open_dataset(path)
    return array[array.roi]
