"""The host side of blockwise inference: regions read ahead on reader threads into (on a GPU, pinned) host
tensors, copied to the device asynchronously and normalized there; results copied back asynchronously and
written on writer threads in z slabs that end on chunk boundaries, so slabs share no chunk and are written in
parallel. A GPU worker thereby overlaps decompression, transfers, the network and compression.
"""

import collections
import math
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.nn.inference import raw_with_context
from incasem_like.nn.normalization import IntensityRange, normalize
from incasem_like.store.datasets import ChunkCachedVolume, Volume

#: unsigned dtypes torch supports only in part, widened (exactly) before they travel
WIDER = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}
#: decoded raw chunks a worker keeps
CACHE_BYTES = 2**29


class Timer:
    """Where a block's time went: waiting for reads, the network and copies, waiting for writes (seconds)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}

    @contextmanager
    def waiting(self, kind: str):
        start = time.perf_counter()
        yield
        self.seconds[kind] += time.perf_counter() - start

    def computed(self) -> None:
        """Everything since the start that was not waiting for reads is the network's."""
        self.seconds["compute"] = time.perf_counter() - self.started - self.seconds["read"]

    def text(self) -> str:
        read, compute, write = self.seconds.values()
        return f"waited for reads {read:.2f} s, network and copies {compute:.2f} s, waited for writes {write:.2f} s"


class DataPath:
    """Reads `raw` regions (with `context` voxels per side, mirrored beyond the data) for `device` on `threads`
    reader threads (each decoding a region's chunks on `threads` decoder threads), and writes results on `threads`
    writer threads. Decoded raw chunks are kept (`CACHE_BYTES`, at
    least two blocks' inputs of `block` voxels per edge), so the context that rows of passes and neighbouring
    blocks share is decoded once, not once per row (12 times over for the method's network on 128^3 chunks)."""

    def __init__(
        self, raw: Volume, intensity: IntensityRange, context: Coordinate, device: torch.device, threads: int,
        block: int,
    ):  # fmt: skip
        per_block = math.prod((block + 2 * c) // k + 2 for c, k in zip(context, raw.chunk_shape))
        chunks = max(2 * per_block, CACHE_BYTES // (math.prod(raw.chunk_shape) * raw.dtype.itemsize))
        self.decoders = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self.raw = ChunkCachedVolume(
            raw.data, raw.voxel_size, raw.offset, raw.name, raw.meta, capacity=chunks, decoders=self.decoders
        )
        self.intensity, self.context, self.device, self.threads = intensity, context, device, threads
        self.readers = ThreadPoolExecutor(threads, thread_name_prefix="read")
        self.writers = ThreadPoolExecutor(threads, thread_name_prefix="write")

    def read(self, region: Roi) -> torch.Tensor:
        """The raw voxels of `region` and its context as a host tensor of (a widened) raw dtype, pinned for a GPU."""
        data = raw_with_context(self.raw, region, self.context)
        tensor = torch.from_numpy(np.require(data, WIDER.get(data.dtype, data.dtype), ["C", "W"]))
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def on_device(self, host: torch.Tensor) -> torch.Tensor:
        """A region read by `read`, copied to the device (asynchronously from pinned memory) and normalized there."""
        return normalize(host.to(self.device, non_blocking=True), self.intensity)

    def regions(self, regions: list[Roi], timer: Timer) -> Iterator[torch.Tensor]:
        """Each region, normalized on the device, `threads` regions read ahead."""
        reads = collections.deque(self.readers.submit(self.read, region) for region in regions[: self.threads])
        for index in range(len(regions)):
            with timer.waiting("read"):
                host = reads.popleft().result()
            if index + self.threads < len(regions):
                reads.append(self.readers.submit(self.read, regions[index + self.threads]))
            yield self.on_device(host)


class SlabWriter:
    """A block's rows of results (one tensor per dataset, on the device) -> host copies -> one write per z slab
    ending on a chunk boundary (`chunk_edge`, world units, from `anchor`) on the data path's writer threads."""

    def __init__(self, datasets: list[Volume], data_path: DataPath, chunk_edge: int, anchor: Coordinate):
        self.datasets, self.data_path, self.chunk_edge, self.anchor = datasets, data_path, chunk_edge, anchor
        self.rows: list[tuple[Roi, list[torch.Tensor], torch.cuda.Event | None]] = []
        self.writes: list[Future] = []

    def add(self, keep: Roi, values: list[torch.Tensor]) -> None:
        """The results for `keep` (world units), one per dataset; a slab is written once it ends on a chunk."""
        event = None
        if values[0].is_cuda:
            copies = [torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for v in values]
            for copy, value in zip(copies, values):
                copy.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = copies
        self.rows.append((keep, values, event))
        if (keep.end[0] - self.anchor[0]) % self.chunk_edge == 0:
            self._flush()

    def wait(self, timer: Timer) -> None:
        """Write what is left and return once every write of the block is done."""
        self._flush()
        with timer.waiting("write"):
            for write in self.writes:
                write.result()

    def _flush(self) -> None:
        if self.rows:
            self.writes.append(self.data_path.writers.submit(self._write, self.rows))
            self.rows = []

    def _write(self, rows: list[tuple[Roi, list[torch.Tensor], torch.cuda.Event | None]]) -> None:
        for _, _, event in rows:
            if event is not None:
                event.synchronize()
        roi = Roi(rows[0][0].begin, rows[-1][0].end - rows[0][0].begin)
        for index, dataset in enumerate(self.datasets):
            dataset[roi] = np.concatenate([values[index].numpy() for _, values, _ in rows])
