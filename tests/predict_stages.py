"""A slow prediction stage for the resume test (its own module: worker processes of other tests skip torch)."""

from incasem_like.predict import PredictStage
from tests.stages import SlowBlocks


class SlowPredictStage(SlowBlocks, PredictStage):
    pass
