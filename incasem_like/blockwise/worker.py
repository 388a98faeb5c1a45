"""Worker process: `python -m incasem_like.blockwise.worker SPEC.json`.

Rebuilds the stage from the run's spec file, prepares it once, then processes blocks from the daisy
scheduler (address in `DAISY_CONTEXT`) until none are left. A block that raises is reported to the scheduler
as failed (it retries it, possibly elsewhere) and the worker goes on with the next one; a worker whose scheduler
is gone exits instead of asking again forever.

Threads: OpenMP's, BLAS's and torch's (from the environment the spawner sets) and zarr's codec pool are the
launcher's share of the cores (`INCASEM_LIKE_WORKER_THREADS`), so the workers of every stage share the machine
instead of each taking all of it.
"""

import importlib
import json
import logging
import os
import sys
from pathlib import Path

import zarr
from daisy import Client

from incasem_like.blockwise.launchers import WORKER_THREADS_ENV
from incasem_like.blockwise.stage import BlockwiseStage

logger = logging.getLogger("incasem_like.worker")


def load_stage(spec: dict) -> BlockwiseStage:
    module_name, class_name = spec["stage"].split(":")
    stage_class = getattr(importlib.import_module(module_name), class_name)
    return stage_class.model_validate(spec["config"])


def run_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    for entry in reversed(spec.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if WORKER_THREADS_ENV in os.environ:  # before any zarr call sizes its pool
        zarr.config.set({"threading.max_workers": int(os.environ[WORKER_THREADS_ENV])})
    process_block = load_stage(spec).block_processor()
    client = Client()
    while True:
        processing = False
        try:
            with client.acquire_block() as block:
                if block is None:
                    return
                processing = True
                process_block(block)
        except Exception as error:
            if not processing:  # the scheduler is gone (its run ended or was killed): no block will come
                logger.error("lost the scheduler (%r); exiting", error)
                sys.exit(1)
            logger.warning("block failed: %r", error)  # already reported to the scheduler by acquire_block


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker(Path(sys.argv[1]))
