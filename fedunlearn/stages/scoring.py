"""Attack scores of every (model, client, attack), the per-client metric rows with their comparisons (ΔAUC, paired
DeLong, Benjamini-Hochberg), and the audit's files: ``per_client.csv``, ``signals/scores.npz``,
``vulnerable_records.csv``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from fedunlearn.audit.attacks import ATTACKS
from fedunlearn.audit.metrics import (
    advantage,
    auc_ci,
    benjamini_hochberg,
    delong_paired_test,
    tpr_at_fpr,
)
from fedunlearn.audit.signals import AttackInput
from fedunlearn.rundir import (
    ORACLE,
    ORIGINAL,
    PER_CLIENT_COLUMNS,
    RunDir,
)
from fedunlearn.stages.inference import ModelSignals, Scores
from fedunlearn.stages.rmia import References


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


def metric_row(model: str, client: int, withdrawn: bool, attack: str, mem: np.ndarray, non: np.ndarray,
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


def _fmt(v: object) -> object:
    if v is None:
        return "NA"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "NA" if math.isnan(v) else f"{v:.6f}"
    return v


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    from fedunlearn.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r[k]) for k in columns})
    atomic_write_text(path, buf.getvalue())


def write_per_client(path: Path, rows: list[dict]) -> None:
    write_rows(path, PER_CLIENT_COLUMNS, rows)


def save_scores(path: Path, scores: Scores) -> None:
    """Attack scores per (model, client, attack), for ROC curves: keys ``model|client|attack|side``, side in
    member / nonmember."""
    from fedunlearn.io import atomic_save_npz

    arrays = {}
    for (m, k, a), (mem, non) in scores.items():
        arrays[f"{m}|{k}|{a}|member"] = np.asarray(mem, np.float64)
        arrays[f"{m}|{k}|{a}|nonmember"] = np.asarray(non, np.float64)
    atomic_save_npz(path, **arrays)


def load_scores(run_dir: Path) -> Scores:
    """The attack scores saved by the last audit (empty when there are none); one line when they cannot be read."""
    import zipfile

    from fedunlearn.errors import ConfigError

    path = RunDir(run_dir).scores
    out: Scores = {}
    if not path.exists():
        return out
    try:
        with np.load(path) as z:
            for key in z.files:
                m, k, a, side = key.rsplit("|", 3)
                if side == "member":
                    out[(m, int(k), a)] = (z[key], z[f"{m}|{k}|{a}|nonmember"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"signals/scores.npz: {path} cannot be read ({type(err).__name__}: {err}); re-create it "
                          f"with: fedunlearn audit {Path(run_dir)}") from None
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


def json_safe(obj: object) -> object:
    """NaN / inf -> null (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def na_to_none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else v
