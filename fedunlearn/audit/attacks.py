"""Membership-inference attacks as pure functions from cached signals to scores (higher = more likely a member).

- ``loss`` (A0): Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
  Overfitting", IEEE CSF 2018, arXiv:1709.01604. Departure: we score the logit-scaled confidence phi (Carlini et al.,
  S&P 2022) instead of the raw loss; phi is a monotone function of the cross-entropy loss -log p_y, so the ROC is the
  same, but phi is better conditioned for thresholds and Gaussian fits.
- ``rmia`` (A1, offline): Zarifzadeh, Liu, Mahloujifar & Shokri, "Low-Cost High-Power Membership Inference Attacks",
  ICML 2024, arXiv:2312.03262. One reference model that excludes the audited client (our two complementary reference
  federations); the offline approximation Pr(x) = ((1+a)/2) p_ref(x) + (1-a)/2 of the paper, with a tuned by attacking
  one reference with the other (as in ML Privacy Meter).
- ``difference`` (A3): Chen, Zhang, Wang, Backes, Humbert & Zhang, "When Machine Unlearning Jeopardizes Privacy",
  ACM CCS 2021, arXiv:2005.02205. Departure: the paper trains a classifier on concatenated/differenced posteriors of
  the two models; we use the threshold-free difference of the logit-scaled confidences phi_original - phi_model.
- Forgetting rate: Liu, Ma, Liu, Liu, Jiang, Ma, Yu & Ren, "Learn to Forget: Machine Unlearning via Neuron Masking"
  (the Forsaken method), arXiv:2003.10933: FR = (AF - BF) / BT. Departure: decisions come from our A0 threshold at
  FPR alpha fixed on the original model, not from the paper's trained MIA classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedunlearn.audit.metrics import auc
from fedunlearn.audit.signals import AttackInput
from fedunlearn.registry import Registry

__all__ = [
    "ATTACKS",
    "Attack",
    "a0_decisions",
    "a0_threshold",
    "forgetting_rate",
    "rmia_scores",
    "tune_rmia_a",
]

_NEEDS = frozenset({"original", "reference"})
_PROB_FLOOR = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class Attack:
    """One registered attack.

    Parameters
    ----------
    name:
        Registry / CLI name.
    paper:
        Citation of the paper the attack follows.
    needs:
        Extra signals it requires beyond the audited model's: a subset of {"original", "reference"}.
    score:
        ``AttackInput -> (member scores, nonmember scores)``, higher = more likely a member.
    """

    name: str
    paper: str
    needs: frozenset[str]
    score: Callable[[AttackInput], tuple[np.ndarray, np.ndarray]]

    def __post_init__(self) -> None:
        unknown = set(self.needs) - _NEEDS
        if unknown:
            raise ValueError(f"attack {self.name!r}: unknown needs {sorted(unknown)}; allowed: {sorted(_NEEDS)}")


ATTACKS: Registry[Attack] = Registry("attack")


def _register(attack: Attack) -> Attack:
    return ATTACKS.register(attack.name)(attack)


# --- A0: loss / confidence -----------------------------------------------------------------------------------------


def _loss_score(inp: AttackInput) -> tuple[np.ndarray, np.ndarray]:
    return inp.member.phi.copy(), inp.nonmember.phi.copy()


_register(
    Attack(
        name="loss",
        paper="Yeom et al., Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting, CSF 2018",
        needs=frozenset(),
        score=_loss_score,
    )
)


# --- A1: RMIA offline ----------------------------------------------------------------------------------------------


def _prob(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and (np.isnan(arr).any() or arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return arr


def _rmia_ratio(p_target: np.ndarray, p_ref: np.ndarray, a: float) -> np.ndarray:
    pr = np.maximum((1.0 + a) / 2.0 * p_ref + (1.0 - a) / 2.0, _PROB_FLOOR)
    return p_target / pr


def rmia_scores(
    p_target_x: np.ndarray,
    p_ref_x: np.ndarray,
    p_target_z: np.ndarray,
    p_ref_z: np.ndarray,
    a: float,
    gamma: float = 1.0,
) -> np.ndarray:
    """Offline RMIA score of each x: the fraction of population z with ratio(x) / ratio(z) > gamma.

    ratio(.) = p_target(.) / Pr(.), Pr(.) = ((1+a)/2) p_ref(.) + (1-a)/2 (Zarifzadeh et al., ICML 2024, offline
    variant with one reference model). Exact and vectorised: ratio(x)/ratio(z) > gamma <=> ratio(z) < ratio(x)/gamma
    for ratio(z) >= 0, counted by ``searchsorted`` on the sorted population ratios, O((n+m) log m). Pr is floored at
    the smallest normal float so a = 1 with p_ref = 0 stays finite. If x itself is in the population it is counted
    like any z (as in ML Privacy Meter); exclude it upstream if that matters.
    """
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"RMIA a must be in [0, 1], got {a}")
    if not gamma > 0.0:
        raise ValueError(f"RMIA gamma must be > 0, got {gamma}")
    ptx, prx = _prob("p_target_x", p_target_x), _prob("p_ref_x", p_ref_x)
    ptz, prz = _prob("p_target_z", p_target_z), _prob("p_ref_z", p_ref_z)
    if ptx.shape != prx.shape:
        raise ValueError(f"p_target_x {ptx.shape} and p_ref_x {prx.shape} differ")
    if ptz.shape != prz.shape:
        raise ValueError(f"p_target_z {ptz.shape} and p_ref_z {prz.shape} differ")
    if ptz.shape[0] == 0:
        raise ValueError("RMIA needs a non-empty population sample z")
    ratio_z = np.sort(_rmia_ratio(ptz, prz, a))
    ratio_x = _rmia_ratio(ptx, prx, a)
    counts = np.searchsorted(ratio_z, ratio_x / gamma, side="left")
    return counts / ratio_z.shape[0]


def _rmia_score(inp: AttackInput) -> tuple[np.ndarray, np.ndarray]:
    ref_mem, ref_non = inp.ref_member, inp.ref_nonmember
    pop_t, pop_r = inp.population_target, inp.population_ref
    if ref_mem is None or ref_non is None or pop_t is None or pop_r is None:
        named = {"ref_member": ref_mem, "ref_nonmember": ref_non, "population_target": pop_t, "population_ref": pop_r}
        missing = ", ".join(name for name, value in named.items() if value is None)
        raise ValueError(f"rmia needs reference and population signals; missing: {missing}")
    zt, zr = pop_t.prob_true, pop_r.prob_true
    mem = rmia_scores(inp.member.prob_true, ref_mem.prob_true, zt, zr, inp.rmia_a, inp.gamma)
    non = rmia_scores(inp.nonmember.prob_true, ref_non.prob_true, zt, zr, inp.rmia_a, inp.gamma)
    return mem, non


_register(
    Attack(
        name="rmia",
        paper="Zarifzadeh et al., Low-Cost High-Power Membership Inference Attacks, ICML 2024 (offline RMIA)",
        needs=frozenset({"reference"}),
        score=_rmia_score,
    )
)


def tune_rmia_a(
    p_target_member: np.ndarray,
    p_target_nonmember: np.ndarray,
    p_ref_member: np.ndarray,
    p_ref_nonmember: np.ndarray,
    p_target_z: np.ndarray,
    p_ref_z: np.ndarray,
    grid: Sequence[float] | np.ndarray | None = None,
    gamma: float = 1.0,
) -> float:
    """The offline-RMIA ``a`` with the best AUC when attacking one reference model with the other.

    Pass reference A as "target" (its own members / non-members) and reference B (which excludes A's members) as
    "ref". ``grid`` defaults to {0, 0.1, ..., 1}; ties go to the smallest a.
    """
    values = np.round(np.arange(0.0, 1.01, 0.1), 1) if grid is None else np.asarray(grid, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("grid must be a non-empty 1-D sequence of a values")
    n_mem = np.asarray(p_target_member).shape[0]
    p_target_x = np.concatenate([np.asarray(p_target_member, float), np.asarray(p_target_nonmember, float)])
    p_ref_x = np.concatenate([np.asarray(p_ref_member, float), np.asarray(p_ref_nonmember, float)])
    best_a, best_auc = math.nan, -math.inf
    for a in np.sort(values):
        s = rmia_scores(p_target_x, p_ref_x, p_target_z, p_ref_z, float(a), gamma)
        value = auc(s[:n_mem], s[n_mem:])
        if value > best_auc + 1e-12:
            best_a, best_auc = float(a), value
    return best_a


# --- A3: before/after difference -----------------------------------------------------------------------------------


def _difference_score(inp: AttackInput) -> tuple[np.ndarray, np.ndarray]:
    if inp.original_member is None or inp.original_nonmember is None:
        raise ValueError("difference needs the original model's signals (original_member, original_nonmember)")
    return inp.original_member.phi - inp.member.phi, inp.original_nonmember.phi - inp.nonmember.phi


_register(
    Attack(
        name="difference",
        paper="Chen et al., When Machine Unlearning Jeopardizes Privacy, CCS 2021",
        needs=frozenset({"original"}),
        score=_difference_score,
    )
)


# --- A0 decisions and the forgetting rate --------------------------------------------------------------------------


def a0_threshold(nonmember_phi: np.ndarray, alpha: float) -> float:
    """Threshold at FPR alpha: the (1-alpha)-quantile of held-out scores; a score strictly above it means "member"."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    non = np.asarray(nonmember_phi, dtype=np.float64)
    if non.ndim != 1 or non.shape[0] == 0:
        raise ValueError("a0_threshold needs a non-empty 1-D array of held-out scores")
    return float(np.quantile(non, 1.0 - alpha))


def a0_decisions(member_phi: np.ndarray, nonmember_phi: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted A0 member/non-member decisions at nominal FPR alpha: ``(member flags, nonmember flags)``.

    The held-out scores are permuted with ``np.random.default_rng(0)`` and split into folds by even/odd position;
    each fold's threshold is ``a0_threshold`` of that fold. Each held-out record is judged by the threshold fitted on
    the OTHER fold (so its own score never sets its threshold and the realised FPR is unbiased for alpha). Members
    were in neither fold, so they are judged by the mean of the two fold thresholds (our choice for "folds swapped
    and averaged"). "Member" means score strictly above the threshold.
    """
    mem = np.asarray(member_phi, dtype=np.float64)
    non = np.asarray(nonmember_phi, dtype=np.float64)
    if mem.ndim != 1 or non.ndim != 1:
        raise ValueError("a0_decisions needs 1-D score arrays")
    if non.shape[0] < 2:
        raise ValueError(f"a0_decisions needs >= 2 held-out records to cross-fit, got {non.shape[0]}")
    perm = np.random.default_rng(0).permutation(non.shape[0])
    fold_a, fold_b = perm[0::2], perm[1::2]
    t_a, t_b = a0_threshold(non[fold_a], alpha), a0_threshold(non[fold_b], alpha)
    non_flags = np.empty(non.shape[0], dtype=bool)
    non_flags[fold_a] = non[fold_a] > t_b
    non_flags[fold_b] = non[fold_b] > t_a
    return mem > (t_a + t_b) / 2.0, non_flags


def forgetting_rate(member_before: np.ndarray, member_after: np.ndarray) -> dict[str, float]:
    """Forgetting rate of the forget records (Forsaken, Liu et al.) from A0 decisions before/after unlearning.

    Both inputs are boolean "judged member" flags for the same forget records, with the threshold fixed on the
    original model. Returns counts ``b_t`` (member before), ``b_f`` (non-member before), ``a_f`` (non-member after),
    ``fr`` = (AF - BF) / BT = 1 - A_T / B_T and ``fr_per_record`` = |member before & non-member after| / BT. Both
    rates are NaN (undefined, never 0) when BT = 0; ``fr`` is negative when more records look like members after.
    """
    before = np.asarray(member_before)
    after = np.asarray(member_after)
    if before.dtype != bool or after.dtype != bool:
        raise ValueError("forgetting_rate needs boolean 'judged member' flags")
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"flags must be 1-D of equal length, got {before.shape} and {after.shape}")
    b_t = int(before.sum())
    b_f = int(before.shape[0] - b_t)
    a_f = int((~after).sum())
    moved = int((before & ~after).sum())
    fr = (a_f - b_f) / b_t if b_t else math.nan
    per_record = moved / b_t if b_t else math.nan
    return {"b_t": b_t, "b_f": b_f, "a_f": a_f, "fr": fr, "fr_per_record": per_record}
