"""The server's view of the federation, independent of transport.

``Federation`` is what methods and phases talk to: ``send`` one step to some clients, or run ``fedavg`` rounds.
Two transports implement it: Flower on Ray (``strategies.federation.FlowerFederation``) and a direct in-process
call (``fedunlearn.engine.inprocess.InProcessFederation``, for unit tests and debugging). Both share one
``ServerContext`` (``fedunlearn.fl.session``), so accounting and the privacy gate live in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedunlearn.fl.protocol import ClientReply, Records, Scalar
from fedunlearn.fl.session import ServerContext
from fedunlearn.models import Weights

if TYPE_CHECKING:
    from fedunlearn.fl.fedavg import FedAvgRounds


class Federation(ABC):
    """Sends client steps and runs FedAvg rounds; subclasses supply the transport."""

    def __init__(self, ctx: ServerContext, pids: Sequence[int]) -> None:
        self.ctx = ctx
        self.pids = sorted(pids)

    def send(self, pids: Sequence[int], step: str, weights: Weights | None,
             config: dict[str, Scalar] | None = None, records: Records | None = None) -> list[ClientReply]:
        """Run ``step`` on each client in ``pids`` (one message each, with the named ``records`` beside the model)
        and return the replies sorted by client."""
        pids = sorted(pids)
        self.ctx.window.check(pids, step)
        replies = self._exchange(pids, step, weights, self.ctx.message_config(step, config), records or {})
        self.ctx.ingest(replies, weights, len(pids), records)
        return sorted(replies, key=lambda r: r.pid)

    @abstractmethod
    def _exchange(self, pids: list[int], step: str, weights: Weights | None, config: dict[str, Scalar],
                  records: Records) -> list[ClientReply]:
        """Deliver one message per client and collect the replies (no accounting)."""

    @abstractmethod
    def fedavg(self, engine: FedAvgRounds, weights: Weights, rounds: int) -> Weights:
        """Run ``rounds`` FedAvg rounds driven by ``engine`` from ``weights``; return the final global weights."""
