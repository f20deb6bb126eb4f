"""FedAvg rounds as plain hooks (configure / aggregate), shared by the Flower strategy and the in-process loop.

The Flower strategy ``strategies.withdrawal_fedavg.WithdrawalFedAvg`` calls these hooks from its
``configure_train`` / ``aggregate_train``; keeping the maths here lets unit tests run it without Ray. Also the
seeded client sampler, the weighted average and the one failure rule of every aggregated round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from fedunlearn.errors import PhaseFailed
from fedunlearn.fl.protocol import ClientReply, Records, Scalar
from fedunlearn.fl.session import ServerContext
from fedunlearn.models import Weights
from fedunlearn.training import seed_for

log = logging.getLogger(__name__)


def sample_clients(eligible: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Seeded sample of ``max(1, round(fraction * n))`` clients, sorted; Flower's sampler uses unseeded ``random``."""
    eligible = sorted(eligible)
    k = max(1, min(len(eligible), int(math.floor(fraction * len(eligible) + 0.5))))
    if k == len(eligible):
        return list(eligible)
    rng = np.random.default_rng(seed)
    return sorted(int(x) for x in rng.choice(eligible, size=k, replace=False))


def weighted_average(items: Sequence[tuple[Weights, float]]) -> Weights:
    """Weighted mean of state dicts in float64, cast back to each entry's dtype (integer buffers rounded)."""
    total = float(sum(w for _, w in items))
    if total <= 0:
        raise ValueError("weighted_average: weights sum to zero")
    out = Weights()
    first = items[0][0]
    for key, ref in first.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for weights, wt in items:
            acc += np.asarray(weights[key], dtype=np.float64) * (wt / total)
        out[key] = np.rint(acc).astype(ref.dtype) if ref.dtype.kind in "iub" else acc.astype(ref.dtype)
    return out


def subtract(a: Weights, b: Weights, dtype: type = np.float64) -> Weights:
    """a − b per entry (computed in float64, returned as ``dtype``)."""
    return Weights((k, (np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).astype(dtype)) for k in a)


def check_failure_share(phase: str, rnd: int, succeeded: int, expected: int, share: float,
                        failed: Sequence[ClientReply] = ()) -> None:
    """The one failure rule of every aggregated round: it fails when no client succeeded, or when more than
    ``share`` (``train.max_failure_share``) of the ``expected`` clients did not (no answer counts as a failure)."""
    missing = expected - succeeded
    if succeeded == 0 or missing / max(expected, 1) > share:
        by_reason: dict[str, list[int]] = {}
        for x in failed:
            by_reason.setdefault(str(x.error), []).append(x.pid)
        detail = "; ".join(f"client{'s' if len(p) > 1 else ''} {', '.join(map(str, p))}: {why}"
                           for why, p in list(by_reason.items())[:3])
        raise PhaseFailed(f"{phase} round {rnd}: {missing}/{expected} clients failed (allowed share {share})"
                          + (f": {detail}" if detail else ""))


class FedAvgRounds:
    """One FedAvg phase: which clients train each round, how replies are averaged, what is recorded.

    Parameters
    ----------
    ctx: the experiment's server context (ledgers, window, logs).
    phase: phase name, also the seed label of the per-round client sample (so retrain reuses the recipe, not the draw).
    eligible: partition ids that may be sampled; withdrawn clients whose window closed are refused.
    step: the client step to run ("train" = local SGD on members; methods add their own).
    step_config: this phase's own values sent with every message (e.g. a recipe override of ``local_epochs``).
    step_records: named weight sets sent beside the model with every message.
    fraction: share of eligible clients per round (default: the experiment's ``train.fraction``).
    record_history: store global models and per-client updates every ``history.interval`` rounds (FedEraser).
    round_offset: number of rounds already done in this phase (resume and mid-training withdrawal).
    """

    def __init__(self, ctx: ServerContext, phase: str, eligible: Sequence[int], *, step: str = "train",
                 step_config: dict[str, Scalar] | None = None, step_records: Records | None = None,
                 fraction: float | None = None, record_history: bool = False, round_offset: int = 0) -> None:
        self.ctx = ctx
        self.phase = phase
        self.eligible = sorted(eligible)
        ctx.window.check(self.eligible, step)
        self.step = step
        self.step_config = dict(step_config or {})
        self.step_records = dict(step_records or {})
        self.fraction = ctx.cfg.train.fraction if fraction is None else fraction
        self.record_history = record_history
        self.round_offset = round_offset
        self.total_rounds = 0  # set by the caller: rounds this engine runs (progress: round_offset + total_rounds)
        self.last_sampled: list[int] = []

    def configure(self, rnd: int) -> tuple[list[int], dict[str, Scalar]]:
        """Clients of round ``rnd`` (1-based within this phase) and the config each message carries."""
        r = rnd + self.round_offset
        pids = sample_clients(self.eligible, self.fraction, seed_for(self.ctx.cfg.seed, self.phase, r))
        self.ctx.window.check(pids, self.step)
        self.last_sampled = pids
        cfg = self.ctx.message_config(self.step, {"round": r, **self.step_config})
        return pids, cfg

    def aggregate(self, rnd: int, sent: Weights, replies: Sequence[ClientReply]) -> Weights:
        """Average the successful replies (weighted by examples); fail the phase past the allowed failure share."""
        r = rnd + self.round_offset
        replies = sorted(replies, key=lambda x: x.pid)
        self.ctx.ingest(replies, sent, len(self.last_sampled) or len(replies), self.step_records)
        ok = [x for x in replies if x.ok and x.weights is not None]
        failed = [x for x in replies if not x.ok]
        n = max(len(self.last_sampled), len(replies))
        missing = n - len(ok)
        check_failure_share(self.phase, r, len(ok), n, self.ctx.cfg.train.max_failure_share, failed)
        for x in failed:  # tolerated failures (a failed round says it all in one line)
            log.warning("%s round %d: client %d failed: %s", self.phase, r, x.pid, x.error)
        new = weighted_average([(x.weights, max(x.num_examples, 1)) for x in ok])  # type: ignore[misc]
        self._record(r, sent, ok)
        self.ctx.costs.note(rounds=1)
        self.ctx.log_round(self.phase, r, new, ok, missing, total=self.round_offset + self.total_rounds)
        return new

    def _record(self, r: int, sent: Weights, ok: Sequence[ClientReply]) -> None:
        if not self.record_history:
            return
        hist = self.ctx.history
        if hist.wants(r):
            hist.save_global(r, sent)
            for x in ok:
                hist.save_update(r, x.pid, subtract(x.weights, sent, np.float32), x.num_examples)  # type: ignore[arg-type]
        for x in ok:
            if hist.wants_last_local(x.pid):
                hist.save_last_local(x.pid, r, x.weights)  # type: ignore[arg-type]
