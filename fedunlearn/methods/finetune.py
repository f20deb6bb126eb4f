"""``finetune`` — the naive baseline: continue FedAvg from w_T over the remaining clients.

Shows how much leakage simply fades with more training (docs/methods.md). Default: 10% of R rounds, at least 1.
"""

from __future__ import annotations

from pydantic import Field

from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob, default_rounds
from fedunlearn.models import Weights


class FinetuneParams(MethodParams):
    rounds: int = Field(0, ge=0, description="FedAvg rounds; 0 = 10% of the original rounds (at least 1)")


class Finetune(UnlearningMethod):
    name = "finetune"
    paper = "Naive baseline: continued FedAvg without the withdrawn client (docs/methods.md)"
    summary = "continue FedAvg from w_T over the remaining clients"
    where = {"remaining": "FedAvg rounds from w_T"}
    granularity = ("client", "class")
    Params = FinetuneParams

    def run(self, job: UnlearnJob) -> Weights:
        p: FinetuneParams = self.params  # type: ignore[assignment]
        rounds = p.rounds or default_rounds(0.1, job.rounds_trained)
        return job.fedavg(job.start, rounds, "finetune")
