"""``forsaken`` — a learned mask-gradient generator edits the weights until a membership oracle calls u unknown.

Paper: Zhuo Ma, Yang Liu, Ximeng Liu, Jian Liu, Jianfeng Ma, Kui Ren, "Learn to Forget: Machine Unlearning via
Neuron Masking", IEEE Transactions on Dependable and Secure Computing 20(4):3194-3207, 2023; arXiv 2003.10933 (the
arXiv version, first about user-level memorization in federated learning, lists Yang Liu first and adds Zhongyuan
Jiang and Philip Yu). A learned mask-gradient generator edits the neurons that hold the forgotten data until a
membership oracle calls it unknown; defines the forgetting rate; > 90% forgetting rate with < 5% accuracy loss over
eight datasets. No official code. Our reading (methods.md), a small learned optimizer:

1. u, during its withdrawal window: forget set V = D_u, non-member set P = H_u. A coordinate-wise generator G (MLP
   3 -> hidden -> hidden -> 1, shared by every coordinate) reads per-parameter features — the gradient on V, the
   weight, its magnitude, each scaled by its tensor's RMS — and emits a mask m in (0, 1); the masked update is
   g = m * grad / RMS(grad) (our choice of form: a mask over the gradient, so every edit is a descent direction and
   G learns *where* to edit). The gradient is that of the forgetting loss KL(pbar_V || pbar_P) (pbar = mean softmax)
   with respect to the weights, through both sides: an edit moves the outputs on P as well as on V.
2. Edit w' = w - eta * g (eta = 0.01, parameters only: BatchNorm statistics are never edited). Loss for G:
   KL(pbar_V(w') || pbar_P(w')) + lambda * omega * |g|_1 with lambda = 0.01 and |g|_1 taken as the mean absolute
   value per coordinate (ours: a plain sum would make lambda depend on the model size). omega = the remaining
   clients' mean CE on their members under the current model, a scalar they return each step (``forsaken_ce``,
   a query round), used as a weight and not differentiated. G trains with Adam (lr 1e-4), one step per message.
   The server keeps an edit only if it lowers the loss: KL(w') + lambda * omega(w') * |g|_1 < KL(w) (the edit-free
   loss of the current model), with omega(w') queried on the candidate. Backtracking (ours): a rejected edit halves
   the step tried next, a kept one doubles it back (at most eta); |g|_1 is scaled by step/eta so the penalty
   measures the edit actually tried. Without it a rejected proposal comes back nearly unchanged (G moves by about
   its learning rate per step) and the search stalls; it stops once the step falls below eta/1024.
3. Stop when the forgetting rate on V reaches ``target_fr`` (0.9) or after ``max_steps`` (100). Forgetting rate
   (leakage.md; Forsaken's FR): A0 oracle with the threshold fixed on w_T — tau = the (1 - alpha)-quantile of phi
   on all of H_u under w_T (``audit.attacks.a0_threshold``, alpha = 0.1: ours; not cross-fitted, a single fixed
   oracle is what the paper's definition needs); B_T, B_F = members judged member / non-member under w_T; after an
   edit FR = (A_F - B_F) / B_T. Only the counts and tau leave u; FR is undefined (NaN, never 0) when B_T = 0.
4. The server applies the accepted edits (it holds w; u returns g), then ``repair_rounds`` (1) of FedAvg.

Where G lives: G's weights and its Adam state travel with the model in every message to u (key prefixes
``__G__.`` and ``__Gopt__.``) and come back updated, so G persists and learns across steps while V and P never
leave u; the server only stores G's few hundred numbers between steps. (A public re-implementation rebuilt its
generator inside ``forward`` so it never learned; here G is built once by the server, seeded, and updated every
step — the tests check that its parameters change and the KL falls.)

Outside the window u cannot take part: the method logs it and only the repair rounds run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from fedunlearn.audit.attacks import a0_threshold
from fedunlearn.audit.signals import phi_from_logits
from fedunlearn.client import ClientRuntime, StepOutput
from fedunlearn.methods.base import MethodParams, UnlearnJob, UnlearningMethod
from fedunlearn.methods.mixed_round import (MethodRounds, leakage_metrics, model_phi, split_extras, weighted_mean,
                                            with_extras)
from fedunlearn.models import Weights, get_weights
from fedunlearn.training import seed_for

log = logging.getLogger(__name__)
GEN, GOPT, EDIT = "__G__.", "__Gopt__.", "__g__."
EPS = 1e-12
STALL = 2.0 ** -10  # stop once ten net halvings of the step have found no edit that lowers the loss


class ForsakenParams(MethodParams):
    eta: float = Field(0.01, gt=0, description="edit step: w <- w - eta * g (halved after a rejected edit, doubled "
                                               "back after a kept one: our choice)")
    lambda_l1: float = Field(0.01, ge=0, description="weight of omega * |g|_1 in G's loss (|g|_1 as the mean "
                                                     "absolute value per coordinate: our choice)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the generator G")
    target_fr: float = Field(0.9, description="stop once the forgetting rate on D_u reaches this")
    max_steps: int = Field(100, ge=0, description="generator steps (each: one message to u, one query round)")
    alpha: float = Field(0.1, gt=0, lt=1, description="FPR of the A0 oracle's threshold, fixed on w_T from u's "
                                                      "held-out phi (our choice)")
    hidden: int = Field(16, ge=1, description="width of G's two hidden layers (our choice)")
    repair_rounds: int = Field(1, ge=0, description="FedAvg rounds over the remaining clients after the edit")


class MaskGenerator(nn.Module):
    """G: per-coordinate features (gradient, weight, |weight|, RMS-scaled) -> mask in (0, 1)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(features)).squeeze(-1)


def build_generator(hidden: int, seed: int) -> MaskGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskGenerator(hidden)


def _pack_optimizer(opt: torch.optim.Optimizer) -> Weights:
    out = Weights()
    for i, state in opt.state_dict()["state"].items():
        for name, t in state.items():
            out[f"{i}.{name}"] = np.atleast_1d(torch.as_tensor(t).detach().cpu().numpy()).copy()
    return out


def _unpack_optimizer(opt: torch.optim.Optimizer, packed: Weights) -> None:
    if not packed:
        return
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, arr in packed.items():
        i, name = key.split(".", 1)
        t = torch.as_tensor(np.asarray(arr))
        state.setdefault(int(i), {})[name] = t.reshape(()) if name == "step" else t
    sd["state"] = state
    opt.load_state_dict(sd)


def mean_softmax_kl(z_v: torch.Tensor, z_p: torch.Tensor) -> torch.Tensor:
    """KL(pbar_V || pbar_P) of the mean softmax outputs, differentiable through both sides (an edit moves both)."""
    p = torch.softmax(z_v, dim=1).mean(0).clamp_min(EPS)
    q = torch.softmax(z_p, dim=1).mean(0).clamp_min(EPS)
    return (p * (p.log() - q.log())).sum()


class Forsaken(UnlearningMethod):
    name = "forsaken"
    paper = ("Ma, Liu, Liu, Liu, Ma, Ren, 'Learn to Forget: Machine Unlearning via Neuron Masking', IEEE TDSC 20(4), "
             "2023; arXiv 2003.10933")
    summary = "a learned mask-gradient generator edits w_T on u until the A0 oracle forgets D_u; then repair"
    granularity = ("client",)  # class mode of the paper: not wired to class withdrawals yet
    where = {"withdrawing": "trains the generator G and proposes masked edits g (window open)",
             "remaining": "report their CE under each candidate edit (query); repair rounds",
             "server": "holds G's state between steps, applies accepted edits"}
    needs_forget_data = True
    Params = ForsakenParams

    def __init__(self, params: MethodParams | None = None) -> None:
        super().__init__(params)
        self.trace: list[dict[str, float]] = []   # per step: u's metrics, omega, accepted (tests, debugging)
        self.generators: dict[int, tuple[Weights, Weights]] = {}  # u -> (G at start, G at end)
        self.oracles: dict[int, dict[str, float]] = {}  # u -> its init report (tau, B_T, B_F, KL under w_T)

    def unlearn(self, job: UnlearnJob) -> Weights:
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
        init = rounds.send("init", [u], "forsaken_init", w, {"alpha": p.alpha}, rounds=1, required=True)[0].metrics
        self.oracles[u] = dict(init)
        oracle = {"tau": init["tau"], "b_t": init["b_t"], "b_f": init["b_f"]}
        if init["b_t"] == 0:
            log.warning("forsaken: no record of client %d is judged member under w_T: FR undefined; running "
                        "max_steps=%d", u, p.max_steps)
        omega = self._omega(job, rounds, w, 0)
        fr = float("nan")
        eta = p.eta  # the step tried next: halved after a rejected edit, doubled back (up to p.eta) after a kept one
        start_g = Weights((k, v.copy()) for k, v in gen_w.items())
        for t in range(1, p.max_steps + 1):
            config = {"eta": p.eta, "eta_step": eta, "lambda_l1": p.lambda_l1, "g_lr": p.lr, "hidden": p.hidden,
                      "omega": omega, **oracle}
            msg = with_extras(with_extras(w, GEN, gen_w), GOPT, opt_w)
            rep = rounds.send("edit", [u], "forsaken_step", msg, config, rnd=t, rounds=1, required=True)[0]
            if rep.weights is None:
                raise RuntimeError("forsaken_step returned no edit")
            rest, gen_w = split_extras(rep.weights, GEN)
            rest, opt_w = split_extras(rest, GOPT)
            _, g = split_extras(rest, EDIT)
            with rounds.phase("edit"):  # the server applies the proposed edit
                cand = Weights((k, (v - eta * g[k]).astype(v.dtype) if k in g else v) for k, v in w.items())
            omega_c = self._omega(job, rounds, cand, t)
            m = rep.metrics
            loss_edit = m["kl_after"] + p.lambda_l1 * omega_c * m["l1"]
            accepted = loss_edit < m["kl_before"]
            self.trace.append({"step": float(t), "u": float(u), "omega": omega_c, "loss_edit": loss_edit,
                               "accepted": float(accepted), "eta_step": eta, **m})
            if accepted:
                w, omega, fr = cand, omega_c, m["fr"]
                eta = min(p.eta, 2.0 * eta)
            else:
                eta = eta / 2.0
                if eta < p.eta * STALL:
                    log.info("forsaken: no edit down to eta * %g lowers the loss; stopping at step %d", STALL, t)
                    break
            log.debug("forsaken step %d: kl %.5f -> %.5f, |g| %.4f, omega %.4f, fr %.3f, %s", t, m["kl_before"],
                      m["kl_after"], m["l1"], omega_c, m["fr"], "kept" if accepted else "rejected")
            if accepted and fr >= p.target_fr:
                log.info("forsaken: forgetting rate %.3f >= %.3f after %d step(s)", fr, p.target_fr, t)
                break
        self.generators[u] = (start_g, gen_w)
        log.info("forsaken: client %d, %d/%d edits kept, forgetting rate %s", u,
                 sum(int(x["accepted"]) for x in self.trace if x["u"] == u),
                 sum(1 for x in self.trace if x["u"] == u), "undefined" if math.isnan(fr) else f"{fr:.3f}")
        return w


# --------------------------------------------------------------------------------------------- client side


def _v_and_p(rt: ClientRuntime) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xv, yv = rt.read("member")
    xp, yp = rt.read("validation")
    return xv, yv, xp, yp


def init_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u, once: the A0 oracle fixed on w_T (tau from H_u at FPR alpha; B_T, B_F counts) and the starting KL."""
    xv, yv, xp, yp = _v_and_p(rt)
    model = rt.model(weights)
    phi_v, phi_p = model_phi(model, xv, yv, rt.device), model_phi(model, xp, yp, rt.device)
    tau = a0_threshold(phi_p, rt.setting("alpha", 0.1))
    b_t = int((phi_v > tau).sum())
    model.eval()
    with torch.no_grad():
        kl = float(mean_softmax_kl(model(torch.as_tensor(xv, dtype=torch.float32).to(rt.device)),
                                   model(torch.as_tensor(xp, dtype=torch.float32).to(rt.device))))
    return StepOutput(None, {**leakage_metrics(phi_v, phi_p), "tau": tau, "b_t": float(b_t),
                             "b_f": float(len(xv) - b_t), "kl": kl, "num-examples": float(len(xv)),
                             "samples": float(len(xv) + len(xp))})


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()


def generator_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u: propose a masked edit g with G, take one Adam step on G's loss, report KL, |g|_1 and the FR of the edit."""
    if weights is None:
        raise ValueError("forsaken_step needs the global model and G")
    rest, gen_w = split_extras(weights, GEN)
    model_w, opt_w = split_extras(rest, GOPT)
    eta_nominal, lam, omega = rt.setting("eta", 0.01), rt.setting("lambda_l1", 0.01), rt.setting("omega", 0.0)
    eta = rt.setting("eta_step", eta_nominal)
    tau, b_t, b_f = rt.setting("tau", 0.0), rt.setting("b_t", 0.0), rt.setting("b_f", 0.0)
    dev = rt.device
    xv, yv, xp, yp = _v_and_p(rt)
    xv_t = torch.as_tensor(xv, dtype=torch.float32).to(dev)
    xp_t = torch.as_tensor(xp, dtype=torch.float32).to(dev)

    model = rt.model(model_w).eval()
    gen = MaskGenerator(rt.setting("hidden", 16)).to(dev)
    gen.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in gen_w.items()})
    opt = torch.optim.Adam(gen.parameters(), lr=rt.setting("g_lr", 1e-4))
    _unpack_optimizer(opt, opt_w)

    names = [n for n, q in model.named_parameters() if q.dtype.is_floating_point]
    params = {n: q for n, q in model.named_parameters() if n in names}
    buffers = dict(model.named_buffers())
    kl_before = mean_softmax_kl(model(xv_t), model(xp_t))
    grads = torch.autograd.grad(kl_before, [params[n] for n in names])
    grad_scale = _rms(torch.cat([g.flatten() for g in grads])) + EPS
    feats = []
    for n, gr in zip(names, grads):
        w_n = params[n].detach()
        w_scale = _rms(w_n) + EPS
        feats.append(torch.stack([(gr / (_rms(gr) + EPS)).flatten(), (w_n / w_scale).flatten(),
                                  (w_n.abs() / w_scale).flatten()], dim=1))
    grad_flat = torch.cat([g.flatten() for g in grads]) / grad_scale
    mask = gen(torch.cat(feats))
    g_flat = mask * grad_flat
    pieces = torch.split(g_flat, [params[n].numel() for n in names])
    edits = {n: piece.reshape(params[n].shape) for n, piece in zip(names, pieces)}
    edited = {n: params[n].detach() - eta * edits[n] for n in names}
    z_v = functional_call(model, {**edited, **buffers}, (xv_t,))
    z_p = functional_call(model, {**edited, **buffers}, (xp_t,))
    kl_after = mean_softmax_kl(z_v, z_p)
    l1 = g_flat.abs().mean() * (eta / eta_nominal)  # |g|_1 of the edit actually tried, in units of the nominal step
    loss = kl_after + lam * omega * l1
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

    phi_after = phi_from_logits(z_v.detach().double().cpu().numpy(), yv)
    a_f = int((phi_after <= tau).sum())
    fr = (a_f - b_f) / b_t if b_t > 0 else float("nan")
    reply = with_extras(Weights(), EDIT, Weights((n, e.detach().cpu().numpy().astype(model_w[n].dtype))
                                                 for n, e in edits.items()))
    reply = with_extras(reply, GEN, get_weights(gen))
    reply = with_extras(reply, GOPT, _pack_optimizer(opt))
    return StepOutput(reply, {"kl_before": float(kl_before.detach()), "kl_after": float(kl_after.detach()),
                              "l1": float(l1.detach()), "loss_g": float(loss.detach()), "fr": fr, "a_f": float(a_f),
                              "mask_mean": float(mask.detach().mean()),
                              "num-examples": float(len(xv)), "samples": float(3 * (len(xv) + len(xp)))})


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
