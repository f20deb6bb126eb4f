"""Fast checks of the leakage-audit numerics: signals, metrics, attacks, decisions (numpy only; the A2 statistics:
test_audit_seed_stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from fedunlearn.audit import (
    ATTACKS,
    AttackInput,
    RecordSignals,
    a0_decisions,
    a0_threshold,
    advantage,
    auc,
    auc_ci,
    band_verdict,
    benjamini_hochberg,
    delong_paired_test,
    forgetting_rate,
    null_band,
    phi_from_logits,
    rmia_scores,
    signals_from_logits,
    tpr_at_fpr,
    tune_rmia_a,
)
from fedunlearn.errors import ConfigError


def _sig(phi: np.ndarray) -> RecordSignals:
    """Signals of a binary-like model whose logit-scaled confidence is ``phi`` (p_y = sigmoid(phi))."""
    return RecordSignals(prob_true=expit(phi), phi=phi)


def _gauss(rng: np.random.Generator, d: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(d, 1.0, n), rng.normal(0.0, 1.0, n)


# --- signals ------------------------------------------------------------------------------------------------------


def test_phi_from_logits_is_stable_and_matches_naive() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(50, 5))
    labels = rng.integers(0, 5, 50)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(50), labels]
    np.testing.assert_allclose(phi_from_logits(logits, labels), np.log(py) - np.log1p(-py), rtol=1e-10)
    sig = signals_from_logits(logits, labels)
    np.testing.assert_allclose(sig.prob_true, py, rtol=1e-12)
    assert sig.phi.dtype == np.float64
    # p_y rounds to 1 in float64, phi must stay exact: 1000 - log(2)
    extreme = phi_from_logits(np.array([[1000.0, 0.0, 0.0]], dtype=np.float32), np.array([0]))
    assert extreme[0] == pytest.approx(1000.0 - math.log(2.0))
    with pytest.raises(ValueError):
        phi_from_logits(logits, np.full(50, 7))


# --- metrics ------------------------------------------------------------------------------------------------------


def test_auc_tpr_advantage_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    mem, non = _gauss(rng, 1.0, 500)
    mem[:20] = non[:20]  # some ties
    y = np.r_[np.ones(500), np.zeros(500)]
    s = np.r_[mem, non]
    assert auc(mem, non) == pytest.approx(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    assert tpr_at_fpr(mem, non, 0.01) == pytest.approx(tpr[np.where(fpr <= 0.01)[0][-1]])
    assert advantage(mem, non) == pytest.approx(np.max(np.abs(tpr - fpr)))


def test_tpr_at_fpr_na_rule() -> None:
    rng = np.random.default_rng(0)
    mem = rng.normal(1, 1, 100)
    assert math.isnan(tpr_at_fpr(mem, rng.normal(0, 1, 299), 0.01))
    assert not math.isnan(tpr_at_fpr(mem, rng.normal(0, 1, 300), 0.01))
    assert math.isnan(tpr_at_fpr(mem, rng.normal(0, 1, 2999), 0.001))
    assert not math.isnan(tpr_at_fpr(mem, rng.normal(0, 1, 3000), 0.001))


def _delong_var_naive(mem: np.ndarray, non: np.ndarray) -> float:
    psi = (mem[:, None] > non[None, :]) + 0.5 * (mem[:, None] == non[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return v10.var(ddof=1) / len(mem) + v01.var(ddof=1) / len(non)


def test_delong_variance_matches_quadratic_definition() -> None:
    rng = np.random.default_rng(3)
    mem, non = np.round(rng.normal(0.7, 1, 80), 1), np.round(rng.normal(0, 1, 60), 1)  # rounding makes ties
    value, lo, hi = auc_ci(mem, non, level=0.95)
    half = 1.959963984540054 * math.sqrt(_delong_var_naive(mem, non))
    assert value == pytest.approx(auc(mem, non))
    assert (lo, hi) == pytest.approx((value - half, value + half))


def test_delong_ci_covers_true_auc_and_agrees_with_bootstrap() -> None:
    rng = np.random.default_rng(7)
    d, n, reps = 1.0, 200, 200
    true_auc = norm.cdf(d / math.sqrt(2.0))
    covered = 0
    for _ in range(reps):
        _, lo, hi = auc_ci(*_gauss(rng, d, n))
        covered += lo <= true_auc <= hi
    assert covered / reps >= 0.9
    mem, non = _gauss(rng, d, n)
    a_d, lo_d, hi_d = auc_ci(mem, non)
    a_b, lo_b, hi_b = auc_ci(mem, non, method="bootstrap", n_boot=1000, rng=1)
    assert a_d == a_b
    assert abs((hi_b - lo_b) - (hi_d - lo_d)) < 0.25 * (hi_d - lo_d)
    assert auc_ci(mem, non, method="bootstrap", rng=1) == auc_ci(mem, non, method="bootstrap", rng=1)
    # perfect separation: clipped to [0, 1]
    assert auc_ci(np.arange(10.0) + 100, np.arange(10.0)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        auc_ci(mem, non, method="jackknife")  # type: ignore[arg-type]


def test_paired_delong() -> None:
    rng = np.random.default_rng(11)
    mem, non = _gauss(rng, 1.0, 300)
    delta, p = delong_paired_test(mem, non, mem, non)
    assert delta == 0.0 and p == 1.0
    noise_mem, noise_non = rng.normal(size=300), rng.normal(size=300)
    delta, p = delong_paired_test(mem, non, noise_mem, noise_non)
    assert delta > 0.15 and p < 1e-6
    # same signal plus a little independent noise: not significant
    delta, p = delong_paired_test(mem, non, mem + rng.normal(0, 0.05, 300), non + rng.normal(0, 0.05, 300))
    assert p > 0.05
    with pytest.raises(ValueError):
        delong_paired_test(mem, non, mem[:-1], non)


def test_equivalence_margin_and_verdict() -> None:
    from fedunlearn.audit.metrics import equivalence_margin, equivalence_verdict

    d = np.array([0.03, -0.04, 0.0, np.nan, 0.05])
    assert equivalence_margin(d) == pytest.approx(1.96 * math.sqrt((0.03**2 + 0.04**2 + 0.05**2) / 4))
    assert math.isnan(equivalence_margin(np.array([np.nan])))
    assert equivalence_verdict(0.05, 0.06) == "equivalent"
    assert equivalence_verdict(-0.06, 0.06) == "equivalent"
    assert equivalence_verdict(0.07, 0.06) == "under-unlearned"
    assert equivalence_verdict(-0.07, 0.06) == "over-unlearned"
    assert equivalence_verdict(0.01, math.nan) == "no margin"


def test_null_band_and_verdict() -> None:
    lo, hi = null_band(100, 100)
    se = math.sqrt(201 / (12 * 100 * 100))
    assert (lo, hi) == pytest.approx((0.5 - 1.96 * se, 0.5 + 1.96 * se))
    assert null_band(10**6, 10**6) == pytest.approx((0.49, 0.51))  # the 0.01 floor
    band = (0.45, 0.55)
    assert band_verdict(0.5, band) == "inside"
    assert band_verdict(0.45, band) == "inside"
    assert band_verdict(0.40, band) == "over-unlearned"
    assert band_verdict(0.60, band) == "under-unlearned"


def test_benjamini_hochberg_hand_example() -> None:
    # m = 3 finite p-values; crit = 0.0167, 0.0333, 0.05: 0.02 fails its own rank but step-up rejects it with 0.03
    got = benjamini_hochberg(np.array([0.02, 0.9, math.nan, 0.03]), q=0.05)
    assert got.tolist() == [True, False, False, True]
    got = benjamini_hochberg(np.array([0.001, 0.021, 0.022, 0.9]), q=0.05)
    assert got.tolist() == [True, True, True, False]
    assert not benjamini_hochberg(np.array([0.2, 0.3])).any()
    assert not benjamini_hochberg(np.array([math.nan])).any()


# --- attacks ------------------------------------------------------------------------------------------------------


def test_registry_contents_and_unknown_name() -> None:
    assert {"loss", "rmia", "difference"} <= set(ATTACKS.names())
    assert ATTACKS.get("rmia").needs == frozenset({"reference"})
    assert ATTACKS.get("difference").needs == frozenset({"original"})
    assert ATTACKS.get("loss").needs == frozenset()
    with pytest.raises(ConfigError, match="loss"):
        ATTACKS.get("nope")


def test_rmia_matches_nested_loops() -> None:
    rng = np.random.default_rng(5)
    ptx, prx = rng.uniform(0.01, 1, 7), rng.uniform(0.01, 1, 7)
    ptz, prz = rng.uniform(0.01, 1, 11), rng.uniform(0.01, 1, 11)
    ptz[3], prz[3] = ptx[2], prx[2]  # an exact tie: ratio(x)/ratio(z) = 1 is not > gamma
    for a, gamma in [(0.3, 1.0), (0.0, 1.0), (1.0, 1.0), (0.5, 2.0)]:
        expected = np.zeros(7)
        for i in range(7):
            ratio_x = ptx[i] / ((1 + a) / 2 * prx[i] + (1 - a) / 2)
            for j in range(11):
                ratio_z = ptz[j] / ((1 + a) / 2 * prz[j] + (1 - a) / 2)
                expected[i] += ratio_x / ratio_z > gamma
        np.testing.assert_allclose(rmia_scores(ptx, prx, ptz, prz, a, gamma), expected / 11)


def test_tune_rmia_a_returns_grid_value() -> None:
    rng = np.random.default_rng(2)
    hard = rng.normal(0, 2, 1000)
    p_a = expit(hard + np.r_[np.full(500, 1.0), np.zeros(500)] + rng.normal(0, 0.3, 1000))
    p_b = expit(hard + rng.normal(0, 0.3, 1000))
    z = rng.normal(0, 2, 400)
    a = tune_rmia_a(p_a[:500], p_a[500:], p_b[:500], p_b[500:], expit(z), expit(z + rng.normal(0, 0.3, 400)))
    assert a in np.round(np.arange(0, 1.01, 0.1), 1)
    # all AUCs equal (constant target): ties go to the smallest a
    const = np.full(500, 0.5)
    assert tune_rmia_a(const, const, const, const, expit(z), expit(z), grid=[0.7, 0.2, 0.4]) == 0.2


def test_attacks_recover_known_separation() -> None:
    rng = np.random.default_rng(123)
    n, d = 2000, 1.0
    theory = norm.cdf(d / math.sqrt(2.0))
    mem_phi, non_phi = _gauss(rng, d, n)

    loss_in = AttackInput(member=_sig(mem_phi), nonmember=_sig(non_phi))
    assert auc(*ATTACKS.get("loss").score(loss_in)) == pytest.approx(theory, abs=0.05)

    # difference: phi_original - phi_model ~ N(d, 1) on members and N(0, 1) on non-members
    model_mem, model_non = rng.normal(0, 1, n), rng.normal(0, 1, n)
    diff_in = AttackInput(
        member=_sig(model_mem),
        nonmember=_sig(model_non),
        original_member=_sig(model_mem + mem_phi),
        original_nonmember=_sig(model_non + non_phi),
    )
    assert auc(*ATTACKS.get("difference").score(diff_in)) == pytest.approx(theory, abs=0.05)
    with pytest.raises(ValueError, match="original"):
        ATTACKS.get("difference").score(loss_in)

    # rmia with an uninformative reference (p_ref constant): score is monotone in p_target
    flat = _sig(np.zeros(n))
    pop = rng.normal(0, 1, 5000)
    rmia_in = AttackInput(
        member=_sig(mem_phi),
        nonmember=_sig(non_phi),
        ref_member=flat,
        ref_nonmember=flat,
        population_target=_sig(pop),
        population_ref=_sig(np.zeros(5000)),
    )
    assert auc(*ATTACKS.get("rmia").score(rmia_in)) == pytest.approx(theory, abs=0.05)
    with pytest.raises(ValueError, match="ref_member"):
        ATTACKS.get("rmia").score(loss_in)


def test_rmia_uses_the_reference_to_cancel_record_difficulty() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    hard_mem, hard_non, hard_z = rng.normal(0, 2, n), rng.normal(0, 2, n), rng.normal(0, 2, 3000)
    mem_t = hard_mem + 1.0 + rng.normal(0, 0.3, n)
    non_t = hard_non + rng.normal(0, 0.3, n)
    inp = AttackInput(
        member=_sig(mem_t),
        nonmember=_sig(non_t),
        ref_member=_sig(hard_mem + rng.normal(0, 0.3, n)),
        ref_nonmember=_sig(hard_non + rng.normal(0, 0.3, n)),
        population_target=_sig(hard_z + rng.normal(0, 0.3, 3000)),
        population_ref=_sig(hard_z + rng.normal(0, 0.3, 3000)),
        rmia_a=1.0,
    )
    assert auc(*ATTACKS.get("rmia").score(inp)) > auc(*ATTACKS.get("loss").score(inp)) + 0.1


def test_a0_cross_fitted_threshold_has_nominal_fpr() -> None:
    rng = np.random.default_rng(4)
    non = rng.normal(0, 1, 4000)
    mem = rng.normal(2, 1, 4000)
    mem_flags, non_flags = a0_decisions(mem, non, 0.1)
    assert non_flags.dtype == bool and non_flags.shape == (4000,)
    assert non_flags.mean() == pytest.approx(0.1, abs=0.02)
    assert mem_flags.mean() == pytest.approx(norm.sf(norm.ppf(0.9) - 2.0), abs=0.03)
    assert a0_threshold(non, 0.1) == pytest.approx(np.quantile(non, 0.9))
    # deterministic
    again = a0_decisions(mem, non, 0.1)
    assert (again[0] == mem_flags).all() and (again[1] == non_flags).all()


def test_forgetting_rate() -> None:
    before = np.array([True, True, True, True, False, False])
    after = np.array([False, True, False, True, False, True])
    got = forgetting_rate(before, after)
    assert (got["b_t"], got["b_f"], got["a_f"]) == (4, 2, 3)
    assert got["fr"] == pytest.approx(0.25)  # = 1 - A_T / B_T = 1 - 3/4
    assert got["fr_per_record"] == pytest.approx(0.5)
    neg = forgetting_rate(np.array([True, False, False, False]), np.array([True, True, True, False]))
    assert neg["fr"] == pytest.approx(-2.0)
    none = forgetting_rate(np.zeros(5, bool), np.zeros(5, bool))
    assert none["b_t"] == 0 and math.isnan(none["fr"]) and math.isnan(none["fr_per_record"])
    with pytest.raises(ValueError):
        forgetting_rate(np.array([1, 0]), np.array([1, 0]))
