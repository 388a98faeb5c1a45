"""Worker process: `python -m incasem_like.blockwise.worker SPEC.json`.

Rebuilds the stage from the run's spec file, sets it up once (`BlockwiseStage.worker`, which also tears it down
when the worker ends), then processes blocks from the daisy
scheduler (address in `DAISY_CONTEXT`) until none are left. A block that raises is reported to the scheduler
as failed (it retries it, possibly elsewhere) and the worker goes on with the next one; a worker whose scheduler
is gone exits instead of asking again forever. Once `SAME_ERROR_BLOCKS` block tries failed with the same error (a
deterministic bug, not a flaky block), the worker writes the run's stop file naming the error and exits; every
worker of the run stops before its next block and no replacement starts (see `WorkerSpawner`).

Threads: OpenMP's, BLAS's and torch's (from the environment the spawner sets) and zarr's codec pool are the
launcher's share of the cores (`INCASEM_LIKE_WORKER_THREADS`), so the workers of every stage share the machine
instead of each taking all of it.
"""

import importlib
import json
import logging
import os
import re
import signal
import sys
from collections import defaultdict
from pathlib import Path

import zarr
from daisy import Client

from incasem_like.blockwise.launchers import INTERRUPTED, STOP_FILE, WORKER_THREADS_ENV
from incasem_like.blockwise.stage import BlockwiseStage
from incasem_like.core.files import write_atomically

logger = logging.getLogger("incasem_like.worker")

#: blocks failing with the same error that stop the run
SAME_ERROR_BLOCKS = 3


def error_signature(error: BaseException) -> str:
    """An error as it repeats from block to block: its type and message, numbers (coordinates, sizes) left out."""
    return re.sub(r"\d+", "#", f"{type(error).__name__}: {error}")


def load_stage(spec: dict) -> BlockwiseStage:
    module_name, class_name = spec["stage"].split(":")
    stage_class = getattr(importlib.import_module(module_name), class_name)
    return stage_class.model_validate(spec["config"])


def run_worker(spec_path: Path) -> None:
    # Ctrl-C: end at once and quietly; the block in progress stays unfinished, so a rerun redoes it
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(INTERRUPTED))
    spec = json.loads(spec_path.read_text())
    stop_file = spec_path.parent / STOP_FILE
    if WORKER_THREADS_ENV in os.environ:  # before any zarr call sizes its pool
        zarr.config.set({"threading.max_workers": int(os.environ[WORKER_THREADS_ENV])})
    with load_stage(spec).worker() as process_block:
        _process_blocks(process_block, stop_file)


def _process_blocks(process_block, stop_file: Path) -> None:
    """Blocks from the scheduler until none are left, the scheduler is gone or the run stopped."""
    client = Client()
    # error signature -> the blocks it failed, once per try: a retried block failing again counts again
    failed_blocks: defaultdict[str, list[int]] = defaultdict(list)
    while not stop_file.exists():
        block_id = None
        try:
            with client.acquire_block() as block:
                if block is None:
                    return
                block_id = block.block_id[1]
                process_block(block)
        except Exception as error:
            if block_id is None:  # the scheduler is gone (its run ended or was killed): no block will come
                logger.error("lost the scheduler (%r); exiting", error)
                sys.exit(1)
            logger.warning("block failed: %r", error)  # already reported to the scheduler by acquire_block
            blocks = failed_blocks[error_signature(error)]
            blocks.append(block_id)
            if len(blocks) >= SAME_ERROR_BLOCKS:
                message = f"{type(error).__name__}: {error}"
                stop = {"error": message, "blocks": sorted(blocks)}
                write_atomically(stop_file, json.dumps(stop))
                logger.error("blocks %s failed with the same error (%s): stopping the run", sorted(blocks), message)
    logger.error("the run stopped (%s); exiting", stop_file)
    sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker(Path(sys.argv[1]))
