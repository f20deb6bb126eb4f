"""``report.md`` from a run directory's saved results (``fedunlearn report`` re-draws it with the plots); its
result tables come from ``fedunlearn.stages.tables``: the same cells the terminal shows."""

from __future__ import annotations

from pathlib import Path

from fedunlearn.io import atomic_write_text
from fedunlearn.rundir import RunDir
from fedunlearn.stages.after import plot_after_unlearning
from fedunlearn.stages.during import plot_during_unlearning
from fedunlearn.stages.plots import (
    plot_accuracy_bars,
    plot_client_auc,
    plot_leakage_vs_cost,
    plot_training_curves,
    plot_utility_vs_leakage,
)
from fedunlearn.stages.plots_audit import (
    plot_auc_heatmap,
    plot_epsilon_hist,
    plot_roc_grid,
    plot_roc_withdrawn,
    plot_vulnerable_records,
)
from fedunlearn.stages.tables import markdown, summary_tables


def _num(v: object, fmt: str = ".3f") -> str:
    return "undefined" if v is None else format(v, fmt)


CLASS_NOTE = (" Class withdrawal: the headline verdict is the forgotten classes' accuracy against retrain's (section "
              "above), not the null band: there members and non-members are all records of the forgotten classes, "
              "and a model that still classifies them ranks both alike whether it forgot the classes or not, so "
              "*never seen* is not reported.")


def forget_class_section(summary: dict) -> list[str]:
    """Class withdrawal: the forgotten classes' member accuracy against retrain's, every model (the original too)."""
    rows = {m: e["forget_class"] for m, e in summary["models"].items() if e.get("forget_class")}
    if not rows:
        return []
    lines = ["", f"## Class withdrawal {summary['withdrawn_classes']}: forgotten-class accuracy against retrain", "",
             "| model | accuracy (forgotten members) | test accuracy (forgotten classes) | Δ vs retrain | margin "
             "| verdict |", "|---|---|---|---|---|---|"]
    for m, f in rows.items():
        test = summary["models"][m].get("forgotten_class_test_accuracy")
        lines.append(f"| {m} | {f['accuracy']:.3f} | {_num(test)} | "
                     f"{'—' if m == 'retrain' else format(f['delta'], '+.3f')} | ±{f['margin']:.3f} | {f['verdict']} |")
    lines += ["", "The headline verdict of a class withdrawal: a model that forgot the classes stops predicting them, "
              "as retrain (which never learned them) does. Margin: the larger of 1.96 × the RMS of "
              "retrain-vs-retrain Δaccuracy (over clients and null seeds) and 1.96 × the Agresti–Caffo standard "
              "error of the difference; *under-unlearned* = the model still knows the classes."]
    return lines


def audit_sections(summary: dict) -> list[str]:
    """report.md sections of the leakage audit: class withdrawal, forgetting rate, other clients, retrain null, RMIA
    set-up, A2."""
    lines: list[str] = forget_class_section(summary)
    methods = [m for m in summary["models"] if m != "original"]
    frs = {m: summary["models"][m].get("forgetting_rate") for m in methods}
    if any(frs.values()):
        alpha = summary.get("forgetting_rate", {}).get("alpha", 0.1)
        lines += ["", f"## Forgetting rate (Forsaken; A0 threshold at FPR {alpha} fixed on the original model)", "",
                  "| model | FR | per-record FR | B_T | FR(retrain) | per-record FR(retrain) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {_num(fr['fr'])} | {_num(fr['fr_per_record'])} | {fr['b_t']} | {_num(fr['fr_retrain'])} | "
                  f"{_num(fr['fr_per_record_retrain'])} |" for m, fr in frs.items() if fr]
        lines += ["", "Undefined when no withdrawn member was judged a member before unlearning (B_T = 0); negative "
                  "when more records look like members after unlearning. A retrained model does not score 1."]
    comp = summary.get("comparisons", {}).get("methods", {})
    if comp:
        lines += ["", f"## Other clients (paired DeLong, Benjamini–Hochberg q = {summary['comparisons']['q']})", "",
                  "| method | attack | remaining clients ≠ retrain | onion effect (remaining ≠ original) |",
                  "|---|---|---|---|"]
        lines += [f"| {m} | {a} | {e['remaining_differ_from_retrain'] or '—'} | {e['onion_effect'] or '—'} |"
                  for m, per in comp.items() for a, e in per.items()]
    null = summary.get("retrain_null", {}).get("attacks", {})
    if null:
        lines += ["", "## False-alarm level: retrain vs retrain with another seed", "",
                  "| attack | clients flagged (BH) | raw p < 0.05 | mean abs ΔAUC | max abs ΔAUC "
                  "| equivalence margin | withdrawn ΔAUC | withdrawn as if never seen |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {a} | {e['bh_flagged']}/{e['clients']} | {e['raw_p_below_0.05']} | {e['mean_abs_delta_auc']:.3f} "
                  f"| {e['max_abs_delta_auc']:.3f} | ±{_num(e.get('equivalence_margin'))} "
                  f"| {e['withdrawn_delta_auc_vs_retrain']:+.3f} | {e['withdrawn_never_seen'] or '—'} |"
                  for a, e in null.items()]
        lines += ["", f"Null models: {', '.join(summary['retrain_null'].get('null_models', []))}. The margin is "
                  "1.96 × the RMS of their ΔAUC against retrain over every client: two exact unlearnings differ by "
                  "this much by chance, so a method within it of retrain is judged equivalent."]
    rmia = summary.get("rmia")
    if rmia:
        h = rmia["halves"]
        lines += ["", "## RMIA set-up", "",
                  f"Reference A trained on clients {h['reference_a']}, reference B on {h['reference_b']}; withdrawn "
                  f"clients {h['out_of_both']} are OUT for both. a = {rmia['a']} (tuned by attacking reference A with "
                  f"reference B: AUC {_num(rmia['tuning_auc'])}); population {rmia['population_size']} records."]
    a2 = summary.get("seed_audit")
    if a2 and a2.get("models"):
        null_eps = a2["retrain_vs_retrain"]
        lines += ["", f"## A2 seed audit ({a2['seeds']} seeds, {a2['records']} withdrawn members)", "",
                  "| model | mean ε | median ε | challenge score | mean ε (half the seeds) | U-LiRA accuracy |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {e['epsilon_mean']:.2f} | {e['epsilon_median']:.2f} | {e['challenge_score']:.3f} | "
                  f"{e['epsilon_half_mean']:.2f} | {e['ulira_accuracy_mean']:.3f} |" for m, e in a2["models"].items()]
        lines.append(f"| retrain vs retrain | | | {null_eps['challenge_score_half']:.3f} (half) | "
                     f"{null_eps['epsilon_half_mean']:.2f} | |")
    return lines


def withdrawal_label(summary: dict) -> str:
    """"client(s) [0]" or, for a class withdrawal, "class(es) [3] of every client"."""
    if summary.get("withdrawn_classes"):
        return f"class(es) {summary['withdrawn_classes']} of every client"
    return f"client(s) {summary['withdrawn_clients']}"


def write_report(run_dir: Path) -> Path:
    """``report.md`` and ``plots/`` from the saved results. A missing or corrupt ``summary.json`` or
    ``per_client.csv`` is one line (``ConfigError``) before anything is drawn; a plot this report does not draw is
    removed, so ``plots/`` never shows a previous audit's picture."""
    from fedunlearn.rundir import PER_CLIENT_BASE, check_results_file, check_writable, read_summary
    from fedunlearn.stages.scoring import load_scores

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    check_results_file(run_dir, "per_client.csv", PER_CLIENT_BASE)
    check_writable(run_dir, "run directory")
    scores = load_scores(run_dir)
    plots = [plot_training_curves(run_dir, summary), plot_accuracy_bars(run_dir, summary),
             plot_utility_vs_leakage(run_dir, summary)]
    for a in summary["attacks"]:
        plots.append(plot_client_auc(run_dir, a, summary))
        plots.append(plot_leakage_vs_cost(run_dir, a, summary))
    if scores:
        plots += plot_roc_withdrawn(run_dir, scores, summary)
        plots += [plot_roc_grid(run_dir, scores, summary, a) for a in summary["attacks"]]
    plots += [plot_auc_heatmap(run_dir, summary), plot_vulnerable_records(run_dir)]
    if summary.get("seed_audit"):
        plots.append(plot_epsilon_hist(run_dir))
    if summary.get("during_unlearning"):
        plots.append(plot_during_unlearning(run_dir, summary))
    if summary.get("after_unlearning"):
        plots.append(plot_after_unlearning(run_dir, summary))
    drawn = {p.name for p in plots if p is not None}
    for stale in RunDir(run_dir).plots.glob("*.png"):
        if stale.name not in drawn:
            stale.unlink()
    lines = [f"# fedunlearn report: {summary['name']}", "",
             f"Withdrawn: {withdrawal_label(summary)}; seed {summary['seed']}; "
             f"{summary['n_member']} member vs {summary['n_nonmember']} audit records (held-out, never read by any "
             "method) audited; null band "
             f"[{summary['null_band'][0]:.3f}, {summary['null_band'][1]:.3f}] (AUC expected of a model that never saw "
             "the withdrawn client)."]
    for table in summary_tables(summary, withdrawal_label(summary)):  # the cells the terminal shows
        lines += [""] + markdown(table)
    if summary.get("failed_methods"):
        lines += ["", "## Failed methods", ""] + [f"- `{m}`: {why}" for m, why in summary["failed_methods"].items()]
    lines += audit_sections(summary) + _during_section(summary) + _after_section(summary)
    lines += ["", "Verdicts against retrain (*vs retrain*): *equivalent* = the withdrawn clients' AUC is within the "
              "equivalence margin of retrain's (1.96 × the RMS of retrain-vs-retrain ΔAUC over clients and null "
              "seeds; see the false-alarm section); *under-unlearned* = more leakage than retrain by more than the "
              "margin; *over-unlearned* = less (a detectable 'Streisand' signal); *no margin* = the run trained no "
              "retrain-vs-retrain null (`audit.retrain_null`). Before/after attacks (difference) flip the direction: "
              "exact unlearning also moves the forgotten records, so a larger difference than retrain's is "
              "over-unlearning. Retrain is exact by definition. *Never seen*: inside / above / below the 0.5 null "
              "band (membership attacks only) — even retrain can sit above it."
              + (CLASS_NOTE if summary.get("withdrawn_classes") else ""),
              "", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots if p is not None]
    lines += ["", "Files: `per_client.csv` (every model × client × attack, with ΔAUC, paired DeLong p-values and "
              "Benjamini–Hochberg flags vs retrain and vs the original), `vulnerable_records.csv` (most exposed "
              "members per client), `ledger.csv` (costs per method and phase), `rounds.csv` (per-round metrics), "
              "`data_access.csv` (every read of client data).", ""]
    return atomic_write_text(RunDir(run_dir).report, "\n".join(lines))


def _during_section(summary: dict) -> list[str]:
    """``audit.during``: the withdrawn clients' leakage at every snapshot of each method."""
    during = summary.get("during_unlearning")
    if not during:
        return []
    lines = ["", "## During unlearning: the withdrawn clients' leakage snapshot by snapshot", ""]
    if during.get("models"):
        margin = during.get("margin")
        lines += [f"Measure: {during['measure']} (`during_unlearning.csv`, `plots/during_unlearning.png`); a "
                  "snapshot is each new model the server held (snapshot 0: the model the method started from). "
                  f"Original {during['original']:.3f}, retrain {during['retrain']:.3f}"
                  + (f" ± {margin:.3f} (equivalence margin)." if margin is not None else
                     " (no equivalence margin: the run trained no retrain-vs-retrain null)."), "",
                  "| method | phases | new models | start | lowest (snapshot) | end | test acc. at end "
                  "| client samples | first within retrain's margin: snapshot (client samples, test acc.) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, e in during["models"].items():
            reached = ("—" if e["within_margin_at_snapshot"] is None else
                       f"{e['within_margin_at_snapshot']} ({e['within_margin_client_samples']:,}, "
                       f"{e['within_margin_test_accuracy']:.3f})")
            lines.append(f"| {m} | {' → '.join(p.split('.')[-1] for p in e['phases'])} | {e['snapshots']} | "
                         f"{e['start']:.3f} | {e['lowest']:.3f} ({e['lowest_snapshot']}) | {e['end']:.3f} | "
                         f"{e['end_test_accuracy']:.3f} | {e['client_samples']:,} | {reached} |")
        lines += ["", "A snapshot within the margin is not yet a good model: its test accuracy says whether the method "
                  "got there by forgetting the client or by forgetting more (an early replayed model of federaser, "
                  "an ascent before its repair)."]
    lines += [f"- not recorded: `{m}`: {why}" for m, why in (during.get("not_recorded") or {}).items()]
    return lines


def _after_section(summary: dict) -> list[str]:
    """``audit.after_rounds``: the withdrawn clients' leakage when FedAvg goes on after unlearning."""
    after = summary.get("after_unlearning")
    if not after:
        return []
    lines = ["", f"## After unlearning: {after['rounds']} more FedAvg rounds on the remaining clients", "",
             f"Measure: {after['measure']} (`after_unlearning.csv`, `plots/after_unlearning.png`). Retrain's own "
             "continuation is the yardstick: a model whose leakage rises toward the original's while retrain's does "
             "not got the forgotten information back.", "",
             "| model | at unlearning | after | change | retrain after | distance to retrain: start → end |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, e in after["models"].items():
        lines.append(f"| {m} | {e['start']:.3f} | {e['end']:.3f} | {e['change']:+.3f} | {e['retrain_end']:.3f} | "
                     f"{e['distance_to_retrain_start']:.3f} → {e['distance_to_retrain_end']:.3f} |")
    return lines
