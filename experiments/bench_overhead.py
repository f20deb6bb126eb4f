"""Overhead benchmark (issue 5): the same FedAvg training as a bare PyTorch loop and through fedunlearn.

Three variants, each in a fresh process, on the same data (fedunlearn's seeded synthetic dataset and partitions),
model (MLP 256-256 with the same initial weights), rounds, local epochs, batch size and number of sampled clients:

* ``bare``      — a plain in-process PyTorch FedAvg loop written in this file (no fedunlearn federation, no Flower):
                  original training over all clients, then the retrain over all but the withdrawn client, with a
                  central test evaluation after every round (fedunlearn does that too: rounds.csv).
* ``inprocess`` — ``fedunlearn`` with ``sim.backend = "inprocess"``: our glue (config per message, ledgers,
                  seeded sampling, model rebuilt per message, access log) without Flower or Ray.
* ``ray``       — ``fedunlearn`` on Flower's simulation engine on Ray (the default): 2 client actors on 2 CPUs.

Reported: wall times (process, imports, the FL part, the audit, which the bare loop does not do), seconds per round
(median), and for ``ray`` where the time goes: Ray start-up to the node map, first round (actors load data), rounds,
shutdown; plus a micro-benchmark of one message's serialization. The ratio is FL wall time / bare-loop wall time.

    python experiments/bench_overhead.py                    # -> bench-results/bench_overhead.json
    python experiments/bench_overhead.py --rounds 10 --variants bare,ray --out /tmp/o.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def overrides(a: argparse.Namespace, backend: str) -> list[str]:
    return [
        'name="bench-overhead"', "seed=0",
        'data.dataset="synthetic"', f"data.samples={a.samples}", "data.features=100", "data.informative=20",
        "data.classes=10", "data.class_sep=2.5", "data.flip_y=0.1", f"data.clients={a.clients}", "data.holdout=0.2",
        "model.hidden=[256, 256]",
        f"train.rounds={a.rounds}", f"train.fraction={a.fraction}", f"train.local_epochs={a.local_epochs}",
        "train.lr=0.05", "train.batch_size=32",
        "withdraw.clients=[0]", 'unlearn.methods=["retrain"]', 'audit.attacks=["loss"]',
        f'sim.backend="{backend}"', 'sim.device="cpu"', f"sim.num_cpus={a.ray_num_cpus}",
    ]


def _process_age() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


# ------------------------------------------------------------------------------------------------ the bare loop


def bare(a: argparse.Namespace) -> dict:
    """FedAvg in plain PyTorch: local SGD on each sampled client, weighted average, test evaluation per round."""
    import numpy as np
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from fedunlearn.config.load import load_config
    from fedunlearn.data import load_dataset, make_partitions
    from fedunlearn.models import build_model

    t_import = _process_age()
    torch.set_num_threads(a.threads)
    cfg = load_config(None, overrides(a, "inprocess"))
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, cfg.seed)
    parts = make_partitions(ds, cfg.data, cfg.seed)
    x = torch.as_tensor(ds.x_train, dtype=torch.float32)
    y = torch.as_tensor(ds.y_train, dtype=torch.long)
    x_test = torch.as_tensor(ds.x_test, dtype=torch.float32)
    y_test = torch.as_tensor(ds.y_test, dtype=torch.long)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    t_data = time.perf_counter() - t0
    tc = cfg.train

    def local_train(global_state: dict, pid: int, seed: int) -> tuple[dict, int]:
        model.load_state_dict(global_state)
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr)
        idx = torch.as_tensor(parts.members[pid])
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(tc.local_epochs):
            for b in torch.randperm(len(idx), generator=gen).split(tc.batch_size):
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[idx[b]]), y[idx[b]])
                loss.backward()
                opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, len(idx)

    @torch.no_grad()
    def evaluate(state: dict) -> float:
        model.load_state_dict(state)
        model.eval()
        return float((model(x_test).argmax(1) == y_test).double().mean())

    round_s: list[float] = []
    accuracy = 0.0
    t1 = time.perf_counter()
    for phase, pool in (("original", list(range(a.clients))), ("retrain", list(range(1, a.clients)))):
        state = {k: v.clone() for k, v in initial.items()}
        k = max(1, int(np.floor(a.fraction * len(pool) + 0.5)))
        rng = np.random.default_rng([cfg.seed, len(pool)])
        for r in range(1, a.rounds + 1):
            tr = time.perf_counter()
            chosen = sorted(rng.choice(pool, size=k, replace=False)) if k < len(pool) else pool
            salt = 7919 if phase == "retrain" else 0
            results = [local_train(state, int(p), 1_000_003 * cfg.seed + 1009 * r + int(p) + salt) for p in chosen]
            total = sum(n for _, n in results)
            state = {key: sum(s[key].double() * (n / total) for s, n in results).to(initial[key].dtype)
                     for key in initial}
            accuracy = evaluate(state)
            round_s.append(time.perf_counter() - tr)
    t_fl = time.perf_counter() - t1
    return {"variant": "bare", "torch_threads": a.threads, "import_s": round(t_import, 2),
            "data_s": round(t_data, 2), "fl_s": round(t_fl, 2),
            "s_per_round_median": round(statistics.median(round_s), 4),
            "rounds": len(round_s), "test_accuracy_last": round(accuracy, 4),
            "process_s": round(_process_age(), 2)}


# --------------------------------------------------------------------------------------------------- fedunlearn


def fedunlearn_variant(a: argparse.Namespace, backend: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from fedunlearn import runner, simulation
    from fedunlearn.config.load import load_config
    from strategies import server_app

    t_import = _process_age()
    if backend == "inprocess":
        torch.set_num_threads(a.threads)
    marks: dict[str, float] = {}
    ticks: list[tuple[str, int, float]] = []

    def timed(fn, name):
        def wrapper(*args, **kw):
            marks[f"{name}_start"] = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                marks[f"{name}_end"] = time.perf_counter()
        return wrapper

    simulation.run_flower = timed(simulation.run_flower, "sim")
    runner.run_phases_inprocess = timed(runner.run_phases_inprocess, "sim")
    runner.finish_run = timed(runner.finish_run, "audit")
    runner.prepare_run = timed(runner.prepare_run, "prepare")
    server_app.map_partitions = timed(server_app.map_partitions, "map")
    cfg = load_config(None, overrides(a, backend))
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        t0 = time.perf_counter()
        res = runner.run(cfg, out=Path(tmp) / "run",
                         progress=lambda phase, rnd, total: ticks.append((phase, rnd, time.perf_counter())))
        wall = time.perf_counter() - t0
        env = json.loads((res.run_dir / "env.json").read_text())
        import csv

        with (res.run_dir / "rounds.csv").open() as fh:
            acc = float(list(csv.DictReader(fh))[-1]["test_accuracy"])
    gaps = [b[2] - a_[2] for a_, b in itertools.pairwise(ticks) if a_[0] == b[0] and b[1] == a_[1] + 1]
    per_round = statistics.median(gaps)
    out = {"variant": backend, "import_s": round(t_import, 2), "run_s": round(wall, 2),
           "prepare_s": round(marks["prepare_end"] - marks["prepare_start"], 2),
           "fl_s": round(marks["sim_end"] - marks["sim_start"], 2),
           "audit_s": round(marks["audit_end"] - marks["audit_start"], 2),
           "s_per_round_median": round(per_round, 4), "rounds": len(ticks), "test_accuracy_last": acc,
           "process_s": round(_process_age(), 2),
           **{k: v for k, v in env.items() if k.startswith("peak_rss_mb")}}
    if backend == "ray":
        first = ticks[0][2]
        out |= {"ray_num_cpus_per_client": a.ray_num_cpus,
                "startup_to_node_map_s": round(marks["map_end"] - marks["sim_start"], 2),
                "node_map_query_s": round(marks["map_end"] - marks["map_start"], 2),
                "first_round_s": round(first - marks["map_end"], 2),
                "rounds_s": round(ticks[-1][2] - first, 2),
                "shutdown_s": round(marks["sim_end"] - ticks[-1][2], 2)}
    else:
        out["torch_threads"] = a.threads
    return out


def serialization(a: argparse.Namespace) -> dict:
    """One message's conversions for this model: weights -> Flower ArrayRecord -> pickle (to the Ray actor) and back."""
    import pickle

    sys.path.insert(0, str(ROOT))
    from clients.records import from_arrays, request_content, request_parts
    from fedunlearn.config.load import load_config, to_toml
    from fedunlearn.data import load_dataset
    from fedunlearn.models import build_model, get_weights, weights_nbytes

    cfg = load_config(None, overrides(a, "ray"))
    ds = load_dataset(cfg.data, cfg.seed)
    w = get_weights(build_model(cfg.model, ds.input_shape, ds.num_classes, seed=0))
    toml = to_toml(cfg)
    n = 50
    t = time.perf_counter()
    for _ in range(n):
        content = request_content(w, {"experiment": toml, "phase": "original", "step": "train", "round": 1})
        blob = pickle.dumps(content)
        request_parts(pickle.loads(blob))
        from_arrays(content["arrays"])
    per = (time.perf_counter() - t) / n
    return {"model_bytes": weights_nbytes(w), "pickled_message_bytes": len(blob), "config_toml_bytes": len(toml),
            "ms_per_message_roundtrip": round(1000 * per, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=30, help="per phase (original and retrain)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the bare and in-process variants")
    ap.add_argument("--ray-num-cpus", type=float, default=1.0, help="sim.num_cpus (CPUs per client actor)")
    ap.add_argument("--variants", default="bare,inprocess,ray")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_overhead.json"))
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if a.one:
        res = bare(a) if a.one == "bare" else serialization(a) if a.one == "serialization" else \
            fedunlearn_variant(a, a.one)
        print("RESULT " + json.dumps(res))
        return

    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("one", "out", "variants")]
    results: dict[str, dict] = {}
    for variant in [v for v in a.variants.split(",") if v] + ["serialization"]:
        print(f"{variant} ...", flush=True)
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, f"--one={variant}", *passthrough], capture_output=True,
                              text=True, cwd=ROOT, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{variant} failed (exit {proc.returncode})")
        results[variant] = json.loads(line.removeprefix("RESULT ")) | {"load_avg_1min_before": round(load, 2)}
        print("  " + json.dumps(results[variant]), flush=True)
    summary: dict[str, float] = {}
    if "bare" in results:
        base = results["bare"]["fl_s"]
        for v in ("inprocess", "ray"):
            if v in results:
                summary[f"{v}_fl_over_bare"] = round(results[v]["fl_s"] / base, 3)
                summary[f"{v}_s_per_round_over_bare"] = round(results[v]["s_per_round_median"]
                                                              / results["bare"]["s_per_round_median"], 3)
                summary[f"{v}_process_over_bare"] = round(results[v]["process_s"] / results["bare"]["process_s"], 3)
    print(json.dumps(summary, indent=1))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "overhead", "settings": {k: v for k, v in vars(a).items() if k != "one"},
                               "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
                               "summary": summary, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
