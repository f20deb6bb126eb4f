"""One experiment end to end, in three steps: prepare the run directory (``engine.session.prepare_run``), the FL
stage (Flower on Ray through ``simulation.run_flower``, or in-process), then ``finish_run`` (A2 replicas, audit,
report). ``fedunlearn.run(config)``, ``fedunlearn run CONFIG`` and ``flwr run .`` (``fedunlearn.flwr_app``) all run
these same steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.engine.inprocess import run_phases_inprocess
from fedunlearn.engine.replicas import train_seed_runs
from fedunlearn.engine.session import Progress, load_run_config, prepare_run
from fedunlearn.errors import ConfigError
from fedunlearn.io import atomic_write_json
from fedunlearn.rundir import RunDir
from fedunlearn.simulation import run_flower
from fedunlearn.stages.audit import run_audit
from fedunlearn.stages.report import write_report

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def finish_run(run_dir: Path, failed: dict[str, str] | None = None, progress: Progress | None = None) -> dict:
    """After the FL stage: the A2 seed replicas (a step of their own: the audit only reads), the audit of every
    saved model, the report. ``flwr run .`` runs this too, after its ServerApp's FL phases."""
    seeds = load_run_config(run_dir).audit.seeds
    if seeds:
        train_seed_runs(run_dir, seeds)
    summary = run_audit(run_dir, failed=failed, progress=progress)
    write_report(run_dir)
    return summary


def run(cfg: ExperimentConfig, out: str | Path | None = None, resume: str | Path | None = None,
        progress: Progress | None = None) -> RunResult:
    """Run one experiment: the library's one obvious entry point (``fedunlearn.run``)."""
    t0 = time.perf_counter()
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_run_config(run_dir)
        log.info("resuming %s", run_dir)
    else:
        run_dir = prepare_run(cfg, out)
        cfg = load_run_config(run_dir)
    memory: dict[str, float] = {}
    if cfg.sim.backend == "inprocess":
        failed = run_phases_inprocess(cfg, run_dir, progress)
    else:
        try:
            job = run_flower(cfg, run_dir, progress)
        except ConfigError:  # Ray's address or client resources: bad input leaves no new run directory behind
            if resume is None and not RunDir(run_dir).phases.exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        failed, memory = job.failed, job.memory
    summary = finish_run(run_dir, failed, progress)
    _record_peak_memory(run_dir, memory)
    return RunResult(run_dir, summary, failed, time.perf_counter() - t0)


def _record_peak_memory(run_dir: Path, ray_memory: dict[str, float] | None = None) -> None:
    """Peak resident memory (MB) in ``env.json``: this (server) process; under Ray also the client workers and Ray's
    daemons on this host (sampled by ``fedunlearn.simulation.RayMemorySampler``); ``total`` is their sum (an upper
    bound of the simultaneous peak)."""
    import resource

    env_path = RunDir(run_dir).env
    env = json.loads(env_path.read_text())
    mem = {"peak_rss_mb_server": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "peak_rss_mb_workers": 0.0, "peak_rss_mb_daemons": 0.0}
    mem.update(ray_memory or {})
    mem["peak_rss_mb_total"] = round(sum(mem.values()), 1)
    env.update(mem)
    env["finished"] = datetime.now().isoformat(timespec="seconds")
    atomic_write_json(env_path, env)
