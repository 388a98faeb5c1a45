import json
import os
import signal
import time

import numpy as np
import psutil
import pytest
from scipy.ndimage import correlate

from incasem_like.blockwise.launchers import LocalLauncher
from incasem_like.blockwise.runner import run_stage
from incasem_like.blockwise.worker import SAME_ERROR_BLOCKS
from incasem_like.core.errors import BlockwiseRunFailed, UserError
from incasem_like.core.geometry import to_world
from incasem_like.store.datasets import (
    RUN_DIR,
    DatasetPath,
    create_dataset,
    dataset_meta,
    open_dataset,
    update_dataset_meta,
)
from tests.toy_stages import (
    BoxSumStage,
    SlowBoxSumStage,
    TeardownReportStage,
    ThreadReportStage,
    start_in_own_session,
    wait_for_done_blocks,
)


@pytest.fixture
def source(tmp_path, rng):
    """A complete 20 x 27 x 33 uint8 dataset with 4 x 5 x 6 nm voxels and a non-zero offset."""
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    data = rng.integers(0, 256, size=(20, 27, 33), dtype=np.uint8)
    array = create_dataset(path, data.shape, to_world((4, 5, 6)), to_world((40, -10, 60)), np.uint8, (8, 8, 8))
    array[array.roi] = data
    update_dataset_meta(path, complete=True)
    return path, data


def box_sum_reference(data: np.ndarray, radius: int) -> np.ndarray:
    return correlate(data.astype(np.int32), np.ones((2 * radius + 1,) * 3, dtype=np.int32), mode="constant")


def test_blocks_read_context_and_run_in_separate_worker_processes(source, tmp_path):
    path, data = source
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"), radius=2)

    summary = run_stage(stage, workers=2, progress=False)

    result = open_dataset(stage.output_path()).to_ndarray(open_dataset(path).roi)
    np.testing.assert_array_equal(result, box_sum_reference(data, 2))
    pids = np.unique(open_dataset(stage.pid_path(), require_complete=False)[open_dataset(path).roi])
    assert len(pids) == 2 and os.getpid() not in pids
    assert summary["blocks_total"] == 3 * 4 * 5 == summary["blocks_processed"]
    assert summary["blocks_failed"] == summary["blocks_skipped"] == 0
    assert summary == {**json.loads((stage.output_path().group_path / RUN_DIR / "summary.json").read_text())}
    assert dataset_meta(stage.output_path())["complete"] is True


def test_workers_share_the_cores_in_every_thread_pool(source, tmp_path):
    """OpenMP, BLAS, torch and zarr's codec pool each get the worker's share of the cores, in any stage."""
    path, _ = source
    reports = tmp_path / "reports"
    reports.mkdir()
    stage = ThreadReportStage(input=str(path), output=str(tmp_path / "c.zarr/sum"), report_dir=str(reports))

    run_stage(stage, workers=2, progress=False)

    share = LocalLauncher().worker_threads(2)
    pools = [json.loads(report.read_text()) for report in reports.iterdir()]
    assert len(pools) == 2
    assert all(pool == {"omp": str(share), "blas": str(share), "zarr": share, "torch": share} for pool in pools)


def test_a_run_locks_every_output_it_writes(source, tmp_path):
    """A second run (even with overwrite) into any output of a running stage refuses and deletes nothing."""
    path, data = source
    first = SlowBoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"), block=16)
    job = start_in_own_session(first, seconds_per_block=0.5)
    try:
        wait_for_done_blocks(first, job, 1)
        into_the_second = BoxSumStage(input=str(path), output=str(first.pid_path()))
        with pytest.raises(UserError, match=f"^{first.pid_path()} is locked by another run"):
            run_stage(into_the_second, overwrite=True, progress=False)
        assert job.poll() is None, "the first run ended before the second started"
    finally:
        assert job.wait(timeout=120) == 0
    result = open_dataset(first.output_path()).to_ndarray(open_dataset(path).roi)
    np.testing.assert_array_equal(result, box_sum_reference(data, 1))
    assert dataset_meta(first.pid_path())["complete"] is True
    assert not (first.pid_path().group_path / RUN_DIR).exists()  # the lock went with the run


def test_block_writes_are_chunk_aligned_and_disjoint(source, tmp_path):
    path, _ = source
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "c.zarr/sum"), block=16, chunk=8)
    layout = stage.layout()
    assert layout.block_write_shape % (layout.voxel_size * stage.chunk) == layout.voxel_size * 0
    with pytest.raises(UserError, match="multiple of the output chunk"):
        run_stage(BoxSumStage(input=str(path), output=str(tmp_path / "c.zarr/bad"), block=12, chunk=8), progress=False)


def test_failed_block_fails_the_run_and_a_rerun_redoes_only_it(source, tmp_path):
    path, data = source
    marker = tmp_path / "break"
    marker.touch()
    stage = BoxSumStage(
        input=str(path),
        output=str(tmp_path / "cell.zarr/volumes/sum"),
        fail_at=(40 + 4 * 9, -10 + 5 * 9, 60 + 6 * 9),
        fail_while=str(marker),
    )

    with pytest.raises(BlockwiseRunFailed) as failure:
        run_stage(stage, workers=2, progress=False)

    message = str(failure.value)
    assert (
        "1 of 60 blocks failed" in message and "injected failure" in message and "voxels [8:16, 8:16, 8:16]" in message
    )
    assert dataset_meta(stage.output_path())["complete"] is False
    with pytest.raises(UserError, match="incomplete"):
        open_dataset(stage.output_path())
    summary = json.loads((stage.output_path().group_path / RUN_DIR / "summary.json").read_text())
    assert summary["blocks_failed"] == 1 and summary["complete"] is False
    assert summary["failed_blocks"][0]["write_roi"] == "voxels [8:16, 8:16, 8:16]"

    marker.unlink()
    summary = run_stage(stage, workers=2, progress=False)
    assert (summary["blocks_processed"], summary["blocks_skipped"]) == (1, 59)
    np.testing.assert_array_equal(open_dataset(stage.output_path())[open_dataset(path).roi], box_sum_reference(data, 1))


def test_the_same_error_on_several_blocks_stops_the_run_naming_it(source, tmp_path):
    path, data = source
    marker = tmp_path / "break"
    marker.touch()
    stage = BoxSumStage(
        input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"), fail_all=True, fail_while=str(marker)
    )

    with pytest.raises(BlockwiseRunFailed) as failure:
        run_stage(stage, workers=2, progress=False)

    message = str(failure.value)
    assert "had failed with the same error: ValueError: injected failure in" in message, message
    summary = json.loads((stage.output_path().group_path / RUN_DIR / "summary.json").read_text())
    # a deterministic bug is not retried on every block: the 60 blocks with 3 tries each would all have failed
    assert summary["blocks_failed"] <= 2 * SAME_ERROR_BLOCKS and summary["blocks_pending"] >= 50, summary
    assert dataset_meta(stage.output_path())["complete"] is False

    marker.unlink()  # the bug fixed, the same command runs the blocks again
    summary = run_stage(stage, workers=2, progress=False)
    assert summary["blocks_processed"] + summary["blocks_skipped"] == 60
    np.testing.assert_array_equal(open_dataset(stage.output_path())[open_dataset(path).roi], box_sum_reference(data, 1))


def test_each_worker_tears_down_what_it_set_up_also_when_it_stops_on_errors(source, tmp_path):
    path, _ = source
    for case, fail in (("clean", False), ("failing", True)):
        reports, marker = tmp_path / f"{case}_reports", tmp_path / "break"
        reports.mkdir()
        marker.touch()
        stage = TeardownReportStage(
            input=str(path),
            output=str(tmp_path / f"{case}.zarr/volumes/sum"),
            report_dir=str(reports),
            fail_all=fail,
            fail_while=str(marker),
        )
        if fail:
            with pytest.raises(BlockwiseRunFailed, match="the same error"):
                run_stage(stage, workers=2, progress=False)
        else:
            run_stage(stage, workers=2, progress=False)
            written_by = set(np.unique(open_dataset(stage.pid_path())[open_dataset(path).roi]))
            assert {int(report.name) for report in reports.iterdir()} == written_by
        assert len(list(reports.iterdir())) >= 1  # the workers that stopped on the error tore down too


def test_changed_parameters_do_not_reuse_progress(source, tmp_path):
    path, _ = source
    out = str(tmp_path / "cell.zarr/volumes/sum")
    run_stage(BoxSumStage(input=str(path), output=out, radius=1), progress=False)

    with pytest.raises(UserError, match="--overwrite"):
        run_stage(BoxSumStage(input=str(path), output=out, radius=2), progress=False)
    with pytest.raises(UserError, match="--overwrite"):
        run_stage(BoxSumStage(input=str(path), output=out, radius=1, block=16), progress=False)

    summary = run_stage(BoxSumStage(input=str(path), output=out, radius=2), overwrite=True, progress=False)
    assert summary["blocks_skipped"] == 0
    _, data = source
    np.testing.assert_array_equal(open_dataset(out)[open_dataset(path).roi], box_sum_reference(data, 2))


def test_rerunning_a_complete_run_does_nothing(source, tmp_path):
    path, _ = source
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    run_stage(stage, progress=False)
    summary = run_stage(stage, progress=False)
    assert summary["already_complete"] and summary["blocks_processed"] == 0


def test_bad_worker_count_is_refused(source, tmp_path):
    path, _ = source
    with pytest.raises(UserError, match="--workers 0"):
        run_stage(BoxSumStage(input=str(path), output=str(tmp_path / "c.zarr/s")), workers=0)


def test_workers_exit_when_their_scheduler_is_killed(source, tmp_path):
    """A run's main process (the scheduler) killed alone, as by a scheduler node failure: its workers do not stay
    behind asking for blocks forever."""
    path, _ = source
    stage = SlowBoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    job = start_in_own_session(stage, seconds_per_block=0.5)
    try:
        wait_for_done_blocks(stage, job, 1)
        job.kill()
        job.wait()
        deadline = time.monotonic() + 120
        while left := [p for p in psutil.process_iter() if _session(p) == job.pid]:
            assert time.monotonic() < deadline, [p.cmdline() for p in left]
            time.sleep(0.2)
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
