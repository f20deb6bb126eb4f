"""The sweep directory's lock: which sweep process owns it, and the process groups it started (head, point drivers).

A sweep killed with SIGKILL cannot stop its children; ``--resume`` reads the lock, refuses while the owner still
runs, and otherwise stops the groups the dead sweep left behind (matched by PID *and* start time, so a reused PID
is never signalled) before it starts again.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import psutil

from fedunlearn.errors import ConfigError
from fedunlearn.io import atomic_write_json
from fedunlearn.sweep.cluster import TEMP_PREFIX, stop_group

LOCK_FILE = "sweep.lock.json"
HEAD = "ray-head"  # the lock's name for the sweep's own Ray head


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(entry: dict) -> bool:
    t = _started(int(entry["pid"]))
    return t is not None and abs(t - float(entry["started"])) < 1e-3


class SweepLock:
    """``owner`` = this process; ``groups`` = name -> {pid, started} of every process group it started."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self.groups: dict[str, dict] = {}
        self._mutex = threading.Lock()  # point drivers are started and reaped by worker threads

    def acquire(self) -> list[str]:
        """Take the lock; returns the names of the leftover groups of a dead sweep that were stopped."""
        stopped = []
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                old = {}
            owner = old.get("owner")
            if owner and _same_process(owner) and int(owner["pid"]) != os.getpid():
                raise ConfigError(f"sweep directory: {self.path.parent} is in use by a running sweep (pid "
                                  f"{owner['pid']}); allowed: one sweep per directory, stop it first")
            groups = old.get("groups") or {}
            for name in sorted(groups, key=lambda n: n == HEAD):  # the drivers first, then the cluster under them
                g = groups[name]
                if _same_process(g):
                    stop_group(int(g["pid"]))
                    stopped.append(name)
                if g.get("temp_dir") and Path(g["temp_dir"]).name.startswith(TEMP_PREFIX):
                    shutil.rmtree(g["temp_dir"], ignore_errors=True)  # a head's temp dir: only its owner removes it
        self._write()
        return stopped

    def add(self, name: str, pid: int, temp_dir: Path | None = None) -> None:
        """Record a process group we started (and a temp dir that goes with it, removed when it is cleaned up)."""
        with self._mutex:
            self.groups[name] = {"pid": pid, "started": _started(pid) or 0.0}
            if temp_dir is not None:
                self.groups[name]["temp_dir"] = str(temp_dir)
            self._write()

    def remove(self, name: str) -> None:
        with self._mutex:
            if self.groups.pop(name, None) is not None:
                self._write()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        me = {"pid": os.getpid(), "started": _started(os.getpid()) or 0.0}
        atomic_write_json(self.path, {"owner": me, "groups": self.groups})
