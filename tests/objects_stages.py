"""A slow objects step for the resume tests, imported by worker processes."""

from incasem_like.stages.objects import FragmentsStage
from tests.toy_stages import SlowBlocks


class SlowFragmentsStage(SlowBlocks, FragmentsStage):
    pass
