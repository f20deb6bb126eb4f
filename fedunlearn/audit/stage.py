"""The audit stage: reads a run directory's models and partitions, computes per-record signals once (cached in
``signals/``), and writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv`` and the attack scores
behind the ROC plots (``signals/scores.npz``).

The auditor is an omniscient measuring instrument, not a participant: plain PyTorch, outside Flower. Its reads of
client records are still noted in the data-access ledger (purpose ``audit``). Re-running it (``fedunlearn audit``)
reuses the cached signals, so another attack costs no inference.

What is audited (leakage.md): every model in ``models/`` named ``original``, a configured method, or ``retrain``,
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

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.audit.attacks import ATTACKS, a0_decisions, forgetting_rate, rmia_scores, tune_rmia_a
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
from fedunlearn.audit.signals import AttackInput, RecordSignals, signals_from_logits

log = logging.getLogger(__name__)

PER_CLIENT_BASE = ["model", "client", "withdrawn", "attack", "n_member", "n_nonmember", "auc", "auc_lo", "auc_hi",
                   "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "accuracy_member", "accuracy_nonmember",
                   "delta_auc_vs_retrain"]
PER_CLIENT_EXTRA = ["delta_auc_vs_original", "p_vs_retrain", "p_vs_original", "significant_vs_retrain",
                    "significant_vs_original"]
#: per_client.csv: the 15 contract columns of design.md, then the comparison columns.
PER_CLIENT_COLUMNS = PER_CLIENT_BASE + PER_CLIENT_EXTRA
VULNERABLE_COLUMNS = ["client", "record", "model", "attack", "score", "rank"]
ORIGINAL, ORACLE = "original", "retrain"
REFERENCES = ("reference_a", "reference_b")
BOTH_REFERENCES = "reference_ab"  # records OUT of both references: the mean of both (RMIA averages its references)
RETRAIN_NULL = "retrain_null"
#: models saved in ``models/`` that are instruments of the audit, not audited models
NOT_AUDITED = frozenset({"initial", *REFERENCES, RETRAIN_NULL})


def is_null_model(name: str) -> bool:
    """``retrain_null`` and its further seeds ``retrain_null_2``, ``retrain_null_3``, ... (``audit.null_seeds``)."""
    return name == RETRAIN_NULL or (name.startswith(RETRAIN_NULL + "_") and name[len(RETRAIN_NULL) + 1:].isdigit())


def null_model_names(run_dir: Path) -> list[str]:
    """The retrain-vs-retrain null models of a run, in seed order."""
    names = [p.stem for p in (Path(run_dir) / "models").glob("*.pt") if is_null_model(p.stem)]
    return sorted(names, key=lambda n: 1 if n == RETRAIN_NULL else int(n.rsplit("_", 1)[1]))
_SIGNALS_VERSION = 2
_UNDEFINED_FR = "undefined (B_T = 0): no withdrawn member was judged a member by the original model"

Scores = dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------------------------------------------ signals


@dataclass
class ModelSignals:
    """One model's outputs on the whole training pool and the test set (indexed like the dataset)."""

    pool: RecordSignals
    pool_correct: np.ndarray
    test_correct: np.ndarray
    test: RecordSignals | None = None

    def at(self, idx: np.ndarray) -> RecordSignals:
        return RecordSignals(prob_true=self.pool.prob_true[idx], phi=self.pool.phi[idx])


def model_names(run_dir: Path) -> list[str]:
    """The audited models: original, the methods (in the config's order), retrain; never ``NOT_AUDITED``."""
    from fedunlearn.config import load_config

    cfg = load_config(run_dir / "config.toml")
    present = {p.stem for p in (run_dir / "models").glob("*.pt") if not is_null_model(p.stem)} - NOT_AUDITED
    ordered = [ORIGINAL] + [m for m in cfg.unlearn.methods if m != ORACLE] + [ORACLE]
    return [m for m in ordered if m in present]


def compute_signals(run_dir: Path, name: str) -> ModelSignals:
    """Inference of model ``name`` on every training-pool and test record, cached in ``signals/<name>.npz``.

    The cache is keyed by the model file's modification time; any model in ``models/`` (references included) can be
    cached, so re-auditing with other attacks never re-runs inference.
    """
    model_path = run_dir / "models" / f"{name}.pt"
    cache = run_dir / "signals" / f"{name}.npz"
    stamp = model_path.stat().st_mtime_ns
    if cache.exists():
        with np.load(cache) as z:
            fresh = "version" in z.files and int(z["version"]) == _SIGNALS_VERSION and int(z["stamp"]) == stamp
            if fresh:
                return ModelSignals(RecordSignals(z["prob_true"], z["phi"]), z["pool_correct"], z["test_correct"],
                                    RecordSignals(z["test_prob_true"], z["test_phi"]))
    from fedunlearn.client import experiment_data
    from fedunlearn.config import load_config
    from fedunlearn.io import atomic_save_npz
    from fedunlearn.models import build_model, load_weights, resolve_device, set_weights
    from fedunlearn.training import logits

    cfg = load_config(run_dir / "config.toml")
    ds, _ = experiment_data(cfg)
    device = resolve_device(cfg.sim.device)
    model = set_weights(build_model(cfg.model, ds.input_shape, ds.num_classes), load_weights(model_path))
    z_pool = logits(model, ds.x_train, device)
    z_test = logits(model, ds.x_test, device)
    sig = signals_from_logits(z_pool, ds.y_train)
    test_sig = signals_from_logits(z_test, ds.y_test)
    pool_correct = z_pool.argmax(1) == ds.y_train
    test_correct = z_test.argmax(1) == ds.y_test
    atomic_save_npz(cache, prob_true=sig.prob_true, phi=sig.phi, pool_correct=pool_correct,
                    test_correct=test_correct, test_prob_true=test_sig.prob_true, test_phi=test_sig.phi,
                    stamp=np.asarray(stamp), version=np.asarray(_SIGNALS_VERSION))
    return ModelSignals(sig, pool_correct, test_correct, test_sig)


# --------------------------------------------------------------------------------------------- RMIA instruments


@dataclass(frozen=True)
class Population:
    """RMIA's population sample Z: audit records (training-pool indices) and test records (test indices)."""

    pool: np.ndarray
    test: np.ndarray

    def __len__(self) -> int:
        return int(len(self.pool) + len(self.test))

    def without(self, pool_idx: np.ndarray) -> Population:
        """Z minus the given pool records (a client's own audit records are never its population)."""
        return Population(self.pool[~np.isin(self.pool, pool_idx)], self.test)

    def signals(self, s: ModelSignals) -> RecordSignals:
        if s.test is None:
            raise ValueError("these signals lack test-set outputs (stale cache)")
        return RecordSignals(np.concatenate([s.pool.prob_true[self.pool], s.test.prob_true[self.test]]),
                             np.concatenate([s.pool.phi[self.pool], s.test.phi[self.test]]))


def sample_population(parts, size: int, seed: int) -> Population:
    """The union of every client's audit records and the test set, seeded sample of at most ``size`` records
    (validation records never: methods read them)."""
    hold = np.sort(np.concatenate([np.asarray(h, np.int64) for h in parts.audit]))
    test = np.asarray(parts.test, np.int64)
    n = len(hold) + len(test)
    if n <= size:
        return Population(hold, test)
    pick = np.sort(np.random.default_rng([seed, 0x726D6961]).choice(n, size=size, replace=False))
    return Population(hold[pick[pick < len(hold)]], test[pick[pick >= len(hold)] - len(hold)])


@dataclass
class References:
    """RMIA's two reference federations, the population and the tuned ``a``.

    Parameters
    ----------
    half_a, half_b: the clients each reference trained on (complementary halves of the remaining clients).
    out_of_both: withdrawn clients, in neither half (OUT for both; the audit uses the mean of both references'
        p(x) for them, as RMIA averages over every reference model that is OUT for x: less variance than one).
    sigs: cached signals of ``reference_a`` and ``reference_b``.
    population: the population sample Z.
    a, tuning_auc: RMIA's ``a``, tuned by attacking reference A with reference B, and the AUC it reached.
    """

    half_a: list[int]
    half_b: list[int]
    out_of_both: list[int]
    sigs: dict[str, ModelSignals]
    population: Population
    a: float = math.nan
    tuning_auc: float = math.nan

    def __post_init__(self) -> None:
        ra, rb = self.sigs[REFERENCES[0]], self.sigs[REFERENCES[1]]
        self.sigs[BOTH_REFERENCES] = ModelSignals(_mean_signals(ra.pool, rb.pool), ra.pool_correct, ra.test_correct,
                                                  _mean_signals(ra.test, rb.test) if ra.test and rb.test else None)

    def for_client(self, k: int) -> str:
        """The reference signals that EXCLUDE client k (both references' mean when both exclude it)."""
        if k in self.out_of_both:
            return BOTH_REFERENCES
        return REFERENCES[1] if k in self.half_a else REFERENCES[0]

    def tune(self, parts, gamma: float) -> None:
        """Tune ``a`` on {0, 0.1, ..., 1}: target = reference A, reference = B; members = A's clients' members,
        non-members = A's clients' audit records (OUT for both), population = Z without those."""
        mem = np.concatenate([parts.members[k] for k in self.half_a])
        non = np.concatenate([parts.audit[k] for k in self.half_a])
        ra, rb = self.sigs[REFERENCES[0]], self.sigs[REFERENCES[1]]
        z = self.population.without(non)
        pza, pzb = z.signals(ra).prob_true, z.signals(rb).prob_true
        self.a = tune_rmia_a(ra.pool.prob_true[mem], ra.pool.prob_true[non], rb.pool.prob_true[mem],
                             rb.pool.prob_true[non], pza, pzb, gamma=gamma)
        s_mem = rmia_scores(ra.pool.prob_true[mem], rb.pool.prob_true[mem], pza, pzb, self.a, gamma)
        s_non = rmia_scores(ra.pool.prob_true[non], rb.pool.prob_true[non], pza, pzb, self.a, gamma)
        self.tuning_auc = auc(s_mem, s_non)

    def describe(self) -> dict:
        return {"a": self.a, "a_grid": [round(0.1 * i, 1) for i in range(11)], "tuning_auc": self.tuning_auc,
                "tuned_on": "reference_a attacked with reference_b (members vs audit records of reference A's clients)",
                "population_size": len(self.population), "population_held_out": int(len(self.population.pool)),
                "population_test": int(len(self.population.test)),
                "halves": {"reference_a": self.half_a, "reference_b": self.half_b, "out_of_both": self.out_of_both},
                "reference_for_client": "reference_b for reference A's clients, reference_a for reference B's, the "
                                        "mean of both for withdrawn clients (OUT for both references)"}


def _mean_signals(a: RecordSignals, b: RecordSignals) -> RecordSignals:
    """The mean of two models' p_y(x) (RMIA's reference term), with its logit-scaled confidence."""
    p = (a.prob_true + b.prob_true) / 2
    return RecordSignals(prob_true=p, phi=np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-16)))


def load_references(run_dir: Path, cfg, parts) -> References:
    """The references of a run (``references.json`` and ``models/reference_{a,b}.pt``), tuned."""
    from fedunlearn.errors import ConfigError

    meta_path = run_dir / "references.json"
    missing = [p.name for p in [meta_path] + [run_dir / "models" / f"{r}.pt" for r in REFERENCES] if not p.exists()]
    if missing:
        allowed = ", ".join(n for n in ATTACKS.names() if "reference" not in ATTACKS.get(n).needs)
        raise ConfigError(f"audit.attacks: rmia needs reference federations, which this run did not train "
                          f"(missing {', '.join(missing)}; run with rmia among audit.attacks); allowed here: {allowed}")
    meta = json.loads(meta_path.read_text())
    refs = References(list(meta["reference_a"]), list(meta["reference_b"]), list(meta.get("out_of_both", [])),
                      {r: compute_signals(run_dir, r) for r in REFERENCES},
                      sample_population(parts, cfg.audit.population, cfg.seed))
    refs.tune(parts, cfg.audit.gamma)
    return refs


# ------------------------------------------------------------------------------------------------------ scoring


def attack_input(s: ModelSignals, orig: ModelSignals, mem_idx: np.ndarray, hold_idx: np.ndarray, gamma: float,
                 refs: References | None = None, ref_name: str | None = None) -> AttackInput:
    """Everything an attack may see for one model on one set of members / held-out records."""
    kw: dict = {}
    if refs is not None and ref_name is not None:
        r = refs.sigs[ref_name]
        z = refs.population.without(hold_idx)
        kw = {"ref_member": r.at(mem_idx), "ref_nonmember": r.at(hold_idx), "population_target": z.signals(s),
              "population_ref": z.signals(r), "rmia_a": refs.a}
    return AttackInput(member=s.at(mem_idx), nonmember=s.at(hold_idx), original_member=orig.at(mem_idx),
                       original_nonmember=orig.at(hold_idx), gamma=gamma, **kw)


def score_models(models: list[str], sigs: dict[str, ModelSignals], parts, attacks: list[str], gamma: float,
                 refs: References | None) -> Scores:
    """Attack scores (members, held-out) of every (model, client, attack); the difference attack skips the
    original (its difference with itself is no attack)."""
    out: Scores = {}
    for m in models:
        for k in range(parts.num_clients):
            inp = attack_input(sigs[m], sigs[ORIGINAL], parts.members[k], parts.audit[k], gamma, refs,
                               refs.for_client(k) if refs is not None else None)
            for a in attacks:
                attack = ATTACKS.get(a)
                if "original" in attack.needs and m == ORIGINAL:
                    continue
                out[(m, k, a)] = attack.score(inp)
    return out


def _metric_row(model: str, client: int, withdrawn: bool, attack: str, mem: np.ndarray, non: np.ndarray,
                acc_m: float, acc_n: float, bootstrap: int) -> dict:
    a, lo, hi = auc_ci(mem, non, method="bootstrap" if bootstrap else "delong", n_boot=bootstrap, rng=0)
    return {"model": model, "client": client, "withdrawn": "true" if withdrawn else "false", "attack": attack,
            "n_member": len(mem), "n_nonmember": len(non), "auc": a, "auc_lo": lo, "auc_hi": hi,
            "tpr_at_1pct_fpr": tpr_at_fpr(mem, non, 0.01), "tpr_at_0.1pct_fpr": tpr_at_fpr(mem, non, 0.001),
            "advantage": advantage(mem, non), "accuracy_member": acc_m, "accuracy_nonmember": acc_n,
            "delta_auc_vs_retrain": math.nan, "delta_auc_vs_original": math.nan, "p_vs_retrain": math.nan,
            "p_vs_original": math.nan, "significant_vs_retrain": None, "significant_vs_original": None}


def paired_p(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Paired DeLong p-value of AUC(a) = AUC(b) on the same records; NaN with fewer than 2 records a side."""
    if min(len(a[0]), len(a[1])) < 2:
        return math.nan
    return delong_paired_test(a[0], a[1], b[0], b[1])[1]


def compare_rows(rows: list[dict], scores: Scores, q: float) -> None:
    """Fill ΔAUC, paired DeLong p-values and BH flags (over the clients of each (model, attack)) in place."""
    aucs = {(r["model"], r["client"], r["attack"]): r["auc"] for r in rows}
    for r in rows:
        m, k, a = r["model"], r["client"], r["attack"]
        for base, dcol, pcol in ((ORACLE, "delta_auc_vs_retrain", "p_vs_retrain"),
                                 (ORIGINAL, "delta_auc_vs_original", "p_vs_original")):
            if (base, k, a) not in aucs:
                continue
            r[dcol] = r["auc"] - aucs[(base, k, a)]
            if m != base:
                r[pcol] = paired_p(scores[(m, k, a)], scores[(base, k, a)])
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    for group in groups.values():
        for pcol, scol in (("p_vs_retrain", "significant_vs_retrain"), ("p_vs_original", "significant_vs_original")):
            p = np.array([g[pcol] for g in group], dtype=np.float64)
            flags = benjamini_hochberg(p, q)
            for g, pv, f in zip(group, p, flags):
                g[scol] = None if math.isnan(pv) else bool(f)


# ------------------------------------------------------------------------------------------------------ the stage


def run_audit(run_dir: Path, attacks: list[str] | None = None, failed: dict[str, str] | None = None,
              seeds: int | None = None) -> dict:
    """Audit every model of a finished run; writes ``per_client.csv``, ``summary.json``, ``vulnerable_records.csv``
    and ``signals/scores.npz``; returns the summary.

    ``seeds`` (default ``audit.seeds``) > 0 adds the A2 seed-distribution audit: the replicas in ``seeds/`` are
    trained in-process first when missing (``fedunlearn.seeds``), then only their cached signals are read.
    """
    from fedunlearn.access import AccessLog, DataRead, WithdrawalWindow
    from fedunlearn.config import load_config
    from fedunlearn.data import load_partitions
    from fedunlearn.errors import ConfigError

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.toml")
    attacks = attacks or cfg.audit.attacks
    seeds = cfg.audit.seeds if seeds is None else seeds
    if seeds in (1, 2) or seeds < 0:
        raise ConfigError(f"--seeds: {seeds} not allowed; allowed: 0 (off) or >= 3")
    parts = load_partitions(run_dir / "partitions.npz")
    names = model_names(run_dir)
    if ORACLE not in names or ORIGINAL not in names:
        raise ConfigError(f"run directory: {run_dir} lacks models/original.pt or models/retrain.pt (unfinished run?)")
    for a in attacks:
        ATTACKS.get(a, "audit.attacks")
    withdrawn = set(cfg.withdraw.clients)
    needs_refs = any("reference" in ATTACKS.get(a).needs for a in attacks)
    refs = load_references(run_dir, cfg, parts) if needs_refs else None
    sigs = {m: compute_signals(run_dir, m) for m in names}
    nulls = null_model_names(run_dir)
    for n in nulls:
        sigs[n] = compute_signals(run_dir, n)
    access = AccessLog(run_dir / "data_access.csv", WithdrawalWindow({p: "closed" for p in withdrawn}))
    access.record([DataRead(k, s, len(getattr(parts, "members" if s == "member" else "audit")[k]), "audit")
                   for k in range(parts.num_clients) for s in ("member", "audit")], "audit")

    gamma = cfg.audit.gamma
    scores = score_models(names, sigs, parts, attacks, gamma, refs)
    rows: list[dict] = []
    for (m, k, a), (mem, non) in scores.items():
        s = sigs[m]
        mi, hi = parts.members[k], parts.audit[k]
        rows.append(_metric_row(m, k, k in withdrawn, a, mem, non, float(s.pool_correct[mi].mean()),
                                float(s.pool_correct[hi].mean()), cfg.audit.bootstrap))
    compare_rows(rows, scores, cfg.audit.fdr_q)
    _write_csv(run_dir / "per_client.csv", rows)
    _save_scores(run_dir / "signals" / "scores.npz", scores)
    vulnerable = vulnerable_records(scores, sigs[ORIGINAL], parts, attacks, cfg.audit.vulnerable_top)
    _write_rows(run_dir / "vulnerable_records.csv", VULNERABLE_COLUMNS, vulnerable)

    null_scores = score_models(nulls, sigs, parts, attacks, gamma, refs) if nulls else {}
    margins = equivalence_margins(null_scores, scores, nulls, attacks, parts.num_clients)
    summary = build_summary(run_dir, cfg, names, sigs, parts, attacks, failed, refs, margins)
    summary["comparisons"] = comparison_summary(rows, withdrawn, cfg.audit.fdr_q)
    if nulls:
        summary["retrain_null"] = retrain_null_summary(cfg, null_scores, scores, parts, attacks,
                                                       cfg.audit.fdr_q, sigs, gamma, refs, margins)
    if seeds:
        from fedunlearn.seeds import train_seed_runs

        summary["seed_audit"] = seed_audit(run_dir, train_seed_runs(run_dir, seeds), names, sigs, parts, cfg)
    from fedunlearn.io import atomic_write_json

    atomic_write_json(run_dir / "summary.json", _json_safe(summary))
    return summary


# ------------------------------------------------------------------------------------------------------ outputs


def _fmt(v: object) -> object:
    if v is None:
        return "NA"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "NA" if math.isnan(v) else f"{v:.6f}"
    return v


def _write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    from fedunlearn.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r[k]) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _write_csv(path: Path, rows: list[dict]) -> None:
    _write_rows(path, PER_CLIENT_COLUMNS, rows)


def _save_scores(path: Path, scores: Scores) -> None:
    """Attack scores per (model, client, attack), for ROC curves: keys ``model|client|attack|side``, side in
    member / nonmember."""
    from fedunlearn.io import atomic_save_npz

    arrays = {}
    for (m, k, a), (mem, non) in scores.items():
        arrays[f"{m}|{k}|{a}|member"] = np.asarray(mem, np.float64)
        arrays[f"{m}|{k}|{a}|nonmember"] = np.asarray(non, np.float64)
    atomic_save_npz(path, **arrays)


def load_scores(run_dir: Path) -> Scores:
    """The attack scores saved by the last audit (empty when there are none)."""
    path = Path(run_dir) / "signals" / "scores.npz"
    out: Scores = {}
    if not path.exists():
        return out
    with np.load(path) as z:
        for key in z.files:
            m, k, a, side = key.rsplit("|", 3)
            if side == "member":
                out[(m, int(k), a)] = (z[key], z[f"{m}|{k}|{a}|nonmember"])
    return out


def vulnerable_records(scores: Scores, original: ModelSignals, parts, attacks: list[str], top: int) -> list[dict]:
    """The ``top`` members of each client with the highest membership score under the original model.

    The score is RMIA's when it ran (calibrated per record by the reference model, so it ranks records by how much
    training on them changed the model, not by how easy they are), else the loss attack's phi.
    """
    attack = "rmia" if "rmia" in attacks else "loss"
    out = []
    for k in range(parts.num_clients):
        idx = np.asarray(parts.members[k])
        if (ORIGINAL, k, attack) in scores:
            s = np.asarray(scores[(ORIGINAL, k, attack)][0], np.float64)
        else:
            s = original.pool.phi[idx]
        order = np.lexsort((idx, -s))[:top]  # highest score first, ties by record index
        out += [{"client": k, "record": int(idx[j]), "model": ORIGINAL, "attack": attack, "score": float(s[j]),
                 "rank": r + 1} for r, j in enumerate(order)]
    return out


def _json_safe(obj: object) -> object:
    """NaN / inf -> null (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _na(v: float) -> float | None:
    return None if v is None or math.isnan(v) else v


# ------------------------------------------------------------------------------------------------------ summary


def build_summary(run_dir: Path, cfg, names: list[str], sigs: dict[str, ModelSignals], parts, attacks: list[str],
                  failed: dict[str, str] | None, refs: References | None = None,
                  margins: dict[str, float] | None = None) -> dict:
    """Per model: utility, the withdrawn clients' leakage (pooled over withdrawn clients) vs retrain and vs the
    original, the forgetting rate, costs; plus the RMIA set-up and the per-method verdicts."""
    from fedunlearn.costs import CostLedger

    withdrawn = sorted(cfg.withdraw.clients)
    w_mem, w_hold, r_mem = forget_sets(cfg, parts)
    band = null_band(len(w_mem), len(w_hold))
    test_forget = test_kept = None
    if cfg.withdraw.classes:
        from fedunlearn.client import experiment_data

        y_test = experiment_data(cfg)[0].y_test[parts.test]
        test_forget = parts.test[np.isin(y_test, cfg.withdraw.classes)]
        test_kept = parts.test[~np.isin(y_test, cfg.withdraw.classes)]
    ledger = CostLedger.load(run_dir / "ledger.csv")
    prev_failed = json.loads((run_dir / "summary.json").read_text()).get("failed_methods", {}) \
        if (run_dir / "summary.json").exists() else {}
    failed = {**prev_failed, **(failed or {})}
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
            leak = {"auc": value, "auc_lo": lo, "auc_hi": hi, "tpr_at_1pct_fpr": _na(tpr_at_fpr(mem, non, 0.01)),
                    "advantage": advantage(mem, non), "null_band": list(band), "verdict": verdict,
                    "equivalence_margin": _na(margin), "never_seen": never_seen_verdict(a, value, band)}
            leak["distance_to_retrain"] = value - re_auc if re_auc is not None else None
            leak["tpr_at_0.1pct_fpr"] = _na(tpr_at_fpr(mem, non, 0.001))
            leak["delta_auc_vs_original"] = value - og_auc if og_auc is not None else None
            leak["p_vs_retrain"] = paired_p((mem, non), re) if re is not None and m != ORACLE else None
            leak["p_vs_original"] = paired_p((mem, non), og) if og is not None and m != ORIGINAL else None
            leak["closer_to"] = _closer(value, re_auc, og_auc) if m not in (ORACLE, ORIGINAL) else None
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
    summary = {
        "name": cfg.name, "seed": cfg.seed, "withdrawn_clients": withdrawn,
        "withdrawn_classes": sorted(cfg.withdraw.classes), "attacks": attacks,
        "null_band": list(band), "n_member": int(len(w_mem)), "n_nonmember": int(len(w_hold)),
        "original_training": {"wall_s": original_cost.wall_s, "rounds": original_cost.rounds,
                              "client_samples": original_cost.client_samples,
                              "server_storage_bytes": original_cost.server_storage_bytes},
        "models": models, "failed_methods": failed,
    }
    summary["verdict_rule"] = (
        "verdict: the withdrawn clients' AUC against retrain's, equivalent when |ΔAUC| <= equivalence_margin = 1.96 x "
        "RMS of retrain-vs-retrain ΔAUC over every client and null seed (audit.retrain_null, audit.null_seeds); above "
        "it under-unlearned (still leaks), below it over-unlearned; for the difference attack the direction flips (a "
        "larger before/after change than retrain's = over-unlearned); 'no margin' without a null; retrain is exact. "
        "never_seen: inside / above / below the 0.5 null band of leakage.md (membership attacks only)")
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
    from fedunlearn.client import experiment_data

    y = experiment_data(cfg)[0].y_train
    labels = sorted(cfg.withdraw.classes)
    mem = np.concatenate([parts.members[k] for k in k_all])
    hold = np.concatenate([parts.audit[k] for k in k_all])
    forget = np.isin(y[mem], labels)
    return mem[forget], hold[np.isin(y[hold], labels)], mem[~forget]


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
    """"As if never seen": the AUC inside the 0.5 null band of leakage.md ('inside'), above it ('under-unlearned')
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


def _closer(value: float, re_auc: float | None, og_auc: float | None) -> str | None:
    if re_auc is None or og_auc is None:
        return None
    d_re, d_og = abs(value - re_auc), abs(value - og_auc)
    return "retrain" if d_re < d_og else "original" if d_og < d_re else "tie"


def withdrawn_forgetting(orig: ModelSignals, model: ModelSignals, w_mem: np.ndarray, w_hold: np.ndarray,
                         alpha: float) -> dict:
    """Forsaken's forgetting rate of the withdrawn members, threshold fixed on the original model (leakage.md)."""
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
            "withdrawn_never_seen": never_seen_verdict(a, w_auc, band),
            "equivalence_margin": _na(margins.get(a, math.nan))}
    return out


# ------------------------------------------------------------------------------------------------------ A2


def seed_audit(run_dir: Path, seed_dirs: list[Path], names: list[str], sigs: dict[str, ModelSignals], parts,
               cfg) -> dict:
    """A2 over the withdrawn members: per-example U-LiRA accuracy and NeurIPS-2023 epsilon of every model against
    retrain, from the M seed replicas; per-record values in ``seed_audit.csv``.

    Models: the original (no unlearning at all: the upper reference) and each method that produced a model in every
    replica. Null: epsilon of retrain vs retrain on two disjoint halves of the retrain seeds, compared with the same
    half-size epsilon of each model (the max over rules biases epsilon upwards, so compare with that, not with 0).
    """
    from fedunlearn.audit.seed_audit import (
        FIXED_VARIANCE_BELOW,
        challenge_score,
        epsilons_per_example,
        fit_ulira,
        ulira_accuracy,
    )

    w_mem = forget_sets(cfg, parts)[0]
    m_seeds = len(seed_dirs)
    present = [m for m in names if all((d / "models" / f"{m}.pt").exists() for d in seed_dirs)]
    if ORACLE not in present:
        return {"seeds": m_seeds, "error": "retrain missing in a seed replica"}
    phi = {m: np.stack([compute_signals(d, m).pool.phi[w_mem] for d in seed_dirs]) for m in present}
    ret = phi[ORACLE]
    h = m_seeds // 2
    eps_null = epsilons_per_example(ret[:h], ret[h:2 * h])
    out: dict = {"seeds": m_seeds, "seed_values": [json.loads((d / "env.json").read_text())["seed"]
                                                   for d in seed_dirs],
                 "replicas": [str(d.relative_to(run_dir)) for d in seed_dirs], "records": int(len(w_mem)),
                 "score": "phi (logit-scaled confidence) of each withdrawn member", "delta": 1e-5,
                 "fixed_variance": m_seeds < FIXED_VARIANCE_BELOW,
                 "retrain_vs_retrain": {"epsilon_half_mean": float(eps_null.mean()),
                                        "challenge_score_half": challenge_score(eps_null), "half_seeds": h},
                 "models": {}, "missing": [m for m in names if m not in present]}
    per_record = []
    for m in present:
        if m == ORACLE:
            continue
        unl = phi[m]
        eps = epsilons_per_example(unl, ret)
        eps_half = epsilons_per_example(unl[:h], ret[h:2 * h])
        acc = ulira_accuracy(unl, ret)
        llr = fit_ulira(unl, ret).score(sigs[m].pool.phi[w_mem])  # the audited run's own model, not a shadow seed
        out["models"][m] = {
            "epsilon_mean": float(eps.mean()), "epsilon_median": float(np.median(eps)), "epsilon_max": float(eps.max()),
            "challenge_score": challenge_score(eps), "epsilon_half_mean": float(eps_half.mean()),
            "ulira_accuracy_mean": float(acc.mean()), "ulira_llr_mean_of_audited_model": float(llr.mean())}
        per_record += [{"model": m, "record": int(r), "epsilon": float(e), "ulira_accuracy": float(u)}
                       for r, e, u in zip(w_mem, eps, acc)]
    per_record += [{"model": "retrain_vs_retrain", "record": int(r), "epsilon": float(e), "ulira_accuracy": math.nan}
                   for r, e in zip(w_mem, eps_null)]
    _write_rows(run_dir / "seed_audit.csv", ["model", "record", "epsilon", "ulira_accuracy"], per_record)
    return out
