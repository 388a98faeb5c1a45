"""What a blockwise stage is: a validated config, a block layout and a per-block function.

A stage (convert, clahe, predict, ...) is a pydantic model, so the worker processes rebuild it from JSON and its
parameters define the run's fingerprint. It declares every output it writes (`outputs`: datasets, pyramid levels,
folders of files; see `incasem_like.blockwise.outputs`), and a layout whose context covers every read of a block.
The runner locks, starts, resumes and completes the outputs, lets the stage create them, and has every worker
enter `worker()` once (open datasets, load a model; closed again when the worker ends) and call the block
function it yields once per block.
"""

import math
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from daisy import Block
from pydantic import BaseModel, ConfigDict

from incasem_like.blockwise.outputs import StageOutput
from incasem_like.core.bounds import STRICT
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import Coordinate, Roi


def check_block(block: int, chunk: int, unit: str = "") -> None:
    """`FieldError` unless the `block` edge is a positive multiple of the `chunk` edge (both in voxels of `unit`)."""
    if block < 1 or chunk < 1 or block % chunk:
        raise FieldError(f"{{block}} {block} must be a positive multiple of {{chunk}} {chunk}{unit}")


@dataclass(frozen=True)
class BlockLayout:
    """How a stage cuts its output into blocks (all in world units).

    `total_write_roi` is what gets written, starting on the output's chunk grid; every block writes
    `block_write_shape` (shrunk at the far border) on a grid anchored at `total_write_roi.begin`, and reads
    `context` more on each side. Along each axis the block is a multiple of `output_chunk_shape` (or spans the
    whole output), so no two blocks ever write the same chunk.
    """

    total_write_roi: Roi
    block_write_shape: Coordinate
    context: Coordinate
    voxel_size: Coordinate
    output_chunk_shape: Coordinate

    def check_chunk_aligned(self) -> None:
        for block, chunk, extent in zip(self.block_write_shape, self.output_chunk_shape, self.total_write_roi.shape):
            if block % chunk != 0 and block < extent:
                raise UserError(
                    f"block shape {tuple(self.block_write_shape / self.voxel_size)} voxels is not a multiple of "
                    f"the output chunk shape {tuple(self.output_chunk_shape / self.voxel_size)}; choose a block "
                    "size that is a multiple of the chunk size"
                )

    @property
    def block_read_shape(self) -> Coordinate:
        return self.block_write_shape + self.context * 2

    def num_voxels(self) -> int:
        return math.prod(self.total_write_roi.shape / self.voxel_size)


class BlockwiseStage(BaseModel):
    """Base class of all blockwise stages. Subclasses add their fields and implement the four abstract methods;
    a stage whose block function holds files or pools also overrides `worker` to close them."""

    model_config = ConfigDict(**STRICT, frozen=True)

    #: short name used for the daisy task, logs and the fingerprint ("convert", "clahe", ...)
    task_name: ClassVar[str]

    @abstractmethod
    def outputs(self) -> list[StageOutput]:
        """Everything this stage writes; the run's progress and summary are kept in the first one's run folder."""

    @abstractmethod
    def layout(self) -> BlockLayout:
        """Validate the inputs (raising `UserError`) and return the block layout. Writes nothing."""

    @abstractmethod
    def create_outputs(self, layout: BlockLayout) -> None:
        """Create the (empty, incomplete) output datasets."""

    @abstractmethod
    def block_processor(self) -> Callable[[Block], None]:
        """The function that processes one block, made once per worker process (by `worker`)."""

    @contextmanager
    def worker(self) -> Iterator[Callable[[Block], None]]:
        """A worker process's set-up and teardown around its blocks: yields the block function; whatever it opened
        is closed on the way out, also when the worker stops on an error."""
        yield self.block_processor()
