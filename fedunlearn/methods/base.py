"""The plug-in interface every unlearning method fills, and the job it is handed.

A method is one module: a subclass of ``UnlearningMethod`` that declares its paper, where its steps run, what it
needs, its hyperparameters (a pydantic model with the paper's defaults) and its client steps; ``unlearn`` drives the
federation through ``UnlearnJob`` (Flower messages on Ray, or in-process in unit tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fedunlearn.config.schema import MethodParams
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.fl.protocol import CLIENT_STEPS, Records, Scalar, StepFn
from fedunlearn.fl.session import phase_label
from fedunlearn.ledgers.costs import Cost
from fedunlearn.models import Weights

if TYPE_CHECKING:
    from fedunlearn.fl.protocol import ClientReply
    from fedunlearn.fl.transport import Federation

__all__ = ["MethodParams", "UnlearnJob", "UnlearningMethod", "default_rounds"]


@dataclass
class UnlearnJob:
    """One withdrawal handed to one method.

    Parameters
    ----------
    fed: the federation (send steps, run FedAvg rounds).
    method: the method's name (phase labels, seeds, ledger rows).
    start: the model to unlearn from (w_T, or the previous withdrawal's result when several clients leave in turn).
    initial: w_0, the initial weights of the original training.
    withdrawn: the client(s) leaving now.
    remaining: clients still in the federation after this withdrawal.
    rounds_trained: R, the number of rounds the start model was trained for.
    forget_classes: class withdrawal: the labels to forget in every client's data (then ``withdrawn`` is empty and
        every client remains; clients leave these labels out of every read unless a step asks for the forget data
        while their window is open).
    """

    fed: Federation
    method: str
    start: Weights
    initial: Weights
    withdrawn: list[int]
    remaining: list[int]
    rounds_trained: int
    forget_classes: list[int] = field(default_factory=list)

    @property
    def cfg(self):  # noqa: ANN201 - ExperimentConfig
        return self.fed.ctx.cfg

    def phase(self, name: str) -> str:
        return phase_label(self.method, name)

    def track(self, name: str, resume: Cost | None = None) -> AbstractContextManager[Cost]:
        """Phase ``name`` of this method, labelled and costed (``ServerContext.track``); also times server work."""
        return self.fed.ctx.track(self.method, name, resume=resume)

    def fedavg(self, weights: Weights, rounds: int, name: str, *, pids: Sequence[int] | None = None,
               step: str = "train", config: dict[str, Scalar] | None = None, records: Records | None = None,
               fraction: float | None = None) -> Weights:
        """``rounds`` FedAvg rounds over ``pids`` (default: the remaining clients), tracked in the cost ledger."""
        if rounds <= 0:
            return weights
        with self.track(name):
            engine = FedAvgRounds(self.fed.ctx, self.phase(name), self.remaining if pids is None else pids,
                                  step=step, step_config=config, step_records=records, fraction=fraction)
            engine.total_rounds = rounds
            return self.fed.fedavg(engine, weights, rounds)

    def send(self, pids: Sequence[int], step: str, weights: Weights | None, name: str,
             config: dict[str, Scalar] | None = None, rounds: int = 1,
             records: Records | None = None) -> list[ClientReply]:
        """One message per client in ``pids`` running ``step``; counts ``rounds`` FL rounds in the ledger."""
        with self.track(name):
            self.fed.ctx.costs.note(rounds=rounds)
            return self.fed.send(pids, step, weights, config, records)

    def new_model(self, name: str, rnd: int, weights: Weights) -> None:
        """The server holds a new model after step ``rnd`` of phase ``name`` that was not an aggregated round (those
        are heard already): pga's ascent, an accepted forsaken edit, lightweight's perturbation. Keeps the record of
        every model a method passes through complete (``ServerContext.new_model``; ``audit.during``)."""
        self.fed.ctx.new_model(self.phase(name), rnd, weights)

    def server(self, name: str) -> AbstractContextManager[Cost]:
        """Server-side work of phase ``name`` (timed in the ledger)."""
        return self.track(name)


class UnlearningMethod(ABC):
    """Base class of a method. Subclasses set the class attributes and implement ``unlearn``."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    granularity: ClassVar[tuple[str, ...]] = ("client",)
    where: ClassVar[dict[str, str]] = {}           # "server" / "withdrawing" / "remaining" -> what runs there
    needs_forget_data: ClassVar[bool] = False      # runs steps on the withdrawing client's data (inside its window)
    needs_history: ClassVar[bool] = False          # needs per-client updates stored during training
    needs_remaining_clients: ClassVar[bool] = True
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: where this implementation departs from the paper / its reference code, or fixes a measured defect, one line
    #: each (``fedunlearn methods NAME`` prints them; the module docstring gives the reasons)
    departures: ClassVar[tuple[str, ...]] = ()
    client_steps: ClassVar[dict[str, StepFn]] = {}  # step name -> function, registered in CLIENT_STEPS

    def __init__(self, params: MethodParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def unlearn(self, job: UnlearnJob) -> Weights:
        """Return the unlearned model. The clients read this method's parameters from the config every message
        carries, under the job's label (``job.method``, the first part of every phase label), so the config they get is
        the experiment's with ``[unlearn.<job.method>]`` set to ``self.params``: the same config in a run, where the
        params come from it; another one when a test builds the method with other params."""
        with job.fed.ctx.method_params(job.method, self.params):
            return self.run(job)

    @abstractmethod
    def run(self, job: UnlearnJob) -> Weights:
        """The method's algorithm: drive the federation through ``job``; return the unlearned model."""

    @classmethod
    def register_steps(cls) -> None:
        for step, fn in cls.client_steps.items():
            if step not in CLIENT_STEPS:
                CLIENT_STEPS.register(step)(fn)


def default_rounds(share: float, rounds_trained: int) -> int:
    """``share`` of R rounds, at least 1 (docs/methods.md: e.g. finetune's 10% of R)."""
    return max(1, int(round(share * rounds_trained)))
