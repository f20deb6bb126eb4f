"""One experiment end to end: prepare the run directory, run the FL phases (Flower on Ray, or in-process), audit,
report. ``fedunlearn.run(config)`` and ``fedunlearn run CONFIG`` both land here.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedunlearn.access import AccessLog, WithdrawalWindow
from fedunlearn.config import ExperimentConfig, load_config, to_toml
from fedunlearn.costs import CostLedger
from fedunlearn.data import save_partitions
from fedunlearn.data.cache import experiment_data
from fedunlearn.errors import ConfigError
from fedunlearn.federation import RoundsLog, ServerContext
from fedunlearn.history import UpdateHistory
from fedunlearn.io import atomic_write_json, atomic_write_text
from fedunlearn.models import Weights, build_model, get_weights, load_weights, resolve_device, save_weights
from fedunlearn.rundir import PHASES_FILE, default_run_dir
from fedunlearn.training import evaluate

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Resolve data paths now: Ray workers run in other directories."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.data_dir = str(Path(cfg.data.data_dir).expanduser().resolve())
    if cfg.data.path:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(cfg: ExperimentConfig) -> dict:
    import numpy
    import sklearn
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                "scikit-learn": sklearn.__version__}
    try:
        import flwr
        import ray

        versions |= {"flwr": flwr.__version__, "ray": ray.__version__}
    except ImportError:
        pass
    return {"versions": versions, "seed": cfg.seed, "device": str(resolve_device(cfg.sim.device)),
            "backend": cfg.sim.backend, "git_commit": _git_commit(), "platform": platform.platform(),
            "started": datetime.now().isoformat(timespec="seconds")}


def prepare_run(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Validate the data (before anything is written), then create the run directory with ``config.toml``,
    ``env.json``, ``partitions.npz`` and ``models/initial.pt``."""
    cfg = _absolute_paths(cfg)
    ds, parts = experiment_data(cfg)  # raises DataError/ConfigError before any directory exists
    bad = [c for c in cfg.withdraw.classes if c >= ds.num_classes]
    if bad:
        raise ConfigError(f"withdraw.classes: {bad} out of range; allowed: 0..{ds.num_classes - 1} "
                          f"({cfg.data.dataset})")
    run_dir = Path(out) if out else default_run_dir(cfg.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"--out: {run_dir} exists and is not empty; use --resume {run_dir} to continue it")
    tmp = run_dir.with_name(f".{run_dir.name}.preparing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        atomic_write_text(tmp / "config.toml", to_toml(cfg))
        atomic_write_json(tmp / "env.json", environment(cfg))
        save_partitions(tmp / "partitions.npz", parts)
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
        save_weights(tmp / "models" / "initial.pt", get_weights(model))
        if run_dir.exists():
            run_dir.rmdir()
        tmp.rename(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def load_run_config(run_dir: Path) -> ExperimentConfig:
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"run directory: {run_dir} has no config.toml (not a fedunlearn run)")
    return load_config(run_dir / "config.toml")


def build_server_context(cfg: ExperimentConfig, run_dir: Path,
                         progress: Progress | None = None) -> tuple[ServerContext, Weights]:
    """The server side's shared state, restored from the run directory when resuming."""
    ds, parts = experiment_data(cfg)
    device = resolve_device(cfg.sim.device)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    x_test, y_test = ds.x_test[parts.test], ds.y_test[parts.test]

    def central_eval(weights: Weights) -> tuple[float, float]:
        from fedunlearn.models import set_weights

        return evaluate(set_weights(model, weights), x_test, y_test, device)

    window = WithdrawalWindow()
    needs_history = any(_needs_history(m) for m in cfg.unlearn.methods)
    ctx = ServerContext(
        cfg=cfg, cfg_toml=to_toml(cfg), run_dir=run_dir, window=window,
        access=AccessLog(run_dir / "data_access.csv", window),
        costs=CostLedger.load(run_dir / "ledger.csv"), rounds=RoundsLog.load(run_dir / "rounds.csv"),
        history=UpdateHistory(run_dir / "history", interval=_history_interval(cfg), keep_updates=needs_history,
                              keep_last_local=set(cfg.withdraw.clients)),
        evaluate=central_eval, on_round=progress)
    return ctx, load_weights(run_dir / "models" / "initial.pt")


def _needs_history(method: str) -> bool:
    from fedunlearn.methods import METHODS

    return METHODS.get(method).needs_history


def _history_interval(cfg: ExperimentConfig) -> int:
    """Δt of the stored history: FedEraser's ``interval`` when it is configured, else every 2 rounds."""
    if "federaser" in cfg.unlearn.methods:
        return int(cfg.unlearn.params("federaser").interval)  # type: ignore[attr-defined]
    return 2


def run_phases_inprocess(cfg: ExperimentConfig, run_dir: Path, progress: Progress | None = None) -> dict[str, str]:
    from fedunlearn.experiment import Phases
    from fedunlearn.inprocess import InProcessFederation

    ctx, initial = build_server_context(cfg, run_dir, progress)
    return Phases(InProcessFederation(ctx, range(cfg.data.clients)), initial).run()


def finish_run(run_dir: Path, failed: dict[str, str] | None = None) -> dict:
    """Audit every saved model and write the report (also what ``fedunlearn report`` re-runs)."""
    from fedunlearn.stages.audit import run_audit
    from fedunlearn.stages.report import write_report

    seeds = load_run_config(run_dir).audit.seeds
    if seeds:  # the A2 replicas are a pipeline step of their own, before the audit (which only reads)
        from fedunlearn.seeds import train_seed_runs

        train_seed_runs(run_dir, seeds)
    summary = run_audit(run_dir, failed=failed)
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
        from fedunlearn.simulation import run_flower

        try:
            job = run_flower(cfg, run_dir, progress)
        except ConfigError:  # Ray's address or client resources: bad input leaves no new run directory behind
            if resume is None and not (run_dir / PHASES_FILE).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        failed, memory = job.failed, job.memory
    summary = finish_run(run_dir, failed)
    _record_peak_memory(run_dir, memory)
    return RunResult(run_dir, summary, failed, time.perf_counter() - t0)


def _record_peak_memory(run_dir: Path, ray_memory: dict[str, float] | None = None) -> None:
    """Peak resident memory (MB) in ``env.json``: this (server) process; under Ray also the client workers and Ray's
    daemons on this host (sampled by ``fedunlearn.simulation.RayMemorySampler``); ``total`` is their sum (an upper
    bound of the simultaneous peak)."""
    import resource

    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text())
    mem = {"peak_rss_mb_server": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "peak_rss_mb_workers": 0.0, "peak_rss_mb_daemons": 0.0}
    mem.update(ray_memory or {})
    mem["peak_rss_mb_total"] = round(sum(mem.values()), 1)
    env.update(mem)
    env["finished"] = datetime.now().isoformat(timespec="seconds")
    atomic_write_json(env_path, env)
