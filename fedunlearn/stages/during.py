"""During unlearning (``audit.during = true``): how does the withdrawn clients' leakage fall while each method
unlearns, and what did each stage of it cost? The FL stage saved every model a method's server held as a snapshot
(``engine.during``: snapshot 0 = the model it started from, then each aggregated round, pga's ascent, each accepted
forsaken edit, lightweight's perturbation); this stage reads them: per snapshot the withdrawn clients' leakage
(``stages.trajectory``), the test accuracy and the method's client samples so far, and, where the run trained a
retrain-vs-retrain null, the first snapshot at which the leakage is within the equivalence margin of retrain's.

Several withdrawals in turn: a method's snapshots run on through them (the client samples add up); each withdrawal's
snapshot 0 is the previous withdrawal's last model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.rundir import ORACLE, ORIGINAL, RunDir, during_model, run_failures
from fedunlearn.stages.trajectory import WithdrawnLeakage

log = logging.getLogger(__name__)

DURING_COLUMNS = ["model", "withdrawal", "snapshot", "phase", "round", "client_samples", "rounds", "leakage",
                  "test_accuracy"]


def recorded_snapshots(run_dir: Path, cfg: ExperimentConfig) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Per method whose unlearned model was saved: its snapshots over every withdrawal in order (each with its
    model ``name`` and client samples counted from the first withdrawal); and the methods left out, with why."""
    rd = RunDir(run_dir)
    failed = run_failures(run_dir)
    withdrawals = len(cfg.withdraw.clients) or 1  # a class withdrawal is one window
    snapshots: dict[str, list[dict]] = {}
    missing: dict[str, str] = {}
    for m in (m for m in cfg.unlearn.methods if m != ORACLE and m not in failed and rd.model(m).is_file()):
        mine: list[dict] = []
        samples = rounds = 0
        for i in range(withdrawals):
            index = rd.during_index(m, i)
            if not index.is_file():
                missing[m] = f"{index.relative_to(rd.path)} is missing"
                break
            listed = json.loads(index.read_text())
            absent = [s["snapshot"] for s in listed if not rd.model(during_model(m, i, s["snapshot"])).is_file()]
            if absent:
                missing[m] = f"models/{during_model(m, i, absent[0])}.pt is missing"
                break
            mine += [{**s, "withdrawal": i, "name": during_model(m, i, s["snapshot"]),
                      "client_samples": samples + s["client_samples"], "rounds": rounds + s["rounds"]}
                     for s in listed]
            samples, rounds = mine[-1]["client_samples"], mine[-1]["rounds"]
        else:
            snapshots[m] = mine
    return snapshots, missing


def during_unlearning(run_dir: Path, cfg: ExperimentConfig, parts, gamma: float,  # noqa: ANN001
                      recorded: tuple[dict[str, list[dict]], dict[str, str]], margin: float | None = None,
                      tick: Callable[[], None] = lambda: None) -> tuple[list[dict], dict]:
    """Rows of ``during_unlearning.csv`` and the summary entry: per method the number of new models (``snapshots``,
    snapshot 0 not counted), its start, lowest and final leakage, and the snapshot and client samples at which it
    first came within ``margin`` of retrain's (None: never, or no margin). ``recorded``: ``recorded_snapshots``;
    ``tick`` after each scored snapshot."""
    snapshots, missing = recorded
    for m, why in missing.items():
        log.warning("during unlearning: %s not reported: %s", m, why)
    if not snapshots:
        return [], ({"not_recorded": missing} if missing else {})
    leakage_of = WithdrawnLeakage(run_dir, cfg, parts, gamma)
    retrain, _ = leakage_of.measure(ORACLE)
    original, _ = leakage_of.measure(ORIGINAL)
    rows: list[dict] = []
    models: dict[str, dict] = {}
    for m, trail in snapshots.items():
        mine = []
        for s in trail:
            leakage, test_accuracy = leakage_of.measure(s["name"])
            mine.append({"model": m, **{k: s[k] for k in DURING_COLUMNS[1:7]}, "leakage": leakage,
                         "test_accuracy": test_accuracy})
            tick()
        lowest = min(range(len(mine)), key=lambda j: mine[j]["leakage"])
        reached = None if margin is None else next(
            (j for j, r in enumerate(mine) if abs(r["leakage"] - retrain) <= margin), None)
        models[m] = {"snapshots": len(mine) - 1, "start": mine[0]["leakage"], "end": mine[-1]["leakage"],
                     "lowest": mine[lowest]["leakage"], "lowest_snapshot": lowest,
                     "end_test_accuracy": mine[-1]["test_accuracy"], "client_samples": mine[-1]["client_samples"],
                     "phases": list(dict.fromkeys(r["phase"] for r in mine[1:])),
                     "within_margin_at_snapshot": reached,
                     "within_margin_client_samples": None if reached is None else mine[reached]["client_samples"],
                     "within_margin_test_accuracy": None if reached is None else mine[reached]["test_accuracy"]}
        rows += mine
    summary = {"measure": leakage_of.description, "retrain": retrain, "original": original,
               "margin": margin, "models": models}
    if missing:
        summary["not_recorded"] = missing
    return rows, summary


def plot_during_unlearning(run_dir: Path, summary: dict) -> Path | None:
    """One panel per method: the withdrawn clients' leakage at every snapshot (phase changes marked), retrain's level
    with its equivalence margin, the original's level, the never-seen band (client withdrawals) and, on the right
    axis, the test accuracy."""
    from fedunlearn.stages.palette import model_color
    from fedunlearn.stages.plots import BAND_COLOR, attack_band, plt, read_csv_rows, save_figure

    during = summary.get("during_unlearning") or {}
    rows = read_csv_rows(RunDir(run_dir).during_unlearning) if during.get("models") else []
    if not rows:
        return None
    methods = list(during["models"])
    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), sharey=True, squeeze=False)
    retrain, original, margin = during["retrain"], during["original"], during.get("margin")
    band = attack_band(summary, "loss")  # None for a class withdrawal (no never-seen verdict there)
    for ax, m in zip(axes.flat, methods):
        mine = [r for r in rows if r["model"] == m]
        x = list(range(len(mine)))
        _mark_phases(ax, [r["phase"].split(".")[-1] for r in mine])
        if band:
            ax.axhspan(band[0], band[1], color=BAND_COLOR, alpha=0.5, lw=0)
        if margin is not None:
            ax.axhspan(retrain - margin, retrain + margin, color=model_color(ORACLE), alpha=0.15, lw=0)
        ax.axhline(retrain, color=model_color(ORACLE), ls="--", lw=1.2)
        ax.axhline(original, color=model_color(ORIGINAL), ls=":", lw=1.2)
        ax.plot(x, [float(r["leakage"]) for r in mine], marker="o", ms=3, lw=1.4, color=model_color(m))
        acc = ax.twinx()
        acc.plot(x, [float(r["test_accuracy"]) for r in mine], color="0.45", lw=0.9, ls="-.")
        acc.set_ylim(0, 1.02)
        acc.tick_params(labelsize=7)
        ax.set_title(m, fontsize=9, color=model_color(m), pad=12)
        ax.set_xlabel("snapshot (a new server model)", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(during["measure"].split(" of ")[0], fontsize=8)
    legend = [plt.Line2D([], [], color=model_color(ORACLE), ls="--", label="retrain" + (" ± margin" if margin else "")),
              plt.Line2D([], [], color=model_color(ORIGINAL), ls=":", label="original"),
              plt.Line2D([], [], color="0.45", ls="-.", label="test accuracy (right axis)")]
    if band:
        legend.append(plt.Rectangle((0, 0), 1, 1, color=BAND_COLOR, label="never-seen band"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"During unlearning: {during['measure']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = RunDir(run_dir).plot("during_unlearning")
    save_figure(fig, out)
    return out


def _mark_phases(ax, phases: list[str]) -> None:  # noqa: ANN001 - a matplotlib Axes
    """A thin line where the phase changes, each phase's name above its span of snapshots."""
    start = 0
    for j in range(1, len(phases) + 1):
        if j == len(phases) or phases[j] != phases[start]:
            if start:
                ax.axvline(start - 0.5, color="0.55", lw=0.7, ls=":")
            ax.text((start + j - 1) / 2, 1.0, phases[start], transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=6.5, color="0.35")
            start = j
