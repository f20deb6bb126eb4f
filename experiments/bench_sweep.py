"""Sweep throughput: the same sweep with ``--parallel 1`` and ``--parallel 2`` (points per minute), JSON out.

Each run is a fresh ``fedunlearn sweep`` (its own local Ray head, started and stopped inside the timed command) in a
new directory; the runs alternate between the parallel settings. Beside the throughput it checks that every point's
``per_client.csv`` is the same whatever ran beside it, and records the load average (the machine may be shared).

    python experiments/bench_sweep.py                                   # experiments/sweep_bench.toml, 1 vs 2
    python experiments/bench_sweep.py --sweep experiments/sweep_frontier.toml --parallel 1 2 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fedunlearn.io import atomic_write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def one_sweep(sweep: Path, parallel: int, out: Path) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "fedunlearn.cli", "sweep", str(sweep), "--out", str(out),
                          "--parallel", str(parallel)], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"sweep --parallel {parallel} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    points = json.loads((out / "points.json").read_text())
    return {"parallel": parallel, "points": len(points), "wall_s": wall, "points_per_minute": 60 * len(points) / wall,
            "mean_point_wall_s": sum(p["wall_s"] for p in points) / len(points),
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "out": str(out)}


def same_results(a: Path, b: Path) -> bool:
    names = [p["name"] for p in json.loads((a / "points.json").read_text())]
    return all((a / n / "per_client.csv").read_text() == (b / n / "per_client.csv").read_text() for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=HERE / "sweep_bench.toml")
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="runs per parallel setting (alternating)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_sweep.json")
    args = ap.parse_args()
    base = Path("bench-results") / f"bench_sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    result: dict = {"sweep": str(args.sweep), "cpus": len(os.sched_getaffinity(0)), "runs": []}
    for i in range(args.repeat):
        for p in args.parallel:
            run = one_sweep(args.sweep, p, base / f"parallel{p}-{i}")
            result["runs"].append(run)
            print(f"--parallel {p}: {run['points']} points in {run['wall_s']:.1f} s = "
                  f"{run['points_per_minute']:.2f} points/min", flush=True)
            atomic_write_json(args.out, result)   # partial results survive an interrupt
    by = {p: [r for r in result["runs"] if r["parallel"] == p] for p in args.parallel}
    result["summary"] = {str(p): {"points_per_minute": sum(r["points_per_minute"] for r in rs) / len(rs),
                                  "wall_s": sum(r["wall_s"] for r in rs) / len(rs)} for p, rs in by.items()}
    first = by[args.parallel[0]][0]["out"]
    result["identical_per_client_csv"] = all(same_results(Path(first), Path(r["out"])) for r in result["runs"])
    if len(args.parallel) > 1:
        lo, hi = (result["summary"][str(p)]["points_per_minute"] for p in (args.parallel[0], args.parallel[-1]))
        result["speedup"] = hi / lo
    atomic_write_json(args.out, result)
    print(json.dumps(result["summary"]), f"identical results: {result['identical_per_client_csv']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
