"""Benchmark of the unlearning methods on the quickstart set-up, several seeds, through Flower on Ray.

Per method and seed: speed-up vs retrain (wall time and client samples), the withdrawn client's loss-attack AUC, its
distance to retrain's, whether it is inside retrain's null band, and test / retained accuracy relative to retrain.
Writes JSON (default bench-results/bench_unlearning.json).

    python experiments/bench_unlearning.py --seeds 0 1 2
    python experiments/bench_unlearning.py --set train.rounds=10 --methods finetune pga --backend inprocess
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from fedunlearn.config import load_config
from fedunlearn.io import atomic_write_json
from fedunlearn.methods import METHODS
from fedunlearn.runner import run

HERE = Path(__file__).resolve().parent


def one_seed(config: Path, seed: int, methods: list[str], overrides: list[str], backend: str, out: Path) -> dict:
    cfg = load_config(config, [f"seed={seed}", f"unlearn.methods={json.dumps(['retrain', *methods])}",
                               'audit.attacks=["loss"]', f'sim.backend="{backend}"', *overrides])
    res = run(cfg, out=out / f"seed{seed}")
    s = res.summary
    retrain = s["models"]["retrain"]
    rows = {}
    for m in methods:
        e = s["models"].get(m)
        if e is None:
            rows[m] = {"failed": s.get("failed_methods", {}).get(m, "no model")}
            continue
        leak = e["leakage"]["loss"]
        rows[m] = {
            "speedup_wall": e["speedup_vs_retrain"]["wall"],
            "speedup_client_samples": e["speedup_vs_retrain"]["client_samples"],
            "withdrawn_auc": leak["auc"],
            "distance_to_retrain": leak["distance_to_retrain"],
            "verdict": leak["verdict"],
            "test_acc_rel_retrain": e["test_accuracy"] / retrain["test_accuracy"],
            "retained_acc_rel_retrain": e["retained_accuracy"] / retrain["retained_accuracy"],
            "wall_s": e["cost"]["wall_s"],
            "rounds": e["cost"]["rounds"],
        }
    return {"seed": seed, "run_dir": str(res.run_dir), "wall_s": res.wall_s,
            "original_auc": s["models"]["original"]["leakage"]["loss"]["auc"],
            "retrain_auc": retrain["leakage"]["loss"]["auc"], "retrain_wall_s": retrain["cost"]["wall_s"],
            "null_band": s["null_band"], "methods": rows}


def aggregate(per_seed: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        ok = [r["methods"][m] for r in per_seed if "failed" not in r["methods"][m]]
        if not ok:
            out[m] = {"failed_all_seeds": True}
            continue
        agg = {}
        for k in ("speedup_wall", "speedup_client_samples", "withdrawn_auc", "distance_to_retrain",
                  "test_acc_rel_retrain", "retained_acc_rel_retrain"):
            vals = [r[k] for r in ok if r[k] is not None]
            agg[k] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)} if vals else None
        agg["inside_band"] = sum(r["verdict"] == "inside" for r in ok)
        agg["seeds"] = len(ok)
        agg["reaches_target"] = sum(r["verdict"] == "inside" and (r["speedup_wall"] or 0) >= 15 for r in ok)
        out[m] = agg
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "quickstart.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS.names() if m != "retrain"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--backend", default="ray", choices=["ray", "inprocess"])
    ap.add_argument("--out", type=Path, default=Path("bench-results") / "bench_unlearning.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs_dir = args.out.parent / f"{args.out.stem}-runs-{time.strftime('%Y%m%d-%H%M%S')}"
    per_seed = [one_seed(args.config, s, args.methods, args.overrides, args.backend, runs_dir) for s in args.seeds]
    result = {"config": str(args.config), "overrides": args.overrides, "backend": args.backend,
              "seeds": args.seeds, "per_seed": per_seed, "summary": aggregate(per_seed, args.methods)}
    atomic_write_json(args.out, result)
    for m, a in result["summary"].items():
        if a.get("failed_all_seeds"):
            print(f"{m:12s} failed on every seed")
            continue
        print(f"{m:12s} speed-up {a['speedup_wall']['mean']:6.1f}×  withdrawn AUC {a['withdrawn_auc']['mean']:.3f}"
              f"  Δ retrain {a['distance_to_retrain']['mean']:+.3f}  inside band {a['inside_band']}/{a['seeds']}"
              f"  test acc/retrain {a['test_acc_rel_retrain']['mean']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
