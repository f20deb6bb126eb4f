"""The whole experiment in-process (no Ray): results contract, privacy ledger, determinism, resume."""

from __future__ import annotations

import csv
import json

from fedunlearn.access import read_access_log
from fedunlearn.runner import run

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
