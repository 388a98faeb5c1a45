"""Run a stage over its output, block by block, on daisy 2 worker processes.

Guarantees every stage inherits from here:
- blocks write chunk-aligned, disjoint ROIs and read their context around them;
- every output the stage declares (`BlockwiseStage.outputs`: datasets, pyramid levels, folders of files) is locked,
  started, resumed, replaced and marked complete together; progress is tracked in the first output's run folder
  (`<dataset>/.incasem_run/`, apart from the data), keyed by a fingerprint of the stage's parameters and block
  layout: rerunning the same command skips finished blocks, a changed command refuses to touch the existing
  outputs unless told to overwrite them;
- failed blocks are retried; if any still fail the run raises `BlockwiseRunFailed` naming them and the first
  error, and the output stays marked incomplete;
- one run at a time writes an output: a run locks every output it writes (`StageOutput.lock`; see
  `incasem_like.blockwise.lock`), and a second run on any of them refuses, naming the holder;
- a JSON summary of the run is written beside the progress.
"""

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import daisy.logging
import daisy.v2 as daisy_v2
from funlib.geometry import Roi

from incasem_like import __version__
from incasem_like.blockwise.launchers import STOP_FILE, Launcher, LocalLauncher, WorkerSpawner, worker_command
from incasem_like.blockwise.lock import RunLock, refuse_if_locked
from incasem_like.blockwise.outputs import StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage
from incasem_like.core.errors import BlockwiseRunFailed, UserError
from incasem_like.core.geometry import voxel_box_text

#: bump when the meaning of the tracking store or the block layout changes
RUN_FORMAT = 1
#: the scheduler's and the workers' error stream, in the run's logs
SCHEDULER_LOG = "scheduler.log"


def fingerprint(stage: BlockwiseStage, layout: BlockLayout) -> str:
    payload = {
        "format": RUN_FORMAT,
        "task": stage.task_name,
        "config": stage.model_dump(mode="json"),
        "layout": {
            "total_write_roi": [list(layout.total_write_roi.offset), list(layout.total_write_roi.shape)],
            "block_write_shape": list(layout.block_write_shape),
            "context": list(layout.context),
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_stage(
    stage: BlockwiseStage,
    workers: int = 1,
    overwrite: bool = False,
    launcher: Launcher | None = None,
    max_retries: int = 2,
    block_timeout: float = 3600.0,
    progress: bool = True,
) -> dict:
    """Run `stage` blockwise and return the run summary (also written to `<output>/.incasem_run/summary.json`).

    `launcher` starts the workers (default: processes on this machine); workers it loses are replaced up to its
    `max_restarts`. Raises `UserError` for bad input or an existing output that this exact command did not start, and
    `BlockwiseRunFailed` when blocks still fail after `max_retries` retries.
    """
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least one worker")
    launcher = launcher or LocalLauncher()
    layout = stage.layout()
    layout.check_chunk_aligned()
    outputs = stage.outputs()
    run_id = fingerprint(stage, layout)
    run_dir = outputs[0].run_dir
    # checks that write nothing first, so a refused command leaves no trace
    for output in outputs:
        refuse_if_locked(output.lock, str(output))
    if _is_resumable(outputs, run_dir, run_id, overwrite):
        if all(output.complete() for output in outputs):
            summary = json.loads((run_dir / "summary.json").read_text())
            return {
                **summary,
                "blocks_processed": 0,
                "blocks_skipped": summary["blocks_total"],
                "seconds": 0.0,
                "voxels_per_second": 0,
                "already_complete": True,
            }
    else:
        _refuse_foreign(outputs, overwrite)
    with ExitStack() as locks:
        for output in outputs:
            locks.enter_context(RunLock(output.lock, str(output)))
        if not _is_resumable(outputs, run_dir, run_id, overwrite):
            _start_fresh(stage, layout, outputs, run_dir, run_id, overwrite)
        return _run(stage, layout, outputs, run_dir, run_id, workers, launcher, max_retries, block_timeout, progress)


def check_writable(stage: BlockwiseStage, overwrite: bool = False) -> None:
    """The checks `run_stage` makes before writing anything (inputs, layout, locks, existing outputs), for a
    command that runs several stages and must not start the first if a later one would be refused."""
    layout = stage.layout()
    layout.check_chunk_aligned()
    outputs = stage.outputs()
    for output in outputs:
        refuse_if_locked(output.lock, str(output))
    if not _is_resumable(outputs, outputs[0].run_dir, fingerprint(stage, layout), overwrite):
        _refuse_foreign(outputs, overwrite)


def is_resumable(stage: BlockwiseStage) -> bool:
    """Whether `stage`'s outputs were started by this exact stage, so a run continues them."""
    layout = stage.layout()
    outputs = stage.outputs()
    return _is_resumable(outputs, outputs[0].run_dir, fingerprint(stage, layout), overwrite=False)


def refuse_if_running(output: StageOutput, subject: str) -> None:
    """`UserError` if a live run writes `output`; for commands that remove or replace
    outputs before their runs start. `subject` names what the user asked to replace."""
    refuse_if_locked(output.lock, subject)


def _run(stage, layout, outputs, run_dir, run_id, workers, launcher, max_retries, block_timeout, progress) -> dict:
    """Process the blocks not yet done on daisy workers, write the summary and mark the outputs complete."""
    spec = {"stage": f"{type(stage).__module__}:{type(stage).__qualname__}", "config": stage.model_dump(mode="json")}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # an earlier run's: this one tries again

    daisy.logging.set_log_basedir(run_dir / "logs")
    task = daisy_v2.Task(
        stage.task_name,
        total_roi=layout.total_write_roi.grow(layout.context, layout.context),
        read_roi=Roi((0,) * 3, layout.block_read_shape),
        write_roi=Roi(layout.context, layout.block_write_shape),
        process_function=WorkerSpawner(
            launcher,
            f"incasem-{stage.task_name}",
            tuple(worker_command(run_dir / "spec.json")),
            run_dir / "logs" / "jobs",
            launcher.worker_threads(workers),
            stop_file,
        ),
        read_write_conflict=False,
        fit="shrink",
        max_workers=workers,
        max_retries=max_retries,
        max_worker_restarts=launcher.max_restarts,
        timeout=block_timeout,
        tracking_path=str(run_dir / "tracking"),
    )
    start = time.perf_counter()
    # the Server returns the task's state even when daisy abandons it (every worker lost, restarts used up)
    with stderr_to(run_dir / "logs" / SCHEDULER_LOG):
        states = daisy_v2.Server().run_blockwise(task, progress=progress, summary=False, host=launcher.scheduler_host)
    seconds = time.perf_counter() - start

    summary = _summarize(stage, layout, outputs[0], run_id, workers, seconds, task, states[stage.task_name])
    if stop_file.exists():
        stop = json.loads(stop_file.read_text())
        summary["stopped"] = f"stopped once blocks {stop['blocks']} had failed with the same error: {stop['error']}"
    complete = summary["blocks_failed"] == 0 and summary["stopped"] is None and summary["blocks_pending"] == 0
    summary["complete"] = complete
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not complete:
        raise BlockwiseRunFailed(_failure_message(summary, outputs, run_dir))
    for output in outputs:
        output.update_meta(complete=True)
    return summary


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """While the scheduler runs, what the processes write to the error stream (the scheduler's own messages, the
    workers', a stopped run's tracebacks) goes to the log at `path`; Python's own writes (the progress bar) still
    reach the console, so a failure or Ctrl-C ends in the command's one line."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    console, previous = os.fdopen(os.dup(saved), "w", buffering=1), sys.stderr
    sys.stderr = console
    try:
        yield
    finally:
        sys.stderr = previous
        console.close()
        os.dup2(saved, 2)
        os.close(saved)


def _is_resumable(outputs: list[StageOutput], run_dir: Path, run_id: str, overwrite: bool) -> bool:
    """Whether the outputs were started by this exact command (same fingerprint) and may be continued."""
    return (
        not overwrite
        and (run_dir / "spec.json").exists()
        and all(output.exists() and output.meta().get("fingerprint") == run_id for output in outputs)
    )


def _refuse_foreign(outputs: list[StageOutput], overwrite: bool) -> None:
    """An existing output that this exact command did not start is replaced only with `overwrite`, and only if it
    may be replaced at all."""
    existing = [output for output in outputs if output.exists()]
    for output in existing if overwrite else []:
        output.check_replaceable()
    if existing and not overwrite:
        raise UserError(
            f"{existing[0]} already exists and was not written by this exact command; pass --overwrite to replace it"
        )


def _start_fresh(stage, layout, outputs, run_dir, run_id, overwrite) -> None:
    """Create empty, incomplete outputs stamped with the run's fingerprint; replace existing ones only if told.
    Whatever is left at the outputs' paths (an earlier run's progress) goes too, but for this run's locks."""
    _refuse_foreign(outputs, overwrite)
    for output in outputs:
        output.remove()
    stage.create_outputs(layout)
    for output in outputs:
        output.update_meta(fingerprint=run_id, written_by=f"incasem-like {__version__} {stage.task_name}")
    run_dir.mkdir(parents=True, exist_ok=True)


def _failure_message(summary: dict, outputs: list[StageOutput], run_dir: Path) -> str:
    failed = ", ".join(f"{b['block_id']} {b['write_roi']}" for b in summary["failed_blocks"][:10])
    more = len(summary["failed_blocks"]) - 10
    return (
        f"{summary['task']}: {summary['blocks_failed']} of {summary['blocks_total']} blocks failed"
        + (f" ({failed}{f' and {more} more' if more > 0 else ''})" if failed else "")
        + (f", {summary['blocks_pending']} not processed" if summary["blocks_pending"] else "")
        + (f"; {summary['stopped']}" if summary["stopped"] else "")
        + f"; first error: {summary['first_error']}; {', '.join(map(str, outputs))} left incomplete; "
        f"logs in {run_dir / 'logs'}; rerun the same command to retry only the unfinished blocks"
    )


def _summarize(stage, layout, output, run_id, workers, seconds, task, state) -> dict:
    total = state.total_block_count
    skipped = state.skipped_count
    processed = state.completed_count - skipped
    failed_blocks = [
        {
            "block_id": block.block_id[1],
            "write_roi": voxel_box_text(block.write_roi, layout.voxel_size, layout.total_write_roi.offset),
        }
        for block in task.failed_blocks()
    ]
    stopped = (
        f"stopped after losing {state.worker_failure_count} workers ({state.abandon_reason})"
        if state.abandoned
        else None
    )
    # blocks are equal but for the far border, so the processed share of blocks gives the processed voxels
    voxels_processed = layout.num_voxels() * processed / total if total else 0
    return {
        "task": stage.task_name,
        "output": str(output),
        "fingerprint": run_id,
        "workers": workers,
        "blocks_total": total,
        "blocks_processed": processed,
        "blocks_skipped": skipped,
        "blocks_failed": max(len(failed_blocks), state.failed_count),
        "blocks_pending": total - state.completed_count - state.failed_count,
        "seconds": round(seconds, 3),
        "voxels_total": layout.num_voxels(),
        "voxels_per_second": round(voxels_processed / seconds) if seconds > 0 else 0,
        "failed_blocks": failed_blocks,
        "first_error": _last_line(state.first_worker_error),
        "stopped": stopped,
    }


def _last_line(text: str | None) -> str | None:
    """The exception line of a traceback (its last non-empty line)."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
