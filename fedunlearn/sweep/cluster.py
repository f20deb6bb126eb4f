"""The sweep's own local Ray head: ``ray start --head --block`` on loopback, stopped by its process group.

The sweep never imports Ray (only ``fedunlearn.simulation`` does): it starts a head with Ray's CLI and hands the
address to every point driver, which joins it through ``sim.ray_address = "auto"`` and ``RAY_ADDRESS``. The head
is private: its own temp dir (so a ``ray.init()`` elsewhere on the host never finds it through
/tmp/ray/ray_current_cluster), free ports, loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without it Ray
2.55 swaps 127.0.0.1 for the host's address and listens on every interface). It is stopped by its process group,
never with ``ray stop`` (which stops every Ray on the host).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedunlearn.errors import FedUnlearnError

#: the environment the head and every driver joining it need for a loopback-only cluster
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TEMP_PREFIX = "fusweep-"  # the heads' temp dirs under /tmp


def ray_cli() -> str:
    """Ray's command line tool of this Python environment (beside the interpreter), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.is_file() else shutil.which("ray")
    if not found:
        raise FedUnlearnError("the ray command line tool was not found beside this Python or on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM a process group we started (``start_new_session``), SIGKILL whatever is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            try:  # reap it if it is our child, so that the group can disappear
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)


class LocalRayHead:
    """``with LocalRayHead(num_cpus) as head: head.address`` -- a Ray head with ``num_cpus`` CPUs on 127.0.0.1."""

    def __init__(self, num_cpus: int, start_timeout: float = 120.0) -> None:
        self.num_cpus = num_cpus
        self.start_timeout = start_timeout
        self.address = ""
        self.proc: subprocess.Popen | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> LocalRayHead:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        self._tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))  # short: Ray's unix sockets live here
        port = free_port()
        cmd = [ray_cli(), "start", "--head", "--block", f"--port={port}", f"--num-cpus={self.num_cpus}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={self._tmp}", f"--dashboard-agent-listen-port={free_port()}",
               f"--ray-client-server-port={free_port()}"]
        log_path = self._tmp / "head.log"
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **LOOPBACK_ENV}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        try:
            while "Ray runtime started" not in log_path.read_text():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise FedUnlearnError(f"ray start --head failed:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        except BaseException:  # a failed start, or Ctrl-C while it starts: leave no head behind
            self.stop()
            raise
        self.address = f"127.0.0.1:{port}"
        return self.address

    @property
    def temp_dir(self) -> Path | None:
        return self._tmp

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """The head's GCS and raylet still run. ``ray start --block`` itself outlives a raylet that died (the raylet
        fate-shares with its agents, and a node the GCS marks dead stops), so its children are checked."""
        import psutil

        if not self.alive():
            return False
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)  # type: ignore[union-attr]
            names = {k.name() for k in kids if k.status() != psutil.STATUS_ZOMBIE}
        except psutil.Error:
            return False
        return {"raylet", "gcs_server"} <= names

    def save_logs(self, dest: Path) -> Path:
        """Copy the head's own log and its daemons' logs (why did it die?) before ``stop`` removes its temp dir."""
        dest.mkdir(parents=True, exist_ok=True)
        if self._tmp is not None:
            logs = self._tmp / "session_latest" / "logs"
            wanted = [self._tmp / "head.log"] + [p for pat in ("raylet.*", "gcs_server.*", "dashboard_agent.*",
                                                               "ray_process_exit.log") for p in logs.glob(pat)]
            for src in wanted:
                if src.is_file():
                    shutil.copy2(src, dest / src.name)
        return dest

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
