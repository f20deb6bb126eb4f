"""Flower records of fedunlearn's wire types (``fedunlearn.fl.protocol``): the only place that knows both. It lives
with the ClientApp because both sides encode with it and the ClientApp must import nothing from the ServerApp side.

A message's content: ``config`` (a ConfigRecord of the per-message scalars), ``arrays`` (the model), and one
ArrayRecord per named weight set under ``record.<name>``; a reply adds ``metrics`` and ``info`` (client id, its data
reads, an error)."""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedunlearn.fl.protocol import ClientReply, Records
from fedunlearn.ledgers.access import DataRead
from fedunlearn.models import Weights

ARRAYS, CONFIG, METRICS, INFO, RECORD = "arrays", "config", "metrics", "info", "record."


def to_arrays(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def from_arrays(record: ArrayRecord) -> Weights:
    return Weights((k, v.numpy()) for k, v in record.items())


def message_type(step: str) -> str:
    """``train`` is Flower's train message; every other step is a custom train action ``train.<step>``."""
    return MessageType.TRAIN if step == "train" else f"{MessageType.TRAIN}.{step}"


def _put_records(content: RecordDict, records: Records) -> RecordDict:
    for name, w in records.items():
        content[RECORD + name] = to_arrays(w)
    return content


def _get_records(content: RecordDict) -> Records:
    return {k.removeprefix(RECORD): from_arrays(v) for k, v in content.array_records.items() if k.startswith(RECORD)}


def request_content(weights: Weights | None, config: dict[str, Any], records: Records | None = None) -> RecordDict:
    content = RecordDict({CONFIG: ConfigRecord(dict(config))})
    if weights is not None:
        content[ARRAYS] = to_arrays(weights)
    return _put_records(content, records or {})


def request_parts(content: RecordDict) -> tuple[Weights | None, dict[str, Any], Records]:
    weights = from_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    return weights, dict(content.config_records[CONFIG]), _get_records(content)


def reply_content(reply: ClientReply) -> RecordDict:
    content = RecordDict({
        METRICS: MetricRecord({k: float(v) for k, v in reply.metrics.items()}),
        INFO: ConfigRecord({"pid": reply.pid, "reads": [r.encode() for r in reply.reads],
                            "error": reply.error or ""}),
    })
    if reply.weights is not None:
        content[ARRAYS] = to_arrays(reply.weights)
    return _put_records(content, reply.records)


def parse_reply(msg: Message, pid_of_node: dict[int, int]) -> ClientReply:
    """A Flower reply as a ``ClientReply``; a transport error (handler crash, timeout) becomes an error reply."""
    pid = pid_of_node.get(msg.metadata.src_node_id, -1)
    if msg.has_error():
        return ClientReply(pid, error=f"flower error {msg.error.code}: {msg.error.reason}")
    c = msg.content
    info = dict(c.config_records[INFO]) if INFO in c.config_records else {}
    reads = [DataRead.decode(s) for s in info.get("reads", [])]
    weights = from_arrays(c.array_records[ARRAYS]) if ARRAYS in c.array_records else None
    metrics = dict(c.metric_records[METRICS]) if METRICS in c.metric_records else {}
    return ClientReply(int(info.get("pid", pid)), weights, metrics, reads, error=info.get("error") or None,
                       records=_get_records(c))
