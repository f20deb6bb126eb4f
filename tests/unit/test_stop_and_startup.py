"""Stopping and start-up checks without Ray: a signal stops an in-process run with the resume line; the Ray address
is probed and client resources are checked before anything waits; a short federation is reported after the count
settles; the ServerApp's waits end when asked; under ``flwr run`` our errors are logged as one line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedunlearn.config.render import to_toml
from fedunlearn.errors import ConfigError
from tests.conftest import tiny_config

ROOT = Path(__file__).parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_ctrl_c_stops_an_inprocess_run_with_the_resume_line(tmp_path: Path) -> None:
    """Started as ``cmd &`` in a script starts it (SIGINT ignored), ``kill -INT`` still stops it: exit 130, one
    line naming the directory to resume, no traceback, nothing half-written."""
    config = tmp_path / "long.toml"
    config.write_text(to_toml(tiny_config("train.rounds=400")))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedunlearn.cli", "run", str(config), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        log = out / "data_access.csv"
        while not (log.is_file() and len(log.read_text().splitlines()) > 4):  # clients are training
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.05)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 130, err[-2000:]
    assert stop_s < 10
    assert err.strip().splitlines()[-1] == f"interrupted (SIGINT); continue with: fedunlearn run --resume {out}"
    assert "Traceback" not in err
    assert not list(out.rglob("*.tmp")) and not (out / "summary.json").exists()


def test_unreachable_ray_address_is_one_line_at_once() -> None:
    from fedunlearn.simulation import _probe

    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf'^sim.ray_address = "127.0.0.1:{port}": nothing answers at .*refused'):
        _probe(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 2
    with pytest.raises(ConfigError, match='expected "auto" or host:port'):
        _probe("no-port-here")


def test_auto_without_a_cluster_is_one_line(monkeypatch) -> None:
    import ray._private.services as services

    from fedunlearn.simulation import _probe

    def none_found(_addr: str) -> str:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", none_found)
    with pytest.raises(ConfigError, match=r'^sim.ray_address = "auto": no running Ray cluster found.*ray start'):
        _probe("auto")


@pytest.mark.parametrize(("settings", "message"), [
    (["sim.num_cpus=64"], r"^sim.num_cpus = 64: no Ray node can host one client \(2 node\(s\), at most 4 CPUs and "
                          r"1 GPUs on one\); allowed: sim.num_cpus <= 4$"),
    (["sim.num_gpus=2"], r"^sim.num_gpus = 2: no Ray node can host one client .* allowed: sim.num_gpus <= 1$"),
    (["sim.num_cpus=3", "sim.num_gpus=1"],
     r"^sim.num_cpus = 3 with sim.num_gpus = 1: no Ray node can host one client .*; no node has both$"),
])
def test_client_resources_no_node_has_are_one_line(monkeypatch, settings: list[str], message: str) -> None:
    import ray

    from fedunlearn.simulation import _check_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node hosts nobody
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    _check_resources(tiny_config("sim.num_cpus=2", "sim.num_gpus=1"))  # fits the second node
    with pytest.raises(ConfigError, match=message):
        _check_resources(tiny_config(*settings))


class _Grid:
    """The part of Flower's Grid the ServerApp waits on: a fixed federation whose replies never come."""

    pull_interval = 0.01

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids) -> list:
        return []


def test_a_short_federation_is_reported_once_the_count_settles() -> None:
    from strategies.federation import wait_for_nodes

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r'data.clients = 10 but the Flower federation has 2 nodes; run `flwr run '
                                          r'. --federation-config "num-supernodes=10"`'):
        wait_for_nodes(_Grid(2), 10, settle=0.5)
    assert time.monotonic() - t0 < 3
    assert wait_for_nodes(_Grid(10), 10) == list(range(1, 11))


def test_waiting_for_replies_ends_when_the_run_must_stop() -> None:
    from fedunlearn.engine.session import RuntimeEnded, Session
    from strategies.server_app import stop_aware

    grid = _Grid(3)
    job = Session(tiny_config(), Path("unused"))
    stop_aware(grid, job.check_stop)
    threading.Timer(0.3, job.ended.set).start()  # Flower's runtime ends (it crashed) while the ServerApp waits
    t0 = time.monotonic()
    with pytest.raises(RuntimeEnded):
        grid.send_and_receive([object(), object()], timeout=3600)
    assert time.monotonic() - t0 < 2
    assert not issubclass(RuntimeEnded, Exception)  # no method may record it as its own failure


def test_our_errors_are_one_log_line_under_flwr_run() -> None:
    from strategies.server_app import ONE_LINE_ERRORS

    def formatted(err: Exception) -> str:
        try:
            raise err
        except Exception as caught:  # noqa: BLE001 - what Flower's runtime does before logging it
            record = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("Simulation",),
                                       (type(caught), caught, caught.__traceback__))
        ONE_LINE_ERRORS.filter(record)
        return logging.Formatter().format(record)

    assert formatted(ConfigError("data.clients = 10 but ...")) == "fedunlearn: data.clients = 10 but ..."
    assert "Traceback" in formatted(RuntimeError("a bug"))  # other errors keep their traceback
