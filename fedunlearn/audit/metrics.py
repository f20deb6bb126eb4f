"""Leakage metrics over attack scores: AUC with confidence intervals, paired tests, TPR at low FPR, the null band.

Conventions: members are the positive class (label 1) and a higher score means "more likely a member".
AUC variance follows DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach", Biometrics 1988, in the O(n log n) midrank form of Sun & Xu,
"Fast implementation of DeLong's algorithm for comparing the areas under correlated ROC curves", IEEE SPL 2014.
Multiple testing over clients uses Benjamini & Hochberg, "Controlling the false discovery rate", JRSS-B 1995.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "advantage",
    "auc",
    "auc_ci",
    "band_verdict",
    "equivalence_margin",
    "equivalence_verdict",
    "benjamini_hochberg",
    "delong_paired_test",
    "null_band",
    "tpr_at_fpr",
]

_BOOT_DEFAULT = 1000
_BOOT_CHUNK = 250


def _scores(name: str, values: np.ndarray, min_len: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} scores must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < min_len:
        raise ValueError(f"{name} scores need at least {min_len} value(s), got {arr.shape[0]}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} scores contain NaN")
    return arr


def _labelled(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mem, non = _scores("member", member), _scores("nonmember", nonmember)
    y = np.concatenate([np.ones(mem.shape[0], dtype=np.int8), np.zeros(non.shape[0], dtype=np.int8)])
    return y, np.concatenate([mem, non])


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n1 n2)), members = positive class; ties count 1/2."""
    y, s = _labelled(member_scores, nonmember_scores)
    return float(roc_auc_score(y, s))


def _fast_delong(scores: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for k score rows whose first ``n_pos`` columns are positives.

    Sun & Xu 2014: the structural components come from three midrankings (positives, negatives, all).
    """
    m = n_pos
    n = scores.shape[1] - m
    from scipy.stats import rankdata  # lazy: scipy.stats costs ~1 s at every client actor's start

    tx = rankdata(scores[:, :m], axis=1)
    ty = rankdata(scores[:, m:], axis=1)
    tz = rankdata(scores, axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: share of negatives it beats
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that beat it
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def _delong_var(member: np.ndarray, nonmember: np.ndarray) -> tuple[float, float]:
    mem, non = _scores("member", member), _scores("nonmember", nonmember)
    if mem.shape[0] < 2 or non.shape[0] < 2:
        return float(auc(mem, non)), math.nan
    aucs, cov = _fast_delong(np.concatenate([mem, non])[None, :], mem.shape[0])
    return float(aucs[0]), float(cov[0, 0])


def _bootstrap_aucs(mem: np.ndarray, non: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap: members and non-members are resampled separately (fixed group sizes)."""
    m, n = mem.shape[0], non.shape[0]
    out = np.empty(n_boot)
    for start in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - start)
        pos = mem[rng.integers(0, m, size=(b, m))]
        neg = non[rng.integers(0, n, size=(b, n))]
        from scipy.stats import rankdata

        ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
        out[start : start + b] = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return out


def auc_ci(
    member: np.ndarray,
    nonmember: np.ndarray,
    level: float = 0.95,
    method: Literal["delong", "bootstrap"] = "delong",
    n_boot: int = 0,
    rng: np.random.Generator | int | None = None,
) -> tuple[float, float, float]:
    """AUC with a two-sided confidence interval: ``(auc, lo, hi)``, bounds clipped to [0, 1].

    ``method="delong"``: normal interval with DeLong's variance (Sun & Xu's fast form); NaN bounds when either group
    has fewer than 2 records. ``method="bootstrap"``: percentile interval of a stratified bootstrap (members and
    non-members resampled separately); ``n_boot <= 0`` means 1000 replicates; ``rng`` seeds it (default 0, so the
    interval is reproducible). Resamples records of one model only; resampling runs is the caller's job.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method == "delong":
        value, var = _delong_var(member, nonmember)
        if math.isnan(var):
            return value, math.nan, math.nan
        from scipy.stats import norm

        half = float(norm.ppf(0.5 + level / 2.0)) * math.sqrt(max(var, 0.0))
        return value, max(0.0, value - half), min(1.0, value + half)
    if method == "bootstrap":
        mem, non = _scores("member", member), _scores("nonmember", nonmember)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
        boots = _bootstrap_aucs(mem, non, n_boot if n_boot > 0 else _BOOT_DEFAULT, gen)
        lo, hi = np.quantile(boots, [0.5 - level / 2.0, 0.5 + level / 2.0])
        return auc(mem, non), float(np.clip(lo, 0.0, 1.0)), float(np.clip(hi, 0.0, 1.0))
    raise ValueError(f"method must be 'delong' or 'bootstrap', got {method!r}")


def delong_paired_test(
    mem_a: np.ndarray, non_a: np.ndarray, mem_b: np.ndarray, non_b: np.ndarray
) -> tuple[float, float]:
    """Paired DeLong test of AUC_a = AUC_b for two models scored on the SAME records (same order).

    Returns ``(delta, p)`` with delta = AUC_a - AUC_b and the two-sided normal p-value using the DeLong covariance of
    the two correlated AUCs. When the variance of the difference is 0 (e.g. identical scores), p = 1 if delta = 0,
    else 0.
    """
    ma, na = _scores("mem_a", mem_a, 2), _scores("non_a", non_a, 2)
    mb, nb = _scores("mem_b", mem_b, 2), _scores("non_b", non_b, 2)
    if ma.shape != mb.shape or na.shape != nb.shape:
        raise ValueError("paired test needs both models' scores on the same members and the same non-members")
    scores = np.stack([np.concatenate([ma, na]), np.concatenate([mb, nb])])
    aucs, cov = _fast_delong(scores, ma.shape[0])
    delta = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        return delta, 1.0 if abs(delta) <= 1e-12 else 0.0
    from scipy.stats import norm

    return delta, float(2.0 * norm.sf(abs(delta) / math.sqrt(var)))


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, alpha: float) -> float:
    """TPR at the largest ROC point with FPR <= alpha; NaN (= NA) when there are fewer than 3/alpha non-members.

    Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022: report TPR at low FPR. Below
    3/alpha held-out records the FPR level is resolved by fewer than 3 false positives, so we do not report it.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, s = _labelled(member, nonmember)
    n_non = int((y == 0).sum())
    if n_non < 3.0 / alpha - 1e-9:
        return math.nan
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[np.where(fpr <= alpha)[0][-1]])


def advantage(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Membership advantage max |TPR - FPR| over the ROC (Yeom et al., CSF 2018)."""
    y, s = _labelled(member, nonmember)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.max(np.abs(tpr - fpr)))


def null_band(n_member: int, n_nonmember: int) -> tuple[float, float]:
    """Band of AUCs consistent with no leakage: 0.5 +/- max(0.01, 1.96 SE_null).

    SE_null = sqrt((n1 + n2 + 1) / (12 n1 n2)) is the standard error of the Mann-Whitney AUC under H0 (no ties).
    """
    if n_member < 1 or n_nonmember < 1:
        raise ValueError(f"null_band needs n_member, n_nonmember >= 1, got {n_member}, {n_nonmember}")
    se = math.sqrt((n_member + n_nonmember + 1) / (12.0 * n_member * n_nonmember))
    half = max(0.01, 1.96 * se)
    return 0.5 - half, 0.5 + half


def band_verdict(auc_value: float, band: tuple[float, float]) -> str:
    """'inside' the null band, 'over-unlearned' below it (Streisand signal), 'under-unlearned' above it."""
    if math.isnan(auc_value):
        raise ValueError("band_verdict needs a finite AUC, got NaN")
    lo, hi = band
    if auc_value < lo:
        return "over-unlearned"
    if auc_value > hi:
        return "under-unlearned"
    return "inside"


def equivalence_margin(null_deltas: np.ndarray, z: float = 1.96) -> float:
    """Margin of "equivalent to retrain": ``z`` times the root-mean-square of retrain-vs-retrain ΔAUC.

    ``null_deltas`` are AUC(retrain with another seed, k) − AUC(retrain, k) over every client k and every null seed:
    two exact unlearnings that differ only in their training seed, scored on the same records. Their mean is 0 in
    expectation, so the RMS estimates the standard deviation of one client's ΔAUC when nothing differs; ``z`` = 1.96
    makes the margin a two-sided 95% level. NaN entries are dropped; NaN when none is left.
    """
    d = np.asarray(null_deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(z * np.sqrt(np.mean(d ** 2))) if d.size else math.nan


def equivalence_verdict(delta: float, margin: float) -> str:
    """A method's leakage against retrain's: 'equivalent' when |Δ| <= margin, 'under-unlearned' when it leaks more
    (Δ > margin), 'over-unlearned' when less (Δ < −margin: a detectable "Streisand" signal); 'no margin' without a
    retrain-vs-retrain null."""
    if math.isnan(delta):
        raise ValueError("equivalence_verdict needs a finite ΔAUC, got NaN")
    if math.isnan(margin):
        return "no margin"
    if delta > margin:
        return "under-unlearned"
    if delta < -margin:
        return "over-unlearned"
    return "equivalent"


def benjamini_hochberg(pvalues: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg step-up reject flags at FDR level q.

    NaN p-values are never rejected and do not count as tests (m = number of finite p-values).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    reject = np.zeros(p.shape[0], dtype=bool)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.shape[0]
    if m == 0:
        return reject
    order = valid[np.argsort(p[valid], kind="stable")]
    passed = np.flatnonzero(p[order] <= q * np.arange(1, m + 1) / m)
    if passed.size:
        reject[order[: passed[-1] + 1]] = True
    return reject
