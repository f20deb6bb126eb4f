"""``fedunlearn run`` on Ray, stopped and mis-started (slow, subprocesses, every wait bounded).

Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM to the CLI, and ``kill -INT`` of a run
started as a background job (SIGINT ignored, as ``cmd &`` in a script starts it) each end the run within 10 s:
exit 128 + signal, one line naming the directory to resume, nothing of Ray left in the process group, no
half-written file; the Ctrl-C'd run then resumes to a finished run. A Ray address nothing answers at, ``auto``
without a cluster, and client resources no node has each end within 60 s as one line naming the key, exit 2, with
no run directory left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedunlearn.config.render import to_toml
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "fedunlearn.cli", "run"]
STOP_S = 10.0


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "long.toml"  # long enough that every signal lands mid-training
    path.write_text(to_toml(tiny_config('sim.backend="ray"', "train.rounds=40", 'unlearn.methods=["retrain"]',
                                        'audit.attacks=["loss"]')))
    return path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _start(args: list[str], ignore_sigint: bool = False) -> subprocess.Popen:
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=pre)  # its own group: Ray's processes join it


def _wait_for_training(proc: subprocess.Popen, out: Path, timeout: float = 180) -> None:
    """Until clients have replied (their data reads are logged): Ray is up and its actors are training."""
    log, deadline = out / "data_access.csv", time.monotonic() + timeout
    while not (log.is_file() and len(log.read_text().splitlines()) > 8):
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, send) -> tuple[float, str]:
    """Send the signal; the seconds until the process has exited and its group is empty, and its stderr."""
    t0 = time.monotonic()
    send()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 60 s after the signal: {proc.args}")
    while _group_alive(proc.pid) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    return time.monotonic() - t0, err


def _assert_stopped(proc: subprocess.Popen, out: Path, name: str, stop_s: float, err: str) -> None:
    assert proc.returncode == 128 + signal.Signals[name].value, err[-3000:]
    assert stop_s < STOP_S, f"{name}: {stop_s:.1f} s until the run and its Ray were gone"
    assert err.strip().splitlines()[-1] == f"interrupted ({name}); continue with: fedunlearn run --resume {out}"
    assert "Traceback" not in err, err[-3000:]
    assert not list(out.rglob("*.tmp")), "a half-written file"
    assert not (out / "summary.json").exists()
    if (out / "phases.json").exists():
        json.loads((out / "phases.json").read_text())


def test_ctrl_c_stops_the_run_and_resume_finishes_it(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start([str(config_file), "--out", str(out)])
    try:
        _wait_for_training(proc, out)
        stop_s, err = _stop(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    finally:
        _kill_group(proc)
    print(f"Ctrl-C: stopped in {stop_s:.2f} s")
    _assert_stopped(proc, out, "SIGINT", stop_s, err)
    res = subprocess.run([*CLI, "--resume", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "summary.json").is_file() and (out / "models" / "retrain.pt").is_file()


@pytest.mark.parametrize("how", ["SIGTERM to the CLI", "kill -INT of a background job"])
def test_sigterm_and_background_sigint_stop_the_run(config_file: Path, tmp_path: Path, how: str) -> None:
    name = "SIGTERM" if how.startswith("SIGTERM") else "SIGINT"
    out = tmp_path / "run"
    proc = _start([str(config_file), "--out", str(out)], ignore_sigint=name == "SIGINT")
    try:
        _wait_for_training(proc, out)
        stop_s, err = _stop(proc, lambda: os.kill(proc.pid, signal.Signals[name]))
    finally:
        _kill_group(proc)
    print(f"{how}: stopped in {stop_s:.2f} s")
    _assert_stopped(proc, out, name, stop_s, err)


def _ray_on_this_host() -> bool:
    """``auto`` attaches to any Ray found on the host (its GCS process), someone else's private one included."""
    return shutil.which("pgrep") is None or subprocess.run(["pgrep", "-f", "gcs_server"],
                                                           capture_output=True).returncode == 0


@pytest.mark.parametrize(("args", "key"), [
    (["--ray-address", "127.0.0.1:1"], 'sim.ray_address = "127.0.0.1:1": nothing answers at'),
    (["--ray-address", "auto"], 'sim.ray_address = "auto": no running Ray cluster found'),
    (["--set", "sim.num_cpus=64"], "sim.num_cpus = 64: no Ray node can host one client"),
])
def test_start_up_errors_are_one_line_within_a_minute(config_file: Path, tmp_path: Path, args: list[str],
                                                      key: str) -> None:
    if "auto" in args and _ray_on_this_host():
        pytest.skip("a Ray runs on this host: `auto` would attach to it")
    out = tmp_path / "run"
    proc = _start([str(config_file), "--out", str(out), *args])
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args}: still running after 60 s")
    finally:
        _kill_group(proc)
    print(f"{args}: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}"), err[-3000:]
    assert "Traceback" not in err
    assert not out.exists(), "bad input left a run directory behind"
