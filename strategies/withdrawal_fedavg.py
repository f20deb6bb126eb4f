"""FedAvg with withdrawal: excludes withdrawn clients, samples with a seeded generator, records update history.

A Flower ``Strategy`` (not a ``FedAvg`` subclass: every hook is ours, so FedAvg's fractions, minimums and
aggregation would be dead arguments) whose hooks delegate to ``fedunlearn.fl.fedavg.FedAvgRounds`` (the maths, testable
without Ray): ``configure_train`` asks it which partitions train this round and maps them to node ids;
``aggregate_train`` turns the replies into ``ClientReply`` objects and lets it average, account and record. Flower's
``Strategy.start`` drives the rounds.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from clients.records import from_arrays, message_type, parse_reply, request_content, to_arrays
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.fl.protocol import ClientReply
from fedunlearn.models import Weights


class WithdrawalFedAvg(Strategy):
    """FedAvg over the eligible partitions of one phase.

    Parameters
    ----------
    engine: the phase's round hooks (eligible clients, seeded sampler, aggregation, history, ledgers).
    node_of_pid: partition id -> Flower node id (found once per run with a ``query`` round).
    """

    def __init__(self, engine: FedAvgRounds, node_of_pid: dict[int, int]) -> None:
        self.engine = engine
        self.node_of_pid = node_of_pid
        self.pid_of_node = {v: k for k, v in node_of_pid.items()}
        self._sent: Weights | None = None

    def summary(self) -> None:  # Flower logs this at start; keep it short
        pass

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        pids, cfg = self.engine.configure(server_round)
        self._sent = from_arrays(arrays)
        content = request_content(None, cfg, self.engine.step_records)
        content["arrays"] = arrays
        mtype = message_type(self.engine.step)
        return [Message(content=content, message_type=mtype, dst_node_id=self.node_of_pid[p]) for p in pids]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._sent is not None, "aggregate_train before configure_train"
        parsed = [parse_reply(m, self.pid_of_node) for m in replies]
        answered = {r.pid for r in parsed}
        parsed += [ClientReply(p, error="no reply before the timeout") for p in self.engine.last_sampled
                   if p not in answered]
        new = self.engine.aggregate(server_round, self._sent, parsed)
        rows = self.engine.ctx.rounds.rows
        metrics = MetricRecord({"train_loss": rows[-1].train_loss, "train_accuracy": rows[-1].train_accuracy}
                               if rows else {})
        return to_arrays(new), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # the auditor evaluates centrally; rounds.csv gets the test metrics from the engine

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
