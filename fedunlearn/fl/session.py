"""What the server side of one experiment shares across phases (``ServerContext``), the one way to run a labelled,
costed phase (``ServerContext.track``), and the rounds log with typed rows.

Both transports (Flower on Ray, in-process) hand the same ``ServerContext`` to the methods and phases: the cost
ledger, the rounds log, the data-access ledger and the withdrawal window, so accounting and the privacy gate live in
one place. Names (README "Glossary"): a *phase* is one labelled, costed FL segment (a ledger row); a *round* is one
aggregation inside a phase.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fedunlearn.config.render import to_toml
from fedunlearn.config.schema import MethodParams
from fedunlearn.fl.history import UpdateHistory
from fedunlearn.fl.protocol import ClientReply, Records, Scalar
from fedunlearn.io import atomic_write_text
from fedunlearn.ledgers.access import AccessLog, WithdrawalWindow
from fedunlearn.ledgers.costs import Cost, CostLedger
from fedunlearn.models import Weights, weights_nbytes
from fedunlearn.rundir import ROUNDS_COLUMNS

if TYPE_CHECKING:
    from fedunlearn.config.schema import ExperimentConfig


@dataclass
class RoundRow:
    """One ``rounds.csv`` row: one aggregated round of one phase (typed the same whether fresh or resumed)."""

    phase: str
    round: int
    clients: int
    failed: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    wall_s: float = float("nan")  # since the phase's previous round (or its start): the round's server wall time

    @classmethod
    def parse(cls, row: dict[str, str]) -> RoundRow:
        kinds = {f.name: f.type for f in fields(cls)}
        conv = {"str": str, "int": int, "float": float}
        return cls(**{k: conv[kinds[k]](row[k]) for k in kinds if row.get(k, "") != ""})


assert [f.name for f in fields(RoundRow)] == ROUNDS_COLUMNS, "rounds.csv columns (fedunlearn.rundir)"


@dataclass
class RoundsLog:
    rows: list[RoundRow] = field(default_factory=list)

    def add(self, row: RoundRow) -> None:
        self.rows.append(row)

    def save(self, path: Path) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, ROUNDS_COLUMNS)
        w.writeheader()
        w.writerows(asdict(r) for r in self.rows)
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> RoundsLog:
        if not path.exists():
            return cls()
        with path.open() as fh:
            return cls([RoundRow.parse(r) for r in csv.DictReader(fh)])


def phase_label(method: str, phase: str) -> str:
    """The label messages and data reads carry: ``method`` for its main phase, else ``method.phase``."""
    return method if phase in ("", method) else f"{method}.{phase}"


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
    on_model: Callable[[str, int, Weights], None] | None = None         # a new server model: (phase, round, weights)
    phase: str = ""
    startup_s: float | None = None  # from the session's start to the FL stage (Ray, node mapping), when measured
    _round_clock: float = 0.0  # when the current round of the open phase began (per-round wall time)

    @contextmanager
    def track(self, method: str, phase: str, *, label: str | None = None, resume: Cost | None = None
              ) -> Iterator[Cost]:
        """Run a labelled, costed phase: messages and data reads inside carry ``label`` (default
        ``phase_label(method, phase)``) and its costs go to a new ledger row (method, phase), or back into
        ``resume``, a row this phase had before (a method alternating between phases keeps one row each)."""
        if self.costs.current is not None:
            raise RuntimeError(f"{method}: phase {phase!r} opened inside phase {self.costs.current.phase!r}")
        if resume is None:
            row = self.costs.start(method, phase)
        else:
            row = self.costs.current = resume
            row.wall_s -= time.perf_counter()
        self.phase = label if label is not None else phase_label(method, phase)
        self._round_clock = time.perf_counter()
        try:
            yield row
        finally:
            self.costs.stop()

    @contextmanager
    def method_params(self, method: str, params: MethodParams) -> Iterator[None]:
        """Messages inside carry the experiment with ``[unlearn.<method>]`` = ``params`` (the clients read them
        there); a no-op when the config already holds them, as in every run."""
        current = (self.cfg.unlearn.model_extra or {}).get(method)
        if current == params:
            yield
            return
        saved = self.cfg, self.cfg_toml
        unlearn = self.cfg.unlearn.model_copy()
        unlearn.__pydantic_extra__ = {**(unlearn.model_extra or {}), method: params}
        self.cfg = self.cfg.model_copy(update={"unlearn": unlearn})
        self.cfg_toml = to_toml(self.cfg)
        try:
            yield
        finally:
            self.cfg, self.cfg_toml = saved

    def message_config(self, step: str, extra: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
        """What every message carries: the experiment (so clients rebuild their data deterministically and read
        their method's validated parameters), the phase, and this message's own values."""
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
        now = time.perf_counter()
        self.rounds.add(RoundRow(phase, rnd, len(ok), failed, round(tl, 6), round(ta, 6), round(test_loss, 6),
                                 round(test_acc, 6), round(now - self._round_clock, 4)))
        self._round_clock = now
        self.new_model(phase, rnd, new)
        if self.on_round:
            self.on_round(phase, rnd if step is None else step, total)

    def new_model(self, phase: str, rnd: int, weights: Weights) -> None:
        """The server now holds a new model in ``phase``: an aggregated round (``log_round``), or a method's own
        update outside one (pga's ascended model, an accepted forsaken edit, lightweight's perturbation). Heard by
        ``on_model`` while someone listens (``listening``): the models saved during and after unlearning."""
        if self.on_model is not None:
            self.on_model(phase, rnd, weights)

    @contextmanager
    def listening(self, on_model: Callable[[str, int, Weights], None]) -> Iterator[None]:
        """``on_model`` hears every new server model inside (``new_model``); one listener at a time."""
        if self.on_model is not None:
            raise RuntimeError("a listener to new server models is already set")
        self.on_model = on_model
        try:
            yield
        finally:
            self.on_model = None

    def ingest(self, replies: Sequence[ClientReply], sent: Weights | None, n_sent: int,
               records: Records | None = None) -> None:
        """Account for one exchange: bytes both ways (model and named records), client samples, failures, and the
        clients' data reads."""
        down = (weights_nbytes(sent) if sent is not None else 0) * n_sent
        down += sum(weights_nbytes(w) for w in (records or {}).values()) * n_sent
        up = sum(weights_nbytes(r.weights) for r in replies if r.weights is not None)
        up += sum(weights_nbytes(w) for r in replies for w in r.records.values())
        samples = sum(int(r.metrics.get("samples", 0)) for r in replies if r.ok)
        failed = sum(1 for r in replies if not r.ok)
        self.costs.note(bytes_down=down, bytes_up=up, client_samples=samples, failed_clients=failed)
        for r in replies:
            self.access.record(r.reads, self.phase)
