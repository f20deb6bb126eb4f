"""``mia_loss`` — ReMI: the task loss plus a membership-leakage term and a KL term, split across the federation.

Paper: Nexhi Sula, Abhinav Kumar, Jie Hou, Han Wang, Reza Tourani, "Silver Linings in the Shadows: Harnessing
Membership Inference for Machine Unlearning", arXiv 2407.00866, 2024. One loss adds a membership-leakage term and a
KL term (which pulls the forgotten data's outputs toward those of unseen data) to the task loss; any privacy-leakage
estimate can stand in for the attack. No public code: the values below are ours (methods.md).

Objective: L(theta) = CE(theta; D_r) + lambda_1 * Leak(theta; D_u) + lambda_2 * KL(pbar(D_u) || pbar(H_u)),
pbar = mean softmax output over a batch, H_u = u's held-out records.

Federated split (each term runs where its data lives):
- ``fit`` (one query round, u, window open): under w_T u computes the logit-scaled confidence phi of its members and
  held-out records and fits N(mu_in, sd_in^2), N(mu_out, sd_out^2); the four scalars go back to the server, which
  sends them with every later step (fitted once, so the leak term keeps one target). With ``leak = "attack"`` u also
  trains a small attack MLP (sorted softmax vector -> member logit, balanced BCE, Adam, full batch) on D_u vs H_u;
  its weights ride back and forth with the model under the key prefix ``__attack__.``, kept fixed.
- ``unlearn`` rounds (mixed FedAvg rounds from the same global model): u runs ``mia_loss_forget`` = Adam (lr 1e-3)
  on lambda_1 * Leak + lambda_2 * KL over minibatches of D_u, each paired with an equally large random batch of
  H_u; the sampled remaining clients run ``mia_loss_ce`` = Adam (lr 1e-3, our choice: the same optimizer as u's
  term, the paper optimises one loss with one optimizer) on CE; the server averages all updates weighted by
  examples (FedAvg of sum_k n_k L_k). Adam's moments restart with every message (clients keep no state).
- Early stop: u's step first reports the A0 AUC of its members vs held-out under the incoming global model; if it
  is at or below the null band's upper edge (leakage.md) the server stops before the remaining clients train (u
  skips its update too). The server asks u first and the remaining clients second, so a stop wastes no compute;
  the two sends count as one round.
- ``repair``: ``repair_rounds`` of plain FedAvg (training recipe) over the remaining clients, without u.

Leak terms (both differentiable in theta):
- ``gaussian``: Leak = mean over D_u of softplus(LLR(phi)), LLR = log N(phi; mu_in, sd_in) - log N(phi; mu_out,
  sd_out). Departure (ours): methods.md says the mean LLR; with unequal variances the LLR is a quadratic that is
  unbounded below, so minimising it pushes phi to +-infinity (over-unlearning, the "Streisand" signal).
  softplus(LLR) = -log P(out | phi) for the Bayes attacker with equal priors: about the LLR where a record looks
  like a member, flat near 0 once it looks like a non-member.
- ``attack``: Leak = mean attack-MLP member probability over D_u.
KL: the held-out side is the target and is not differentiated (ours: forget outputs move toward unseen-data outputs,
not the reverse).

Outside the window u cannot take part: the method logs it and runs only the remaining clients' CE rounds and repair.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedunlearn.audit.metrics import auc
from fedunlearn.client import ClientRuntime, StepOutput
from fedunlearn.methods.base import MethodParams, UnlearnJob, UnlearningMethod
from fedunlearn.methods.mixed_round import (MethodRounds, leakage_metrics, model_phi, phi, split_extras,
                                            with_extras)
from fedunlearn.models import Weights, get_weights
from fedunlearn.training import batches, logits, train_epochs

log = logging.getLogger(__name__)
ATTACK = "__attack__."
SD_FLOOR = 1e-3  # keeps the Gaussian fit finite when a client's phi values coincide


class MiaLossParams(MethodParams):
    leak: Literal["gaussian", "attack"] = Field("gaussian", description="leakage estimate: Gaussian fit of phi "
                                                "(softplus of the log-likelihood ratio: our choice) or a fixed "
                                                "attack MLP")
    lambda_leak: float = Field(1.0, ge=0, description="lambda_1, weight of the leakage term")
    lambda_kl: float = Field(1.0, ge=0, description="lambda_2, weight of KL(pbar(D_u) || pbar(H_u))")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of u's term and of the remaining clients' CE "
                                              "(Adam on the remaining clients too: our choice)")
    local_epochs: int = Field(0, ge=0, description="local epochs per round; 0 = train.local_epochs (our choice)")
    rounds: int = Field(3, ge=0, description="mixed rounds (u's leak+KL with the others' CE), fewer if u's AUC "
                                             "reaches the null band")
    repair_rounds: int = Field(1, ge=0, description="plain FedAvg rounds without u afterwards")
    attack_hidden: int = Field(32, ge=1, description="attack MLP width (leak = attack; our choice)")
    attack_epochs: int = Field(200, ge=1, description="full-batch Adam steps of the attack MLP (our choice)")
    attack_lr: float = Field(1e-2, gt=0, description="attack MLP learning rate (our choice)")


class MiaLoss(UnlearningMethod):
    name = "mia_loss"
    paper = ("Sula, Kumar, Hou, Wang, Tourani, 'Silver Linings in the Shadows: Harnessing Membership Inference for "
             "Machine Unlearning' (ReMI), arXiv 2407.00866, 2024")
    summary = "u minimises leakage + KL to its held-out outputs, the others CE, averaged by FedAvg; then repair"
    where = {"withdrawing": "fit the leakage model once; then Adam on lambda_1*Leak + lambda_2*KL over D_u and H_u "
                            "(window open)",
             "remaining": "Adam on CE in the same FedAvg rounds; then repair rounds",
             "server": "FedAvg of all updates; stops when u's A0 AUC reaches the null band"}
    needs_forget_data = True
    Params = MiaLossParams

    def __init__(self, params: MethodParams | None = None) -> None:
        super().__init__(params)
        self.trace: list[dict[str, float]] = []  # per round: u's step metrics (tests, debugging)
        self.fits: dict[int, dict[str, float]] = {}  # u -> its fit (Gaussian parameters, A0 leakage under w_T)

    def unlearn(self, job: UnlearnJob) -> Weights:
        p: MiaLossParams = self.params  # type: ignore[assignment]
        rounds = MethodRounds(job)
        inside = [u for u in job.withdrawn if job.fed.ctx.window.status(u) == "open"]
        if not inside:
            log.warning("mia_loss: window of %s not open; only the remaining clients' CE rounds and repair run",
                        job.withdrawn)
        config: dict[str, Any] = {"leak": p.leak, "lambda_leak": p.lambda_leak, "lambda_kl": p.lambda_kl,
                                  "adam_lr": p.lr, "local_epochs": p.local_epochs or job.cfg.train.local_epochs,
                                  "attack_hidden": p.attack_hidden, "attack_epochs": p.attack_epochs,
                                  "attack_lr": p.attack_lr}
        self.trace = []
        w = job.start
        fits = {u: rounds.send("fit", [u], "mia_loss_fit", w, config, rounds=1, required=True)[0] for u in inside}
        self.fits = {u: dict(fit.metrics) for u, fit in fits.items()}
        attacks = {u: split_extras(fit.weights, ATTACK)[1] for u, fit in fits.items() if fit.weights is not None}
        for r in range(1, p.rounds + 1):
            replies = []
            for u, fit in fits.items():
                u_config = {**config, **{k: fit.metrics[k] for k in ("mu_in", "sd_in", "mu_out", "sd_out")}}
                sent = with_extras(w, ATTACK, attacks[u]) if p.leak == "attack" else w
                replies += rounds.send("unlearn", [u], "mia_loss_forget", sent, u_config, rnd=r, required=True)
            self.trace.append({"round": float(r), **{f"{k}.{x.pid}": v for x in replies for k, v in x.metrics.items()}})
            if replies and all(x.metrics["gone"] >= 1.0 for x in replies):
                log.info("mia_loss: u's A0 AUC inside the null band before round %d: %s", r,
                         {x.pid: round(x.metrics["auc"], 4) for x in replies})
                rounds.note("unlearn", rounds=1)
                break
            updating = sum(1 for x in replies if x.weights is not None)  # a u already at the band sends none
            others = rounds.sample("unlearn", job.remaining, r)
            replies += rounds.send("unlearn", others, "mia_loss_ce", w, config, rnd=r)
            w = rounds.average("unlearn", r, replies, expected=updating + len(others))
        return job.fedavg(w, p.repair_rounds, "repair")


# --------------------------------------------------------------------------------------------- client side


def _attack_net(num_classes: int, hidden: int, seed: int) -> nn.Module:
    """The attack MLP on sorted softmax vectors (seeded init, so every node builds the same one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _sorted_probs(z: torch.Tensor) -> torch.Tensor:
    return torch.sort(torch.softmax(z, dim=1), dim=1, descending=True).values


def gaussian_leak(phi_values: torch.Tensor, mu_in: float, sd_in: float, mu_out: float, sd_out: float) -> torch.Tensor:
    """Mean softplus of the Gaussian log-likelihood ratio member/non-member of phi (= -log P(out | phi))."""
    llr = (np.log(sd_out / sd_in) - (phi_values - mu_in) ** 2 / (2 * sd_in ** 2)
           + (phi_values - mu_out) ** 2 / (2 * sd_out ** 2))
    return nn.functional.softplus(llr).mean()


def mean_softmax_kl(z_forget: torch.Tensor, z_heldout: torch.Tensor) -> torch.Tensor:
    """KL(pbar(D_u) || pbar(H_u)) of the batch-mean softmax outputs; the held-out side is a fixed target."""
    p = torch.softmax(z_forget, dim=1).mean(0).clamp_min(1e-12)
    q = torch.softmax(z_heldout.detach(), dim=1).mean(0).clamp_min(1e-12)
    return (p * (p.log() - q.log())).sum()


def fit_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u, once: Gaussian fit of phi on members / held-out under w_T (scalars), and the attack MLP if asked for."""
    xm, ym = rt.read("member")
    xh, yh = rt.read("validation")
    model = rt.model(weights)
    zm, zh = logits(model, xm, rt.device), logits(model, xh, rt.device)
    pm, ph = model_phi(model, xm, ym, rt.device), model_phi(model, xh, yh, rt.device)
    metrics = {**leakage_metrics(pm, ph), "mu_in": float(pm.mean()), "sd_in": max(float(pm.std()), SD_FLOOR),
               "mu_out": float(ph.mean()), "sd_out": max(float(ph.std()), SD_FLOOR),
               "num-examples": float(len(xm)), "samples": float(len(xm) + len(xh))}
    if rt.setting("leak", "gaussian") != "attack":
        return StepOutput(None, metrics)
    epochs = rt.setting("attack_epochs", 200)
    net = _attack_net(rt.num_classes, rt.setting("attack_hidden", 32), rt.seed("attack")).to(rt.device)
    feats = _sorted_probs(torch.as_tensor(np.concatenate([zm, zh]), dtype=torch.float32)).to(rt.device)
    target = torch.cat([torch.ones(len(zm)), torch.zeros(len(zh))]).to(rt.device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(len(zh) / max(len(zm), 1), device=rt.device))
    opt = torch.optim.Adam(net.parameters(), lr=rt.setting("attack_lr", 1e-2))
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(feats).squeeze(1), target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = net(feats).squeeze(1).cpu().numpy()
    metrics.update(attack_auc=auc(score[: len(zm)], score[len(zm):]), attack_loss=float(loss.detach()))
    metrics["samples"] += float(epochs * len(feats))
    return StepOutput(with_extras(Weights(), ATTACK, get_weights(net)), metrics)


def forget_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u: report the incoming model's A0 leakage; unless it is gone, Adam on lambda_1*Leak + lambda_2*KL."""
    if weights is None:
        raise ValueError("mia_loss_forget needs the global model")
    model_w, attack_w = split_extras(weights, ATTACK)
    xm, ym = rt.read("member")
    xh, yh = rt.read("validation")
    model = rt.model(model_w)
    dev = rt.device
    leak_kind = rt.setting("leak", "gaussian")
    lam_leak, lam_kl = rt.setting("lambda_leak", 1.0), rt.setting("lambda_kl", 1.0)
    if leak_kind == "attack":
        if not attack_w:
            raise ValueError("mia_loss_forget: leak = 'attack' but the message carries no attack model")
        net = _attack_net(rt.num_classes, rt.setting("attack_hidden", 32), 0).to(dev)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in attack_w.items()})
        net.requires_grad_(False)

        def leak_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(net(_sorted_probs(z)).squeeze(1)).mean()
    else:
        fit = [rt.setting(k, 1.0) for k in ("mu_in", "sd_in", "mu_out", "sd_out")]

        def leak_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return gaussian_leak(phi(z, y), *fit)

    xm_t, ym_t = torch.as_tensor(xm, dtype=torch.float32), torch.as_tensor(ym, dtype=torch.long)
    xh_t = torch.as_tensor(xh, dtype=torch.float32)

    def measure() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            zm, zh = model(xm_t.to(dev)), model(xh_t.to(dev))
            return {"leak": float(leak_fn(zm, ym_t.to(dev))), "kl": float(mean_softmax_kl(zm, zh))}

    before = measure()
    metrics = {**leakage_metrics(model_phi(model, xm, ym, dev), model_phi(model, xh, yh, dev)),
               "leak_before": before["leak"], "kl_before": before["kl"], "num-examples": float(len(xm))}
    if metrics["gone"] >= 1.0:
        return StepOutput(None, {**metrics, "samples": float(len(xm) + len(xh))})

    epochs = rt.setting("local_epochs", rt.cfg.train.local_epochs)
    bs = rt.cfg.train.batch_size
    gen = torch.Generator().manual_seed(rt.seed("forget"))
    opt = torch.optim.Adam(model.parameters(), lr=rt.setting("adam_lr", 1e-3))
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in batches(len(xm_t), bs, gen):
            h_idx = torch.randint(len(xh_t), (len(idx),), generator=gen)
            zm, zh = model(xm_t[idx].to(dev)), model(xh_t[h_idx].to(dev))
            loss = lam_leak * leak_fn(zm, ym_t[idx].to(dev)) + lam_kl * mean_softmax_kl(zm, zh)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    after = measure()
    pm_after = model_phi(model, xm, ym, dev)
    metrics.update(leak_after=after["leak"], kl_after=after["kl"], phi_member_after=float(pm_after.mean()),
                   loss=total / max(seen, 1), accuracy=0.0,
                   samples=float(2 * len(xm) * epochs + 2 * (len(xm) + len(xh))))
    return StepOutput(get_weights(model), metrics)


def ce_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Remaining client: Adam on CE over its members (the objective's task term)."""
    tc = rt.cfg.train
    x, y = rt.read("member")
    model = rt.model(weights)
    opt = torch.optim.Adam(model.parameters(), lr=rt.setting("adam_lr", 1e-3))
    res = train_epochs(model, x, y, epochs=rt.setting("local_epochs", tc.local_epochs), batch_size=tc.batch_size,
                       optimizer=opt, seed=rt.seed("ce"), device=rt.device)
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples),
                                           "loss": res.loss, "accuracy": res.accuracy})


MiaLoss.client_steps = {"mia_loss_fit": fit_step, "mia_loss_forget": forget_step, "mia_loss_ce": ce_step}
