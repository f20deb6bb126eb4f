"""Plain PyTorch loops shared by clients, methods and the auditor: local training, evaluation, logits."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import NumericalError

#: torch intra-op threads per process (and so per Ray client actor, which takes one CPU): 1 by default, because
#: torch's default of one thread per core ran in-process training ~40x slower when the cores were busy on a 2-core
#: machine. ``FEDUNLEARN_TORCH_THREADS=N`` sets another count (e.g. one big in-process run on an idle machine).
TORCH_THREADS = int(os.environ.get("FEDUNLEARN_TORCH_THREADS", "1"))
if torch.get_num_threads() != TORCH_THREADS:
    torch.set_num_threads(TORCH_THREADS)


@dataclass(frozen=True)
class TrainResult:
    loss: float          # mean training loss over the last epoch
    accuracy: float      # training accuracy over the last epoch
    samples: int         # samples processed (all epochs): the cost ledger's client-samples


def seed_for(*parts: int | str) -> int:
    """A deterministic 63-bit seed from labelled parts (experiment seed, phase, round, client); a text label counts
    whole (hashed), so "reference_a" and "reference_b" draw differently."""
    ss = np.random.SeedSequence([p if isinstance(p, int) else _label(p) for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def _label(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def train_epochs(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    extra_loss: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None,
    lr_key: str = "the step's learning rate",
) -> TrainResult:
    """Minibatch training with a seeded shuffle; ``after_step`` runs after every optimizer step (e.g. projection);
    ``extra_loss(batch indices)`` adds a term to each batch's loss and says how many more samples it processed
    (e.g. UNSIR-1's paired noise), counted in ``samples``. A NaN or infinite loss stops at once with
    ``NumericalError`` ("loss is nan: lower <lr_key>"), so a diverging round fails where it happens."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    samples = 0
    total_loss, correct, seen = 0.0, 0, 0
    for epoch in range(epochs):
        total_loss, correct, seen = 0.0, 0, 0
        for idx in batches(len(xt), batch_size, gen):
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            if extra_loss is not None:
                term, n_extra = extra_loss(idx)
                loss = loss + term
                samples += n_extra
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NumericalError(f"loss is {value} in epoch {epoch + 1}: lower {lr_key}")
            total_loss += value * len(idx)
            correct += int((out.detach().argmax(1) == yb).sum())
            seen += len(idx)
        samples += seen
    return TrainResult(loss=total_loss / max(seen, 1), accuracy=correct / max(seen, 1), samples=samples)


def sgd(model: nn.Module, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@torch.no_grad()
def logits(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """Model outputs (eval mode) as float64 numpy, in input order."""
    model.to(device).eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    outs = [model(xt[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(xt), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    z = torch.as_tensor(logits(model, x, device))
    yt = torch.as_tensor(y, dtype=torch.long)
    loss = float(nn.functional.cross_entropy(z, yt))
    acc = float((z.argmax(1) == yt).double().mean())
    return loss, acc
