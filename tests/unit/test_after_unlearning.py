"""After unlearning (issue 10 item 5): FedAvg continues on the remaining clients from every unlearned model and from
retrain; each round's model is saved, never sent to the withdrawn client, and the audit reports the withdrawn
clients' leakage and the drift to retrain per round, with a plot."""

from __future__ import annotations

import csv

import pytest

from fedunlearn.ledgers.access import read_access_log
from fedunlearn.pipeline import run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def after_run(tmp_path_factory):
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', "audit.after_rounds=3")
    return run(cfg, out=tmp_path_factory.mktemp("after") / "run")


def test_continued_models_saved_and_u_never_addressed(after_run) -> None:
    d = after_run.run_dir
    for m in ("finetune", "retrain"):
        assert [(d / "models" / "after" / m / f"round_{r}.pt").is_file() for r in (1, 2, 3)] == [True] * 3
    rows = [r for r in read_access_log(d / "data_access.csv") if r["phase"].startswith("after.")]
    assert rows and "0" not in {r["client"] for r in rows}  # the withdrawn client is never addressed
    with (d / "ledger.csv").open() as fh:
        ledger = [r for r in csv.DictReader(fh) if r["method"] == "after"]
    assert {r["phase"] for r in ledger} == {"finetune", "retrain"} and all(int(r["rounds"]) == 3 for r in ledger)
    assert "after" not in after_run.summary["models"]  # a cost of its own, charged to no method


def test_audit_reports_leakage_and_drift_per_round(after_run) -> None:
    d, s = after_run.run_dir, after_run.summary
    with (d / "after_unlearning.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["model"], int(r["round"])) for r in rows} == {(m, r) for m in ("finetune", "retrain") for r in range(4)}
    retrain = [r for r in rows if r["model"] == "retrain"]
    assert all(float(r["distance_to_retrain"]) == 0.0 for r in retrain)  # the yardstick is retrain's continuation
    start = next(r for r in rows if r["model"] == "finetune" and r["round"] == "0")
    assert float(start["leakage"]) == pytest.approx(s["models"]["finetune"]["leakage"]["loss"]["auc"], abs=1e-6)
    e = s["after_unlearning"]["models"]["finetune"]
    assert e["change"] == pytest.approx(e["end"] - e["start"]) and s["after_unlearning"]["rounds"] == 3
    assert (d / "plots" / "after_unlearning.png").stat().st_size > 0
    assert "## After unlearning: 3 more FedAvg rounds" in (d / "report.md").read_text()
