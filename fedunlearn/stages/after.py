"""After unlearning (``audit.after_rounds = N``): does forgotten information come back when the federation trains
on, and does an unlearned model drift toward or away from retrain? The FL stage continued FedAvg over the remaining
clients for N rounds from every unlearned model and from retrain (``engine.phases.Phases.after_unlearning``); this
stage reads those saved models: per model and round, the withdrawn clients' leakage (the loss attack's AUC of their
members against their audit records, pooled; for a class withdrawal the forgotten classes' member accuracy), the
test accuracy, and the distances to the original model and to retrain's own continuation at the same round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.models import distance, load_weights
from fedunlearn.rundir import ORACLE, ORIGINAL, RunDir, after_model
from fedunlearn.stages.trajectory import WithdrawnLeakage

AFTER_COLUMNS = ["model", "round", "leakage", "test_accuracy", "distance_to_original", "distance_to_retrain"]


def continued_models(run_dir: Path, cfg: ExperimentConfig) -> list[str]:
    """The models whose continuation was trained and saved (every round of it)."""
    rd, n = RunDir(run_dir), cfg.audit.after_rounds
    names = [m for m in cfg.unlearn.methods if m != ORACLE] + [ORACLE]
    return [m for m in names if all(rd.model(after_model(m, r)).is_file() for r in range(n + 1))]


def after_unlearning(run_dir: Path, cfg: ExperimentConfig, parts, gamma: float,  # noqa: ANN001
                     models: list[str], tick: Callable[[], None] = lambda: None) -> tuple[list[dict], dict]:
    """Rows of ``after_unlearning.csv`` and the summary entry (start, end and change of the leakage per model) for
    the ``continued_models``; ``tick`` after each scored model. Distances are L2 over the float parameters
    (``models.distance``)."""
    rd, n = RunDir(run_dir), cfg.audit.after_rounds
    if not models or ORACLE not in models:
        return [], {}
    leakage_of = WithdrawnLeakage(run_dir, cfg, parts, gamma)
    original = load_weights(rd.model(ORIGINAL))
    retrain = [load_weights(rd.model(after_model(ORACLE, r))) for r in range(n + 1)]
    rows: list[dict] = []
    for m in models:
        for r in range(n + 1):
            name = after_model(m, r)
            leakage, test_accuracy = leakage_of.measure(name)
            w = load_weights(rd.model(name))
            rows.append({"model": m, "round": r, "leakage": leakage, "test_accuracy": test_accuracy,
                         "distance_to_original": distance(w, original),
                         "distance_to_retrain": distance(w, retrain[r])})
            tick()
    by_model = {m: [x for x in rows if x["model"] == m] for m in models}
    summary = {
        "rounds": n,
        "measure": leakage_of.description,
        "models": {m: {"start": rs[0]["leakage"], "end": rs[-1]["leakage"], "change": rs[-1]["leakage"] -
                       rs[0]["leakage"], "retrain_end": by_model[ORACLE][-1]["leakage"],
                       "distance_to_retrain_start": rs[0]["distance_to_retrain"],
                       "distance_to_retrain_end": rs[-1]["distance_to_retrain"]} for m, rs in by_model.items()},
    }
    return rows, summary


def plot_after_unlearning(run_dir: Path, summary: dict) -> Path | None:
    """Per model: the withdrawn clients' leakage and the distance to retrain's continuation over the rounds of
    continued training (round 0 = the unlearned model)."""
    from fedunlearn.stages.palette import model_style
    from fedunlearn.stages.plots import plt, read_csv_rows, save_figure

    after = summary.get("after_unlearning") or {}
    rows = read_csv_rows(RunDir(run_dir).after_unlearning) if after else []
    if not rows:
        return None
    fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for m in after["models"]:
        mine = [r for r in rows if r["model"] == m]
        x = [int(r["round"]) for r in mine]
        ax_l.plot(x, [float(r["leakage"]) for r in mine], marker="o", ms=3, label=m, **model_style(m))
        ax_d.plot(x, [float(r["distance_to_retrain"]) for r in mine], marker="o", ms=3, label=m, **model_style(m))
    ax_l.set(xlabel="rounds of FedAvg after unlearning", ylabel=after["measure"].split(" of ")[0],
             title="Does the forgotten information come back?")
    ax_d.set(xlabel="rounds of FedAvg after unlearning", ylabel="L2 distance to retrain's continuation",
             title="Toward or away from retrain?")
    ax_d.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in (ax_l, ax_d):
        ax.grid(alpha=0.3)
    out = RunDir(run_dir).plot("after_unlearning")
    save_figure(fig, out)
    return out
