"""A slow objects step for the resume tests, imported by worker processes (kept free of heavy imports)."""

import os
import time
from collections.abc import Callable

from daisy import Block

from incasem_like.objects import FragmentsStage


class SlowFragmentsStage(FragmentsStage):
    """Sleeps INCASEM_TEST_BLOCK_SLEEP seconds after each block (as `tests.stages.SlowBlocks`); same task name and
    parameters, hence the same run fingerprint: the real command resumes its runs."""

    def block_processor(self) -> Callable[[Block], None]:
        process = super().block_processor()
        delay = float(os.environ.get("INCASEM_TEST_BLOCK_SLEEP", "0"))

        def slow(block: Block) -> None:
            process(block)
            time.sleep(delay)

        return slow
