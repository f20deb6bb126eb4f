"""The plug-in interface every unlearning method fills, and the job it is handed.

A method is one module: a subclass of ``UnlearningMethod`` that declares its paper, where its steps run, what it
needs, its hyperparameters (a pydantic model with the paper's defaults) and its client steps; ``unlearn`` drives the
federation through ``UnlearnJob`` (Flower messages on Ray, or in-process in unit tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from fedunlearn.client import CLIENT_STEPS, StepFn
from fedunlearn.federation import Scalar
from fedunlearn.models import Weights
from fedunlearn.rounds import FedAvgRounds

if TYPE_CHECKING:
    from fedunlearn.federation import ClientReply, Federation


class MethodParams(BaseModel):
    """Base of every method's hyperparameters: unknown keys rejected, strict types (``epochs = true`` is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
        return self.method if name == self.method else f"{self.method}.{name}"

    def fedavg(self, weights: Weights, rounds: int, name: str, *, pids: Sequence[int] | None = None,
               step: str = "train", config: dict[str, Scalar] | None = None,
               fraction: float | None = None) -> Weights:
        """``rounds`` FedAvg rounds over ``pids`` (default: the remaining clients), tracked in the cost ledger."""
        if rounds <= 0:
            return weights
        phase = self.phase(name)
        ctx = self.fed.ctx
        ctx.phase = phase
        ctx.costs.start(self.method, name)
        try:
            engine = FedAvgRounds(ctx, phase, self.remaining if pids is None else pids, step=step,
                                  step_config=config, fraction=fraction)
            engine.total_rounds = rounds
            return self.fed.fedavg(engine, weights, rounds)
        finally:
            ctx.costs.stop()

    def send(self, pids: Sequence[int], step: str, weights: Weights | None, name: str,
             config: dict[str, Scalar] | None = None, rounds: int = 1) -> list[ClientReply]:
        """One message per client in ``pids`` running ``step``; counts ``rounds`` FL rounds in the ledger."""
        ctx = self.fed.ctx
        ctx.phase = self.phase(name)
        ctx.costs.start(self.method, name)
        try:
            ctx.costs.note(rounds=rounds)
            return self.fed.send(pids, step, weights, config)
        finally:
            ctx.costs.stop()

    def server(self, name: str):  # noqa: ANN201 - a context manager timing server-side work
        return _ServerWork(self, name)


class _ServerWork:
    def __init__(self, job: UnlearnJob, name: str) -> None:
        self.job, self.name = job, name

    def __enter__(self) -> _ServerWork:
        self.job.fed.ctx.costs.start(self.job.method, self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.job.fed.ctx.costs.stop()


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

    @abstractmethod
    def unlearn(self, job: UnlearnJob) -> Weights:
        """Return the unlearned model."""

    @classmethod
    def register_steps(cls) -> None:
        for step, fn in cls.client_steps.items():
            if step not in CLIENT_STEPS:
                CLIENT_STEPS.register(step)(fn)


def default_rounds(share: float, rounds_trained: int) -> int:
    """``share`` of R rounds, at least 1 (docs/methods.md: e.g. finetune's 10% of R)."""
    return max(1, int(round(share * rounds_trained)))
