"""Stages used only by the tests (importable by worker processes as `tests.toy_stages`)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from daisy import Block
from scipy.ndimage import correlate

from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage
from incasem_like.core.geometry import Coordinate, to_world, voxel_box_text
from incasem_like.stages.clahe import ClaheStage
from incasem_like.stages.convert import ConvertStage
from incasem_like.stages.downsample import DownsampleStage, PyramidLevelStage
from incasem_like.stages.interpolate import InterpolateLabelsStage
from incasem_like.stages.labels import CleanLabelsStage, DilateLabelsStage, MetricMaskStage
from incasem_like.stages.mask import MaskStage
from incasem_like.store.datasets import DatasetPath, create_dataset, open_dataset
from tests.conftest import REPO


class BoxSumStage(BlockwiseStage):
    """Sum of the input over a (2r+1)^3 box (zero outside the data) and the writing worker's pid per voxel.

    The sum needs `r` voxels of context on each side, so a wrong read ROI shows up as a seam. Blocks whose
    write ROI contains `fail_at` (a world position in nm), or every block with `fail_all`, raise while the file
    `fail_while` exists.
    """

    task_name = "box_sum"

    input: str
    output: str
    radius: int = 1
    block: int = 8
    chunk: int = 8
    fail_at: tuple[int, int, int] | None = None
    fail_all: bool = False
    fail_while: str | None = None

    def output_path(self) -> DatasetPath:
        return DatasetPath.parse(self.output)

    def pid_path(self) -> DatasetPath:
        return DatasetPath.parse(self.output + "_pid")

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput(self.output_path()), DatasetOutput(self.pid_path())]

    def layout(self) -> BlockLayout:
        source = open_dataset(self.input)
        voxel_size = source.voxel_size
        block, chunk = Coordinate((self.block,) * 3), Coordinate((self.chunk,) * 3)
        return BlockLayout(source.roi, block * voxel_size, voxel_size * self.radius, voxel_size, chunk * voxel_size)

    def create_outputs(self, layout: BlockLayout) -> None:
        source = open_dataset(self.input)
        for path, dtype in ((self.output_path(), np.int32), (self.pid_path(), np.int64)):
            create_dataset(path, source.shape, source.voxel_size, source.offset, dtype, (self.chunk,) * 3)

    def block_processor(self) -> Callable[[Block], None]:
        source = open_dataset(self.input)
        output = open_dataset(self.output_path(), mode="r+", require_complete=False)
        pids = open_dataset(self.pid_path(), mode="r+", require_complete=False)

        def process(block: Block) -> None:
            failing = self.fail_all or (self.fail_at and block.write_roi.contains(to_world(self.fail_at)))
            if failing and Path(self.fail_while).exists():
                raise ValueError(
                    f"injected failure in {voxel_box_text(block.write_roi, source.voxel_size, source.offset)}"
                )
            data = source.to_ndarray(block.read_roi, fill_value=0).astype(np.int32)
            summed = correlate(data, np.ones((2 * self.radius + 1,) * 3, dtype=np.int32), mode="constant")
            inner = tuple(slice(self.radius, n - self.radius) for n in summed.shape)
            output[block.write_roi] = summed[inner]
            pids[block.write_roi] = np.full(summed[inner].shape, os.getpid(), dtype=np.int64)

        return process


class SlowBlocks:
    """Mixin: sleep INCASEM_TEST_BLOCK_SLEEP seconds after each block, so a test can kill a run mid-way.

    A slow stage has its base stage's task name and parameters, hence its run fingerprint: the real command
    resumes the runs it started.
    """

    def block_processor(self) -> Callable[[Block], None]:
        process = super().block_processor()
        delay = float(os.environ.get("INCASEM_TEST_BLOCK_SLEEP", "0"))

        def slow(block: Block) -> None:
            process(block)
            time.sleep(delay)

        return slow


class SlowBoxSumStage(SlowBlocks, BoxSumStage):
    pass


class SlowConvertStage(SlowBlocks, ConvertStage):
    pass


def start_in_own_session(stage: BlockwiseStage, seconds_per_block: float = 1.0) -> subprocess.Popen:
    """Run `stage` (a SlowBlocks stage) with one worker in a separate process (and session, so its workers can be
    found and killed with it)."""
    cls = type(stage)
    program = (
        "import importlib\n"
        "from incasem_like.blockwise.runner import run_stage\n"
        f"stage_class = getattr(importlib.import_module({cls.__module__!r}), {cls.__qualname__!r})\n"
        f"run_stage(stage_class.model_validate_json({stage.model_dump_json()!r}), workers=1, progress=False)\n"
    )
    env = {**os.environ, "INCASEM_TEST_BLOCK_SLEEP": str(seconds_per_block)}
    return subprocess.Popen([sys.executable, "-c", program], cwd=REPO, env=env, start_new_session=True)


def wait_for_done_blocks(stage: BlockwiseStage, job: subprocess.Popen, done_blocks: int) -> None:
    """Wait until `done_blocks` blocks of `stage` are recorded as done, asserting that its run is still going."""
    done = stage.outputs()[0].run_dir / "tracking" / "done"
    deadline = time.monotonic() + 120
    while not (done.exists() and int(np.count_nonzero(zarr.open_array(done, mode="r")[:])) >= done_blocks):
        assert job.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def kill_midway(stage: BlockwiseStage, done_blocks: int = 2, seconds_per_block: float = 1.0) -> None:
    """Run `stage` (a SlowBlocks stage) and SIGKILL its whole process group once `done_blocks` blocks are done."""
    job = start_in_own_session(stage, seconds_per_block)
    try:
        wait_for_done_blocks(stage, job, done_blocks)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


class SlowClaheStage(SlowBlocks, ClaheStage):
    pass


class SlowDownsampleStage(SlowBlocks, DownsampleStage):
    pass


class SlowPyramidLevelStage(SlowBlocks, PyramidLevelStage):
    pass


class SlowMaskStage(SlowBlocks, MaskStage):
    pass


class SlowCleanLabelsStage(SlowBlocks, CleanLabelsStage):
    pass


class SlowDilateLabelsStage(SlowBlocks, DilateLabelsStage):
    pass


class SlowMetricMaskStage(SlowBlocks, MetricMaskStage):
    pass


class SlowInterpolateLabelsStage(SlowBlocks, InterpolateLabelsStage):
    pass


class ThreadReportStage(BoxSumStage):
    """`BoxSumStage` whose workers also write the sizes of their thread pools to `report_dir/PID.json`."""

    report_dir: str

    def block_processor(self) -> Callable[[Block], None]:
        import torch  # imported late on purpose: its pool must still be limited

        pools = {
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "blas": os.environ.get("OPENBLAS_NUM_THREADS"),
            "zarr": zarr.config.get("threading.max_workers"),
            "torch": torch.get_num_threads(),
        }
        (Path(self.report_dir) / f"{os.getpid()}.json").write_text(json.dumps(pools))
        return super().block_processor()


class TeardownReportStage(BoxSumStage):
    """`BoxSumStage` whose workers write `report_dir/PID` when they tear down (`BlockwiseStage.worker`)."""

    report_dir: str

    @contextmanager
    def worker(self) -> Iterator[Callable[[Block], None]]:
        try:
            yield self.block_processor()
        finally:
            (Path(self.report_dir) / str(os.getpid())).touch()
