"""The audit stage: reads a run directory's models and partitions, computes per-record signals once (cached in
``signals/``), and writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv`` and the attack scores
behind the ROC plots (``signals/scores.npz``).

The auditor is an omniscient measuring instrument, not a participant: plain PyTorch, outside Flower. Its reads of
client records are still noted in the data-access ledger (purpose ``audit``). Re-running it (``fedunlearn audit``)
reuses the cached signals, so another attack costs no inference; attacks it is not asked for are kept
(``fedunlearn.stages.merge``).

What is audited (docs/leakage.md): ``original``, every configured method and ``retrain`` (``models/<name>.pt``), for
every client and attack; a method whose model file is missing or unreadable is listed under ``failed_methods``.
``models/reference_{a,b}.pt`` (RMIA's reference federations) and ``models/retrain_null.pt`` (a second retrain with
another seed) are instruments, not audited models: the first two feed RMIA, the last gives the false-alarm level of
every comparison with retrain.

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
from fedunlearn.data import load_partitions
from fedunlearn.errors import ConfigError
from fedunlearn.io import atomic_write_json
from fedunlearn.ledgers.access import AccessLog, DataRead, WithdrawalWindow
from fedunlearn.rundir import VULNERABLE_COLUMNS, RunDir, fl_finished, read_config, run_failures
from fedunlearn.stages.after import AFTER_COLUMNS, after_unlearning, continued_models
from fedunlearn.stages.during import DURING_COLUMNS, during_unlearning, recorded_snapshots
from fedunlearn.stages.inference import (
    ORACLE,
    ORIGINAL,
    ModelFileError,
    ModelSignals,
    audited_models,
    compute_signals,
    null_model_names,
)
from fedunlearn.stages.merge import audit_record, input_stamps, merge_kept, plan_audit
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
from fedunlearn.stages.summary import attack_margin, build_summary, comparison_summary, retrain_null_summary
from fedunlearn.stages.verdicts import equivalence_margins


def audited_signals(run_dir: Path, cfg, failed: dict[str, str], earlier: dict[str, str]) -> tuple[
        list[str], dict[str, ModelSignals], dict[str, str]]:
    """Signals of every audited model that can be read, and every method that cannot be audited with its reason.

    ``original`` and ``retrain`` must be readable (every verdict is against them): one line otherwise. A configured
    method whose model file is missing, empty, truncated or corrupt is listed under ``failed_methods``; a reason
    recorded by the run (``phases.json``, or ``failed``) wins over the file's, which wins over the previous audit's
    (``earlier``); a method that is audited is not failed.
    """
    sigs: dict[str, ModelSignals] = {}
    for m in (ORIGINAL, ORACLE):
        try:
            sigs[m] = compute_signals(run_dir, m)
        except ModelFileError as err:
            raise ConfigError(f"run directory: {err}; every verdict is against original.pt and retrain.pt, so "
                              "the audit cannot run: restore the file or re-run the experiment") from None
    problems: dict[str, str] = {}
    for m in audited_models(cfg)[1:-1]:
        try:
            sigs[m] = compute_signals(run_dir, m)
        except ModelFileError as err:
            problems[m] = f"models/{m}.pt {err.reason}"
    names = [m for m in audited_models(cfg) if m in sigs]
    reasons = {**earlier, **problems, **run_failures(run_dir), **failed}
    return names, sigs, {m: why for m, why in reasons.items() if m not in names}


def run_audit(run_dir: Path, attacks: list[str] | None = None, failed: dict[str, str] | None = None,
              seeds: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Audit every model of a finished run; writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv``
    and ``signals/scores.npz``; returns the summary.

    ``attacks`` (default ``audit.attacks``) are scored; attacks of the previous audit not among them are kept
    (``fedunlearn.stages.merge``). ``seeds`` (default ``audit.seeds``) > 0 adds the A2 seed-distribution audit over
    the replicas in ``seeds/``, which the pipeline trains before the audit
    (``fedunlearn.engine.replicas.train_seed_runs``; ``fedunlearn audit --seeds M`` runs it first): the audit only
    reads saved models and never trains. Every result file is written at the end, after everything was computed: a
    model that cannot be read leaves nothing behind. ``progress(phase, step, steps)`` hears of the models' signals,
    the scores and the summary (phase ``audit``).
    """
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    cfg = read_config(run_dir)
    requested = list(attacks or cfg.audit.attacks)
    seeds = seed_count(cfg, seeds)
    parts = load_partitions(rd.partitions)
    if not fl_finished(run_dir):
        raise ConfigError(f"run directory: {run_dir} is not finished (its FL phases are not all done); continue it "
                          f"with `fedunlearn run --resume {run_dir}`")
    for a in requested:
        ATTACKS.get(a, "audit.attacks")
    stamps = input_stamps(run_dir)
    plan = plan_audit(run_dir, requested, stamps)
    attacks = plan.scored
    earlier = (plan.previous or {}).get("failed_methods") or {}
    nulls = null_model_names(run_dir)
    snapshots = recorded_snapshots(run_dir, cfg) if cfg.audit.during else ({}, {})
    continued = continued_models(run_dir, cfg) if cfg.audit.after_rounds else []
    # the models' signals, the scores, the summary, and the models kept during and after unlearning
    steps = len(audited_models(cfg)) + len(nulls) + 2 + sum(map(len, snapshots[0].values()))
    steps += len(continued) * (cfg.audit.after_rounds + 1)
    done = [0]

    def tick(n: int = 1) -> None:
        done[0] += n
        if progress:
            progress("audit", done[0], steps)

    names, sigs, failed = audited_signals(run_dir, cfg, failed or {}, earlier)
    tick(len(audited_models(cfg)))
    withdrawn = set(cfg.withdraw.clients)
    needs_refs = any("reference" in ATTACKS.get(a).needs for a in attacks)
    try:
        refs = load_references(run_dir, cfg, parts) if needs_refs else None
        for n in nulls:
            sigs[n] = compute_signals(run_dir, n)
            tick()
    except ModelFileError as err:
        use = ("sets the equivalence margin of every verdict: restore it, or delete it (the verdicts then read 'no "
               "margin')") if err.path.stem in nulls else "is RMIA's reference model: restore it"
        raise ConfigError(f"run directory: {err}; it {use}") from None

    gamma = cfg.audit.gamma
    scores = score_models(names, sigs, parts, attacks, gamma, refs)
    rows: list[dict] = []
    for (m, k, a), (mem, non) in scores.items():
        s = sigs[m]
        mi, hi = parts.members[k], parts.audit[k]
        rows.append(metric_row(m, k, k in withdrawn, a, mem, non, float(s.pool_correct[mi].mean()),
                                float(s.pool_correct[hi].mean()), cfg.audit.bootstrap))
    compare_rows(rows, scores, cfg.audit.fdr_q)
    tick()

    null_scores = score_models(nulls, sigs, parts, attacks, gamma, refs) if nulls else {}
    margins = equivalence_margins(null_scores, scores, nulls, attacks, parts.num_clients)
    summary = build_summary(run_dir, cfg, names, sigs, parts, attacks, failed, refs, margins, nulls)
    summary["comparisons"] = comparison_summary(rows, withdrawn, cfg.audit.fdr_q)
    if nulls:
        summary["retrain_null"] = retrain_null_summary(cfg, null_scores, scores, parts, attacks,
                                                       cfg.audit.fdr_q, sigs, gamma, refs, margins)
    if seeds:
        summary["seed_audit"] = seed_audit(run_dir, saved_seed_runs(run_dir, cfg.seed, seeds), names, sigs, parts,
                                           cfg)
    after_rows: list[dict] = []
    if cfg.audit.after_rounds:
        after_rows, summary["after_unlearning"] = after_unlearning(run_dir, cfg, parts, gamma, continued, tick)
    rows, scores = merge_kept(run_dir, plan, names, rows, scores, summary)
    during_rows: list[dict] = []
    if cfg.audit.during:  # after the merge: the loss attack's margin may be a kept one
        margin = None if cfg.withdraw.by_class else attack_margin(summary, "loss")
        during_rows, summary["during_unlearning"] = during_unlearning(run_dir, cfg, parts, gamma, snapshots, margin,
                                                                      tick)
    summary["audit_run"] = audit_record(plan, stamps)
    vulnerable = vulnerable_records(scores, sigs[ORIGINAL], parts, plan.attacks, cfg.audit.vulnerable_top)

    access = AccessLog(rd.data_access, WithdrawalWindow({p: "closed" for p in withdrawn}))
    access.record([DataRead(k, s, len(getattr(parts, "members" if s == "member" else "audit")[k]), "audit")
                   for k in range(parts.num_clients) for s in ("member", "audit")], "audit")
    write_per_client(rd.per_client, rows)
    save_scores(rd.signals / "scores.npz", scores)
    write_rows(rd.vulnerable, VULNERABLE_COLUMNS, vulnerable)
    if after_rows:
        write_rows(rd.after_unlearning, AFTER_COLUMNS, after_rows)
    if during_rows:
        write_rows(rd.during_unlearning, DURING_COLUMNS, during_rows)
    atomic_write_json(rd.summary, json_safe(summary))
    tick()
    return summary
