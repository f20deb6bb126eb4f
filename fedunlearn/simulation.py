"""The only fedunlearn module that starts Flower: wraps ``flwr.simulation.run_simulation`` on the Ray backend.

All FL phases run inside one simulation (one Ray start). The ServerApp runs as a thread of this process: it is built
for the prepared run's session (``strategies.server_app.make_app(session)``), and the failed methods or an error
come back in the session. Ray is started (or attached to) before the simulation, so that a bad address or client
resources no node has are one line at once, not a hang (``start_ray``); the Ray this module started is shut down
here."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fedunlearn import interrupt
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.engine.session import Session
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.rundir import fl_finished

log = logging.getLogger(__name__)
ATTACH_TIMEOUT_S = 30.0  # attaching takes 1-3 s; Ray retries an address that does not answer for many minutes
PROBE_TIMEOUT_S = 5.0    # a TCP connection to the cluster's address, tried before Ray is asked to attach
PRIVATE = "or leave sim.ray_address empty for a private local Ray"
CHECK = f"check the address `ray start --head` printed, {PRIVATE}"


def _drop_deprecation(record: logging.LogRecord) -> bool:
    """``run_simulation`` warns that it is deprecated in favour of ``flwr run`` (we support both on purpose); Ray
    notes that it set no SIGTERM handler when attached from a thread (ours is the one wanted)."""
    return not any(note in record.getMessage() for note in ("DEPRECATED FEATURE", "SIGTERM handler is not set"))


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


def start_ray(cfg: ExperimentConfig) -> bool:
    """Start a private Ray or attach to ``sim.ray_address`` as Flower's backend would (it skips its ``ray.init``
    if Ray is up), and check that a node can host a client; True if it started Ray. A failure is a ``ConfigError``
    at once: Ray retries a silent address for minutes, and a runtime that failed left the ServerApp waiting."""
    import ray

    if ray.is_initialized():
        _check_resources(cfg)
        return False
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])  # as Flower's backend
    os.environ["PYTHONPATH"] = pythonpath
    kwargs = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}, "logging_level": "WARNING",
              **backend_config(cfg)["init_args"]}
    handlers = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    try:
        if cfg.sim.ray_address:
            _probe(cfg.sim.ray_address)
            _attach(cfg.sim.ray_address, kwargs)
        else:
            ray.init(**kwargs)  # in the main thread: the daemons it starts die with the thread that started them
    finally:  # Ray takes SIGTERM (in Python, and in its C++ core even from another thread): a caller's handler
        if threading.current_thread() is threading.main_thread():  # comes back, set again even where Python's
            for s, h in handlers.items():                          # own table still shows it
                if callable(h):
                    signal.signal(s, h)
    interrupt.add_cleanup(stop_ray)
    try:
        _check_resources(cfg)
    except ConfigError:
        stop_ray()
        raise
    return True


def stop_ray(leftovers: Iterable[Any] = ()) -> None:
    """Shut down (or detach from) Ray; its actors end with it. ``leftovers``: processes of a private Ray to end if
    still alive (its agents and workers can outlive the raylet for seconds, reparented away from this process)."""
    interrupt.remove_cleanup(stop_ray)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    interrupt.end_processes(list(leftovers), timeout=2.0)


def _probe(address: str) -> None:
    """A TCP connection to the cluster's address, so that nobody waits for Ray's retries to learn it is wrong."""
    key, target = f'sim.ray_address = "{address}"', address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError:
            raise ConfigError(f"{key}: no running Ray cluster found on this host; start one with `ray start --head`, "
                              f"{PRIVATE}") from None
        except Exception as err:  # noqa: BLE001 - Ray's private helper changed: leave it to the bounded attach
            log.debug("cannot resolve the 'auto' Ray address: %s", err)
            return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f'{key}: expected "auto" or host:port (the address `ray start --head` prints)')
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err)).lower()
        raise ConfigError(f"{key}: nothing answers at {target} ({reason}); {CHECK}") from None


def _attach(address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init`` on a cluster address, bounded: at an address that accepts connections but is no Ray head, Ray
    retries for many minutes. A thread may attach (it starts no processes); a stuck one is left behind."""
    import ray

    logging.getLogger("ray._private.worker").addFilter(_drop_deprecation)
    failure: list[BaseException] = []

    def attach() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            failure.append(err)

    t, key = threading.Thread(target=attach, name="ray-attach", daemon=True), f'sim.ray_address = "{address}"'
    t.start()
    t.join(ATTACH_TIMEOUT_S)
    if t.is_alive():
        raise ConfigError(f"{key}: no Ray cluster answered within {ATTACH_TIMEOUT_S:.0f} s; {CHECK}")
    if failure:
        first = (str(failure[0]).splitlines() or [""])[0]
        raise ConfigError(f"{key}: Ray could not attach ({type(failure[0]).__name__}: {first}); {CHECK}")


def _check_resources(cfg: ExperimentConfig) -> None:
    """Flower sizes its actor pool per node; when no node fits one client it fails in the runtime's thread while
    the ServerApp waits on. The same per-node check, as one line naming the key."""
    import ray

    need = {"sim.num_cpus": cfg.sim.num_cpus, "sim.num_gpus": cfg.sim.num_gpus}
    nodes = [(r.get("CPU", 0), r.get("GPU", 0)) for r in (n["Resources"] for n in ray.nodes() if n.get("Alive"))]
    if any(c >= need["sim.num_cpus"] and g >= need["sim.num_gpus"] for c, g in nodes):
        return
    most = dict(zip(need, (max(x, default=0) for x in zip(*nodes)))) if nodes else dict.fromkeys(need, 0)
    short = [k for k in need if need[k] > most[k]]  # none: each fits some node, no node both
    fix = f"allowed: {' and '.join(f'{k} <= {most[k]:g}' for k in short)}" if short else "no node has both"
    raise ConfigError(f"{' with '.join(f'{k} = {need[k]:g}' for k in short or need)}: no Ray node can host one "
                      f"client ({len(nodes)} node(s), at most {most['sim.num_cpus']:g} CPUs and "
                      f"{most['sim.num_gpus']:g} GPUs on one); {fix}")


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
        self.processes: dict[int, Any] = {}  # every Ray process seen on this host (pid -> psutil process)
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
            self.processes.setdefault(p.pid, p)
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
    started = start_ray(cfg)
    sampler = RayMemorySampler()
    try:
        with sampler:
            try:
                run_simulation(server_app=make_app(job), client_app=client_app, num_supernodes=cfg.data.clients,
                               backend_config=backend_config(cfg), verbose_logging=False)
            finally:
                job.ended.set()  # a ServerApp still waiting (the runtime crashed) stops instead of hanging the exit
        job.memory = sampler.result_mb()
    finally:
        if started:  # the processes of a private Ray, as the sampler saw them, end with it
            stop_ray(sampler.processes.values() if not cfg.sim.ray_address else ())
    if job.error is not None:
        raise job.error
    if not fl_finished(run_dir):
        raise FedUnlearnError("the Flower simulation ended before the experiment finished (see the log above)")
    return job
