"""Sweeps end to end (slow): two points side by side on one loopback Ray head give the same results as each point
run alone, and a sweep killed with SIGKILL continues with ``--resume`` without redoing its finished points."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from fedunlearn.sweep.cluster import LOOPBACK_ENV, LocalRayHead
from tests.conftest import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
ENV = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _sweep_file(tmp_path: Path, overrides: list[str], axes: str) -> Path:
    """The tiny test experiment as the base (TINY's key=value lines are TOML dotted keys), ``overrides`` as the
    sweep's --set list."""
    (tmp_path / "base.toml").write_text("\n".join(ln.replace("=", " = ", 1) for ln in TINY) + "\n")
    path = tmp_path / "sweep.toml"
    path.write_text(f'[sweep]\nbase = "base.toml"\nset = {json.dumps(overrides)}\n[axes]\n{axes}\n')
    return path


def _cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedunlearn.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _no_wall(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_concurrent_points_on_one_head_equal_the_points_run_alone(tmp_path: Path) -> None:
    spec = _sweep_file(tmp_path, ['sim.backend="ray"', 'unlearn.methods=["retrain","finetune","pga"]'],
                       "seed = [0, 1]")
    out = tmp_path / "sweep"
    with LocalRayHead(num_cpus=2) as head:
        res = _cli("sweep", str(spec), "--out", str(out), "--parallel", "2", "--ray-address", head.address)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        points = json.loads((out / "points.json").read_text())
        assert [p["status"] for p in points] == ["finished", "finished"]
        a, b = ([datetime.fromisoformat(p[k]) for k in ("started", "ended")] for p in points)
        assert a[0] < b[1] and b[0] < a[1], f"the two points did not run side by side: {points}"
        for p in points:  # each asked for 2 CPUs per actor so that both pools fit on the 2-CPU head
            assert 'num_cpus = 2.0' in (out / p["name"] / "config.toml").read_text()
            alone = tmp_path / "alone" / p["name"]
            res = _cli("run", str(out / "configs" / f"{p['name']}.toml"), "--out", str(alone), "--ray-address",
                       head.address)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            assert 'num_cpus = 1.0' in (alone / "config.toml").read_text()
            for name in ("per_client.csv", "rounds.csv"):  # rounds.csv's wall_s is a timing, not a result
                got, want = (_no_wall(_rows(d / name)) for d in (out / p["name"], alone))
                assert got == want, f"{p['name']}: {name} differs"
        assert head.alive()
    summary = _rows(out / "sweep_summary.csv")
    assert {r["model"] for r in summary} == {"original", "finetune", "pga", "retrain"}
    assert all(r["replicates"] == "2" for r in summary)
    assert len(_rows(out / "sweep.csv")) == 2 * 4 * 4       # points x models x clients x (loss)
    assert (out / "plots" / "frontier_loss.png").is_file() and (out / "sweep.md").is_file()


@pytest.mark.full
def test_killed_sweep_resumes_without_redoing_finished_points(tmp_path: Path) -> None:
    spec = _sweep_file(tmp_path, ['unlearn.methods=["retrain","finetune"]', "train.rounds=30"], "seed = [0, 1, 2]")
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "fedunlearn.cli", "sweep", str(spec), "--out", str(out)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:  # kill it once the first point is finished and the second one runs
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
            try:
                status = [p["status"] for p in json.loads((out / "points.json").read_text())]
            except (OSError, json.JSONDecodeError):
                status = []
            if status[:2] == ["finished", "running"]:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)   # the sweep alone: its point driver is left behind, as after a crash
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first = out / "seed=0"
    stamp = (first / "summary.json").stat().st_mtime_ns
    res = _cli("sweep", str(spec), "--out", str(out), "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "left running by an earlier sweep" in res.stdout     # the orphaned driver was stopped first
    points = json.loads((out / "points.json").read_text())
    assert [(p["action"], p["status"]) for p in points][0] == ("skip", "finished")
    assert all(p["status"] == "finished" for p in points)
    assert (first / "summary.json").stat().st_mtime_ns == stamp  # not redone
    assert (out / "logs" / "seed=0.log").read_text().count("fedunlearn.cli run") == 1
    assert len({r["point"] for r in _rows(out / "sweep.csv")}) == 3
    assert not (out / "sweep.lock.json").exists()


@pytest.mark.full
def test_sweep_restarts_its_dead_ray_head_and_resumes_the_running_points(tmp_path: Path) -> None:
    """The sweep's own head (the default, no --ray-address) loses its raylet mid-run, as when the node is marked
    dead: the running points are stopped, a new head starts, and they resume on it."""
    import psutil

    spec = _sweep_file(tmp_path, ['sim.backend="ray"', 'unlearn.methods=["retrain","finetune"]', "train.rounds=8"],
                       "seed = [0, 1]")
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "fedunlearn.cli", "sweep", str(spec), "--out", str(out),
                             "--parallel", "2"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        raylet = None
        while raylet is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before its head was killed"
            try:
                lock = json.loads((out / "sweep.lock.json").read_text())
                status = [p["status"] for p in json.loads((out / "points.json").read_text())]
            except (OSError, json.JSONDecodeError):
                lock, status = {}, []
            if "ray-head" in lock.get("groups", {}) and status == ["running", "running"]:
                kids = psutil.Process(lock["groups"]["ray-head"]["pid"]).children(recursive=True)
                raylet = next((k for k in kids if k.name() == "raylet"), None)
            time.sleep(0.5)
        raylet.kill()
        stdout, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:]
    assert "the Ray head died (its logs:" in stdout and "started a new one" in stdout
    assert (out / "logs" / "ray-head-died-1" / "head.log").is_file()
    assert all(p["status"] == "finished" for p in json.loads((out / "points.json").read_text()))
    assert not (out / "sweep.lock.json").exists()
