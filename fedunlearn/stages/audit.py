"""The audit stage: reads a run directory's models and partitions, computes per-record signals once (cached in
``signals/``), and writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv`` and the attack scores
behind the ROC plots (``signals/scores.npz``).

The auditor is an omniscient measuring instrument, not a participant: plain PyTorch, outside Flower. Its reads of
client records are still noted in the data-access ledger (purpose ``audit``). Re-running it (``fedunlearn audit``)
reuses the cached signals, so another attack costs no inference.

What is audited (docs/leakage.md): every model in ``models/`` named ``original``, a configured method, or ``retrain``,
for every client and attack. ``models/reference_{a,b}.pt`` (RMIA's reference federations) and
``models/retrain_null.pt`` (a second retrain with another seed) are instruments, not audited models: the first two
feed RMIA, the last gives the false-alarm level of every comparison with retrain.

Statistics, per (model, client, attack): AUC with a 95% CI, TPR at 1% / 0.1% FPR, advantage, accuracies; against
retrain and against the original: ΔAUC and the paired DeLong p-value (both models scored on the same records), then
Benjamini-Hochberg over the clients of one (model, attack) at ``audit.fdr_q`` (the family is every client, withdrawn
ones included). For a remaining client, ``significant_vs_original`` is the "onion effect" flag (unlearning u changed
what the model reveals about k). The paired test resamples records, not training runs; ``retrain_null`` shows how
often it flags clients when both models are retrains that differ only in their seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedunlearn.audit.attacks import ATTACKS
from fedunlearn.rundir import VULNERABLE_COLUMNS, fl_finished, read_config
from fedunlearn.stages.inference import ORACLE, ORIGINAL, compute_signals, model_names, null_model_names
from fedunlearn.stages.rmia import load_references
from fedunlearn.stages.scoring import (
    compare_rows,
    json_safe,
    metric_row,
    save_scores,
    score_models,
    vulnerable_records,
    write_per_client,
    write_rows,
)
from fedunlearn.stages.seed_replicas import saved_seed_runs, seed_audit, seed_count
from fedunlearn.stages.summary import build_summary, comparison_summary, retrain_null_summary
from fedunlearn.stages.verdicts import equivalence_margins


def run_audit(run_dir: Path, attacks: list[str] | None = None, failed: dict[str, str] | None = None,
              seeds: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Audit every model of a finished run; writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv``
    and ``signals/scores.npz``; returns the summary.

    ``seeds`` (default ``audit.seeds``) > 0 adds the A2 seed-distribution audit over the replicas in ``seeds/``,
    which the pipeline trains before the audit (``fedunlearn.engine.replicas.train_seed_runs``;
    ``fedunlearn audit --seeds M`` runs it first): the audit only reads saved models and never trains.
    ``progress(phase, step, steps)`` hears of each model's signals, the scores and the summary (phase ``audit``).
    """
    from fedunlearn.data import load_partitions
    from fedunlearn.errors import ConfigError
    from fedunlearn.ledgers.access import AccessLog, DataRead, WithdrawalWindow

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    attacks = attacks or cfg.audit.attacks
    seeds = seed_count(cfg, seeds)
    parts = load_partitions(run_dir / "partitions.npz")
    if not fl_finished(run_dir):
        raise ConfigError(f"run directory: {run_dir} is not finished (its FL phases are not all done); continue it "
                          f"with `fedunlearn run --resume {run_dir}`")
    names = model_names(run_dir)
    if ORACLE not in names or ORIGINAL not in names:
        raise ConfigError(f"run directory: {run_dir} lacks models/original.pt or models/retrain.pt")
    for a in attacks:
        ATTACKS.get(a, "audit.attacks")
    withdrawn = set(cfg.withdraw.clients)
    needs_refs = any("reference" in ATTACKS.get(a).needs for a in attacks)
    refs = load_references(run_dir, cfg, parts) if needs_refs else None
    nulls = null_model_names(run_dir)
    steps, done = len(names) + len(nulls) + 2, []  # each model's signals, the scores, the summary

    def tick() -> None:
        done.append(1)
        if progress:
            progress("audit", len(done), steps)

    sigs = {}
    for m in [*names, *nulls]:
        sigs[m] = compute_signals(run_dir, m)
        tick()
    access = AccessLog(run_dir / "data_access.csv", WithdrawalWindow({p: "closed" for p in withdrawn}))
    access.record([DataRead(k, s, len(getattr(parts, "members" if s == "member" else "audit")[k]), "audit")
                   for k in range(parts.num_clients) for s in ("member", "audit")], "audit")

    gamma = cfg.audit.gamma
    scores = score_models(names, sigs, parts, attacks, gamma, refs)
    rows: list[dict] = []
    for (m, k, a), (mem, non) in scores.items():
        s = sigs[m]
        mi, hi = parts.members[k], parts.audit[k]
        rows.append(metric_row(m, k, k in withdrawn, a, mem, non, float(s.pool_correct[mi].mean()),
                                float(s.pool_correct[hi].mean()), cfg.audit.bootstrap))
    compare_rows(rows, scores, cfg.audit.fdr_q)
    write_per_client(run_dir / "per_client.csv", rows)
    save_scores(run_dir / "signals" / "scores.npz", scores)
    vulnerable = vulnerable_records(scores, sigs[ORIGINAL], parts, attacks, cfg.audit.vulnerable_top)
    write_rows(run_dir / "vulnerable_records.csv", VULNERABLE_COLUMNS, vulnerable)
    tick()

    null_scores = score_models(nulls, sigs, parts, attacks, gamma, refs) if nulls else {}
    margins = equivalence_margins(null_scores, scores, nulls, attacks, parts.num_clients)
    summary = build_summary(run_dir, cfg, names, sigs, parts, attacks, failed, refs, margins)
    summary["comparisons"] = comparison_summary(rows, withdrawn, cfg.audit.fdr_q)
    if nulls:
        summary["retrain_null"] = retrain_null_summary(cfg, null_scores, scores, parts, attacks,
                                                       cfg.audit.fdr_q, sigs, gamma, refs, margins)
    if seeds:
        summary["seed_audit"] = seed_audit(run_dir, saved_seed_runs(run_dir, cfg.seed, seeds), names, sigs, parts,
                                           cfg)
    from fedunlearn.io import atomic_write_json

    atomic_write_json(run_dir / "summary.json", json_safe(summary))
    tick()
    return summary
