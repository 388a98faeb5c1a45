"""Fault-injecting stages for the reliability tests (importable by worker processes as `tests.reliability.faults`).

Each mixin keeps its base stage's task name and parameters, hence its run fingerprint, so the real command resumes
or finishes the runs they start. Which block misbehaves, and where that is recorded, come from environment
variables, which the worker processes inherit:
- `INCASEM_TEST_FAULT_AT`: "z,y,x", a world coordinate (nm): the block whose write ROI holds it misbehaves;
- `INCASEM_TEST_FAULT_LOG`: a file to which the worker appends its pid each time the fault strikes.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from daisy import Block

from incasem_like.core.geometry import to_world
from incasem_like.stages.clahe import ClaheStage
from incasem_like.store.datasets import open_dataset

FAULT_AT = "INCASEM_TEST_FAULT_AT"
FAULT_LOG = "INCASEM_TEST_FAULT_LOG"


def is_faulty(block: Block) -> bool:
    at = os.environ.get(FAULT_AT)
    return at is not None and block.write_roi.contains(to_world(float(value) for value in at.split(",")))


def record_fault() -> None:
    with open(os.environ[FAULT_LOG], "a") as log:
        log.write(f"{os.getpid()}\n")


class FailingBlocks:
    """Mixin: the faulty block raises every time it is tried."""

    def block_processor(self) -> Callable[[Block], None]:
        process = super().block_processor()

        def failing(block: Block) -> None:
            if is_faulty(block):
                record_fault()
                raise RuntimeError(f"injected failure in block {block.block_id[1]}")
            process(block)

        return failing


class StallingBlocks:
    """Mixin: the first time the faulty block is tried, its worker writes garbage over the block's outputs (a write
    cut short), records its pid and waits to be killed; later tries process the block normally."""

    def block_processor(self) -> Callable[[Block], None]:
        process = super().block_processor()
        outputs = [open_dataset(output.path, mode="r+", require_complete=False) for output in self.outputs()]

        def stalling(block: Block) -> None:
            if is_faulty(block) and not Path(os.environ[FAULT_LOG]).exists():
                for output in outputs:
                    roi = block.write_roi.intersect(output.roi)
                    output[roi] = np.full(roi.shape / output.voxel_size, 77, output.dtype)
                record_fault()
                time.sleep(600)
            process(block)

        return stalling


class FailingClaheStage(FailingBlocks, ClaheStage):
    pass


class StallingClaheStage(StallingBlocks, ClaheStage):
    pass
