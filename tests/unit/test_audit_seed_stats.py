"""The A2 seed-distribution statistics (per-example epsilon, challenge buckets, U-LiRA) and the audit core's import
hygiene."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import expit

from fedunlearn.audit import (
    RecordSignals,
    challenge_score,
    epsilon_per_example,
    epsilons_per_example,
    fit_ulira,
    ulira_accuracy,
    ulira_scores,
)


def _sig(phi: np.ndarray) -> RecordSignals:
    """Signals of a binary-like model whose logit-scaled confidence is ``phi`` (p_y = sigmoid(phi))."""
    return RecordSignals(prob_true=expit(phi), phi=phi)


def _gauss(rng: np.random.Generator, d: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(d, 1.0, n), rng.normal(0.0, 1.0, n)


# --- A2 seed audit ------------------------------------------------------------------------------------------------


def _eps_naive(su: np.ndarray, sr: np.ndarray, delta: float) -> float:
    cuts = np.r_[-np.inf, np.unique(np.r_[su, sr])]
    rules = []
    for t1, t2 in itertools.combinations(cuts, 2):
        rules.append(lambda s, t1=t1, t2=t2: (s > t1) & (s <= t2))
        rules.append(lambda s, t1=t1, t2=t2: ~((s > t1) & (s <= t2)))
    best = 0.0
    for rule in rules:
        fpr, fnr = rule(sr).mean(), 1 - rule(su).mean()
        for num, den, m in ((1 - delta - fpr, fnr, len(su)), (1 - delta - fnr, fpr, len(sr))):
            if num > 0:
                best = max(best, math.log(num / max(den, 0.5 / m)))
    return best


def test_epsilon_per_example() -> None:
    rng = np.random.default_rng(6)
    same = rng.normal(size=256)
    assert epsilon_per_example(same, same.copy()) == 0.0
    far = epsilon_per_example(rng.normal(10, 1, 256), rng.normal(0, 1, 256))
    assert far > 2.0
    assert far == pytest.approx(math.log((1 - 1e-5) * 512))
    for _ in range(5):
        su, sr = np.round(rng.normal(0.5, 1, 9), 1), np.round(rng.normal(0, 2, 7), 1)
        assert epsilon_per_example(su, sr) == pytest.approx(_eps_naive(su, sr, 1e-5))
    both = epsilons_per_example(np.c_[same, same], np.c_[same, same + 50])
    assert both[0] == 0.0 and both[1] > 2.0


def test_challenge_score_buckets() -> None:
    assert challenge_score(np.array([0.0, 0.49, 0.5, 1.2])) == pytest.approx((1 + 1 + 0.5 + 0.25) / 4)
    with pytest.raises(ValueError):
        challenge_score(np.array([math.nan]))


def _ulira_accuracy_naive(unl: np.ndarray, ret: np.ndarray) -> np.ndarray:
    correct = np.zeros(unl.shape[1])
    for j in range(unl.shape[0]):
        s = ulira_scores(unl[j], np.delete(unl, j, axis=0), ret, fixed_variance=False)
        correct += (s > 0) + 0.5 * (s == 0)
    for j in range(ret.shape[0]):
        s = ulira_scores(ret[j], unl, np.delete(ret, j, axis=0), fixed_variance=False)
        correct += (s < 0) + 0.5 * (s == 0)
    return correct / (unl.shape[0] + ret.shape[0])


def test_ulira_separated_vs_identical() -> None:
    rng = np.random.default_rng(8)
    m, n = 16, 50
    offset = rng.normal(0, 3, n)  # per-record difficulty, shared by both worlds
    retrain = offset + rng.normal(0, 1, (m, n))
    unlearned_far = offset + 3.0 + rng.normal(0, 1, (m, n))
    unlearned_same = offset + rng.normal(0, 1, (m, n))

    assert fit_ulira(unlearned_far, retrain).fixed_variance  # M < 64
    assert not fit_ulira(rng.normal(size=(64, 3)), rng.normal(size=(64, 3))).fixed_variance
    assert ulira_accuracy(unlearned_far, retrain).mean() > 0.9
    assert ulira_accuracy(unlearned_same, retrain).mean() < 0.6

    new_unl = offset + 3.0 + rng.normal(0, 1, (4, n))
    new_ret = offset + rng.normal(0, 1, (4, n))
    assert ulira_scores(new_unl, unlearned_far, retrain).mean() > 1.0
    assert ulira_scores(new_ret, unlearned_far, retrain).mean() < -1.0

    small_u, small_r = unlearned_far[:6, :5], retrain[:5, :5]
    np.testing.assert_allclose(
        ulira_accuracy(small_u, small_r, fixed_variance=False), _ulira_accuracy_naive(small_u, small_r)
    )


# --- import hygiene -----------------------------------------------------------------------------------------------


def test_audit_imports_no_heavy_frameworks() -> None:
    code = (
        "import fedunlearn.audit, sys; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray', 'torch'}); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
