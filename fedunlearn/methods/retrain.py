"""``retrain`` — the oracle: FedAvg from w_0 over the remaining clients with the original schedule.

Exact unlearning and the yardstick for every other method (same rounds, local epochs, fraction and seed as the
original training). Never shortened to make other methods look fast.
"""

from __future__ import annotations

from fedunlearn.methods.base import UnlearningMethod, UnlearnJob
from fedunlearn.models import Weights


class Retrain(UnlearningMethod):
    name = "retrain"
    paper = "Exact unlearning by retraining from scratch (the standard oracle; e.g. Bourtoule et al., SISA, S&P 2021)"
    summary = "FedAvg from w_0 over the remaining clients, same schedule as the original"
    where = {"remaining": "R rounds of FedAvg from the initial weights"}
    granularity = ("client", "class")

    def run(self, job: UnlearnJob) -> Weights:
        return job.fedavg(job.initial, job.cfg.train.rounds, "retrain")
