"""``pga`` — projected gradient ascent by the withdrawing client, then a few FedAvg rounds.

Paper: Anisa Halimi, Swanand Kadhe, Ambrish Rawat, Nathalie Baracaldo, "Federated Unlearning: How to Efficiently
Erase a Client in FL?", 2022, arXiv 2207.05521 (ICML 2022 workshop on updatable ML).

Federated split (methods.md):
- server: reference model w_ref = (K·w_T − w_u)/(K − 1), the mean of the other clients' last local models, where
  w_u is u's last local model (the server has it from the last round u took part in; ``UpdateHistory``) and K the
  number of clients aggregated in the last training round (read from the rounds log, else the sampler's size);
  radius δ = (1/3) · mean L2 distance from w_ref to 10 random initialisations of the model;
- u, inside its withdrawal window (``pga_ascent``): gradient ascent on its cross-entropy over D_u from w_ref, each
  step projected back onto the L2 ball of radius δ around w_ref, gradients clipped; up to ``epochs`` epochs,
  stopping as soon as its accuracy on D_u falls below ``early_stop_acc``;
- remaining clients: ``post_rounds`` FedAvg rounds from the result (default 10% of R, at least 1).

Our choices, where the paper leaves them open or we depart:
- the w_ref formula assumes an unweighted mean over K clients that include u in the last round; with unequal client
  sizes (FedAvg weights by examples) or when u sat out the last round it is the paper's approximation, and we log it;
  for a later withdrawal in a sequence, the previous unlearned model stands in for w_T;
- SGD with lr 0.01, gradient-norm clip 5, accuracy on D_u checked after every step (``check_every``);
- distances and the projection use every float parameter (BatchNorm running statistics excluded), as one vector;
- several clients withdrawing at once: w_ref removes all of them; they ascend one after another in the same ball.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedunlearn.client import ClientRuntime, StepOutput
from fedunlearn.errors import FedUnlearnError, PhaseFailed
from fedunlearn.methods.base import MethodParams, UnlearnJob, UnlearningMethod, default_rounds
from fedunlearn.models import Weights, build_model, get_weights, is_float_param
from fedunlearn.rounds import sample_clients
from fedunlearn.training import batches, evaluate, seed_for

log = logging.getLogger(__name__)
STEP = "pga_ascent"


class PGAParams(MethodParams):
    epochs: int = Field(5, ge=1, description="maximum epochs of gradient ascent on D_u")
    early_stop_acc: float = Field(0.1, ge=0, le=1, description="stop when u's accuracy on D_u drops below this")
    lr: float = Field(0.01, gt=0, description="SGD learning rate of the ascent (our choice)")
    clip_norm: float = Field(5.0, gt=0, description="gradient-norm clip (our choice)")
    radius_share: float = Field(1 / 3, gt=0, description="δ = radius_share × mean distance to random inits")
    random_inits: int = Field(10, ge=1, description="random initialisations averaged for δ")
    batch_size: int = Field(0, ge=0, description="ascent batch size; 0 = train.batch_size")
    check_every: int = Field(1, ge=1, description="steps between accuracy checks on D_u (our choice)")
    post_rounds: int = Field(0, ge=0, description="FedAvg rounds after the ascent; 0 = 10% of R (at least 1)")


# ----------------------------------------------------------------------------------------- pure server maths


def _float_keys(weights: Weights) -> list[str]:
    return [k for k, v in weights.items() if is_float_param(k, np.asarray(v))]


def distance(a: Weights, b: Weights) -> float:
    """L2 distance between two models over their float parameters, as one vector."""
    return float(np.sqrt(sum(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)
                             for k in _float_keys(a))))


def reference_model(global_weights: Weights, withdrawn_locals: list[Weights], k: int) -> Weights:
    """w_ref = (K·w_T − Σ_u w_u)/(K − |U|): the mean of the other clients' models when w_T is the mean of all K."""
    m = len(withdrawn_locals)
    if k - m < 1:
        raise FedUnlearnError(f"pga: {k} client(s) in the last round, cannot remove {m}")
    out = Weights()
    for key, w in global_weights.items():
        if not is_float_param(key, np.asarray(w)):
            out[key] = np.array(w, copy=True)
            continue
        acc = k * np.asarray(w, np.float64) - sum(np.asarray(u[key], np.float64) for u in withdrawn_locals)
        out[key] = (acc / (k - m)).astype(w.dtype)
    return out


def project_to_ball(weights: Weights, center: Weights, radius: float) -> Weights:
    """Euclidean projection of ``weights`` onto the L2 ball of ``radius`` around ``center`` (float parameters)."""
    d = distance(weights, center)
    if d <= radius:
        return Weights((k, np.array(v, copy=True)) for k, v in weights.items())
    scale = radius / d
    out = Weights()
    for key, w in weights.items():
        if key in center and is_float_param(key, np.asarray(w)):
            c = np.asarray(center[key], np.float64)
            out[key] = (c + (np.asarray(w, np.float64) - c) * scale).astype(w.dtype)
        else:
            out[key] = np.array(w, copy=True)
    return out


def ball_radius(reference: Weights, inits: list[Weights], share: float) -> float:
    """δ = share · mean distance from w_ref to random initialisations (the paper's share: 1/3)."""
    return share * float(np.mean([distance(reference, w0) for w0 in inits]))


# ----------------------------------------------------------------------------------------- client step


@torch.no_grad()
def _project_params(params: list[nn.Parameter], center: list[torch.Tensor], radius: float) -> float:
    """In-place projection of the model's parameters onto the ball; returns the distance before projecting."""
    d = float(torch.sqrt(sum(((p - c).double() ** 2).sum() for p, c in zip(params, center))))
    if d > radius:
        scale = radius / d
        for p, c in zip(params, center):
            p.copy_(c + (p - c) * scale)
    return d


def ascent_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u's half: projected gradient ascent on CE over D_u from the sent w_ref, early-stopped on D_u accuracy."""
    if weights is None:
        raise ValueError(f"{STEP}: needs the reference model")
    radius = rt.setting("radius", 0.0)
    if radius <= 0:
        raise ValueError(f"{STEP}: needs a positive 'radius' (got {radius})")
    epochs = rt.setting("epochs", 5)
    threshold = rt.setting("early_stop_acc", 0.1)
    clip = rt.setting("clip_norm", 5.0)
    check_every = rt.setting("check_every", 1)
    batch_size = rt.setting("batch_size", rt.cfg.train.batch_size)
    x, y = rt.read("member")
    model = rt.model(weights)
    params = [p for p in model.parameters() if p.requires_grad]
    center = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=rt.setting("lr", 0.01))
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(rt.seed(STEP))
    acc = evaluate(model, x, y, rt.device)[1]
    start_acc, steps, samples, stopped = acc, 0, 0, acc < threshold
    for _ in range(epochs):
        if stopped:
            break
        for idx in batches(len(xt), batch_size, gen):
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = -nn.functional.cross_entropy(model(xt[idx].to(rt.device)), yt[idx].to(rt.device))
            loss.backward()
            nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            _project_params(params, center, radius)
            steps += 1
            samples += len(idx)
            if steps % check_every == 0:
                acc = evaluate(model, x, y, rt.device)[1]
                if acc < threshold:
                    stopped = True
                    break
    acc = evaluate(model, x, y, rt.device)[1]
    moved = float(torch.sqrt(sum(((p.detach() - c).double() ** 2).sum() for p, c in zip(params, center))))
    log.info("pga: client %d ascended %d steps, accuracy on D_u %.3f -> %.3f, distance %.4g of radius %.4g",
             rt.pid, steps, start_acc, acc, moved, radius)
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(samples),
                                           "accuracy": acc, "start_accuracy": start_acc, "steps": float(steps),
                                           "distance": moved, "early_stopped": float(stopped)})


# ----------------------------------------------------------------------------------------- method


class PGA(UnlearningMethod):
    name = "pga"
    paper = ("Halimi, Kadhe, Rawat, Baracaldo, 'Federated Unlearning: How to Efficiently Erase a Client in FL?', "
             "2022, arXiv 2207.05521")
    summary = "u runs projected gradient ascent from the others' mean model; then FedAvg over the remaining clients"
    granularity = ("client",)
    where = {"server": "reference model (K·w_T − w_u)/(K−1) and ball radius δ from random inits",
             "withdrawing": "projected gradient ascent on D_u, early-stopped on accuracy",
             "remaining": "post_rounds FedAvg rounds from the ascended model"}
    needs_forget_data = True
    Params = PGAParams
    client_steps = {STEP: ascent_step}

    def unlearn(self, job: UnlearnJob) -> Weights:
        p: PGAParams = self.params  # type: ignore[assignment]
        with job.server("reference"):
            w_ref, radius = self._reference(job, p)
        w = w_ref
        config = {"radius": radius, "epochs": p.epochs, "early_stop_acc": p.early_stop_acc, "lr": p.lr,
                  "clip_norm": p.clip_norm, "check_every": p.check_every,
                  "batch_size": p.batch_size or job.cfg.train.batch_size}
        for u in job.withdrawn:
            reply = job.send([u], STEP, w, "ascent", config)[0]
            if not reply.ok or reply.weights is None:
                raise PhaseFailed(f"pga: the ascent on client {u} failed: {reply.error}")
            w = reply.weights
        rounds = p.post_rounds or default_rounds(0.1, job.rounds_trained)
        return job.fedavg(w, rounds, "post")

    def _reference(self, job: UnlearnJob, p: PGAParams) -> tuple[Weights, float]:
        """Server half: w_ref from w_T and u's last local model; δ from random initialisations."""
        from fedunlearn.client import experiment_data

        hist = job.fed.ctx.history
        locals_u = []
        for u in job.withdrawn:
            last = hist.load_last_local(u)
            if last is None:
                raise FedUnlearnError(f"pga: the server holds no last local model of client {u}; the original "
                                      "training must record it (history.keep_last_local)")
            w_u, r_u = last
            if r_u != job.rounds_trained:
                log.warning("pga: client %d last took part in round %d, not the last round %d; w_ref is approximate",
                            u, r_u, job.rounds_trained)
            locals_u.append(w_u)
        k = self._last_round_clients(job)
        w_ref = reference_model(job.start, locals_u, k)
        ds = experiment_data(job.cfg)[0]  # shapes only: no client records are read on the server
        inits = [get_weights(build_model(job.cfg.model, ds.input_shape, ds.num_classes,
                                         seed=seed_for(job.cfg.seed, "pga", "init", i)))
                 for i in range(p.random_inits)]
        radius = ball_radius(w_ref, inits, p.radius_share)
        log.info("pga: K=%d, ‖w_T − w_ref‖=%.4g, δ=%.4g", k, distance(job.start, w_ref), radius)
        return w_ref, radius

    @staticmethod
    def _last_round_clients(job: UnlearnJob) -> int:
        """K: clients aggregated in the last training round (rounds log), else the seeded sampler's size."""
        r = job.rounds_trained
        rows = [row for row in job.fed.ctx.rounds.rows
                if row.get("phase") == "original" and str(row.get("round")) == str(r) and str(row.get("clients"))]
        if rows:
            return int(rows[-1]["clients"])
        cfg = job.cfg
        return len(sample_clients(job.fed.pids, cfg.train.fraction, seed_for(cfg.seed, "original", r)))
