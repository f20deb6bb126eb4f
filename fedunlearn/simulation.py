"""The only fedunlearn module that starts Flower: wraps ``flwr.simulation.run_simulation`` on the Ray backend.

All FL phases run inside one simulation (one Ray start). The ServerApp runs as a thread of this process: it is built
for the prepared run's session (``strategies.server_app.make_app(session)``), and the failed methods or an error
come back in the session.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.engine.session import Session
from fedunlearn.errors import FedUnlearnError
from fedunlearn.rundir import fl_finished

log = logging.getLogger(__name__)


def _drop_deprecation(record: logging.LogRecord) -> bool:
    """``run_simulation`` warns that it is deprecated in favour of ``flwr run``; we support both on purpose."""
    return "DEPRECATED FEATURE" not in record.getMessage()


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flower's Ray backend settings: client resources, and ``ray.init`` arguments (start Ray, or attach to a cluster).

    ``sim.ray_address = ""`` always starts a private local Ray (``address="local"``), so that a cluster some other
    process started on this host (recorded in /tmp/ray/ray_current_cluster) is never joined by accident;
    ``"auto"`` or ``host:port`` attaches to a running cluster, whose nodes bring their own CPUs and GPUs.
    """
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.sim.ray_address:
        init_args["address"] = cfg.sim.ray_address
    else:
        init_args["address"] = "local"
        init_args["num_cpus"] = os.cpu_count() or 1
    if cfg.sim.device == "cuda" and cfg.sim.num_gpus == 0:
        log.warning("sim.device = 'cuda' with sim.num_gpus = 0: Ray does not account for the clients' GPU use; "
                    "set sim.num_gpus (e.g. 0.25: four clients share a GPU)")
    return {"client_resources": {"num_cpus": cfg.sim.num_cpus, "num_gpus": cfg.sim.num_gpus},
            "init_args": init_args}


class RayMemorySampler:
    """Peak resident memory of this host's Ray processes while a simulation runs (sampled every ``interval`` s).

    The processes are found through the raylet of the cluster this process is connected to (its GCS address), so
    other Ray instances on the host are not counted. ``workers``: the client actors (``ray::ClientAppActor``) and
    idle Ray workers; ``daemons``: raylet, GCS, Ray's agents and monitors (peaks of the per-sample sums). Nodes of
    a multi-node cluster other than this host are not seen.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak: dict[str, int] = {"workers": 0, "daemons": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedunlearn-ray-memory", daemon=True)
        self._raylet: Any = None
        self._daemons: list[Any] = []

    def __enter__(self) -> RayMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def result_mb(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {f"peak_rss_mb_{k}": round(v / 2**20, 1) for k, v in self.peak.items()}

    def _find_cluster(self) -> bool:
        import psutil
        import ray

        if not ray.is_initialized():
            return False
        try:
            gcs = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - Ray is starting or stopping
            return False
        procs = list(psutil.process_iter(["name", "cmdline"]))
        for p in procs:
            cmd = p.info["cmdline"] or []
            if p.info["name"] == "raylet" and f"--gcs-address={gcs}" in cmd:
                self._raylet = p
                # GCS, dashboard, monitors: the processes that name this cluster's session
                session = next((a.split("=", 1)[1] for a in cmd if a.startswith("--session-name=")), None)
                self._daemons = [q for q in procs if session and q.pid != os.getpid()
                                 and any(session in a for a in q.info["cmdline"] or [])]
                return True
        return False

    def _sample(self) -> None:
        import psutil

        workers = daemons = 0
        seen: set[int] = set()
        try:
            family = [self._raylet, *self._raylet.children(recursive=True)]
        except psutil.Error:
            family = []
        for p in family + self._daemons:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                rss = p.memory_info().rss
                title = (p.cmdline() or [""])[0]
            except psutil.Error:
                continue
            if title.startswith("ray::") and "Agent" not in title:
                workers += rss
            else:
                daemons += rss
        self.peak["workers"] = max(self.peak["workers"], workers)
        self.peak["daemons"] = max(self.peak["daemons"], daemons)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._raylet is None and not self._find_cluster():
                    continue
                self._sample()
            except Exception as err:  # noqa: BLE001 - measuring must never break a run
                log.debug("memory sampler: %s", err)


def _speed_up_flower_dispatch() -> None:
    """Work around a quadratic loop in Flower 1.41/1.42's simulation engine (``vce_api.add_messages_to_queue``).

    Every 0.1 s it asks the link state for the next message of *each* node, and each ask scans every stored message:
    O(nodes x messages) per sweep. With 1,000 nodes and 100 messages in flight that is ~100,000 checks holding the
    GIL per sweep, which starves the threads that feed the Ray actors (measured: 1,000 clients, 10% per round,
    ~1.9 s per round and 42 s to map the nodes, against ~1.1 s and 20 s with this). The replacement asks only for
    the nodes that have an undelivered message (one pass over the store); Flower's own ``get_message_ins`` still
    does the delivery, checks and marking, so the semantics are Flower's. Applied only to the Flower versions it
    was checked against, and only when the in-memory link state looks as expected; otherwise Flower's loop runs.
    """
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    if getattr(original, "fedunlearn_patch", False) or not flwr.__version__.startswith(("1.41.", "1.42.")):
        return

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
        store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
        if not isinstance(store, dict) or lock is None:
            return original(state, queue, nodes_mapping, f_stop)
        while not f_stop.is_set():
            with lock:
                pending = sorted({m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""})
            for node_id in pending:
                if node_id in nodes_mapping:
                    for msg in state.get_message_ins(node_id=node_id, limit=1):
                        queue.put(msg)
            f_stop.wait(0.1)

    add_messages_to_queue.fedunlearn_patch = True  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = add_messages_to_queue


def run_flower(cfg: ExperimentConfig, run_dir: Path,
               progress: Callable[[str, int, int], None] | None = None) -> Session:
    """Run the experiment's FL phases through Flower's simulation engine on Ray; returns the finished job."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from strategies.server_app import make_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    _speed_up_flower_dispatch()
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    flwr_log.addFilter(_drop_deprecation)
    job = Session(cfg, run_dir, progress)
    with RayMemorySampler() as sampler:
        run_simulation(server_app=make_app(job), client_app=client_app, num_supernodes=cfg.data.clients,
                       backend_config=backend_config(cfg), verbose_logging=False)
    job.memory = sampler.result_mb()
    if job.error is not None:
        raise job.error
    if not fl_finished(run_dir):
        raise FedUnlearnError("the Flower simulation ended before the experiment finished (see the log above)")
    return job
