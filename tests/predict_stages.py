"""A slow prediction stage for the resume test (its own module: worker processes of other tests skip torch)."""

from incasem_like.stages.predict import PredictStage
from tests.toy_stages import SlowBlocks


class SlowPredictStage(SlowBlocks, PredictStage):
    pass
