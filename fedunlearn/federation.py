"""The server's view of the federation, independent of transport.

``Federation`` is what methods and phases talk to: ``send`` one step to some clients, or run ``fedavg`` rounds.
Two transports implement it: Flower on Ray (``strategies.federation.FlowerFederation``) and a direct in-process
call (``fedunlearn.inprocess.InProcessFederation``, for unit tests and debugging). Both share ``ServerContext``:
the cost ledger, the rounds log, the data-access ledger and the withdrawal window, so accounting and the privacy
gate live in one place.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedunlearn.access import AccessLog, DataRead, WithdrawalWindow
from fedunlearn.costs import CostLedger
from fedunlearn.history import UpdateHistory
from fedunlearn.io import atomic_write_text
from fedunlearn.models import Weights, weights_nbytes

if TYPE_CHECKING:
    from fedunlearn.config import ExperimentConfig
    from fedunlearn.rounds import FedAvgRounds

Scalar = int | float | str | bool
ROUNDS_COLUMNS = ["phase", "round", "clients", "failed", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]


@dataclass
class ClientReply:
    """One client's answer to one step: new weights (or None), scalar metrics, its data reads, or an error."""

    pid: int
    weights: Weights | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reads: list[DataRead] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_examples(self) -> int:
        return int(self.metrics.get("num-examples", 0))


@dataclass
class RoundsLog:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append({k: row.get(k, "") for k in ROUNDS_COLUMNS})

    def save(self, path: Path) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, ROUNDS_COLUMNS)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> RoundsLog:
        if not path.exists():
            return cls()
        with path.open() as fh:
            return cls(list(csv.DictReader(fh)))


@dataclass
class ServerContext:
    """Everything the server side of one experiment shares across phases."""

    cfg: ExperimentConfig
    cfg_toml: str
    run_dir: Path
    window: WithdrawalWindow
    access: AccessLog
    costs: CostLedger
    rounds: RoundsLog
    history: UpdateHistory
    evaluate: Callable[[Weights], tuple[float, float]] | None = None   # central (loss, accuracy) on the test set
    on_round: Callable[[str, int, int], None] | None = None             # progress: (phase, round, total)
    phase: str = ""

    def message_config(self, step: str, extra: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
        """What every message carries: the experiment (so clients rebuild their data deterministically), the phase,
        and step-specific settings."""
        cfg: dict[str, Scalar] = {"experiment": self.cfg_toml, "phase": self.phase, "step": step}
        if self.window.classes:  # class withdrawal: clients leave these labels out of every read ...
            cfg["withdrawn_classes"] = ",".join(map(str, self.window.withdrawn_classes()))
            # ... except steps that read the forget data, allowed only while the classes' window is open
            cfg["forget_window_open"] = ",".join(map(str, self.window.open_classes_now()))
        cfg.update(extra or {})
        return cfg

    def log_round(self, phase: str, rnd: int, new: Weights, ok: Sequence[ClientReply], failed: int,
                  total: int = 0, step: int | None = None) -> None:
        """One ``rounds.csv`` row: the successful clients' example-weighted training metrics and the new global
        model's central test metrics; then progress to ``on_round``: ``step`` (default ``rnd``) of ``total`` (0 = not
        known)."""
        n = sum(max(x.num_examples, 1) for x in ok)
        tl = sum(x.metrics.get("loss", 0.0) * max(x.num_examples, 1) for x in ok) / n
        ta = sum(x.metrics.get("accuracy", 0.0) * max(x.num_examples, 1) for x in ok) / n
        test_loss, test_acc = self.evaluate(new) if self.evaluate else (float("nan"), float("nan"))
        self.rounds.add(phase=phase, round=rnd, clients=len(ok), failed=failed, train_loss=round(tl, 6),
                        train_accuracy=round(ta, 6), test_loss=round(test_loss, 6), test_accuracy=round(test_acc, 6))
        if self.on_round:
            self.on_round(phase, rnd if step is None else step, total)

    def ingest(self, replies: Sequence[ClientReply], sent: Weights | None, n_sent: int) -> None:
        """Account for one exchange: bytes both ways, client samples, failures, and the clients' data reads."""
        down = weights_nbytes(sent) * n_sent if sent is not None else 0
        up = sum(weights_nbytes(r.weights) for r in replies if r.weights is not None)
        samples = sum(int(r.metrics.get("samples", 0)) for r in replies if r.ok)
        failed = sum(1 for r in replies if not r.ok)
        self.costs.note(bytes_down=down, bytes_up=up, client_samples=samples, failed_clients=failed)
        for r in replies:
            self.access.record(r.reads, self.phase)


class Federation(ABC):
    """Sends client steps and runs FedAvg rounds; subclasses supply the transport."""

    def __init__(self, ctx: ServerContext, pids: Sequence[int]) -> None:
        self.ctx = ctx
        self.pids = sorted(pids)

    def send(self, pids: Sequence[int], step: str, weights: Weights | None,
             config: dict[str, Scalar] | None = None) -> list[ClientReply]:
        """Run ``step`` on each client in ``pids`` (one message each) and return the replies sorted by client."""
        pids = sorted(pids)
        self.ctx.window.check(pids, step)
        replies = self._exchange(pids, step, weights, self.ctx.message_config(step, config))
        self.ctx.ingest(replies, weights, len(pids))
        return sorted(replies, key=lambda r: r.pid)

    @abstractmethod
    def _exchange(self, pids: list[int], step: str, weights: Weights | None,
                  config: dict[str, Scalar]) -> list[ClientReply]:
        """Deliver one message per client and collect the replies (no accounting)."""

    @abstractmethod
    def fedavg(self, engine: FedAvgRounds, weights: Weights, rounds: int) -> Weights:
        """Run ``rounds`` FedAvg rounds driven by ``engine`` from ``weights``; return the final global weights."""
