"""A federation without Flower or Ray: client steps are called directly in this process.

Used by the unit tests (methods, strategy maths, privacy ledger), by the A2 seed replicas and by
``sim.backend = "inprocess"`` for debugging. Same hooks, same accounting, same client code as the Flower transport;
only the delivery differs.
"""

from __future__ import annotations

from pathlib import Path

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.engine.client import handle
from fedunlearn.engine.phases import Phases
from fedunlearn.engine.session import Progress, build_server_context
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.fl.protocol import ClientReply, Records, Scalar
from fedunlearn.fl.transport import Federation
from fedunlearn.models import Weights


class InProcessFederation(Federation):
    def _exchange(self, pids: list[int], step: str, weights: Weights | None, config: dict[str, Scalar],
                  records: Records) -> list[ClientReply]:
        return [handle(pid, weights, dict(config), records) for pid in pids]

    def fedavg(self, engine: FedAvgRounds, weights: Weights, rounds: int) -> Weights:
        for rnd in range(1, rounds + 1):
            pids, config = engine.configure(rnd)
            replies = self._exchange(pids, engine.step, weights, config, engine.step_records)
            weights = engine.aggregate(rnd, weights, replies)
        return weights


def run_phases_inprocess(cfg: ExperimentConfig, run_dir: Path, progress: Progress | None = None) -> dict[str, str]:
    """The FL stage of a prepared run without Flower or Ray; returns the failed methods."""
    ctx, initial = build_server_context(cfg, run_dir, progress)
    return Phases(InProcessFederation(ctx, range(cfg.data.clients)), initial).run()
