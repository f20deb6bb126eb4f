"""Plots of a run directory's saved results (``plots/*.png``): training curves, per-client AUC, leakage vs cost,
accuracy bars, ROC curves, the AUC heat-map, the epsilon histogram and the most vulnerable records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
           title="Membership leakage per client (members vs that client's audit records)")
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


# --------------------------------------------------------------------------------------------- audit pictures

_MAX_GRID_CLIENTS = 24


def plot_accuracy_bars(run_dir: Path, summary: dict) -> Path:
    """Utility per model: test, withdrawn-members and retained-members accuracy (and the forgotten classes' test
    accuracy under a class withdrawal) — the other half of every unlearning trade-off."""
    models = list(summary["models"])
    keys = [("test_accuracy", "test"), ("withdrawn_accuracy", "withdrawn members"),
            ("retained_accuracy", "retained members")]
    if any("forgotten_class_test_accuracy" in e for e in summary["models"].values()):
        keys.append(("forgotten_class_test_accuracy", "forgotten classes (test)"))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(models) + 2), 4))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        x = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(models))]
        ax.bar(x, [_f(summary["models"][m].get(key)) for m in models], width, label=label)
    ax.set(xticks=range(len(models)), ylim=(0, 1.05), ylabel="accuracy", title="Utility per model")
    ax.set_xticklabels(models, rotation=30, ha="right")
    ax.legend(fontsize=7, ncol=len(keys))
    out = run_dir / "plots" / "accuracy.png"
    _save(fig, out)
    return out


def _model_style(model: str, models: list[str]) -> dict:
    if model == "original":
        return {"color": "0.25", "lw": 1.6, "ls": "-"}
    if model == "retrain":
        return {"color": "tab:green", "lw": 1.6, "ls": "--"}
    methods = [m for m in models if m not in ("original", "retrain")]
    idx = methods.index(model) if model in methods else len(methods)
    return {"color": plt.get_cmap("tab10")((idx + 3) % 10), "lw": 1.2, "ls": "-"}


def _roc(mem, non):  # noqa: ANN001, ANN202 - score arrays in, (fpr, tpr) out
    import numpy as np
    from sklearn.metrics import roc_curve

    y = np.concatenate([np.ones(len(mem)), np.zeros(len(non))])
    fpr, tpr, _ = roc_curve(y, np.concatenate([mem, non]))
    return fpr, tpr


def _curves(scores: dict, models: list[str], client: int, attack: str) -> tuple[list, int]:
    curves, n = [], 2
    for m in models:
        if (m, client, attack) in scores:
            mem, non = scores[(m, client, attack)]
            curves.append((m, *_roc(mem, non)))
            n = max(n, len(mem), len(non))
    return curves, n


def _draw_roc(ax: plt.Axes, curves: list, models: list[str], loglog: bool, n: int) -> None:
    """ROC curves on linear axes, or log-log (the low-FPR regime; values below 1/(2n) are drawn at 1/(2n))."""
    import numpy as np

    lo = 1.0 / (2 * n)
    for model, fpr, tpr in curves:
        st = _model_style(model, models)
        if loglog:
            ax.plot(np.maximum(fpr, lo), np.maximum(tpr, lo), label=model, **st)
        else:
            ax.plot(fpr, tpr, label=model, **st)
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1)
        ax.plot([lo, 1], [lo, 1], color="0.6", lw=0.7, ls=":")
    else:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.7, ls=":")


def plot_roc_withdrawn(run_dir: Path, scores: dict, summary: dict) -> list[Path]:
    """One PNG per withdrawn client: a row per attack, linear and log-log ROC, original / methods / retrain."""
    models = list(summary["models"])
    attacks = summary["attacks"]
    outs = []
    for u in summary["withdrawn_clients"]:
        fig, axes = plt.subplots(len(attacks), 2, figsize=(9, 3.9 * len(attacks)), squeeze=False)
        for i, a in enumerate(attacks):
            curves, n = _curves(scores, models, u, a)
            for j, loglog in enumerate((False, True)):
                _draw_roc(axes[i, j], curves, models, loglog, n)
                axes[i, j].set(xlabel="FPR", ylabel="TPR",
                               title=f"client {u} (withdrawn), {a}: {'log-log' if loglog else 'linear'}")
            axes[i, 0].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        out = run_dir / "plots" / f"roc_client{u}.png"
        _save(fig, out)
        outs.append(out)
    return outs


def plot_roc_grid(run_dir: Path, scores: dict, summary: dict, attack: str) -> Path | None:
    """Every client's ROC for one attack, linear | log-log side by side; at most 24 clients (withdrawn first)."""
    models = list(summary["models"])
    withdrawn = summary["withdrawn_clients"]
    clients = sorted({k for (_, k, a) in scores if a == attack}, key=lambda k: (k not in withdrawn, k))
    clients = clients[:_MAX_GRID_CLIENTS]
    if not clients:
        return None
    per_row = 2
    nrows = math.ceil(len(clients) / per_row)
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(3.6 * 2 * per_row, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for i, k in enumerate(clients):
        curves, n = _curves(scores, models, k, attack)
        for j, loglog in enumerate((False, True)):
            ax = axes[i // per_row, 2 * (i % per_row) + j]
            ax.set_visible(True)
            _draw_roc(ax, curves, models, loglog, n)
            mark = " (withdrawn)" if k in withdrawn else ""
            ax.set_title(f"client {k}{mark}, {'log-log' if loglog else 'linear'}", fontsize=9,
                         color="crimson" if mark else "black")
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"ROC per client, {attack} attack (members vs that client's audit records)")
    out = run_dir / "plots" / f"roc_grid_{attack}.png"
    _save(fig, out)
    return out


def plot_auc_heatmap(run_dir: Path, summary: dict) -> Path | None:
    """AUC over clients (rows) x models (columns), one panel per attack; withdrawn clients marked with *."""
    import numpy as np

    rows = _read_csv(run_dir / "per_client.csv")
    if not rows:
        return None
    models = list(summary["models"])
    attacks = summary["attacks"]
    clients = sorted({int(r["client"]) for r in rows})
    fig, axes = plt.subplots(1, len(attacks), figsize=(1.0 * len(models) * len(attacks) + 3,
                                                       0.32 * len(clients) + 2.2), squeeze=False)
    img = None
    for ax, a in zip(axes[0], attacks):
        grid = np.full((len(clients), len(models)), np.nan)
        for r in rows:
            if r["attack"] == a and r["model"] in models:
                grid[clients.index(int(r["client"])), models.index(r["model"])] = _f(r["auc"])
        img = ax.imshow(grid, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
        if len(clients) * len(models) <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v - 0.5) > 0.3 else "black")
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=8)
        labels = [f"{c}*" if c in summary["withdrawn_clients"] else str(c) for c in clients]
        ax.set_yticks(range(len(clients)), labels, fontsize=7)
        ax.set_title(f"{a} AUC", fontsize=10)
    axes[0, 0].set_ylabel("client (* = withdrawn)")
    fig.colorbar(img, ax=axes[0].tolist(), shrink=0.8, label="AUC (0.5 = no leakage)")
    out = run_dir / "plots" / "auc_heatmap.png"
    _save(fig, out)
    return out


def plot_epsilon_hist(run_dir: Path) -> Path | None:
    """A2: histogram of the per-example epsilon of the withdrawn members, per model and retrain-vs-retrain."""
    import numpy as np

    rows = _read_csv(run_dir / "seed_audit.csv")
    if not rows:
        return None
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["model"], []).append(_f(r["epsilon"]))
    top = max(max(v) for v in groups.values())
    bins = np.linspace(0, max(top, 0.5) + 1e-9, 25)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, v in groups.items():
        null = m == "retrain_vs_retrain"
        style = {"alpha": 0.3, "color": "tab:green"} if null else {"histtype": "step", "lw": 1.5}
        ax.hist(v, bins=bins, label="retrain vs retrain (half the seeds)" if null else m, **style)
    ax.set(xlabel="per-example ε (two-sided, δ = 1e-5)", ylabel="withdrawn member records",
           title="A2: how distinguishable each model is from retrain, record by record")
    ax.legend(fontsize=7)
    out = run_dir / "plots" / "epsilon_hist.png"
    _save(fig, out)
    return out


def plot_vulnerable_records(run_dir: Path) -> Path | None:
    """Image datasets: the most vulnerable members of each client (``vulnerable_records.csv``) as a picture grid."""
    rows = _read_csv(run_dir / "vulnerable_records.csv")
    if not rows:
        return None
    from fedunlearn.rundir import read_config

    cfg = read_config(run_dir)
    if cfg.data.dataset == "synthetic":
        return None
    from fedunlearn.data.cache import experiment_data

    ds, _ = experiment_data(cfg)
    if ds.x_train.ndim != 4:
        return None
    by_client: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_client.setdefault(int(r["client"]), []).append(r)
    clients = sorted(by_client)[:_MAX_GRID_CLIENTS]
    ncols = max(len(v) for v in by_client.values())
    fig, axes = plt.subplots(len(clients), ncols, figsize=(1.1 * ncols + 0.8, 1.25 * len(clients)), squeeze=False)
    for i, k in enumerate(clients):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(by_client[k]):
                ax.set_visible(False)
                continue
            rec = int(by_client[k][j]["record"])
            x = ds.x_train[rec]
            img = x.transpose(1, 2, 0) if x.shape[0] == 3 else x[0]
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
            ax.imshow(img, cmap=None if x.shape[0] == 3 else "gray")
            ax.set_title(f"#{rec} y={int(ds.y_train[rec])}", fontsize=6)
        axes[i, 0].set_ylabel(f"client {k}", fontsize=8)
    fig.suptitle(f"Most vulnerable members per client under the original model ({rows[0]['attack']} score)",
                 fontsize=9)
    out = run_dir / "plots" / "vulnerable_records.png"
    _save(fig, out)
    return out
