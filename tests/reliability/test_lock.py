"""The run lock itself: of runs that try to take it at the same instant exactly one gets it, and it is released
when the run ends, even by an error."""

import threading

import pytest

from incasem_like.blockwise.lock import RunLock
from incasem_like.core.errors import UserError


def test_of_simultaneous_runs_exactly_one_takes_the_lock(tmp_path):
    lock = tmp_path / "cell.zarr/volumes/out/.incasem_run/lock"
    start, guard, everyone_tried = threading.Barrier(8), threading.Lock(), threading.Event()
    outcomes: list[str] = []

    def record(outcome: str) -> None:
        with guard:
            outcomes.append(outcome)
            if len(outcomes) == 8:
                everyone_tried.set()

    def run() -> None:
        start.wait()
        try:
            with RunLock(lock, "cell.zarr/volumes/out"):
                record("ran")
                everyone_tried.wait(timeout=30)  # hold the lock until every other run has tried
        except UserError as error:
            record(str(error))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("ran") == 1
    assert all("cell.zarr/volumes/out is locked by another run" in outcome for outcome in outcomes if outcome != "ran")
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]  # released, and no file of a loser is left


def test_lock_is_released_when_the_run_fails(tmp_path):
    lock = tmp_path / "out/.incasem_run/lock"
    with pytest.raises(RuntimeError, match="the run failed"), RunLock(lock, "out"):
        (tmp_path / "out/data").write_text("written by the run")
        raise RuntimeError("the run failed")
    assert not lock.exists() and (tmp_path / "out/data").exists()
