"""Benchmark of the unlearning methods against retrain, several seeds, through Flower on Ray; JSON out.

Per method and seed (from each run's ``summary.json``): ΔAUC of the withdrawn client vs retrain for each attack
(default loss and rmia, scored on the audit part) and the verdict against retrain (equivalence margin from the
retrain-vs-retrain null, ``audit.retrain_null = true``), test accuracy / retrain's, and the speed-ups vs retrain in
wall time and client samples. Aggregated per method: mean and 95% CI over seeds (Student t), the share of seeds
judged equivalent, and the goal of issue 8 (equivalent on >= 4 of 5 seeds for every attack, test accuracy >= 0.98 x
retrain's, >= 15x fewer client samples and >= 10x less wall time than retrain).

    python experiments/bench_unlearning.py                               # quickstart, seeds 0-4, through Ray
    python experiments/bench_unlearning.py --seeds 3 4 --set "withdraw.clients=[4]" --out /tmp/b.json
    python experiments/bench_unlearning.py --config experiments/digits.toml --backend inprocess
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fedunlearn.config.load import load_config
from fedunlearn.io import atomic_write_json
from fedunlearn.methods import METHODS
from fedunlearn.pipeline import run
from fedunlearn.sweep.aggregate import mean_ci

HERE = Path(__file__).resolve().parent
GOAL = {"equivalent_seeds": 4, "of_seeds": 5, "test_acc_ratio": 0.98, "speedup_client_samples": 15.0,
        "speedup_wall": 10.0}


def one_seed(config: Path, seed: int, methods: list[str], attacks: list[str], overrides: list[str], backend: str,
             out: Path) -> dict:
    cfg = load_config(config, [f"seed={seed}", f"unlearn.methods={json.dumps(['retrain', *methods])}",
                               f"audit.attacks={json.dumps(attacks)}", "audit.retrain_null=true",
                               f'sim.backend="{backend}"', *overrides])
    res = run(cfg, out=out / f"seed{seed}")
    s = res.summary
    retrain = s["models"]["retrain"]
    rows = {}
    for m in methods:
        e = s["models"].get(m)
        if e is None:
            rows[m] = {"failed": s.get("failed_methods", {}).get(m, "no model")}
            continue
        rows[m] = {
            "attacks": {a: {"auc": e["leakage"][a]["auc"], "delta_auc": e["leakage"][a]["distance_to_retrain"],
                            "verdict": e["leakage"][a]["verdict"], "never_seen": e["leakage"][a]["never_seen"],
                            "margin": e["leakage"][a]["equivalence_margin"]} for a in attacks},
            "speedup_wall": e["speedup_vs_retrain"]["wall"],
            "speedup_client_samples": e["speedup_vs_retrain"]["client_samples"],
            "test_acc_ratio": e["test_accuracy"] / retrain["test_accuracy"],
            "retained_acc_ratio": e["retained_accuracy"] / retrain["retained_accuracy"],
            "wall_s": e["cost"]["wall_s"], "client_samples": e["cost"]["client_samples"],
            "rounds": e["cost"]["rounds"],
        }
    return {"seed": seed, "run_dir": str(res.run_dir), "wall_s": res.wall_s,
            "original": {a: s["models"]["original"]["leakage"][a]["auc"] for a in attacks},
            "original_never_seen": {a: s["models"]["original"]["leakage"][a]["never_seen"] for a in attacks},
            "retrain": {a: retrain["leakage"][a]["auc"] for a in attacks},
            "retrain_test_accuracy": retrain["test_accuracy"], "retrain_wall_s": retrain["cost"]["wall_s"],
            "margin": {a: retrain["leakage"][a]["equivalence_margin"] for a in attacks},
            "null_band": s["null_band"], "n_member": s["n_member"], "n_nonmember": s["n_nonmember"],
            "methods": rows}


def aggregate(per_seed: list[dict], methods: list[str], attacks: list[str]) -> dict:
    out = {}
    for m in methods:
        ok = [r["methods"][m] for r in per_seed if "failed" not in r["methods"][m]]
        if not ok:
            out[m] = {"failed_all_seeds": True}
            continue
        agg: dict = {"seeds": len(ok), "failed_seeds": len(per_seed) - len(ok), "attacks": {}}
        for a in attacks:
            agg["attacks"][a] = {
                "delta_auc": mean_ci([r["attacks"][a]["delta_auc"] for r in ok]),
                "equivalent_seeds": sum(r["attacks"][a]["verdict"] == "equivalent" for r in ok),
                "verdicts": [r["attacks"][a]["verdict"] for r in ok]}
        for k in ("test_acc_ratio", "retained_acc_ratio", "speedup_wall", "speedup_client_samples"):
            agg[k] = mean_ci([r[k] for r in ok])
        equivalent_all = [all(r["attacks"][a]["verdict"] == "equivalent" for a in attacks) for r in ok]
        agg["equivalent_all_attacks_seeds"] = sum(equivalent_all)
        agg["goal"] = {
            "equivalent": sum(equivalent_all) >= GOAL["equivalent_seeds"] * len(per_seed) / GOAL["of_seeds"],
            "utility": (agg["test_acc_ratio"] or {}).get("mean", 0) >= GOAL["test_acc_ratio"],
            "client_samples": (agg["speedup_client_samples"] or {}).get("mean", 0) >= GOAL["speedup_client_samples"],
            "wall": (agg["speedup_wall"] or {}).get("mean", 0) >= GOAL["speedup_wall"]}
        agg["goal"]["met"] = all(agg["goal"].values())
        out[m] = agg
    return out


def _fmt(ci: dict | None, fmt: str = "+.3f") -> str:
    if ci is None:
        return "—"
    if ci["lo"] is None:
        return format(ci["mean"], fmt)
    return f"{ci['mean']:{fmt}} [{ci['lo']:{fmt}}, {ci['hi']:{fmt}}]"


def markdown_table(result: dict) -> str:
    """The README's methods table from one benchmark JSON."""
    attacks, n = result["attacks"], len(result["seeds"])
    head = ["method"] + [f"ΔAUC {a} [95% CI]" for a in attacks] + [f"equivalent ({'/'.join(attacks)})",
                                                                   "test acc / retrain", "client-sample speed-up",
                                                                   "wall speed-up", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, a in result["summary"].items():
        if a.get("failed_all_seeds"):
            lines.append(f"| {m} | failed on every seed |" + " |" * (len(head) - 2))
            continue
        eq = " / ".join(f"{a['attacks'][x]['equivalent_seeds']}/{n}" for x in attacks)
        lines.append("| " + " | ".join([m] + [_fmt(a["attacks"][x]["delta_auc"]) for x in attacks] + [
            eq, _fmt(a["test_acc_ratio"], ".3f"), _fmt(a["speedup_client_samples"], ".1f") + "×",
            _fmt(a["speedup_wall"], ".1f") + "×", "met" if a["goal"]["met"] else "missed: " + ", ".join(
                k for k, v in a["goal"].items() if k != "met" and not v)]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "quickstart.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS.names() if m != "retrain"])
    ap.add_argument("--attacks", nargs="+", default=["loss", "rmia"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--backend", default="ray", choices=["ray", "inprocess"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_unlearning.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs_dir = Path("bench-results") / f"{args.out.stem}-runs-{time.strftime('%Y%m%d-%H%M%S')}"
    per_seed = []
    result: dict = {"config": str(args.config), "overrides": args.overrides, "backend": args.backend,
                    "seeds": args.seeds, "attacks": args.attacks, "goal": GOAL}
    for s in args.seeds:
        per_seed.append(one_seed(args.config, s, args.methods, args.attacks, args.overrides, args.backend, runs_dir))
        result.update(per_seed=per_seed, summary=aggregate(per_seed, args.methods, args.attacks))
        atomic_write_json(args.out, result)  # partial results survive an interrupt
    print(markdown_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
