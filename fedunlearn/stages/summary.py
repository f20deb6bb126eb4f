"""``summary.json``'s contents: per model utility, the withdrawn clients' leakage and verdicts, the forgetting rate,
costs and speed-ups; the other clients' comparisons; the retrain-vs-retrain null."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedunlearn.audit.attacks import ATTACKS, a0_decisions, forgetting_rate
from fedunlearn.audit.metrics import (
    advantage,
    auc,
    auc_ci,
    benjamini_hochberg,
    null_band,
    tpr_at_fpr,
)
from fedunlearn.rundir import STARTUP, RunDir
from fedunlearn.stages.inference import BOTH_REFERENCES, ORACLE, ORIGINAL, RETRAIN_NULL, ModelSignals, Scores
from fedunlearn.stages.rmia import References
from fedunlearn.stages.scoring import attack_input, na_to_none, paired_p
from fedunlearn.stages.verdicts import closer_to, forget_class_verdicts, never_seen_verdict, retrain_verdict

_UNDEFINED_FR = "undefined (B_T = 0): no withdrawn member was judged a member by the original model"
LEAKAGE_RULE = (
    "verdict: the withdrawn clients' AUC against retrain's, equivalent when |ΔAUC| <= equivalence_margin = 1.96 x "
    "RMS of retrain-vs-retrain ΔAUC over every client and null seed (audit.retrain_null, audit.null_seeds); above "
    "it under-unlearned (still leaks), below it over-unlearned; for the difference attack the direction flips (a "
    "larger before/after change than retrain's = over-unlearned); 'no margin' without a null; retrain is exact. "
    "never_seen: inside / above / below the 0.5 null band of docs/leakage.md (membership attacks, client "
    "withdrawals only)")
CLASS_RULE = (
    "class withdrawal: the headline verdict is forget_class_verdicts, the forgotten classes' member accuracy "
    "against retrain's (models[m].forget_class: equivalent when |Δaccuracy| <= margin = the larger of 1.96 x RMS of "
    "retrain-vs-retrain Δaccuracy over clients and null seeds and 1.96 x the Agresti-Caffo standard error; above it "
    "under-unlearned: the model still knows the classes), then the leakage verdict against retrain below; "
    "never_seen is null: members and non-members are all records of the forgotten classes, and a model that still "
    "classifies them ranks both alike, forgotten or not.")



def attack_margin(summary: dict, attack: str) -> float | None:
    """The retrain-equivalence margin of ``attack`` in a built summary (None without a retrain null)."""
    return (summary["models"].get(ORACLE, {}).get("leakage", {}).get(attack) or {}).get("equivalence_margin")

def build_summary(run_dir: Path, cfg, names: list[str], sigs: dict[str, ModelSignals], parts, attacks: list[str],
                  failed: dict[str, str] | None, refs: References | None = None,
                  margins: dict[str, float] | None = None, nulls: list[str] | None = None) -> dict:
    """Per model: utility, the withdrawn clients' leakage (pooled over withdrawn clients) vs retrain and vs the
    original, the forgetting rate, costs; plus the RMIA set-up and the per-method verdicts (for a class withdrawal
    also the forgotten classes' accuracy against retrain's, its headline verdict)."""
    from fedunlearn.ledgers.costs import CostLedger

    withdrawn = sorted(cfg.withdraw.clients)
    w_mem, w_hold, r_mem = forget_sets(cfg, parts)
    band = null_band(len(w_mem), len(w_hold))
    test_forget = test_kept = None
    if cfg.withdraw.classes:
        from fedunlearn.data.cache import experiment_data

        y_test = experiment_data(cfg)[0].y_test[parts.test]
        test_forget = parts.test[np.isin(y_test, cfg.withdraw.classes)]
        test_kept = parts.test[~np.isin(y_test, cfg.withdraw.classes)]
    ledger = CostLedger.load(RunDir(run_dir).ledger)
    failed = dict(failed or {})
    classes = bool(cfg.withdraw.classes)
    forget = forget_class_verdicts(sigs, names, nulls or [], parts, w_mem) if classes else {}
    retrain_cost = ledger.total(ORACLE)
    gamma = cfg.audit.gamma
    ref_name = BOTH_REFERENCES if refs is not None else None  # withdrawn records are OUT for both references
    pooled = {m: attack_input(sigs[m], sigs[ORIGINAL], w_mem, w_hold, gamma, refs, ref_name) for m in names}
    wscores: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for m in names:
        for a in attacks:
            if not ("original" in ATTACKS.get(a).needs and m == ORIGINAL):
                wscores[(m, a)] = ATTACKS.get(a).score(pooled[m])
    orig = sigs[ORIGINAL]
    fr_retrain = withdrawn_forgetting(orig, sigs[ORACLE], w_mem, w_hold, cfg.audit.fr_alpha)
    models: dict[str, dict] = {}
    for m in [ORACLE] + [n for n in names if n != ORACLE]:
        s = sigs[m]
        entry: dict = {
            "test_accuracy": float(s.test_correct[parts.test].mean()),
            "withdrawn_accuracy": float(s.pool_correct[w_mem].mean()),
            "withdrawn_holdout_accuracy": float(s.pool_correct[w_hold].mean()),
            "retained_accuracy": float(s.pool_correct[r_mem].mean()),
            "leakage": {},
        }
        if test_forget is not None:  # class withdrawal: the usual class-unlearning utility split of the test set
            entry["forgotten_class_test_accuracy"] = float(s.test_correct[test_forget].mean())
            entry["retained_class_test_accuracy"] = float(s.test_correct[test_kept].mean())
        if m in forget:
            entry["forget_class"] = forget[m]
        for a in attacks:
            if (m, a) not in wscores:
                continue
            mem, non = wscores[(m, a)]
            value, lo, hi = auc_ci(mem, non, rng=0)
            re, og = wscores.get((ORACLE, a)), wscores.get((ORIGINAL, a))
            re_auc = auc(*re) if re is not None else None
            og_auc = auc(*og) if og is not None else None
            margin = (margins or {}).get(a, math.nan)
            verdict = "exact" if m == ORACLE else retrain_verdict(a, value - re_auc, margin) \
                if re_auc is not None else "no margin"
            leak = {"auc": value, "auc_lo": lo, "auc_hi": hi, "tpr_at_1pct_fpr": na_to_none(tpr_at_fpr(mem, non, 0.01)),
                    "advantage": advantage(mem, non), "null_band": list(band), "verdict": verdict,
                    "equivalence_margin": na_to_none(margin),
                    "never_seen": never_seen_verdict(a, value, band, classes)}
            leak["distance_to_retrain"] = value - re_auc if re_auc is not None else None
            leak["tpr_at_0.1pct_fpr"] = na_to_none(tpr_at_fpr(mem, non, 0.001))
            leak["delta_auc_vs_original"] = value - og_auc if og_auc is not None else None
            leak["p_vs_retrain"] = paired_p((mem, non), re) if re is not None and m != ORACLE else None
            leak["p_vs_original"] = paired_p((mem, non), og) if og is not None and m != ORIGINAL else None
            leak["closer_to"] = closer_to(value, re_auc, og_auc) if m not in (ORACLE, ORIGINAL) else None
            entry["leakage"][a] = leak
        if m != ORIGINAL:
            fr = withdrawn_forgetting(orig, s, w_mem, w_hold, cfg.audit.fr_alpha)
            fr["fr_retrain"] = fr_retrain["fr"]
            fr["fr_per_record_retrain"] = fr_retrain["fr_per_record"]
            entry["forgetting_rate"] = fr
            cost = ledger.total(m)
            entry["cost"] = {k: getattr(cost, k) for k in ("wall_s", "rounds", "client_samples", "bytes_up",
                                                          "bytes_down", "server_storage_bytes", "failed_clients")}
            entry["speedup_vs_retrain"] = {
                "wall": retrain_cost.wall_s / cost.wall_s if cost.wall_s > 0 else None,
                "client_samples": retrain_cost.client_samples / cost.client_samples if cost.client_samples else None,
            }
        models[m] = entry
    for m in [n for n in names if n != ORACLE]:
        models[m] = models.pop(m)
    models[ORACLE] = models.pop(ORACLE)
    original_cost = ledger.total(ORIGINAL)
    startup = [r for r in ledger.rows if r.method == STARTUP]
    summary = {
        "name": cfg.name, "seed": cfg.seed, "withdrawn_clients": withdrawn,
        "withdrawn_classes": sorted(cfg.withdraw.classes), "attacks": attacks,
        "null_band": list(band), "n_member": int(len(w_mem)), "n_nonmember": int(len(w_hold)),
        "original_training": {"wall_s": original_cost.wall_s, "rounds": original_cost.rounds,
                              "client_samples": original_cost.client_samples,
                              "server_storage_bytes": original_cost.server_storage_bytes},
        "models": models, "failed_methods": failed,
        # start-up (Ray, node mapping, each client loading its data once), per start of the FL stage: charged to no
        # method, so a resume's first phase and a run's first phase cost what their work costs
        "startup": {"wall_s": round(sum(r.wall_s for r in startup), 3),
                    "starts": sum(1 for r in startup if r.phase == "warmup"),
                    "rows": [{"phase": r.phase, "wall_s": round(r.wall_s, 3)} for r in startup]},
    }
    summary["verdict_rule"] = (CLASS_RULE + " " if classes else "") + LEAKAGE_RULE
    if classes:
        summary["forget_class_verdicts"] = {m: e["forget_class"]["verdict"] for m, e in models.items()
                                            if "forget_class" in e}
    summary["verdicts"] = {m: {a: {"verdict": e["leakage"][a]["verdict"], "never_seen": e["leakage"][a]["never_seen"],
                                   "closer_to": e["leakage"][a]["closer_to"]}
                               for a in attacks if a in e["leakage"]}
                           for m, e in models.items() if m != ORIGINAL}
    summary["forgetting_rate"] = {
        "alpha": cfg.audit.fr_alpha,
        "definition": "A0 threshold at FPR alpha fixed on the original model's withdrawn held-out records (cross-"
                      "fitted); FR = (AF - BF) / BT, per-record FR = |member before & non-member after| / BT; "
                      "FR(retrain) beside every method (a retrained model does not score 1)",
        "retrain": {k: fr_retrain[k] for k in ("fr", "fr_per_record", "b_t")}}
    if refs is not None:
        summary["rmia"] = refs.describe()
        refs_cost = ledger.total("references")
        summary["rmia"]["cost"] = {"wall_s": refs_cost.wall_s, "rounds": refs_cost.rounds,
                                   "client_samples": refs_cost.client_samples}
    return summary


def forget_sets(cfg, parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the withdrawn members, the withdrawn audit records (the non-members) and the retained members: the
    withdrawn clients' records, or under a class withdrawal every client's records of the withdrawn labels."""
    k_all = range(parts.num_clients)
    if not cfg.withdraw.classes:
        gone = sorted(cfg.withdraw.clients)
        return (np.concatenate([parts.members[k] for k in gone]), np.concatenate([parts.audit[k] for k in gone]),
                np.concatenate([parts.members[k] for k in k_all if k not in set(gone)]))
    from fedunlearn.data.cache import experiment_data

    y = experiment_data(cfg)[0].y_train
    labels = sorted(cfg.withdraw.classes)
    mem = np.concatenate([parts.members[k] for k in k_all])
    hold = np.concatenate([parts.audit[k] for k in k_all])
    forget = np.isin(y[mem], labels)
    return mem[forget], hold[np.isin(y[hold], labels)], mem[~forget]


def withdrawn_forgetting(orig: ModelSignals, model: ModelSignals, w_mem: np.ndarray, w_hold: np.ndarray,
                         alpha: float) -> dict:
    """Forsaken's forgetting rate of the withdrawn members, threshold fixed on the original model (docs/leakage.md)."""
    hold = orig.pool.phi[w_hold]
    before, _ = a0_decisions(orig.pool.phi[w_mem], hold, alpha)
    after, _ = a0_decisions(model.pool.phi[w_mem], hold, alpha)
    out: dict = dict(forgetting_rate(before, after))
    out["alpha"] = alpha
    if out["b_t"] == 0:
        out["fr"], out["fr_per_record"] = None, None
        out["note"] = _UNDEFINED_FR
    return out


def comparison_summary(rows: list[dict], withdrawn: set[int], q: float) -> dict:
    """Per method and attack: which remaining clients differ from retrain / from the original after BH."""
    out: dict = {"test": "paired DeLong (same records, two models)", "multiple_testing": "Benjamini-Hochberg",
                 "q": q, "family": "all clients of one (model, attack)", "methods": {}}
    for r in rows:
        if r["model"] in (ORIGINAL, ORACLE):
            continue
        e = out["methods"].setdefault(r["model"], {}).setdefault(r["attack"], {
            "remaining_differ_from_retrain": [], "onion_effect": [], "withdrawn_differs_from_retrain": []})
        k = r["client"]
        if k in withdrawn:
            if r["significant_vs_retrain"]:
                e["withdrawn_differs_from_retrain"].append(k)
        else:
            if r["significant_vs_retrain"]:
                e["remaining_differ_from_retrain"].append(k)
            if r["significant_vs_original"]:
                e["onion_effect"].append(k)
    return out


def retrain_null_summary(cfg, null_scores: Scores, scores: Scores, parts, attacks: list[str],
                         q: float, sigs: dict[str, ModelSignals], gamma: float, refs: References | None,
                         margins: dict[str, float]) -> dict:
    """Retrain vs retrain with another seed: how often the comparisons flag clients when nothing differs (the
    first null seed), and the equivalence margin every verdict uses (all null seeds)."""
    nulls = sorted({n for n, _, _ in null_scores}, key=lambda n: (n != RETRAIN_NULL, n))
    out: dict = {"model": "models/retrain_null.pt", "null_models": [f"models/{n}.pt" for n in nulls],
                 "what": "the retrain oracle with another seed (initial weights, client sampling, data order); every "
                 "flag below is a false alarm", "attacks": {}}
    w_mem, w_hold, _ = forget_sets(cfg, parts)
    band = null_band(len(w_mem), len(w_hold))
    ref_name = BOTH_REFERENCES if refs is not None else None
    pooled = attack_input(sigs[RETRAIN_NULL], sigs[ORIGINAL], w_mem, w_hold, gamma, refs, ref_name)
    pooled_re = attack_input(sigs[ORACLE], sigs[ORIGINAL], w_mem, w_hold, gamma, refs, ref_name)
    for a in attacks:
        keys = [k for k in range(parts.num_clients) if (RETRAIN_NULL, k, a) in null_scores and (ORACLE, k, a) in scores]
        if not keys:
            continue
        p = np.array([paired_p(null_scores[(RETRAIN_NULL, k, a)], scores[(ORACLE, k, a)]) for k in keys])
        d = np.array([auc(*null_scores[(RETRAIN_NULL, k, a)]) - auc(*scores[(ORACLE, k, a)]) for k in keys])
        flags = benjamini_hochberg(p, q)
        w_auc = auc(*ATTACKS.get(a).score(pooled))
        w_delta = w_auc - auc(*ATTACKS.get(a).score(pooled_re))
        out["attacks"][a] = {
            "clients": len(keys), "bh_flagged": int(flags.sum()), "bh_false_alarm_rate": float(flags.mean()),
            "flagged_clients": [k for k, f in zip(keys, flags) if f],
            "raw_p_below_0.05": int(np.sum(p < 0.05)), "mean_abs_delta_auc": float(np.mean(np.abs(d))),
            "max_abs_delta_auc": float(np.max(np.abs(d))),
            "withdrawn_auc": w_auc, "withdrawn_delta_auc_vs_retrain": w_delta,
            "withdrawn_never_seen": never_seen_verdict(a, w_auc, band, bool(cfg.withdraw.classes)),
            "equivalence_margin": na_to_none(margins.get(a, math.nan))}
    return out
