"""Cached per-record signals: the only thing an attack ever sees (never a model).

The logit-scaled confidence phi(x) = log p_y - log(1 - p_y) is the statistic of LiRA (Carlini et al., "Membership
Inference Attacks From First Principles", IEEE S&P 2022, arXiv:2112.03570) and of our loss attack; it is computed
directly from logits with ``logsumexp`` in float64 so that confident records (p_y -> 1) keep finite, exact values.
The model-inference half (running a torch model to get logits) lives elsewhere; this module is numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

__all__ = ["AttackInput", "RecordSignals", "phi_from_logits", "signals_from_logits"]


def _as_1d_float64(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class RecordSignals:
    """Per-record outputs of one model on a set of records.

    Parameters
    ----------
    prob_true:
        float64 (n,), p_y(x): softmax probability of the true label.
    phi:
        float64 (n,), logit-scaled confidence log p_y - log(1 - p_y), computed stably from logits.
    """

    prob_true: np.ndarray
    phi: np.ndarray

    def __post_init__(self) -> None:
        prob = _as_1d_float64("prob_true", self.prob_true)
        phi = _as_1d_float64("phi", self.phi)
        if prob.shape != phi.shape:
            raise ValueError(f"prob_true {prob.shape} and phi {phi.shape} must have the same shape")
        object.__setattr__(self, "prob_true", prob)
        object.__setattr__(self, "phi", phi)

    def __len__(self) -> int:
        return int(self.phi.shape[0])


def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (n, classes >= 2), got {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}]")
    return z, y.astype(np.intp, copy=False)


def phi_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit-scaled confidence ``log p_y - log(sum_{j != y} p_j)`` in float64.

    Equals ``z_y - logsumexp_{j != y} z_j``: the softmax normaliser cancels, so there is no ``log(1 - p)`` and no
    catastrophic cancellation when p_y rounds to 1.
    """
    z, y = _check_logits(logits, labels)
    rows = np.arange(z.shape[0])
    z_true = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return z_true - logsumexp(others, axis=1)


def signals_from_logits(logits: np.ndarray, labels: np.ndarray) -> RecordSignals:
    """``RecordSignals`` (p_y and phi, both float64) of one model from its logits on labelled records."""
    z, y = _check_logits(logits, labels)
    rows = np.arange(z.shape[0])
    log_p_true = z[rows, y] - logsumexp(z, axis=1)
    return RecordSignals(prob_true=np.exp(log_p_true), phi=phi_from_logits(z, y))


@dataclass(frozen=True)
class AttackInput:
    """Everything an attack may use for one (model, client).

    Parameters
    ----------
    member, nonmember:
        Signals of the model under audit on the client's members M_k and held-out records H_k.
    original_member, original_nonmember:
        The original (pre-unlearning) model on the same records, for the difference attack (A3).
    ref_member, ref_nonmember:
        RMIA (A1): the reference model that EXCLUDES this client, on the same records.
    population_target, population_ref:
        RMIA: the population sample Z under the audited model and under the same reference model.
    rmia_a:
        RMIA's offline interpolation parameter a (tuned by ``tune_rmia_a``).
    gamma:
        RMIA's pairwise likelihood-ratio threshold (1 in the paper's default).
    """

    member: RecordSignals
    nonmember: RecordSignals
    original_member: RecordSignals | None = None
    original_nonmember: RecordSignals | None = None
    ref_member: RecordSignals | None = None
    ref_nonmember: RecordSignals | None = None
    population_target: RecordSignals | None = None
    population_ref: RecordSignals | None = None
    rmia_a: float = 0.3
    gamma: float = 1.0

    def __post_init__(self) -> None:
        pairs = [
            ("original", self.original_member, self.original_nonmember),
            ("ref", self.ref_member, self.ref_nonmember),
        ]
        for name, mem, non in pairs:
            if mem is not None and len(mem) != len(self.member):
                raise ValueError(f"{name}_member has {len(mem)} records, member has {len(self.member)}")
            if non is not None and len(non) != len(self.nonmember):
                raise ValueError(f"{name}_nonmember has {len(non)} records, nonmember has {len(self.nonmember)}")
        pt, pr = self.population_target, self.population_ref
        if pt is not None and pr is not None and len(pt) != len(pr):
            raise ValueError(f"population_target ({len(pt)}) and population_ref ({len(pr)}) differ in length")
