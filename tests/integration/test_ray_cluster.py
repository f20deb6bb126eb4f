"""Attaching to a running Ray cluster (slow): ``ray start --head`` on loopback, then ``fedunlearn run --ray-address``.

The head is this test's own: a private temp dir (so ``ray.init()`` elsewhere on the host never finds it through
/tmp/ray/ray_current_cluster), free ports, loopback only, and it is stopped by its process group, never with
``ray stop`` (which would stop every Ray on the host). Ray turns ``--node-ip-address=127.0.0.1`` into the host's
address and listens on every interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (then node IP and every
listener are 127.0.0.1), so the head and the driver both get that variable.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedunlearn.config.load import load_config, to_toml
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the head's process group (ray start and everything it spawned), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(timeout=5)
                return
            proc.poll()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head with 2 CPUs on 127.0.0.1; yields its address."""
    tmp = Path(tempfile.mkdtemp(prefix="furay-", dir="/tmp"))  # short: Ray's unix sockets live under it
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
           "--num-cpus=2", "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={tmp}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}"]
    log = (tmp / "head.log").open("w")
    head = subprocess.Popen(cmd, env={**os.environ, **LOOPBACK_ONLY}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (tmp / "head.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head failed:\n{(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
        assert head.poll() is None, "the head died during the run"
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_run_attaches_to_a_running_cluster(ray_head: str, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config('sim.backend="ray"', 'unlearn.methods=["retrain","finetune"]')))
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "fedunlearn.cli", "run", str(config), "--out", str(out),
                          "--ray-address", ray_head], cwd=ROOT, env={**os.environ, **LOOPBACK_ONLY},
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert load_config(out / "config.toml").sim.ray_address == ray_head
    with (out / "per_client.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"original", "finetune", "retrain"} and len(rows) == 3 * 4
    env = json.loads((out / "env.json").read_text())
    # the memory sampler found the clients among the processes of *this* head's raylet (matched by GCS address)
    assert env["peak_rss_mb_workers"] > 0 and env["peak_rss_mb_daemons"] > 0
