"""The Flower transport of ``fedunlearn.fl.transport.Federation``: messages through a ``Grid`` to ClientApps on Ray."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.records import from_arrays, message_type, parse_reply, request_content, to_arrays
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.fl.protocol import ClientReply, Records, Scalar
from fedunlearn.fl.session import ServerContext
from fedunlearn.fl.transport import Federation
from fedunlearn.models import Weights
from strategies.withdrawal_fedavg import WithdrawalFedAvg

log = logging.getLogger(__name__)
TIMEOUT_S = 3600.0
#: seconds a short node count must stay unchanged to be taken as the federation's size
SETTLE_S = 5.0


def wait_for_nodes(grid: Grid, n: int, timeout: float = 180.0, settle: float = SETTLE_S,
                   check: Callable[[], None] | None = None) -> list[int]:
    """The ServerApp starts before the virtual nodes register: wait until all ``n`` are there. The simulation
    registers its nodes all at once, so a count that stays short for ``settle`` s is the federation's size: a
    federation of another size is reported then, naming the fix (``timeout`` bounds a count that keeps moving).
    ``check`` is called while waiting (it raises to stop)."""
    t0 = last_change = time.monotonic()
    count = -1
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        now = time.monotonic()
        if len(nodes) != count:
            count, last_change = len(nodes), now
        if now - last_change > settle or now - t0 > timeout:
            raise ConfigError(f"data.clients = {n} but the Flower federation has {len(nodes)} nodes; run "
                              f'`flwr run . --federation-config "num-supernodes={n}"` (or set data.clients)')
        if check is not None:
            check()
        time.sleep(0.2)


def map_partitions(grid: Grid, nodes: list[int]) -> dict[int, int]:
    """Ask every node for its partition id (node ids are random per run): partition id -> node id."""
    msgs = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=n)
            for n in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=TIMEOUT_S):
        if reply.has_error():
            raise FedUnlearnError(f"node {reply.metadata.src_node_id} failed the partition query: {reply.error.reason}")
        out[int(reply.content.config_records["info"]["pid"])] = reply.metadata.src_node_id
    return out


class FlowerFederation(Federation):
    """Delivers client steps as Flower messages; FedAvg phases run through ``WithdrawalFedAvg.start``."""

    def __init__(self, ctx: ServerContext, grid: Grid, node_of_pid: dict[int, int]) -> None:
        super().__init__(ctx, node_of_pid.keys())
        self.grid = grid
        self.node_of_pid = node_of_pid
        self.pid_of_node = {v: k for k, v in node_of_pid.items()}

    def _exchange(self, pids: list[int], step: str, weights: Weights | None, config: dict[str, Scalar],
                  records: Records) -> list[ClientReply]:
        content = request_content(weights, config, records)
        msgs = [Message(content=content, message_type=message_type(step), dst_node_id=self.node_of_pid[p])
                for p in pids]
        replies = [parse_reply(m, self.pid_of_node) for m in self.grid.send_and_receive(msgs, timeout=TIMEOUT_S)]
        answered = {r.pid for r in replies}
        return replies + [ClientReply(p, error="no reply before the timeout") for p in pids if p not in answered]

    def fedavg(self, engine: FedAvgRounds, weights: Weights, rounds: int) -> Weights:
        strategy = WithdrawalFedAvg(engine, self.node_of_pid)
        result = strategy.start(self.grid, to_arrays(weights), num_rounds=rounds, timeout=TIMEOUT_S)
        return from_arrays(result.arrays)
