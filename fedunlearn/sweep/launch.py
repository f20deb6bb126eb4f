"""Running a sweep's points: one ``fedunlearn run`` driver process per point, side by side on one Ray cluster.

Each point stays one ordinary run (one Flower simulation, one run directory); its driver joins the sweep's cluster
(``sim.ray_address = "auto"`` with ``RAY_ADDRESS``) and Ray schedules every point's client actors on it. At most
``--parallel`` drivers run at once. Flower sizes a simulation's actor pool from the cluster's *total* CPUs, so the
sweep multiplies each new point's ``sim.num_cpus`` (and ``sim.num_gpus``) by the number of points that run side by
side: their pools then fit on the cluster together instead of queueing behind each other.

A point is *finished* when its FL phases carry the ``finished`` marker and its summary and report exist; a point
directory with a config but no results is resumed with ``fedunlearn run --resume``; finished points are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedunlearn.config.load import load_config
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.rundir import fl_finished
from fedunlearn.sweep.cluster import LOOPBACK_ENV, LocalRayHead, stop_group
from fedunlearn.sweep.lock import HEAD, SweepLock
from fedunlearn.sweep.spec import Point

#: the parts of a point's config that say how it ran, not what it is (they may differ between invocations)
RUNTIME_KEYS = ("sim", "data.data_dir", "data.path")
INTERRUPT_GRACE_S = 20.0


def point_state(run_dir: Path) -> str:
    """``new`` (no directory, or an empty one), ``finished`` or ``partial`` (a run that can be resumed)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"sweep point: {run_dir} is not a fedunlearn run directory (no config.toml); allowed: a "
                          "run directory of this sweep, or nothing (remove it)")
    if fl_finished(run_dir) and (run_dir / "summary.json").is_file() and (run_dir / "report.md").is_file():
        return "finished"
    return "partial"


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out |= _leaves(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): data}


def check_same_experiment(point: Point, run_dir: Path) -> None:
    """A point directory left by an earlier invocation must hold the experiment the sweep describes now."""
    have = _leaves(load_config(run_dir / "config.toml").model_dump(mode="json"))
    want = _leaves(point.cfg.model_dump(mode="json"))
    for key in sorted(set(have) | set(want)):
        if key.startswith(RUNTIME_KEYS):
            continue
        if have.get(key) != want.get(key):
            raise ConfigError(f"sweep point {point.name}: its run directory has {key} = {have.get(key)!r}, the sweep "
                              f"now gives {want.get(key)!r}; allowed: the same experiment (remove {run_dir} to "
                              "redo it, or restore the sweep file)")


@dataclass
class PointRun:
    point: Point
    run_dir: Path
    action: str                      # run | resume | skip
    status: str = "pending"          # pending | running | finished | failed | cancelled
    started: str = ""
    ended: str = ""
    wall_s: float = 0.0
    returncode: int | None = None
    error: str = ""

    def record(self) -> dict:
        return {"name": self.point.name, "settings": self.point.columns(), "action": self.action,
                "status": self.status, "started": self.started, "ended": self.ended, "wall_s": round(self.wall_s, 2),
                "returncode": self.returncode, "error": self.error, "run_dir": self.run_dir.name}


def plan(points: list[Point], sweep_dir: Path) -> list[PointRun]:
    """What each point needs: skip (finished), resume (a partial run) or run (nothing there yet)."""
    out = []
    for p in points:
        d = sweep_dir / p.name
        state = point_state(d)
        if state != "new":
            check_same_experiment(p, d)
        out.append(PointRun(p, d, {"new": "run", "partial": "resume", "finished": "skip"}[state],
                            "finished" if state == "finished" else "pending"))
    return out


def driver_command(pr: PointRun, config_path: Path, scale: int) -> list[str]:
    """The point's driver: ``fedunlearn run`` on the point's config (or ``--resume`` on its directory)."""
    cli = [sys.executable, "-m", "fedunlearn.cli", "run"]
    if pr.action == "resume":
        return cli + ["--resume", str(pr.run_dir)]
    cmd = cli + [str(config_path), "--out", str(pr.run_dir)]
    if pr.point.cfg.sim.backend == "ray":
        sim = pr.point.cfg.sim
        cmd += ["--ray-address", "auto", "--set", f"sim.num_cpus={sim.num_cpus * scale:g}"]
        if sim.num_gpus > 0:
            cmd += ["--set", f"sim.num_gpus={sim.num_gpus * scale:g}"]
    return cmd


def driver_env(ray_address: str) -> dict[str, str]:
    """The drivers' environment: this checkout first on PYTHONPATH (the drivers and their Ray workers import the
    same code), the cluster's address, and loopback-only Ray for a 127.0.0.1 head."""
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the fedunlearn package
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0")}
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if ray_address and ray_address != "auto":
        env["RAY_ADDRESS"] = ray_address
        if ray_address.split(":")[0] in ("127.0.0.1", "localhost"):
            env.update(LOOPBACK_ENV)
    return env


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith(("error:", "Error", "Traceback")) or "Error:" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "")[:300]


class PointPool:
    """Runs the planned points, at most ``parallel`` at once; ``on_change`` sees every status change, ``say`` gets
    one line per event (a retry, a restarted head).

    A point whose driver fails (any exit code but 2, a config or data error) is resumed up to ``retries`` more times.
    When the sweep owns the head (``head``) and it dies (its raylet or GCS gone), the running drivers are stopped,
    the head is started again and their points resume on it (at most ``MAX_HEAD_RESTARTS`` times)."""

    MAX_HEAD_RESTARTS = 3

    def __init__(self, runs: list[PointRun], sweep_dir: Path, parallel: int, scale: int, ray_address: str,
                 lock: SweepLock, on_change: Callable[[PointRun], None], head: LocalRayHead | None = None,
                 retries: int = 1, say: Callable[[str], None] = print) -> None:
        self.runs, self.sweep_dir, self.parallel, self.scale = runs, sweep_dir, parallel, scale
        self.env = driver_env(ray_address)
        self.lock, self.on_change, self.head, self.retries, self.say = lock, on_change, head, retries, say
        self.stop = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.attempts: dict[str, int] = {}
        self._mutex = threading.Lock()

    def _drive(self, pr: PointRun) -> PointRun:
        pr.returncode = None  # None = not launched in this attempt
        state = point_state(pr.run_dir)  # decided at launch: a retry resumes what the last attempt left
        if state == "finished" or self.stop.is_set():
            pr.status = "finished" if state == "finished" else "cancelled"
            return pr
        pr.action = "resume" if state == "partial" else "run"
        self.attempts[pr.point.name] = self.attempts.get(pr.point.name, 0) + 1
        log_path = self.sweep_dir / "logs" / f"{pr.point.name}.log"
        log_path.parent.mkdir(exist_ok=True)
        cmd = driver_command(pr, self.sweep_dir / "configs" / f"{pr.point.name}.toml", self.scale)
        t0 = time.monotonic()
        with log_path.open("a") as log:
            log.write(f"# {_now()} {' '.join(cmd)}\n")
            log.flush()
            with self._mutex:
                if self.stop.is_set():
                    pr.status = "cancelled"
                    return pr
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)  # its own group: we stop it, not the terminal
                self.procs[pr.point.name] = proc
        self.lock.add(pr.point.name, proc.pid)
        pr.status, pr.started, pr.error = "running", _now(), ""
        self.on_change(pr)
        rc = proc.wait()
        self.lock.remove(pr.point.name)
        with self._mutex:
            self.procs.pop(pr.point.name, None)
        pr.wall_s, pr.ended, pr.returncode = time.monotonic() - t0, _now(), rc
        if rc == 0 and point_state(pr.run_dir) == "finished":
            pr.status = "finished"
        else:
            pr.status = "cancelled" if self.stop.is_set() else "failed"
            pr.error = _log_tail(log_path) or f"exit code {rc}"
        self.on_change(pr)
        return pr

    def _retry(self, pr: PointRun) -> bool:
        return pr.status == "failed" and pr.returncode != 2 and self.attempts.get(pr.point.name, 0) <= self.retries

    def run(self, tick: Callable[[], None]) -> None:
        """Run every point that is not skipped; ``tick`` is called about twice a second (progress display).
        An interrupt (Ctrl-C, SIGTERM) stops the running drivers (SIGINT, then their groups) and re-raises."""
        queue = deque(r for r in self.runs if r.action != "skip")
        running: dict[Future, PointRun] = {}
        restarts = 0
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="sweep-point")
        try:
            while queue or running:
                while queue and len(running) < self.parallel:
                    pr = queue.popleft()
                    running[pool.submit(self._drive, pr)] = pr
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    pr = running.pop(f)
                    f.result()  # a bug in the launcher itself surfaces here
                    if self._retry(pr):
                        self.say(f"{pr.point.name}: retrying (attempt {self.attempts[pr.point.name] + 1})")
                        pr.status = "pending"
                        queue.append(pr)
                if self.head is not None and running and not self.head.healthy():
                    restarts += 1
                    if restarts > self.MAX_HEAD_RESTARTS:
                        raise FedUnlearnError(f"the sweep's Ray head died {restarts} times; continue with --resume")
                    victims = self._stop_running(running)
                    saved = self.head.save_logs(self.sweep_dir / "logs" / f"ray-head-died-{restarts}")
                    self._restart_head()
                    self.say(f"the Ray head died (its logs: {saved}); started a new one at {self.head.address}, "
                             "resuming " + ", ".join(v.point.name for v in victims))
                    for v in reversed(victims):
                        if v.returncode is not None:  # it was launched: the cluster failed, not the point
                            self.attempts[v.point.name] -= 1
                        v.status = "pending"
                        queue.appendleft(v)
                tick()
        except BaseException:
            self.interrupt()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stop_running(self, running: dict[Future, PointRun]) -> list[PointRun]:
        self.interrupt()
        wait(list(running))
        victims = [v for v in running.values() if v.status != "finished"]  # one may have just finished
        running.clear()
        self.stop.clear()
        return victims

    def _restart_head(self) -> None:
        assert self.head is not None
        self.lock.remove(HEAD)
        self.head.stop()
        self.env = driver_env(self.head.start())
        self.lock.add(HEAD, self.head.proc.pid, self.head.temp_dir)  # type: ignore[union-attr]

    def interrupt(self) -> None:
        """Stop every running driver: SIGINT first (it exits as ``fedunlearn run`` does on Ctrl-C), then the group."""
        with self._mutex:
            self.stop.set()
            procs = list(self.procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            stop_group(p.pid, grace=5.0)
