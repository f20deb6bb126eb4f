"""Plots of a run directory's saved results (``plots/*.png``), part one: training and unlearning curves, utility,
per-client AUC, leakage vs cost, utility vs leakage. The audit's pictures (ROC curves, heat-map, epsilon, records)
are in ``plots_audit``. Every model has one colour in every plot (``palette.model_color``).

The withdrawn clients' leakage step by step while each method unlearns is ``stages/during.py`` (``audit.during``:
the models it needs are saved only then); after unlearning, ``stages/after.py``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from fedunlearn.io import atomic_write_bytes
from fedunlearn.rundir import RunDir
from fedunlearn.stages.palette import RETRAIN_COLOR, model_color, model_style, phase_model  # noqa: E402
from fedunlearn.stages.summary import attack_margin  # noqa: E402

#: at most this many clients per per-client picture (withdrawn first); every client is in per_client.csv
MAX_PLOT_CLIENTS = 24
BAND_COLOR = "0.82"


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def to_float(v: str | float | None) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def save_figure(fig: plt.Figure, path: Path) -> None:
    """A PNG written like every other result file: atomically, readable under the umask (``fedunlearn.io``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _summary(run_dir: Path) -> dict:
    return json.loads(RunDir(run_dir).summary.read_text())


def shown_clients(clients: list[int], withdrawn: list[int]) -> list[int]:
    """Withdrawn clients first, then the others by id, at most ``MAX_PLOT_CLIENTS``."""
    return sorted(clients, key=lambda k: (k not in withdrawn, k))[:MAX_PLOT_CLIENTS]


def attack_band(summary: dict, attack: str) -> tuple[float, float] | None:
    """The never-seen band of a membership attack (None for before/after attacks, which have no 0.5 null)."""
    leaks = [e["leakage"][attack] for e in summary["models"].values() if attack in e.get("leakage", {})]
    if not any(x.get("never_seen") for x in leaks):
        return None
    lo, hi = next((x["null_band"] for x in leaks if x.get("null_band")), summary["null_band"])
    return float(lo), float(hi)


def _legend_outside(ax: plt.Axes, others: list[plt.Axes] | None = None) -> None:
    """One legend right of ``ax`` with what ``others`` (default: ``ax`` alone) drew, duplicate labels dropped."""
    seen: dict[str, object] = {}
    for a in others or [ax]:
        for h, label in zip(*a.get_legend_handles_labels()):
            seen.setdefault(label, h)
    ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_training_curves(run_dir: Path, summary: dict | None = None) -> Path:
    """Left: training from scratch (original, retrain, the audit's instruments) by FL round. Right: each method's
    unlearning rounds on their own axis (every sub-phase's rounds in the order they ran), beside the original's
    and retrain's final level. Top: central test accuracy; bottom: mean client training loss."""
    summary = summary or _summary(run_dir)
    methods = [m for m in summary["models"] if m not in ("original", "retrain")]
    training: dict[str, list[dict[str, str]]] = {}
    unlearning: dict[str, list[dict[str, str]]] = {}
    for r in read_csv_rows(RunDir(run_dir).rounds):
        model = phase_model(r["phase"])
        if model in methods and not r["phase"].endswith(".continue"):
            unlearning.setdefault(model, []).append(r)
        else:
            training.setdefault(r["phase"], []).append(r)
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharey="row")
    for phase, rs in training.items():
        x = [int(r["round"]) for r in rs]
        st = model_style(phase_model(phase))
        axes[0, 0].plot(x, [to_float(r["test_accuracy"]) for r in rs], marker=".", label=phase, **st)
        axes[1, 0].plot(x, [to_float(r["train_loss"]) for r in rs], marker=".", label=phase, **st)
    for m, rs in unlearning.items():
        x = list(range(1, len(rs) + 1))
        axes[0, 1].plot(x, [to_float(r["test_accuracy"]) for r in rs], marker="o", ms=3, label=m, **model_style(m))
        axes[1, 1].plot(x, [to_float(r["train_loss"]) for r in rs], marker="o", ms=3, label=m, **model_style(m))
    for ref in ("original", "retrain"):
        final = training.get(ref)
        if final and unlearning:
            for row, key in ((0, "test_accuracy"), (1, "train_loss")):
                axes[row, 1].axhline(to_float(final[-1][key]), color=model_color(ref), lw=0.9, ls=":",
                                     label=f"{ref} (end of training)")
    axes[0, 0].set(ylabel="test accuracy", title="Training from scratch (FL rounds)")
    axes[0, 1].set(title="Unlearning (each method's own rounds)")
    axes[1, 0].set(xlabel="training round", ylabel="mean client training loss")
    axes[1, 1].set(xlabel="unlearning round (all sub-phases, in order)")
    if not unlearning:
        axes[0, 1].text(0.5, 0.5, "no unlearning rounds in rounds.csv", ha="center", transform=axes[0, 1].transAxes)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            _legend_outside(ax)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = RunDir(run_dir).plot("training_curves")
    save_figure(fig, out)
    return out


def plot_client_auc(run_dir: Path, attack: str = "loss", summary: dict | None = None) -> Path:
    """Per-client AUC, one bar group per client (original / methods / retrain) with CIs, over the never-seen band
    and, per client, retrain's AUC ± the equivalence margin: a bar inside the green box is equivalent to retrain."""
    summary = summary or _summary(run_dir)
    rows = [r for r in read_csv_rows(RunDir(run_dir).per_client) if r["attack"] == attack]
    models = list(summary["models"])
    withdrawn = summary["withdrawn_clients"]
    all_clients = sorted({int(r["client"]) for r in rows})
    clients = shown_clients(all_clients, withdrawn)
    by = {(r["model"], int(r["client"])): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(clients) + 2), 4))
    width = 0.8 / max(len(models), 1)
    band, margin = attack_band(summary, attack), attack_margin(summary, attack)
    if band:
        ax.axhspan(*band, color=BAND_COLOR, alpha=0.6, zorder=0,
                   label=f"never-seen band [{band[0]:.3f}, {band[1]:.3f}]")
    ax.axhline(0.5, color="k", lw=0.6, ls="--", zorder=0.5)
    for j, c in enumerate(clients):
        re = by.get(("retrain", c))
        if margin is not None and re is not None:
            mid = to_float(re["auc"])
            ax.fill_between([j - 0.45, j + 0.45], mid - margin, mid + margin, color=RETRAIN_COLOR, alpha=0.18, lw=0,
                            zorder=0.6, label=f"retrain ± equivalence margin (±{margin:.3f})")
    for i, m in enumerate(models):
        x = [j + (i - (len(models) - 1) / 2) * width for j in range(len(clients))]
        y = [to_float(by[(m, c)]["auc"]) if (m, c) in by else math.nan for c in clients]
        lo = [y[j] - to_float(by[(m, c)]["auc_lo"]) if (m, c) in by else 0 for j, c in enumerate(clients)]
        hi = [to_float(by[(m, c)]["auc_hi"]) - y[j] if (m, c) in by else 0 for j, c in enumerate(clients)]
        ax.bar(x, y, width, label=m, color=model_color(m), yerr=[lo, hi], capsize=1.5,
               error_kw={"lw": 0.7, "ecolor": "0.3"}, zorder=2)
    ax.set_xticks(range(len(clients)), [f"{c}\n(withdrawn)" if c in withdrawn else str(c) for c in clients])
    for tick, c in zip(ax.get_xticklabels(), clients):
        tick.set_color("crimson" if c in withdrawn else "black")
    more = f" (first {len(clients)} of {len(all_clients)} clients)" if len(clients) < len(all_clients) else ""
    ax.set(xlabel="client", ylabel=f"{attack} attack AUC", ylim=(0, 1),
           title=f"Membership leakage per client, {attack} (members vs that client's audit records){more}")
    _legend_outside(ax)
    out = RunDir(run_dir).plot(f"client_auc_{attack}")
    save_figure(fig, out)
    return out


def _speedup_axis(ax: plt.Axes) -> None:
    """Log x axis with ticks at 1, 2, 5 × 10^k labelled 0.5×, 1×, 2× (matplotlib's default minor labels overlap)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_leakage_vs_cost(run_dir: Path, attack: str = "loss", summary: dict | None = None) -> Path | None:
    """x: speed-up vs retrain (wall time, log); y: withdrawn-client AUC minus retrain's, over the equivalence
    margin — the method trade-off in one picture; models are told apart by colour and the legend (no labels to
    overlap)."""
    summary = summary or _summary(run_dir)
    pts = []
    for m, e in summary["models"].items():
        sp = (e.get("speedup_vs_retrain") or {}).get("wall")
        leak = e["leakage"].get(attack, {})
        if sp and leak.get("distance_to_retrain") is not None:
            pts.append((m, sp, leak["distance_to_retrain"]))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    margin = attack_margin(summary, attack)
    if margin is not None:
        ax.axhspan(-margin, margin, color=RETRAIN_COLOR, alpha=0.12, label=f"equivalent to retrain (±{margin:.3f})")
    ax.axhline(0, color="k", lw=0.8)
    for m, sp, d in pts:
        ax.scatter(sp, d, color=model_color(m), s=45, marker="D" if m == "retrain" else "o", label=m, zorder=3,
                   edgecolors="white", linewidths=0.6)
    _speedup_axis(ax)
    ax.set(xlabel="speed-up vs retrain (wall time, log)", ylabel=f"withdrawn AUC − retrain AUC ({attack})",
           title=f"Leakage vs cost, {attack}")
    _legend_outside(ax)
    out = RunDir(run_dir).plot(f"leakage_vs_cost_{attack}")
    save_figure(fig, out)
    return out


def plot_utility_vs_leakage(run_dir: Path, summary: dict | None = None) -> Path | None:
    """One panel per attack: test accuracy (y) against the withdrawn client's AUC (x), one point per model, over
    retrain's AUC ± the equivalence margin and the never-seen band: a good method sits high and inside both."""
    summary = summary or _summary(run_dir)
    attacks = [a for a in summary["attacks"] if any(a in e.get("leakage", {}) for e in summary["models"].values())]
    if not attacks:
        return None
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks) + 1.6, 3.8), squeeze=False, sharey=True)
    for ax, a in zip(axes[0], attacks):
        band, margin = attack_band(summary, a), attack_margin(summary, a)
        re = (summary["models"].get("retrain", {}).get("leakage", {}).get(a) or {}).get("auc")
        if band:
            ax.axvspan(*band, color=BAND_COLOR, alpha=0.6, zorder=0, label="never-seen band")
        if margin is not None and re is not None:
            ax.axvspan(re - margin, re + margin, color=RETRAIN_COLOR, alpha=0.15, zorder=0.5,
                       label="retrain ± equivalence margin")
        for m, e in summary["models"].items():
            leak = e.get("leakage", {}).get(a)
            if leak is not None:
                ax.scatter(leak["auc"], e["test_accuracy"], color=model_color(m), s=45, zorder=3, label=m,
                           marker={"original": "s", "retrain": "D"}.get(m, "o"), edgecolors="white", linewidths=0.6)
        ax.set(xlabel=f"withdrawn client's {a} AUC", title=a)
    axes[0, 0].set_ylabel("test accuracy")
    _legend_outside(axes[0, -1], list(axes[0]))
    fig.suptitle("Utility vs leakage (up = more useful; inside the green band = leaks like retrain)", fontsize=10)
    fig.tight_layout()
    out = RunDir(run_dir).plot("utility_vs_leakage")
    save_figure(fig, out)
    return out


def plot_accuracy_bars(run_dir: Path, summary: dict) -> Path:
    """Utility per model: test, withdrawn-members and retained-members accuracy (and the forgotten classes' test
    accuracy under a class withdrawal) — the other half of every unlearning trade-off; bars in the model colours."""
    models = list(summary["models"])
    keys = [("test_accuracy", "test"), ("withdrawn_accuracy", "withdrawn members"),
            ("retained_accuracy", "retained members")]
    if any("forgotten_class_test_accuracy" in e for e in summary["models"].values()):
        keys.append(("forgotten_class_test_accuracy", "forgotten classes (test)"))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(models) * len(keys) + 2), 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        x = [j + (i - (len(models) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(x, [to_float(summary["models"][m].get(k)) for k, _ in keys], width, label=m, color=model_color(m))
    ax.set_xticks(range(len(keys)), [label for _, label in keys])
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title="Utility per model")
    _legend_outside(ax)
    out = RunDir(run_dir).plot("accuracy")
    save_figure(fig, out)
    return out
