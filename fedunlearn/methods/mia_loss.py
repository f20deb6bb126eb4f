"""``mia_loss`` — ReMI: the task loss plus a membership-leakage term and a KL term, split across the federation.

Paper: Nexhi Sula, Abhinav Kumar, Jie Hou, Han Wang, Reza Tourani, "Silver Linings in the Shadows: Harnessing
Membership Inference for Machine Unlearning", arXiv 2407.00866, 2024. One loss adds a membership-leakage term and a
KL term (which pulls the forgotten data's outputs toward those of out-of-sample data) to the target model's loss;
any privacy-leakage estimate (a membership-inference attack, a fingerprint) can stand in for the attack; a
Gaussian-based upper bound makes the leak term tractable. What is public to us is the abstract and summaries: no
code, and no values for the loss weights, the optimizer, its learning rate or the number of epochs. Those below are
ours (docs/methods.md) and the Field descriptions say so.

Objective: L(theta) = CE(theta; D_r) + lambda_1 * Leak(theta; D_u) + lambda_2 * KL(pbar(D_u) || pbar(V_u)),
pbar = mean softmax output over a batch, V_u = u's validation part (the paper's unseen data; never the audit part).
Each term is a mean over its own set.

Federated split (each term runs where its data lives):
- ``fit`` (one query round, u, window open): under w_T u computes the logit-scaled confidence phi of its members and
  validation records and fits N(mu_in, sd_in^2), N(mu_out, sd_out^2); the four scalars go back to the server, which
  sends them with every later step (fitted once, so the leak term keeps one target). With ``leak = "attack"`` u also
  trains a small attack MLP (sorted softmax vector -> member logit, balanced BCE, Adam, full batch) on D_u vs V_u;
  its weights ride back and forth with the model as the named weight set ``attack_model``, kept fixed. The stop rule
  is judged only after a cycle (mixed round + repair): a withdrawal always removes u's contribution at least once,
  even when u's A0 AUC under w_T already looks inside the validation band (38 validation records give a wide band,
  so "inside" there is weak evidence that nothing remains).
- ``unlearn`` rounds (mixed rounds from the same global model): u runs ``mia_loss_forget`` = Adam (``forget_lr``,
  default 1e-3, ``forget_epochs`` over D_u) on the lambda-normalised forgetting terms
  F = (lambda_1 * Leak + lambda_2 * KL) / Lambda, Lambda = lambda_1 + lambda_2, over minibatches of D_u, each paired
  with an equally large random batch of V_u; the sampled remaining clients run ``mia_loss_ce`` = the training
  recipe (SGD with train.lr, momentum, weight decay, train.local_epochs; ``remaining_lr`` overrides the rate) on
  CE. Adam's moments restart with every message (clients keep no state).
- Aggregation (server, ``mixed_weights``): u's update carries Lambda / (1 + Lambda) of the aggregate, the remaining
  clients' updates 1 / (1 + Lambda), shared among them by example count (several withdrawing clients share u's part
  by their example counts). To first order an update is -eta * grad of the loss it minimised, so the averaged update
  follows grad[CE(D_r) + Lambda * F(D_u)] / (1 + Lambda) = grad[CE(D_r) + lambda_1 Leak + lambda_2 KL] / (1 + Lambda):
  the paper's objective up to a scale. Plain FedAvg (weights by examples) would give u's terms n_u / n of that
  weight (132 of 1,320 on the quickstart, a tenth of the paper's), and because Adam is invariant to the scale of its
  loss, lambda would then be no strength knob at all; here Lambda sets u's share, lambda_1 : lambda_2 the mix of its
  terms. u's reply still reports its true example count; the server applies the weights. (u's Adam update is a
  per-coordinate normalised step, not -eta * grad, so the match is in each set's share, not exact; ``forget_lr``
  sets the size of u's step. On the quickstart the mixed round alone drops test accuracy to 0.39, the repair round
  brings it back to 0.82, which is why the repaired model is the one judged and returned.)
- ``repair``: after every mixed round, ``repair_rounds`` of plain FedAvg (training recipe) over the remaining
  clients, without u; the next mixed round starts from the repaired model.
- Stop rule (``verify``, one query round, u, window open): after the repair, u reports the A0 AUC of its members vs
  its validation part under the repaired model (scalars only); the method stops once it is at or below the null
  band's upper edge (docs/leakage.md), and returns that repaired model, or after ``rounds`` mixed rounds. Judging before
  the repair (as the first version did) stopped on a model that the repair then moved back toward u (measured on
  the quickstart: AUC 0.609 at the stop, 0.642 returned).
- Ledger: phases ``fit`` (1 round), ``unlearn`` (1 round per mixed round), ``repair`` (``repair_rounds`` per mixed
  round, so up to rounds * repair_rounds in all, where the first version ran ``repair_rounds`` once) and
  ``verify`` (1 round per mixed round). ``rounds = 0`` runs only ``repair_rounds`` of repair (the ablation).

Leak terms (both differentiable in theta):
- ``gaussian``: Leak = mean over D_u of softplus(LLR(phi)), LLR = log N(phi; mu_in, sd_in) - log N(phi; mu_out,
  sd_out). Departure (ours): our first design used the mean LLR; with unequal variances the LLR is a quadratic that is
  unbounded below, so minimising it pushes phi to +-infinity (over-unlearning, the "Streisand" signal).
  softplus(LLR) = -log P(out | phi) for the Bayes attacker with equal priors: about the LLR where a record looks
  like a member, flat near 0 once it looks like a non-member.
- ``attack``: Leak = mean attack-MLP member probability over D_u.
KL: the validation side is the target and is not differentiated (ours: forget outputs move toward unseen-data
outputs, not the reverse).

Outside the window u cannot take part: the method logs it and runs the remaining clients' rounds and repairs for
the whole budget (no stop rule, which needs u).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from fedunlearn.audit.metrics import auc
from fedunlearn.audit.signals import phi_from_logits
from fedunlearn.fl.fedavg import check_failure_share, weighted_average
from fedunlearn.fl.protocol import ClientReply, StepOutput
from fedunlearn.fl.recipe import local_sgd
from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob
from fedunlearn.methods.mia_loss_terms import (
    attack_net,
    fit_attack,
    gaussian_leak,
    mean_softmax_kl,
    mixed_weights,
    sorted_probs,
)
from fedunlearn.methods.mixed_round import (
    MethodRounds,
    leakage_metrics,
    phi,
    self_leakage_step,
)
from fedunlearn.models import Weights, get_weights
from fedunlearn.training import batches, logits

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime

log = logging.getLogger(__name__)
ATTACK = "attack_model"
SD_FLOOR = 1e-3  # keeps the Gaussian fit finite when a client's phi values coincide


class MiaLossParams(MethodParams):
    leak: Literal["gaussian", "attack"] = Field("gaussian", description="leakage estimate: Gaussian fit of phi "
                                                "(softplus of the log-likelihood ratio: our choice) or a fixed "
                                                "attack MLP")
    lambda_leak: float = Field(1.0, ge=0, description="lambda_1, weight of the leakage term relative to CE(D_r); "
                                                      "with lambda_kl it sets u's aggregate share "
                                                      "Lambda/(1+Lambda), Lambda = lambda_1 + lambda_2")
    lambda_kl: float = Field(1.0, ge=0, description="lambda_2, weight of KL(pbar(D_u) || pbar(V_u)) relative to "
                                                    "CE(D_r)")
    forget_lr: float = Field(1e-3, gt=0, description="u's Adam learning rate on its forgetting terms (our choice; "
                                                     "the paper gives none)")
    forget_epochs: int = Field(0, ge=0, description="u's epochs over D_u per mixed round; 0 = train.local_epochs "
                                                    "(our choice)")
    remaining_lr: float = Field(0.0, ge=0, description="the remaining clients' SGD learning rate in mixed rounds; "
                                                       "0 = train.lr (they keep the training recipe)")
    rounds: int = Field(3, ge=0, description="mixed rounds at most (u's forgetting terms with the others' CE, each "
                                             "followed by the repair and u's check); fewer once u's AUC is in the "
                                             "null band")
    repair_rounds: int = Field(1, ge=0, description="plain FedAvg rounds without u after every mixed round")
    attack_hidden: int = Field(32, ge=1, description="attack MLP width (leak = attack; our choice)")
    attack_epochs: int = Field(200, ge=1, description="full-batch Adam steps of the attack MLP (our choice)")
    attack_lr: float = Field(1e-2, gt=0, description="attack MLP learning rate (our choice)")


class MiaLoss(UnlearningMethod):
    name = "mia_loss"
    paper = ("Sula, Kumar, Hou, Wang, Tourani, 'Silver Linings in the Shadows: Harnessing Membership Inference for "
             "Machine Unlearning' (ReMI), arXiv 2407.00866, 2024")
    summary = ("u minimises leakage + KL to its validation outputs, the others CE (training recipe), u's update "
               "weighted so the average follows the paper's objective; repair and u's check after every round")
    where = {"withdrawing": "fit the leakage model once; then Adam on (lambda_1*Leak + lambda_2*KL)/Lambda over D_u "
                            "and V_u; A0 check after each repair (window open)",
             "remaining": "the training recipe (SGD) on CE in the mixed rounds; repair rounds after each",
             "server": "aggregate with u's share Lambda/(1+Lambda); stop when u's A0 AUC after the repair is in the "
                       "null band"}
    needs_forget_data = True
    Params = MiaLossParams
    departures: ClassVar[tuple[str, ...]] = (
        "no public code or values: lambda_1 = lambda_2 = 1, Adam lr 1e-3 for u, 3 rounds, 1 repair round are ours",
        "federated split: u minimises the forgetting terms, the remaining clients CE; u's update carries "
        "Lambda/(1+Lambda) of the aggregate (not its example share) so the average follows CE + lambda*F",
        "u's loss is lambda-normalised, (lambda_1*Leak + lambda_2*KL)/Lambda; Lambda acts through u's share",
        "remaining clients keep the training recipe (SGD, train.lr); only u uses Adam (forget_lr)",
        "Gaussian leak = softplus of the log-likelihood ratio (= -log P(out|phi)); the mean LLR is unbounded below",
        "KL target pbar(V_u) detached; unseen data = u's validation part",
        "stop rule: u's A0 AUC judged after the repair rounds that follow each mixed round; the repaired model is "
        "returned",
    )

    def __init__(self, params: MethodParams | None = None) -> None:
        super().__init__(params)
        self.trace: list[dict[str, float]] = []  # per mixed round: u's step metrics and its check ("verify.*")
        self.fits: dict[int, dict[str, float]] = {}  # u -> its fit (Gaussian parameters, A0 leakage under w_T)
        self.events: list[str] = []  # the order of the phases run ("fit", "unlearn:1", "repair:1", "verify:1", ...)

    def run(self, job: UnlearnJob) -> Weights:
        p: MiaLossParams = self.params  # type: ignore[assignment]
        rounds = MethodRounds(job)
        inside = [u for u in job.withdrawn if job.fed.ctx.window.status(u) == "open"]
        if not inside:
            log.warning("mia_loss: window of %s not open; only the remaining clients' rounds and repairs run",
                        job.withdrawn)
        lam = p.lambda_leak + p.lambda_kl
        forgetting = inside if lam > 0 else []
        self.trace, self.events = [], []
        w = job.start
        fits = {u: rounds.send("fit", [u], "mia_loss_fit", w, rounds=1, required=True)[0] for u in inside}
        self.fits = {u: dict(fit.metrics) for u, fit in fits.items()}
        self.events += ["fit"] if fits else []
        attacks = {u: fit.records[ATTACK] for u, fit in fits.items() if ATTACK in fit.records}
        if p.rounds == 0:
            return self._repair(rounds, w, 0, p.repair_rounds)
        for r in range(1, p.rounds + 1):
            u_replies: list[ClientReply] = []
            for u in forgetting:
                fit = self.fits[u]
                config = {k: fit[k] for k in ("mu_in", "sd_in", "mu_out", "sd_out")}  # u's own fit, from the server
                records = {ATTACK: attacks[u]} if p.leak == "attack" else None
                u_replies += rounds.send("unlearn", [u], "mia_loss_forget", w, config, rnd=r, required=True,
                                         records=records)
            others = rounds.sample("unlearn", job.remaining, r)
            r_replies = rounds.send("unlearn", others, "mia_loss_ce", w, rnd=r)
            w = self._aggregate(rounds, r, u_replies, r_replies, lam, expected=len(u_replies) + len(others))
            self.events.append(f"unlearn:{r}")
            row = {"round": float(r), **{f"{k}.{x.pid}": v for x in u_replies for k, v in x.metrics.items()}}
            self.trace.append(row)
            w = self._repair(rounds, w, (r - 1) * p.repair_rounds, p.rounds * p.repair_rounds)
            if not inside:
                continue
            checks = rounds.send("verify", inside, "mia_loss_verify", w, rnd=r, rounds=1, required=True)
            self.events.append(f"verify:{r}")
            row.update({f"verify.{k}.{x.pid}": v for x in checks for k, v in x.metrics.items()})
            if all(x.metrics["gone"] >= 1.0 for x in checks):
                log.info("mia_loss: u's A0 AUC inside the null band after mixed round %d and its repair: %s", r,
                         {x.pid: round(x.metrics["auc"], 4) for x in checks})
                break
        return w

    def _repair(self, rounds: MethodRounds, w: Weights, done: int, total: int) -> Weights:
        """The next ``repair_rounds`` rounds of the repair phase (numbered on from ``done`` out of ``total``)."""
        p: MiaLossParams = self.params  # type: ignore[assignment]
        for k in range(done + 1, done + p.repair_rounds + 1):
            w = rounds.fedavg_round("repair", w, k, total=max(total, k))
            self.events.append(f"repair:{k}")
        return w

    @staticmethod
    def _aggregate(rounds: MethodRounds, rnd: int, u_replies: Sequence[ClientReply],
                   r_replies: Sequence[ClientReply], lam: float, expected: int) -> Weights:
        """The mixed round's aggregate with ``mixed_weights`` (one round in the ledger, one rounds.csv row);
        fails the phase when more than ``train.max_failure_share`` of the ``expected`` clients did not answer."""
        ok_u = [x for x in u_replies if x.ok and x.weights is not None]
        ok_r = sorted((x for x in r_replies if x.ok and x.weights is not None), key=lambda x: x.pid)
        missing = expected - len(ok_u) - len(ok_r)
        check_failure_share(rounds.job.phase("unlearn"), rnd, len(ok_u) + len(ok_r), expected,
                            rounds.ctx.cfg.train.max_failure_share, [x for x in [*u_replies, *r_replies] if not x.ok])
        a_u, a_r = mixed_weights([x.num_examples for x in ok_u], [x.num_examples for x in ok_r], lam)
        with rounds.phase("unlearn"):
            new = weighted_average([(x.weights, a) for x, a in zip([*ok_u, *ok_r], [*a_u, *a_r])])  # type: ignore
            rounds.ctx.costs.note(rounds=1)
            rounds.ctx.log_round(rounds.ctx.phase, rnd, new, [*ok_u, *ok_r], missing)
        return new


# --------------------------------------------------------------------------------------------- client side


def fit_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u, once: Gaussian fit of phi on members / validation under w_T (scalars), and the attack MLP if asked for."""
    xm, ym = rt.read("member")
    xh, yh = rt.read("validation")
    model = rt.model(weights)
    zm, zh = logits(model, xm, rt.device), logits(model, xh, rt.device)
    pm, ph = phi_from_logits(zm, ym), phi_from_logits(zh, yh)
    metrics = {**leakage_metrics(pm, ph), "mu_in": float(pm.mean()), "sd_in": max(float(pm.std()), SD_FLOOR),
               "mu_out": float(ph.mean()), "sd_out": max(float(ph.std()), SD_FLOOR),
               "num-examples": float(len(xm)), "samples": float(len(xm) + len(xh))}
    p = rt.params(MiaLossParams)
    if p.leak != "attack":
        return StepOutput(None, metrics)
    epochs = p.attack_epochs
    net, score, loss = fit_attack(zm, zh, num_classes=rt.num_classes, hidden=p.attack_hidden, epochs=epochs,
                                  lr=p.attack_lr, seed=rt.seed("attack"), device=rt.device)
    metrics.update(attack_auc=auc(score[: len(zm)], score[len(zm):]), attack_loss=loss)
    metrics["samples"] += float(epochs * (len(zm) + len(zh)))
    return StepOutput(None, metrics, records={ATTACK: get_weights(net)})


def forget_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u: Adam on (lambda_1*Leak + lambda_2*KL) / (lambda_1 + lambda_2) over D_u paired with batches of V_u; reports
    the incoming and the outgoing model's terms and the incoming model's A0 statistic."""
    if weights is None:
        raise ValueError("mia_loss_forget needs the global model")
    p = rt.params(MiaLossParams)
    xm, ym = rt.read("member")
    xh, yh = rt.read("validation")
    model = rt.model(weights)
    dev = rt.device
    lam_leak, lam_kl = p.lambda_leak, p.lambda_kl
    lam = lam_leak + lam_kl
    if lam <= 0:
        raise ValueError("mia_loss_forget: lambda_leak + lambda_kl must be positive (the server skips u otherwise)")
    if p.leak == "attack":
        net = attack_net(rt.num_classes, p.attack_hidden, 0).to(dev)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in rt.record(ATTACK).items()})
        net.requires_grad_(False)

        def leak_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(net(sorted_probs(z)).squeeze(1)).mean()
    else:
        fit = [rt.value(k, float) for k in ("mu_in", "sd_in", "mu_out", "sd_out")]

        def leak_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return gaussian_leak(phi(z, y), *fit)

    xm_t, ym_t = torch.as_tensor(xm, dtype=torch.float32), torch.as_tensor(ym, dtype=torch.long)
    xh_t = torch.as_tensor(xh, dtype=torch.float32)

    def measure() -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """The two terms and phi of members / validation records under the current model (one forward pass)."""
        model.eval()
        with torch.no_grad():
            zm, zh = model(xm_t.to(dev)), model(xh_t.to(dev))
            terms = {"leak": float(leak_fn(zm, ym_t.to(dev))), "kl": float(mean_softmax_kl(zm, zh))}
        return terms, phi_from_logits(zm.double().cpu().numpy(), ym), phi_from_logits(zh.double().cpu().numpy(), yh)

    before, pm, ph = measure()
    metrics = {**leakage_metrics(pm, ph), "leak_before": before["leak"], "kl_before": before["kl"],
               "num-examples": float(len(xm))}
    epochs = p.forget_epochs or rt.cfg.train.local_epochs
    gen = torch.Generator().manual_seed(rt.seed("forget"))
    opt = torch.optim.Adam(model.parameters(), lr=p.forget_lr)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in batches(len(xm_t), rt.cfg.train.batch_size, gen):
            h_idx = torch.randint(len(xh_t), (len(idx),), generator=gen)
            zm, zh = model(xm_t[idx].to(dev)), model(xh_t[h_idx].to(dev))
            loss = (lam_leak * leak_fn(zm, ym_t[idx].to(dev)) + lam_kl * mean_softmax_kl(zm, zh)) / lam
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    after, pm_after, _ = measure()
    metrics.update(leak_after=after["leak"], kl_after=after["kl"], phi_member_after=float(pm_after.mean()),
                   loss=total / max(seen, 1), accuracy=0.0,
                   samples=float(2 * len(xm) * epochs + 2 * (len(xm) + len(xh))))
    return StepOutput(get_weights(model), metrics)


def ce_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Remaining client: the objective's task term CE(D_r) with the training recipe (SGD with train.lr, momentum,
    weight decay, or ``remaining_lr``), exactly the plain FedAvg local step."""
    return local_sgd(rt, weights, seed_label="ce", lr=rt.params(MiaLossParams).remaining_lr or None)


MiaLoss.client_steps = {"mia_loss_fit": fit_step, "mia_loss_forget": forget_step, "mia_loss_ce": ce_step,
                        "mia_loss_verify": self_leakage_step}
