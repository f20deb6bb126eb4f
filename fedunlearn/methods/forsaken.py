"""``forsaken`` — a learned mask-gradient generator edits the weights until a membership oracle calls u unknown.

Paper: Zhuo Ma, Yang Liu, Ximeng Liu, Jian Liu, Jianfeng Ma, Kui Ren, "Learn to Forget: Machine Unlearning via
Neuron Masking", IEEE Transactions on Dependable and Secure Computing 20(4):3194-3207, 2023; arXiv 2003.10933 (the
arXiv version, first about user-level memorization in federated learning, lists Yang Liu first and adds Zhongyuan
Jiang and Philip Yu). A learned mask-gradient generator edits the neurons that hold the forgotten data until a
membership oracle calls it unknown; defines the forgetting rate; > 90% forgetting rate with < 5% accuracy loss over
eight datasets. No official code. Our reading (docs/methods.md), a small learned optimizer:

1. u, during its withdrawal window, once under w_T (``forsaken_init``): forget set V = D_u, non-member set P = u's
   validation part V_u (never the audit part). From phi(x) = log p_y - log(1 - p_y) (logit-scaled confidence) on P
   it fixes two numbers: the oracle threshold tau = the (1 - alpha)-quantile (``audit.attacks.a0_threshold``,
   alpha = 0.1: ours; not cross-fitted, a single fixed oracle is what the paper's definition needs) and the
   non-member target t = the ``target_quantile``-quantile (0.5, the median: ours). With B_T, B_F (members judged
   member / non-member under w_T) they are all that leaves u; P is never read again.
2. u, each step (``forsaken_step``; reads D_u only): the forgetting objective is per record,
   F(w) = mean_{x in V} relu(phi_w(x) - t), a one-sided hinge pulling each forget record's confidence down to the
   non-member level and leaving records already at or below it alone. t is a constant (a float fixed on w_T), so
   no gradient reaches any validation record and an edit never targets the non-members directly. A coordinate-wise
   generator G (MLP 3 -> hidden -> hidden -> 1, shared by every coordinate) reads per-parameter features — the
   gradient of F, the weight, its magnitude, each scaled by its tensor's RMS — and emits a mask m in (0, 1); the
   masked update is g = m * grad / RMS(grad) (our form: a mask over the gradient, so every edit is a descent
   direction and G learns *where* to edit).
3. Edit w' = w - eta * g (eta = 0.01, parameters only: BatchNorm statistics are never edited). Loss for G:
   F(w') + lambda * omega * |g|_1 with lambda = 0.01 and |g|_1 the mean absolute value per coordinate (ours: a
   plain sum would make lambda depend on the model size). omega = the remaining clients' mean CE on their members
   under the current model, a scalar they return each step (``forsaken_ce``, a query round), used as a weight and
   not differentiated. G trains with Adam (lr 1e-4), one step per message.
   Acceptance: the server keeps an edit only if it lowers the loss, F(w') + lambda * omega(w') * |g|_1 < F(w), with
   omega(w') queried on the candidate, **and** passes the utility guard omega(w') <= omega(w_T) + ``omega_tol``
   (ours: the paper's penalty only prices the edit's size, so a cheap edit that hurts the remaining clients would
   pass; the guard bounds the drift of their CE from w_T, not from the last kept edit, so it cannot creep).
   Backtracking (ours): a rejected edit halves the step tried next, a kept one doubles it back (at most eta); |g|_1
   is scaled by step/eta so the penalty measures the edit actually tried. Without it a rejected proposal comes back
   nearly unchanged (G moves by about its learning rate per step) and the search stalls; it stops once the step
   falls below eta/1024.
4. Stop when the forgetting rate on V reaches ``target_fr`` (0.9), when F = 0 (every forget record at or below t),
   or after ``max_steps`` (100). Forgetting rate (docs/leakage.md; Forsaken's FR): after an edit FR = (A_F - B_F) / B_T
   with tau fixed on w_T; undefined (NaN, never 0) when B_T = 0.
5. The server applies the accepted edits (it holds w; u returns g), then ``repair_rounds`` (1) of FedAvg.

Why not the set-mean KL. The first implementation used KL(pbar_V || pbar_P) of the mean softmax outputs (our
earlier reading of the paper's loss). Measured on the quickstart it compares the *label mix* of the two sets
(u's held-out records had no record of class 6; issue 8), not membership: two forget sets with the same per-record
confidences but different labels get different losses, and its gradient ran through P, so the edits moved u's
non-members (their accuracy fell from 0.91 to 0.53) while the audit AUC rose (0.693 -> 0.737). The per-record hinge
is a function of the forget records' phi alone (``test_objective_is_per_record_and_ignores_the_label_mix``).

Why the median as target. A forget record whose phi sits at the median of the non-members' phi is, for the A0
attack, a coin flip (its Mann-Whitney contribution against them is 1/2). The mean is dragged down by misclassified
non-members (quickstart, seed 0, under w_T: phi on V_u has quantiles 10% / 50% / 90% = -7.7 / 3.9 / 7.2 and mean
1.6; u's members have median 5.0) and would over-unlearn; tau (``target_quantile = 1 - alpha``) only moves records
to the oracle's edge, where they still rank above 90% of the non-members. The hinge never pushes a record below t:
at F = 0 every forget record is at or below t (those already below stay where they were), which ranks them below
about half of the non-members, i.e. over-unlearned; the ``target_fr`` stop and the utility guard end the edit well
before that (quickstart: F 1.63 -> 0.42 when FR reaches 0.905).

Measured (quickstart, seed 0, client 0 withdrawn, loss attack on the audit part; retrain: AUC 0.522, test 0.823,
178,200 client-samples; original: AUC 0.665, test 0.832). Remaining clients' CE under w_T: omega = 0.048.
- defaults (eta 0.01, target_quantile 0.5, omega_tol 0.05): 8 steps, 2 kept, 6 rejected by the guard, FR 0.905;
  AUC 0.604, test 0.813, u's audit non-members' accuracy 0.80 -> 0.83 (the old objective: 0.91 -> 0.53), 18,914
  client-samples (9.4x fewer than retrain; the per-step CE queries are 10,692 of them);
- eta 0.003, omega_tol 0.1: 1 step, AUC 0.597, test 0.813, 8,750 client-samples (20x fewer);
- eta 0.003, omega_tol 0.1, target_quantile 0.3: 4 steps, AUC 0.553 (+0.032 vs retrain, p = 0.09), test 0.815,
  13,106 client-samples (13.6x fewer); other clients' AUC within 0.021 of retrain.
On the validation side a looser guard forgets more and costs utility (omega_tol 0.2: validation AUC 0.50, test
0.797 < 0.98x retrain's), which is why the guard exists; ``target_quantile`` (strength), ``omega_tol`` (utility),
``eta`` (step size; the first kept edit does most of the work at 0.01) are the knobs to calibrate; ``target_fr``
matters little once the guard binds (0.9 and 1.0 stop at the same FR when the guard rejects every further edit).

Where G lives: G's weights and its Adam state travel with the model in every message to u (named weight sets
``generator`` and ``generator_adam``) and come back updated, so G persists and learns across steps while V and P never
leave u; the server only stores G's few hundred numbers between steps. A public third-party re-implementation
(a ``forsaken(net, forget_loader, retain_loader, nonmem_loader)`` function; read, not copied) rebuilds its
generator's layers inside ``forward`` so G never learns, feeds G the flattened weights and the mean output, uses the
full L1 norm, compares each candidate with the best loss so far and returns after the first accepted edit (no
forgetting-rate stop); here G is built once by the server, seeded, and updated every step — the tests check that
its parameters change and F falls — and the FR stop of the paper is kept.

Ledger ("samples" = records processed): init |D_u| + |V_u|; each edit step 2 |D_u| (F and its gradient at w, F at
w' and G's backward through it; the first implementation also passed V_u three times per step); each query |D_k|
per remaining client, which dominates the cost (every step queries the candidate).

Outside the window u cannot take part: the method logs it and only the repair rounds run.

Defaults calibrated (``experiments/calibrate.py``, ``experiments/calibration.json``): on the development setting
(quickstart, seeds 0-2, client 0 withdrawn, in-process) the default is the cheapest grid point equivalent to retrain
on u's *validation* part on >= 2 of 3 seeds with test accuracy >= 0.98x retrain's; the audit part is never read.
Grid (cheapest first by measurement): (eta, omega_tol, target_quantile) in {(0.003, 0.1, 0.5), (0.001, 0.1, 0.3),
(0.003, 0.1, 0.3), (0.003, 0.05, 0.3), (0.01, 0.05, 0.5), (0.003, 0.2, 0.3) with 2 repair rounds}. Chosen: eta
0.001, omega_tol 0.1, target_quantile 0.3 (equivalent on 2 of 3 seeds, mean validation ΔAUC +0.054, test 0.981x
retrain's, 13.3x fewer client-samples); the cheaper (0.003, 0.1, 0.5) was equivalent on 2 of 3 too but at 0.973x
retrain's test accuracy. The measurements above predate the calibration.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import nn

from fedunlearn.audit.attacks import a0_threshold
from fedunlearn.audit.signals import phi_from_logits
from fedunlearn.fl.protocol import StepOutput
from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob
from fedunlearn.methods.forsaken_generator import (
    build_generator,
    forget_objective,
    generator_update,
    load_generator,
    membership_target,
    pack_optimizer,
)
from fedunlearn.methods.mixed_round import MethodRounds, leakage_metrics, model_phi, weighted_mean
from fedunlearn.models import Weights, get_weights
from fedunlearn.training import seed_for

if TYPE_CHECKING:
    from fedunlearn.engine.client import ClientRuntime

log = logging.getLogger(__name__)
GEN, GOPT, EDIT = "generator", "generator_adam", "edit"  # weight sets beside the model: G, its Adam state, g
STALL = 2.0 ** -10  # stop once ten net halvings of the step have found no edit that lowers the loss


class ForsakenParams(MethodParams):
    eta: float = Field(0.001, gt=0, description="edit step: w <- w - eta * g (halved after a rejected edit, "
                                                "doubled back after a kept one: our choice; calibrated, the first "
                                                "default was 0.01)")
    lambda_l1: float = Field(0.01, ge=0, description="weight of omega * |g|_1 in G's loss (|g|_1 as the mean "
                                                     "absolute value per coordinate: our choice)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the generator G")
    target_fr: float = Field(0.9, description="stop once the forgetting rate on D_u reaches this")
    max_steps: int = Field(100, ge=0, description="generator steps (each: one message to u, one query round)")
    alpha: float = Field(0.1, gt=0, lt=1, description="FPR of the A0 oracle's threshold, fixed on w_T from u's "
                                                      "validation phi (our choice)")
    target_quantile: float = Field(0.3, gt=0, lt=1, description="non-member target of the per-record hinge: this "
                                                                "quantile of phi on u's validation part under w_T "
                                                                "(our choice, calibrated; 1 - alpha = tau)")
    omega_tol: float = Field(0.1, ge=0, description="utility guard: reject an edit whose remaining-client CE "
                                                    "exceeds its value under w_T by more than this, in nats "
                                                    "(our choice, calibrated)")
    hidden: int = Field(16, ge=1, description="width of G's two hidden layers (our choice)")
    repair_rounds: int = Field(1, ge=0, description="FedAvg rounds over the remaining clients after the edit")


class Forsaken(UnlearningMethod):
    name = "forsaken"
    paper = ("Ma, Liu, Liu, Liu, Ma, Ren, 'Learn to Forget: Machine Unlearning via Neuron Masking', IEEE TDSC 20(4), "
             "2023; arXiv 2003.10933")
    summary = ("a learned mask-gradient generator edits w_T on u (per-record hinge toward a validation-part target, "
               "utility guard) until the A0 oracle forgets D_u; then repair")
    granularity = ("client",)  # class mode of the paper: not wired to class withdrawals yet
    where = {"withdrawing": "trains the generator G and proposes masked edits g (window open)",
             "remaining": "report their CE under each candidate edit (query); repair rounds",
             "server": "holds G's state between steps, applies accepted edits"}
    needs_forget_data = True
    Params = ForsakenParams
    departures = (
        "objective: per-record one-sided hinge mean relu(phi(x) - t) over D_u, not a KL of set-mean softmax outputs "
        "(that measured the label mix and moved the non-members; fix of issue 8)",
        "non-member target t: the target_quantile (calibrated: 0.3) quantile of phi on u's validation part under "
        "w_T, a fixed float; no gradient reaches validation records, which are read only once, under w_T",
        "utility guard in the acceptance rule: an edit is kept only if omega(w') <= omega(w_T) + omega_tol",
        "G is coordinate-wise (features: gradient, weight, |weight|, RMS-scaled) and emits a mask over the "
        "normalized gradient, so each edit is a masked descent step",
        "|g|_1 as the mean absolute value per coordinate (lambda independent of model size)",
        "backtracking: a rejected edit halves the step, a kept one doubles it back (at most eta); stop at eta/1024",
        "also stops when F = 0 (every forget record at or below t), besides the forgetting-rate and step limits",
        "oracle threshold tau from all of u's validation part at FPR alpha (0.1), not cross-fitted",
        "edits touch parameters only, never BatchNorm statistics; then repair_rounds of FedAvg (docs/methods.md)",
        "defaults eta 0.001, target_quantile 0.3, omega_tol 0.1 by the calibration rule (first default: eta 0.01)",
    )

    def __init__(self, params: MethodParams | None = None) -> None:
        super().__init__(params)
        self.trace: list[dict[str, float]] = []   # per step: u's metrics, omega, accepted (tests, debugging)
        self.generators: dict[int, tuple[Weights, Weights]] = {}  # u -> (G at start, G at end)
        self.oracles: dict[int, dict[str, float]] = {}  # u -> init report (tau, target, B_T, B_F, F and omega at w_T)

    def run(self, job: UnlearnJob) -> Weights:
        p: ForsakenParams = self.params  # type: ignore[assignment]
        rounds = MethodRounds(job)
        inside = [u for u in job.withdrawn if job.fed.ctx.window.status(u) == "open"]
        if not inside:
            log.warning("forsaken: window of %s not open; no edit, only the repair rounds run", job.withdrawn)
        self.trace, self.generators, self.oracles = [], {}, {}
        w = job.start
        for u in inside:
            w = self._edit(job, rounds, u, w)
        return job.fedavg(w, p.repair_rounds, "repair")

    def _omega(self, job: UnlearnJob, rounds: MethodRounds, w: Weights, step: int) -> float:
        """The remaining clients' mean CE under ``w`` (one query round)."""
        others = rounds.sample("query", job.remaining, step)
        replies = rounds.send("query", others, "forsaken_ce", w, rnd=step, rounds=1)
        value = weighted_mean(replies, "loss")
        if math.isnan(value):
            raise RuntimeError(f"forsaken: no remaining client answered the CE query at step {step}")
        return value

    def _edit(self, job: UnlearnJob, rounds: MethodRounds, u: int, w: Weights) -> Weights:
        p: ForsakenParams = self.params  # type: ignore[assignment]
        gen_w = get_weights(build_generator(p.hidden, seed_for(job.cfg.seed, self.name, "G", u)))
        opt_w = Weights()
        init = rounds.send("init", [u], "forsaken_init", w, rounds=1, required=True)[0].metrics
        fixed = {"tau": init["tau"], "target": init["target"], "b_t": init["b_t"], "b_f": init["b_f"]}
        if init["b_t"] == 0:
            log.warning("forsaken: no record of client %d is judged member under w_T: FR undefined; running "
                        "max_steps=%d", u, p.max_steps)
        omega = self._omega(job, rounds, w, 0)
        ceiling = omega + p.omega_tol  # the utility guard: fixed on w_T
        self.oracles[u] = {**init, "omega": omega, "omega_ceiling": ceiling}
        fr = float("nan")
        eta = p.eta  # the step tried next: halved after a rejected edit, doubled back (up to p.eta) after a kept one
        start_g = Weights((k, v.copy()) for k, v in gen_w.items())
        for t in range(1, p.max_steps + 1):
            config = {"eta_step": eta, "omega": omega, **fixed}  # this step's own values, from the server
            rep = rounds.send("edit", [u], "forsaken_step", w, config, rnd=t, rounds=1, required=True,
                              records={GEN: gen_w, GOPT: opt_w})[0]
            if EDIT not in rep.records:
                raise RuntimeError("forsaken_step returned no edit")
            m = rep.metrics
            if m["obj_before"] <= 0.0:  # every forget record is at or below t: nothing left to edit
                log.info("forsaken: every record of client %d is at the non-member level; stopping at step %d", u, t)
                break
            gen_w, opt_w, g = rep.records[GEN], rep.records.get(GOPT, Weights()), rep.records[EDIT]
            with rounds.phase("edit"):  # the server applies the proposed edit
                cand = Weights((k, (v - eta * g[k]).astype(v.dtype) if k in g else v) for k, v in w.items())
            omega_c = self._omega(job, rounds, cand, t)
            loss_edit = m["obj_after"] + p.lambda_l1 * omega_c * m["l1"]
            improves, within = loss_edit < m["obj_before"], omega_c <= ceiling
            accepted = improves and within
            self.trace.append({"step": float(t), "u": float(u), "omega": omega_c, "loss_edit": loss_edit,
                               "improves": float(improves), "within_guard": float(within),
                               "accepted": float(accepted), "eta_step": eta, **m})
            if accepted:
                w, omega, fr = cand, omega_c, m["fr"]
                job.new_model("edit", t, w)
                eta = min(p.eta, 2.0 * eta)
            else:
                eta = eta / 2.0
                if eta < p.eta * STALL:
                    log.info("forsaken: no edit down to eta * %g lowers the loss within the guard; stopping at step "
                             "%d", STALL, t)
                    break
            log.debug("forsaken step %d: F %.5f -> %.5f, |g| %.4f, omega %.4f (ceiling %.4f), fr %.3f, %s", t,
                      m["obj_before"], m["obj_after"], m["l1"], omega_c, ceiling, m["fr"],
                      "kept" if accepted else "rejected")
            if accepted and fr >= p.target_fr:
                log.info("forsaken: forgetting rate %.3f >= %.3f after %d step(s)", fr, p.target_fr, t)
                break
        self.generators[u] = (start_g, gen_w)
        log.info("forsaken: client %d, %d/%d edits kept, forgetting rate %s", u,
                 sum(int(x["accepted"]) for x in self.trace if x["u"] == u),
                 sum(1 for x in self.trace if x["u"] == u), "undefined" if math.isnan(fr) else f"{fr:.3f}")
        return w


# --------------------------------------------------------------------------------------------- client side


def init_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u, once under w_T: the A0 oracle (tau from the validation part at FPR alpha; B_T, B_F), the non-member
    target t (a quantile of the validation phi) and the starting objective. The only step that reads V_u."""
    xv, yv = rt.read("member")
    xp, yp = rt.read("validation")
    model = rt.model(weights)
    phi_v, phi_p = model_phi(model, xv, yv, rt.device), model_phi(model, xp, yp, rt.device)
    p = rt.params(ForsakenParams)
    tau = a0_threshold(phi_p, p.alpha)
    target = membership_target(phi_p, p.target_quantile)
    b_t = int((phi_v > tau).sum())
    model.eval()
    with torch.no_grad():
        z = model(torch.as_tensor(xv, dtype=torch.float32).to(rt.device))
        objective = float(forget_objective(z, torch.as_tensor(yv, dtype=torch.long).to(rt.device), target))
    return StepOutput(None, {**leakage_metrics(phi_v, phi_p), "tau": tau, "target": target, "b_t": float(b_t),
                             "b_f": float(len(xv) - b_t), "objective": objective,
                             "num-examples": float(len(xv)), "samples": float(len(xv) + len(xp))})


def generator_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u: propose a masked edit g with G, take one Adam step on G's loss, report F, |g|_1 and the FR of the edit.

    Reads D_u only: the non-member side enters as the fixed float t of the message."""
    if weights is None:
        raise ValueError("forsaken_step needs the global model and G")
    p = rt.params(ForsakenParams)
    model_w, gen_w, opt_w = weights, rt.record(GEN), rt.records.get(GOPT, Weights())
    eta_nominal, lam, omega = p.eta, p.lambda_l1, rt.value("omega", float)
    eta = rt.value("eta_step", float)
    tau, target = rt.value("tau", float), rt.value("target", float)
    b_t, b_f = rt.value("b_t", float), rt.value("b_f", float)
    dev = rt.device
    xv, yv = rt.read("member")
    xv_t = torch.as_tensor(xv, dtype=torch.float32).to(dev)
    yv_t = torch.as_tensor(yv, dtype=torch.long).to(dev)

    model = rt.model(model_w).eval()
    gen, opt = load_generator(gen_w, opt_w, p.hidden, p.lr, dev)
    st = generator_update(model, gen, opt, xv_t, yv_t, target=target, eta=eta, eta_nominal=eta_nominal, lam=lam,
                          omega=omega)

    phi_after = phi_from_logits(st.z_edited.detach().double().cpu().numpy(), yv)
    a_f = int((phi_after <= tau).sum())
    fr = (a_f - b_f) / b_t if b_t > 0 else float("nan")
    reply = {EDIT: Weights((n, e.detach().cpu().numpy().astype(model_w[n].dtype)) for n, e in st.edits.items()),
             GEN: get_weights(gen), GOPT: pack_optimizer(opt)}
    # samples: two passes over D_u (F and its gradient at w; F at the edited model and G's backward through it)
    return StepOutput(None, records=reply, metrics={
                              "obj_before": float(st.obj_before.detach()), "obj_after": float(st.obj_after.detach()),
                              "l1": float(st.l1.detach()), "loss_g": float(st.loss.detach()), "fr": fr,
                              "a_f": float(a_f), "mask_mean": float(st.mask.detach().mean()),
                              "num-examples": float(len(xv)), "samples": float(2 * len(xv))})


def ce_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """Remaining client: its mean CE on its members under the sent model (no training)."""
    x, y = rt.read("member")
    model = rt.model(weights)
    model.eval()
    with torch.no_grad():
        z = model(torch.as_tensor(x, dtype=torch.float32).to(rt.device))
        loss = float(nn.functional.cross_entropy(z, torch.as_tensor(y, dtype=torch.long).to(rt.device)))
    return StepOutput(None, {"loss": loss, "num-examples": float(len(x)), "samples": float(len(x))})


Forsaken.client_steps = {"forsaken_init": init_step, "forsaken_step": generator_step, "forsaken_ce": ce_step}
