"""The training recipe as a client step: ``train`` is FedAvg's local training (``train.local_epochs`` of SGD on the
client's members); methods reuse ``local_sgd`` for their own recipe-based steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedunlearn.fl.protocol import CLIENT_STEPS, StepOutput
from fedunlearn.models import Weights, get_weights
from fedunlearn.training import sgd, train_epochs

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime


WARMUP_STEP = "warmup"


@CLIENT_STEPS.register(WARMUP_STEP)
def warmup_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Load the client's data and build its model once, reading no record: the actors' start-up cost is then
    measured on its own (ledger method ``startup``), not charged to the first phase of a run or of a resume."""
    rt.model(None)
    return StepOutput(None, {"num-examples": 0.0, "classes": float(rt.num_classes)})


@CLIENT_STEPS.register("train")
def train_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """FedAvg local training: ``local_epochs`` of SGD on the client's members."""
    return local_sgd(rt, weights, seed_label="train")


def local_sgd(rt: ClientRuntime, weights: Weights | None, seed_label: str, *, lr: float | None = None,
              epochs: int | None = None) -> StepOutput:
    """The training recipe on the client's members. A step may set ``lr`` / ``epochs`` from its method's Params; a
    FedAvg phase may override ``local_epochs`` for its rounds (e.g. pga's post rounds), a value of the phase sent
    with each of its messages."""
    tc = rt.cfg.train
    x, y = rt.read("member")
    model = rt.model(weights)
    lr_key = "train.lr" if lr is None else f"the learning rate in [unlearn.{rt.method}]"
    lr = tc.lr if lr is None else lr
    epochs = int(rt.message.get("local_epochs", tc.local_epochs)) if epochs is None else epochs
    opt = sgd(model, lr, tc.momentum, tc.weight_decay)
    res = train_epochs(model, x, y, epochs=epochs, batch_size=tc.batch_size, optimizer=opt, seed=rt.seed(seed_label),
                       device=rt.device, lr_key=lr_key)
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples),
                                           "loss": res.loss, "accuracy": res.accuracy})
