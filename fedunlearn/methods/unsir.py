"""``unsir`` — error-maximizing noise, one impair round, one repair round.

Paper: Ayush K. Tarun, Vikram S. Chundawat, Murari Mandal, Mohan Kankanhalli, "Fast Yet Effective Machine
Unlearning", IEEE Transactions on Neural Networks and Learning Systems (TNNLS) 2023, arXiv 2111.08947 (official
notebook public). Client-level variant: the sample-level UNSIR of Dasol Choi, Dongbin Na, "Towards Machine
Unlearning Benchmarks: Forgetting the Personal Identities in Facial Recognition Systems", 2023, arXiv 2311.02240
("UNSIR-1").

Federated split (methods.md), chosen by the kind of withdrawal:
- class level (``withdraw.classes``: forget those labels in every client's data; ``UnlearnJob.forget_classes``):
  1. server, no data: per forgotten class c a noise batch N_c (256 inputs, init N(0, 1)) minimizing
     −CE(f(N_c), c) + 0.1·mean_i ‖N_i‖² with Adam lr 0.1 for 40 steps, model in eval mode, weights frozen;
  2. impair (``unsir_impair``, one FedAvg round): each remaining client trains one epoch, Adam lr 0.02, batch 256,
     on 20 copies of the noise batches (labelled with their class) mixed with up to 1,000 of its own samples per
     retained class (samples of the forgotten classes are excluded);
  3. repair (``unsir_repair``, ``repair_rounds`` FedAvg rounds): the same retained subset only, Adam lr 0.01,
     one epoch. ``profile = "low_lr"`` uses 1e-4 for impair and repair.
- client level (the default; a withdrawing client's data is not whole classes):
  1. u, inside its withdrawal window (``unsir_noise``): per forget batch, noise maximizing the MSE between the
     model's logits on the noise and on that batch (5 Adam steps, lr 0.01, clamped after each step to the range
     of u's inputs). u sends the noise and its labels to the server — not its records;
  2. the server forwards the noise with the model to the remaining clients, which impair on it exactly as above
     (``sample_noise_copies`` copies, mixed with their retained subset: all classes are retained);
  3. repair as above. u is never addressed after step 1.

Our choices and departures:
- the notebook labels every noise batch as class 0 and leaves BatchNorm in train mode; we use the true class and
  eval mode (methods.md);
- "impair trains on that noise with retained labels": we read "retained" as *kept from the forget batch*, i.e. each
  noise sample carries the label of the forget sample it was fitted against — the sample-level analogue of the
  class-level noise carrying its class; the labels leave u with the noise (they tell the server u's label counts);
- client mode impairs on one copy of the noise (each noise sample stands in for one forgotten sample, as in the
  per-batch pass of Choi & Na); noise init N(0, 1) clamped to the input range;
- the retained subset is a seeded sample of up to ``per_class`` records per class, the same in impair and repair;
  FedAvg weights are the clients' retained-subset sizes; repair uses the impair batch size (256).

Federated vs central impair (methods.md asks to measure it; ``test_federated_impair_is_weaker_than_central`` in
``tests/unit/test_methods_unsir.py``). Class 0 forgotten, 3 remaining clients, one impair round at lr 0.02, test
accuracy (forgotten class / retained classes) of w_T → FedAvg of the local impairs vs one central impair pass over
the pooled retained subsets and the same noise:
- tiny set-up (3 classes, ~57 retained records per client), noise 64 × 1 copy: 0.65/0.90 → federated 0.53/0.94 vs
  central 0.38/0.94;
- 5 classes, 3,000 records (~360 retained per client), noise 64 × 1: 0.64/0.85 → federated 0.18/0.92 vs central
  0.00/0.92.
The federated impair forgets markedly less. A likely reason: Adam's first steps have about the same size (≈ lr) on
every coordinate whatever the gradient's magnitude, the clients' steps disagree in sign on many coordinates, and so
their average is shorter than one central step along the pooled gradient. A high-lr impair therefore needs more (or
larger) rounds in a federation than centrally.
With the paper's noise volume (20 copies of 256 per class = 5,120 records) against a client's few hundred retained
records, the impair set is almost all noise and the model collapses toward the forgotten class instead of away
from it: tiny 0.65/0.90 → federated 0.75/0.34 (central 0.65/0.46); 5 classes 0.64/0.85 → 0.52/0.19 (central
0.20/0.28). The notebook mixes 10,240 noise records with 8,000 retained ones; keep
``noise_samples × noise_copies`` of the order of a client's retained subset.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedunlearn.client import ClientRuntime, StepOutput
from fedunlearn.errors import ConfigError, PhaseFailed
from fedunlearn.methods.base import MethodParams, UnlearnJob, UnlearningMethod
from fedunlearn.models import Weights, build_model, get_weights, resolve_device, set_weights
from fedunlearn.training import TrainResult, batches, seed_for, train_epochs

log = logging.getLogger(__name__)
NOISE_STEP, IMPAIR_STEP, REPAIR_STEP = "unsir_noise", "unsir_impair", "unsir_repair"
EXTRA = "__unsir__."            # non-weight arrays travelling in the weights dict under this prefix
NOISE_X, NOISE_Y = EXTRA + "noise_x", EXTRA + "noise_y"
LOW_LR = 1e-4


class UNSIRParams(MethodParams):
    profile: Literal["default", "low_lr"] = Field("default", description="low_lr: 1e-4 for impair and repair")
    noise_samples: int = Field(256, ge=1, description="class mode: inputs per noise batch")
    noise_steps: int = Field(40, ge=1, description="class mode: Adam steps fitting each noise batch")
    noise_lr: float = Field(0.1, gt=0, description="class mode: Adam lr of the noise")
    noise_reg: float = Field(0.1, ge=0, description="class mode: weight of mean ‖N_i‖²")
    noise_copies: int = Field(20, ge=1, description="class mode: copies of the noise batches in the impair set")
    sample_noise_steps: int = Field(5, ge=1, description="client mode: Adam steps per forget batch")
    sample_noise_lr: float = Field(0.01, gt=0, description="client mode: Adam lr of the noise")
    sample_noise_copies: int = Field(1, ge=1, description="client mode: copies of u's noise in the impair set")
    per_class: int = Field(1000, ge=1, description="retained samples per class each client uses")
    impair_lr: float = Field(0.02, gt=0, description="Adam lr of the impair round")
    repair_lr: float = Field(0.01, gt=0, description="Adam lr of the repair round")
    batch_size: int = Field(256, ge=1, description="impair/repair batch size (and client mode's forget batches)")
    impair_epochs: int = Field(1, ge=1)
    repair_epochs: int = Field(1, ge=1)
    repair_rounds: int = Field(1, ge=0)

    @property
    def lrs(self) -> tuple[float, float]:
        """(impair lr, repair lr) after the profile."""
        return (LOW_LR, LOW_LR) if self.profile == "low_lr" else (self.impair_lr, self.repair_lr)


# ----------------------------------------------------------------------------------------- pure numerics


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


def impair_train(model: nn.Module, x: np.ndarray, y: np.ndarray, noise_x: np.ndarray, noise_y: np.ndarray, *,
                 copies: int, lr: float, batch_size: int, epochs: int, seed: int, device: torch.device) -> TrainResult:
    """UNSIR's impair: Adam on ``copies`` copies of the noise (with its labels) mixed with retained records.

    A function of arrays, so the central impair (pooled data) and the federated one run the same code."""
    xs = np.concatenate([np.tile(noise_x, (copies,) + (1,) * (noise_x.ndim - 1)), x.astype(np.float32)])
    ys = np.concatenate([np.tile(noise_y.astype(np.int64), copies), y.astype(np.int64)])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train_epochs(model, xs, ys, epochs=epochs, batch_size=batch_size, optimizer=opt, seed=seed, device=device)


def split_extras(weights: Weights) -> tuple[Weights, Weights]:
    """(model weights, extra arrays) of a weights dict that carries UNSIR's noise."""
    model = Weights((k, v) for k, v in weights.items() if not k.startswith(EXTRA))
    extra = Weights((k, v) for k, v in weights.items() if k.startswith(EXTRA))
    return model, extra


def _classes(setting: str) -> set[int]:
    return {int(c) for c in setting.split(",") if c.strip()}


# ----------------------------------------------------------------------------------------- client steps


def noise_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """u's half (client mode): fit sample-level noise against each forget batch; return the noise, not the data."""
    if weights is None:
        raise ValueError(f"{NOISE_STEP}: needs the model to unlearn")
    x, y = rt.read("member")
    model = rt.model(weights)
    low, high = float(np.min(x)), float(np.max(x))
    xt = torch.as_tensor(x, dtype=torch.float32)
    gen = torch.Generator().manual_seed(rt.seed(NOISE_STEP))
    noises, labels, before, after = [], [], [], []
    for idx in batches(len(xt), rt.setting("batch_size", 256), gen):
        n, b, a = sample_noise(model, xt[idx].to(rt.device), steps=rt.setting("steps", 5), lr=rt.setting("lr", 0.01),
                               low=low, high=high, generator=gen)
        noises.append(n.cpu().numpy())
        labels.append(y[idx.numpy()])
        before.append(b * len(idx))
        after.append(a * len(idx))
    out = Weights([(NOISE_X, np.concatenate(noises).astype(np.float32)),
                   (NOISE_Y, np.concatenate(labels).astype(np.int64))])
    return StepOutput(out, {"num-examples": float(len(x)), "samples": float(len(x) * rt.setting("steps", 5)),
                            "mse_before": float(sum(before) / len(x)), "mse_after": float(sum(after) / len(x))})


def impair_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """A remaining client's impair: one epoch on the forwarded noise mixed with its retained subset."""
    if weights is None:
        raise ValueError(f"{IMPAIR_STEP}: needs the model and the noise")
    model_w, extra = split_extras(weights)
    if NOISE_X not in extra:
        raise ValueError(f"{IMPAIR_STEP}: no noise in the message")
    x, y = _retained(rt)
    model = rt.model(model_w)
    res = impair_train(model, x, y, extra[NOISE_X], extra[NOISE_Y], copies=rt.setting("copies", 1),
                       lr=rt.setting("lr", 0.02), batch_size=rt.setting("batch_size", 256),
                       epochs=rt.setting("epochs", 1), seed=rt.seed(IMPAIR_STEP), device=rt.device)
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples),
                                           "loss": res.loss, "accuracy": res.accuracy})


def repair_step(rt: ClientRuntime, weights: Weights | None, message: dict[str, Any]) -> StepOutput:
    """A remaining client's repair: Adam on its retained subset only."""
    if weights is None:
        raise ValueError(f"{REPAIR_STEP}: needs the model")
    x, y = _retained(rt)
    model = rt.model(split_extras(weights)[0])
    opt = torch.optim.Adam(model.parameters(), lr=rt.setting("lr", 0.01))
    res = train_epochs(model, x, y, epochs=rt.setting("epochs", 1), batch_size=rt.setting("batch_size", 256),
                       optimizer=opt, seed=rt.seed(REPAIR_STEP), device=rt.device)
    return StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples),
                                           "loss": res.loss, "accuracy": res.accuracy})


def _retained(rt: ClientRuntime) -> tuple[np.ndarray, np.ndarray]:
    """The client's retained subset; seeded per client only, so impair and repair use the same records."""
    x, y = rt.read("member")
    return retained_subset(x, y, _classes(rt.setting("forget_classes", "")), rt.setting("per_class", 1000),
                           seed_for(rt.cfg.seed, "unsir", "retained", rt.pid))


# ----------------------------------------------------------------------------------------- method


class UNSIR(UnlearningMethod):
    name = "unsir"
    paper = ("Tarun, Chundawat, Mandal, Kankanhalli, 'Fast Yet Effective Machine Unlearning', IEEE TNNLS 2023, "
             "arXiv 2111.08947; sample-level variant: Choi & Na 2023, arXiv 2311.02240")
    summary = "error-maximizing noise, one high-lr impair round on noise + retained data, one repair round"
    granularity = ("client", "class")
    where = {"server": "class mode: fits the error-maximizing noise per forgotten class; forwards the noise",
             "withdrawing": "client mode: fits sample-level noise against its forget batches",
             "remaining": "impair on noise + retained subset (Adam, high lr), then repair on the retained subset"}
    needs_forget_data = True
    Params = UNSIRParams
    client_steps = {NOISE_STEP: noise_step, IMPAIR_STEP: impair_step, REPAIR_STEP: repair_step}

    def unlearn(self, job: UnlearnJob) -> Weights:
        p: UNSIRParams = self.params  # type: ignore[assignment]
        if job.forget_classes:
            noise, copies = self._server_noise(job, p), p.noise_copies
        else:
            noise, copies = self._client_noise(job, p), p.sample_noise_copies
        impair_lr, repair_lr = p.lrs
        common = {"forget_classes": ",".join(map(str, sorted(job.forget_classes))), "per_class": p.per_class,
                  "batch_size": p.batch_size}
        w = job.fedavg(Weights(list(job.start.items()) + list(noise.items())), 1, "impair", step=IMPAIR_STEP,
                       fraction=1.0, config={**common, "copies": copies, "lr": impair_lr, "epochs": p.impair_epochs})
        return job.fedavg(w, p.repair_rounds, "repair", step=REPAIR_STEP, fraction=1.0,
                          config={**common, "lr": repair_lr, "epochs": p.repair_epochs})

    def _server_noise(self, job: UnlearnJob, p: UNSIRParams) -> Weights:
        """Class mode: the server fits one noise batch per forgotten class from the model alone."""
        from fedunlearn.client import experiment_data

        ds = experiment_data(job.cfg)[0]  # shapes and class count only: no client records are read
        bad = [c for c in job.forget_classes if not 0 <= c < ds.num_classes]
        if bad:
            raise ConfigError(f"withdraw.classes: {bad} out of range; allowed: 0..{ds.num_classes - 1}")
        with job.server("noise"):
            device = resolve_device(job.cfg.sim.device)
            # seeded, so the global RNG is untouched; the weights are replaced at once
            model = build_model(job.cfg.model, ds.input_shape, ds.num_classes, seed=job.cfg.seed)
            model = set_weights(model, job.start).to(device)
            xs = [class_noise(model, c, p.noise_samples, ds.input_shape, steps=p.noise_steps, lr=p.noise_lr,
                              reg=p.noise_reg, seed=seed_for(job.cfg.seed, "unsir", "noise", c), device=device)
                  for c in sorted(set(job.forget_classes))]
            ys = [np.full(p.noise_samples, c, dtype=np.int64) for c in sorted(set(job.forget_classes))]
        return Weights([(NOISE_X, np.concatenate(xs)), (NOISE_Y, np.concatenate(ys))])

    def _client_noise(self, job: UnlearnJob, p: UNSIRParams) -> Weights:
        """Client mode: each withdrawing client fits noise against its own forget batches and sends it."""
        config = {"steps": p.sample_noise_steps, "lr": p.sample_noise_lr, "batch_size": p.batch_size}
        replies = job.send(job.withdrawn, NOISE_STEP, job.start, "noise", config)
        bad = [r for r in replies if not r.ok or r.weights is None]
        if bad:
            raise PhaseFailed("unsir: noise step failed: " + "; ".join(f"client {r.pid}: {r.error}" for r in bad))
        for r in replies:
            log.info("unsir: client %d noise, logit MSE %.4g -> %.4g", r.pid, r.metrics.get("mse_before", 0.0),
                     r.metrics.get("mse_after", 0.0))
        return Weights([(NOISE_X, np.concatenate([r.weights[NOISE_X] for r in replies])),  # type: ignore[index]
                        (NOISE_Y, np.concatenate([r.weights[NOISE_Y] for r in replies]))])  # type: ignore[index]
