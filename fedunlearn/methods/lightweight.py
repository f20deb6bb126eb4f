"""``lightweight`` — perturb the trained weights, then let FedAvg on the remaining data iterate away from u.

Paper: Kongyang Chen, Yao Huang, Yiwen Wang, "Lightweight machine unlearning in neural network", arXiv 2111.05528,
2021 (preprint). Only its abstract is public to us: "make a small perturbation of the weight of the target model and
make it iterate in the direction of the model trained with the remaining data subset until the contribution of the
unlearning data to the model is completely eliminated" (15x faster than retraining on five datasets, no extra
storage). We found no public code and no public text stating the perturbation's law, its scale or the stopping test
(searched: arXiv/Papers-with-Code/aggregator pages give the abstract only; no repository cites 2111.05528). So
everything concrete below is our reading (docs/methods.md):

1. Server: w <- w_T + eps, eps_l ~ N(0, (sigma * std(w_T,l))^2) per float parameter tensor l, std over the tensor's
   entries (a tensor whose entries are all equal, e.g. a one-element tensor, gets no noise); BatchNorm running
   statistics and counters are not perturbed (``models.is_float_param``). Seeded by (experiment seed, withdrawn ids).
   ``sigma`` is the strength knob. The first default, 0.05, left the model where it was (issue 8: u's A0 AUC 0.694
   right after the perturbation vs 0.693 under w_T), so the default is set by the calibration sweep below
   (experiments/calibrate.py); ``sigma = 1`` adds to each tensor noise as large as its own spread. Measured on the
   quickstart (seed 0, u = client 0, the perturbation alone, no training): sigma 0 / 0.05 / 0.25 / 0.5 / 1 / 2 gives
   test accuracy 0.832 / 0.832 / 0.822 / 0.793 / 0.668 / 0.327, u's member accuracy 0.99 / 0.99 / 0.98 / 0.92 / 0.86
   / 0.32 and the remaining clients' mean member CE 0.048 / 0.049 / 0.074 / 0.147 / 0.592 / 5.65; u's AUC against its
   validation part moves little below sigma = 2 (0.62 / 0.62 / 0.64 / 0.65 / 0.63 / 0.54): noise lowers every
   record's confidence, members and non-members alike, and the FedAvg rounds after it do the forgetting.
2. Remaining clients: FedAvg rounds from w with the training recipe (phase ``finetune``).
3. Stopping rule. ``stop = "verify"`` ("until the contribution of the unlearning data is eliminated", made into a
   test on both sides of it; our choice):
   - before perturbing, one query round (phase ``query``, round 0): every remaining client reports the mean CE of
     its members under w_T (``lightweight_loss``, eval mode, no training);
   - after each training round, while u's withdrawal window is open, u runs ``lightweight_verify``: the A0 statistic
     (AUC of its members' phi against its *validation* part under the current global model) and the null band
     0.5 +/- max(0.01, 1.96 SE_null) of docs/leakage.md (only scalars leave u);
   - in a round where u's AUC is at or below the band's upper edge, one more query round (phase ``query``, round r):
     the remaining clients report their member CE under the current model;
   - stop when both hold: u's AUC at or below the band's upper edge and the remaining clients' example-weighted mean
     CE at or below (1 + ``loss_tol``) x its pre-perturbation level (over the clients that answered both queries).
     The second condition keeps a large perturbation from being called "unlearned" while the model is still
     broken for everyone: its damage must be repaired first.
   ``max_rounds`` caps it. If u's window is not open the rule falls back to the budget (logged). ``stop =
   "budget"``: exactly ``max_rounds`` rounds (default 10% of R, at least 1), no query.
   ``sigma = 0`` is ``finetune`` with the same stopping rule (the ablation of the perturbation): the same step,
   recipe and per-round seeding as ``finetune``'s rounds (phase ``finetune``), so under the method name
   ``finetune`` and ``stop = "budget"`` it reproduces ``finetune`` bit for bit (a unit test checks it).

Variant ``variant = "kl"`` (same first author's federated follow-up: Kongyang Chen, Dongping Zhang, Yaping Chai,
Weibin Zhang, Shaowei Wang, Jiaxing Shen, "Federated Unlearning for Human Activity Recognition", arXiv 2404.03659,
2024, reporting 294-6119x speed-ups): u fine-tunes so that its outputs on D_u match those on reference data,
KL(f(D_u) || f(D_ref)), while the remaining clients train lambda * CE on their data. Federated split (our design):
each round is a mixed FedAvg round from the same global model — u runs ``lightweight_kl`` (SGD with the recipe's
learning rate on KL(p(x) || p(n)) per pair of a forget record x and a reference input n; the reference outputs are a
fixed target, computed in eval mode without gradient), the sampled remaining clients run ``lightweight_ce`` (SGD on
lambda * CE), and the server averages all updates weighted by examples: FedAvg of the objective sum_k n_k L_k with
L_u = KL and L_k = lambda * CE. D_ref is random noise drawn by u with the per-feature mean and standard deviation of
D_u (our choice: the paper also allows third-party data, which a client rarely holds; matching moments keeps the
noise on the input scale). The server perturbation still runs first (``sigma = 0`` drops it), and the same stopping
rule applies. Outside the window u cannot take part: the rounds fall back to the plain remaining-client rounds
(logged).

Ledger phases: ``perturb`` (server), ``finetune`` or ``kl`` (training rounds), ``verify`` (u: one query round each;
reads u's members and validation part), ``query`` (remaining clients: one query round each; reads their members).

Defaults calibrated (``experiments/calibrate.py``, ``experiments/calibration.json``): on the development setting
(quickstart, seeds 0-2, client 0 withdrawn, in-process) the default is the cheapest grid point equivalent to retrain
on u's *validation* part on >= 2 of 3 seeds with test accuracy >= 0.98x retrain's; the audit part is never read.
Grid: sigma in {0.05, 0.25, 0.5, 0.75, 1.0} x max_rounds in {1, 2, 3}. **Rule not met**: no point was equivalent on
>= 2 seeds at the utility bar (sigma 1.0 was equivalent on 1 of 3 but at 0.94-0.97x retrain's test accuracy; at
sigma <= 0.5 the validation ΔAUC stayed +0.11 to +0.15). The default is the fallback of the rule, the point closest
to retrain among those meeting the utility bar: sigma = 0.5, max_rounds = 10% of R (3 on the quickstart; mean
validation ΔAUC +0.107, test 0.984x retrain's). A perturbation plus a few rounds of the training recipe does not
remove record-level memorisation here without costing utility.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedunlearn.fl.protocol import StepOutput
from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob, default_rounds
from fedunlearn.methods.mixed_round import MethodRounds, member_loss_step, self_leakage_step
from fedunlearn.models import Weights, get_weights, is_float_param
from fedunlearn.training import batches, seed_for, sgd, train_epochs

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime

log = logging.getLogger(__name__)


class LightweightParams(MethodParams):
    sigma: float = Field(0.5, ge=0, description="perturbation strength: noise std relative to each float tensor's "
                                                "std (calibrated; the first default, 0.05, left the model where it "
                                                "was; 0 = the finetune ablation)")
    stop: Literal["verify", "budget"] = Field("verify", description="verify: stop once u's A0 AUC (members vs its "
                                              "validation part) is at or below the null band's upper edge and the "
                                              "remaining clients' loss is back at its pre-perturbation level, while "
                                              "u's window is open; budget: exactly max_rounds")
    max_rounds: int = Field(0, ge=0, description="round cap (the budget rule's count); 0 = 10% of R, at least 1")
    loss_tol: float = Field(0.0, ge=0, description="verify: the remaining clients' mean loss may exceed its "
                                                   "pre-perturbation level by this share (relative; our choice, "
                                                   "0 = back at or below it)")
    variant: Literal["perturb", "kl"] = Field("perturb", description="kl: u fine-tunes KL(f(D_u) || f(noise)) in "
                                              "mixed rounds with the remaining clients' lambda*CE (arXiv 2404.03659)")
    lambda_ce: float = Field(1.0, ge=0, description="kl variant: weight of the remaining clients' CE")
    kl_lr: float = Field(0.0, ge=0, description="kl variant: u's SGD learning rate; 0 = train.lr (our choice)")


def perturb(weights: Weights, sigma: float, seed: int) -> Weights:
    """w + eps, eps_l ~ N(0, (sigma * std(w_l))^2) for each float parameter tensor; other entries copied as is."""
    rng = np.random.default_rng(seed)
    out = Weights()
    for k, v in weights.items():
        if sigma > 0 and is_float_param(k, v):
            std = float(np.std(v, dtype=np.float64))
            out[k] = (v.astype(np.float64) + rng.normal(0.0, sigma * std, size=v.shape)).astype(v.dtype)
        else:
            out[k] = np.array(v, copy=True)
    return out


class Lightweight(UnlearningMethod):
    name = "lightweight"
    paper = ("Chen, Huang, Wang, 'Lightweight machine unlearning in neural network', arXiv 2111.05528, 2021; "
             "kl variant: Chen et al., 'Federated Unlearning for Human Activity Recognition', arXiv 2404.03659, 2024")
    summary = ("perturb w_T, then FedAvg on the remaining clients until u's A0 leakage is gone and their loss is "
               "back at its level under w_T")
    where = {"server": "Gaussian perturbation of w_T (per tensor, relative to its std)",
             "remaining": "FedAvg rounds with the training recipe (kl variant: lambda * CE); verify: report their "
                          "member loss under w_T (before perturbing) and under the model when u's check passes",
             "withdrawing": "verify: A0 AUC of its members vs its validation part after each round (kl variant: "
                            "KL fine-tune toward noise outputs), only while its window is open"}
    needs_forget_data = True
    Params = LightweightParams
    departures = (
        "paper known only by its abstract: the perturbation law (Gaussian, per tensor, sigma x the tensor's std), "
        "the FedAvg iteration and the stop test are our reading",
        "verify stop: u's A0 AUC (members vs validation part) <= null-band upper edge AND the remaining clients' "
        "example-weighted member CE <= (1 + loss_tol) x its level under w_T (queried once before perturbing)",
        "the remaining clients' loss is queried (one query round) only in rounds where u's check passes, from all "
        "remaining clients (not a sample), compared over the clients that answered both queries",
        "u's window not open: the budget rule (max_rounds) replaces the verify stop",
        "BatchNorm running statistics are not perturbed; a tensor with zero spread gets no noise",
        "kl variant: D_ref = noise drawn by u with D_u's per-feature moments; mixed FedAvg rounds weighted by "
        "examples",
        "sigma default 0.5 by the calibration rule's fallback (the first default, 0.05, left the model where it was; "
        "the rule was not met: no grid point was equivalent to retrain at >= 0.98x its test accuracy)",
    )

    def __init__(self, params: MethodParams | None = None) -> None:
        super().__init__(params)
        self.trace: list[dict[str, float]] = []  # per round: u's verification metrics, remaining loss (tests)
        self.loss_before: dict[int, tuple[float, int]] = {}  # remaining pid -> (member CE under w_T, records)

    def run(self, job: UnlearnJob) -> Weights:
        p: LightweightParams = self.params  # type: ignore[assignment]
        rounds = MethodRounds(job)
        window = job.fed.ctx.window
        inside = [u for u in job.withdrawn if window.status(u) == "open"]
        budget = p.max_rounds or default_rounds(0.1, job.rounds_trained)
        verify_on = inside if p.stop == "verify" else []
        if p.stop == "verify" and not inside:
            log.info("lightweight: window of %s not open; stopping by the budget rule (%d rounds)", job.withdrawn,
                     budget)
        kl_on = inside if p.variant == "kl" else []
        if p.variant == "kl" and not inside:
            log.warning("lightweight: window of %s not open; kl variant runs without u (plain rounds)", job.withdrawn)
        self.trace, self.loss_before = [], {}

        if verify_on:  # the remaining clients' level before the perturbation: what the repair must get back to
            self.loss_before = self._remaining_loss(rounds, job, job.start, 0)
            if not self.loss_before:
                log.warning("lightweight: no remaining client reported its loss under w_T; the loss condition "
                            "cannot hold, so the budget rule (%d rounds) decides", budget)
        with rounds.phase("perturb"):
            w = perturb(job.start, p.sigma, seed_for(job.cfg.seed, self.name, "perturb", *job.withdrawn))
        job.new_model("perturb", 1, w)
        for r in range(1, budget + 1):
            if kl_on:
                w = self._kl_round(job, rounds, w, r, kl_on)
            else:
                w = rounds.fedavg_round("finetune", w, r, total=budget)
            if verify_on and self._verify(job, rounds, w, r, verify_on):
                break
        return w

    def _verify(self, job: UnlearnJob, rounds: MethodRounds, w: Weights, r: int, verify_on: list[int]) -> bool:
        """u's A0 check, then (only if it passes) the remaining clients' loss; True when both conditions hold."""
        p: LightweightParams = self.params  # type: ignore[assignment]
        replies = rounds.send("verify", verify_on, "lightweight_verify", w, rnd=r, rounds=1, required=True)
        row = {"round": float(r), **{f"{k}.{x.pid}": v for x in replies for k, v in x.metrics.items()}}
        u_gone = all(x.metrics["gone"] >= 1.0 for x in replies)
        now: dict[int, tuple[float, int]] = self._remaining_loss(rounds, job, w, r) if u_gone else {}
        before, after = _pooled(self.loss_before, now)
        back = bool(now) and not math.isnan(before) and after <= before * (1.0 + p.loss_tol)
        row.update({"queried": float(u_gone), "loss_before": before, "loss_now": after, "loss_back": float(back)})
        self.trace.append(row)
        if u_gone and back:
            log.info("lightweight: after %d round(s) u's A0 AUC is inside the null band (%s) and the remaining "
                     "loss is back (%.4f <= %.4f)", r, {x.pid: round(x.metrics["auc"], 4) for x in replies},
                     after, before)
        return u_gone and back

    def _remaining_loss(self, rounds: MethodRounds, job: UnlearnJob, w: Weights,
                        r: int) -> dict[int, tuple[float, int]]:
        """One query round: each remaining client's mean member CE under ``w`` (failures and NaN left out)."""
        replies = rounds.send("query", job.remaining, "lightweight_loss", w, rnd=r, rounds=1)
        return {x.pid: (x.metrics["loss"], int(x.num_examples)) for x in replies
                if x.ok and not math.isnan(x.metrics.get("loss", math.nan))}

    def _kl_round(self, job: UnlearnJob, rounds: MethodRounds, w: Weights, r: int, kl_on: list[int]) -> Weights:
        others = rounds.sample("kl", job.remaining, r)
        replies = rounds.send("kl", kl_on, "lightweight_kl", w, rnd=r, required=True)
        replies += rounds.send("kl", others, "lightweight_ce", w, rnd=r)
        return rounds.average("kl", r, replies, expected=len(kl_on) + len(others))


def _pooled(before: dict[int, tuple[float, int]], now: dict[int, tuple[float, int]]) -> tuple[float, float]:
    """Example-weighted mean loss before and now over the clients present in both (NaN, NaN if none)."""
    common = sorted(set(before) & set(now))
    if not common:
        return float("nan"), float("nan")
    n = sum(max(before[k][1], 1) for k in common)
    return (sum(before[k][0] * max(before[k][1], 1) for k in common) / n,
            sum(now[k][0] * max(before[k][1], 1) for k in common) / n)


# --------------------------------------------------------------------------------------------- client steps


def kl_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u: SGD on KL(p(x) || p(n)) for forget records x and moment-matched noise inputs n (kl variant)."""
    tc = rt.cfg.train
    x, _ = rt.read("member")
    model = rt.model(weights)
    xt = torch.as_tensor(x, dtype=torch.float32)
    mu, sd = xt.mean(0), xt.std(0, unbiased=False)
    gen = torch.Generator().manual_seed(rt.seed("kl"))
    opt = sgd(model, rt.params(LightweightParams).kl_lr or tc.lr, tc.momentum, tc.weight_decay)
    epochs = tc.local_epochs
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in batches(len(xt), tc.batch_size, gen):
            xb = xt[idx]
            noise = mu + sd * torch.randn(xb.shape, generator=gen)
            model.eval()
            with torch.no_grad():
                log_q = nn.functional.log_softmax(model(noise.to(rt.device)), dim=1)
            model.train()
            log_p = nn.functional.log_softmax(model(xb.to(rt.device)), dim=1)
            loss = (log_p.exp() * (log_p - log_q)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    n = len(xt)
    return StepOutput(get_weights(model), {"num-examples": float(n), "samples": float(2 * n * epochs),
                                           "loss": total / max(seen, 1), "accuracy": 0.0})


def ce_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Remaining client in the kl variant: the training recipe on lambda * CE."""
    tc = rt.cfg.train
    lam = rt.params(LightweightParams).lambda_ce
    x, y = rt.read("member")
    model = rt.model(weights)
    opt = sgd(model, tc.lr, tc.momentum, tc.weight_decay)
    res = train_epochs(model, x, y, epochs=tc.local_epochs, batch_size=tc.batch_size,
                       optimizer=opt, seed=rt.seed("ce"), device=rt.device,
                       loss_fn=lambda out, yb: lam * nn.functional.cross_entropy(out, yb))
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples),
                                           "loss": res.loss, "accuracy": res.accuracy})


Lightweight.client_steps = {"lightweight_verify": self_leakage_step, "lightweight_kl": kl_step,
                            "lightweight_ce": ce_step, "lightweight_loss": member_loss_step}
