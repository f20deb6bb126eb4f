"""What travels in a message (issue 9 item 3): a client step reads its method's validated ``Params`` from the config
the message carries, no method hyperparameter travels as a loose key, and further weight sets travel as named
records, through the in-process transport and through Flower's record encoding alike."""

from __future__ import annotations

import numpy as np
import pytest

from clients.records import parse_reply, reply_content, request_content, request_parts
from fedunlearn.engine.phases import Phases
from fedunlearn.fl.protocol import CLIENT_STEPS, ClientReply, StepOutput
from fedunlearn.methods import METHODS
from fedunlearn.methods.pga import PGAParams
from fedunlearn.models import Weights
from tests.conftest import make_tiny_federation

#: keys every message may carry besides a method's own per-message values
FRAME = {"experiment", "phase", "step", "round", "withdrawn_classes", "forget_window_open"}


def _spy(tf) -> list[dict]:
    sent: list[dict] = []
    exchange = tf.fed._exchange

    def spy(pids, step, weights, config, records):
        sent.append({"step": step, "config": dict(config), "records": sorted(records)})
        return exchange(pids, step, weights, config, records)

    tf.fed._exchange = spy
    return sent


@pytest.mark.parametrize("name", [m for m in METHODS.names() if m != "retrain"])
def test_no_hyperparameter_travels_as_a_loose_key(tmp_path, name: str) -> None:
    """Every message of a whole run of the method: its keys are the frame plus values the server computed for that
    message; none is a field of the method's Params (they are read from the config the message carries)."""
    tf = make_tiny_federation(tmp_path, f'unlearn.methods=["retrain","{name}"]', "train.rounds=2")
    sent = _spy(tf)
    assert Phases(tf.fed, tf.initial).run() == {}
    fields = set(METHODS.get(name).Params.model_fields)
    mine = [m for m in sent if m["config"]["phase"].split(".")[0] == name]
    assert mine, f"{name} sent no message"
    loose = {k for m in mine for k in m["config"]} - FRAME
    assert not loose & fields, f"{name} sends hyperparameters as message keys: {sorted(loose & fields)}"


def test_a_step_reads_the_params_of_the_config_its_message_carries(tmp_path) -> None:
    """``ClientRuntime.params``: the defaults in a run, the method's own params when it was built with others
    (``ServerContext.method_params``), typed and validated on the client."""
    seen: list[PGAParams] = []

    def probe(rt, weights, message):
        seen.append(rt.params(PGAParams))
        return StepOutput(None, {"num-examples": 1.0})

    if "test_probe_params" not in CLIENT_STEPS:
        CLIENT_STEPS.register("test_probe_params")(probe)
    tf = make_tiny_federation(tmp_path, 'unlearn.methods=["retrain","pga"]')
    job = tf.job("pga", tf.initial)
    job.send([1], "test_probe_params", None, "probe")
    with tf.ctx.method_params("pga", PGAParams(epochs=7, lr=0.25)):
        job.send([1], "test_probe_params", None, "probe")
    job.send([1], "test_probe_params", None, "probe")
    assert [(p.epochs, p.lr) for p in seen] == [(5, 0.01), (7, 0.25), (5, 0.01)]
    assert all(type(p) is PGAParams for p in seen)


def test_named_weight_sets_round_trip_through_flower_records() -> None:
    w = Weights([("fc.weight", np.ones((2, 3), np.float32))])
    extra = {"generator": Weights([("0.weight", np.arange(4.0))]), "noise": Weights([("x", np.zeros((3, 2)))])}
    weights, config, records = request_parts(request_content(w, {"step": "s", "round": 2}, extra))
    assert list(weights) == ["fc.weight"] and config == {"step": "s", "round": 2}
    assert sorted(records) == ["generator", "noise"]
    assert np.array_equal(records["generator"]["0.weight"], np.arange(4.0))
    reply = ClientReply(3, None, {"num-examples": 5.0}, records={"edit": Weights([("fc.weight", np.ones(2))])})

    class _Msg:  # the parts of a Flower reply parse_reply reads
        content = reply_content(reply)
        metadata = type("M", (), {"src_node_id": 11})()

        @staticmethod
        def has_error() -> bool:
            return False

    back = parse_reply(_Msg(), {11: 3})
    assert back.pid == 3 and back.weights is None and list(back.records) == ["edit"]
    assert np.array_equal(back.records["edit"]["fc.weight"], np.ones(2))
