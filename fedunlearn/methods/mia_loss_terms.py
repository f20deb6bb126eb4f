"""mia_loss's numerics, apart from the method: the leak terms (Gaussian softplus-LLR, the attack MLP and its fit), the
KL term, and the aggregate weights of a mixed round that make the average follow the paper's objective. Pure
functions of tensors and counts, so u's steps, the server and the tests share them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def mixed_weights(n_forget: Sequence[int], n_remaining: Sequence[int], lam: float) -> tuple[list[float], list[float]]:
    """Aggregate weights of a mixed round: the withdrawing clients share lam/(1+lam), the remaining 1/(1+lam), each
    group by example count, so the averaged update follows grad[CE(D_r) + lam * F(D_u)] (module docstring). A group
    that sent nothing leaves the whole weight to the other."""
    nf, nr = sum(max(n, 1) for n in n_forget), sum(max(n, 1) for n in n_remaining)
    share_f = (lam / (1.0 + lam) if nr else 1.0) if nf else 0.0
    return ([share_f * max(n, 1) / nf for n in n_forget],
            [(1.0 - share_f) * max(n, 1) / nr for n in n_remaining])


def attack_net(num_classes: int, hidden: int, seed: int) -> nn.Module:
    """The attack MLP on sorted softmax vectors (seeded init, so every node builds the same one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def sorted_probs(z: torch.Tensor) -> torch.Tensor:
    return torch.sort(torch.softmax(z, dim=1), dim=1, descending=True).values


def gaussian_leak(phi_values: torch.Tensor, mu_in: float, sd_in: float, mu_out: float, sd_out: float) -> torch.Tensor:
    """Mean softplus of the Gaussian log-likelihood ratio member/non-member of phi (= -log P(out | phi))."""
    llr = (np.log(sd_out / sd_in) - (phi_values - mu_in) ** 2 / (2 * sd_in ** 2)
           + (phi_values - mu_out) ** 2 / (2 * sd_out ** 2))
    return nn.functional.softplus(llr).mean()


def mean_softmax_kl(z_forget: torch.Tensor, z_heldout: torch.Tensor) -> torch.Tensor:
    """KL(pbar(D_u) || pbar(V_u)) of the batch-mean softmax outputs; the validation side is a fixed target."""
    p = torch.softmax(z_forget, dim=1).mean(0).clamp_min(1e-12)
    q = torch.softmax(z_heldout.detach(), dim=1).mean(0).clamp_min(1e-12)
    return (p * (p.log() - q.log())).sum()


def fit_attack(z_member: np.ndarray, z_heldout: np.ndarray, *, num_classes: int, hidden: int, epochs: int,
               lr: float, seed: int, device: torch.device) -> tuple[nn.Module, np.ndarray, float]:
    """The attack MLP, trained full-batch with Adam on balanced BCE to tell members' sorted softmax vectors from
    validation records'; returns the net, its scores (members first) and its last training loss."""
    net = attack_net(num_classes, hidden, seed).to(device)
    feats = sorted_probs(torch.as_tensor(np.concatenate([z_member, z_heldout]), dtype=torch.float32)).to(device)
    target = torch.cat([torch.ones(len(z_member)), torch.zeros(len(z_heldout))]).to(device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(len(z_heldout) / max(len(z_member), 1), device=device))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(feats).squeeze(1), target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = net(feats).squeeze(1).cpu().numpy()
    return net, score, float(loss.detach())
