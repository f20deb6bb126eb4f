"""Forsaken's numerics, apart from the method: the per-record forgetting objective and its non-member target, the
mask generator G, G's state between messages (its weights and Adam moments as weight sets, since clients keep no
state), and one learning step of G. Functions of tensors and weight sets, so u's step and the tests share them."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedunlearn.methods.mixed_round import phi
from fedunlearn.models import Weights

EPS = 1e-12


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


def pack_optimizer(opt: torch.optim.Optimizer) -> Weights:
    out = Weights()
    for i, state in opt.state_dict()["state"].items():
        for name, t in state.items():
            out[f"{i}.{name}"] = np.atleast_1d(torch.as_tensor(t).detach().cpu().numpy()).copy()
    return out


def unpack_optimizer(opt: torch.optim.Optimizer, packed: Weights) -> None:
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


def membership_target(phi_nonmember: np.ndarray, quantile: float) -> float:
    """The non-member level t: the ``quantile``-quantile of phi on u's validation part, a plain float (detached)."""
    non = np.asarray(phi_nonmember, dtype=np.float64)
    if non.ndim != 1 or non.shape[0] == 0:
        raise ValueError("membership_target needs a non-empty 1-D array of validation phi")
    return float(np.quantile(non, quantile))


def forget_objective(z: torch.Tensor, y: torch.Tensor, target: float) -> torch.Tensor:
    """F = mean over forget records of relu(phi(x) - t): per record, a function of each record's phi alone (the
    label mix of the set does not enter), one-sided (a record at or below the non-member level t is left alone)."""
    if isinstance(target, torch.Tensor):
        raise TypeError("the non-member target must be a fixed float, not a tensor (no gradient may reach it)")
    return torch.relu(phi(z, y) - float(target)).mean()


def load_generator(gen_w: Weights, opt_w: Weights, hidden: int, lr: float,
                   device: torch.device) -> tuple[MaskGenerator, torch.optim.Optimizer]:
    """G and its Adam optimizer rebuilt from the weight sets a message carries (an empty ``opt_w``: fresh moments)."""
    gen = MaskGenerator(hidden).to(device)
    gen.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in gen_w.items()})
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    unpack_optimizer(opt, opt_w)
    return gen, opt


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()


class GeneratorStep(NamedTuple):
    """One step of G: the proposed edit g per parameter, the forget logits under w - eta * g, G's mask, and the
    scalars of G's loss (F before and after the edit, |g|_1 of the edit tried, the loss itself)."""

    edits: dict[str, torch.Tensor]
    z_edited: torch.Tensor
    mask: torch.Tensor
    obj_before: torch.Tensor
    obj_after: torch.Tensor
    l1: torch.Tensor
    loss: torch.Tensor


def generator_update(model: nn.Module, gen: MaskGenerator, opt: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, *, target: float, eta: float, eta_nominal: float, lam: float,
                     omega: float) -> GeneratorStep:
    """G proposes the masked edit g = mask * grad F / RMS(grad F) for ``model`` (in eval mode) on the forget records
    (x, y), and takes one Adam step on F(w - eta * g) + lam * omega * |g|_1 (``model`` itself is not changed)."""
    names = [n for n, q in model.named_parameters() if q.dtype.is_floating_point]
    params = {n: q for n, q in model.named_parameters() if n in names}
    buffers = dict(model.named_buffers())
    obj_before = forget_objective(model(x), y, target)
    grads = torch.autograd.grad(obj_before, [params[n] for n in names])
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
    z_v = functional_call(model, {**edited, **buffers}, (x,))
    obj_after = forget_objective(z_v, y, target)
    l1 = g_flat.abs().mean() * (eta / eta_nominal)  # |g|_1 of the edit actually tried, in units of the nominal step
    loss = obj_after + lam * omega * l1
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return GeneratorStep(edits, z_v, mask, obj_before, obj_after, l1, loss)
