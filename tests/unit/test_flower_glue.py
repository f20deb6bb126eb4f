"""The Flower glue called directly, without Ray: ClientApp handlers and the WithdrawalFedAvg strategy hooks."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from clients.client_app import query, train
from clients.records import from_arrays, parse_reply, request_content, to_arrays
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.ledgers.access import read_access_log
from strategies.withdrawal_fedavg import WithdrawalFedAvg
from tests.conftest import make_tiny_federation


@pytest.fixture(autouse=True)
def server_identity():
    """Flower stamps new messages with the running task's identity; outside a run we provide one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 4},
                   state=RecordDict(), run_config={})


def test_client_train_handler_trains_and_reports(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path)
    cfg = tf.ctx.message_config("train", {"round": 1})
    msg = Message(content=request_content(tf.initial, cfg), message_type=MessageType.TRAIN, dst_node_id=102)
    reply = train(msg, _context(2))
    parsed = parse_reply(reply, {102: 2})
    assert parsed.ok and parsed.pid == 2 and parsed.metrics["num-examples"] > 0
    assert any(not np.array_equal(parsed.weights[k], tf.initial[k]) for k in tf.initial)
    assert [r.encode().split(":")[:2] for r in parsed.reads] == [["2", "member"]]


def test_client_query_reports_partition() -> None:
    msg = Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=7)
    reply = query(msg, _context(3))
    assert reply.content.config_records["info"]["pid"] == 3


def test_client_error_becomes_error_reply(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path)
    cfg = tf.ctx.message_config("no_such_step", {"round": 1})
    msg = Message(content=request_content(tf.initial, cfg), message_type=MessageType.TRAIN, dst_node_id=101)
    parsed = parse_reply(train(msg, _context(1)), {101: 1})
    assert not parsed.ok and "no_such_step" in parsed.error


def test_strategy_excludes_withdrawn_and_records_updates(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path, "train.fraction=0.67")
    tf.ctx.window.open(0)
    tf.ctx.window.close(0)
    tf.ctx.history.interval, tf.ctx.history.keep_updates = 1, True
    node_of_pid = {p: 100 + p for p in range(4)}
    engine = FedAvgRounds(tf.ctx, "original", [1, 2, 3], record_history=True)
    strategy = WithdrawalFedAvg(engine, node_of_pid)
    arrays = to_arrays(tf.initial)
    tf.ctx.costs.start("original", "train")
    for rnd in (1, 2, 3):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid=None))  # type: ignore[arg-type]
        assert len(msgs) == 2 and 100 not in {m.metadata.dst_node_id for m in msgs}
        replies = []
        for m in msgs:
            pid = m.metadata.dst_node_id - 100
            replies.append(train(m, _context(pid)))
        new, metrics = strategy.aggregate_train(rnd, replies)
        assert new is not None and "train_loss" in metrics
        arrays = new
    assert tf.ctx.history.rounds() == [1, 2, 3]
    assert 0 not in tf.ctx.history.clients_at(1)
    assert set(from_arrays(arrays)) == set(tf.initial)
    assert not any(r["client"] == "0" for r in read_access_log(tf.run_dir / "data_access.csv"))


def test_strategy_is_a_plain_flower_strategy() -> None:
    """Every hook is ours: WithdrawalFedAvg subclasses Flower's Strategy, not FedAvg (whose arguments were dead)."""
    from flwr.serverapp.strategy import FedAvg, Strategy

    assert issubclass(WithdrawalFedAvg, Strategy) and not issubclass(WithdrawalFedAvg, FedAvg)
