"""A slow objects step for the resume tests, imported by worker processes."""

from incasem_like.objects import FragmentsStage
from tests.stages import SlowBlocks


class SlowFragmentsStage(SlowBlocks, FragmentsStage):
    pass
