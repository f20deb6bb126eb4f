"""The audit stage end to end on one tiny in-process run with the strong audit (loss, rmia, difference): reference
federations, comparison columns, forgetting rate, vulnerable records, plots, cached re-audit, retrain null, A2."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedunlearn.access import read_access_log
from fedunlearn.audit.metrics import benjamini_hochberg
from fedunlearn.audit.stage import PER_CLIENT_COLUMNS, ModelSignals, run_audit, withdrawn_forgetting
from fedunlearn.audit.signals import RecordSignals
from fedunlearn.config import load_config, to_toml
from fedunlearn.errors import ConfigError
from fedunlearn.experiment import reference_halves
from fedunlearn.runner import run

from tests.conftest import TINY, tiny_config

ATTACKS = ["loss", "rmia", "difference"]
CONTRACT = ["model", "client", "withdrawn", "attack", "n_member", "n_nonmember", "auc", "auc_lo", "auc_hi",
            "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "accuracy_member", "accuracy_nonmember",
            "delta_auc_vs_retrain"]


@pytest.fixture(scope="module")
def strong_run(tmp_path_factory) -> Path:
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', f"audit.attacks={json.dumps(ATTACKS)}")
    return run(cfg, out=tmp_path_factory.mktemp("strong") / "run").run_dir


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest))  # copy2 keeps the model files' mtimes: signal caches stay valid


def test_rmia_references_trained_in_the_run_and_not_audited(strong_run: Path) -> None:
    d = strong_run
    for f in ("models/reference_a.pt", "models/reference_b.pt", "models/retrain_null.pt", "references.json",
              "signals/reference_a.npz", "signals/reference_b.npz"):
        assert (d / f).is_file(), f
    refs = json.loads((d / "references.json").read_text())
    assert refs["out_of_both"] == [0]
    assert sorted(refs["reference_a"] + refs["reference_b"]) == [1, 2, 3]
    summary = json.loads((d / "summary.json").read_text())
    assert list(summary["models"]) == ["original", "finetune", "retrain"]  # instruments are not audited models
    rmia = summary["rmia"]
    assert rmia["a"] in [round(0.1 * i, 1) for i in range(11)]
    assert rmia["halves"]["reference_a"] == refs["reference_a"] and rmia["population_size"] > 0
    _, rows = _rows(d / "per_client.csv")
    assert {(r["model"], r["client"]) for r in rows if r["attack"] == "rmia"} == {
        (m, str(k)) for m in ("original", "finetune", "retrain") for k in range(4)}
    with (d / "ledger.csv").open() as fh:
        ledger = {(r["method"], r["phase"]) for r in csv.DictReader(fh)}
    assert {("references", "reference_a"), ("references", "reference_b"), ("retrain_null", "retrain")} <= ledger
    reads = read_access_log(d / "data_access.csv")
    phases = {r["phase"] for r in reads}
    assert {"reference_a", "reference_b", "retrain_null.retrain"} <= phases
    assert not [r for r in reads if r["client"] == "0" and r["purpose"] != "audit" and r["window"] == "closed"]


def test_reference_halves_are_complementary_seeded_and_exclude_withdrawn() -> None:
    a, b = reference_halves(list(range(10)), [3, 7], seed=5)
    assert sorted(a + b) == [0, 1, 2, 4, 5, 6, 8, 9] and len(a) == len(b) == 4
    assert (a, b) == reference_halves(list(range(10)), [3, 7], seed=5)
    assert (a, b) != reference_halves(list(range(10)), [3, 7], seed=6)


def test_per_client_columns_and_benjamini_hochberg(strong_run: Path) -> None:
    header, rows = _rows(strong_run / "per_client.csv")
    assert header[:15] == CONTRACT and header == PER_CLIENT_COLUMNS
    assert header[15:] == ["delta_auc_vs_original", "p_vs_retrain", "p_vs_original", "significant_vs_retrain",
                           "significant_vs_original"]
    for r in rows:
        if r["model"] == "retrain":
            assert r["p_vs_retrain"] == "NA" and r["significant_vs_retrain"] == "NA"
        if r["model"] == "original":
            assert r["p_vs_original"] == "NA" and float(r["delta_auc_vs_original"]) == 0.0
        if r["model"] != "retrain":
            assert 0.0 <= float(r["p_vs_retrain"]) <= 1.0
    q = json.loads((strong_run / "summary.json").read_text())["comparisons"]["q"]
    for m in ("original", "finetune"):
        for a in ATTACKS:
            group = [r for r in rows if r["model"] == m and r["attack"] == a]
            if not group:
                continue
            p = np.array([float(r["p_vs_retrain"]) for r in group])
            assert [r["significant_vs_retrain"] == "true" for r in group] == list(benjamini_hochberg(p, q))


def test_forgetting_rate_beside_retrain(strong_run: Path) -> None:
    summary = json.loads((strong_run / "summary.json").read_text())
    fr_re = summary["models"]["retrain"]["forgetting_rate"]
    for m in ("finetune", "retrain"):
        fr = summary["models"][m]["forgetting_rate"]
        assert {"fr", "fr_per_record", "b_t", "b_f", "a_f", "fr_retrain", "fr_per_record_retrain"} <= set(fr)
        assert fr["fr_retrain"] == fr_re["fr"] and fr["b_t"] > 0
        assert fr["fr"] == pytest.approx(1 - (fr["b_t"] + fr["b_f"] - fr["a_f"]) / fr["b_t"])
    assert "NaN" not in (strong_run / "summary.json").read_text()


def test_forgetting_rate_undefined_when_nothing_was_a_member() -> None:
    def sig(phi: np.ndarray) -> ModelSignals:
        return ModelSignals(RecordSignals(np.full(len(phi), 0.5), phi), np.ones(len(phi), bool), np.ones(1, bool))

    phi = np.concatenate([np.full(20, -5.0), np.linspace(0, 1, 40)])  # members score below every held-out record
    mem, hold = np.arange(20), np.arange(20, 60)
    fr = withdrawn_forgetting(sig(phi), sig(phi), mem, hold, 0.1)
    assert fr["b_t"] == 0 and fr["fr"] is None and fr["fr_per_record"] is None
    assert fr["note"].startswith("undefined (B_T = 0)")


def test_vulnerable_records_csv(strong_run: Path) -> None:
    from fedunlearn.data import load_partitions

    header, rows = _rows(strong_run / "vulnerable_records.csv")
    assert header == ["client", "record", "model", "attack", "score", "rank"]
    parts = load_partitions(strong_run / "partitions.npz")
    for k in range(4):
        mine = [r for r in rows if r["client"] == str(k)]
        assert [int(r["rank"]) for r in mine] == list(range(1, 11))
        assert {r["model"] for r in mine} == {"original"} and {r["attack"] for r in mine} == {"rmia"}
        assert set(int(r["record"]) for r in mine) <= set(parts.members[k].tolist())
        scores = [float(r["score"]) for r in mine]
        assert scores == sorted(scores, reverse=True)


def test_plots_exist(strong_run: Path) -> None:
    for name in ["roc_client0", "auc_heatmap"] + [f"roc_grid_{a}" for a in ATTACKS]:
        assert (strong_run / "plots" / f"{name}.png").stat().st_size > 1000, name
    assert "## RMIA set-up" in (strong_run / "report.md").read_text()


def test_withdrawn_client_under_retrain_inside_band_for_every_attack(strong_run: Path) -> None:
    summary = json.loads((strong_run / "summary.json").read_text())
    for a in ATTACKS:
        leak = summary["models"]["retrain"]["leakage"][a]
        assert leak["verdict"] == "inside", (a, leak)
        assert summary["verdicts"]["finetune"][a]["verdict"] in ("inside", "over-unlearned", "under-unlearned")
    null = summary["retrain_null"]["attacks"]
    assert set(null) == set(ATTACKS)
    for a in ATTACKS:
        assert null[a]["withdrawn_verdict"] == "inside"
        assert 0 <= null[a]["bh_flagged"] <= null[a]["clients"] == 4


def test_reaudit_reads_cached_signals_only(strong_run: Path, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import fedunlearn.training
    from fedunlearn.cli import app

    d = _copy(strong_run, tmp_path / "copy")

    def no_inference(*args, **kwargs):
        raise AssertionError("re-audit ran inference")

    monkeypatch.setattr(fedunlearn.training, "logits", no_inference)
    res = CliRunner().invoke(app, ["audit", str(d), "--attacks", "loss,difference"])
    assert res.exit_code == 0, res.output
    _, rows = _rows(d / "per_client.csv")
    assert {r["attack"] for r in rows} == {"loss", "difference"}
    assert json.loads((d / "summary.json").read_text())["attacks"] == ["loss", "difference"]


def test_rmia_without_references_is_a_config_error(strong_run: Path, tmp_path: Path) -> None:
    d = _copy(strong_run, tmp_path / "norefs")
    (d / "models" / "reference_b.pt").unlink()
    with pytest.raises(ConfigError, match="rmia needs reference federations"):
        run_audit(d, ["rmia"])


def test_seed_audit_trains_replicas_on_the_same_data(strong_run: Path, tmp_path: Path) -> None:
    from fedunlearn.report import plot_epsilon_hist

    d = _copy(strong_run, tmp_path / "a2")
    summary = run_audit(d, ["loss"], seeds=3)
    a2 = summary["seed_audit"]
    assert a2["seeds"] == 3 and a2["seed_values"] == [1, 2, 3] and a2["records"] == summary["n_member"]
    assert set(a2["models"]) == {"original", "finetune"}
    for e in a2["models"].values():
        assert e["epsilon_mean"] >= 0 and 0 < e["challenge_score"] <= 1 and 0 <= e["ulira_accuracy_mean"] <= 1
    for s in (1, 2, 3):
        rep = d / "seeds" / f"seed-{s}"
        assert (rep / "models" / "finetune.pt").is_file() and not (rep / "models" / "reference_a.pt").exists()
        assert (rep / "partitions.npz").read_bytes() == (d / "partitions.npz").read_bytes()
    assert (d / "seeds/seed-1/models/initial.pt").read_bytes() != (d / "models/initial.pt").read_bytes()
    _, per_record = _rows(d / "seed_audit.csv")
    assert len(per_record) == 3 * summary["n_member"]  # original, finetune, retrain vs retrain
    assert plot_epsilon_hist(d).is_file()


def test_vulnerable_records_picture_grid_for_images(tmp_path: Path) -> None:
    from fedunlearn.report import plot_vulnerable_records

    cfg = load_config(None, TINY + ['data.dataset="digits"'])
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    (tmp_path / "vulnerable_records.csv").write_text(
        "client,record,model,attack,score,rank\n" + "".join(f"{k},{10 * k + j},original,loss,1.0,{j + 1}\n"
                                                            for k in range(2) for j in range(3)))
    out = plot_vulnerable_records(tmp_path)
    assert out is not None and out.is_file()


@pytest.mark.parametrize(("override", "needle"), [
    ("audit.seeds=2", "audit.seeds"),
    ('withdraw.clients=[0,1,2]', "rmia needs >= 2 remaining clients"),
])
def test_audit_config_errors(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, TINY + ['audit.attacks=["loss","rmia"]', override])
