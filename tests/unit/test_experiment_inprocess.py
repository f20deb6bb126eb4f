"""The whole experiment in-process (no Ray): results contract, privacy ledger, determinism, resume."""

from __future__ import annotations

import csv
import json

from fedunlearn.ledgers.access import read_access_log
from fedunlearn.pipeline import run
from tests.conftest import tiny_config


def test_inprocess_run_writes_contract_and_respects_window(tmp_path):
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]')
    res = run(cfg, out=tmp_path / "r")
    d = res.run_dir
    for f in ("config.toml", "env.json", "partitions.npz", "summary.json", "per_client.csv", "ledger.csv",
              "rounds.csv", "report.md", "models/original.pt", "models/retrain.pt", "models/finetune.pt"):
        assert (d / f).exists(), f
    rows = read_access_log(d / "data_access.csv")
    after = [r for r in rows if r["client"] == "0" and r["purpose"] != "audit" and r["window"] == "closed"]
    assert after == []
    assert any(r["client"] == "0" and r["phase"] == "original" for r in rows)  # it was read while a member
    assert not any(r["client"] == "0" and r["phase"].startswith(("retrain", "finetune")) for r in rows)
    summary = json.loads((d / "summary.json").read_text())
    assert list(summary["models"]) == ["original", "finetune", "retrain"]
    # audit.during is off by default: no model of the steps is kept, nothing is reported about them
    assert not (d / "models" / "during").exists() and not (d / "during_unlearning.csv").exists()
    assert "during_unlearning" not in summary


def test_mid_training_and_sequential_withdrawals(tmp_path):
    """Clients 0 then 2 withdraw at round 2 of 4: methods chain the withdrawals, the federation trains on without
    them, retrain excludes both, and neither client's data is read after its window."""
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', "withdraw.clients=[0, 2]", "withdraw.round=2")
    d = run(cfg, out=tmp_path / "r").run_dir
    with (d / "rounds.csv").open() as fh:
        rounds = list(csv.DictReader(fh))
    phases = {r["phase"] for r in rounds}
    assert {"original", "finetune", "finetune.continue", "retrain"} <= phases
    cont = [r for r in rounds if r["phase"] == "finetune.continue"]
    assert [int(r["round"]) for r in cont] == [3, 4] and all(r["clients"] == "2" for r in cont)
    assert sum(r["phase"] == "finetune" for r in rounds) == 2  # one finetune round per withdrawal
    rows = read_access_log(d / "data_access.csv")
    for u in ("0", "2"):
        assert [r for r in rows if r["client"] == u and r["window"] == "closed" and r["purpose"] != "audit"] == []
    summary = json.loads((d / "summary.json").read_text())
    assert summary["withdrawn_clients"] == [0, 2]


def test_class_withdrawal(tmp_path):
    """Class 1 is withdrawn from every client: unsir (class mode) and the baselines unlearn it; after its window no
    step reads a record of class 1; retrain never predicts it."""
    cfg = tiny_config('unlearn.methods=["retrain","finetune","unsir"]', "withdraw.clients=[]", "withdraw.classes=[1]",
                      "unlearn.unsir.noise_samples=32", "unlearn.unsir.noise_copies=1", "audit.during=true")
    d = run(cfg, out=tmp_path / "r").run_dir
    rows = read_access_log(d / "data_access.csv")
    later = [r for r in rows if r["phase"] != "original" and r["purpose"] != "audit"]
    assert later and {r["selection"] for r in later} == {"retained"}
    assert {r["client"] for r in later} == {"0", "1", "2", "3"}  # every client stays in the federation
    summary = json.loads((d / "summary.json").read_text())
    assert summary["withdrawn_classes"] == [1] and summary["withdrawn_clients"] == []
    models = summary["models"]
    assert models["retrain"]["forgotten_class_test_accuracy"] < 0.05
    assert models["original"]["forgotten_class_test_accuracy"] > 0.5
    assert models["unsir"]["forgotten_class_test_accuracy"] < models["original"]["forgotten_class_test_accuracy"]
    # during unlearning, a class withdrawal is measured by the forgotten classes' member accuracy, start to end
    during = summary["during_unlearning"]
    assert during["measure"] == "accuracy on the forgotten classes' members" and during["margin"] is None
    for m in ("finetune", "unsir"):
        e = during["models"][m]
        assert e["start"] == models["original"]["forget_class"]["accuracy"]
        assert e["end"] == models[m]["forget_class"]["accuracy"]


def test_class_withdrawal_rejects_client_only_methods():
    import pytest

    from fedunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="unlearn.methods: pga unlearn whole clients only"):
        tiny_config('unlearn.methods=["retrain","pga"]', "withdraw.clients=[]", "withdraw.classes=[1]")
    with pytest.raises(ConfigError, match="withdraw.clients: must be \\[\\] for a class withdrawal"):
        tiny_config("withdraw.classes=[1]")
    with pytest.raises(ConfigError, match="withdraw.classes: \\[7\\] out of range; allowed: 0..2"):
        tiny_config("withdraw.clients=[]", "withdraw.classes=[7]")
