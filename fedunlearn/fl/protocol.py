"""The wire types of fedunlearn's federation, free of any transport: what a message to a client carries, what a
client step returns, and the registry of client steps. Flower encodes them in ``clients.records``; the in-process
transport passes them as they are.

A message is (step name, the model ``weights`` or None, a flat ``config`` of per-message scalars, and named
``records``: further weight sets such as a generator's state or u's last local model). Per-message scalars are the
experiment itself (``experiment``: the resolved config, from which a client rebuilds its data and reads its method's
validated ``Params``), ``phase``, ``step``, ``round`` and the values a server half computed for this message only
(e.g. pga's ball radius); a method's hyperparameters never travel as loose keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedunlearn.ledgers.access import DataRead
from fedunlearn.models import Weights
from fedunlearn.registry import Registry

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime

Scalar = int | float | str | bool
#: named weight sets beside the model, one Flower ArrayRecord each
Records = dict[str, Weights]


@dataclass
class ClientReply:
    """One client's answer to one step: new weights (or None), scalar metrics, named weight sets, its data reads, or
    an error."""

    pid: int
    weights: Weights | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reads: list[DataRead] = field(default_factory=list)
    error: str | None = None
    records: Records = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_examples(self) -> int:
        return int(self.metrics.get("num-examples", 0))


@dataclass
class StepOutput:
    """What a client step returns: new model weights (or None), scalar metrics, named weight sets."""

    weights: Weights | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    records: Records = field(default_factory=dict)


StepFn = Callable[["ClientRuntime", "Weights | None", dict[str, Any]], StepOutput]
#: client step name -> function; ``train`` (fedunlearn.fl.recipe) plus the local halves of the methods
CLIENT_STEPS: Registry[StepFn] = Registry("client step")
