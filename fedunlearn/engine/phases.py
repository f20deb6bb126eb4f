"""The FL phases of one experiment, in order, resumable: original training → withdrawal(s) → each unlearning
method → the retrain oracle → (audit only) the RMIA reference federations and a second retrain with another seed.
Transport-agnostic: it talks to a ``Federation`` (Flower on Ray, or in-process).

Withdrawal window (docs/design.md): when client u withdraws its window opens; the methods that declare
``needs_forget_data`` run first, while it is open; then it closes and the remaining methods run. From then on u is
never addressed again (the window refuses it) and so its data is never read.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedunlearn.data.cache import experiment_data
from fedunlearn.engine.during import recording
from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.fl.recipe import WARMUP_STEP
from fedunlearn.fl.session import ServerContext
from fedunlearn.fl.transport import Federation
from fedunlearn.io import atomic_write_json
from fedunlearn.methods import METHODS, UnlearnJob, build_method
from fedunlearn.models import Weights, build_model, get_weights, load_weights, save_weights
from fedunlearn.rundir import (
    AFTER,
    FL_FINISHED,
    ORACLE,
    ORIGINAL,
    REFERENCES,
    RETRAIN_NULL,
    STARTUP,
    RunDir,
    after_model,
)
from fedunlearn.training import seed_for

log = logging.getLogger(__name__)


def reference_halves(pids: list[int], withdrawn: list[int], seed: int) -> tuple[list[int], list[int]]:
    """RMIA's two reference federations: a seeded random half of the clients that never withdrew, and the rest.

    Withdrawn clients are in NEITHER half: their windows are closed by the time the references train, so they cannot
    be addressed. That is still valid for RMIA: their records are OUT for both references, so both serve as the
    references that exclude them (the audit uses the mean of both, as RMIA averages its OUT references). Half A gets
    the odd client.
    """
    gone = set(withdrawn)
    eligible = np.array(sorted(p for p in pids if p not in gone), dtype=np.int64)
    perm = np.random.default_rng(seed_for(seed, "references")).permutation(eligible)
    h = (len(perm) + 1) // 2
    return sorted(int(x) for x in perm[:h]), sorted(int(x) for x in perm[h:])


@dataclass
class PhaseState:
    """What is finished (``phases.json``): lets ``--resume`` skip done phases and restore the windows."""

    path: Path
    done: list[str] = field(default_factory=list)
    window: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PhaseState:
        if not path.exists():
            return cls(path)
        d = json.loads(path.read_text())
        return cls(path, d.get("done", []), d.get("window", {}), d.get("failed", {}))

    def save(self) -> None:
        atomic_write_json(self.path, {"done": self.done, "window": self.window, "failed": self.failed})

    def is_done(self, key: str) -> bool:
        return key in self.done

    def mark(self, key: str) -> None:
        if key not in self.done:
            self.done.append(key)
        self.save()


class Phases:
    """Runs and checkpoints the phases; ``run`` is the whole FL part of an experiment."""

    def __init__(self, fed: Federation, initial: Weights) -> None:
        self.fed = fed
        self.ctx: ServerContext = fed.ctx
        self.cfg = self.ctx.cfg
        self.initial = initial
        self.run_dir = self.ctx.run_dir
        self.rd = RunDir(self.run_dir)
        self.state = PhaseState.load(self.rd.phases)
        for key, st in self.state.window.items():
            if key.startswith("class:"):
                self.ctx.window.classes[int(key[6:])] = st
            else:
                self.ctx.window.state[int(key)] = st

    # ------------------------------------------------------------------ helpers
    def _ckpt(self, key: str) -> Path:
        return self.rd.checkpoint(key)

    def _checkpoint(self, key: str, weights: Weights) -> None:
        save_weights(self._ckpt(key), weights)
        self._save_logs()
        self.state.mark(key)

    def _save_logs(self) -> None:
        self.ctx.rounds.save(self.rd.rounds)
        self.ctx.costs.save(self.rd.ledger)

    def _set_window(self, pid: int, action: str) -> None:
        getattr(self.ctx.window, action)(pid)
        self.state.window[str(pid)] = self.ctx.window.status(pid)
        self.state.save()

    @property
    def withdraw_round(self) -> int:
        r = self.cfg.withdraw.round
        return self.cfg.train.rounds if r == "end" else int(r)

    # ------------------------------------------------------------------ phases
    def run(self) -> dict[str, str]:
        """Run every phase not yet done; returns methods that failed (name -> reason)."""
        if not self.state.is_done(FL_FINISHED):
            self.warm_up()
        start = self.train_original()
        self.unlearn_all(start)
        self.retrain()
        if "rmia" in self.cfg.audit.attacks:
            self.references()
        if self.cfg.audit.wants_retrain_null():
            self.retrain_null()
        if self.cfg.audit.after_rounds:
            self.after_unlearning(self.cfg.audit.after_rounds)
        self._save_logs()
        self.state.mark(FL_FINISHED)  # the explicit "FL part finished" marker (fedunlearn.rundir.fl_finished)
        return dict(self.state.failed)

    def warm_up(self) -> None:
        """Start-up as ledger rows of its own (method ``startup``, charged to no method), each time the FL stage
        starts (a resume too): ``ray`` = Ray and the node mapping (measured by the transport), ``warmup`` = every
        reachable client loading its data and model once."""
        ctx = self.ctx
        if ctx.startup_s is not None:
            with ctx.track(STARTUP, "ray", label=STARTUP) as row:
                pass
            row.wall_s = ctx.startup_s
        reachable = [p for p in self.fed.pids if ctx.window.status(p) != "closed"]
        with ctx.track(STARTUP, WARMUP_STEP, label=STARTUP):
            self.fed.send(reachable, WARMUP_STEP, None)
        self._save_logs()

    def train_original(self) -> Weights:
        """FedAvg over all clients, recording history; returns the model at the withdrawal round."""
        cfg, ctx = self.cfg, self.ctx
        rw, total = self.withdraw_round, cfg.train.rounds
        key_w, key_o = f"original.r{rw}", "original"
        if not self.state.is_done(key_w):
            w = self._fedavg("original", "original", self.fed.pids, self.initial, rw, record_history=True)
            ctx.costs.rows[-1].server_storage_bytes = ctx.history.storage_bytes()
            self._checkpoint(key_w, w)
        w_r = load_weights(self._ckpt(key_w))
        if not self.state.is_done(key_o):
            w = w_r
            if total > rw:  # the counterfactual: training goes on with everyone
                w = self._fedavg("original", "original", self.fed.pids, w_r, total - rw, offset=rw)
            save_weights(self.rd.model(ORIGINAL), w)
            self._checkpoint(key_o, w)
        return w_r

    def unlearn_all(self, start: Weights) -> None:
        cfg = self.cfg
        methods = [m for m in cfg.unlearn.methods if m != ORACLE]
        # methods that need the forget data run first, while the window is open
        methods.sort(key=lambda m: not METHODS.get(m).needs_forget_data)
        chain = {m: start for m in methods}
        remaining = list(self.fed.pids)
        if cfg.withdraw.by_class:
            self._unlearn_classes(methods, chain)
        for i, u in enumerate(cfg.withdraw.clients):
            remaining = [p for p in remaining if p != u]
            if self.ctx.window.status(u) == "active":
                self._set_window(u, "open")
            for m in methods:
                if m in self.state.failed:
                    continue
                key = f"{m}.w{i}"
                if self.state.is_done(key):
                    chain[m] = load_weights(self._ckpt(key))
                    continue
                if not METHODS.get(m).needs_forget_data and self.ctx.window.status(u) == "open":
                    self._set_window(u, "close")
                chain[m] = self._run_method(m, chain[m], [u], remaining, i)
            if self.ctx.window.status(u) == "open":
                self._set_window(u, "close")
        rw, total = self.withdraw_round, cfg.train.rounds
        for m in methods:
            if m in self.state.failed or self.state.is_done(m):
                continue
            w = chain[m]
            if total > rw:  # withdrawal mid-training: the federation trains on without the withdrawn clients
                w = self._fedavg(m, f"{m}.continue", remaining, w, total - rw, offset=rw)
            save_weights(self.rd.model(m), w)
            self._checkpoint(m, w)

    def _unlearn_classes(self, methods: list[str], chain: dict[str, Weights]) -> None:
        """Class withdrawal: one window for the labels; every client stays, none reads them after it closes."""
        labels = sorted(self.cfg.withdraw.classes)
        window = self.ctx.window
        if not window.classes:
            window.open_classes(labels)
            self._save_class_window()
        for m in methods:
            if m in self.state.failed:
                continue
            key = f"{m}.w0"
            if self.state.is_done(key):
                chain[m] = load_weights(self._ckpt(key))
                continue
            if not METHODS.get(m).needs_forget_data and window.open_classes_now():
                window.close_classes(labels)
                self._save_class_window()
            chain[m] = self._run_method(m, chain[m], [], list(self.fed.pids), 0, labels)
        window.close_classes(labels)
        self._save_class_window()

    def _save_class_window(self) -> None:
        self.state.window.update({f"class:{c}": st for c, st in self.ctx.window.classes.items()})
        self.state.save()

    def _run_method(self, m: str, start: Weights, withdrawn: list[int], remaining: list[int], withdrawal: int,
                    forget_classes: list[int] | None = None) -> Weights:
        """Method ``m`` unlearns withdrawal number ``withdrawal`` (checkpoint ``<m>.w<i>``); with ``audit.during``
        every model it passes through is saved (``engine.during``)."""
        key = f"{m}.w{withdrawal}"
        method = build_method(m, self.cfg.unlearn.params(m))
        job = UnlearnJob(self.fed, m, start, self.initial, withdrawn, remaining, self.withdraw_round,
                         forget_classes or [])
        log.info("unlearning client(s) %s with %s", withdrawn, m)
        during = recording(self.ctx, self.rd, m, withdrawal, start) if self.cfg.audit.during else nullcontext()
        try:
            with during:
                w = method.unlearn(job)
        except Exception as err:  # noqa: BLE001 - one failed method must not lose the others
            log.error("method %s failed: %s", m, err)
            self.state.failed[m] = f"{type(err).__name__}: {err}"
            self.state.save()
            self._save_logs()
            return start
        self._checkpoint(key, w)
        return w

    def retrain(self) -> None:
        if self.state.is_done(ORACLE):
            return
        gone = set(self.cfg.withdraw.clients)
        remaining = [p for p in self.fed.pids if p not in gone]
        job = UnlearnJob(self.fed, ORACLE, self.initial, self.initial, sorted(gone), remaining, self.cfg.train.rounds,
                         list(self.cfg.withdraw.classes))
        w = build_method(ORACLE, self.cfg.unlearn.params(ORACLE)).unlearn(job)
        save_weights(self.rd.model(ORACLE), w)
        self._checkpoint(ORACLE, w)

    def references(self) -> None:
        """RMIA (A1) reference federations, shared by every model and client of the audit: FedAvg from w_0 with the
        original recipe (rounds, fraction, local epochs) on complementary halves of the remaining clients
        (``reference_halves``); saved as ``models/reference_{a,b}.pt`` (not audited) and the halves in
        ``references.json``. Ledger method "references"."""
        half_a, half_b = reference_halves(self.fed.pids, self.cfg.withdraw.clients, self.cfg.seed)
        atomic_write_json(self.rd.references, {
            "reference_a": half_a, "reference_b": half_b, "out_of_both": sorted(self.cfg.withdraw.clients),
            "note": "withdrawn clients are in neither half (their windows are closed): OUT for both references"})
        for name, pids in zip(REFERENCES, (half_a, half_b)):
            if self.state.is_done(name):
                continue
            w = self._fedavg("references", name, pids, self.initial, self.cfg.train.rounds, ledger_phase=name)
            save_weights(self.rd.model(name), w)
            self._checkpoint(name, w)

    def retrain_null(self) -> None:
        """The retrain oracle once more with other seeds (fresh initial weights, other client sampling and data
        order): ``models/retrain_null.pt`` (then ``retrain_null_2.pt``, ... for ``audit.null_seeds`` > 1), never
        audited as models; the audit compares them with retrain to measure how often two retrains already look
        "significantly different" (the false-alarm level) and how far apart they are (the equivalence margin)."""
        ds, _ = experiment_data(self.cfg)
        gone = set(self.cfg.withdraw.clients)
        remaining = [p for p in self.fed.pids if p not in gone]
        for i in range(1, self.cfg.audit.null_seeds + 1):
            name = RETRAIN_NULL if i == 1 else f"{RETRAIN_NULL}_{i}"
            if self.state.is_done(name):
                continue
            w0 = get_weights(build_model(self.cfg.model, ds.input_shape, ds.num_classes,
                                         seed=seed_for(self.cfg.seed, name)))
            job = UnlearnJob(self.fed, name, w0, w0, sorted(gone), remaining, self.cfg.train.rounds)
            w = build_method(ORACLE, self.cfg.unlearn.params(ORACLE)).unlearn(job)
            save_weights(self.rd.model(name), w)
            self._checkpoint(name, w)

    def after_unlearning(self, rounds: int) -> None:
        """What happens after unlearning: FedAvg goes on over the remaining clients for ``rounds`` rounds from every
        unlearned model and from retrain (the training recipe; phase ``after.<model>``, ledger method ``after``),
        each round's model saved as ``models/after/<model>/round_<r>.pt`` for the audit (``stages/after.py``)."""
        gone = set(self.cfg.withdraw.clients)
        remaining = [p for p in self.fed.pids if p not in gone]
        models = [m for m in self.cfg.unlearn.methods if m != ORACLE and self.rd.model(m).is_file()] + [ORACLE]
        for m in models:
            key = f"{AFTER}.{m}"
            if self.state.is_done(key):
                continue
            w = load_weights(self.rd.model(m))
            with self.ctx.listening(lambda _phase, r, w, m=m: save_weights(self.rd.model(after_model(m, r)), w)):
                w = self._fedavg(AFTER, key, remaining, w, rounds, ledger_phase=m)
            self._checkpoint(key, w)

    def _fedavg(self, method: str, phase: str, pids: list[int], w: Weights, rounds: int, *,
                record_history: bool = False, offset: int = 0, ledger_phase: str | None = None) -> Weights:
        """FedAvg rounds labelled ``phase`` (messages, data reads, rounds.csv); ledger row (method, ledger_phase),
        by default the label's last part, or "train" for an unqualified label."""
        row = ledger_phase or (phase.split(".")[-1] if "." in phase else "train")
        with self.ctx.track(method, row, label=phase):
            engine = FedAvgRounds(self.ctx, phase, pids, record_history=record_history, round_offset=offset)
            engine.total_rounds = rounds
            return self.fed.fedavg(engine, w, rounds)

