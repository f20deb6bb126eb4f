"""The result tables of a run, built once and shown twice: on the terminal (``fedunlearn run / report / audit``,
rendered by ``fedunlearn.terminal``) and in ``report.md`` (markdown). Both show the same cell strings, so the same
rounding. One table of utility and cost, then one table per attack for the withdrawn clients' leakage: each stays
narrow (under 100 columns for the default methods) whatever the number of attacks, where one row per model with
every attack side by side grew to 150 columns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedunlearn.rundir import ORACLE

NA = "—"


@dataclass
class ResultTable:
    """One table: a title, a header, rows of already formatted cells; the ``text`` columns are left aligned, the
    others (numbers) right aligned; ``notes`` are lines printed under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    text: tuple[int, ...] = (0,)
    notes: list[str] = field(default_factory=list)


def fmt(value: object, spec: str = ".3f") -> str:
    """A number with the tables' rounding (``NA`` for a missing or undefined value)."""
    if value is None or value == "":
        return NA
    v = float(value)  # type: ignore[arg-type]
    return NA if math.isnan(v) else format(v, spec)


def _speedup(entry: dict, key: str, model: str) -> str:
    sp = (entry.get("speedup_vs_retrain") or {}).get(key)
    return f"{sp:.1f}×" if sp and model != ORACLE else NA


def utility_table(summary: dict) -> ResultTable:
    """Per model: test accuracy, accuracy on the withdrawn and the retained members (and on the forgotten classes'
    test records under a class withdrawal), wall time and speed-ups vs retrain (wall time, client samples)."""
    models = summary["models"]
    forgotten = any("forgotten_class_test_accuracy" in e for e in models.values())
    header = ["model", "test acc", "withdrawn acc", "retained acc"]
    header += ["forgotten-class test acc"] if forgotten else []
    header += ["wall s", "speed-up (wall)", "speed-up (samples)"]
    rows = []
    for m, e in models.items():
        row = [m, fmt(e.get("test_accuracy")), fmt(e.get("withdrawn_accuracy")), fmt(e.get("retained_accuracy"))]
        row += [fmt(e.get("forgotten_class_test_accuracy"))] if forgotten else []
        cost = e.get("cost")
        row += [fmt(cost["wall_s"], ".1f") if cost else NA, _speedup(e, "wall", m), _speedup(e, "client_samples", m)]
        rows.append(row)
    return ResultTable("Utility and cost", header, rows)


def _attack_facts(summary: dict, attack: str) -> tuple[str, bool]:
    """'equivalence margin ±0.032, never-seen band [0.416, 0.584]' (an attack's note); whether it has a never-seen
    verdict."""
    leaks = [e["leakage"][attack] for e in summary["models"].values() if attack in e.get("leakage", {})]
    margin = next((x.get("equivalence_margin") for x in leaks if x.get("equivalence_margin") is not None), None)
    band = next((x.get("null_band") for x in leaks if x.get("null_band")), summary.get("null_band"))
    never_seen = any(x.get("never_seen") for x in leaks)
    facts = [f"equivalence margin ±{fmt(margin)}" if margin is not None else "no equivalence margin (no retrain null)"]
    if never_seen and band:
        facts.append(f"never-seen band [{fmt(band[0])}, {fmt(band[1])}]")
    return ", ".join(facts), never_seen


def leakage_table(summary: dict, attack: str, label: str) -> ResultTable:
    """The withdrawn clients' leakage under one attack: AUC with its 95% CI, ΔAUC vs retrain, the verdict against
    retrain and, for membership attacks, against the never-seen band."""
    facts, never_seen = _attack_facts(summary, attack)
    header = ["model", "AUC [95% CI]", "Δ vs retrain", "vs retrain"] + (["never seen"] if never_seen else [])
    rows = []
    for m, e in summary["models"].items():
        leak = e.get("leakage", {}).get(attack)
        if leak is None:
            rows.append([m] + [NA] * (len(header) - 1))
            continue
        d = leak.get("distance_to_retrain")
        row = [m, f"{fmt(leak['auc'])} [{fmt(leak.get('auc_lo'))}, {fmt(leak.get('auc_hi'))}]",
               NA if d is None or m == ORACLE else fmt(d, "+.3f"), leak.get("verdict") or NA]
        row += [leak.get("never_seen") or NA] if never_seen else []
        rows.append(row)
    return ResultTable(f"{attack} attack: withdrawn {label}, AUC of members vs audit records", header, rows,
                       text=tuple(range(3, len(header))) + (0,), notes=[facts])


def summary_tables(summary: dict, label: str) -> list[ResultTable]:
    """Utility and cost, then one leakage table per attack (``label`` names the withdrawal: 'client(s) [0]')."""
    return [utility_table(summary)] + [leakage_table(summary, a, label) for a in summary["attacks"]]


def client_auc_table(summary: dict, rows: list[dict[str, str]], attack: str, max_clients: int) -> ResultTable:
    """Every client's AUC under one attack (``per_client.csv`` rows), models as columns; withdrawn clients first and
    marked ``*``; at most ``max_clients`` rows (the rest are in ``per_client.csv``)."""
    models = list(summary["models"])
    withdrawn = set(summary.get("withdrawn_clients", []))
    auc = {(r["model"], int(r["client"])): r["auc"] for r in rows if r["attack"] == attack}
    clients = sorted({k for _, k in auc}, key=lambda k: (k not in withdrawn, k))
    shown = clients[:max_clients]
    body = [[f"{k}*" if k in withdrawn else str(k)] + [fmt(auc.get((m, k))) for m in models] for k in shown]
    notes = ["* withdrawn"] if withdrawn & set(shown) else []
    if len(clients) > len(shown):
        notes.append(f"{len(clients) - len(shown)} more clients in per_client.csv")
    return ResultTable(f"Per-client {attack}-attack AUC (members vs the client's audit records)", ["client"] + models,
                       body, notes=notes)


def markdown(table: ResultTable) -> list[str]:
    """The table as markdown lines: a bold title, the table (text columns left, numbers right), its notes."""
    align = ["---" if i in table.text else "---:" for i in range(len(table.header))]
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table.rows]
    return lines + ([""] + table.notes if table.notes else [])
