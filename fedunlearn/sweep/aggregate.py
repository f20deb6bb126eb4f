"""A sweep's aggregates: ``sweep.csv`` (every point's per-client rows with its settings) and ``sweep_summary.csv``
(per model, setting and attack: mean and 95% CI over the replicate axis, usually the seeds).

A model's *setting* is the value of every axis that can change it: every axis outside ``unlearn`` changes every
model, ``unlearn.<m>.*`` only method m, ``unlearn.methods`` none. Points that differ only in another method's knobs
hold the same run of m (same seed, same config for m), so each replicate counts once, from the first such point.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from fedunlearn.io import atomic_write_text
from fedunlearn.sweep.spec import Point, Sweep, cell

ORIGINAL, ORACLE = "original", "retrain"   # the model names of the results contract (per_client.csv)
MODEL_COLUMNS = ["test_accuracy", "retained_accuracy", "wall_s", "client_samples", "rounds", "speedup_wall",
                 "speedup_client_samples", "verdict", "equivalence_margin"]
STATS = ["dauc_withdrawn", "dauc_remaining", "test_acc_ratio", "speedup_wall", "speedup_client_samples",
         "client_samples", "wall_s"]


def mean_ci(values: list[float | None]) -> dict | None:
    """Mean and 95% Student-t interval over replicates (None without values; no interval from one value)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return {"mean": m, "lo": None, "hi": None, "n": 1}
    from scipy.stats import t

    half = float(t.ppf(0.975, len(vals) - 1)) * statistics.stdev(vals) / math.sqrt(len(vals))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(vals)}


@dataclass
class PointResult:
    point: Point
    summary: dict
    rows: list[dict[str, str]]           # per_client.csv

    @classmethod
    def load(cls, point: Point, run_dir: Path) -> PointResult:
        summary = json.loads((run_dir / "summary.json").read_text())
        with (run_dir / "per_client.csv").open() as fh:
            return cls(point, summary, list(csv.DictReader(fh)))

    def model_entry(self, model: str) -> dict:
        """Per-model figures of ``summary.json`` that the per-client rows lack (utility, cost, speed-up)."""
        e = self.summary["models"].get(model, {})
        cost = e.get("cost") or (self.summary.get("original_training", {}) if model == ORIGINAL else {})
        speed = e.get("speedup_vs_retrain") or {}
        retrain = self.summary["models"].get(ORACLE, {})
        ratio = e["test_accuracy"] / retrain["test_accuracy"] if e and retrain.get("test_accuracy") else None
        return {"test_accuracy": e.get("test_accuracy"), "retained_accuracy": e.get("retained_accuracy"),
                "wall_s": cost.get("wall_s"), "client_samples": cost.get("client_samples"),
                "rounds": cost.get("rounds"), "speedup_wall": speed.get("wall"),
                "speedup_client_samples": speed.get("client_samples"), "test_acc_ratio": ratio}

    def leakage(self, model: str, attack: str) -> dict:
        return self.summary["models"].get(model, {}).get("leakage", {}).get(attack, {})

    def remaining_dauc(self, model: str, attack: str) -> float | None:
        """Mean ΔAUC vs retrain over the clients that stayed (per_client.csv), the "onion effect" side."""
        vals = [_num(r["delta_auc_vs_retrain"]) for r in self.rows
                if r["model"] == model and r["attack"] == attack and r["withdrawn"] != "true"]
        vals = [v for v in vals if v is not None]
        return statistics.fmean(vals) if vals else None


def _num(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(v: object) -> str:
    if v is None:
        return "NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _csv(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in header})
    return buf.getvalue()


def setting_columns(sweep: Sweep) -> list[str]:
    return sweep.zip_groups + sweep.axis_keys


def write_sweep_csv(sweep: Sweep, results: list[PointResult], path: Path) -> Path:
    """One row per point x model x client x attack: the point's settings, per_client.csv's columns, and the model's
    utility, cost and (withdrawn rows) verdict from summary.json."""
    client_cols: list[str] = []
    for res in results:
        client_cols += [c for c in (res.rows[0].keys() if res.rows else []) if c not in client_cols]
    settings = [c if c not in client_cols + MODEL_COLUMNS else f"setting.{c}" for c in setting_columns(sweep)]
    header = ["point"] + settings + client_cols + MODEL_COLUMNS
    out = []
    for res in results:
        base = {"point": res.point.name, **dict(zip(settings, res.point.columns().values()))}
        entries = {m: res.model_entry(m) for m in {r["model"] for r in res.rows}}
        for r in res.rows:
            row = {**base, **r, **entries[r["model"]]}
            leak = res.leakage(r["model"], r["attack"]) if r["withdrawn"] == "true" else {}
            row["verdict"], row["equivalence_margin"] = leak.get("verdict", ""), leak.get("equivalence_margin")
            out.append(row)
    return atomic_write_text(path, _csv(header, out))


def relevant(key: str, model: str) -> bool:
    """Whether an axis key can change a model's results (see the module docstring)."""
    if key == "unlearn.methods":
        return False
    if key == "unlearn":
        return model != ORIGINAL
    if key.startswith("unlearn."):
        return key.split(".")[1] == model
    return True


def model_setting(sweep: Sweep, point: Point, model: str) -> dict[str, str]:
    """The settings that matter for ``model`` at ``point`` (replicate axis left out); zip groups by their level
    when one of their keys matters."""
    keys = [k for k in sweep.axis_keys if k != sweep.replicate and relevant(k, model)]
    out = {g.name: str(point.levels[g.name]) for g in sweep.groups
           if g.zipped and any(k in keys for k in g.keys)}
    return out | {k: cell(point.settings[k]) for k in keys}


def _models(results: list[PointResult]) -> list[str]:
    names: list[str] = []
    for res in results:
        names += [m for m in res.summary["models"] if m not in names]
        names += [m for m in res.summary.get("failed_methods", {}) if m not in names]
    return [m for m in names if m != ORACLE] + ([ORACLE] if ORACLE in names else [])


def summarize(sweep: Sweep, results: list[PointResult]) -> list[dict]:
    """Per model, setting and attack: mean and 95% CI over replicates of the withdrawn clients' ΔAUC vs retrain,
    the remaining clients' mean ΔAUC, the test-accuracy ratio, the speed-ups and the cost; the share of replicates
    judged equivalent to retrain (retrain itself is exact)."""
    rows = []
    attacks: list[str] = []
    for res in results:
        attacks += [a for a in res.summary.get("attacks", []) if a not in attacks]
    for model in _models(results):
        groups: dict[tuple, dict[str, PointResult]] = {}
        settings: dict[tuple, dict[str, str]] = {}
        for res in results:
            s = model_setting(sweep, res.point, model)
            key = tuple(s.items())
            settings[key] = s
            rep = cell(res.point.settings.get(sweep.replicate, res.point.cfg.seed))
            groups.setdefault(key, {}).setdefault(rep, res)  # a replicate counts once (first point in grid order)
        for key, reps in groups.items():
            ok = [r for r in reps.values() if model in r.summary["models"]]
            for attack in attacks:
                leaks = [r.leakage(model, attack) for r in ok]
                if ok and not any(leaks):  # the attack does not score this model (difference: the original)
                    continue
                entries = [r.model_entry(model) for r in ok]
                verdicts = [x.get("verdict") for x in leaks if x]
                judged = [v for v in verdicts if v not in (None, "no margin")]
                values = {
                    "dauc_withdrawn": [x.get("distance_to_retrain") for x in leaks],
                    "dauc_remaining": [r.remaining_dauc(model, attack) for r in ok],
                    **{k: [e[k] for e in entries] for k in STATS[2:]}}
                row: dict = {**settings[key], "model": model, "attack": attack, "replicates": len(reps),
                             "failed": len(reps) - len(ok),
                             "equivalent_share": (sum(v in ("equivalent", "exact") for v in judged) / len(judged))
                             if judged else None,
                             "equivalence_margin": _mean([x.get("equivalence_margin") for x in leaks])}
                for stat, vals in values.items():
                    ci = mean_ci(vals) or {}
                    row[stat], row[f"{stat}_lo"], row[f"{stat}_hi"] = ci.get("mean"), ci.get("lo"), ci.get("hi")
                rows.append(row)
    return rows


def _mean(vals: list) -> float | None:
    xs = [v for v in (_num(x) for x in vals) if v is not None]
    return statistics.fmean(xs) if xs else None


def summary_header(sweep: Sweep) -> list[str]:
    stats = [f"{s}{x}" for s in STATS for x in ("", "_lo", "_hi")]
    settings = [c for c in setting_columns(sweep) if c != sweep.replicate]
    return settings + ["model", "attack", "replicates", "failed", "equivalent_share", "equivalence_margin"] + stats


def write_summary_csv(sweep: Sweep, rows: list[dict], path: Path) -> Path:
    """A setting that does not change a row's model (another method's knob) is left empty."""
    blank = dict.fromkeys(setting_columns(sweep), "")
    return atomic_write_text(path, _csv(summary_header(sweep), [blank | r for r in rows]))


def load_results(sweep: Sweep, sweep_dir: Path, finished: list[str]) -> list[PointResult]:
    by_name = {p.name: p for p in sweep.points}
    return [PointResult.load(by_name[n], sweep_dir / n) for n in finished]
