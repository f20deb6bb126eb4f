"""Stopping a run on Ctrl-C (SIGINT) or SIGTERM, within seconds and resumable.

``fedunlearn run`` calls ``handle_signals``. The first signal only sets a flag: the ServerApp checks it while it
waits for replies and the CLI at every round (``check`` raises ``Interrupted``), so the run unwinds at a message
boundary and Flower stops its runtime and actors; the CLI then exits through ``force_exit``. If the process is still
there ``grace_s`` after the signal, or on a second signal, ``force_exit`` runs at once, wherever the run is. It gives
the cleanups (Ray's shutdown) ``CLEANUP_S``, ends the processes this one started, says the resume line and exits
with 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). Either way the run directory is as consistent as after a
crash, which ``--resume`` continues: every result file is written atomically and ``phases.json`` records the
finished phases.

Signals are process-wide, so this state is too (one run per process is what the CLI does). A SIGTERM inside
``ray.init`` (the first seconds of a run on Ray) is still Ray's own: it ends the process at once, without the line.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

#: from the first signal to the forced exit; the graceful unwinding takes 2-4 s on 2 loaded cores
GRACE_S = 5.0
#: how long a forced exit waits for the cleanups (Ray's shutdown) before it kills what is left
CLEANUP_S = 3.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop asked for by a signal. Not an ``Exception``, so that no ``except Exception`` (a failed method, a
    failed client) swallows it and records a failure the run did not have."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_signum: list[int] = []          # the first signal received (empty: none)
_cleanups: list[Callable[[], None]] = []
_exit_lock = threading.RLock()  # re-entrant: a second signal may land in the main thread while it exits


def check() -> None:
    """Raise ``Interrupted`` if a stop was asked for (called between messages and rounds)."""
    if _signum:
        raise Interrupted(_signum[0])


def add_cleanup(fn: Callable[[], None]) -> None:
    """Run ``fn`` (bounded by ``CLEANUP_S``) before a forced exit; e.g. the Ray shutdown of a running simulation."""
    _cleanups.append(fn)


def remove_cleanup(fn: Callable[[], None]) -> None:
    if fn in _cleanups:
        _cleanups.remove(fn)


def force_exit(signum: int, last_words: Callable[[int], None] | None = None) -> NoReturn:
    """Exit now with 128 + ``signum``: the cleanups get ``CLEANUP_S``, then what is left of the processes this one
    started (a private Ray's daemons, agents and workers) is ended, then ``last_words`` (the resume line), then
    ``os._exit``: no interpreter shutdown (seconds of garbage collection, exit handlers that may wait on Ray)."""
    with _exit_lock:  # the grace timer, a second signal and the graceful path may all get here
        started = descendants()  # before the cleanups: Ray's agents outlive the raylet, reparented away from us
        runner = threading.Thread(target=_run_cleanups, name="fedunlearn-cleanup", daemon=True)
        runner.start()
        runner.join(CLEANUP_S)
        end_processes(started + descendants())
        if last_words is not None:
            try:
                last_words(signum)
            except Exception:  # noqa: BLE001 - the exit must happen whatever the message does
                pass
        os._exit(128 + signum)


def _run_cleanups() -> None:
    for fn in list(_cleanups):
        try:
            fn()
        except Exception:  # noqa: BLE001 - one failed cleanup must not keep the others from running
            pass


def descendants() -> list:
    """This process's children, grandchildren, ... (psutil processes)."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def end_processes(procs: list, timeout: float = 1.0) -> None:
    """SIGTERM the processes still alive, SIGKILL those left after ``timeout``."""
    import psutil

    procs = list({p.pid: p for p in procs}.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@contextmanager
def handle_signals(last_words: Callable[[int], None], grace_s: float = GRACE_S) -> Iterator[Callable[[int], None]]:
    """SIGINT and SIGTERM stop the run as described above while the block runs; the previous handlers come back
    after it. Installed explicitly, so a process started with SIGINT ignored (``cmd &`` in a script) still obeys
    ``kill -INT``. Yields ``last_words`` guarded to speak once (the graceful path and a forced exit may both try).
    Outside the main thread (Python delivers signals there only) it installs nothing."""
    said = threading.Lock()

    def once(signum: int) -> None:
        if said.acquire(blocking=False):
            last_words(signum)

    if threading.current_thread() is not threading.main_thread():
        yield once
        return

    def on_signal(signum: int, _frame: object) -> None:
        if _signum:  # the second signal: no more waiting
            force_exit(_signum[0], once)
        _signum.append(signum)
        timer = threading.Timer(grace_s, force_exit, args=(signum, once))
        timer.daemon = True
        timer.start()

    previous = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        yield once
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
