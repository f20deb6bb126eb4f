"""Scale benchmark (issue 5): 10, 100 and 1,000 clients through Flower on Ray on this machine.

Each size is one experiment (synthetic data, 30 records per client, MLP 256-256, ``--rounds`` rounds of FedAvg with
10% of the clients per round, 100% for 10 clients; one withdrawal; only the ``retrain`` oracle, so it finishes),
run in a fresh process so that its peak memory is its own. Reported per size: wall time (total, the Flower/Ray
simulation, the audit), Ray start-up (simulation start to the end of the first round, minus that round), seconds
per round (from the progress callback, i.e. the server's view of a round), the ledger's per-phase wall time, and the
peak RSS of the server (whole run, and up to the audit), the Ray workers and Ray's daemons (``env.json``).

    python experiments/bench_scale.py                       # 10, 100, 1000 clients -> bench-results/bench_scale.json
    python experiments/bench_scale.py --sizes 10,100 --rounds 3 --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def overrides(clients: int, rounds: int, records_per_client: int) -> list[str]:
    fraction = 1.0 if clients <= 10 else 0.1
    return [
        'name="bench-scale"', "seed=0",
        'data.dataset="synthetic"', f"data.samples={records_per_client * clients}", "data.features=100",
        "data.informative=20", "data.classes=10", "data.class_sep=2.5", "data.flip_y=0.1",
        f"data.clients={clients}", "data.holdout=0.2",
        "model.hidden=[256, 256]",
        f"train.rounds={rounds}", f"train.fraction={fraction}", "train.local_epochs=1", "train.lr=0.1",
        "train.batch_size=32",
        "withdraw.clients=[0]", 'unlearn.methods=["retrain"]', 'audit.attacks=["loss"]',
        'sim.backend="ray"', 'sim.device="cpu"', "sim.num_cpus=1",
    ]


def run_one(clients: int, rounds: int, records_per_client: int, out_dir: Path) -> dict:
    """One size, in this process: the experiment with timers around the simulation and the audit."""
    sys.path.insert(0, str(ROOT))
    from fedunlearn import runner, simulation
    from fedunlearn.config.load import load_config

    marks: dict[str, float] = {}
    ticks: list[tuple[str, int, float]] = []

    def timed(fn, name):
        def wrapper(*a, **kw):
            marks[f"{name}_start"] = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                marks[f"{name}_end"] = time.perf_counter()
                marks[f"{name}_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return wrapper

    simulation.run_flower = timed(simulation.run_flower, "sim")
    runner.finish_run = timed(runner.finish_run, "audit")
    cfg = load_config(None, overrides(clients, rounds, records_per_client))
    t0 = time.perf_counter()
    result = runner.run(cfg, out=out_dir / f"clients-{clients}",
                        progress=lambda phase, rnd, total: ticks.append((phase, rnd, time.perf_counter())))
    wall = time.perf_counter() - t0
    run_dir = result.run_dir
    env = json.loads((run_dir / "env.json").read_text())
    with (run_dir / "ledger.csv").open() as fh:
        ledger = list(csv.DictReader(fh))
    with (run_dir / "rounds.csv").open() as fh:
        rounds_rows = list(csv.DictReader(fh))

    # seconds per round: gaps between consecutive rounds of one phase (the first round of a phase is left out: it
    # carries the phase's set-up, and the very first one Ray's start-up)
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(ticks) if a[0] == b[0] and b[1] == a[1] + 1]
    first_round = ticks[0][2] - marks["sim_start"] if ticks else float("nan")
    per_round = statistics.median(gaps) if gaps else float("nan")
    sampled = [int(r["clients"]) + int(r["failed"]) for r in rounds_rows]
    return {
        "clients": clients,
        "fraction": cfg.train.fraction,
        "clients_per_round": statistics.median(sampled) if sampled else 0,
        "records_per_client": records_per_client,
        "rounds_per_phase": rounds,
        "fl_rounds_total": len(rounds_rows),
        "wall_s": round(wall, 2),
        "simulation_s": round(marks["sim_end"] - marks["sim_start"], 2),
        "audit_s": round(marks["audit_end"] - marks["audit_start"], 2),
        "startup_s": round(first_round - per_round, 2),
        "s_per_round_median": round(per_round, 3),
        "s_per_round_mean": round(statistics.fmean(gaps), 3) if gaps else float("nan"),
        "s_per_round_max": round(max(gaps), 3) if gaps else float("nan"),
        "ms_per_client_message": round(1000 * per_round / max(statistics.median(sampled), 1), 1) if sampled else 0,
        "ledger_wall_s": {f"{r['method']}/{r['phase']}": round(float(r["wall_s"]), 2) for r in ledger},
        "test_accuracy_last": float(rounds_rows[-1]["test_accuracy"]) if rounds_rows else float("nan"),
        **{k: v for k, v in env.items() if k.startswith("peak_rss_mb")},
        # the server's peak up to the end of the FL phases (the audit afterwards can need more)
        "peak_rss_mb_server_until_audit": round(marks["sim_maxrss_mb"], 1),
        "run_dir": str(run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="comma-separated client counts")
    ap.add_argument("--rounds", type=int, default=5, help="FedAvg rounds per phase (original, retrain)")
    ap.add_argument("--records-per-client", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_scale.json"), help="JSON result file")
    ap.add_argument("--keep-runs", default="", help="keep the run directories here (default: a temp dir, removed)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    ap.add_argument("--runs-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.rounds, args.records_per_client, Path(args.runs_dir))))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        runs_dir = Path(args.keep_runs or tmp)
        for n in [int(s) for s in args.sizes.split(",") if s]:
            cmd = [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds),
                   "--records-per-client", str(args.records_per_client), "--runs-dir", str(runs_dir)]
            print(f"clients={n} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"clients={n} failed (exit {proc.returncode})")
            res = json.loads(line.removeprefix("RESULT "))
            results.append(res)
            print(f"  wall {res['wall_s']} s (simulation {res['simulation_s']} s, audit {res['audit_s']} s), "
                  f"start-up {res['startup_s']} s, {res['s_per_round_median']} s/round "
                  f"({res['clients_per_round']} clients), peak RSS server {res['peak_rss_mb_server']} MB, "
                  f"workers {res['peak_rss_mb_workers']} MB, daemons {res['peak_rss_mb_daemons']} MB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "scale", "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
