"""Faults during blockwise runs, on CLAHE and on prediction: real daisy workers, real zarr, real SIGKILLs.

- a worker SIGKILLed in the middle of a block (after writing garbage over it): the run completes, bit-identical;
- the whole job SIGKILLed half way: the same command resumes, redoes exactly the unfinished blocks, bit-identical;
- a block that raises every time: exit 1 naming the block and the error after the retries, output incomplete;
  the fixed rerun processes only that block;
- a second run on an output that a run is writing: refused, naming the holder; the first run's output is intact.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import zarr

from incasem_like.blockwise.outputs import DatasetOutput
from incasem_like.blockwise.runner import run_stage
from incasem_like.cli.main import main
from incasem_like.nn.checkpoints import save_checkpoint
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.nn.normalization import normalize
from incasem_like.stages.clahe import ClaheStage
from incasem_like.stages.predict import PredictStage
from incasem_like.store.datasets import RUN_DIR, open_dataset
from incasem_like.workflow import steps
from tests.conftest import REPO, run_cli, write_dataset
from tests.predict_stages import SlowPredictStage
from tests.reliability.faults import FAULT_AT, FAULT_LOG, FailingClaheStage, StallingClaheStage
from tests.reliability.predict_faults import FailingPredictStage, StallingPredictStage
from tests.toy_stages import SlowClaheStage, kill_midway
from tests.training_data import sample_stack

BLOCKS = 2 * 2 * 2  # both cases cut their outputs into this many blocks


@dataclass(frozen=True)
class Case:
    """A blockwise command under test: its stage's fields for an output, the same command line, its stage classes
    (the real one and the fault-injecting ones) and a world coordinate (nm) in a block in the middle."""

    name: str
    fields: Callable[[Path], dict]
    argv: Callable[[Path], list[str]]
    stage: type
    slow: type
    failing: type
    stalling: type
    fault_at: tuple[int, int, int]

    def output_names(self, out: Path) -> list[DatasetOutput]:
        return self.stage(**self.fields(out)).outputs()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    """CLAHE of a 32^3 crop of the sample (kernel 16, blocks of 16^3) and prediction of a 16^3 crop with a tiny
    random U-Net (blocks of 8^3)."""
    folder = tmp_path_factory.mktemp("inputs")
    raw = write_dataset(folder / "cell.zarr/volumes/raw", sample_stack("raw", (32, 32, 32)), chunk=16)
    small = write_dataset(folder / "cell.zarr/volumes/small", sample_stack("raw", (16, 16, 16)), chunk=8)
    checkpoint = save_checkpoint(folder / "run", varied_network(), None, 1, "mito", (5, 5, 5))
    clahe = {"kernel": 16, "block": 16, "chunk": 16}
    predict = {"checkpoint": str(checkpoint), "raw": str(small), "step": 8, "block": 8, "chunk": 8, "device": "cpu"}
    return {
        "clahe": Case(
            "clahe",
            lambda out: {"input": str(raw), "output": str(out), **clahe},
            lambda out: ["clahe", str(raw), str(out), "--kernel", "16", "--block", "16", "--chunk", "16", "--quiet"],
            ClaheStage,
            SlowClaheStage,
            FailingClaheStage,
            StallingClaheStage,
            (100, 100, 100),
        ),
        "predict": Case(
            "predict",
            lambda out: {"output": str(out), **predict},
            lambda out: [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--raw",
                str(small),
                "--out",
                str(out),
                "--step",
                "8",
                "--block",
                "8",
                "--chunk",
                "8",
                "--device",
                "cpu",
                "--precision",
                "fp32",
                "--quiet",
            ],  # fmt: skip
            PredictStage,
            SlowPredictStage,
            FailingPredictStage,
            StallingPredictStage,
            (60, 60, 60),
        ),
    }


def varied_network() -> UNet3D:
    """A tiny random U-Net (52^3 -> 10^3) whose last layer is scaled so that its probabilities on the sample vary
    (at random initialization they are all but constant)."""
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(feature_maps=3, downsamplings=2, input_shape=(52, 52, 52)))
    tile = torch.from_numpy(normalize(np.pad(sample_stack("raw", (32, 52, 52)), ((10, 10), (0, 0), (0, 0)), "reflect")))
    with torch.no_grad():
        model.final.weight /= model(tile[None, None]).std()
        model.final.bias -= model(tile[None, None]).median()
    return model


@pytest.fixture(scope="module")
def reference(cases, tmp_path_factory) -> Callable[[str, int], list[np.ndarray]]:
    """reference(case, workers): the case's output from one uninterrupted run with that many workers.

    On a CPU the number of workers sets each worker's torch threads, which changes float rounding: a prediction
    is bit-identical to runs with the same number of workers (see tests/reliability/README.md)."""
    folder = tmp_path_factory.mktemp("references")
    computed = {}

    def reference_of(name: str, workers: int) -> list[np.ndarray]:
        if (name, workers) not in computed:
            case, out = cases[name], folder / f"out.zarr/volumes/{name}_{workers}"
            summary = run_stage(case.stage(**case.fields(out)), workers=workers, progress=False)
            assert summary["blocks_total"] == BLOCKS
            computed[name, workers] = read_outputs(case, out)
            assert len(np.unique(computed[name, workers][0])) > 10  # varied: a stale or garbage block would show
        return computed[name, workers]

    return reference_of


def read_outputs(case: Case, out: Path) -> list[np.ndarray]:
    """All outputs of a complete run."""
    volumes = [open_dataset(output.path) for output in case.output_names(out)]
    return [volume[volume.roi] for volume in volumes]


def assert_bit_identical(case: Case, out: Path, reference: list[np.ndarray]) -> None:
    for result, expected in zip(read_outputs(case, out), reference, strict=True):
        np.testing.assert_array_equal(result, expected)


def done_blocks(case: Case, out: Path) -> int:
    """Blocks the run's tracking records as done."""
    done = case.output_names(out)[0].run_dir / "tracking" / "done"
    return int(np.count_nonzero(zarr.open_array(done, mode="r")[:])) if done.exists() else 0


def blocks_reported(stdout: str) -> tuple[int, int]:
    """(processed, skipped) from the command's report."""
    processed, skipped = (int(stdout.split(word)[0].split()[-1]) for word in (" blocks processed", " skipped"))
    return processed, skipped


@pytest.fixture
def fault_log(tmp_path, monkeypatch):
    """The file where injected faults are recorded (INCASEM_TEST_FAULT_LOG)."""
    path = tmp_path / "faults.log"
    monkeypatch.setenv(FAULT_LOG, str(path))
    return path


def kill_the_stalled_worker(fault_log: Path, killed: list[tuple[int, bool]]) -> None:
    """Wait for a worker to record that it stalls in its block and SIGKILL it; `killed` gets its pid and whether
    it was a worker process of this process's run (run in a thread beside the run)."""
    deadline = time.monotonic() + 120
    while not (fault_log.exists() and fault_log.read_text().endswith("\n")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    worker = psutil.Process(int(fault_log.read_text().split()[0]))
    ours = worker in psutil.Process().children(recursive=True) and "incasem_like.blockwise.worker" in worker.cmdline()
    worker.send_signal(signal.SIGKILL)
    killed.append((worker.pid, ours))


@pytest.mark.parametrize("name", ["clahe", "predict"])
def test_worker_killed_mid_block_is_replaced_and_the_output_is_bit_identical(
    name, cases, reference, tmp_path, fault_log, monkeypatch
):
    case = cases[name]
    out = tmp_path / "out.zarr/volumes/result"
    monkeypatch.setenv(FAULT_AT, ",".join(map(str, case.fault_at)))
    killed: list[tuple[int, bool]] = []
    killer = threading.Thread(target=kill_the_stalled_worker, args=(fault_log, killed))
    killer.start()

    summary = run_stage(case.stalling(**case.fields(out)), workers=2, progress=False)

    killer.join()
    assert [worker_of_the_run for _, worker_of_the_run in killed] == [True]
    assert summary["complete"] and summary["blocks_processed"] == BLOCKS and summary["blocks_failed"] == 0
    assert fault_log.read_text().split() == [str(killed[0][0])]  # the retried block did not stall again
    assert_bit_identical(case, out, reference(name, workers=2))


@pytest.mark.parametrize("name", ["clahe", "predict"])
def test_whole_job_killed_half_way_resumes_redoing_only_unfinished_blocks(name, cases, reference, tmp_path):
    case = cases[name]
    out = tmp_path / "out.zarr/volumes/result"
    kill_midway(case.slow(**case.fields(out)), done_blocks=BLOCKS // 2, seconds_per_block=0.2)
    done = done_blocks(case, out)
    assert BLOCKS // 2 <= done < BLOCKS
    assert case.output_names(out)[0].lock.exists()  # the killed run's lock stayed behind

    result = run_cli(*case.argv(out), cwd=REPO)

    assert result.returncode == 0, result.stderr
    assert blocks_reported(result.stdout) == (BLOCKS - done, done)
    assert "taking over the lock of a run that is gone" in result.stderr
    assert not case.output_names(out)[0].lock.exists()
    assert_bit_identical(case, out, reference(name, workers=1))


@pytest.mark.parametrize("name", ["clahe", "predict"])
def test_block_failing_every_time_fails_the_run_and_a_fixed_rerun_completes_it(
    name, cases, reference, tmp_path, fault_log, monkeypatch, capsys
):
    case = cases[name]
    out = tmp_path / "out.zarr/volumes/result"
    # the command's step builds the failing stage; its workers inject the failure
    monkeypatch.setattr(steps, case.stage.__name__, case.failing)
    for step in steps.STEP_TYPES.values():
        if getattr(step, "stage_class", None) is case.stage:
            monkeypatch.setattr(step, "stage_class", case.failing)
    monkeypatch.setenv(FAULT_AT, ",".join(map(str, case.fault_at)))

    code = main(case.argv(out))

    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1 and error.startswith("incasem-like: failed: "), error
    failed = json.loads((case.output_names(out)[0].run_dir / "summary.json").read_text())
    block_id, write_roi = failed["failed_blocks"][0]["block_id"], failed["failed_blocks"][0]["write_roi"]
    assert f"1 of {BLOCKS} blocks failed ({block_id} {write_roi})" in error
    assert f"first error: RuntimeError: injected failure in block {block_id}" in error
    assert len(fault_log.read_text().split()) == 3  # the first try and the 2 retries
    for output in case.output_names(out):
        assert output.meta()["complete"] is False
    assert not case.output_names(out)[0].lock.exists()

    monkeypatch.undo()  # the cause is fixed
    code = main(case.argv(out))

    assert code == 0
    assert blocks_reported(capsys.readouterr().out) == (1, BLOCKS - 1)
    assert_bit_identical(case, out, reference(name, workers=1))


def start_slow_run(case: Case, out: Path, seconds_per_block: float) -> subprocess.Popen:
    """Run the case's slow stage with one worker in a process of its own."""
    stage = case.slow(**case.fields(out))
    program = (
        "from incasem_like.blockwise.runner import run_stage\n"
        f"from {type(stage).__module__} import {type(stage).__name__} as Stage\n"
        f"run_stage(Stage.model_validate_json({stage.model_dump_json()!r}), workers=1, progress=False)\n"
    )
    env = {**os.environ, "INCASEM_TEST_BLOCK_SLEEP": str(seconds_per_block)}
    return subprocess.Popen([sys.executable, "-c", program], cwd=REPO, env=env)


@pytest.mark.parametrize("name", ["clahe", "predict"])
def test_second_run_on_the_same_output_is_refused_and_the_first_completes_intact(
    name, cases, reference, tmp_path, capsys
):
    case = cases[name]
    out = tmp_path / "out.zarr/volumes/result"
    first = start_slow_run(case, out, seconds_per_block=0.5)
    try:
        deadline = time.monotonic() + 120
        while done_blocks(case, out) < 1:
            assert first.poll() is None and time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.05)

        codes = [main(case.argv(out)), main([*case.argv(out), "--overwrite"])]
        errors = capsys.readouterr().err.splitlines()

        assert first.poll() is None, "the first run ended before the second started"
        assert codes == [2, 2]
        holder = f"is locked by another run (pid {first.pid} on "
        for error in errors:
            assert error.startswith(f"incasem-like: error: {case.output_names(out)[0]} {holder}"), error
            assert f"delete {case.output_names(out)[0].lock} and rerun" in error
        assert len(errors) == 2
    finally:
        assert first.wait(timeout=120) == 0
    assert_bit_identical(case, out, reference(name, workers=1))


def test_lock_held_from_another_host_is_never_taken_over(cases, tmp_path, capsys):
    case = cases["clahe"]
    out = tmp_path / "out.zarr/volumes/result"
    lock = case.output_names(out)[0].lock
    lock.parent.mkdir(parents=True)
    holder = {"host": "node17", "pid": os.getpid(), "started": "2026-11-22 08:00:00", "command": "incasem-like clahe"}
    lock.write_text(json.dumps(holder))

    code = main(case.argv(out))

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "is locked by another run (pid" in error and "on node17 since 2026-11-22 08:00:00" in error
    assert {path.relative_to(out) for path in out.rglob("*")} == {Path(RUN_DIR), Path(RUN_DIR, "lock")}
