"""UNSIR's numerics on arrays and models, apart from the method: fitting the error-maximizing noise (class and
sample level), the retained subset, how much noise a client mixes in and in which order, and the impair passes that
train on the mix. No client runtime or message here, so the federated and the central impair run the same code."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedunlearn.training import TrainResult, train_epochs


def _frozen_eval(model: nn.Module) -> list[bool]:
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def _unfreeze(model: nn.Module, flags: list[bool]) -> None:
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)


def class_noise(model: nn.Module, cls: int, n: int, input_shape: tuple[int, ...], *, steps: int, lr: float,
                reg: float, seed: int, device: torch.device) -> np.ndarray:
    """UNSIR's error-maximizing noise for class ``cls``: argmin_N −CE(f(N), cls) + reg·mean‖N_i‖² (model frozen)."""
    flags = _frozen_eval(model)
    try:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *input_shape), generator=gen).to(device).requires_grad_(True)
        labels = torch.full((n,), cls, dtype=torch.long, device=device)
        opt = torch.optim.Adam([noise], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = -nn.functional.cross_entropy(model(noise), labels) + reg * noise.pow(2).flatten(1).sum(1).mean()
            loss.backward()
            opt.step()
        return noise.detach().cpu().numpy().astype(np.float32)
    finally:
        _unfreeze(model, flags)


def sample_noise(model: nn.Module, x: torch.Tensor, *, steps: int, lr: float, low: float, high: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, float, float]:
    """Sample-level UNSIR: noise maximizing MSE(f(noise), f(x)) for one forget batch, clamped to [low, high].

    Returns the noise and the MSE before and after fitting (the property the method relies on)."""
    flags = _frozen_eval(model)
    try:
        with torch.no_grad():
            target = model(x)
        noise = torch.randn(x.shape, generator=generator).to(x.device).clamp_(low, high).requires_grad_(True)
        opt = torch.optim.Adam([noise], lr=lr)
        with torch.no_grad():
            before = float(nn.functional.mse_loss(model(noise), target))
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = -nn.functional.mse_loss(model(noise), target)
            loss.backward()
            opt.step()
            with torch.no_grad():
                noise.clamp_(low, high)
        with torch.no_grad():
            after = float(nn.functional.mse_loss(model(noise), target))
        return noise.detach(), before, after
    finally:
        _unfreeze(model, flags)


def retained_subset(x: np.ndarray, y: np.ndarray, exclude: set[int], per_class: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_class`` records of each class not in ``exclude`` (seeded choice, original order kept)."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in np.unique(y):
        if int(c) in exclude:
            continue
        idx = np.flatnonzero(y == c)
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, size=per_class, replace=False))
        keep.append(idx)
    sel = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return x[sel], y[sel]


def noise_count(n_retained: int, *, ratio: float | None, copies: int, noise_total: int) -> int:
    """Class mode: how many noise records a client with ``n_retained`` retained records mixes in.

    ``copies = 0`` is the ablation (none); with ``ratio`` the volume follows the client's data (the notebook's
    1.28 noise records per retained record by default); ``ratio = None`` is the notebook's absolute volume,
    ``copies`` x every noise batch (``noise_total`` records)."""
    if copies == 0 or noise_total == 0:
        return 0
    return copies * noise_total if ratio is None else int(round(ratio * n_retained))


def take_noise(noise_x: np.ndarray, noise_y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` records of the noise batches with classes interleaved, cycling through them (copies)."""
    if n == 0 or len(noise_x) == 0:
        return noise_x[:0], noise_y[:0]
    classes = np.unique(noise_y)
    per = [np.flatnonzero(noise_y == c) for c in classes]
    width = max(len(p) for p in per)
    order = np.array([p[i % len(p)] for i in range(width) for p in per])  # c0[0], c1[0], ..., c0[1], c1[1], ...
    idx = order[np.arange(n) % len(order)]
    return noise_x[idx], noise_y[idx]


def impair_train(model: nn.Module, x: np.ndarray, y: np.ndarray, noise_x: np.ndarray, noise_y: np.ndarray, *,
                 n_noise: int, lr: float, batch_size: int, epochs: int, seed: int,
                 device: torch.device) -> tuple[TrainResult, int]:
    """Class-level impair: Adam on ``n_noise`` noise records (with their class labels) mixed with retained records.

    A function of arrays, so the central impair (pooled data) and the federated one run the same code. Returns the
    training result and the number of optimizer steps."""
    nx, ny = take_noise(noise_x, noise_y, n_noise)
    xs = np.concatenate([nx.astype(np.float32), x.astype(np.float32)])
    ys = np.concatenate([ny.astype(np.int64), y.astype(np.int64)])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    res = train_epochs(model, xs, ys, epochs=epochs, batch_size=batch_size, optimizer=opt, seed=seed, device=device)
    return res, epochs * math.ceil(len(xs) / batch_size)


def paired_noise(noise_x: np.ndarray, y_batch: np.ndarray, copies: int, order: np.ndarray,
                 start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """UNSIR-1's pairing: the next ``copies`` x |batch| noise inputs in ``order`` (cyclic), each labelled with the
    label of the retained record it is paired with (copy k of record j carries y_batch[j]). Returns the inputs,
    their labels and the next position in the cycle."""
    n = copies * len(y_batch)
    idx = order[(start + np.arange(n)) % len(order)]
    return noise_x[idx], np.tile(y_batch, copies), start + n


def paired_impair_train(model: nn.Module, x: np.ndarray, y: np.ndarray, noise_x: np.ndarray, *, copies: int,
                        lr: float, batch_size: int, epochs: int, seed: int, noise_seed: int,
                        device: torch.device) -> tuple[TrainResult, int]:
    """Client-level impair (UNSIR-1): plain SGD over the retained batches, each with its paired noise.

    Loss per step: (Σ CE(f(noise), paired retained labels) + Σ CE(f(x_r), y_r)) / |batch| — the reference's
    CE(noise, y_r) + CE(x_r, y_r) for one copy. The retained batches are drawn exactly as ``train_epochs`` draws
    them, so ``copies = 0`` is ``train_epochs`` with plain SGD on the retained records (the ablation).
    Returns the result (loss, accuracy on the retained records) and the number of optimizer steps."""
    use_noise = copies > 0 and len(noise_x) > 0
    order = np.random.default_rng(noise_seed).permutation(len(noise_x)) if use_noise else np.zeros(0, np.int64)
    pos = 0

    def noise_term(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        nonlocal pos
        nx, ny, pos = paired_noise(noise_x, y[idx.numpy()], copies, order, pos)
        xn = torch.as_tensor(nx, dtype=torch.float32, device=device)
        yn = torch.as_tensor(ny, dtype=torch.long, device=device)
        return nn.functional.cross_entropy(model(xn), yn, reduction="sum") / len(idx), len(nx)

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    res = train_epochs(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt, seed=seed, device=device,
                       extra_loss=noise_term if use_noise else None)
    return res, epochs * math.ceil(len(x) / batch_size)
