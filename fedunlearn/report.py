"""Plots and ``report.md`` from a run directory's saved results (``fedunlearn report`` re-draws them)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedunlearn.io import atomic_write_text  # noqa: E402


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _f(v: str | float | None) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_training_curves(run_dir: Path) -> Path:
    rows = _read_csv(run_dir / "rounds.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    phases: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        phases.setdefault(r["phase"], []).append(r)
    for phase, rs in phases.items():
        x = [int(r["round"]) for r in rs]
        axes[0].plot(x, [_f(r["test_accuracy"]) for r in rs], marker=".", label=phase)
        axes[1].plot(x, [_f(r["train_loss"]) for r in rs], marker=".", label=phase)
    axes[0].set(xlabel="round", ylabel="test accuracy", title="Global model on the test set")
    axes[1].set(xlabel="round", ylabel="mean client training loss", title="Local training loss")
    axes[0].legend(fontsize=7)
    out = run_dir / "plots" / "training_curves.png"
    _save(fig, out)
    return out


def plot_client_auc(run_dir: Path, attack: str = "loss") -> Path:
    """Per-client AUC, one bar group per client, original / methods / retrain, with CIs and the null band."""
    rows = [r for r in _read_csv(run_dir / "per_client.csv") if r["attack"] == attack]
    summary = json.loads((run_dir / "summary.json").read_text())
    models = list(summary["models"])
    clients = sorted({int(r["client"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(clients) + 2), 4))
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        rs = {int(r["client"]): r for r in rows if r["model"] == m}
        x = [c + (i - (len(models) - 1) / 2) * width for c in clients]
        y = [_f(rs[c]["auc"]) if c in rs else math.nan for c in clients]
        lo = [y[j] - _f(rs[c]["auc_lo"]) if c in rs else 0 for j, c in enumerate(clients)]
        hi = [_f(rs[c]["auc_hi"]) - y[j] if c in rs else 0 for j, c in enumerate(clients)]
        ax.bar(x, y, width, label=m, yerr=[lo, hi], capsize=2)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    for w in summary["withdrawn_clients"]:
        ax.annotate("withdrawn", (w, 0.02), ha="center", fontsize=8, color="crimson")
    ax.set(xlabel="client", ylabel=f"{attack} attack AUC", ylim=(0, 1), xticks=clients,
           title="Membership leakage per client (members vs that client's held-out records)")
    ax.legend(fontsize=7, ncol=min(len(models), 5))
    out = run_dir / "plots" / f"client_auc_{attack}.png"
    _save(fig, out)
    return out


def plot_leakage_vs_cost(run_dir: Path, attack: str = "loss") -> Path | None:
    """x: speed-up vs retrain (log); y: withdrawn-client AUC minus retrain's — the method trade-off in one picture."""
    summary = json.loads((run_dir / "summary.json").read_text())
    pts = []
    for m, e in summary["models"].items():
        sp = (e.get("speedup_vs_retrain") or {}).get("wall")
        leak = e["leakage"].get(attack, {})
        if sp and leak.get("distance_to_retrain") is not None:
            pts.append((m, sp, leak["distance_to_retrain"]))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, sp, d in pts:
        ax.scatter(sp, d)
        ax.annotate(m, (sp, d), fontsize=8, xytext=(3, 3), textcoords="offset points")
    lo, hi = summary["null_band"]
    ax.axhspan(lo - 0.5, hi - 0.5, color="green", alpha=0.1, label="retrain null band (shifted)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="speed-up vs retrain (wall time, log)", ylabel=f"withdrawn AUC − retrain AUC ({attack})")
    ax.legend(fontsize=7)
    out = run_dir / "plots" / f"leakage_vs_cost_{attack}.png"
    _save(fig, out)
    return out


def summary_table(summary: dict, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The method table shown on the terminal (``compact``: no CIs, short headers) and in report.md."""
    attacks = summary["attacks"]
    header = ["model", "test acc", "withdrawn acc", "retained acc"]
    if compact:
        header = ["model", "test", "u acc", "kept"]
    for a in attacks:
        header += ([f"{a} AUC", "Δ retrain", "verdict"] if compact
                   else [f"{a} AUC [95% CI]", f"Δ vs retrain ({a})", f"verdict ({a})"])
    header += ["wall s", "speed-up"]
    rows = []
    for m, e in summary["models"].items():
        row = [m, f"{e['test_accuracy']:.3f}", f"{e['withdrawn_accuracy']:.3f}", f"{e['retained_accuracy']:.3f}"]
        for a in attacks:
            leak = e["leakage"].get(a)
            if leak is None:
                row += ["—", "—", "—"]
                continue
            d = leak.get("distance_to_retrain")
            auc = f"{leak['auc']:.3f}" if compact else f"{leak['auc']:.3f} [{leak['auc_lo']:.3f}, {leak['auc_hi']:.3f}]"
            verdict = {"under-unlearned": "under", "over-unlearned": "over"}.get(leak["verdict"], leak["verdict"])
            row += [auc, "—" if d is None or m == "retrain" else f"{d:+.3f}",
                    verdict if compact else leak["verdict"]]
        cost = e.get("cost")
        sp = (e.get("speedup_vs_retrain") or {}).get("wall")
        row += [f"{cost['wall_s']:.1f}" if cost else "—", f"{sp:.1f}×" if sp and m != "retrain" else "—"]
        rows.append(row)
    return header, rows


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    plots = [plot_training_curves(run_dir)]
    for a in summary["attacks"]:
        plots.append(plot_client_auc(run_dir, a))
        plots.append(plot_leakage_vs_cost(run_dir, a))
    header, rows = summary_table(summary)
    lines = [f"# fedunlearn report: {summary['name']}", "",
             f"Withdrawn client(s): {summary['withdrawn_clients']}; seed {summary['seed']}; "
             f"{summary['n_member']} member vs {summary['n_nonmember']} held-out records audited; null band "
             f"[{summary['null_band'][0]:.3f}, {summary['null_band'][1]:.3f}] (AUC expected of a model that never saw "
             "the withdrawn client).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if summary.get("failed_methods"):
        lines += ["", "## Failed methods", ""] + [f"- `{m}`: {why}" for m, why in summary["failed_methods"].items()]
    lines += ["", "Verdicts: *inside* the null band = unlearned as far as this attack can tell; *under-unlearned* = "
              "above it (still leaks membership); *over-unlearned* = below it (a detectable 'Streisand' signal).",
              "", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots if p is not None]
    lines += ["", "Files: `per_client.csv` (every model × client × attack), `ledger.csv` (costs per method and phase), "
              "`rounds.csv` (per-round metrics), `data_access.csv` (every read of client data).", ""]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))
