"""Resume in-process (no Ray): a run interrupted mid-way continues from its last finished phase and reaches the
same results as an uninterrupted run; injected client faults are recorded and the round goes on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedunlearn.fl.fedavg import FedAvgRounds
from fedunlearn.pipeline import run
from tests.conftest import tiny_config

METHODS = 'unlearn.methods=["retrain","finetune"]'


class Killed(BaseException):
    """Stands in for SIGKILL: a BaseException, so no ``except Exception`` of the library catches it."""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The report's plots take most of a tiny run's time and are not what these tests check."""
    monkeypatch.setattr("fedunlearn.stages.report.write_report", lambda run_dir: run_dir / "report.md")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fedunlearn.stages.report.write_report", lambda run_dir: run_dir / "report.md")
        return run(tiny_config(METHODS), out=tmp_path_factory.mktemp("u") / "run").run_dir


def test_resume_after_kill_mid_phase_gives_same_results(tmp_path, monkeypatch, uninterrupted) -> None:
    aggregate = FedAvgRounds.aggregate

    def dies_in_retrain(self, rnd, sent, replies):
        if self.phase == "retrain" and rnd == 2:
            raise Killed
        return aggregate(self, rnd, sent, replies)

    monkeypatch.setattr(FedAvgRounds, "aggregate", dies_in_retrain)
    with pytest.raises(Killed):
        run(tiny_config(METHODS), out=tmp_path / "run")
    d = tmp_path / "run"
    done = json.loads((d / "phases.json").read_text())["done"]
    assert "original" in done and "finetune" in done and "retrain" not in done
    assert not (d / "summary.json").exists()

    monkeypatch.setattr(FedAvgRounds, "aggregate", aggregate)
    phases_run: list[str] = []
    configure = FedAvgRounds.configure
    monkeypatch.setattr(FedAvgRounds, "configure",
                        lambda self, rnd: phases_run.append(self.phase) or configure(self, rnd))
    res = run(None, resume=d)  # type: ignore[arg-type]  # the run directory's own config
    assert set(phases_run) == {"retrain"}  # finished phases are not run again
    assert (d / "per_client.csv").read_text() == (uninterrupted / "per_client.csv").read_text()
    def rounds_without_wall(run_dir: Path) -> list[dict[str, str]]:
        rows = _rows(run_dir / "rounds.csv")
        assert all(float(r.pop("wall_s")) >= 0 for r in rows)  # per-round wall time, measured
        return rows

    assert rounds_without_wall(d) == rounds_without_wall(uninterrupted)
    assert res.summary["failed_methods"] == {}
    # start-up is its own ledger row each time the FL stage starts (the run and its resume), charged to no method
    warmups = [r for r in _rows(d / "ledger.csv") if (r["method"], r["phase"]) == ("startup", "warmup")]
    assert len(warmups) == 2 and res.summary["startup"]["starts"] == 2
    assert "startup" not in res.summary["models"]

    phases_run.clear()  # resuming a finished run only re-audits (no start-up either)
    again = run(None, resume=d)  # type: ignore[arg-type]
    assert phases_run == [] and again.summary["startup"]["starts"] == 2
    assert (d / "per_client.csv").read_text() == (uninterrupted / "per_client.csv").read_text()


def test_client_fault_is_recorded_and_failed_method_reported(tmp_path) -> None:
    """Client 1 fails in original round 2 (1/4 <= max_failure_share: the round goes on without it); clients 1 and 2
    fail in finetune (2/3 > 0.5: the method fails, is reported, and retrain still finishes)."""
    cfg = tiny_config(METHODS, 'sim.faults="original:2:1,finetune:*:1,finetune:*:2"', "train.max_failure_share=0.5")
    res = run(cfg, out=tmp_path / "run")
    d = res.run_dir
    r2 = next(r for r in _rows(d / "rounds.csv") if r["phase"] == "original" and r["round"] == "2")
    assert (r2["clients"], r2["failed"]) == ("3", "1")
    ledger = {(r["method"], r["phase"]): r for r in _rows(d / "ledger.csv")}
    assert ledger[("original", "train")]["failed_clients"] == "1"
    assert ledger[("finetune", "finetune")]["failed_clients"] == "2"
    assert ledger[("retrain", "retrain")]["failed_clients"] == "0"
    assert list(res.summary["failed_methods"]) == ["finetune"]
    assert "injected fault" in res.summary["failed_methods"]["finetune"]
    assert (d / "models" / "retrain.pt").exists() and not (d / "models" / "finetune.pt").exists()
    assert {r["model"] for r in _rows(d / "per_client.csv")} == {"original", "retrain"}
    env = json.loads((d / "env.json").read_text())  # in-process: no Ray workers, the total is the server's
    assert env["peak_rss_mb_workers"] == 0 and env["peak_rss_mb_total"] == env["peak_rss_mb_server"] > 0


def test_fault_spec_is_validated() -> None:
    from fedunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="sim.faults"):
        tiny_config('sim.faults="original:two:1"')
