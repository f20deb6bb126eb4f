"""A re-audit never drops an attack already in the results (``fedunlearn audit RUN --attacks loss``).

The attacks asked for are re-scored; every other attack of the previous audit is **kept**: its rows of
``per_client.csv``, its scores in ``signals/scores.npz`` and its entries in ``summary.json`` are carried over, and
the report and every plot are redrawn from the merged results. Keeping is only sound when the previous numbers came
from the same inputs, so the audit records the modification times of everything it reads (``config.toml``,
``partitions.npz``, ``models/*.pt``) in ``summary.json["audit_run"]``; when any of them changed, or the previous
results cannot be read, the kept attacks are re-scored too (from the cached signals: seconds) and the audit says why.
One results set per run directory, always complete, never a mix of two audits' inputs.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.errors import ConfigError
from fedunlearn.rundir import RunDir
from fedunlearn.stages.inference import Scores
from fedunlearn.stages.scoring import PER_CLIENT_COLUMNS, load_scores


@dataclass
class AuditPlan:
    """Which attacks this audit scores, which it keeps from the previous one, and their order in the results."""

    scored: list[str]
    kept: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)
    note: str = ""
    previous: dict | None = None


def input_stamps(run_dir: Path) -> dict[str, int]:
    """Modification times (ns) of every file the audit reads: its fingerprint of "the same inputs"."""
    files = [RunDir(run_dir).config, RunDir(run_dir).partitions, *sorted(RunDir(run_dir).models.glob("*.pt"))]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files if p.is_file()}


def previous_summary(run_dir: Path) -> tuple[dict | None, str]:
    """The previous audit's summary, or None with why (no summary yet: an empty reason)."""
    path = RunDir(run_dir).summary
    if not path.is_file():
        return None, ""
    try:
        prev = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"the previous summary.json is not valid JSON ({err}); audited from scratch"
    if not isinstance(prev, dict) or not isinstance(prev.get("attacks"), list):
        return None, "the previous summary.json is not a fedunlearn summary; audited from scratch"
    return prev, ""


def plan_audit(run_dir: Path, requested: list[str], stamps: dict[str, int]) -> AuditPlan:
    prev, note = previous_summary(run_dir)
    if prev is None:
        return AuditPlan(list(requested), [], list(requested), note, None)
    before = [a for a in prev["attacks"] if isinstance(a, str)]
    order = before + [a for a in requested if a not in before]
    extra = [a for a in before if a not in requested]
    if not extra:
        return AuditPlan([a for a in order if a in requested], [], order, "", prev)
    why = _why_not_keep(run_dir, prev, stamps)
    if why:
        return AuditPlan(order, [], order, f"re-scored {', '.join(extra)} too ({why})", prev)
    return AuditPlan([a for a in order if a in requested], extra, order, "", prev)


def _why_not_keep(run_dir: Path, prev: dict, stamps: dict[str, int]) -> str:
    recorded = (prev.get("audit_run") or {}).get("inputs_mtime_ns")
    if recorded is None:
        return "the previous audit did not record its inputs"
    if recorded != stamps:
        changed = sorted(k for k in set(recorded) | set(stamps) if recorded.get(k) != stamps.get(k))
        return f"changed since the previous audit: {', '.join(changed)}"
    header = _read_rows(RunDir(run_dir).per_client)[0]
    if not set(PER_CLIENT_COLUMNS) <= set(header):
        return "the previous per_client.csv is missing or incomplete"
    if not (RunDir(run_dir).scores).is_file():
        return "the previous signals/scores.npz is missing"
    try:
        load_scores(run_dir)
    except ConfigError:
        return "the previous signals/scores.npz cannot be read"
    return ""


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def merge_kept(run_dir: Path, plan: AuditPlan, names: list[str], rows: list[dict], scores: Scores,
               summary: dict) -> tuple[list[dict], Scores]:
    """Carry the kept attacks' rows, scores and summary entries over (in place for ``summary``); returns the merged
    rows (ordered by model, client, attack) and scores."""
    summary["attacks"] = list(plan.attacks)
    if not plan.kept or plan.previous is None:
        return rows, scores
    kept, prev = set(plan.kept), plan.previous
    old = [r for r in _read_rows(RunDir(run_dir).per_client)[1] if r["attack"] in kept and r["model"] in names]
    order = {a: i for i, a in enumerate(plan.attacks)}
    rows = sorted(rows + old, key=lambda r: (names.index(r["model"]), int(r["client"]), order[r["attack"]]))
    scores = {**scores, **{k: v for k, v in load_scores(run_dir).items() if k[2] in kept and k[0] in names}}
    for m, entry in summary["models"].items():
        old_leak = ((prev.get("models") or {}).get(m) or {}).get("leakage") or {}
        entry["leakage"].update({a: old_leak[a] for a in plan.kept if a in old_leak})
    for m, per in summary.get("verdicts", {}).items():
        old_v = (prev.get("verdicts") or {}).get(m) or {}
        per.update({a: old_v[a] for a in plan.kept if a in old_v})
    comp = summary.get("comparisons", {}).get("methods", {})
    for m, per in ((prev.get("comparisons") or {}).get("methods") or {}).items():
        if m in names:
            comp.setdefault(m, {}).update({a: e for a, e in per.items() if a in kept})
    old_null = (prev.get("retrain_null") or {}).get("attacks") or {}
    if any(a in old_null for a in kept):
        null = summary.setdefault("retrain_null", {k: v for k, v in prev["retrain_null"].items() if k != "attacks"})
        null.setdefault("attacks", {}).update({a: old_null[a] for a in plan.kept if a in old_null})
        null["attacks"] = {a: null["attacks"][a] for a in plan.attacks if a in null["attacks"]}
    if "rmia" in kept and "rmia" in prev and "rmia" not in summary:
        summary["rmia"] = prev["rmia"]
    for entry in summary["models"].values():
        entry["leakage"] = {a: entry["leakage"][a] for a in plan.attacks if a in entry["leakage"]}
    return rows, scores


def audit_record(plan: AuditPlan, stamps: dict[str, int]) -> dict:
    """``summary.json["audit_run"]``: what the last audit scored and kept, and the inputs it read."""
    return {"scored": plan.scored, "kept": plan.kept, "note": plan.note, "inputs_mtime_ns": stamps}


def audit_line(record: dict) -> str:
    """One line for the terminal from ``summary.json["audit_run"]`` (empty when there is nothing to say)."""
    if record.get("kept"):
        return (f"audit: re-scored {', '.join(record['scored'])}; kept {', '.join(record['kept'])} from the previous "
                "audit (same inputs); per_client.csv, summary.json, report.md and plots/ hold every attack")
    return f"audit: {record['note']}" if record.get("note") else ""
