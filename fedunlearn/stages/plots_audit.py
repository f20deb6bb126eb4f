"""Plots of a run directory's saved results, part two: the audit's pictures — ROC curves (linear and log-log) of
the withdrawn clients and of every client, the AUC heat-map, the A2 epsilon histogram and the most vulnerable
records. Models keep their colours of ``palette.model_color``."""

from __future__ import annotations

import math
from pathlib import Path

from fedunlearn.rundir import RunDir
from fedunlearn.stages.palette import RETRAIN_COLOR, model_color, model_style
from fedunlearn.stages.plots import MAX_PLOT_CLIENTS, plt, read_csv_rows, save_figure, shown_clients, to_float


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


def _draw_roc(ax: plt.Axes, curves: list, loglog: bool, n: int) -> None:
    """ROC curves on linear axes, or log-log (the low-FPR regime; values below 1/(2n) are drawn at 1/(2n)); ticks
    as plain numbers (0.01, 0.1, 1), which stay readable in small panels."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo = 1.0 / (2 * n)
    for model, fpr, tpr in curves:
        st = model_style(model)
        if loglog:
            ax.plot(np.maximum(fpr, lo), np.maximum(tpr, lo), label=model, **st)
        else:
            ax.plot(fpr, tpr, label=model, **st)
    lim = (lo, 1) if loglog else (0, 1)
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.plot(lim, lim, color="0.6", lw=0.7, ls=":")
    ax.grid(True, lw=0.3, alpha=0.5)


def _figure_legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend for the whole figure, under the panels, with every model any panel drew."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    fig.legend(seen.values(), seen.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(seen), 9),
               fontsize=8, frameon=False)


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
                _draw_roc(axes[i, j], curves, loglog, n)
                axes[i, j].set(xlabel="FPR", ylabel="TPR",
                               title=f"client {u} (withdrawn), {a}: {'log-log' if loglog else 'linear'}")
        fig.tight_layout()
        _figure_legend(fig, list(axes.flat))
        out = RunDir(run_dir).plot(f"roc_client{u}")
        save_figure(fig, out)
        outs.append(out)
    return outs


def plot_roc_grid(run_dir: Path, scores: dict, summary: dict, attack: str) -> Path | None:
    """Every client's ROC for one attack, linear | log-log side by side (two clients a row), one legend for the
    figure, axis labels on the outer panels; at most ``MAX_PLOT_CLIENTS`` clients (withdrawn first)."""
    models = list(summary["models"])
    withdrawn = summary["withdrawn_clients"]
    clients = shown_clients(sorted({k for (_, k, a) in scores if a == attack}), withdrawn)
    if not clients:
        return None
    per_row = 2
    nrows = math.ceil(len(clients) / per_row)
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(3.3 * 2 * per_row, 3.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for i, k in enumerate(clients):
        curves, n = _curves(scores, models, k, attack)
        for j, loglog in enumerate((False, True)):
            row, col = i // per_row, 2 * (i % per_row) + j
            ax = axes[row, col]
            ax.set_visible(True)
            _draw_roc(ax, curves, loglog, n)
            mark = " (withdrawn)" if k in withdrawn else ""
            ax.set_title(f"client {k}{mark}, {'log-log' if loglog else 'linear'}", fontsize=9,
                         color="crimson" if mark else "black")
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("TPR", fontsize=8)
            if row == nrows - 1 or i + per_row >= len(clients):
                ax.set_xlabel("FPR", fontsize=8)
    fig.suptitle(f"ROC per client, {attack} attack (members vs that client's audit records)")
    fig.tight_layout()
    _figure_legend(fig, [a for a in axes.flat if a.get_visible()])
    out = RunDir(run_dir).plot(f"roc_grid_{attack}")
    save_figure(fig, out)
    return out


def plot_auc_heatmap(run_dir: Path, summary: dict) -> Path | None:
    """AUC over clients (rows) x models (columns), one panel per attack; withdrawn clients marked with *."""
    import numpy as np

    rows = read_csv_rows(RunDir(run_dir).per_client)
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
                grid[clients.index(int(r["client"])), models.index(r["model"])] = to_float(r["auc"])
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
    out = RunDir(run_dir).plot("auc_heatmap")
    save_figure(fig, out)
    return out


def plot_epsilon_hist(run_dir: Path) -> Path | None:
    """A2: histogram of the per-example epsilon of the withdrawn members, per model and retrain-vs-retrain."""
    import numpy as np

    rows = read_csv_rows(RunDir(run_dir).seed_audit)
    if not rows:
        return None
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["model"], []).append(to_float(r["epsilon"]))
    top = max(max(v) for v in groups.values())
    bins = np.linspace(0, max(top, 0.5) + 1e-9, 25)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, v in groups.items():
        null = m == "retrain_vs_retrain"
        style = {"alpha": 0.3, "color": RETRAIN_COLOR} if null else {"histtype": "step", "lw": 1.5,
                                                                   "color": model_color(m)}
        ax.hist(v, bins=bins, label="retrain vs retrain (half the seeds)" if null else m, **style)
    ax.set(xlabel="per-example ε (two-sided, δ = 1e-5)", ylabel="withdrawn member records",
           title="A2: how distinguishable each model is from retrain, record by record")
    ax.legend(fontsize=7)
    out = RunDir(run_dir).plot("epsilon_hist")
    save_figure(fig, out)
    return out


def plot_vulnerable_records(run_dir: Path) -> Path | None:
    """Image datasets: the most vulnerable members of each client (``vulnerable_records.csv``) as a picture grid."""
    rows = read_csv_rows(RunDir(run_dir).vulnerable)
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
    clients = sorted(by_client)[:MAX_PLOT_CLIENTS]
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
    out = RunDir(run_dir).plot("vulnerable_records")
    save_figure(fig, out)
    return out
