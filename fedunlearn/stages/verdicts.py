"""Verdicts on the withdrawn clients' leakage: against retrain by the retrain-vs-retrain equivalence margin, and
"as if never seen" by the 0.5 null band (docs/leakage.md "What good looks like"); for a class withdrawal, the
forgotten classes' accuracy against retrain's."""

from __future__ import annotations

import math

import numpy as np

from fedunlearn.audit.attacks import ATTACKS
from fedunlearn.audit.metrics import (
    auc,
    band_verdict,
    equivalence_margin,
    equivalence_verdict,
)
from fedunlearn.stages.inference import ORACLE, ModelSignals, Scores


def retrain_verdict(attack: str, delta: float, margin: float) -> str:
    """The withdrawn clients' leakage against retrain's (``delta`` = AUC − AUC(retrain)), by the null's margin.

    Membership attacks (loss, rmia): more leakage than retrain = under-unlearned. Before/after attacks (difference)
    score how much a model changed on the forgotten records; exact unlearning changes them too (Chen et al. CCS
    2021), so a larger change than retrain's = over-unlearned, a smaller one = under-unlearned.
    """
    verdict = equivalence_verdict(delta, margin)
    if "original" in ATTACKS.get(attack).needs:
        verdict = {"over-unlearned": "under-unlearned", "under-unlearned": "over-unlearned"}.get(verdict, verdict)
    return verdict


def never_seen_verdict(attack: str, value: float, band: tuple[float, float], class_withdrawal: bool = False
                       ) -> str | None:
    """"As if never seen": the AUC inside the 0.5 null band of docs/leakage.md ('inside'), above it ('under-unlearned')
    or below it ('over-unlearned'); None for before/after attacks, which are not 0.5 even under retrain, and for a
    class withdrawal: there members and non-members are all records of the forgotten classes, and a model that still
    classifies them ranks both alike (AUC near 0.5) whether it forgot the classes or not."""
    if class_withdrawal or "original" in ATTACKS.get(attack).needs:
        return None
    return band_verdict(value, band)


def equivalence_margins(null_scores: Scores, scores: Scores, nulls: list[str], attacks: list[str],
                        n_clients: int) -> dict[str, float]:
    """Per attack: the equivalence margin from retrain-vs-retrain ΔAUC over every client and null model."""
    out = {}
    for a in attacks:
        d = [auc(*null_scores[(n, k, a)]) - auc(*scores[(ORACLE, k, a)]) for n in nulls for k in range(n_clients)
             if (n, k, a) in null_scores and (ORACLE, k, a) in scores]
        out[a] = equivalence_margin(np.asarray(d))
    return out


def closer_to(value: float, re_auc: float | None, og_auc: float | None) -> str | None:
    if re_auc is None or og_auc is None:
        return None
    d_re, d_og = abs(value - re_auc), abs(value - og_auc)
    return "retrain" if d_re < d_og else "original" if d_og < d_re else "tie"


def accuracy_sampling_margin(correct_a: int, correct_b: int, n: int, z: float = 1.96) -> float:
    """``z`` times the Agresti-Caffo standard error of the difference of two accuracies on ``n`` records each (one
    success and one failure added to each side, so it stays positive when both are 0 or 1): the smallest difference
    that ``n`` records can tell apart."""
    pa, pb = (correct_a + 1) / (n + 2), (correct_b + 1) / (n + 2)
    return float(z * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / (n + 2)))


def forget_class_verdicts(sigs: dict[str, ModelSignals], names: list[str], nulls: list[str], parts,
                          w_mem: np.ndarray) -> dict[str, dict]:
    """Class withdrawal: every model's accuracy on the forgotten classes' members against retrain's.

    A model that forgot a class stops predicting it; retrain never learned it. Δ = accuracy − retrain's accuracy on
    the withdrawn members (every client's records of the forgotten labels). The margin is the larger of the
    retrain-vs-retrain one (1.96 x RMS of Δaccuracy between each null seed and retrain over the clients' forgotten
    members, as for the AUC) and the sampling one (``accuracy_sampling_margin``); 'equivalent' within it,
    'under-unlearned' above (the model still knows the classes), 'over-unlearned' below; retrain is exact.
    """
    if not len(w_mem):
        return {}
    correct = {m: sigs[m].pool_correct[w_mem] for m in names}
    per_client = [f for f in (np.asarray(parts.members[k])[np.isin(parts.members[k], w_mem)]
                              for k in range(parts.num_clients)) if len(f)]
    d = [float(sigs[n].pool_correct[f].mean() - sigs[ORACLE].pool_correct[f].mean()) for n in nulls for f in per_client]
    null_margin = equivalence_margin(np.asarray(d))
    re_acc, re_x, n = float(correct[ORACLE].mean()), int(correct[ORACLE].sum()), len(w_mem)
    out = {}
    for m in names:
        acc = float(correct[m].mean())
        sampling = accuracy_sampling_margin(int(correct[m].sum()), re_x, n)
        margin = sampling if math.isnan(null_margin) else max(null_margin, sampling)
        out[m] = {"accuracy": acc, "retrain_accuracy": re_acc, "delta": acc - re_acc, "margin": margin,
                  "null_margin": None if math.isnan(null_margin) else null_margin, "sampling_margin": sampling,
                  "verdict": "exact" if m == ORACLE else equivalence_verdict(acc - re_acc, margin)}
    return out
