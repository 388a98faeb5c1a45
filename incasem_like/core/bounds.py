"""Bounded numbers: the numeric fields of every config, stage and step are these, so a value no user could mean
(infinite, NaN, negative where it cannot be, an edge of 2^62 voxels, a seed of 2^80) is refused with the config,
naming its key. `STRICT` is the model config they all start from; `tests/core/test_bounds.py` walks every model and
checks that each number has both bounds.

>>> from pydantic import TypeAdapter
>>> TypeAdapter(Voxels).validate_python(2**62)  # doctest: +ELLIPSIS
Traceback (most recent call last):
pydantic_core._pydantic_core.ValidationError: 1 validation error for constrained-int
  Input should be less than or equal to 16777216 ...
"""

from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from incasem_like.core.geometry import world_length

#: unknown keys refused, no infinite or NaN floats
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

#: an edge, shape, block, chunk or kernel in voxels (16.7 M voxels: larger than any cell imaged)
Voxels = Annotated[int, Field(ge=1, le=2**24)]
#: an offset or a distance in voxels (0 allowed)
VoxelOffset = Annotated[int, Field(ge=0, le=2**24)]
#: a number of voxels (object and hole sizes; 0: off)
VoxelCount = Annotated[int, Field(ge=0, le=2**48)]
#: the largest voxel edge and world position, nm (0.1 mm; 1 m either way): in world units (1e-6 nm), a dataset
#: of 2^24 such voxels still fits the 64-bit integers of daisy's ROIs
MAX_VOXEL_NM, MAX_OFFSET_NM = 10**5, 10**9


def _exact_in_world_units(nm: float) -> float:
    world_length(nm)  # refuses more precision than the world unit holds
    return nm


#: a voxel edge in nm: any positive length the world unit (1e-6 nm) holds, e.g. 3.2, 9.8, 0.03925
Nanometres = Annotated[float, Field(ge=1e-6, le=MAX_VOXEL_NM), AfterValidator(_exact_in_world_units)]
#: a position in the world, nm
WorldOffset = Annotated[float, Field(ge=-MAX_OFFSET_NM, le=MAX_OFFSET_NM), AfterValidator(_exact_in_world_units)]
#: iterations, steps, attempts
Count = Annotated[int, Field(ge=1, le=10**9)]
#: processes or threads
Workers = Annotated[int, Field(ge=0, le=1024)]
#: a random seed (numpy's seeds are 32-bit)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: a share, a probability
Fraction = Annotated[float, Field(ge=0, le=1)]
#: a duration in minutes (up to two years)
Minutes = Annotated[float, Field(gt=0, le=10**6)]
#: z, y, x edges in voxels
Edges = tuple[Voxels, Voxels, Voxels]
#: z, y, x offsets in voxels
VoxelOffsets = tuple[VoxelOffset, VoxelOffset, VoxelOffset]
#: a radius in voxels (0: off)
Radius = Annotated[int, Field(ge=0, le=4096)]


#: how slice indices are written
SLICES_HINT = "write START:STOP:STEP (e.g. 0:165:20) or a comma list of slice indices (e.g. 0,20,45)"


def slice_indices(value: str | Sequence[int]) -> tuple[int, ...]:
    """Slice indices from START:STOP:STEP (Python's range), a comma list or a list of integers, sorted; a
    ValueError says what is wrong (no slices, a negative one, a step below 1, a slice given twice).

    >>> slice_indices("0:165:20")[:3], slice_indices("40, 3,10"), slice_indices([5, 1])
    ((0, 20, 40), (3, 10, 40), (1, 5))
    """
    text = value if isinstance(value, str) else ",".join(map(str, value))
    try:
        if ":" in text:
            start, stop, step = (int(part) for part in text.split(":"))
            if step < 1:
                raise ValueError(f"{text}: the step must be at least 1; {SLICES_HINT}")
            indices = list(range(start, stop, step))
        else:
            indices = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise (error if "step" in str(error) else ValueError(f"{text!r}: not slice indices; {SLICES_HINT}")) from None
    if not indices or min(indices) < 0:
        raise ValueError(f"{text}: no slices, or a negative one; {SLICES_HINT}")
    if len(set(indices)) < len(indices):
        raise ValueError(f"{text}: give each slice once")
    return tuple(sorted(indices))


#: slice indices (voxels from the dataset's first), as START:STOP:STEP, a comma list or a list
SliceIndices = Annotated[
    tuple[Annotated[int, Field(ge=0, le=2**24)], ...], BeforeValidator(slice_indices), Field(min_length=1)
]
