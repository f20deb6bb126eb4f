"""The audit stage: reads a run directory's models and partitions, computes per-record signals once (cached in
``signals/``), and writes ``per_client.csv`` and ``summary.json``.

The auditor is an omniscient measuring instrument, not a participant: plain PyTorch, outside Flower. Its reads of
client records are still noted in the data-access ledger (purpose ``audit``). Re-running it (``fedunlearn audit``)
reuses the cached signals, so another attack costs no inference.
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

from fedunlearn.audit.attacks import ATTACKS
from fedunlearn.audit.metrics import advantage, auc_ci, band_verdict, null_band, tpr_at_fpr
from fedunlearn.audit.signals import AttackInput, RecordSignals, signals_from_logits

log = logging.getLogger(__name__)

PER_CLIENT_COLUMNS = ["model", "client", "withdrawn", "attack", "n_member", "n_nonmember", "auc", "auc_lo", "auc_hi",
                      "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "accuracy_member", "accuracy_nonmember",
                      "delta_auc_vs_retrain"]
ORIGINAL, ORACLE = "original", "retrain"


@dataclass
class ModelSignals:
    """One model's outputs on the whole training pool and the test set (indexed like the dataset)."""

    pool: RecordSignals
    pool_correct: np.ndarray
    test_correct: np.ndarray

    def at(self, idx: np.ndarray) -> RecordSignals:
        return RecordSignals(prob_true=self.pool.prob_true[idx], phi=self.pool.phi[idx])


def model_names(run_dir: Path) -> list[str]:
    """original, the methods (in the config's order), retrain: the models the audit compares."""
    from fedunlearn.config import load_config

    cfg = load_config(run_dir / "config.toml")
    present = {p.stem for p in (run_dir / "models").glob("*.pt")}
    ordered = [ORIGINAL] + [m for m in cfg.unlearn.methods if m != ORACLE] + [ORACLE]
    return [m for m in ordered if m in present]


def compute_signals(run_dir: Path, name: str) -> ModelSignals:
    """Inference of model ``name`` on every training-pool and test record, cached in ``signals/<name>.npz``."""
    from fedunlearn.client import experiment_data
    from fedunlearn.config import load_config
    from fedunlearn.io import atomic_save_npz
    from fedunlearn.models import build_model, load_weights, resolve_device, set_weights
    from fedunlearn.training import logits

    model_path = run_dir / "models" / f"{name}.pt"
    cache = run_dir / "signals" / f"{name}.npz"
    stamp = model_path.stat().st_mtime_ns
    if cache.exists():
        with np.load(cache) as z:
            if int(z["stamp"]) == stamp:
                return ModelSignals(RecordSignals(z["prob_true"], z["phi"]), z["pool_correct"], z["test_correct"])
    cfg = load_config(run_dir / "config.toml")
    ds, _ = experiment_data(cfg)
    device = resolve_device(cfg.sim.device)
    model = set_weights(build_model(cfg.model, ds.input_shape, ds.num_classes), load_weights(model_path))
    z_pool = logits(model, ds.x_train, device)
    z_test = logits(model, ds.x_test, device)
    sig = signals_from_logits(z_pool, ds.y_train)
    pool_correct = z_pool.argmax(1) == ds.y_train
    test_correct = z_test.argmax(1) == ds.y_test
    atomic_save_npz(cache, prob_true=sig.prob_true, phi=sig.phi, pool_correct=pool_correct,
                    test_correct=test_correct, stamp=np.asarray(stamp))
    return ModelSignals(sig, pool_correct, test_correct)


def _metric_row(model: str, client: int, withdrawn: bool, attack: str, mem: np.ndarray, non: np.ndarray,
                acc_m: float, acc_n: float, bootstrap: int) -> dict:
    a, lo, hi = auc_ci(mem, non, method="bootstrap" if bootstrap else "delong", n_boot=bootstrap, rng=0)
    return {"model": model, "client": client, "withdrawn": "true" if withdrawn else "false", "attack": attack,
            "n_member": len(mem), "n_nonmember": len(non), "auc": a, "auc_lo": lo, "auc_hi": hi,
            "tpr_at_1pct_fpr": tpr_at_fpr(mem, non, 0.01), "tpr_at_0.1pct_fpr": tpr_at_fpr(mem, non, 0.001),
            "advantage": advantage(mem, non), "accuracy_member": acc_m, "accuracy_nonmember": acc_n,
            "delta_auc_vs_retrain": math.nan}


def run_audit(run_dir: Path, attacks: list[str] | None = None, failed: dict[str, str] | None = None) -> dict:
    """Audit every model of a finished run; writes ``per_client.csv`` and ``summary.json``; returns the summary."""
    from fedunlearn.access import AccessLog, DataRead, WithdrawalWindow
    from fedunlearn.config import load_config
    from fedunlearn.data import load_partitions
    from fedunlearn.errors import ConfigError

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.toml")
    attacks = attacks or cfg.audit.attacks
    parts = load_partitions(run_dir / "partitions.npz")
    names = model_names(run_dir)
    if ORACLE not in names or ORIGINAL not in names:
        raise ConfigError(f"run directory: {run_dir} lacks models/original.pt or models/retrain.pt (unfinished run?)")
    for a in attacks:
        needs = ATTACKS.get(a, "audit.attacks").needs
        if "reference" in needs:
            raise ConfigError(f"audit.attacks: {a!r} needs reference federations, which this run did not train; "
                              f"allowed here: {', '.join(n for n in ATTACKS.names() if 'reference' not in ATTACKS.get(n).needs)}")
    withdrawn = set(cfg.withdraw.clients)
    sigs = {m: compute_signals(run_dir, m) for m in names}
    access = AccessLog(run_dir / "data_access.csv", WithdrawalWindow({p: "closed" for p in withdrawn}))
    access.record([DataRead(k, s, len(getattr(parts, "members" if s == "member" else "holdout")[k]), "audit")
                   for k in range(parts.num_clients) for s in ("member", "holdout")], "audit")

    rows: list[dict] = []
    for m in names:
        s, orig = sigs[m], sigs[ORIGINAL]
        for k in range(parts.num_clients):
            mi, hi = parts.members[k], parts.holdout[k]
            inp = AttackInput(member=s.at(mi), nonmember=s.at(hi), original_member=orig.at(mi),
                              original_nonmember=orig.at(hi), gamma=cfg.audit.gamma)
            acc_m, acc_n = float(s.pool_correct[mi].mean()), float(s.pool_correct[hi].mean())
            for a in attacks:
                attack = ATTACKS.get(a)
                if "original" in attack.needs and m == ORIGINAL:
                    continue  # the before/after difference of the original with itself is not an attack
                mem, non = attack.score(inp)
                rows.append(_metric_row(m, k, k in withdrawn, a, mem, non, acc_m, acc_n, cfg.audit.bootstrap))
    retrain_auc = {(r["client"], r["attack"]): r["auc"] for r in rows if r["model"] == ORACLE}
    for r in rows:
        base = retrain_auc.get((r["client"], r["attack"]))
        if base is not None:
            r["delta_auc_vs_retrain"] = r["auc"] - base
    _write_csv(run_dir / "per_client.csv", rows)
    summary = build_summary(run_dir, cfg, names, sigs, parts, attacks, failed)
    from fedunlearn.io import atomic_write_json

    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return "NA" if math.isnan(v) else f"{v:.6f}"
    return v


def _write_csv(path: Path, rows: list[dict]) -> None:
    from fedunlearn.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, PER_CLIENT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r[k]) for k in PER_CLIENT_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def build_summary(run_dir: Path, cfg, names: list[str], sigs: dict[str, ModelSignals], parts, attacks: list[str],
                  failed: dict[str, str] | None) -> dict:
    """Per model: utility, the withdrawn clients' leakage (pooled over withdrawn clients) vs retrain, costs."""
    from fedunlearn.costs import CostLedger

    withdrawn = sorted(cfg.withdraw.clients)
    remaining = [k for k in range(parts.num_clients) if k not in set(withdrawn)]
    w_mem = np.concatenate([parts.members[k] for k in withdrawn])
    w_hold = np.concatenate([parts.holdout[k] for k in withdrawn])
    r_mem = np.concatenate([parts.members[k] for k in remaining])
    band = null_band(len(w_mem), len(w_hold))
    ledger = CostLedger.load(run_dir / "ledger.csv")
    prev_failed = json.loads((run_dir / "summary.json").read_text()).get("failed_methods", {}) \
        if (run_dir / "summary.json").exists() else {}
    failed = {**prev_failed, **(failed or {})}
    retrain_cost = ledger.total(ORACLE)
    models: dict[str, dict] = {}
    leak_ref: dict[str, float] = {}
    for m in [ORACLE] + [n for n in names if n != ORACLE]:
        s = sigs[m]
        entry: dict = {
            "test_accuracy": float(s.test_correct[parts.test].mean()),
            "withdrawn_accuracy": float(s.pool_correct[w_mem].mean()),
            "withdrawn_holdout_accuracy": float(s.pool_correct[w_hold].mean()),
            "retained_accuracy": float(s.pool_correct[r_mem].mean()),
            "leakage": {},
        }
        orig = sigs[ORIGINAL]
        inp = AttackInput(member=s.at(w_mem), nonmember=s.at(w_hold), original_member=orig.at(w_mem),
                          original_nonmember=orig.at(w_hold), gamma=cfg.audit.gamma)
        for a in attacks:
            attack = ATTACKS.get(a)
            if "original" in attack.needs and m == ORIGINAL:
                continue
            mem, non = attack.score(inp)
            auc, lo, hi = auc_ci(mem, non, rng=0)
            leak = {"auc": auc, "auc_lo": lo, "auc_hi": hi, "tpr_at_1pct_fpr": _na(tpr_at_fpr(mem, non, 0.01)),
                    "advantage": advantage(mem, non), "null_band": list(band), "verdict": band_verdict(auc, band)}
            if m == ORACLE:
                leak_ref[a] = auc
            leak["distance_to_retrain"] = auc - leak_ref[a] if a in leak_ref else None
            entry["leakage"][a] = leak
        if m not in (ORIGINAL,):
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
    return {
        "name": cfg.name, "seed": cfg.seed, "withdrawn_clients": withdrawn, "attacks": attacks,
        "null_band": list(band), "n_member": int(len(w_mem)), "n_nonmember": int(len(w_hold)),
        "original_training": {"wall_s": original_cost.wall_s, "rounds": original_cost.rounds,
                              "client_samples": original_cost.client_samples,
                              "server_storage_bytes": original_cost.server_storage_bytes},
        "models": models, "failed_methods": failed,
    }


def _na(v: float) -> float | None:
    return None if math.isnan(v) else v
