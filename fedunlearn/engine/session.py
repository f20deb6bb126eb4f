"""The session of one experiment: its run directory prepared (config, environment, partitions, initial model),
and the server side's shared state built from it (``ServerContext``), fresh or restored for ``--resume``.

Below the Flower glue: ``strategies.server_app.make_app(session)`` runs the FL phases for a ``Session``, and the
in-process transport and the A2 replicas use the same functions, so every way of running an experiment prepares
and restores it alike.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

from fedunlearn import interrupt
from fedunlearn.config.load import load_config
from fedunlearn.config.render import to_toml
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.data import save_partitions
from fedunlearn.data.cache import experiment_data
from fedunlearn.errors import ConfigError
from fedunlearn.fl.history import UpdateHistory
from fedunlearn.fl.session import RoundsLog, ServerContext
from fedunlearn.io import atomic_write_json, atomic_write_text
from fedunlearn.ledgers.access import AccessLog, WithdrawalWindow
from fedunlearn.ledgers.costs import CostLedger
from fedunlearn.methods import METHODS
from fedunlearn.models import Weights, build_model, get_weights, load_weights, resolve_device, save_weights, set_weights
from fedunlearn.rundir import INITIAL, RunDir, default_run_dir
from fedunlearn.training import evaluate

Progress = Callable[[str, int, int], None]


@dataclass
class Session:
    """One experiment's FL stage as a ServerApp runs it: the config, its run directory (None: ``flwr run .``
    prepares it once the federation checks pass), the progress display; the failed methods, an error and Ray's
    peak memory come back in it. ``on_finished(run_dir, failed)`` runs after the FL phases when the ServerApp owns
    the whole run (``flwr run .``: the pipeline's audit and report)."""

    cfg: ExperimentConfig | None
    run_dir: Path | None = None
    progress: Progress | None = None
    on_finished: Callable[[Path, dict[str, str]], object] | None = None
    failed: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    memory: dict[str, float] = field(default_factory=dict)   # peak RSS (MB) of the Ray processes on this host
    started: float = field(default_factory=time.perf_counter)  # start-up is measured from here (ledger "startup")
    ended: threading.Event = field(default_factory=threading.Event)  # set when the simulation runtime has returned

    def check_stop(self) -> None:
        """Raise if the ServerApp must stop waiting: a signal asked the run to stop, or the runtime has ended."""
        interrupt.check()
        if self.ended.is_set():
            raise RuntimeEnded()


class RuntimeEnded(BaseException):
    """The runtime ended while the ServerApp waited: it stops too (not an ``Exception``: no method's failure)."""


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
    """``env.json``: versions (from the installed distributions, so nothing is imported for it), seed, device."""
    versions = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "scikit-learn", "flwr", "ray"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
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
        atomic_write_text(RunDir(tmp).config, to_toml(cfg))
        atomic_write_json(RunDir(tmp).env, environment(cfg))
        save_partitions(RunDir(tmp).partitions, parts)
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
        save_weights(RunDir(tmp).model(INITIAL), get_weights(model))
        if run_dir.exists():
            run_dir.rmdir()
        tmp.rename(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """A run's config, validated in full (registries too): for continuing or extending the run."""
    if not RunDir(run_dir).config.is_file():
        raise ConfigError(f"run directory: {run_dir} has no config.toml (not a fedunlearn run)")
    return load_config(RunDir(run_dir).config)


def build_server_context(cfg: ExperimentConfig, run_dir: Path,
                         progress: Progress | None = None) -> tuple[ServerContext, Weights]:
    """The server side's shared state, restored from the run directory when resuming."""
    ds, parts = experiment_data(cfg)
    rd = RunDir(run_dir)
    device = resolve_device(cfg.sim.device)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    x_test, y_test = ds.x_test[parts.test], ds.y_test[parts.test]

    def central_eval(weights: Weights) -> tuple[float, float]:
        return evaluate(set_weights(model, weights), x_test, y_test, device)

    window = WithdrawalWindow()
    needs_history = any(_needs_history(m) for m in cfg.unlearn.methods)
    ctx = ServerContext(
        cfg=cfg, cfg_toml=to_toml(cfg), run_dir=run_dir, window=window,
        access=AccessLog(rd.data_access, window),
        costs=CostLedger.load(rd.ledger), rounds=RoundsLog.load(rd.rounds),
        history=UpdateHistory(rd.history, interval=_history_interval(cfg), keep_updates=needs_history,
                              keep_last_local=set(cfg.withdraw.clients)),
        evaluate=central_eval, on_round=progress)
    return ctx, load_weights(rd.model(INITIAL))


def _needs_history(method: str) -> bool:
    return METHODS.get(method).needs_history


def _history_interval(cfg: ExperimentConfig) -> int:
    """Δt of the stored history: FedEraser's ``interval`` when it is configured, else every 2 rounds."""
    if "federaser" in cfg.unlearn.methods:
        return int(cfg.unlearn.params("federaser").interval)  # type: ignore[attr-defined]
    return 2
