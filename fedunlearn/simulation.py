"""The only fedunlearn module that starts Flower: wraps ``flwr.simulation.run_simulation`` on the Ray backend.

All FL phases run inside one simulation (one Ray start). The ServerApp runs as a thread of this process, so the
prepared run is handed to it through ``take_job`` and errors come back the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedunlearn.config import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass
class SimulationJob:
    cfg: ExperimentConfig
    run_dir: Path
    progress: Callable[[str, int, int], None] | None = None
    failed: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None


_pending: list[SimulationJob] = []


def take_job() -> SimulationJob | None:
    """Called by the ServerApp: the run prepared by ``run_flower`` (None under ``flwr run .``)."""
    return _pending.pop() if _pending else None


def _drop_deprecation(record: logging.LogRecord) -> bool:
    """``run_simulation`` warns that it is deprecated in favour of ``flwr run``; we support both on purpose."""
    return "DEPRECATED FEATURE" not in record.getMessage()


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.sim.ray_address:
        init_args["address"] = cfg.sim.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    return {"client_resources": {"num_cpus": cfg.sim.num_cpus, "num_gpus": cfg.sim.num_gpus},
            "init_args": init_args}


def run_flower(cfg: ExperimentConfig, run_dir: Path,
               progress: Callable[[str, int, int], None] | None = None) -> SimulationJob:
    """Run the experiment's FL phases through Flower's simulation engine on Ray; returns the finished job."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from strategies.server_app import app as server_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    flwr_log.addFilter(_drop_deprecation)
    job = SimulationJob(cfg, run_dir, progress)
    _pending.clear()
    _pending.append(job)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.data.clients,
                       backend_config=backend_config(cfg), verbose_logging=False)
    finally:
        _pending.clear()
    if job.error is not None:
        raise job.error
    if not (run_dir / "models" / "retrain.pt").exists():
        from fedunlearn.errors import FedUnlearnError

        raise FedUnlearnError("the Flower simulation ended before the experiment finished (see the log above)")
    return job
