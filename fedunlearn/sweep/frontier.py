"""Frontier plots and the sweep report (``sweep.md``), from ``sweep_summary.csv``'s rows.

Per attack: the withdrawn clients' ΔAUC vs retrain (the leakage gap) against the cost (client-samples and wall
time, log scale), mean and 95% CI bars over replicates, one line per method through its settings (its budget axis),
the Pareto front over every (method, setting) marked: no other point is both cheaper and closer to retrain (|ΔAUC|).
Beside it utility (test accuracy / retrain's) against the same costs. Axes outside ``unlearn`` (a withdrawn client,
a dataset, a partition) are *contexts*: each gets its own figures and section.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from fedunlearn.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from fedunlearn.sweep.aggregate import ORACLE, ORIGINAL  # noqa: E402
from fedunlearn.sweep.spec import Sweep  # noqa: E402

COSTS = (("client_samples", "client-samples (unlearning cost)"), ("wall_s", "wall time of the unlearning, s"))


def context_columns(sweep: Sweep) -> list[str]:
    """The settings every model shares: axes outside ``unlearn`` and zip groups with such a key (no replicate)."""
    zips = [g.name for g in sweep.groups if g.zipped and any(not k.startswith("unlearn") for k in g.keys)]
    return zips + [k for k in sweep.axis_keys if k != sweep.replicate and not k.startswith("unlearn")]


def _contexts(sweep: Sweep, rows: list[dict]) -> list[dict[str, str]]:
    cols = context_columns(sweep)
    out: list[dict[str, str]] = []
    for r in rows:
        c = {k: str(r.get(k, "")) for k in cols}
        if c not in out:
            out.append(c)
    return out


def _label(ctx: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in ctx.items())


def _suffix(ctx: dict[str, str]) -> str:
    return ("_" + re.sub(r"[^A-Za-z0-9._=,+-]", "_", _label(ctx))) if ctx else ""


def own_setting(sweep: Sweep, row: dict) -> str:
    """A method's own settings (its ``unlearn.<m>.*`` axes; a zip group by level), e.g. ``budget=2 (max_rounds=3)``."""
    m = row["model"]
    own = [k for k in sweep.axis_keys if k.startswith(f"unlearn.{m}.") or k == f"unlearn.{m}"]
    parts = [f"{k.split('.', 2)[-1]}={row[k]}" for k in own if k in row]
    zips = [f"{g.name}={row[g.name]}" for g in sweep.groups if g.zipped and g.name in row
            and any(k in own for k in g.keys)]
    if zips:
        return f"{', '.join(zips)} ({', '.join(parts)})" if parts else ", ".join(zips)
    return ", ".join(parts) or "—"


def _tag(sweep: Sweep, row: dict) -> str | None:
    """A point's label on the plot: its zip level number, else the value of the method's own axis."""
    own = own_setting(sweep, row)
    if own == "—":
        return None
    first = own.split(" (")[0].split(", ")[0]
    return first.split("=", 1)[1] if "=" in first else first


def _f(v: object) -> float:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Non-dominated under (cost, |gap|), both minimized: no other point is at most as costly and at most as far
    from retrain, and strictly better in one."""
    flags = []
    for i, (x, y) in enumerate(points):
        ok = math.isfinite(x) and math.isfinite(y)
        for j, (x2, y2) in enumerate(points):
            if ok and j != i and x2 <= x and abs(y2) <= abs(y) and (x2 < x or abs(y2) < abs(y)):
                ok = False
        flags.append(ok)
    return flags


def _err(rows: list[dict], key: str) -> list[list[float]]:
    lo = [max(0.0, _f(r[key]) - _f(r[f"{key}_lo"])) if math.isfinite(_f(r.get(f"{key}_lo"))) else 0.0 for r in rows]
    hi = [max(0.0, _f(r[f"{key}_hi"]) - _f(r[key])) if math.isfinite(_f(r.get(f"{key}_hi"))) else 0.0 for r in rows]
    return [lo, hi]


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _methods(rows: list[dict]) -> list[str]:
    out: list[str] = []
    for r in rows:
        if r["model"] != ORIGINAL and r["model"] not in out:
            out.append(r["model"])
    return out


def front_flags(rows: list[dict], cost: str) -> list[bool]:
    """The Pareto front of (cost, |withdrawn ΔAUC|) over every model but the original (which did not unlearn)."""
    return pareto([(_f(r[cost]), _f(r["dauc_withdrawn"])) if r["model"] != ORIGINAL else (math.nan, math.nan)
                   for r in rows])


def _draw(sweep: Sweep, rows: list[dict], metric: str, ylabel: str, title: str, path: Path,
          mark_front: bool) -> Path:
    methods = _methods(rows)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    fig.text(0.5, -0.02, "numbers: the budget level (zip group) or the value of the method's own axis",
             ha="center", fontsize=7, color="grey")
    for ax, (cost, xlabel) in zip(axes, COSTS):
        for m in methods:
            rs = sorted([r for r in rows if r["model"] == m and math.isfinite(_f(r[cost]))
                         and math.isfinite(_f(r[metric]))], key=lambda r: _f(r[cost]))
            if not rs:
                continue
            ax.errorbar([_f(r[cost]) for r in rs], [_f(r[metric]) for r in rs], yerr=_err(rs, metric),
                        xerr=_err(rs, cost), marker="o", ms=5, capsize=3, lw=1.3, color=colors[m], label=m)
            for r in rs:
                if (tag := _tag(sweep, r)) is not None:
                    ax.annotate(tag, (_f(r[cost]), _f(r[metric])), fontsize=7, xytext=(3, 3),
                                textcoords="offset points", color=colors[m])
        if mark_front:
            fr = sorted([r for r, on in zip(rows, front_flags(rows, cost)) if on], key=lambda r: _f(r[cost]))
            ax.plot([_f(r[cost]) for r in fr], [_f(r[metric]) for r in fr], ls="--", color="black", lw=0.8,
                    marker="o", ms=11, mfc="none", label="Pareto front")
        orig = [r for r in rows if r["model"] == ORIGINAL and math.isfinite(_f(r[metric]))]
        if orig and metric == "dauc_withdrawn":
            ax.axhline(_f(orig[0][metric]), color="grey", ls=":", lw=1, label="original (no unlearning)")
        margin = [_f(r["equivalence_margin"]) for r in rows if r["model"] == ORACLE]
        if metric == "dauc_withdrawn":
            ax.axhline(0.0, color="black", lw=0.6)
            if margin and math.isfinite(margin[0]):
                ax.axhspan(-margin[0], margin[0], color="green", alpha=0.08, label="equivalence margin")
        else:
            ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        ax.set(xlabel=xlabel, title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(ylabel)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the points stay visible
    return _save(fig, path)


def write_plots(sweep: Sweep, rows: list[dict], plots_dir: Path) -> dict[str, list[Path]]:
    """Per context: one frontier figure per attack and one utility figure; returns them by context label."""
    out: dict[str, list[Path]] = {}
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    for ctx in _contexts(sweep, rows):
        mine = [r for r in rows if all(str(r.get(k, "")) == v for k, v in ctx.items())]
        paths = []
        for attack in attacks:
            rs = [r for r in mine if r["attack"] == attack]
            title = f"{attack}: leakage gap vs cost" + (f" ({_label(ctx)})" if ctx else "")
            paths.append(_draw(sweep, rs, "dauc_withdrawn", "withdrawn ΔAUC vs retrain (mean, 95% CI)", title,
                               plots_dir / f"frontier_{attack}{_suffix(ctx)}.png", True))
        util = [r for r in mine if r["attack"] == attacks[0]] if attacks else []
        if util:
            paths.append(_draw(sweep, util, "test_acc_ratio", "test accuracy / retrain's (mean, 95% CI)",
                               "utility vs cost" + (f" ({_label(ctx)})" if ctx else ""),
                               plots_dir / f"utility{_suffix(ctx)}.png", False))
        out[_label(ctx)] = paths
    return out


def _ci(r: dict, key: str, fmt: str = "+.3f") -> str:
    m, lo, hi = _f(r.get(key)), _f(r.get(f"{key}_lo")), _f(r.get(f"{key}_hi"))
    if not math.isfinite(m):
        return "—"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) else format(m, fmt)


def _x(r: dict, key: str) -> str:
    v = _f(r.get(key))
    return f"{v:.1f}×" if math.isfinite(v) else "—"


def write_report(sweep: Sweep, rows: list[dict], plots: dict[str, list[Path]], runs: list[dict], path: Path) -> Path:
    """``sweep.md``: the grid, the per-attack tables (mean and 95% CI over replicates), links to the figures."""
    done = sum(r["status"] == "finished" for r in runs)
    lines = [f"# Sweep `{sweep.name}`", "",
             f"- sweep file: `{sweep.path}`; base: `{sweep.base or 'the defaults'}`"
             + (f"; --set {', '.join(f'`{s}`' for s in sweep.overrides)}" if sweep.overrides else ""),
             f"- points: {len(runs)} ({done} finished); replicate axis (mean and 95% Student-t CI over it): "
             f"`{sweep.replicate}`"]
    for g in sweep.groups:
        vals = "; ".join(f"`{k}` = {[lv[j] for lv in g.levels]}" for j, k in enumerate(g.keys))
        lines.append(f"- {'zip group `' + g.name + '`' if g.zipped else 'axis'}: {vals}")
    lines += ["", "Files: [`sweep.csv`](sweep.csv) (one row per point × model × client × attack), "
              "[`sweep_summary.csv`](sweep_summary.csv), [`points.json`](points.json); every point is an ordinary "
              "run directory named by its settings (its own `report.md`).", "",
              "ΔAUC: the withdrawn clients' AUC minus retrain's (the leakage gap; remaining: the mean over the "
              "clients that stayed); *equivalent*: share of replicates judged equivalent to retrain by the "
              "retrain-vs-retrain margin; speed-ups are retrain's cost over the method's. Pareto: on the front of "
              "client-samples vs |ΔAUC|."]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    for ctx in _contexts(sweep, rows):
        label = _label(ctx)
        if label:
            lines += ["", f"## {label}"]
        mine = [r for r in rows if all(str(r.get(k, "")) == v for k, v in ctx.items())]
        for attack in attacks:
            rs = [r for r in mine if r["attack"] == attack]
            flags = front_flags(rs, "client_samples")
            lines += ["", f"### {attack}", "", f"![{attack} frontier](plots/frontier_{attack}{_suffix(ctx)}.png)",
                      "", "| model | setting | n | ΔAUC withdrawn [95% CI] | ΔAUC remaining [95% CI] | equivalent | "
                      "test acc / retrain | client-sample speed-up | wall speed-up | Pareto |",
                      "|---|---|---:|---|---|---:|---|---:|---:|---|"]
            for r, front in zip(rs, flags):
                share = _f(r.get("equivalent_share"))
                lines.append(f"| {r['model']} | {own_setting(sweep, r)} | {r['replicates']}"
                             + (f" ({r['failed']} failed)" if str(r.get("failed", "0")) not in ("0", "") else "")
                             + f" | {_ci(r, 'dauc_withdrawn')} | {_ci(r, 'dauc_remaining')} | "
                             + (f"{share:.0%}" if math.isfinite(share) else "—")
                             + f" | {_ci(r, 'test_acc_ratio', '.3f')} | {_x(r, 'speedup_client_samples')} | "
                             + f"{_x(r, 'speedup_wall')} | {'✓' if front else ''} |")
        if util := [p for p in plots.get(label, []) if p.name.startswith("utility")]:
            lines += ["", "### utility", "", f"![utility vs cost](plots/{util[0].name})"]
    failed = [r for r in runs if r["status"] != "finished"]
    if failed:
        lines += ["", "## Points not finished", ""] + [f"- `{r['name']}`: {r['status']}"
                                                       + (f" — {r['error']}" if r.get("error") else "")
                                                       + f" (log: `logs/{r['name']}.log`)" for r in failed]
    return atomic_write_text(path, "\n".join(lines) + "\n")
