"""Resilience through Flower on Ray (slow).

Faults are injected in the Ray workers two ways: ``sim.faults`` (travels with the config, so it reaches any node)
and ``FEDUNLEARN_FAULTS`` (the environment: it reaches the workers of a Ray that this process starts after setting
it). A client that fails within ``train.max_failure_share`` is recorded and its round goes on; a method whose
clients fail beyond it is reported in ``summary.json`` and the other methods finish. A run killed mid-way (SIGKILL of
its whole process group, Ray included) continues with ``fedunlearn run --resume`` from its last finished phase and
reaches the same ``per_client.csv`` and ``rounds.csv`` as the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedunlearn.config.load import load_config, to_toml
from fedunlearn.pipeline import run
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
ENV_FAULT = "original:2:1"                    # 1 of 4 clients fails in round 2: within max_failure_share
CONFIG_FAULTS = "finetune:*:1,finetune:*:2"   # 2 of 3 remaining clients fail: finetune fails, retrain goes on
SETTINGS = ['sim.backend="ray"', "train.rounds=8", "train.max_failure_share=0.5",
            'unlearn.methods=["retrain","finetune"]', f'sim.faults="{CONFIG_FAULTS}"']


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _done(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / "phases.json").read_text())["done"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "resilience.toml"
    path.write_text(to_toml(tiny_config(*SETTINGS)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file: Path, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDUNLEARN_FAULTS", ENV_FAULT)
        return run(load_config(config_file), out=tmp_path_factory.mktemp("u") / "run").run_dir


def test_client_fault_in_ray_worker_is_recorded_and_round_goes_on(uninterrupted: Path) -> None:
    rounds = _rows(uninterrupted / "rounds.csv")
    r2 = next(r for r in rounds if r["phase"] == "original" and r["round"] == "2")
    assert (r2["clients"], r2["failed"]) == ("3", "1")
    assert all(r["failed"] == "0" for r in rounds if r is not r2)
    assert len([r for r in rounds if r["phase"] == "original"]) == 8
    ledger = {(r["method"], r["phase"]): r for r in _rows(uninterrupted / "ledger.csv")}
    assert ledger[("original", "train")]["failed_clients"] == "1"


def test_peak_memory_of_server_and_ray_workers_in_env_json(uninterrupted: Path) -> None:
    env = json.loads((uninterrupted / "env.json").read_text())
    parts = [env[f"peak_rss_mb_{k}"] for k in ("server", "workers", "daemons")]
    assert all(p > 0 for p in parts)
    assert env["peak_rss_mb_total"] == pytest.approx(sum(parts), abs=0.2)


def test_failed_method_is_reported_and_others_finish(uninterrupted: Path) -> None:
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert list(summary["failed_methods"]) == ["finetune"]
    assert "injected fault" in summary["failed_methods"]["finetune"]
    assert (uninterrupted / "models" / "retrain.pt").exists()
    assert not (uninterrupted / "models" / "finetune.pt").exists()
    assert {r["model"] for r in _rows(uninterrupted / "per_client.csv")} == {"original", "retrain"}


def test_killed_run_resumes_to_the_same_results(config_file: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "FEDUNLEARN_FAULTS": ENV_FAULT, "FLWR_TELEMETRY_ENABLED": "0"}
    cli = [sys.executable, "-m", "fedunlearn.cli", "run"]
    proc = subprocess.Popen([*cli, str(config_file), "--out", str(out)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while "original" not in _done(out):
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "original training did not finish in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the Ray it started (same process group)
        proc.wait(timeout=30)
    assert "retrain" not in _done(out), "killed too late to test a resume mid-way"
    assert not (out / "summary.json").exists()

    res = subprocess.run([*cli, "--resume", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    rounds = _rows(out / "rounds.csv")
    assert len([r for r in rounds if r["phase"] == "original"]) == 8  # not trained twice
    def without_wall(rows: list[dict[str, str]]) -> list[dict[str, str]]:  # wall time differs run to run
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert without_wall(rounds) == without_wall(_rows(uninterrupted / "rounds.csv"))
    assert (out / "per_client.csv").read_text() == (uninterrupted / "per_client.csv").read_text()
    assert json.loads((out / "summary.json").read_text())["failed_methods"].keys() == {"finetune"}
