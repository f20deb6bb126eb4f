"""Helpers for methods that drive their rounds by hand (``lightweight``, ``mia_loss``, ``forsaken``).

``FedAvgRounds`` sends one step name to a sample of one eligible list. These methods need more: a round in which
the withdrawing client u runs its own step while the remaining clients run another and the server averages all
replies (a *mixed* round), a query to u between rounds (does its data still leak?), or a query to the remaining
clients (their loss under an edited model). ``MethodRounds`` does that with the same accounting as ``UnlearnJob``
(one cost-ledger row per phase, data reads tagged with the phase, rounds.csv rows for aggregated rounds).

The client half: ``leakage_metrics`` (the A0 statistic a withdrawing client reports about itself: AUC of its
members' logit-scaled confidence phi against its validation part, and the null band of docs/leakage.md), a
differentiable ``phi``, two client steps these methods share (``self_leakage_step``: u's A0 check;
``member_loss_step``: a remaining client's member CE under a model). Extra tensors (a generator, an attack model)
travel as named weight sets beside the model (``records``), never as loose keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedunlearn.audit.metrics import auc, null_band
from fedunlearn.audit.signals import phi_from_logits
from fedunlearn.errors import PhaseFailed
from fedunlearn.fl.fedavg import FedAvgRounds, check_failure_share, sample_clients, weighted_average
from fedunlearn.fl.protocol import ClientReply, Records, Scalar, StepOutput
from fedunlearn.ledgers.costs import Cost
from fedunlearn.models import Weights
from fedunlearn.training import evaluate, logits, seed_for

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime
    from fedunlearn.methods.base import UnlearnJob

log = logging.getLogger(__name__)


class MethodRounds:
    """Sends a method's steps round by round and averages mixed replies, with ``UnlearnJob``'s accounting.

    Every call names a phase (``job.phase(name)`` tags the messages and the data reads); each phase keeps one
    cost-ledger row for the whole ``unlearn`` call, reopened when the method alternates between phases (e.g. a
    training round, then a verification query, then the next round).

    Parameters
    ----------
    job: the withdrawal being unlearned.
    """

    def __init__(self, job: UnlearnJob) -> None:
        self.job = job
        self.ctx = job.fed.ctx
        self._rows: dict[str, Cost] = {}
        self._open = False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Track work under phase ``name`` (``UnlearnJob.track``, reopening this call's row); not re-entrant."""
        with self.job.track(name, resume=self._rows.get(name)) as row:
            self._rows[name] = row
            yield

    def note(self, name: str, **amounts: int) -> None:
        """Add amounts (e.g. ``rounds=1``) to phase ``name``'s cost row."""
        with self.phase(name):
            self.ctx.costs.note(**amounts)

    def sample(self, name: str, pids: Sequence[int], rnd: int) -> list[int]:
        """The seeded share ``train.fraction`` of ``pids`` for round ``rnd`` of phase ``name`` (as FedAvgRounds)."""
        return sample_clients(pids, self.ctx.cfg.train.fraction, seed_for(self.ctx.cfg.seed, self.job.phase(name), rnd))

    def send(self, name: str, pids: Sequence[int], step: str, weights: Weights | None,
             config: dict[str, Scalar] | None = None, *, rnd: int = 0, rounds: int = 0, required: bool = False,
             records: Records | None = None) -> list[ClientReply]:
        """Run ``step`` on ``pids`` (message config gets ``round = rnd``, named weight sets ``records``);
        ``required``: any failure fails the phase."""
        if not pids:
            return []
        with self.phase(name):
            self.ctx.costs.note(rounds=rounds)
            replies = self.job.fed.send(pids, step, weights, {"round": rnd, **(config or {})}, records)
        failed = [r for r in replies if not r.ok]
        for r in failed:
            log.warning("%s round %d: client %d failed %s: %s", self.job.phase(name), rnd, r.pid, step, r.error)
        if required and failed:
            raise PhaseFailed(f"{self.job.phase(name)} round {rnd}: step {step} failed on client(s) "
                              + "; ".join(f"{r.pid}: {r.error}" for r in failed))
        return replies

    def fedavg_round(self, name: str, weights: Weights, rnd: int, *, total: int = 0,
                     pids: Sequence[int] | None = None, step: str = "train",
                     config: dict[str, Scalar] | None = None) -> Weights:
        """Round ``rnd`` (1-based) of a plain FedAvg phase: the same draw, seeds and records as round ``rnd`` of
        ``job.fedavg(..., rounds=total, name=name)``, so a phase run round by round equals one run at once."""
        with self.phase(name):
            engine = FedAvgRounds(self.ctx, self.ctx.phase, self.job.remaining if pids is None else pids, step=step,
                                  step_config=config, round_offset=rnd - 1)
            engine.total_rounds = max(total, rnd) - engine.round_offset  # rounds left, as Phases and job.fedavg
            return self.job.fed.fedavg(engine, weights, 1)

    def average(self, name: str, rnd: int, replies: Sequence[ClientReply], expected: int) -> Weights:
        """FedAvg of a mixed round's replies (weighted by ``num-examples``); counts one round, logs rounds.csv.

        Fails the phase when more than ``train.max_failure_share`` of the ``expected`` clients did not answer.
        """
        ok = sorted((r for r in replies if r.ok and r.weights is not None), key=lambda r: r.pid)
        missing = expected - len(ok)
        check_failure_share(self.job.phase(name), rnd, len(ok), expected, self.ctx.cfg.train.max_failure_share,
                            [r for r in replies if not r.ok])
        with self.phase(name):
            new = weighted_average([(r.weights, max(r.num_examples, 1)) for r in ok])  # type: ignore[misc]
            self.ctx.costs.note(rounds=1)
            self.ctx.log_round(self.ctx.phase, rnd, new, ok, missing)
        return new


def weighted_mean(replies: Sequence[ClientReply], key: str) -> float:
    """Mean of metric ``key`` over the successful replies, weighted by ``num-examples`` (NaN if none)."""
    ok = [r for r in replies if r.ok and key in r.metrics]
    n = sum(max(r.num_examples, 1) for r in ok)
    return float(sum(r.metrics[key] * max(r.num_examples, 1) for r in ok) / n) if ok else float("nan")


# --------------------------------------------------------------------------------------------- client side


def phi(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable logit-scaled confidence z_y − logsumexp_{j≠y} z_j (audit.signals.phi_from_logits in torch)."""
    z_true = z.gather(1, y[:, None]).squeeze(1)
    others = z.masked_fill(nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf"))
    return z_true - torch.logsumexp(others, dim=1)


def leakage_metrics(phi_member: np.ndarray, phi_holdout: np.ndarray) -> dict[str, float]:
    """The A0 statistic of one client: AUC of its members' phi against its held-out records, and its null band.

    ``gone`` = 1 when the AUC is at or below the band's upper edge: the members no longer look more like members
    than the held-out records do (below the band counts too: more training cannot add the contribution back; the
    audit reports that case as over-unlearning).
    """
    lo, hi = null_band(len(phi_member), len(phi_holdout))
    value = auc(phi_member, phi_holdout)
    return {"auc": value, "band_lo": lo, "band_hi": hi, "gone": float(value <= hi),
            "phi_member": float(np.mean(phi_member)), "phi_holdout": float(np.mean(phi_holdout))}


def model_phi(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> np.ndarray:
    """phi of each record under ``model`` (eval mode, float64)."""
    return phi_from_logits(logits(model, x, device), y)


def self_leakage_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u's stop check (lightweight's ``verify``, ReMI's stop rule): the A0 statistic of its members against its
    validation part under the sent model; only scalars leave u."""
    xm, ym = rt.read("member")
    xh, yh = rt.read("validation")
    model = rt.model(weights)
    metrics = leakage_metrics(model_phi(model, xm, ym, rt.device), model_phi(model, xh, yh, rt.device))
    return StepOutput(None, {**metrics, "num-examples": float(len(xm)), "samples": float(len(xm) + len(xh))})


def member_loss_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """A remaining client's query: the mean CE of its members under the sent model (eval mode, no training)."""
    x, y = rt.read("member")
    loss, acc = evaluate(rt.model(weights), x, y, rt.device)
    return StepOutput(None, {"loss": loss, "accuracy": acc, "num-examples": float(len(x)),
                             "samples": float(len(x))})
