"""The Flower ClientApp: Flower glue only. Each message is handed to ``fedunlearn.engine.client.handle``, which runs the
named step (``train`` or a method's local step) on this node's partition."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.records import reply_content, request_parts
from fedunlearn.engine.client import handle  # importing it registers every client step
from fedunlearn.fl.protocol import CLIENT_STEPS

app = ClientApp()


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _run(msg: Message, context: Context) -> Message:
    weights, config, records = request_parts(msg.content)
    reply = handle(_partition_id(context), weights, config, records)
    return Message(reply_content(reply), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """FedAvg local training (step ``train``)."""
    return _run(msg, context)


def _register(step: str) -> None:
    @app.train(step)
    def _step(msg: Message, context: Context) -> Message:
        return _run(msg, context)


for _step_name in CLIENT_STEPS.names():
    if _step_name != "train":
        _register(_step_name)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    return Message(RecordDict({"info": ConfigRecord({"pid": _partition_id(context)})}), reply_to=msg)
