"""Leakage audit core: pure-numpy attacks (signals -> scores), metrics and seed audits; never imports torch/flwr/ray."""

from fedunlearn.audit.attacks import (
    ATTACKS,
    Attack,
    a0_decisions,
    a0_threshold,
    forgetting_rate,
    rmia_scores,
    tune_rmia_a,
)
from fedunlearn.audit.metrics import (
    advantage,
    auc,
    auc_ci,
    band_verdict,
    benjamini_hochberg,
    delong_paired_test,
    equivalence_margin,
    equivalence_verdict,
    null_band,
    tpr_at_fpr,
)
from fedunlearn.audit.seed_audit import (
    ULiRAFit,
    challenge_score,
    epsilon_per_example,
    epsilons_per_example,
    fit_ulira,
    ulira_accuracy,
    ulira_scores,
)
from fedunlearn.audit.signals import AttackInput, RecordSignals, phi_from_logits, signals_from_logits

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInput",
    "RecordSignals",
    "ULiRAFit",
    "a0_decisions",
    "a0_threshold",
    "advantage",
    "auc",
    "auc_ci",
    "band_verdict",
    "equivalence_margin",
    "equivalence_verdict",
    "benjamini_hochberg",
    "challenge_score",
    "delong_paired_test",
    "epsilon_per_example",
    "epsilons_per_example",
    "fit_ulira",
    "forgetting_rate",
    "null_band",
    "phi_from_logits",
    "rmia_scores",
    "signals_from_logits",
    "tpr_at_fpr",
    "tune_rmia_a",
    "ulira_accuracy",
    "ulira_scores",
]
