"""Conversions between fedunlearn's transport-free types and Flower records (the only place that knows both)."""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedunlearn.access import DataRead
from fedunlearn.federation import ClientReply
from fedunlearn.models import Weights

ARRAYS, CONFIG, METRICS, INFO = "arrays", "config", "metrics", "info"


def to_arrays(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def from_arrays(record: ArrayRecord) -> Weights:
    return Weights((k, v.numpy()) for k, v in record.items())


def message_type(step: str) -> str:
    """``train`` is Flower's train message; every other step is a custom train action ``train.<step>``."""
    return MessageType.TRAIN if step == "train" else f"{MessageType.TRAIN}.{step}"


def request_content(weights: Weights | None, config: dict[str, Any]) -> RecordDict:
    content = RecordDict({CONFIG: ConfigRecord(dict(config))})
    if weights is not None:
        content[ARRAYS] = to_arrays(weights)
    return content


def request_parts(content: RecordDict) -> tuple[Weights | None, dict[str, Any]]:
    weights = from_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    return weights, dict(content.config_records[CONFIG])


def reply_content(reply: ClientReply) -> RecordDict:
    content = RecordDict({
        METRICS: MetricRecord({k: float(v) for k, v in reply.metrics.items()}),
        INFO: ConfigRecord({"pid": reply.pid, "reads": [r.encode() for r in reply.reads],
                            "error": reply.error or ""}),
    })
    if reply.weights is not None:
        content[ARRAYS] = to_arrays(reply.weights)
    return content


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
    return ClientReply(int(info.get("pid", pid)), weights, metrics, reads, error=info.get("error") or None)
