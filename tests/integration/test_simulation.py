"""End to end through Flower's ``run_simulation`` on Ray (slow): the results contract, the null-band self-check,
determinism, and the privacy ledger."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedunlearn.config.load import load_config
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.pipeline import run
from fedunlearn.rundir import PER_CLIENT_COLUMNS

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).parents[2] / "experiments" / "quickstart.toml"
FEW_ROUNDS = ["train.rounds=6", 'unlearn.methods=["retrain","finetune"]', 'audit.attacks=["loss"]', 'sim.device="cpu"']


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    cfg = load_config(QUICKSTART, FEW_ROUNDS)
    return run(cfg, out=tmp_path_factory.mktemp("q") / "run").run_dir


def test_results_contract(quick_run: Path) -> None:
    d = quick_run
    for f in ("config.toml", "env.json", "partitions.npz", "summary.json", "per_client.csv", "rounds.csv",
              "ledger.csv", "report.md", "plots/training_curves.png", "plots/client_auc_loss.png", "plots/accuracy.png",
              "models/original.pt", "models/retrain.pt", "models/finetune.pt"):
        assert (d / f).is_file(), f
    with (d / "per_client.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == PER_CLIENT_COLUMNS
        rows = list(reader)
    assert {r["model"] for r in rows} == {"original", "finetune", "retrain"}
    assert len(rows) == 3 * 10
    with (d / "ledger.csv").open() as fh:
        cols = csv.DictReader(fh).fieldnames
    for c in ("wall_s", "rounds", "client_samples", "bytes_up", "bytes_down", "server_storage_bytes"):
        assert c in cols
    env = json.loads((d / "env.json").read_text())
    assert env["versions"]["flwr"].startswith("1.4") and env["backend"] == "ray"


def test_withdrawn_client_under_retrain_is_inside_null_band(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    leak = summary["models"]["retrain"]["leakage"]["loss"]
    lo, hi = summary["null_band"]
    assert lo <= leak["auc"] <= hi and leak["never_seen"] == "inside" and leak["verdict"] == "exact"


def test_no_reads_of_withdrawn_data_after_window(quick_run: Path) -> None:
    rows = read_access_log(quick_run / "data_access.csv")
    mine = [r for r in rows if r["client"] == "0"]
    assert any(r["phase"] == "original" for r in mine)
    assert [r for r in mine if r["window"] == "closed" and r["purpose"] != "audit"] == []


def test_same_seed_gives_identical_per_client_csv(quick_run: Path, tmp_path: Path) -> None:
    again = run(load_config(QUICKSTART, FEW_ROUNDS), out=tmp_path / "again").run_dir
    assert (again / "per_client.csv").read_text() == (quick_run / "per_client.csv").read_text()
