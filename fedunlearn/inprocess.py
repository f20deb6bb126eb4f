"""A federation without Flower or Ray: client steps are called directly in this process.

Used by the unit tests (methods, strategy maths, privacy ledger) and by ``sim.backend = "inprocess"`` for debugging.
Same hooks, same accounting, same client code as the Flower transport; only the delivery differs.
"""

from __future__ import annotations

from fedunlearn.client import handle
from fedunlearn.federation import ClientReply, Federation, Scalar
from fedunlearn.models import Weights
from fedunlearn.rounds import FedAvgRounds


class InProcessFederation(Federation):
    def _exchange(self, pids: list[int], step: str, weights: Weights | None,
                  config: dict[str, Scalar]) -> list[ClientReply]:
        return [handle(pid, weights, dict(config)) for pid in pids]

    def fedavg(self, engine: FedAvgRounds, weights: Weights, rounds: int) -> Weights:
        for rnd in range(1, rounds + 1):
            pids, config = engine.configure(rnd)
            replies = self._exchange(pids, engine.step, weights, config)
            weights = engine.aggregate(rnd, weights, replies)
        return weights
