"""``federaser`` — replay the stored training history without the withdrawn client, calibrating each update.

Paper: Gaoyang Liu, Xiaoqiang Ma, Yang Yang, Chen Wang, Jiangchuan Liu, "FedEraser: Enabling Efficient Client-Level
Data Removal from Federated Learning Models", IEEE/ACM IWQoS 2021 (DOI 10.1109/IWQOS52092.2021.9521274; the paper
has no arXiv version).

Federated split (docs/methods.md):
- during the original training the server stores, every Δt rounds (``interval``, default 2), the global model and
  every participating client's update U_k(t) = local − global (``fedunlearn.fl.history``, on disk);
- server: start from the stored global model of the first stored round t_1;
- remaining clients (``federaser_calibrate``): for each stored round t_j, those remaining clients that have a stored
  update at t_j train from the current unlearned model for E_cal local epochs, giving new updates U_k;
- server: calibrates each, Ũ_k = ‖U_k(t_j)‖ · U_k / ‖U_k‖ (stored magnitude, new direction), and moves the model by
  the sample-weighted mean of the calibrated updates; then on to t_{j+1}.
The withdrawn client is never addressed and none of its data is read; its stored updates are simply not used.

Our choices, where the paper leaves them open or we depart:
- norms are taken per layer (per float parameter tensor), as the paper's calibration is written per layer;
  BatchNorm running statistics and counters are not calibrated: the new update is used as it is;
- E_cal = max(1, round-half-up(E · ``calibration_ratio``)); with E = 1 calibration runs one full epoch, so the
  expected ≈ 4× speed-up (Δt = 2, half the epochs) becomes ≈ 2×;
- aggregation weights are the calibrating clients' example counts (FedAvg's weights);
- the ledger's ``server_storage_bytes`` is the whole on-disk history (``UpdateHistory.storage_bytes``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from fedunlearn.errors import FedUnlearnError
from fedunlearn.fl.fedavg import check_failure_share, subtract, weighted_average
from fedunlearn.fl.protocol import ClientReply, StepOutput
from fedunlearn.fl.recipe import local_sgd
from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob
from fedunlearn.models import Weights, is_float_param

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime

log = logging.getLogger(__name__)
STEP = "federaser_calibrate"


class FedEraserParams(MethodParams):
    interval: int = Field(2, ge=1, description="Δt: rounds between stored updates during the original training")
    calibration_ratio: float = Field(0.5, gt=0, le=1, description="calibration epochs as a share of local_epochs")


def calibration_epochs(local_epochs: int, ratio: float) -> int:
    """E_cal = max(1, round-half-up(E · ratio)) (our rounding; Python's ``round`` would give 0 for 0.5)."""
    return max(1, int(math.floor(local_epochs * ratio + 0.5)))


def calibrate(old_update: Weights, new_update: Weights) -> Weights:
    """FedEraser's calibration, per layer: Ũ = ‖old‖ · new / ‖new‖ (float64).

    The stored update says how far the client moved the model at that round; the new update, trained from the
    unlearned model, says in which direction. Non-trainable entries (BatchNorm statistics) keep the new update.
    """
    out = Weights()
    for key, new in new_update.items():
        new64 = np.asarray(new, dtype=np.float64)
        if not is_float_param(key, np.asarray(new)):
            out[key] = new64
            continue
        new_norm = float(np.linalg.norm(new64))
        old_norm = float(np.linalg.norm(np.asarray(old_update[key], dtype=np.float64)))
        out[key] = new64 * (old_norm / new_norm) if new_norm > 0 else np.zeros_like(new64)
    return out


def apply_update(weights: Weights, update: Weights) -> Weights:
    """weights + update, cast back to each entry's dtype (integer buffers rounded)."""
    out = Weights()
    for key, w in weights.items():
        v = np.asarray(w, dtype=np.float64) + np.asarray(update[key], dtype=np.float64)
        out[key] = np.rint(v).astype(w.dtype) if w.dtype.kind in "iub" else v.astype(w.dtype)
    return out


def calibrate_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Calibration training: the usual local SGD recipe for ``local_epochs`` (= E_cal) epochs from the sent model."""
    if weights is None:
        raise ValueError(f"{STEP}: needs the current unlearned model")
    return local_sgd(rt, weights, seed_label=STEP)


class FedEraser(UnlearningMethod):
    name = "federaser"
    paper = ("Liu, Ma, Yang, Wang, Liu, 'FedEraser: Enabling Efficient Client-Level Data Removal from Federated "
             "Learning Models', IWQoS 2021")
    summary = "replay stored rounds without u: remaining clients calibrate, server rescales to stored update norms"
    granularity = ("client",)
    where = {"server": "stores updates every Δt rounds; calibrates (old norm, new direction) and aggregates",
             "remaining": "calibration training for E·ratio epochs at each stored round"}
    needs_history = True
    Params = FedEraserParams
    client_steps = {STEP: calibrate_step}

    def run(self, job: UnlearnJob) -> Weights:
        p: FedEraserParams = self.params  # type: ignore[assignment]
        ctx = job.fed.ctx
        hist = ctx.history
        stored = [t for t in hist.rounds() if t <= job.rounds_trained]
        if not stored:
            raise FedUnlearnError("federaser: no stored update history; the original training must record it "
                                  "(list 'federaser' in unlearn.methods before training)")
        if hist.interval != p.interval:
            log.warning("federaser: history stored every %d rounds, configured interval is %d; using the history",
                        hist.interval, p.interval)
        epochs = calibration_epochs(job.cfg.train.local_epochs, p.calibration_ratio)
        remaining = set(job.remaining)
        with job.track("calibrate"):
            ctx.costs.note(server_storage_bytes=hist.storage_bytes())
            w = hist.load_global(stored[0])
            for i, t in enumerate(stored, 1):
                pids = [k for k in hist.clients_at(t) if k in remaining]
                if not pids:
                    log.info("federaser: no remaining client stored at round %d; skipped", t)
                    continue
                replies = job.fed.send(pids, STEP, w, {"local_epochs": epochs, "round": t})
                ctx.costs.note(rounds=1)
                w = self._calibrated_round(job, t, w, replies, (i, len(stored)))
            return w

    @staticmethod
    def _calibrated_round(job: UnlearnJob, t: int, w: Weights, replies: list[ClientReply],
                          of: tuple[int, int]) -> Weights:
        """Server half of one stored round (the ``of[0]``-th of ``of[1]``): calibrate each new update against the
        stored one, aggregate, apply."""
        ctx = job.fed.ctx
        ok = [r for r in replies if r.ok and r.weights is not None]
        failed = [r for r in replies if not r.ok]
        check_failure_share(ctx.phase, t, len(ok), len(replies), job.cfg.train.max_failure_share, failed)
        items = []
        for r in ok:
            old, _ = ctx.history.load_update(t, r.pid)
            new = subtract(r.weights, w)  # type: ignore[arg-type]
            items.append((calibrate(old, new), float(max(r.num_examples, 1))))
        w = apply_update(w, weighted_average(items))
        ctx.log_round(ctx.phase, t, w, ok, len(failed), total=of[1], step=of[0])  # progress: stored round i of n
        return w
