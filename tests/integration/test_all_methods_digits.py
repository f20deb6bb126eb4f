"""Every registered method end to end on the embedded digits data, through Flower on Ray (slow)."""

from __future__ import annotations

import csv
import json

import pytest

from fedunlearn.config.load import load_config
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.methods import METHODS
from fedunlearn.pipeline import run
from tests.conftest import check_snapshots

pytestmark = pytest.mark.slow


def test_every_method_on_digits(tmp_path):
    methods = METHODS.names()
    cfg = load_config(None, [
        'name="digits-all"', 'data.dataset="digits"', "data.clients=5", "model.hidden=[64]",
        "train.rounds=4", "train.local_epochs=2", "train.lr=0.1",
        f"unlearn.methods={json.dumps(methods)}", "unlearn.forsaken.max_steps=3",
        'audit.attacks=["loss","difference"]', "audit.during=true", 'sim.device="cpu"',
    ])
    d = run(cfg, out=tmp_path / "run").run_dir
    summary = json.loads((d / "summary.json").read_text())
    assert summary["failed_methods"] == {}
    assert set(summary["models"]) == {"original", *methods}
    for m in methods:
        assert (d / "models" / f"{m}.pt").is_file()
        assert summary["models"][m]["test_accuracy"] > 0.5, m  # digits is easy: no method may wreck the model
        if m != "retrain":  # the models each method passed through, saved by the ServerApp through Ray too
            check_snapshots(d, m)
    assert set(summary["during_unlearning"]["models"]) == set(methods) - {"retrain"}
    with (d / "ledger.csv").open() as fh:
        ledger_methods = {r["method"] for r in csv.DictReader(fh)}
    assert set(methods) <= ledger_methods
    rows = read_access_log(d / "data_access.csv")
    late = [r for r in rows if r["client"] == "0" and r["window"] == "closed" and r["purpose"] != "audit"]
    assert late == []
    # through Ray too, no training or method step reads an audit record
    assert {r["split"] for r in rows if r["purpose"] != "audit"} <= {"member", "validation"}
    assert {r["purpose"] for r in rows if r["split"] == "audit"} == {"audit"}
    # only methods that declare needs_forget_data read the withdrawn client after training
    readers = {r["phase"].split(".")[0] for r in rows if r["client"] == "0" and r["phase"] != "original"
               and r["purpose"] != "audit"}
    assert readers <= {m for m in methods if METHODS.get(m).needs_forget_data}
