"""Verdicts on the withdrawn clients' leakage: against retrain by the retrain-vs-retrain equivalence margin, and
"as if never seen" by the 0.5 null band (docs/leakage.md "What good looks like")."""

from __future__ import annotations

import numpy as np

from fedunlearn.audit.attacks import ATTACKS
from fedunlearn.audit.metrics import (
    auc,
    band_verdict,
    equivalence_margin,
    equivalence_verdict,
)
from fedunlearn.stages.inference import ORACLE, Scores


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


def never_seen_verdict(attack: str, value: float, band: tuple[float, float]) -> str | None:
    """"As if never seen": the AUC inside the 0.5 null band of docs/leakage.md ('inside'), above it ('under-unlearned')
    or below it ('over-unlearned'); None for before/after attacks, which are not 0.5 even under retrain."""
    if "original" in ATTACKS.get(attack).needs:
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
