"""Fault-injecting prediction stages (their own module: CLAHE workers of the other tests skip importing torch)."""

from incasem_like.stages.predict import PredictStage
from tests.reliability.faults import FailingBlocks, StallingBlocks


class FailingPredictStage(FailingBlocks, PredictStage):
    pass


class StallingPredictStage(StallingBlocks, PredictStage):
    pass
