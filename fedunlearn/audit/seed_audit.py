"""A2 seed-distribution audit: does the distribution of unlearned models match the distribution of retrained ones?

Needs M independent seeds of (train -> unlearn) and M seeds of retrain-without-the-client; the inputs here are the
per-seed signals of each forget record, arrays of shape (M, n) (rows = models/seeds, columns = records).

- U-LiRA: Hayes, Shumailov, Triantafillou, Khalifa & Papernot, "Inexact Unlearning Needs More Careful Evaluations to
  Avoid a False Sense of Privacy", arXiv:2403.01218, 2024 -- LiRA (Carlini et al., S&P 2022, arXiv:2112.03570)
  adapted to unlearning: per record, fit one Gaussian to phi under unlearned models and one under retrained models,
  and score an observed phi by the log likelihood ratio.
- Per-example epsilon and its bucketed score: Triantafillou et al., "Are we making progress in unlearning? Findings
  from the first NeurIPS unlearning competition", arXiv:2406.09073, 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ULiRAFit",
    "challenge_score",
    "epsilon_per_example",
    "epsilons_per_example",
    "fit_ulira",
    "ulira_accuracy",
    "ulira_scores",
]

#: Below this many seeds per group the per-record variance is too noisy; LiRA then uses a global variance.
FIXED_VARIANCE_BELOW = 64
_VAR_FLOOR = 1e-12


def _seeds(name: str, values: np.ndarray, min_seeds: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (seeds, records), got {arr.shape}")
    if arr.shape[0] < min_seeds:
        raise ValueError(f"{name} needs at least {min_seeds} seeds, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


@dataclass(frozen=True)
class ULiRAFit:
    """Per-record Gaussians of phi under unlearned and under retrained models (arrays of shape (n,)).

    Parameters
    ----------
    mu_unlearned, mu_retrain:
        Per-record means.
    var_unlearned, var_retrain:
        Per-record variances, or one pooled value per group broadcast over records when ``fixed_variance``.
    fixed_variance:
        Whether the variances were pooled over records.
    """

    mu_unlearned: np.ndarray
    mu_retrain: np.ndarray
    var_unlearned: np.ndarray
    var_retrain: np.ndarray
    fixed_variance: bool

    def score(self, phi_observed: np.ndarray) -> np.ndarray:
        """log N(phi; mu_unl, var_unl) - log N(phi; mu_re, var_re), elementwise over (..., n)."""
        phi = np.asarray(phi_observed, dtype=np.float64)
        return _log_lr(phi, self.mu_unlearned, self.var_unlearned, self.mu_retrain, self.var_retrain)


def _log_lr(phi: np.ndarray, mu_u: np.ndarray, var_u: np.ndarray, mu_r: np.ndarray, var_r: np.ndarray) -> np.ndarray:
    var_u = np.maximum(var_u, _VAR_FLOOR)
    var_r = np.maximum(var_r, _VAR_FLOOR)
    log_u = -0.5 * np.log(var_u) - (phi - mu_u) ** 2 / (2.0 * var_u)
    log_r = -0.5 * np.log(var_r) - (phi - mu_r) ** 2 / (2.0 * var_r)
    return log_u - log_r


def _use_fixed(fixed_variance: bool | None, m_unl: int, m_re: int) -> bool:
    return min(m_unl, m_re) < FIXED_VARIANCE_BELOW if fixed_variance is None else bool(fixed_variance)


def fit_ulira(phi_unlearned: np.ndarray, phi_retrain: np.ndarray, fixed_variance: bool | None = None) -> ULiRAFit:
    """Fit U-LiRA's two Gaussians per record from seeds of shape (M_u, n) and (M_r, n).

    Means are per record. Variances (unbiased, per group) are per record, or -- when ``fixed_variance`` is True, or
    None and either group has fewer than 64 seeds -- pooled over records as the mean of the per-record variances.
    Our choice: LiRA's "global variance" pools the within-record spread, not the spread of all values, so that the
    differing means of different records do not inflate it.
    """
    unl = _seeds("phi_unlearned", phi_unlearned, 2)
    ret = _seeds("phi_retrain", phi_retrain, 2)
    if unl.shape[1] != ret.shape[1]:
        raise ValueError(f"phi_unlearned has {unl.shape[1]} records, phi_retrain {ret.shape[1]}")
    fixed = _use_fixed(fixed_variance, unl.shape[0], ret.shape[0])
    var_u, var_r = unl.var(axis=0, ddof=1), ret.var(axis=0, ddof=1)
    if fixed:
        var_u = np.full_like(var_u, var_u.mean())
        var_r = np.full_like(var_r, var_r.mean())
    return ULiRAFit(unl.mean(axis=0), ret.mean(axis=0), var_u, var_r, fixed)


def ulira_scores(
    phi_observed: np.ndarray,
    phi_unlearned: np.ndarray,
    phi_retrain: np.ndarray,
    fixed_variance: bool | None = None,
) -> np.ndarray:
    """Per-record U-LiRA log likelihood ratios of observed phi values (Hayes et al. 2024).

    ``phi_observed`` has shape (n,) or (K, n) -- the audited model(s) on the n forget records; ``phi_unlearned`` and
    ``phi_retrain`` (M_u, n), (M_r, n) are the shadow seeds the Gaussians are fitted on (see ``fit_ulira``).
    Positive = looks unlearned (distinguishable from retrain), negative = looks retrained. The observed models must
    not be among the shadow seeds; to audit the seeds themselves use ``ulira_accuracy`` (leave one seed out).
    """
    return fit_ulira(phi_unlearned, phi_retrain, fixed_variance).score(phi_observed)


def _loo_mean_var(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-row-out means and unbiased variances, each (M, n): row j is computed without row j."""
    m = x.shape[0]
    mean = x.mean(axis=0)
    c = x - mean
    ss = (c**2).sum(axis=0)
    mean_loo = mean - c / (m - 1)
    var_loo = np.maximum(ss - c**2 - c**2 / (m - 1), 0.0) / (m - 2)
    return mean_loo, var_loo


def ulira_accuracy(
    phi_unlearned: np.ndarray, phi_retrain: np.ndarray, fixed_variance: bool | None = None
) -> np.ndarray:
    """Per-record accuracy (n,) of telling an unlearned model from a retrained one by U-LiRA, leave one seed out.

    Each seed (model) in turn is held out: the Gaussians are refitted on the remaining seeds (its own group minus it,
    the other group whole) and the held-out model's phi is classified "unlearned" when its log LR is > 0 (a tie
    counts 1/2). 0.5 = indistinguishable (perfect unlearning for that record); 1 = always told apart. Needs >= 3
    seeds per group. Vectorised: O((M_u + M_r) n).
    """
    unl = _seeds("phi_unlearned", phi_unlearned, 3)
    ret = _seeds("phi_retrain", phi_retrain, 3)
    if unl.shape[1] != ret.shape[1]:
        raise ValueError(f"phi_unlearned has {unl.shape[1]} records, phi_retrain {ret.shape[1]}")
    fixed = _use_fixed(fixed_variance, unl.shape[0], ret.shape[0])
    mu_u, var_u = unl.mean(axis=0), unl.var(axis=0, ddof=1)
    mu_r, var_r = ret.mean(axis=0), ret.var(axis=0, ddof=1)
    mu_u_loo, var_u_loo = _loo_mean_var(unl)
    mu_r_loo, var_r_loo = _loo_mean_var(ret)
    if fixed:
        var_u, var_r = np.full_like(var_u, var_u.mean()), np.full_like(var_r, var_r.mean())
        var_u_loo = np.broadcast_to(var_u_loo.mean(axis=1, keepdims=True), var_u_loo.shape)
        var_r_loo = np.broadcast_to(var_r_loo.mean(axis=1, keepdims=True), var_r_loo.shape)
    s_unl = _log_lr(unl, mu_u_loo, var_u_loo, mu_r, var_r)  # held-out unlearned seeds: want > 0
    s_ret = _log_lr(ret, mu_u, var_u, mu_r_loo, var_r_loo)  # held-out retrain seeds: want < 0
    correct = (s_unl > 0).sum(axis=0) + 0.5 * (s_unl == 0).sum(axis=0)
    correct = correct + (s_ret < 0).sum(axis=0) + 0.5 * (s_ret == 0).sum(axis=0)
    return correct / (unl.shape[0] + ret.shape[0])


def epsilon_per_example(scores_unlearned: np.ndarray, scores_retrain: np.ndarray, delta: float = 1e-5) -> float:
    """Per-example epsilon of the NeurIPS 2023 unlearning challenge (Triantafillou et al., arXiv:2406.09073).

    Inputs: one record's attack score (e.g. phi) under each of M_u unlearned and M_r retrained models. Decision
    rules "predict unlearned": single thresholds (s > t, s <= t) and intervals (s in (t1, t2] and its complement),
    with cut points at every observed score; for each rule FPR = share of retrain scores predicted unlearned,
    FNR = share of unlearned scores predicted retrain, and
    eps = max over rules of max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR)) (two-sided), clipped at 0.
    Our choices where the challenge differs: empirical rates instead of Clopper-Pearson bounds, with denominators
    clipped to 1/(2 M) so eps stays finite (at most about log(2 M)); a non-positive numerator contributes -inf.
    Identical score samples give exactly 0. Cost O(K^2) for K distinct scores (about 1e6 cells at M = 512).

    Caveat: the max over O(M^2) intervals is biased upwards. Two independent samples from ONE distribution already
    give eps around 2.5 (M = 32) to 2.9 (M = 512), about log(2 x the longest run of one group in the pooled sorted
    scores), so compare every method with retrain-vs-retrain (two disjoint halves of the retrain seeds), not with 0.
    """
    su = np.asarray(scores_unlearned, dtype=np.float64)
    sr = np.asarray(scores_retrain, dtype=np.float64)
    if su.ndim != 1 or sr.ndim != 1 or su.size == 0 or sr.size == 0:
        raise ValueError("epsilon_per_example needs two non-empty 1-D score samples")
    if not (np.isfinite(su).all() and np.isfinite(sr).all()):
        raise ValueError("scores must be finite")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    m_u, m_r = su.shape[0], sr.shape[0]
    cuts = np.unique(np.concatenate([su, sr]))
    # cumulative counts at "s <= cut", with a leading cut at -inf
    cu = np.concatenate([[0], np.searchsorted(np.sort(su), cuts, side="right")]).astype(np.float64)
    cr = np.concatenate([[0], np.searchsorted(np.sort(sr), cuts, side="right")]).astype(np.float64)
    # rule (i, j), i < j: predict unlearned iff s in (cut_i, cut_j]; i = 0 / j = K give the single thresholds
    tp = cu[None, :] - cu[:, None]
    fp = cr[None, :] - cr[:, None]
    upper = np.triu(np.ones((cuts.shape[0] + 1,) * 2, dtype=bool), k=1)
    tpr, fpr = tp[upper] / m_u, fp[upper] / m_r
    fnr = 1.0 - tpr
    fpr_all = np.concatenate([fpr, 1.0 - fpr])  # the rules and their complements
    fnr_all = np.concatenate([fnr, 1.0 - fnr])
    eps_fnr = _log_ratio(1.0 - delta - fpr_all, fnr_all, 0.5 / m_u)
    eps_fpr = _log_ratio(1.0 - delta - fnr_all, fpr_all, 0.5 / m_r)
    return max(0.0, eps_fnr, eps_fpr)


def _log_ratio(numerator: np.ndarray, denominator: np.ndarray, floor: float) -> float:
    ok = numerator > 0.0
    if not ok.any():
        return -math.inf
    return float(np.max(np.log(numerator[ok]) - np.log(np.maximum(denominator[ok], floor))))


def epsilons_per_example(scores_unlearned: np.ndarray, scores_retrain: np.ndarray, delta: float = 1e-5) -> np.ndarray:
    """``epsilon_per_example`` for every record: inputs (M_u, n) and (M_r, n), output (n,)."""
    unl = _seeds("scores_unlearned", scores_unlearned, 1)
    ret = _seeds("scores_retrain", scores_retrain, 1)
    if unl.shape[1] != ret.shape[1]:
        raise ValueError(f"scores_unlearned has {unl.shape[1]} records, scores_retrain {ret.shape[1]}")
    return np.array([epsilon_per_example(unl[:, i], ret[:, i], delta) for i in range(unl.shape[1])])


def challenge_score(eps: np.ndarray, bucket_width: float = 0.5) -> float:
    """Forgetting quality of the challenge: mean over records of 2 / 2**bucket(eps), in (0, 1], higher = better.

    Our reading of the bucketing (Triantafillou et al. 2024): buckets of width 0.5 numbered from 1,
    bucket(eps) = floor(eps / 0.5) + 1, so eps in [0, 0.5) scores 1, [0.5, 1) scores 1/2, [1, 1.5) scores 1/4, ...
    """
    values = np.asarray(eps, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("challenge_score needs a non-empty 1-D array of epsilons")
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError("epsilons must be >= 0 and not NaN")
    if not bucket_width > 0:
        raise ValueError(f"bucket_width must be > 0, got {bucket_width}")
    bucket = np.floor(values / bucket_width) + 1.0
    return float(np.mean(2.0 / 2.0**bucket))
